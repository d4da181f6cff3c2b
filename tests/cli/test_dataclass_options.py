"""Options declared once, on config dataclass fields (`unime.options.option`): the argparse options generated
from them (`unime.cli.dataclass_options`), the config built back from the namespace, and the training
commands' options checked field by field against their configs."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from unime.cli.dataclass_options import (add_options, config_from_args, dest_of, option_fields, option_values,
                                         prefixed_flags)
from unime.options import option


@dataclasses.dataclass(kw_only=True)
class _Shared:
    option_groups = {"opt": "optimisation settings"}
    seed: int = option(0, "random seed")
    lr: float = option(1e-4, "learning rate", group="opt")


@dataclasses.dataclass(kw_only=True)
class _A(_Shared):
    model: str = option(help="checkpoint")
    name: str | None = option(None)
    skip: str = option("raise", "skip bad records", flag="--skip-bad", action="store_const", const="skip")
    flag: bool = option(False, "a flag")
    steps: int = option(-1, dest="max_steps_short", group="opt")
    hidden: int = option(3, cli=False)
    only_b: int = option(5, group="b")


@dataclasses.dataclass(kw_only=True)
class _B(_Shared):
    model: str = option(help="checkpoint")
    lr: float = option(3e-6, "learning rate", group="opt")


def _parser(*classes, **kw) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t")
    add_options(p, *classes, **kw)
    return p


def test_options_take_name_type_default_and_group_from_the_field():
    p = _parser(_A, groups=("opt",))
    acts = {a.dest: a for a in p._actions}
    assert acts["model"].required and acts["model"].option_strings == ["--model"] and acts["model"].help == "checkpoint"
    assert acts["seed"].type is int and acts["seed"].default == 0 and acts["lr"].type is float
    assert acts["name"].type is None and acts["name"].default is None  # a string: argparse's own
    assert acts["skip"].option_strings == ["--skip-bad"] and acts["skip"].const == "skip"
    assert isinstance(acts["flag"], argparse._StoreTrueAction)
    assert acts["max_steps_short"].option_strings == ["--max-steps-short"]
    assert "hidden" not in acts and "only_b" not in acts  # cli=False; a group the command does not list
    groups = {g.title: [a.dest for a in g._group_actions] for g in p._action_groups}
    assert groups["opt"] == ["lr", "max_steps_short"] and "seed" in groups["options"]
    assert [g.description for g in p._action_groups if g.title == "opt"] == ["optimisation settings"]


def test_the_config_is_built_from_the_namespace_by_dest():
    p = _parser(_A, groups=("opt",))
    args = p.parse_args(["--model", "m", "--skip-bad", "--max-steps-short", "7", "--lr", "0.5"])
    cfg = config_from_args(_A, args, seed=3)
    assert cfg == _A(model="m", skip="skip", steps=7, lr=0.5, seed=3)
    assert cfg.hidden == 3 and cfg.only_b == 5  # no option: the field's default


def test_a_field_two_configs_share_with_their_own_defaults_is_one_option_defaulting_to_each():
    p = _parser(_A, _B, groups=("opt",), labels=("a", "b"))
    lr = next(a for a in p._actions if a.dest == "lr")
    assert lr.default is None and lr.help == "learning rate (default: a 0.0001, b 3e-06)"
    args = p.parse_args(["--model", "m"])
    assert config_from_args(_B, args, unset_is_none=True).lr == 3e-6
    assert config_from_args(_A, args, unset_is_none=True).lr == 1e-4
    assert config_from_args(_B, p.parse_args(["--model", "m", "--lr", "0.1"]), unset_is_none=True).lr == 0.1



def test_a_prefix_names_a_second_configs_options_beside_the_first():
    """`--judge-steps` (dest judge_steps) beside `--steps`: the prefix goes before the name and the dest, not
    before the value's metavar; the config (or its set values) is read back under the same prefix."""
    p = argparse.ArgumentParser(prog="t")
    add_options(p, _A, groups=("opt",))
    add_options(p.add_argument_group("judge"), _A, groups=("opt",), prefix="judge-")
    acts = {a.dest: a for a in p._actions}
    assert acts["judge_model"].option_strings == ["--judge-model"] and acts["judge_model"].metavar == "MODEL"
    assert acts["judge_skip"].option_strings == ["--judge-skip-bad"] and acts["judge_skip"].metavar is None
    assert acts["judge_max_steps_short"].option_strings == ["--judge-max-steps-short"]
    assert isinstance(acts["judge_flag"], argparse._StoreTrueAction) and acts["judge_lr"].type is float
    assert acts["model"].metavar is None  # no prefix: argparse's own
    args = p.parse_args(["--model", "m", "--max-steps-short", "2", "--judge-model", "j",
                         "--judge-lr", "0.5", "--judge-max-steps-short", "9"])
    assert config_from_args(_A, args) == _A(model="m", steps=2)
    assert config_from_args(_A, args, prefix="judge-") == _A(model="j", lr=0.5, steps=9)
    assert option_values(_A, args, prefix="judge-") == {"seed": 0, "lr": 0.5, "model": "j", "name": None,
                                                         "skip": "raise", "flag": False, "steps": 9}
    assert option_values(_A, args, prefix="judge-", unset_is_none=True) == {
        "seed": 0, "lr": 0.5, "model": "j", "skip": "raise", "flag": False, "steps": 9}


