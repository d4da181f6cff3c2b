"""`--config FILE.yaml` (and `--recipe` presets): option defaults checked by the same rules as the command line.

Each key is an option name (dashes or underscores). Its value goes through the option's own `type`
and `choices`; a flag takes a YAML boolean (or the strings true/false/yes/no/on/off/1/0); a list only
where the option takes several values. Options given on the command line win; a required option may
come from the file. Any violation is a `ConfigError` naming the file and the key, before any work.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import yaml

from unime.cli.suggestions import option_help, suggest_option
from unime.errors import UnimeError

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class ConfigError(UnimeError):
    """A config file key whose value the option does not accept."""


def option_from_argv(argv: list[str], option: str) -> str | None:
    """The value of `option` (e.g. "--config") in `argv` (last one wins), without parsing the rest."""
    value = None
    for i, tok in enumerate(argv):
        if tok == "--":
            break
        if tok == option and i + 1 < len(argv):
            value = argv[i + 1]
        elif tok.startswith(option + "="):
            value = tok.split("=", 1)[1]
    return value


def config_path_from_argv(argv: list[str]) -> str | None:
    """The value of `--config` in `argv` (last one wins), without parsing the rest."""
    return option_from_argv(argv, "--config")


def load_config_file(path: str) -> dict[str, Any]:
    """The config file's mapping (`read_config_file`)."""
    return read_config_file(path)[0]


def read_config_file(path: str) -> tuple[dict[str, Any], str]:
    """The config file's mapping, and the SHA-256 of the bytes it was parsed from (read once: the output's
    provenance names what the run read, not what the file holds when the output is claimed)."""
    import hashlib

    from unime.data.jsonl import folder_problem, read_text_and_bytes

    if (problem := folder_problem(path, "a YAML or JSON config file", suffixes=(".yaml", ".yml", ".json"))):
        raise ConfigError(f"{path}: {problem}")
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    try:
        text, raw = read_text_and_bytes(path)
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise ConfigError(f"{path}: malformed YAML: nested too deeply") from None
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of option names to values")
    return cfg, hashlib.sha256(raw).hexdigest()


