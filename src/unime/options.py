"""Options declared once: a config dataclass field carries its command-line option in its metadata.

`option(default, help, **cli)` is `dataclasses.field` with the option's help and, only where the
field's name, annotation and default do not say it, its argparse settings: `flag` (default
`--field-name`; or `--dest-name` with `dest`), `dest` (the namespace name, default the field's), `action`,
`choices`, `metavar`, `type`, `nargs`, `const`, `group` (argparse group title), `cli_default` (the command
line's default where it differs from the Python API's), `cli=False` (no command-line option),
`positional=True` (a positional argument named by the field) and `exclusive` (the name of a mutually
exclusive group of options; `exclusive_required=True` on its first field: one of them must be given) and
`switch=(FLAG, VALUE)` (a second flag that sets the option to VALUE, e.g. `--skip-bad-records` = `--on-error skip`).
`none_means=VALUE` (not an argparse setting) says what an option whose default is None stands for, so that a re-run
giving it explicitly is no change of options (`none_meanings`); `aliases={SPELLING: VALUE}` (not an argparse setting)
names the spellings of one value (`--dtype bfloat16` = `bf16`), no change of options either (`option_aliases`).
`input_file=True` (not an argparse setting either):
the option names a file (or files) whose content the run depends on (`input_files`: a trainer's records).
`at_least=N` / `above=N` / `at_most=N` / `below=N` (not argparse settings either) give a number option's range
(`holdout`: `at_least=0, below=1`), and a float
value that is NaN or inf is refused whatever the range (`finite=False`: an option where inf means "no limit", which
says so in its help, takes inf but still not NaN) (`range_problem`): the command line (and an options file, whose
values go through the command line's parser) refuses a value outside it as a one-line usage error naming the
option, before any work, and a config's `check_ranges` does the same from Python, naming the field.
`unime.cli.dataclass_options` generates the options and builds the config from the parsed namespace.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import os
import types
import typing
from dataclasses import MISSING, Field, field, fields
from typing import Any


def option(default: Any = MISSING, help: str | None = None, *, factory: Any = MISSING, none_means: Any = MISSING,
           aliases: dict[str, str] | None = None, input_file: bool = False, **cli: Any):
    """A dataclass field declaring its command-line option (see the module doc). `none_means`: the value an
    option whose default is None stands for (`--video-frames`: 8 frames); given explicitly, that value is the
    option left unset when a re-run's options are compared (`none_meanings`). `aliases`: {spelling: the value it
    spells} of an option kept as typed, one value when a re-run's options are compared (`option_aliases`).
    `input_file`: the option names files whose content is part of the run's identity (`input_files`)."""
    extra = {} if none_means is MISSING else {"none_means": none_means}
    if aliases:
        extra["aliases"] = dict(aliases)
    if input_file:
        extra["input_file"] = True
    return field(default=default, default_factory=factory, metadata={"help": help, **cli, **extra})


def allow_outside_root_option(help: str = "permit image and video paths outside the data root (absolute, '..')"):
    """`--allow-outside-root`: media paths may leave the data root (`unime.data.images.ImageLoader`); every
    command that reads a user's media takes it."""
    return option(False, help)


def index_mmap_option():
    """`--mmap`: the index's FAISS index is read memory-mapped (`unime.index.store.read_faiss_index`) — `unime search`
    and `unime serve` take it alike."""
    return option(False, "read the index's faiss.index memory-mapped: its vectors stay in the file (paged in by the "
                  "searches, dropped by the kernel when memory is short) instead of copied into memory; the same "
                  "results, a near-instant load, no second copy held during a reload")


def on_error_option(help: str, **cli: Any):
    """The `--on-error raise|skip` option of a command that reads data (`unime.data.skips.ErrorPolicy`), with
    its `--skip-bad-records` switch (= `--on-error skip`) — every command that has one takes both."""
    return option("raise", help, choices=["raise", "skip"], switch=("--skip-bad-records", "skip"), **cli)


# transformers' `SchedulerType` values (`lr_scheduler_type`), copied: importing transformers.trainer_utils loads torch,
# which parsing a command line does not (tests/train/test_hf_arguments.py keeps the copy equal to transformers')
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                 "warmup_stable_decay", "greedy")