def _is_switch(action: argparse.Action, fields: dict) -> bool:
    """Whether `action` is a field's `switch=(FLAG, VALUE)`: a second flag setting the same dest to VALUE
    (`--skip-bad-records` = `--on-error skip`); if so, checked to set the field's dest to VALUE, default as it."""
    f = fields.get(action.dest)
    if not (action.option_strings and f is not None
            and f.metadata.get("switch", (None,))[0] == action.option_strings[0]):
        return False
    assert (action.const, action.default) == (f.metadata["switch"][1], f.default), action.dest
    assert action.help == f"the same as {prefixed_flags(f)[0]} {action.const}", action.dest
    return True


def _command(words):
    from unime.cli import _command_path, build_parser

    return _command_path(build_parser(), words)[1]


@pytest.mark.parametrize("words,config,role", [
    (["train", "embedder"], "unime.train.embedder_config:EmbedderTrainingConfig", None),
    (["train", "reranker"], "unime.train.reranker_trainer:RerankerTrainConfig", "reranker"),
    (["train", "judge"], "unime.train.reranker_trainer:RerankerTrainConfig", "judge"),
])
def test_every_trainer_option_is_a_config_field_with_its_default(words, config, role):
    """Each option of the command is its config's field (same default, or the field's declared command-line
    default), and the config built from the bare command line equals the Python API's defaults but for those."""
    import importlib

    module, name = config.split(":")
    cls = getattr(importlib.import_module(module), name)
    parser = _command(words)
    fields = {dest_of(f): f for f, _, _ in option_fields(cls)}
    by_dest = {a.dest: a for a in parser._actions if not _is_switch(a, fields)}
    not_fields = {"help", "config", "recipe", "print_config"}
    assert set(by_dest) - not_fields <= set(fields)
    for dest, action in by_dest.items():
        if dest in not_fields:
            continue
        f = fields[dest]
        expected = f.metadata.get("cli_default", f.default)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            assert action.required
        else:
            assert action.default == expected, dest
            assert action.help == f.metadata.get("help"), dest
    args = parser.parse_args(["--model", "m", "--records", "r", "--out", "o"])
    if role is None:
        from unime.cli.train import embedder_config_from_args as build
    else:
        from unime.cli.train_reranker import config_from_args as build
        args.role = role
    built = build(args)
    api = cls(model="m", records=built.records, out="o", **({"role": role} if role else {}))
    differ = {f.name for f in dataclasses.fields(cls) if getattr(built, f.name) != getattr(api, f.name)}
    expected_differences = {"embedder": {"loss", "hard_negatives"}, "reranker": {"holdout"}, "judge": {"losses"}}
    assert differ == expected_differences[words[1]]


