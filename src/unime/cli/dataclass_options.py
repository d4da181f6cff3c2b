"""argparse options generated from config dataclasses (`unime.options.option` field metadata), and the
config built back from the parsed namespace: each option is declared once, on its config field."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import types
import typing
from typing import Any

from unime.options import field_flag

_CLI_KEYS = ("action", "choices", "metavar", "type", "nargs", "const", "required")


def _value_type(hint: Any) -> Any:
    """int / float for `int`, `float | None` ...; None (a string, argparse's default) otherwise."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else None
    return hint if hint in (int, float) else None


def option_fields(*classes: type, own_first: bool = False) -> list[tuple[dataclasses.Field, Any, type]]:
    """(field, type hint, class) of every field of `classes` that is a command-line option; `own_first`: each
    class's own fields before those it inherits (a command's options before the shared groups)."""
    out = []
    for cls in classes:
        hints = typing.get_type_hints(cls)
        fields = [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]
        if own_first:
            own = inspect.get_annotations(cls)
            fields.sort(key=lambda f: f.name not in own)
        out += [(f, hints[f.name], cls) for f in fields]
    return out


def dest_of(f: dataclasses.Field, prefix: str = "") -> str:
    """The namespace name of `f`'s option; `prefix` (`judge-`) names the options of a second config of the
    same fields (`--judge-steps`, dest `judge_steps`)."""
    return (prefix + f.metadata.get("dest", f.name)).replace("-", "_")


def _default(f: dataclasses.Field) -> Any:
    if "cli_default" in f.metadata:
        return f.metadata["cli_default"]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def add_options(parser: argparse.ArgumentParser, *classes: type, groups: tuple[str, ...] = (),
                default_group: str | None = None, labels: tuple[str, ...] = (), own_first: bool = False,
                prefix: str = "") -> None:
    """Add an option per field of `classes` to `parser`, in argparse groups by the fields' `group` (fields
    without one go to `default_group`; None: the parser's own options). `groups` lists the groups to add,
    in help order; fields of other groups are left out. With several classes (`labels` names them), a field
    they share is one option; where their defaults differ its default is None ("the class's own") and the
    help names each. `own_first`: see `option_fields`. `prefix` goes before each option's name and dest
    (`--judge-steps`, `judge_steps`), not its value's metavar (`STEPS`)."""
    found: dict[str, list] = {}
    for f, hint, cls in option_fields(*classes, own_first=own_first):
        found.setdefault(dest_of(f, prefix), []).append((f, hint, cls))
    by_group: dict[str | None, list] = {}
    for entries in found.values():
        group = entries[0][0].metadata.get("group", default_group)
        if group is None or group in groups:
            by_group.setdefault(group, []).append(entries)
    containers: dict[str | None, Any] = {None: parser}
    # each group's description from the class declaring it (`option_groups`), also through several bases
    descriptions = {k: v for c in classes for b in reversed(c.__mro__)
                    for k, v in vars(b).get("option_groups", {}).items()}
    for title in groups:
        if title in by_group:
            containers[title] = parser.add_argument_group(title, descriptions.get(title))
    exclusive: dict[str, Any] = {}  # fields with metadata `exclusive=NAME`: one mutually exclusive group each
    for title in (None, *groups):
        for entries in by_group.get(title, []):
            md = entries[0][0].metadata
            container = containers[title]
            if "exclusive" in md:
                if md["exclusive"] not in exclusive:  # required when its first field says `exclusive_required`
                    exclusive[md["exclusive"]] = container.add_mutually_exclusive_group(
                        required=md.get("exclusive_required", False))
                container = exclusive[md["exclusive"]]
            _add(container, entries, classes, labels, prefix)


def _add(container, entries, classes, labels, prefix: str = "") -> None:
    f, hint, _ = entries[0]
    md = f.metadata
    kwargs = {k: md[k] for k in _CLI_KEYS if k in md}
    default = _default(f)
    help_text = md.get("help")
    defaults = {repr(_default(e[0])) for e in entries}
    if len(defaults) > 1:  # shared by several configs with their own defaults
        named = ", ".join(f"{labels[classes.index(c)]} {_default(e)}" for e, _, c in entries)
        default, help_text = None, f"{help_text} (default: {named})" if help_text else f"default: {named}"
    positional = bool(md.get("positional"))  # `unime data check FILE`: the option's name is the field's
    if default is dataclasses.MISSING:
        kwargs.update({} if positional else {"required": True})
    else:
        kwargs["default"] = default
    if "action" not in kwargs and hint in (bool, "bool"):
        kwargs["action"] = "store_true"
    if "action" not in kwargs and "type" not in kwargs and _value_type(hint) is not None:
        kwargs["type"] = _value_type(hint)
    if help_text is not None:
        kwargs["help"] = help_text
    dest = dest_of(f, prefix)
    flags = (dest,) if positional else prefixed_flags(f, prefix)
    if prefix and "metavar" not in kwargs and not positional and not kwargs.get("action"):
        kwargs["metavar"] = dest_of(f).upper()
    if not positional and flags[0].lstrip("-").replace("-", "_") != dest:
        kwargs["dest"] = dest
    # the config field it sets: another command's option of the same field is this one's counterpart, which an
    # unknown option's usage error suggests (`unime.cli.CommandParser`: `eval --only` -> `--task`, as in `reason eval`)
    container.add_argument(*flags, **kwargs).unime_field = prefix + f.name
    if md.get("switch"):  # a flag that sets the option to one value (`--skip-bad-records` = `--on-error skip`)
        switch, value = md["switch"]
        container.add_argument(switch, dest=dest, action="store_const", const=value, default=kwargs.get("default"),
                               help=f"the same as {flags[0]} {value}")


def prefixed_flags(f: dataclasses.Field, prefix: str = "") -> tuple[str, ...]:
    """The command-line flags of `f`'s option (`unime.options.field_flag`), with `prefix` (`--judge-steps`)."""
    flag = field_flag(f)
    return tuple("--" + prefix + s[2:] if prefix and s.startswith("--") else s
                 for s in (flag if isinstance(flag, tuple) else (flag,)))


def option_values(cls: type, args: argparse.Namespace, *, prefix: str = "", unset_is_none: bool = False) -> dict:
    """{field: value} of the options of `cls` in the parsed namespace (`prefix` as given to `add_options`);
    fields the command has no option for are left out, and with `unset_is_none` those left at None too. A value
    outside its option's range (`unime.options.range_problem`) is a UsageError naming the option."""
    from unime.errors import UsageError
    from unime.options import range_problem

    kwargs = {}
    for f, _, _ in option_fields(cls):
        if not hasattr(args, dest_of(f, prefix)):
            continue
        value = getattr(args, dest_of(f, prefix))
        problem = range_problem(f, value)
        if problem:
            raise UsageError(f"{prefixed_flags(f, prefix)[0]} {problem}", command=getattr(args, "_command", None))
        if not (unset_is_none and value is None):
            kwargs[f.name] = value
    return kwargs


def unset_defaults(cls: type, args: argparse.Namespace, origin: str) -> dict[str, tuple[Any, str]]:
    """{dest: (value, `origin`)} of the options of `cls` left unset (None) whose field has another default: an
    option several configs share with their own defaults (`add_options`) at `cls`'s default, as the run uses it
    (`--print-config`'s `_unset_values`)."""
    out = {}
    for f, _, _ in option_fields(cls):
        dest = dest_of(f)
        if hasattr(args, dest) and getattr(args, dest) is None and _default(f) not in (None, dataclasses.MISSING):
            out[dest] = (_default(f), origin)
    return out


def config_from_args(cls: type, args: argparse.Namespace, *, prefix: str = "", unset_is_none: bool = False,
                     **values: Any):
    """`cls` from the parsed options (each field from its option's dest; fields the command has no option
    for keep their default) and `values`. `unset_is_none`: an option left at None keeps the field's
    default (options shared by configs with their own defaults, `add_options`)."""
    parsed = option_values(cls, args, prefix=prefix, unset_is_none=unset_is_none)
    return cls(**{k: v for k, v in parsed.items() if k not in values}, **values)
