"""What an option the parser does not know was likely meant as: the other unime commands that take it and the
option to suggest instead (`suggest_option`), shared by the command line (`unime.cli.CommandParser`) and the
`--config` file reader (`unime.cli.options_file`); argparse and difflib only, so that both import it from below."""
from __future__ import annotations

import argparse
import typing


def walk_commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    """(command words, parser) of `parser` and of each of its sub-commands, depth first."""
    yield words, parser
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                yield from walk_commands(sub, (*words, name))


def _long_options(parser: argparse.ArgumentParser) -> list[str]:
    return [s for a in parser._actions for s in a.option_strings if s.startswith("--")]


class OptionSuggestion(typing.NamedTuple):
    """What an unknown option is to a command (`suggest_option`): the other unime commands that take it ("'unime
    reason eval'", "" for none), and the command's option to suggest: the one of the same config field, else the
    closest by spelling (None for neither)."""

    others: str
    same_field: argparse.Action | None
    closest: str | None  # a long option, e.g. `--batch-size`


def suggest_option(parser: argparse.ArgumentParser, option: str, *, exclude: tuple[str, ...] = ()) -> OptionSuggestion:
    """`option` (`--foo`), which `parser` does not have, in the other unime commands (up to three named) and the
    option of `parser` to suggest instead: the one declared on the same config field as `--foo` is in another command
    (`unime.cli.dataclass_options`: `eval --task` for `reason eval --only`), else the closest by spelling (difflib,
    on the names without dashes). `exclude`: options neither looked up nor suggested (a config file's `--config`).
    The one rule for an unknown option on the command line (`CommandParser`) and an unknown key of a `--config` file
    (`unime.cli.options_file.apply_options`)."""
    import difflib

    root = getattr(parser, "root", None)
    others = [(words, p) for words, p in (walk_commands(root) if root is not None and option not in exclude else ())
              if p is not parser and option in p._option_string_actions]
    fields = {getattr(p._option_string_actions[option], "unime_field", None) for _, p in others} - {None}
    same_field = next((a for a in parser._actions if a.option_strings and getattr(a, "unime_field", None) in fields),
                      None)
    named = [f"'{' '.join(('unime', *words))}'" for words, _ in others]
    if len(named) > 4:
        named = [*named[:3], f"{len(named) - 3} other commands"]
    listed = "" if not named else named[0] if len(named) == 1 else f"{', '.join(named[:-1])} and {named[-1]}"
    closest = None
    if same_field is None:
        names = {s.lstrip("-"): s for s in _long_options(parser) if s not in exclude}
        close = difflib.get_close_matches(option.lstrip("-"), list(names), n=1)
        closest = names[close[0]] if close else None
    return OptionSuggestion(listed, same_field, closest)


def option_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """` (HELP)`: `action`'s help as `--help` shows it (its `%(default)s` filled in); "" without one."""
    return f" ({parser._get_formatter()._expand_help(action)})" if action.help else ""