def test_the_reranker_command_and_its_config_agree_on_logging_and_dtype():
    from unime.train.reranker_trainer import RerankerTrainConfig

    api = RerankerTrainConfig(model="m", records=["r"], out="o")
    args = _command(["train", "reranker"]).parse_args(["--model", "m", "--records", "r", "--out", "o"])
    assert (args.logging_steps, args.dtype) == (10, "auto")
    built = config_from_args(RerankerTrainConfig, args)
    # None: as recorded before
    assert (built.logging_steps, built.dtype) == (api.logging_steps, api.dtype) == (10, None)


def _row(a: argparse.Action) -> list:
    return [a.dest, repr(a.default), getattr(a.type, "__name__", repr(a.type)), a.choices and list(a.choices), a.nargs,
            type(a).__name__, a.required]


def test_generated_commands_keep_their_options_names_defaults_types_and_choices():
    """The options of the commands generated from their configs, pinned as they were hand-written before (every
    flag: dest, default, type, choices, nargs, action, required; `tests/cli/cli_options_pinned.json`), and each
    with a help text."""
    import json
    from pathlib import Path

    from unime.cli import _add_overwrite_options, _command_path, build_parser

    pinned = json.loads((Path(__file__).parent / "cli_options_pinned.json").read_text())
    parser = build_parser()
    _add_overwrite_options(parser)
    for command, options in pinned.items():
        sub = _command_path(parser, command.split())[1]
        actions = [a for a in sub._actions if a.dest != "help" and not isinstance(a, argparse._SubParsersAction)]
        assert {" ".join(a.option_strings): _row(a) for a in actions} == options, command
        assert [a.dest for a in actions if not a.help] == [], command


@pytest.mark.parametrize("words,configs", [
    (["mine"], ["unime.mining.config:MineConfig", "unime.mining.backends:BackendOptions"]),
    (["judge"], ["unime.mining.pairs:JudgePairsConfig", "unime.mining.backends:BackendOptions"]),
    (["eval"], ["unime.eval.runners:EvalConfig"]),
    (["eval", "reference"], ["unime.eval.reference_config:ReferenceConfig",
                             "unime.eval.reference_config:ReferenceRunOptions"]),
    (["embed"], ["unime.models.embed_file:EmbedConfig"]),
    (["index", "build"], ["unime.index.store:IndexBuildConfig"]),
    (["search"], ["unime.index.store:SearchConfig"]),
    (["plan"], ["unime.train.memory_plan:PlanOptions"]),
])
def test_every_option_of_the_other_commands_is_a_config_field(words, configs):
    """Each option (but --config / --recipe / --print-config) is one field of the command's configs, with the
    field's default (or its declared command-line default) and help; every such field is an option."""
    import importlib

    classes = [getattr(importlib.import_module(c.split(":")[0]), c.split(":")[1]) for c in configs]
    fields = {dest_of(f): f for f, _, _ in option_fields(*classes)}
    by_dest = {a.dest: a for a in _command(words)._actions
               if a.dest not in ("help", "config", "recipe", "print_config")
               and not isinstance(a, argparse._SubParsersAction) and not _is_switch(a, fields)}
    assert set(by_dest) == set(fields)
    for dest, action in by_dest.items():
        f = fields[dest]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        assert action.required == (default is dataclasses.MISSING), dest
        if not action.required:
            assert action.default == f.metadata.get("cli_default", default), dest
        assert action.help == f.metadata["help"], dest


def test_a_command_config_is_built_from_its_bare_command_line_with_the_python_api_defaults():
    from unime.eval.runners import EvalConfig
    from unime.index.store import IndexBuildConfig
    from unime.mining.config import MineConfig

    args = _command(["mine"]).parse_args(["--records", "r", "--embedder", "e", "--judge", "j", "--out", "o"])
    assert config_from_args(MineConfig, args) == MineConfig(records="r", embedder="e", judge="j", out="o")
    args = _command(["index", "build"]).parse_args(["--model", "m", "--items", "i", "--out", "o"])
    assert config_from_args(IndexBuildConfig, args) == IndexBuildConfig(model="m", items="i", out="o")
    args = _command(["eval"]).parse_args(["--model", "m", "--tasks", "t", "--out", "o", "--task", "a", "--task", "b",
                                          "--topk", "3", "--mode", "resort"])
    cfg = config_from_args(EvalConfig, args)
    assert cfg == EvalConfig(model="m", tasks="t", out="o", only=["a", "b"], rerank_topk=3, rerank_mode="resort")


