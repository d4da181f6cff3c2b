"""Every config dataclass of `unime` with a ranged option (`option(at_least= / above= / at_most= / below=)`) or a float
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
from tests.helpers import assert_assignment_refused_as_made
from unime.errors import OptionError

_BOUNDS = ("at_least", "above", "at_most", "below")


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
    for bound, delta, outward in (("at_least", -step, -step), ("above", 0, -step), ("at_most", step, step),
                                  ("below", 0, step)):
        if bound in md:
            value = md[bound] + delta
            while value == f.default:
                value += outward
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


def _assert_refused(cases) -> None:
    """Each (config class, field, value, problem): the config made with the value is refused, "FIELD PROBLEM"."""
    for cls, name, value, problem in cases:
        with pytest.raises(OptionError) as caught:
            cls(**_required(cls), **{name: value})
        assert str(caught.value) == f"{name} {problem}", cls


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
    assert_assignment_refused_as_made(cls, _required(cls), name, value)


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


def test_the_ranges_declared_for_qa():
    """The checkpoint / logging / held-out / image options QA found unranged, refused as the configs are made."""
    from unime.data.file_tools import CheckConfig
    from unime.data.video import VideoOptions
    from unime.embed_rl.grpo import GRPOStageConfig
    from unime.embed_rl.reasoner_sft import ReasonerSFTConfig
    from unime.eval.runners import EvalConfig
    from unime.models.embed_file import EmbedConfig
    from unime.reasoning.reasoner import GenerateConfig
    from unime.serve.config import RayOptions
    from unime.train.embedder_config import EmbedderTrainingConfig
    from unime.train.reranker_trainer import RerankerTrainConfig

    cases = [(RerankerTrainConfig, "holdout", 1.0, "must be >= 0 and < 1, got 1.0"),
             (RerankerTrainConfig, "holdout", -0.1, "must be >= 0 and < 1, got -0.1"),
             (RerankerTrainConfig, "eval_steps", -1, "must be >= 0, got -1"),
             (RerankerTrainConfig, "save_steps", 0, "must be >= 1, got 0"),
             (RerankerTrainConfig, "logging_steps", 0, "must be >= 1, got 0"),
             (EmbedderTrainingConfig, "save_steps", 0, "must be >= 1, got 0"),
             (EmbedderTrainingConfig, "logging_steps", 0, "must be >= 1, got 0"),
             (EmbedderTrainingConfig, "save_total_limit", 0, "must be >= 1, got 0"),
             (EmbedderTrainingConfig, "workers", -1, "must be >= 0, got -1"),
             (EmbedderTrainingConfig, "lora_dropout", 1.0, "must be >= 0 and < 1, got 1.0"),
             (ReasonerSFTConfig, "save_steps", 0, "must be >= 1, got 0"),
             (ReasonerSFTConfig, "logging_steps", 0, "must be >= 1, got 0"),
             (ReasonerSFTConfig, "warmup_steps", -1, "must be >= 0, got -1"),
             (GRPOStageConfig, "save_steps", 0, "must be >= 1, got 0"),
             (GRPOStageConfig, "top_p", 1.5, "must be > 0 and <= 1, got 1.5"),
             (GenerateConfig, "top_p", 1.5, "must be > 0 and <= 1, got 1.5"),
             (EmbedConfig, "max_pixels", 0, "must be > 0, got 0"),
             (EmbedConfig, "min_pixels", -1, "must be > 0, got -1"),
             (CheckConfig, "max_pixels", 0, "must be > 0, got 0"),
             (VideoOptions, "video_frames", 0, "must be >= 1, got 0"),
             (VideoOptions, "video_fps", 0.0, "must be > 0, got 0.0"),
             (VideoOptions, "video_max_pixels", 100, "must be >= 784, got 100"),
             (EvalConfig, "rerank_topk", 0, "must be >= 1, got 0"),
             (RayOptions, "replicas", 0, "must be >= 1, got 0"),
             (RayOptions, "num_cpus", -1.0, "must be >= 0, got -1.0")]
    _assert_refused(cases)
    # in range: the bounds themselves where they are included
    assert RerankerTrainConfig(**_required(RerankerTrainConfig), holdout=0.0, eval_steps=0, save_steps=1).holdout == 0
    assert EmbedderTrainingConfig(model="m", out="o", save_total_limit=1, workers=0).save_total_limit == 1


def test_min_pixels_above_max_pixels_refused_naming_both(tmp_path, capsys):
    from unime.cli import main
    from unime.models.embed_file import EmbedConfig

    with pytest.raises(OptionError) as caught:
        EmbedConfig(**_required(EmbedConfig), min_pixels=5000, max_pixels=1000)
    assert str(caught.value) == "min_pixels must be <= max_pixels (1000), got 5000"
    assert caught.value.render(lambda f: f"<{f}>") == "<min_pixels> must be <= <max_pixels> (1000), got 5000"
    cfg = EmbedConfig(**_required(EmbedConfig), min_pixels=1000, max_pixels=1000)  # equal: one size
    with pytest.raises(OptionError, match=r"^min_pixels must be <= max_pixels \(1000\), got 1001$"):
        cfg.min_pixels = 1001
    with pytest.raises(OptionError, match=r"^min_pixels must be <= max_pixels \(999\), got 1000$"):
        cfg.max_pixels = 999
    assert (cfg.min_pixels, cfg.max_pixels) == (1000, 1000)  # left as they were
    cfg.max_pixels = None  # no upper bound: any lower one
    cfg.min_pixels = 5000
    assert (cfg.min_pixels, cfg.max_pixels) == (5000, None)
    # the command line: the same refusals in its flags' names, before any work
    (tmp_path / "i.jsonl").write_text('{"text": "a"}\n')
    embed = ["embed", "--model", "m", "--items", str(tmp_path / "i.jsonl"), "--out", str(tmp_path / "x.npy")]
    assert main([*embed, "--min-pixels", "5000", "--max-pixels", "1000"]) == 2
    assert capsys.readouterr().err.strip() == \
        "unime: error: embed: --min-pixels must be <= --max-pixels (1000), got 5000"
    assert main([*embed, "--max-pixels", "0"]) == 2
    assert capsys.readouterr().err.strip() == "unime: error: embed: --max-pixels must be > 0, got 0"
    assert main(["train", "judge", "--model", "m", "--records", str(tmp_path / "i.jsonl"), "--out",
                 str(tmp_path / "o"), "--holdout", "1"]) == 2
    assert capsys.readouterr().err.strip() == "unime: error: train judge: --holdout must be >= 0 and < 1, got 1.0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.jsonl"]


def test_ray_autoscaling_bounds_out_of_order_refused_naming_both(tmp_path, capsys):
    """`--min-replicas 3 --max-replicas 2` reached Ray Serve's autoscaling config; it is refused as the options are
    made (or either assigned), naming both, and on the command line before anything loads or starts."""
    from unime.cli import main
    from unime.serve.config import RayOptions

    with pytest.raises(OptionError) as caught:
        RayOptions(min_replicas=3, max_replicas=2)
    assert str(caught.value) == "min_replicas must be <= max_replicas (2), got 3"
    cfg = RayOptions(min_replicas=2, max_replicas=2)  # equal: a fixed count
    with pytest.raises(OptionError, match=r"^min_replicas must be <= max_replicas \(2\), got 3$"):
        cfg.min_replicas = 3
    with pytest.raises(OptionError, match=r"^min_replicas must be <= max_replicas \(1\), got 2$"):
        cfg.max_replicas = 1
    assert (cfg.min_replicas, cfg.max_replicas) == (2, 2)
    cfg.max_replicas = None  # no upper bound: any lower one
    cfg.min_replicas = 5
    assert RayOptions(min_replicas=4).min_replicas == 4 and RayOptions(max_replicas=1).max_replicas == 1
    assert main(["serve", "--model", str(tmp_path / "m"), "--no-auth", "--ray", "--min-replicas", "3",
                 "--max-replicas", "2"]) == 2
    assert capsys.readouterr().err.strip() == \
        "unime: error: serve: --min-replicas must be <= --max-replicas (2), got 3"


def test_the_ranges_declared_for_the_second_qa_round():
    """LoRA rank and alpha, the reasoning split's threshold, mining's beta and audit threshold, and the sizes of `models
    build-tiny`, `plan`, `demo` and the learnability reference: values that were taken and failed later, or meant
    nothing, refused as the configs are made; the bounds themselves, and the values in use, still taken."""
    from unime.demo.pipeline import DemoOptions
    from unime.embed_rl.grpo import GRPOStageConfig
    from unime.embed_rl.reasoner_sft import ReasonerSFTConfig
    from unime.embed_rl.tcot_embedder import SplitConfig
    from unime.eval.reference_config import ReferenceConfig
    from unime.mining.config import MineConfig
    from unime.models.tiny import TinyBuildConfig
    from unime.train.embedder_config import EmbedderTrainingConfig
    from unime.train.memory_plan import PlanOptions
    from unime.train.reranker_trainer import RerankerTrainConfig

    cases = [(EmbedderTrainingConfig, "lora_r", 0, "must be >= 1 (0 only with full, which trains every weight), got 0"),
             (RerankerTrainConfig, "lora_r", 0, "must be >= 1 (0 only with full, which trains every weight), got 0"),
             (RerankerTrainConfig, "lora_r", -4, "must be >= 0, got -4"),
             (ReasonerSFTConfig, "lora_r", -1, "must be >= 0, got -1"),
             (EmbedderTrainingConfig, "lora_alpha", 0, "must be > 0, got 0"),
             (GRPOStageConfig, "lora_alpha", -32, "must be > 0, got -32"),
             (SplitConfig, "threshold", 1.5, "must be >= 0 and <= 1, got 1.5"),
             (SplitConfig, "threshold", -0.1, "must be >= 0 and <= 1, got -0.1"),
             (MineConfig, "beta", 1.5, "must be >= -1 and <= 1, got 1.5"),
             (MineConfig, "beta", -2.0, "must be >= -1 and <= 1, got -2.0"),
             (MineConfig, "audit_threshold", 0.0, "must be > 0 and <= 1, got 0.0"),
             (MineConfig, "audit_threshold", 1.01, "must be > 0 and <= 1, got 1.01"),
             (TinyBuildConfig, "hidden", 0, "must be >= 1, got 0"),
             (TinyBuildConfig, "layers", 0, "must be >= 1, got 0"),
             (TinyBuildConfig, "vision_depth", 0, "must be >= 1, got 0"),
             (TinyBuildConfig, "vision_heads", 0, "must be >= 1, got 0"),
             (TinyBuildConfig, "init_std", 0.0, "must be > 0, got 0.0"),
             (TinyBuildConfig, "vocab_size", 100, "must be >= 256, got 100"),
             (PlanOptions, "gpus", 0, "must be >= 1, got 0"),
             (PlanOptions, "text_tokens", 0, "must be >= 1, got 0"),
             (PlanOptions, "images_per_item", -1.0, "must be >= 0, got -1.0"),
             (DemoOptions, "seeds", 0, "must be >= 1, got 0"),
             (DemoOptions, "video_clips", -1, "must be >= 0, got -1"),
             (DemoOptions, "jobs", -2, "must be >= 0, got -2"),
             (ReferenceConfig, "max_steps", 0, "must be >= 1, got 0"),
             (ReferenceConfig, "seconds", 0.0, "must be > 0 (inf: no time limit), got 0.0"),
             (ReferenceConfig, "seconds", -math.inf, "must be > 0 (inf: no time limit), got -inf"),
             (ReferenceConfig, "dim", 0, "must be >= 1, got 0"),
             (ReferenceConfig, "word_dim", 0, "must be >= 1, got 0"),
             (ReferenceConfig, "init_temperature", 0.0, "must be > 0, got 0.0"),
             (ReferenceConfig, "video_frames", 0, "must be >= 1, got 0"),
             (ReferenceConfig, "log_every", 0, "must be >= 1, got 0")]
    _assert_refused(cases)
    # taken: the reasoner's full fine-tuning (rank 0), the bounds, and the values the tests and docs use
    assert ReasonerSFTConfig(**_required(ReasonerSFTConfig), lora_r=0).lora_r == 0
    assert GRPOStageConfig(**_required(GRPOStageConfig)).lora_r == 0
    assert EmbedderTrainingConfig(**_required(EmbedderTrainingConfig), lora_r=1, lora_alpha=1).lora_r == 1
    assert EmbedderTrainingConfig(**_required(EmbedderTrainingConfig), lora_r=0, full=True).lora_r == 0  # no LoRA
    full = RerankerTrainConfig(**_required(RerankerTrainConfig), lora_r=0, full=True)
    with pytest.raises(OptionError, match=r"^lora_r must be >= 1 \(0 only with full, which trains every weight\)"):
        full.full = False  # assigned: checked as at construction, and left as it was
    assert full.full is True
    assert [SplitConfig(**_required(SplitConfig), threshold=t).threshold for t in (0.0, 1.0)] == [0.0, 1.0]
    assert [MineConfig(**_required(MineConfig), beta=b).beta for b in (-1.0, 0.01, 1.0)] == [-1.0, 0.01, 1.0]
    assert MineConfig(**_required(MineConfig), audit_threshold=0.5).audit_threshold == 0.5
    assert PlanOptions(images_per_item=0.0, text_tokens=1).images_per_item == 0
    assert DemoOptions(seeds=1, video_clips=0, jobs=0).video_clips == 0
    assert ReferenceConfig(seconds=math.inf, max_steps=5).max_steps == 5  # a step budget alone
    assert ReferenceConfig(seconds=0.5, max_steps=1).seconds == 0.5
    with pytest.raises(OptionError) as caught:
        ReferenceConfig(channels=(32, 0, 96, 128))
    assert str(caught.value) == "channels must be four widths >= 1, got (32, 0, 96, 128)"
    cfg = ReferenceConfig(seconds=2.0, max_steps=5)
    with pytest.raises(OptionError, match=r"^seconds must be > 0 \(inf: no time limit\), got 0$"):
        cfg.seconds = 0  # assigned: checked as at construction, and left as it was
    assert cfg.seconds == 2.0


def test_tiny_model_shapes_that_fail_at_the_first_forward_are_refused(tmp_path, capsys):
    """`models build-tiny --hidden 36` (or `--vision-hidden 30`, `--vision-hidden 32 --vision-heads 16`) built a model
    whose first forward failed in the rotary embedding with a tensor-size RuntimeError (measured on qwen2_vl,
    qwen2_5_vl and qwen3_vl; qwen3_vl refused hidden 36 as its config was made). The text's 4 heads need an even
    size (hidden a multiple of 8), the vision heads a size divisible by 4; refused naming the options, before any
    work. `models pretrain`'s recipe, which builds the same model, refuses them too."""
    from unime.cli import main
    from unime.demo.pretrain import PretrainRecipe
    from unime.models.tiny import TinyBuildConfig

    with pytest.raises(OptionError) as caught:
        TinyBuildConfig(out="o", hidden=36)
    assert str(caught.value) == ("hidden must be a multiple of 8 (4 attention heads, each of an even size for the "
                                 "rotary embedding), got 36")
    with pytest.raises(OptionError) as caught:
        TinyBuildConfig(out="o", vision_hidden=32, vision_heads=16)
    assert str(caught.value) == ("the vision heads' size, vision_hidden / vision_heads = 32 / 16, must be a whole "
                                 "number divisible by 4 (the vision tower's rotary embedding)")
    with pytest.raises(OptionError) as caught:
        TinyBuildConfig(out="o", vision_hidden=30)  # its default heads: 30 // 32, at least 1
    assert str(caught.value) == ("the vision heads' size, vision_hidden / (the width // 32) = 30 / 1, must be a "
                                 "whole number divisible by 4 (the vision tower's rotary embedding)")
    with pytest.raises(OptionError, match=r"^the vision heads' size, hidden / \(the width // 32\) = 104 / 3, "):
        TinyBuildConfig(out="o", hidden=104)  # the vision width by default, its heads 104 // 32
    cfg = TinyBuildConfig(out="o", hidden=40)
    with pytest.raises(OptionError, match=r"^hidden must be a multiple of 8 .* got 36$"):
        cfg.hidden = 36  # assigned: refused as at construction, and left as it was
    assert cfg.hidden == 40
    with pytest.raises(OptionError, match=r"^hidden must be a multiple of 8 .* got 100$"):
        PretrainRecipe(hidden=100)
    with pytest.raises(OptionError, match=r"^the vision heads' size, vision_hidden / vision_heads = 36 / 4,"):
        PretrainRecipe(vision_hidden=36, vision_heads=4)
    # the shapes in use, and others that run: taken
    for kw in ({}, {"hidden": 8}, {"hidden": 128, "vision_hidden": 128, "vision_heads": 4},
               {"vision_hidden": 36, "vision_heads": 3}, {"vision_hidden": 40, "vision_heads": 5}):
        TinyBuildConfig(out="o", **kw)
    PretrainRecipe.preset("default"), PretrainRecipe.preset("quick")
    out = tmp_path / "m"
    assert main(["models", "build-tiny", "--out", str(out), "--hidden", "36"]) == 2
    assert capsys.readouterr().err.strip() == ("unime: error: models build-tiny: --hidden must be a multiple of 8 (4 "
                                               "attention heads, each of an even size for the rotary embedding), got "
                                               "36")
    assert main(["models", "build-tiny", "--out", str(out), "--vision-hidden", "32", "--vision-heads", "16"]) == 2
    assert capsys.readouterr().err.strip().endswith("--vision-hidden / --vision-heads = 32 / 16, must be a whole "
                                                    "number divisible by 4 (the vision tower's rotary embedding)")
    assert not out.exists()


def test_a_tokenizer_vocabulary_too_small_for_yes_and_no_is_a_clear_error():
    """`--vocab-size 256` trained a tokenizer that splits 'Yes' and the build ended in a RuntimeError (marked as
    unreachable); now a ModelError (one line on the command line) naming the option to raise."""
    from unime.errors import ModelError
    from unime.models.tiny import build_tokenizer

    with pytest.raises(ModelError, match=r"^a tokenizer of at most 256 tokens splits 'Yes' into \d+ tokens; a Yes/No "
                                         r"judge needs single-token answers: give a larger vocabulary size "
                                         r"\(--vocab-size; the default 1024 holds them\)$"):
        build_tokenizer([], vocab_size=256)
    assert len(build_tokenizer([], vocab_size=1024).encode("Yes", add_special_tokens=False)) == 1
