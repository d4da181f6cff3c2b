"""Every config dataclass of `unime` with a ranged option (`option(at_least= / above= / at_most=)`) or a float
option refuses a value outside its range, NaN included, as it is made from the Python API: an `OptionError` naming
the field (`unime.options.RangeChecked`), as the command line refuses the same value naming its flag.

The configs are found by importing every module of the package, so a new config is covered without a change here."""

from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil
import types
import typing

import pytest

import unime
from unime.errors import OptionError

_BOUNDS = ("at_least", "above", "at_most")


def _modules():
    for info in pkgutil.walk_packages(unime.__path__, "unime."):
        if info.name.rpartition(".")[2] == "__main__":  # runs the command line
            continue
        try:
            yield importlib.import_module(info.name)
        except ModuleNotFoundError as e:  # an optional extra not installed (a module of its own is a failure)
            if (e.name or "").startswith("unime"):
                raise


def _number_kind(hint) -> type | None:
    """int or float for `int`, `float`, `float | None`, `list[float]`, `tuple[float, ...]` ...; None otherwise."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType, list, tuple):
        kinds = {_number_kind(a) for a in typing.get_args(hint)} - {None}
        return float if float in kinds else int if int in kinds else None
    return hint if hint in (int, float) and hint is not bool else None


def _is_sequence(hint) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is_sequence(a) for a in typing.get_args(hint) if a is not type(None))
    return origin in (list, tuple)


def _checked_fields(cls) -> list[tuple[dataclasses.Field, type, bool]]:
    """(field, int / float, holds a list) of the options of `cls` that are ranged or hold floats."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata or not f.init:  # not an `option(...)`
            continue
        kind = _number_kind(hints[f.name])
        if kind is not None and (set(_BOUNDS) & set(f.metadata) or kind is float):
            out.append((f, kind, _is_sequence(hints[f.name])))
    return out


def _configs() -> list[type]:
    found: dict[int, type] = {}
    for module in _modules():
        for obj in vars(module).values():
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__.startswith("unime.") \
                    and _checked_fields(obj):
                found[id(obj)] = obj
    return sorted(found.values(), key=lambda c: (c.__module__, c.__qualname__))


def _required(cls) -> dict:
    """Values of the fields without a default (all paths or names, `str` / `list[str]`)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            assert hints[f.name] in (str, list[str]), f"{cls.__qualname__}.{f.name}: give the test a value"
            out[f.name] = ["x"] if hints[f.name] == list[str] else "x"
    return out


def _outside(f: dataclasses.Field, kind: type) -> list:
    """Values just outside each declared bound of `f` (not its default: a default outside the range is a marker
    the field accepts, `max_steps=-1`), and NaN for a float."""
    md, step = f.metadata, 1 if kind is int else 0.5
    values = []
    for bound, delta in (("at_least", -step), ("above", 0), ("at_most", step)):
        if bound in md:
            value = md[bound] + delta
            while value == f.default:
                value += delta or -step
            values.append(kind(value))
    if kind is float:
        values.append(math.nan)
    return values


def _cases():
    for cls in _configs():
        for f, kind, several in _checked_fields(cls):
            for value in _outside(f, kind):
                yield pytest.param(cls, f.name, [value] if several else value,
                                   id=f"{cls.__module__}.{cls.__qualname__}.{f.name}={value!r}")


CASES = list(_cases())


def test_configs_are_found():
    """The walk finds the configs (a few known ones among them), and each is made with its defaults."""
    names = {p.values[0].__qualname__ for p in CASES}
    assert {"EmbedConfig", "GenerateConfig", "Limits", "ServeConfig", "PlanOptions", "TinyBuildConfig"} <= names
    for cls in {p.values[0] for p in CASES}:
        cls(**_required(cls))


@pytest.mark.parametrize("cls, name, value", CASES)
def test_out_of_range_refused_naming_the_field(cls, name, value):
    with pytest.raises(OptionError) as caught:
        cls(**_required(cls), **{name: value})
    assert caught.value.render(lambda field: f"<{field}>").startswith(f"<{name}> must be "), str(caught.value)
    assert str(caught.value).startswith(f"{name} must be ")


@pytest.mark.parametrize("cls, name, value", CASES)
def test_out_of_range_assigned_refused_as_at_construction(cls, name, value):
    """A field assigned once the config is made (`cfg.lr = -1.0`) is refused as at construction: the same message,
    the field left as it was (a frozen config is assigned no value at all)."""
    with pytest.raises(OptionError) as made:
        cls(**_required(cls), **{name: value})
    cfg = cls(**_required(cls))
    before = getattr(cfg, name)
    if cls.__dataclass_params__.frozen:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(cfg, name, value)
        return
    with pytest.raises(OptionError) as assigned:
        setattr(cfg, name, value)
    assert str(assigned.value) == str(made.value)
    assert assigned.value.render(lambda field: f"<{field}>") == made.value.render(lambda field: f"<{field}>")
    assert getattr(cfg, name) is before


def test_the_qa_cases_assigned():
    from unime.train.embedder_config import EmbedderTrainingConfig

    cfg = EmbedderTrainingConfig(model="base", out="o", records="r.jsonl")
    for name, value, message in [("lr", -1.0, "lr must be >= 0, got -1.0"),
                                 ("tau", math.nan, "tau must be > 0, got nan"),
                                 ("tau", 0.0, "tau must be > 0, got 0.0"),
                                 ("batch_size", 0, "batch_size must be >= 1, got 0"),
                                 ("lr", math.inf, "lr must be a finite number, got inf")]:
        with pytest.raises(OptionError) as caught:
            setattr(cfg, name, value)
        assert str(caught.value) == message
    assert (cfg.lr, cfg.tau, cfg.batch_size) == (1e-4, 0.02, 8)
    cfg.lr, cfg.tau, cfg.batch_size = 0.0, 1, 2  # in range (an int for a float)
    assert (cfg.lr, cfg.tau, cfg.batch_size) == (0.0, 1, 2)