# -- the commands converted to declared options: names, defaults, required options and help kept -------------
# the options (name -> default) and required options each command had when its add_argument calls were
# written by hand; the generated parsers must keep them (the shared --config/--recipe/--print-config/--overwrite
# are left out)
BASE_RECIPE_FLAGS = ("family", "hidden", "layers", "vision-depth", "vision-hidden", "vision-heads", "init-std", "seed",
                     "corpus-seed", "corpus-scenes", "corpus-per-task", "tag-steps", "tag-batch-size", "tag-lr",
                     "freeze-vision", "caption-steps", "caption-batch-size", "caption-lr", "caption-questions",
                     "contrastive-datasets",
                     "steps", "batch-size", "lr", "tau", "warmup")
# QA: the Embed-RL commands that load a model took no image-resolution options
IMAGE_OPTIONS = {"--max-pixels": None, "--min-pixels": None, "--image-size": None}
VIDEO_OPTIONS = {"--video-frames": None, "--video-fps": None, "--video-max-frames": None, "--video-max-pixels": None}
PINNED = {
    # QA: data check took no video options, so a clip it passed was refused by a run sampling other frames
    "data check": {"input": None, "--mmeb": False, "--data-root": None, "--allow-outside-root": False,
                   "--max-pixels": None, "--no-images": False, "--label-column": None, **VIDEO_OPTIONS},
    "data convert": {"input": None, "output": None, "--from": None, "--to": None, "--on-error": "raise",
                     "--skip-bad-records": "raise", "--dataset": None},
    "data import": {"--captions": None, "--coco": None, "--hf-dataset": None, "--webdataset": None, "--images": None,
                    "--allow-outside-root": False, "--coco-instances": None, "--image-column": None,
                    "--caption-column": None, "--label-column": None, "--delimiter": None, "--out": None,
                    "--name": None, "--directions": "i2t,t2i", "--eval-fraction": 0.2, "--eval-candidates": 100,
                    "--judge-negatives": 3, "--seed": 0, "--on-error": "raise",
                    "--skip-bad-records": "raise"},
    "data synth": {"--out": None, "--seed": 0, "--size": "default", "--train-scenes": None, "--eval-scenes": None,
                   "--ood-scenes": None, "--train-per-task": None, "--eval-queries": None, "--candidates": None,
                   "--retrieval-images": None, "--compositional-pairs": None, "--image-size": None,
                   "--video-clips": 0, "--video-train-clips": None, "--video-frames": 8, "--video-size": 56},
    "demo": {"--out": "runs/demo", "--preset": "default", "--quick": False, "--fresh": False, "--seeds": None, "--embed-steps": None,
             "--family": None,
             "--embed-rl": False, "--oracle-judge": False, "--allow-weak-judge": False, "--video-clips": None,
             "--device": "cpu", "--jobs": 0},
    "models build-tiny": {"--family": "qwen2_vl", "--out": None, "--seed": 0, "--hidden": 64, "--layers": 2,
                          "--vision-depth": 1, "--vision-hidden": None, "--vision-heads": None, "--init-std": 0.02,
                          "--extra-token": [], "--tokenizer-corpus": None, "--tokenizer": None, "--vocab-size": 1024},
    "models pretrain-judge": {"--preset": "default", "--out": None, "--exclude-world": None, "--device": "cpu",
                              "--attn-implementation": None,
                              **{f"--judge-{n}": None for n in ("negatives", "extra-positives", "steps", "batch-size",
                                                                 "lr", "group-weight", "warmup", "holdout", "seed",
                                                                 "video-clips", "video-frames", "corpus-scenes",
                                                                 "corpus-per-task")},
                              **{f"--{n}": None for n in BASE_RECIPE_FLAGS}},
    "models pretrain": {"--preset": "default", "--out": None, "--exclude-world": None, "--device": "cpu",
                        "--attn-implementation": None,
                        **{f"--{n}": None for n in BASE_RECIPE_FLAGS}},
    "reason add-emb": {"--model": None, "--out": None, "--device": "cpu", "--dtype": "auto"},
    "reason eval": {"--embedder": None, "--tasks": None, "--out": None, "--tcots": "reasoner", "--reasoner": None,
                    "--world": None, "--only": None, "--on-error": "raise", "--skip-bad-records": "raise",
                    "--batch-size": 16, "--max-new-tokens": 256, "--device": None,
                    "--attn-implementation": None, "--dtype": "auto", **IMAGE_OPTIONS, **VIDEO_OPTIONS},
    "reason generate": {"--model": None, "--records": None, "--data-root": None, "--out": None,
                        "--sides": "query,target", "--batch-size": 8, "--max-new-tokens": 256, "--sample": False,
                        "--temperature": 1.0, "--top-p": 1.0, "--top-k": 50, "--seed": 0, "--device": None,
                        "--attn-implementation": None, "--dtype": "auto",
                        **IMAGE_OPTIONS,
                        **VIDEO_OPTIONS},
    "reason materialize": {"--records": None, "--tcots": None, "--no-tcots": False, "--data-root": None,
                           "--out": None, **VIDEO_OPTIONS},
    "reason split": {"--records": None, "--tcots": None, "--judge": None, "--data-root": None, "--threshold": None,
                     "--rl-fraction": None, "--out-dir": None, "--device": None, "--attn-implementation": None,
                     "--dtype": "auto",
                     **IMAGE_OPTIONS, **VIDEO_OPTIONS},
    "reason teacher": {"--world": None, "--records": None, "--out": None, "--on-error": "raise",
                       "--skip-bad-records": "raise", **VIDEO_OPTIONS},
}
PINNED_REQUIRED = {
    "data check": {"input"}, "data convert": {"input", "output"}, "data import": {"--out"}, "data synth": {"--out"},
    "models build-tiny": {"--out"}, "reason add-emb": {"--model", "--out"},
    "reason eval": {"--embedder", "--tasks", "--out"}, "reason generate": {"--model", "--records", "--out"},
    "reason materialize": {"--records", "--out"}, "reason split": {"--records", "--tcots", "--judge",
                                                                              "--out-dir"},
    "reason teacher": {"--world", "--out"},
}
PINNED_EXCLUSIVE = {"data import": [{"--captions", "--coco", "--hf-dataset", "--webdataset"}],
                    "models build-tiny": [{"--tokenizer-corpus", "--tokenizer"}],
                    "reason materialize": [{"--tcots", "--no-tcots"}],
                    "reason split": [{"--threshold", "--rl-fraction"}]}