def lr_scheduler_option(default: str = "linear", help: str | None = None, **cli: Any):
    """The `--lr-scheduler NAME` option of a trainer (transformers' `lr_scheduler_type`), whose every trainer takes
    the same names: another is refused when the command line is parsed (and in an options file), as a one-line usage
    error listing them, instead of a traceback from transformers once the models are loaded."""
    return option(default, help, choices=list(LR_SCHEDULERS), metavar="NAME", **cli)


def check_optimizer_name(name: str, config=None) -> None:
    """`--optim`: one of transformers' optimizer names (`OptimizerNames`), checked before a run claims its output
    folder, as a one-line error listing them, instead of a traceback from transformers once the models are loaded.
    (transformers is imported only here: its list changes between versions, unlike the scheduler names above.)
    The option is named as the user gives it (`option_name`: `optim` from Python, `--optim` in a command)."""
    from transformers.training_args import OptimizerNames

    from unime.errors import UnimeError

    names = [o.value for o in OptimizerNames]
    if name not in names:
        raise UnimeError(f"{option_name(config, 'optim')} {name!r} is not one of transformers' optimizer names: "
                         f"{', '.join(names)}")


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


def none_meanings(config) -> dict[str, Any]:
    """{field: the value its None default stands for} of a config dataclass's fields that declare one
    (`option(none_means=)`): `changed_option_keys`' `none_means`, so that a re-run giving an option's default
    explicitly (`--video-frames 8`) continues a run that left it unset, and the other way round."""
    return {f.name: f.metadata["none_means"] for f in fields(config) if "none_means" in f.metadata}


def option_aliases(config) -> dict[str, dict[str, str]]:
    """{field: {spelling: the value it spells}} of a config dataclass's fields that declare aliases
    (`option(aliases=)`): `changed_option_keys`' `aliases`, so that a run recorded with `--dtype bf16` continues
    under `--dtype bfloat16`, and the other way round."""
    return {f.name: f.metadata["aliases"] for f in fields(config) if "aliases" in f.metadata}


def field_flag(f) -> str | tuple[str, ...]:
    """The command-line flag of config field `f` as declared: its `flag` (a string, or a tuple of aliases), else
    `--dest-name` (`dest` or the field's name)."""
    return f.metadata.get("flag", "--" + f.metadata.get("dest", f.name).replace("_", "-"))


def option_flags(config) -> dict[str, str]:
    """{field: the flag a user gives} of a config dataclass's command-line options (the first of several
    aliases): what a message about an option names (`--lr`, not `learning_rate`)."""
    out = {}
    for f in fields(config):
        if f.metadata.get("cli", True) and not f.metadata.get("positional"):
            flag = field_flag(f)
            out[f.name] = flag[0] if isinstance(flag, tuple) else flag
    return out


def as_on_the_command_line(exc: Exception) -> str:
    """The message of an error made with a config (`unime.errors.ChangedOptions`, `DataError`: `exc.config`, and
    `exc.render`), its options named by the command line's flags (`--overwrite`, `--out` also for a config that
    does not declare them); `str(exc)` names the fields, the keywords of the Python API."""
    from unime.errors import placeholder_field

    if getattr(exc, "config", None) is None:
        return str(exc)
    flags = {"overwrite": "--overwrite", "out": "--out", **option_flags(exc.config)}
    return exc.render(lambda name: flags.get(placeholder_field(name)[0], name))  # `{+overwrite}`: the switch given


# whether this process runs a command of `unime` (`command_line_wording`): what a run logs, or a message made while
# it runs without a config to render it later, then names options by their flags; from Python, by their fields
_COMMAND_LINE = [False]


@contextlib.contextmanager
def command_line_wording():
    """Within the block (`unime.cli.main`, one command), messages name options as the command line does: a warning
    logged during the run (`warn_other_global_batch`), a skipped record's example (`SkipReport`), a refusal made
    without a config (`as_given`). Outside it, from the Python API, by the fields, the keywords a caller gave."""
    before = _COMMAND_LINE[0]
    _COMMAND_LINE[0] = True
    try:
        yield
    finally:
        _COMMAND_LINE[0] = before


