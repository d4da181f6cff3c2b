"""Options declared once: a config dataclass field carries its command-line option in its metadata.

`option(default, help, **cli)` is `dataclasses.field` with the option's help and, only where the
field's name, annotation and default do not say it, its argparse settings: `flag` (default
`--field-name`; or `--dest-name` with `dest`), `dest` (the namespace name, default the field's), `action`,
`choices`, `metavar`, `type`, `nargs`, `const`, `group` (argparse group title), `cli_default` (the command
line's default where it differs from the Python API's), `cli=False` (no command-line option),
`positional=True` (a positional argument named by the field) and `exclusive` (the name of a mutually
exclusive group of options; `exclusive_required=True` on its first field: one of them must be given) and
`switch=(FLAG, VALUE)` (a second flag that sets the option to VALUE, e.g. `--skip-bad-records` = `--on-error skip`).
`unime.cli.dataclass_options` generates the options and builds the config from the parsed namespace.
"""

from __future__ import annotations

from dataclasses import MISSING, field, fields
from typing import Any


def option(default: Any = MISSING, help: str | None = None, *, factory: Any = MISSING, **cli: Any):
    """A dataclass field declaring its command-line option (see the module doc)."""
    return field(default=default, default_factory=factory, metadata={"help": help, **cli})


def option_defaults(config) -> dict[str, Any]:
    """The defaults of a config dataclass's fields (`changed_option_keys`' `added_defaults`: a run recorded by
    an earlier version, before an option existed, continues when the option keeps its default)."""
    out = {}
    for f in fields(config):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


def key_value_pairs(pairs, flag: str) -> dict[str, Any]:
    """`KEY=VALUE` strings of a repeatable option (`flag`, for the message) → a dict, each value read as YAML
    (8 → int, true → bool, [a, b] → list, {a: 1} → dict). ValueError naming `flag` and a string without
    `=`."""
    import yaml

    out: dict[str, Any] = {}
    for item in pairs or []:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out