_SHARED = {"help", "config", "recipe", "print_config", "overwrite"}


@pytest.fixture(scope="module")
def pinned_parsers():
    from unime.cli import _add_overwrite_options, _command_path, build_parser

    parser = build_parser()
    _add_overwrite_options(parser)
    return {name: _command_path(parser, name.split())[1] for name in PINNED}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_converted_commands_keep_their_options_defaults_and_help(name, pinned_parsers):
    sub = pinned_parsers[name]
    actions = [a for a in sub._actions if a.dest not in _SHARED]
    key = {id(a): a.option_strings[0] if a.option_strings else a.dest for a in actions}
    assert {key[id(a)]: a.default for a in actions} == PINNED[name]
    assert {key[id(a)] for a in actions if a.required} == PINNED_REQUIRED.get(name, set())
    assert [{key[id(a)] for a in g._group_actions} for g in sub._mutually_exclusive_groups] == \
        PINNED_EXCLUSIVE.get(name, [])
    assert [key[id(a)] for a in actions if not a.help] == []  # every option says what it does


@pytest.mark.parametrize("words,configs", [
    (["data", "synth"], ["unime.data.synth:SynthConfig", "unime.data.synth:WorldSizes"]),
    (["data", "convert"], ["unime.data.file_tools:ConvertConfig"]),
    (["data", "check"], ["unime.data.file_tools:CheckConfig"]),
    (["data", "import"], ["unime.data.collections:CollectionSource", "unime.data.import_collection:ImportOptions"]),
    (["models", "build-tiny"], ["unime.models.tiny:TinyBuildConfig"]),
    (["reason", "teacher"], ["unime.reasoning.teacher:TeacherConfig"]),
    (["reason", "generate"], ["unime.reasoning.reasoner:GenerateConfig"]),
    (["reason", "split"], ["unime.embed_rl.tcot_embedder:SplitConfig"]),
    (["reason", "materialize"], ["unime.embed_rl.tcot_embedder:MaterializeConfig"]),
    (["reason", "add-emb"], ["unime.embed_rl.tcot_embedder:AddEmbConfig"]),
    (["reason", "eval"], ["unime.embed_rl.tcot_embedder:ReasonEvalConfig"]),
    (["demo"], ["unime.demo.pipeline:DemoOptions"]),
])
def test_each_converted_option_is_declared_on_its_config(words, configs, pinned_parsers):
    """The option's default and help are its config field's (or the field's declared command-line default)."""
    import importlib

    classes = [getattr(importlib.import_module(c.split(":")[0]), c.split(":")[1]) for c in configs]
    fields = {dest_of(f): f for f, _, _ in option_fields(*classes)}
    for action in pinned_parsers[" ".join(words)]._actions:
        if action.dest in _SHARED or _is_switch(action, fields):
            continue
        f = fields[action.dest]
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            assert action.required, action.dest
        else:
            assert action.default == f.metadata.get("cli_default", f.default), action.dest
        assert action.help == f.metadata["help"], action.dest


