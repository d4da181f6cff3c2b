"""Errors that name the record and field at fault."""

from __future__ import annotations


class UnimeError(Exception):
    """Base class of unime's own errors."""


class DataError(UnimeError, ValueError):
    """Bad input data. The message names the source file, the record (line or id) and the field. Made with a
    `config` (a config dataclass or its class), `message` is a template whose hint names options as `OptionError`
    does (`{hard_negatives}`; other placeholders from `values`): `str()` by their fields, the command line by its
    options (`unime.cli.failures`)."""

    def __init__(self, message: str, *, source: str | None = None, record: str | int | None = None,
                 field: str | None = None, config=None, **values):
        self.source, self.record, self.field = source, record, field
        self.config = config if config is None or isinstance(config, type) else type(config)
        where = []
        if source is not None:
            where.append(str(source))
        if record is not None:
            where.append(f"record {record}")
        if field is not None:
            where.append(f"field '{field}'")
        if config is None and not values:
            message = _literal(message)
        self.template, self.values = ": ".join([_literal(", ".join(where)), message]) if where else message, values
        super().__init__(self.render(python_name))

    def render(self, name_of) -> str:
        return OptionError.render(self, name_of)


def _literal(text: str) -> str:
    """`text` as a template (`OptionError.render`) that renders as itself."""
    return text.replace("{", "{{").replace("}", "}}")


class UsageError(UnimeError):
    """Command-line options that are missing or do not fit together, where argparse cannot tell alone
    (e.g. `unime plan` without --recipe or --stage). The message names the command and the options; the
    CLI prints it as the one line of the error contract, exit code 2, like argparse's own usage errors."""

    def __init__(self, message: str, *, command: str | None = None):
        self.command = command
        super().__init__(f"{command}: {message}" if command else message)


class OptionError(UnimeError, ValueError):
    """An option value a config refuses: outside its range, or not fitting another option. The message names
    options by their config fields, `{field}` in `template` (other placeholders come from `values`): `str()`
    shows the field names, the keywords of the Python API; the command line shows its options instead
    (`--steps` for `max_steps`, `unime.cli.failures`)."""

    def __init__(self, config, template: str, **values):
        self.config = config if isinstance(config, type) else type(config)
        self.template, self.values = template, values
        super().__init__(self.render(python_name))

    def render(self, name_of) -> str:
        """The message with each field named by `name_of(field)`."""

        class Names(dict):
            def __missing__(self, key: str) -> str:
                return name_of(key)

        return self.template.format_map(Names(self.values))


class ModelError(UnimeError):
    """A checkpoint that cannot be used for the requested role (e.g. a judge whose Yes/No are not
    single tokens)."""


class MissingExtra(UnimeError):
    """A feature whose optional requirements are not installed. The message names the feature, the missing module
    and the pip extra that brings it (`require_extra`)."""


def require_extra(extra: str, feature: str, *modules: str) -> None:
    """Import `modules` (the first is the one the feature is named after), or raise `MissingExtra`:
    `FEATURE needs MODULE, which is not installed: pip install 'unime[EXTRA]'`. The one check of every optional
    feature (`unime serve`, the ray and vllm backends, `train reasoner`, `data import --hf-dataset`), before any
    work, instead of a traceback from deep inside it."""
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            missing = e.name or module
            raise MissingExtra(f"{feature} needs {missing}, which is not installed: "
                               f"pip install 'unime[{extra}]'") from None


class ServeAppInUse(UnimeError):
    """`unime serve --ray` on a Ray cluster whose Ray Serve already runs an application it would replace (one named
    "unime", or one on its route prefix "/"). The message names the application and the cluster's address."""


class ServeAddressUnavailable(UnimeError):
    """`unime serve` asked to listen on a host and port it cannot bind (in use by another process, not an address of
    this machine, a privileged port). The message names --host, --port and the system's reason."""


class DemoStopped(UnimeError):
    """The demo stopped on purpose between stages: what it found would make the next stages meaningless.
    The message names the numbers and what to do (including how to continue anyway)."""


class ChangedOptions(UnimeError):
    """A re-run whose options differ from those of the run it would continue (the message lists the
    differing keys; `--overwrite` starts over). Made with a `config` (a config dataclass or its class) and a
    `template`, it names the options as `OptionError` does: `str()` by their fields, the keywords of the Python API
    (`lr`, `overwrite=True`), the command line by its options (`--lr`, `--overwrite`; `unime.cli.failures`)."""

    def __init__(self, message: str, config=None, **values):
        self.config = config if config is None or isinstance(config, type) else type(config)
        self.template, self.values = (message, values) if config is not None or values else (_literal(message), {})
        super().__init__(self.render(python_name))

    render = OptionError.render


def placeholder_field(name: str) -> tuple[str, bool]:
    """The config field a template's placeholder `name` names, and whether the message gives it as a switch to
    pass (`{+overwrite}`: ("overwrite", True); `{overwrite}`: ("overwrite", False)) — what every renderer of a
    template reads (`python_name`, `unime.options.as_on_the_command_line`, `unime.models.run_state`)."""
    return (name[1:], True) if name.startswith("+") else (name, False)


def python_name(field: str) -> str:
    """How a message for the Python API names the field `field` of a config: by itself (`overwrite must be a
    bool`); a switch to give, written `{+overwrite}` in a template, by what it is set to (`pass overwrite=True`)."""
    name, switch = placeholder_field(field)
    return f"{name}=True" if switch else name


