"""Every config dataclass of `unime` refuses, as it is made from the Python API, a value not of its field's annotated
type (`batch_size="8"`, `batch_size=8.0`, `batch_size=True`, `tau="0.05"`, `full="no"`) or not one of its choices:
an `OptionError` naming the field (`unime.options.RangeChecked`, `check_types`), instead of a TypeError without the
field's name deep inside, or a run that silently does something else.

The configs are found by importing every module of the package, so a new config is covered without a change here."""

from __future__ import annotations

import dataclasses
import importlib
import pathlib
import pkgutil
import types
import typing

import pytest

import unime
from unime.errors import OptionError
from unime.options import RangeChecked


def _options_dataclasses() -> list[type]:
    """The dataclasses of the package with at least one `option(...)` field."""
    found: dict[int, type] = {}
    for info in pkgutil.walk_packages(unime.__path__, "unime."):
        if info.name.rpartition(".")[2] == "__main__":  # runs the command line
            continue
        try:
            module = importlib.import_module(info.name)
        except ModuleNotFoundError as e:  # an optional extra not installed (a module of its own is a failure)
            if (e.name or "").startswith("unime"):
                raise
            continue
        for obj in vars(module).values():
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__.startswith("unime.") \
                    and any("help" in f.metadata for f in dataclasses.fields(obj)):
                found[id(obj)] = obj
    return sorted(found.values(), key=lambda c: (c.__module__, c.__qualname__))


ALL = _options_dataclasses()
# a mixin of options (`DeviceOptions`) is made only as part of the configs that inherit it
CONFIGS = [c for c in ALL if not any(o is not c and issubclass(o, c) for o in ALL)]


def _required(cls) -> dict:
    """Values of the fields without a default (paths or names: `str`, `str | None`, `list[str]`)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            assert hints[f.name] in (str, str | None, list[str]), f"{cls.__qualname__}.{f.name}: give it a value"
            out[f.name] = ["x"] if hints[f.name] == list[str] else "x"
    return out


# wrong values of each plain annotation, and one that fits (checked too: the table's values are not refused for
# another reason)
WRONG = {int: ["8", 8.0, 2.5, True], float: ["0.05", True, None], bool: ["no", 1, None], str: [5, 1.0, True]}


def _cases():
    for cls in CONFIGS:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            hint = hints[f.name]
            optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and \
                set(typing.get_args(hint)) - {type(None)}
            plain = next(iter(optional)) if optional and len(optional) == 1 else hint
            unset = optional or f.metadata.get("cli_default", 0) is None  # None: left unset, the preset's
            values = [v for v in WRONG.get(plain, []) if not (unset and v is None)]
            if "choices" in f.metadata and plain is str:
                values.append("not-one-of-the-choices")
            for value in values:
                yield pytest.param(cls, f.name, value, id=f"{cls.__module__}.{cls.__qualname__}.{f.name}={value!r}")


CASES = list(_cases())


def test_every_config_is_checked():
    """Each config (not a mixin) found has the base that checks its values, and is made with its defaults."""
    names = {c.__qualname__ for c in CONFIGS}
    assert {"EmbedderTrainingConfig", "EmbedConfig", "ServeConfig", "ConvertConfig", "SynthConfig"} <= names
    assert [c.__qualname__ for c in CONFIGS if not issubclass(c, RangeChecked)] == []
    for cls in CONFIGS:
        cls(**_required(cls))
    assert len(CASES) > 300


@pytest.mark.parametrize("cls, name, value", CASES)
def test_wrong_type_refused_naming_the_field(cls, name, value):
    with pytest.raises(OptionError) as caught:
        cls(**{**_required(cls), name: value})
    assert caught.value.render(lambda field: f"<{field}>").startswith(f"<{name}> must be "), str(caught.value)
    assert str(caught.value).startswith(f"{name} must be "), str(caught.value)
    assert repr(value) in str(caught.value)


def test_the_qa_cases_name_the_field_and_the_type():
    from unime.train.embedder_config import EmbedderTrainingConfig

    def refusal(**values) -> str:
        with pytest.raises(OptionError) as caught:
            EmbedderTrainingConfig(model="base", out="o", **values)
        return str(caught.value)

    assert refusal(batch_size="8") == "batch_size must be an int, got '8' (str)"
    assert refusal(batch_size=8.0) == "batch_size must be an int, got 8.0 (float)"
    assert refusal(batch_size=True) == "batch_size must be an int, got True (bool)"
    assert refusal(steps=2.5) == "steps must be an int or None, got 2.5 (float)"
    assert refusal(tau="0.05") == "tau must be a number, got '0.05' (str)"
    assert refusal(full="no") == "full must be a bool (True or False), got 'no' (str)"
    assert refusal(loss="kl") == "loss must be one of 'auto', 'symmetric_kl', 'js', 'infonce', got 'kl'"


def test_values_of_the_right_type_pass():
    """An int for a float, a path object for a path, None where the default is None, `dataclasses.replace`."""
    from unime.train.embedder_config import EmbedderTrainingConfig

    cfg = EmbedderTrainingConfig(model=pathlib.Path("base"), out=pathlib.Path("o"), tau=1, lr=0, steps=None,
                                 resume="checkpoint-2", loss="infonce")
    assert (cfg.tau, cfg.lr, cfg.model) == (1, 0, pathlib.Path("base"))
    assert dataclasses.replace(cfg, batch_size=4).batch_size == 4
    with pytest.raises(OptionError, match="^batch_size must be an int, got '4' "):
        dataclasses.replace(cfg, batch_size="4")