@dataclasses.dataclass(kw_only=True)
class _Files:
    input: str = option(help="the file", positional=True)
    text: str | None = option(None, "a text", exclusive="source", exclusive_required=True)
    shards: list[str] | None = option(None, "shards", nargs="+", exclusive="source")
    keep: bool = option(False, "keep it")


def test_positional_fields_and_mutually_exclusive_groups():
    p = _parser(_Files)
    args = p.parse_args(["f.jsonl", "--shards", "a", "b"])
    assert config_from_args(_Files, args) == _Files(input="f.jsonl", shards=["a", "b"])
    for argv in (["f.jsonl"], ["f.jsonl", "--text", "t", "--shards", "a"], ["--text", "t"]):
        with pytest.raises(SystemExit):  # one of the group needed, not two; the positional needed
            p.parse_args(argv)
    assert next(a for a in p._actions if a.dest == "input").option_strings == []


def test_the_converted_commands_read_their_config_files(tmp_path):
    from unime.cli import _add_overwrite_options, _parse, build_parser

    def parse(argv):
        parser = build_parser()
        _add_overwrite_options(parser)
        return _parse(parser, argv)

    cfg = tmp_path / "c.yaml"
    cfg.write_text("out: w\ntrain-scenes: 12\nvideo_clips: 2\n")
    args = parse(["data", "synth", "--config", str(cfg)])
    assert (args.out, args.train_scenes, args.video_clips, args.eval_scenes) == ("w", 12, 2, None)
    cfg.write_text("images: i\nout: o\ndirections: t2i\n")  # the source stays on the command line (required
    from unime.data.import_collection import ImportOptions  # group: argparse checks it before any default)

    args = parse(["data", "import", "--captions", "c.csv", "--config", str(cfg)])
    assert config_from_args(ImportOptions, args).directions == ("t2i",)
    assert config_from_args(ImportOptions, parse(["data", "import", "--captions", "c", "--out", "o"])).directions \
        == ("i2t", "t2i")
    cfg.write_text("records: r.jsonl\ntcots: t.jsonl\njudge: j\nout-dir: s\nthreshold: 0.7\n")
    from unime.embed_rl.tcot_embedder import SplitConfig

    assert config_from_args(SplitConfig, parse(["reason", "split", "--config", str(cfg)])) == SplitConfig(
        records="r.jsonl", tcots="t.jsonl", judge="j", out_dir="s", threshold=0.7)


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_train_reasoner_takes_steps_as_the_other_trainers_spell_it(stage):
    """QA: `train reasoner --steps 3` was refused ("unrecognized arguments") while `train embedder / judge / reranker`
    take --steps; it is the same option as --max-steps."""
    from unime.cli import build_parser

    parser = build_parser()
    base = ["train", "reasoner", "--stage", stage, "--model", "m", "--out", "o"]
    assert parser.parse_args(base + ["--steps", "3"]).max_steps == 3
    assert parser.parse_args(base + ["--max-steps", "3"]).max_steps == 3