def on_the_command_line() -> bool:
    """Whether a command of `unime` is running in this process (`command_line_wording`)."""
    return _COMMAND_LINE[0]


def as_given(flag: str, field: str) -> str:
    """An option as the user gives it where the message is shown: `flag` (`--out`) in a command of `unime`,
    `field` (`out`, `overwrite=True`) from the Python API (`command_line_wording`)."""
    return flag if on_the_command_line() else field


def as_the_user_gave_it(exc: Exception) -> str:
    """The message of `exc` as the surface running shows it: `as_on_the_command_line` in a command of `unime`, else
    `str(exc)`, its options named by their fields (`command_line_wording`)."""
    return as_on_the_command_line(exc) if on_the_command_line() else str(exc)


def option_name(config, name: str) -> str:
    """Option `name` of `config` (a config dataclass or its class) as the user gives it (`as_given`): its flag in a
    command of `unime` (`--batch-size`), its field from the Python API (`batch_size`)."""
    if not on_the_command_line():
        return name
    flags = {"overwrite": "--overwrite", "out": "--out", **(option_flags(config) if config is not None else {})}
    return flags.get(name, "--" + name.replace("_", "-"))


def input_files(config) -> dict[str, Any]:
    """{field: its value} of a config's fields declared `option(input_file=True)`: the files (a path, or a list
    of paths) whose content a run depends on; a trainer records it and refuses to continue on other content
    (`unime.models.run_state`)."""
    return {f.name: getattr(config, f.name) for f in fields(config) if f.metadata.get("input_file")}