# beside the options a run records: the working directory it ran in, where its relative paths start
WORKING_DIR = "working_dir"


def with_working_dir(options: dict) -> dict:
    """`options` as a run records them: with the working directory (`WORKING_DIR`), so that a re-run from another
    one compares its paths with what the recorded ones named (`changed_option_keys`), not with what they would name
    there. The options themselves stay as the user gave them."""
    import os

    return {**options, WORKING_DIR: os.getcwd()}


def same_path_value(value, base: str | None = None):
    """An option's value as a re-run compares it: a string naming an existing file or folder is its resolved
    absolute path (`os.path.realpath`: `ref`, `./ref`, `ref/` and `/abs/ref` are one value). A relative one is
    taken from `base` (the working directory a run recorded, `WORKING_DIR`), else from the working directory: a
    run recorded without it (by an earlier unime), or whose folder named nothing there any more (moved since),
    compares as run from here. A list, each element (a dict, each value); anything else as it is."""
    import os

    if isinstance(value, dict):
        return {k: same_path_value(v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [same_path_value(v, base) for v in value]
    if isinstance(value, str) and value:
        for path in ([os.path.join(base, value)] if isinstance(base, str) and base else []) + [value]:
            if os.path.exists(path):
                return os.path.realpath(path)
    return value


def changed_option_keys(before: dict, now: dict, free=(), added_defaults: dict | None = None,
                        none_means: dict | None = None, aliases: dict | None = None) -> list[str]:
    """Keys (outside `free`, and never `out`: the folder compared is OUT itself) whose values differ; JSON
    round-trip so tuples and lists compare equal, paths by what they name (`same_path_value`; the relative paths
    of `before` from the working directory it recorded, `WORKING_DIR`, which is no option). A key
    the earlier run did not record (an option added by a later version of unime) whose value now is its
    default in `added_defaults` is no change: a new option's default keeps the earlier behaviour.
    `none_means` ({key: value}, `unime.options.none_meanings`): an option whose None stands for a value
    (`video_frames`: 8) given at that value is the same as left at None, on either side. `aliases` ({key:
    {spelling: value}}, `unime.options.option_aliases`): the spellings of one value (`dtype`: bfloat16 = bf16) are
    that value, on either side."""
    import json

    def plain(d) -> dict:
        return json.loads(json.dumps(d or {}, default=str))

    now, before, added, means = plain(now), plain(before), plain(added_defaults), plain(none_means)
    spelled = plain(aliases)
    base = before.pop(WORKING_DIR, None)
    now.pop(WORKING_DIR, None)

    def value(d: dict, k: str, base=None):
        v = d.get(k)
        v = spelled[k].get(v, v) if isinstance(v, str) and isinstance(spelled.get(k), dict) else v
        return None if k in means and v == means[k] else same_path_value(v, base)

    free = set(free) | {"out"}
    return sorted(k for k in (set(before) | set(now)) - free if value(before, k, base) != value(now, k)
                  and not (k not in before and k in added and value(now, k) == same_path_value(added[k])))


def refuse_changed_options(out, before: dict, now: dict, keys: list[str], config=None, *,
                           key_fields: dict[str, str] | None = None, out_field: str = "out",
                           resumes: bool = True) -> ChangedOptions:
    """The one refusal wording of a re-run with other options (trainers, mining, eval, data synth). `config` (the
    run's config dataclass, or its class): a key that is one of its fields (or maps to one in `key_fields`, a
    recorded key named otherwise) is named as the user gives it — from Python by its field (`lr`,
    `overwrite=True`), on the command line by its option (`--lr`, QA: not `learning_rate`; `ChangedOptions`).
    A path typed alike that names another file from another working directory says from where (`WORKING_DIR`).
    `out_field`: the field naming the output folder (`reason split`: out_dir, --out-dir). `resumes=False`: the
    command has no run to continue (`reason split` / `reason eval` run again from the start under the same
    options), and the wording says so. Without `config`, the keys as recorded and the command line's wording."""
    import dataclasses
    import json
    import os

    now = json.loads(json.dumps(now, default=str))
    names = {f.name for f in dataclasses.fields(config)} if config is not None else set()
    key_fields = {k: k for k in keys if k in names} | {k: f for k, f in (key_fields or {}).items() if f in names}
    values: dict = {"_out": out}
    there = before.get(WORKING_DIR)

    def change(k: str) -> str:
        if there and before.get(k) == now.get(k):
            return f"{before.get(k)!r} (from {there}) -> {now.get(k)!r} (from {os.getcwd()})"
        return f"{before.get(k)!r} -> {now.get(k)!r}"

    def named(k: str) -> str:
        values[f"_c{len(values)}"] = change(k)
        key = "{%s}" % key_fields[k] if k in key_fields else k.replace("{", "{{").replace("}", "}}")
        return f"{key}: {{_c{len(values) - 1}}}"

    shown = ", ".join(named(k) for k in keys)
    if config is None:
        values.update({"+overwrite": "--overwrite"}, out_field="--out" if out_field == "out" else out_field)
    again = "re-run with the same options to continue it, pass {+overwrite} to start over" if resumes else \
        "re-run with the same options, pass {+overwrite} to replace its outputs"
    return ChangedOptions("{_out} holds a run with other options (%s); %s, or choose another {%s}"
                          % (shown, again, "out_field" if config is None else out_field), config, **values)
