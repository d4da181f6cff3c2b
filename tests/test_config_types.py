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
from tests.helpers import assert_assignment_refused_as_made, refused_assignment
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


def test_a_long_value_of_the_wrong_type_is_shown_cut_short():
    """QA (Python API): `EmbedderTrainingConfig(records=[...10,000 record dicts...])` (in-memory records go to
    `train_embedder(config, records=...)`) was refused with the whole list in the message: 607,825 characters. A
    value whose repr is longer than 120 characters is shown by its first 120 and its length; a short one whole."""
    from unime.train.embedder_config import EmbedderTrainingConfig

    records = [{"query": {"text": f"q{i}"}, "positive": {"text": f"p{i}"}} for i in range(10_000)]
    with pytest.raises(OptionError) as caught:
        EmbedderTrainingConfig(model="base", out="o", records=records)
    assert str(caught.value) == f"records must be a string or None, got {repr(records)[:120]}... (10000 items) (list)"
    with pytest.raises(OptionError) as caught:
        EmbedderTrainingConfig(model="base", out="o", loss="x" * 200)
    assert str(caught.value).endswith(f", got {repr('x' * 200)[:120]}... (200 characters)")
    with pytest.raises(OptionError) as caught:
        EmbedderTrainingConfig(model="base", out="o", records=[1] * 39)  # its repr: 117 characters, whole
    assert str(caught.value) == f"records must be a string or None, got {[1] * 39!r} (list)"


def test_values_of_the_right_type_pass():
    """An int for a float, a path object for a path, None where the default is None, `dataclasses.replace`."""
    from unime.train.embedder_config import EmbedderTrainingConfig

    cfg = EmbedderTrainingConfig(model=pathlib.Path("base"), out=pathlib.Path("o"), tau=1, lr=0, steps=None,
                                 resume="checkpoint-2", loss="infonce")
    assert (cfg.tau, cfg.lr, cfg.model) == (1, 0, pathlib.Path("base"))
    assert dataclasses.replace(cfg, batch_size=4).batch_size == 4
    with pytest.raises(OptionError, match="^batch_size must be an int, got '4' "):
        dataclasses.replace(cfg, batch_size="4")


@pytest.mark.parametrize("cls, name, value", CASES)
def test_wrong_type_assigned_refused_as_at_construction(cls, name, value):
    """A field assigned once the config is made is checked as at construction: the same message, the field left
    as it was (a frozen config is assigned no value at all)."""
    assert_assignment_refused_as_made(cls, _required(cls), name, value)


# an item of the wrong type in a list / tuple field, by the items' annotation
WRONG_ITEM = {int: "1", float: "0.5", bool: "no", str: 5}