def _floats(value: Any) -> list[float]:
    """The floats of `value`: itself, or those of a list / tuple (`--weights 1 inf 0`)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in items if isinstance(v, float)]


_BOUNDS = {"at_least", "above", "at_most", "below"}


def range_problem(f: Field, value: Any) -> str | None:
    """What is wrong with `value` for the field `f` by its range (`option(at_least=N)`: value >= N; `above=N`:
    value > N; `at_most=N`: value <= N; `below=N`: value < N), e.g. "must be >= 1, got 0", or a float value that
    is NaN or inf
    (refused for every field unless it declares `finite=False`, where inf means "no limit": then only NaN is);
    None when it is in range or None. A default outside the range is a marker the field accepts too
    (`max_steps=-1`: train by epochs)."""
    md = f.metadata
    if value is None or isinstance(value, bool):
        return None

    def outside(v: Any) -> bool:
        return ("at_least" in md and not v >= md["at_least"]) or ("above" in md and not v > md["above"]) or \
            ("at_most" in md and not v <= md["at_most"]) or ("below" in md and not v < md["below"])

    if _BOUNDS & set(md) and isinstance(value, numbers.Real):  # not a number: the type checks' (`check_types`),
        # not compared
        marker = f.default not in (MISSING, None) and not isinstance(f.default, bool) and outside(f.default)
        if outside(value) and not (marker and value == f.default):
            low = f">= {md['at_least']}" if "at_least" in md else f"> {md['above']}" if "above" in md else None
            high = f"<= {md['at_most']}" if "at_most" in md else f"< {md['below']}" if "below" in md else None
            bound = " and ".join(b for b in (low, high) if b)
            return f"must be {bound}{f' (or {f.default!r}, its default)' if marker else ''}, got {_shown(value)}"
    several = isinstance(value, (list, tuple))
    if md.get("finite", True) and not all(math.isfinite(v) for v in _floats(value)):
        return f"must be {'finite numbers' if several else 'a finite number'}, got {_shown(value)}"
    if any(math.isnan(v) for v in _floats(value)):  # `finite=False`: inf is "no limit", NaN nothing
        return f"must be {'numbers' if several else 'a number'} (inf: no limit), got {_shown(value)}"
    return None


def _shown(value: Any) -> str:
    """`repr(value)` in a refusal, cut to its first 120 characters when longer, with its length: a list of 10,000
    in-memory records given as `records=` was shown whole, a message of 600 KB (QA)."""
    text = repr(value)
    if len(text) <= 120:
        return text
    try:
        size = f"{len(value)} {'characters' if isinstance(value, (str, bytes)) else 'items'}"
    except TypeError:  # not sized
        size = f"{len(text)} characters"
    return f"{text[:120]}... ({size})"


def check_ranges(config) -> None:
    """OptionError naming the first field of the dataclass instance `config` outside its range (`range_problem`)."""
    from unime.errors import OptionError

    for f in fields(config):
        problem = range_problem(f, getattr(config, f.name))
        if problem:
            raise OptionError(config, "{%s} {problem}" % f.name, problem=problem)


@functools.lru_cache(maxsize=None)
def _field_types(cls: type) -> dict[str, Any]:
    """{field: its annotation, resolved} of the dataclass `cls` (its module says `from __future__ import
    annotations`: the annotations are strings until `typing.get_type_hints` reads them)."""
    return typing.get_type_hints(cls)


_KIND_NAMES = {int: "an int", float: "a number", bool: "a bool (True or False)", str: "a string"}


def _fits(hint: Any, value: Any, path: bool) -> bool | None:
    """Whether `value` is of the type `hint` (int: an int but not a bool; float: an int or a float but not a bool;
    bool: a bool; str: a string, or an `os.PathLike` where `path`; `X | None`; `list[X]` / `tuple[X, ...]`: a list
    or tuple of such items, not a string (`_sequence_fits`); a dataclass or other class: an instance); None for a
    type this does not check (Any, dicts, a bare list or tuple)."""
    if hint is Any:
        return None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        fits = [_fits(h, value, path) for h in typing.get_args(hint)]
        return True if True in fits else None if None in fits else False
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str) or (path and isinstance(value, os.PathLike))
    if typing.get_origin(hint) in (list, tuple):
        return _sequence_fits(hint, value, path)
    if isinstance(hint, type) and typing.get_origin(hint) is None and hint not in (list, tuple, dict):
        return isinstance(value, hint)
    return None


def _sequence_fits(hint: Any, value: Any, path: bool) -> bool:
    """Whether `value` fits `list[X]` / `tuple[X, ...]` / `tuple[X, Y]` (`_fits`): a list or a tuple (either, for
    either annotation; not a string, which would be iterated as its characters), of the declared length for a
    fixed-length tuple, each item of its type (an item of a type `_fits` does not check: any)."""
    if not isinstance(value, (list, tuple)):
        return False
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and args and args[-1] is not Ellipsis:  # fixed length
        if len(value) != len(args):
            return False
        item_hints = args
    else:
        item_hints = args[:1] * len(value)
    return all(_fits(h, v, path) is not False for h, v in zip(item_hints, value))


def _kind_name(hint: Any) -> str:
    """`hint` as a message names it: "an int", "an int or None", "a string or None" ..."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        names = [_kind_name(h) for h in typing.get_args(hint) if h is not type(None)]
        return " or ".join(names + (["None"] if type(None) in typing.get_args(hint) else []))
    if typing.get_origin(hint) in (list, tuple):
        args = typing.get_args(hint)
        kind = typing.get_origin(hint).__name__
        if kind == "tuple" and args and args[-1] is not Ellipsis:  # fixed length
            if len(set(args)) == 1:
                return f"a tuple of {len(args)} {_plural(args[0])}"
            return f"a tuple ({', '.join(map(_kind_name, args))})"
        return f"a {kind} of {_plural(args[0])}" if args else f"a {kind}"
    return _KIND_NAMES.get(hint, f"a {getattr(hint, '__name__', hint)}")


_PLURAL_NAMES = {int: "ints", float: "numbers", bool: "bools (True or False)", str: "strings"}