def _flag(value: Any, *, path: str, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ConfigError(f"{path}: key '{key}': expected true or false, got {value!r}")


def _scalar(action: argparse.Action, value: Any, *, path: str, key: str) -> Any:
    if isinstance(value, (list, dict)):
        raise ConfigError(f"{path}: key '{key}': expected a single value, got {type(value).__name__} {value!r}")
    if value is None:
        return None
    conv = action.type
    if conv is None:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: key '{key}': expected a string, got {value!r}")
        out = value if isinstance(value, str) else str(value)
    else:
        if isinstance(value, bool) or (conv is int and isinstance(value, float)):
            raise ConfigError(f"{path}: key '{key}': expected {getattr(conv, '__name__', 'a value')}, got {value!r}")
        try:
            out = conv(value if isinstance(value, str) else str(value))
        except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
            raise ConfigError(f"{path}: key '{key}': invalid {getattr(conv, '__name__', 'value')} {value!r} "
                              f"({e})") from None
    if action.choices is not None and out not in action.choices:
        raise ConfigError(f"{path}: key '{key}': {out!r} is not one of {', '.join(map(str, action.choices))}")
    return out


def _convert(actions: list[argparse.Action], value: Any, *, path: str, key: str) -> Any:
    """The parsed value of a config entry, by the rules of the option(s) writing its destination."""
    # prefer the option that takes a value (`--on-error skip`) over a constant flag sharing its dest
    valued = [a for a in actions if a.nargs != 0]
    action = valued[0] if valued else actions[0]
    if isinstance(action, argparse.BooleanOptionalAction) or isinstance(
            action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return _flag(value, path=path, key=key)
    if isinstance(action, argparse._StoreConstAction):  # e.g. --skip-bad-records (dest on_error)
        if value in (action.const, action.default):
            return value
        return action.const if _flag(value, path=path, key=key) else action.default
    if isinstance(action, (argparse._AppendAction,)) or action.nargs in ("+", "*") or isinstance(action.nargs, int):
        if isinstance(value, dict) and action.metavar == "KEY=VALUE":  # `trainer_arg: {report_to: wandb}`
            value = [f"{k}={json.dumps(v)}" for k, v in value.items()]  # JSON: read back as the same YAML value
        items = value if isinstance(value, list) else [value]
        return [_scalar(action, v, path=path, key=key) for v in items]
    if action.nargs == "?":  # e.g. --resume [CHECKPOINT]: a flag or a value
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
    return _scalar(action, value, path=path, key=key)


def apply_options(subparser: argparse.ArgumentParser, values: dict[str, Any], *, source: str) -> dict[str, str]:
    """Set the subcommand's defaults from `values` (option name or dest -> value), each converted and
    checked by the option's own rules; options set here are no longer required on the command line.
    `source` names where the values come from in errors (a config file's path, "recipe NAME").
    Returns {key: dest} for every key (the dests this call set)."""
    by_dest: dict[str, list[argparse.Action]] = {}
    by_option: dict[str, argparse.Action] = {}
    for a in subparser._actions:
        if a.dest not in (argparse.SUPPRESS, "help", "config") and not isinstance(a, argparse._SubParsersAction):
            by_dest.setdefault(a.dest, []).append(a)
            for opt in a.option_strings:
                by_option[opt.lstrip("-").replace("_", "-")] = a

    def actions_for(key: str) -> list[argparse.Action] | None:
        # an option's own name first (`skip-bad-records` is a flag writing `on_error`), then a destination
        option = by_option.get(key.replace("_", "-"))
        if option is not None and option.dest.replace("_", "-") != key.replace("_", "-"):
            return [option]
        return by_dest.get(key.replace("-", "_"))

    unknown = sorted(str(k) for k in values if actions_for(str(k)) is None)
    if unknown:
        raise ConfigError(unknown_keys_message(subparser, unknown, [str(k) for k in values], source=source))
    defaults: dict[str, Any] = {}
    dests: dict[str, str] = {}
    for key, value in values.items():
        actions = actions_for(str(key))
        dest = actions[0].dest
        defaults[dest] = _convert(actions, value, path=source, key=str(key))
        dests[str(key)] = dest
        for a in by_dest[dest]:
            a.required = False
    subparser.set_defaults(**defaults)
    return dests


# options a config file does not set, which an unknown key is not said to be (`unknown_keys_message`)
_NOT_CONFIG_KEYS = ("--config", "--print-config", "--recipe", "--help")


def _separator(key: str, keys: list[str]) -> str:
    """The word separator `key` is written with: its own ("-" or "_"), else the one most keys of its file use,
    else "_"."""
    own = next((c for c in key if c in "-_"), None)
    if own is not None:
        return own
    dashes, underscores = (sum(c in k for k in keys) for c in "-_")
    return "-" if dashes > underscores else "_"


def unknown_keys_message(subparser: argparse.ArgumentParser, unknown: list[str], keys: list[str], *,
                         source: str) -> str:
    """`SOURCE: unknown key for `unime eval`: 'only' (an option of 'unime reason eval'; did you mean task (evaluate
    only this task (repeatable))?)`: each of the `unknown` keys (of all `keys` the file has) with what the command
    line says of the same option (`unime.cli.suggestions.suggest_option`: the other commands that take it; the
    command's option of the same config field, else the closest by spelling), the suggested key spelled with the
    file's separator (`batchsize` -> batch_size, `batch-siz` -> batch-size)."""

    described = []
    for key in unknown:
        found = suggest_option(subparser, "--" + key.replace("_", "-"), exclude=_NOT_CONFIG_KEYS)
        suggested = found.same_field.option_strings if found.same_field is not None else [found.closest]
        flag = next((s for s in suggested if s and s.startswith("--")), None)
        said = [f"an option of {found.others}"] if found.others else []
        if flag is not None:
            helped = option_help(subparser, found.same_field) if found.same_field is not None else ""
            said.append(f"did you mean {flag[2:].replace('-', _separator(key, keys))}{helped}?")
        described.append(f"'{key}'" + (f" ({'; '.join(said)})" if said else ""))
    return f"{source}: unknown key{'s' if len(unknown) > 1 else ''} for `{subparser.prog}`: {', '.join(described)}"