def _sequence_hint(hint):
    """`hint` itself where it is `list[X]` / `tuple[...]`, or the one such type of `list[X] | None`; else None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        return _sequence_hint(rest[0]) if len(rest) == 1 else None
    return hint if typing.get_origin(hint) in (list, tuple) else None


def _wrong_sequences(hint, default) -> list:
    """Values a `list[X]` / `tuple[...]` field refuses: a bare string (iterated as its characters), an item of the
    wrong type, a fixed-length tuple of another length."""
    args = typing.get_args(hint)
    fixed = typing.get_origin(hint) is tuple and args[-1] is not Ellipsis
    item = args[0]
    wrong_item = WRONG_ITEM.get(item, "abc" if _sequence_hint(item) else None)
    values = ["abc"]
    if fixed:
        good = list(default)
        values += [tuple([wrong_item] + good[1:]), tuple(good[:-1])]
    elif wrong_item is not None:
        values.append([wrong_item])
    return values


def _sequence_cases():
    for cls in CONFIGS:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = _sequence_hint(hints[f.name])
            if f.init and hint is not None:
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                for value in _wrong_sequences(hint, default):
                    yield pytest.param(cls, f.name, value,
                                       id=f"{cls.__module__}.{cls.__qualname__}.{f.name}={value!r}")


SEQUENCE_CASES = list(_sequence_cases())


def test_the_list_fields_are_found():
    names = {p.values[1] for p in SEQUENCE_CASES}
    assert {"trainer_arg", "lora_targets", "losses", "records", "weights", "channels", "also"} <= names


@pytest.mark.parametrize("cls, name, value", SEQUENCE_CASES)
def test_list_field_refuses_a_string_and_wrong_items(cls, name, value):
    """A bare string where a list is declared, which would be iterated as its characters, and an item of the wrong
    type are refused naming the field, as the config is made and when assigned. (A field that documents a
    comma-separated string, `lora_targets="q_proj,v_proj"`, takes it as it is made: split into names.)"""
    try:
        cfg = cls(**{**_required(cls), name: value})
    except OptionError as e:
        assert str(e).startswith(f"{name} must be a "), str(e)
        assert repr(value) in str(e)
    else:
        assert isinstance(value, str) and list(getattr(cfg, name)) == [value]
    assigned = refused_assignment(cls(**_required(cls)), name, value)
    if assigned is not None:
        assert str(assigned).startswith(f"{name} must be a ") and repr(value) in str(assigned), str(assigned)


def test_the_qa_cases_of_lists():
    from unime.data.import_collection import ImportOptions
    from unime.eval.reference_config import ReferenceConfig
    from unime.train.embedder_config import EmbedderTrainingConfig

    with pytest.raises(OptionError) as caught:
        EmbedderTrainingConfig(model="base", out="o", trainer_arg="max_grad_norm=2")
    assert str(caught.value) == "trainer_arg must be a list of strings, got 'max_grad_norm=2' (str)"
    with pytest.raises(OptionError) as caught:
        EmbedderTrainingConfig(model="base", out="o", trainer_arg=["max_grad_norm=2", 3])
    assert str(caught.value) == "trainer_arg must be a list of strings, got ['max_grad_norm=2', 3] (list)"
    with pytest.raises(OptionError) as caught:
        ImportOptions(out="o", directions="i2t")
    assert str(caught.value) == "directions must be a tuple of strings, got 'i2t' (str)"
    with pytest.raises(OptionError) as caught:
        ReferenceConfig(channels=("32", 64, 96, 128))
    assert str(caught.value) == "channels must be a tuple of 4 ints, got ('32', 64, 96, 128) (tuple)"
    with pytest.raises(OptionError) as caught:
        ReferenceConfig(channels=(32, 64, 96))
    assert str(caught.value) == "channels must be a tuple of 4 ints, got (32, 64, 96) (tuple)"
    # the right items, in a list or a tuple; the comma-separated string `lora_targets` documents
    cfg = EmbedderTrainingConfig(model="base", out="o", trainer_arg=("max_grad_norm=2",), lora_targets="q_proj,v_proj")
    assert (cfg.trainer_arg, cfg.lora_targets) == (("max_grad_norm=2",), ("q_proj", "v_proj"))
    assert ReferenceConfig(channels=[8, 16, 24, 32]).channels == (8, 16, 24, 32)
    with pytest.raises(OptionError, match=r"^lora_targets must be a tuple of strings, got 'q_proj' \(str\)$"):
        cfg.lora_targets = "q_proj"  # assigned: the field holds a tuple
    cfg.lora_targets = ("q_proj",)
    assert cfg.lora_targets == ("q_proj",)


def test_the_qa_cases_assigned():
    """`cfg.batch_size = "8"` is refused as `batch_size="8"` is; an assignment that fits is kept, and
    `dataclasses.replace` checks the new values (of a config assigned before) as it makes the new config."""
    from unime.train.embedder_config import EmbedderTrainingConfig

    cfg = EmbedderTrainingConfig(model="base", out="o")
    before = (cfg.batch_size, cfg.loss, cfg.steps)
    assert before[0] == 8
    with pytest.raises(OptionError, match=r"^batch_size must be an int, got '8' \(str\)$"):
        cfg.batch_size = "8"
    with pytest.raises(OptionError, match="^loss must be one of 'auto', 'symmetric_kl', 'js', 'infonce', got 'kl'$"):
        cfg.loss = "kl"
    with pytest.raises(OptionError, match="^steps must be an int or None, got 2.5 "):
        cfg.steps = 2.5
    assert (cfg.batch_size, cfg.loss, cfg.steps) == before
    cfg.batch_size, cfg.loss, cfg.steps, cfg.model = 4, "js", None, pathlib.Path("other")
    assert (cfg.batch_size, cfg.loss, cfg.steps, cfg.model) == (4, "js", None, pathlib.Path("other"))
    assert dataclasses.replace(cfg, batch_size=2).batch_size == 2
    with pytest.raises(OptionError, match="^batch_size must be an int, got '2' "):
        dataclasses.replace(cfg, batch_size="2")