def _plural(hint: Any) -> str:
    """The items of type `hint` as a message names them: "strings", "lists of strings", "ints or None" ..."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_plural(h) if h is not type(None) else "None" for h in typing.get_args(hint))
    if typing.get_origin(hint) in (list, tuple):
        return _kind_name(hint).replace("a ", "", 1).replace(" of ", "s of ", 1)
    return _PLURAL_NAMES.get(hint, f"{getattr(hint, '__name__', hint)} objects")


def type_problem(config: Any, f: Field, value: Any) -> str | None:
    """What is wrong with `value` for the field `f` of the dataclass `config` by its annotation (`_fits`) or its
    `choices` (`option(choices=[...])`: one of them, or a list of them for an option taking several), e.g.
    "must be an int, got '8' (str)"; None when it fits, or its type is one this does not check. A string field
    without choices takes an `os.PathLike` too: most name a file or folder, which the code opens either way
    (`out=pathlib.Path(...)`). None, where the field's default or its command line's is None, is the option
    left unset."""
    if value is None and None in (f.default, f.metadata.get("cli_default", MISSING)):  # left unset
        return None
    hint = _field_types(config if isinstance(config, type) else type(config)).get(f.name, Any)
    fits = _fits(hint, value, "choices" not in f.metadata)
    if fits is False:
        return f"must be {_kind_name(hint)}, got {_shown(value)} ({type(value).__name__})"
    choices = f.metadata.get("choices")
    if choices is not None and value is not None and fits:
        several = isinstance(value, (list, tuple))
        if any(v not in choices for v in (value if several else [value])):
            return (f"must be {'a list of ' if several else ''}one of {', '.join(map(repr, choices))}, "
                    f"got {_shown(value)}")
    return None


def check_types(config) -> None:
    """OptionError naming the first field of the dataclass instance `config` whose value is not of its annotated
    type, or not one of its `choices` (`type_problem`): `batch_size="8"`, `full="no"` from the Python API,
    refused as the config is made instead of a TypeError without the field's name deep inside (the command line's
    parser converts its values first)."""
    from unime.errors import OptionError

    for f in fields(config):
        if f.init:
            problem = type_problem(config, f, getattr(config, f.name))
            if problem:
                raise OptionError(config, "{%s} {problem}" % f.name, problem=problem)


def field_problem(config: Any, f: Field, value: Any) -> str | None:
    """What is wrong with `value` for the field `f` of `config`: its type or choices (`type_problem`, a field its
    `__init__` takes), then its range (`range_problem`); None when nothing is."""
    return (type_problem(config, f, value) if f.init else None) or range_problem(f, value)


@functools.lru_cache(maxsize=None)
def _fields_by_name(cls: type) -> dict[str, Field]:
    return {f.name: f for f in fields(cls)} if hasattr(cls, "__dataclass_fields__") else {}


class RangeChecked:
    """Base of every config dataclass with a ranged option (`option(at_least= / above= / at_most= / below=)`) or a
    float field, and of the others made from the Python API: its `__post_init__` refuses a value not of its field's
    annotated type or not one of its choices (`check_types`), then one outside its range, NaN and inf included
    (`check_ranges`), then fields that do not fit together (`check_together`): an OptionError naming the field, as
    the config is made — from the Python API too, not only on the command line (whose parser refuses the same
    values first, naming the flag), and before a command claims its output folder. A subclass with its own
    `__post_init__` calls `super().__post_init__()` first (a value it converts before the checks, e.g. a
    comma-separated string into a tuple, before it); `dataclasses.replace` checks the new values too.

    A field assigned once the config is made (`cfg.lr = -1.0`) is checked the same way, with the same message,
    and left unchanged when refused (`__setattr__`); a frozen subclass cannot be assigned at all."""

    def __post_init__(self) -> None:
        check_types(self)
        check_ranges(self)
        self.check_together()

    def check_together(self) -> None:
        """OptionError naming fields whose values do not fit together (`min_pixels` above `max_pixels`), checked
        as the config is made and after each field assigned; a base declaring such a check extends this one,
        calling `super().check_together()`."""

    def __setattr__(self, name: str, value: Any) -> None:
        f = _fields_by_name(type(self)).get(name) if name in self.__dict__ else None
        if f is None:  # set by `__init__` (checked by `__post_init__`), or not a field
            object.__setattr__(self, name, value)
            return
        problem = field_problem(self, f, value)
        if problem:
            from unime.errors import OptionError

            raise OptionError(self, "{%s} {problem}" % name, problem=problem)
        old = self.__dict__[name]
        object.__setattr__(self, name, value)
        try:
            self.check_together()
        except BaseException:
            object.__setattr__(self, name, old)
            raise


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