# -- NaN and inf: refused by every float option unless it declares `finite=False` (inf: "no limit") ---------------
# (class, field) of the float options that take inf, each saying so in its help; any other is a bug
INF_MEANS_NO_LIMIT = {("ReferenceConfig", "seconds")}


def _config_float_fields():
    """(class, field, type hint) of every float field (`float`, `float | None`, `tuple[float, ...]`) of every config
    dataclass of unime declaring its fields with `option` (each module walked, so a new option is covered)."""
    import importlib
    import pkgutil
    import typing

    import unime

    found = {}
    for m in pkgutil.walk_packages(unime.__path__, "unime."):
        if m.name.endswith("__main__"):  # runs the command line
            continue
        for obj in vars(importlib.import_module(m.name)).values():
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == m.name:
                hints = typing.get_type_hints(obj)
                for f in dataclasses.fields(obj):
                    if "help" in f.metadata and "float" in str(hints[f.name]):
                        found[(obj.__name__, f.name)] = (obj, f, hints[f.name])
    return found


def test_every_float_option_of_every_config_refuses_nan_and_inf_unless_inf_means_no_limit():
    """QA: `--lr inf`, `--epochs inf`, GRPO `--temperature inf`, the loss temperatures, β, the demo recipe rates...
    were accepted (`--tau nan` too: NaN compares False with every bound, and most had no bound); only a few serve
    options refused inf (`finite=True`). Every float field of every config now refuses NaN, +inf and -inf by its
    range check (`unime.options.range_problem`: the command line's usage error and `check_ranges`' OptionError),
    but those declaring `finite=False`, where inf means "no limit" (their help says so), which refuse only NaN."""
    from unime.options import range_problem

    found = _config_float_fields()
    assert len(found) > 60 and ("GRPOStageConfig", "temperature") in found and ("PretrainRecipe", "lr") in found
    for (cls, name), (_, f, hint) in found.items():
        several = "tuple" in str(hint)

        def value(x):
            return (x, 1.0, 1.0) if several else x

        assert range_problem(f, value(float("nan"))) is not None, (cls, name)
        for inf in (float("inf"), float("-inf")):
            if (cls, name) in INF_MEANS_NO_LIMIT:
                assert f.metadata.get("finite") is False and "inf" in f.metadata["help"], (cls, name)
                assert range_problem(f, value(inf)) is None, (cls, name, inf)
            else:
                assert range_problem(f, value(inf)) is not None, (cls, name, inf)
        if isinstance(f.default, (float, tuple)):  # and a default is taken
            assert range_problem(f, f.default) is None, (cls, name)
    opted_out = {k for k, (_, f, _) in found.items() if f.metadata.get("finite") is False}
    assert opted_out == INF_MEANS_NO_LIMIT


@pytest.mark.parametrize("value,problem", [
    (float("nan"), "must be a finite number, got nan"),
    (float("inf"), "must be a finite number, got inf"),
    (float("-inf"), "must be a finite number, got -inf"),
    ((1.0, float("nan")), "must be finite numbers, got (1.0, nan)"),
    ([float("inf"), 0.0], "must be finite numbers, got [inf, 0.0]"),
    (1e308, None), (0.0, None), (-2.5, None), (3, None), ("inf", None),
])
def test_range_problem_refuses_non_finite_floats_of_a_field_without_range(value, problem):
    from unime.options import range_problem

    @dataclasses.dataclass
    class C:
        x: float = option(1.0, "a float without a range")
        budget: float = option(60.0, "seconds (inf: no limit)", finite=False)

    f, budget = dataclasses.fields(C)
    assert range_problem(f, value) == problem
    # opted out: inf is "no limit", NaN still refused
    assert range_problem(budget, float("inf")) is None and range_problem(budget, float("-inf")) is None
    assert range_problem(budget, float("nan")) == "must be a number (inf: no limit), got nan"
