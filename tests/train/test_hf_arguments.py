"""The Hugging Face trainer arguments of the four trainers (embedder, reranker/judge, reasoner SFT, GRPO) for
their default configurations and the branches that change them (bf16, full fine-tuning, gradient
checkpointing), pinned as `args.to_dict()` (`tests/train/hf_arguments_pinned.json`; the output paths, which
name this machine's folders, left out). Nothing trains: the reranker's arguments are caught as it builds them."""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
from pathlib import Path
from typing import Literal, Optional, Union

import pytest
import torch

from tests.train.helpers import write_world

PINNED = Path(__file__).parent / "hf_arguments_pinned.json"
MACHINE_KEYS = {"output_dir", "logging_dir"}


def _plain(args) -> dict:
    d = {k: v for k, v in args.to_dict().items() if k not in MACHINE_KEYS}
    return json.loads(json.dumps(d, sort_keys=True, default=str))


class _Built(Exception):
    pass


def embedder_arguments(tmp_path, **overrides) -> dict:
    from unime.train.embedder_trainer import EmbedderTrainingConfig, _training_arguments

    cfg = EmbedderTrainingConfig(model="m", out=str(tmp_path / "out"), device="cpu", **overrides)
    return _plain(_training_arguments(cfg, tmp_path / "out" / "checkpoints"))


def reranker_arguments(tmp_path, model, monkeypatch, **overrides) -> dict:
    """`train_reranker` up to its trainer arguments (the records read; the model is loaded after them), then stopped."""
    import transformers

    from unime.train.reranker_trainer import RerankerTrainConfig, train_reranker

    seen = []

    class Catching(transformers.TrainingArguments):
        def __post_init__(self):
            super().__post_init__()
            seen.append(self)
            raise _Built

    records = write_world(tmp_path / "data")
    cfg = RerankerTrainConfig(model=model, records=[records], out=str(tmp_path / "out"), device="cpu", **overrides)
    with monkeypatch.context() as m, pytest.raises(_Built):
        m.setattr(transformers, "TrainingArguments", Catching)
        train_reranker(cfg)
    return _plain(seen[0])


def sft_arguments(tmp_path, dtype) -> dict:
    from unime.embed_rl.reasoner_sft import ReasonerSFTConfig, sft_config

    cfg = ReasonerSFTConfig(model="m", data="t.jsonl", out=str(tmp_path / "out"))
    return _plain(sft_config(cfg, str(tmp_path / "out" / "checkpoints"), use_cpu=True, dtype=dtype))


def grpo_arguments(tmp_path, *, bf16: bool) -> dict:
    from unime.embed_rl.grpo import GRPOStageConfig, embed_rl_grpo_config

    cfg = GRPOStageConfig(model="m", records="rl.jsonl", embedder="e", out=str(tmp_path / "out"))
    return _plain(embed_rl_grpo_config(cfg, output_dir=str(tmp_path / "out" / "checkpoints"), use_cpu=True,
                                       bf16=bf16, fp16=False))


def all_arguments(tmp_path, model, monkeypatch, log_level) -> dict:
    """Every case; `log_level(level)` sets the `unime` loggers' level (INFO shows the trainers' progress bars)."""
    log_level(logging.WARNING)
    cases = {
        "embedder": embedder_arguments(tmp_path / "e0"),
        "embedder bf16, steps": embedder_arguments(tmp_path / "e1", dtype="bf16", steps=7),
        "embedder full, epochs": embedder_arguments(tmp_path / "e2", full=True, epochs=2.0),
        "reranker": reranker_arguments(tmp_path / "r0", model, monkeypatch),
        "reranker bf16, gradient checkpointing": reranker_arguments(tmp_path / "r1", model, monkeypatch,
                                                                    dtype="bf16", gradient_checkpointing=True),
        "reranker full": reranker_arguments(tmp_path / "r2", model, monkeypatch, full=True),
        "reasoner sft": sft_arguments(tmp_path / "s0", torch.float32),
        "reasoner sft bf16": sft_arguments(tmp_path / "s1", torch.bfloat16),
        "grpo": grpo_arguments(tmp_path / "g0", bf16=False),
        "grpo bf16": grpo_arguments(tmp_path / "g1", bf16=True),
    }
    log_level(logging.INFO)
    cases["embedder, logging INFO"] = embedder_arguments(tmp_path / "e3")
    cases["reranker, logging INFO"] = reranker_arguments(tmp_path / "r3", model, monkeypatch)
    return cases


def test_each_trainers_arguments_are_as_pinned(tmp_path, tiny_model_dir, monkeypatch, caplog):
    pytest.importorskip("trl")
    got = all_arguments(tmp_path, tiny_model_dir("qwen2_vl"), monkeypatch,
                        lambda level: caplog.set_level(level, logger="unime"))
    pinned = json.loads(PINNED.read_text(encoding="utf-8"))
    assert got.keys() == pinned.keys()
    for case in pinned:
        diff = {k: (pinned[case].get(k), got[case].get(k)) for k in pinned[case].keys() | got[case].keys()
                if pinned[case].get(k) != got[case].get(k)}
        assert not diff, f"{case}: (pinned, now) {diff}"


def _changed(a: dict, b: dict) -> dict:
    return {k: (a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def test_trainer_arg_reaches_each_trainers_arguments_and_changes_nothing_else(tmp_path, tiny_model_dir, monkeypatch):
    """`--trainer-arg adam_beta2=0.95 --trainer-arg report_to=tensorboard`: those two fields, nothing else."""
    pytest.importorskip("trl")
    from unime.embed_rl.grpo import GRPOStageConfig, embed_rl_grpo_config
    from unime.embed_rl.reasoner_sft import ReasonerSFTConfig, sft_config

    extra = ["adam_beta2=0.95", "report_to=[tensorboard]"]
    want = {"adam_beta2": (0.999, 0.95), "report_to": ([], ["tensorboard"])}
    assert _changed(embedder_arguments(tmp_path / "a"), embedder_arguments(tmp_path / "b", trainer_arg=extra)) == want
    model = tiny_model_dir("qwen2_vl")
    assert _changed(reranker_arguments(tmp_path / "c", model, monkeypatch),
                    reranker_arguments(tmp_path / "d", model, monkeypatch, trainer_arg=extra)) == want
    sft = ReasonerSFTConfig(model="m", data="t.jsonl", out=str(tmp_path / "s"), trainer_arg=extra)
    got = _plain(sft_config(sft, str(tmp_path / "s" / "checkpoints"), use_cpu=True, dtype=torch.float32))
    assert _changed(sft_arguments(tmp_path / "s", torch.float32), got) == want
    grpo = GRPOStageConfig(model="m", records="rl.jsonl", embedder="e", out=str(tmp_path / "g"), trainer_arg=extra)
    got = _plain(embed_rl_grpo_config(grpo, output_dir=str(tmp_path / "g" / "checkpoints"), use_cpu=True,
                                      bf16=False, fp16=False))
    assert _changed(grpo_arguments(tmp_path / "g", bf16=False), got) == want


def test_trainer_arg_keys_unime_sets_or_that_do_not_exist_are_refused(tmp_path):
    pytest.importorskip("trl")
    from unime.embed_rl.grpo import GRPOStageConfig, embed_rl_grpo_config
    from unime.embed_rl.reasoner_sft import ReasonerSFTConfig, sft_config
    from unime.errors import UsageError

    # from Python, the field named as the keyword it is given in (the command line says `--trainer-arg KEY: ...`)
    # and the option unime sets it from by its field too (it named the flag: --lr)
    cases = [(["learning_rate=1"], r"^trainer_arg\['learning_rate'\]: unime sets it \(lr\)$"),
             (["warmup_steps=3"], r"^trainer_arg\['warmup_steps'\]: unime sets it \(warmup\)$"),
             (["optim=sgd"], r"^trainer_arg\['optim'\]: unime sets it \(optim\)$"),
             (["remove_unused_columns=true"], r"^trainer_arg\['remove_unused_columns'\]: unime sets it \(the "
                                              r"trainer's data collator\)$"),
             (["ddp_broadcast_buffers=true"], r"^trainer_arg\['ddp_broadcast_buffers'\]: unime sets it \(this "
                                              r"trainer's own setting\)$"),
             (["adam_beta3=0.9"], r"^trainer_arg\['adam_beta3'\]: TrainingArguments has no field 'adam_beta3' "
                                  r"\(did you mean adam_beta2, adam_beta1"),
             (["report_to"], r"^trainer_arg expects KEY=VALUE, got 'report_to'$")]
    for extra, message in cases:
        with pytest.raises(UsageError, match=message):
            embedder_arguments(tmp_path, trainer_arg=extra)
    # the reasoner's SFT has no --warmup option: there the field is the user's
    sft = ReasonerSFTConfig(model="m", data="t.jsonl", out=str(tmp_path / "s"), trainer_arg=["warmup_steps=3"])
    assert sft_config(sft, str(tmp_path / "s"), use_cpu=True, dtype=torch.float32).warmup_steps == 3
    grpo = GRPOStageConfig(model="m", records="rl.jsonl", embedder="e", out=str(tmp_path / "g"),
                           trainer_arg=["beta=0.5"])
    with pytest.raises(UsageError, match=r"^trainer_arg\['beta'\]: unime sets it \(beta\)$"):
        embed_rl_grpo_config(grpo, output_dir=str(tmp_path / "g"), use_cpu=True, bf16=False, fp16=False)
    # QA: reward_weights was taken, though unime gives TRL one reward function, the rewards weighted by --weights:
    # [2.0] scaled that sum on top of --weights, three weights failed with a traceback once the models were loaded
    for weights in ("[2.0]", "[0.1,0.8,0.1]"):
        grpo = GRPOStageConfig(model="m", records="rl.jsonl", embedder="e", out=str(tmp_path / "g"),
                               trainer_arg=[f"reward_weights={weights}"])
        with pytest.raises(UsageError, match=r"^trainer_arg\['reward_weights'\]: unime sets it \(weights\)$"):
            embed_rl_grpo_config(grpo, output_dir=str(tmp_path / "g"), use_cpu=True, bf16=False, fp16=False)


def test_a_protected_trainer_arg_names_the_trainers_own_option_from_python_and_on_the_command_line(tmp_path):
    """Review: refusing a key unime sets said "unime sets it (--lr)" from Python too, where every other refusal names
    the config field; and it named one flag for every trainer: `max_steps` "(--steps)" for the reasoner, whose option
    is --max-steps, `learning_rate` "(--lr)" where the field is `learning_rate`. Now by the trainer's own config: its
    field from Python, its flag in a command (`unime.cli.failures.describe`)."""
    pytest.importorskip("trl")
    from unime.cli.failures import describe
    from unime.embed_rl.reasoner_sft import ReasonerSFTConfig, sft_config
    from unime.errors import UsageError
    from unime.train.reranker_trainer import RerankerTrainConfig, _training_arguments

    def reranker(pair):
        cfg = RerankerTrainConfig(model="m", records=["r.jsonl"], out=str(tmp_path / "o"), device="cpu",
                                  trainer_arg=[pair])
        _training_arguments(cfg, tmp_path / "o" / "checkpoints")

    def sft(pair):
        cfg = ReasonerSFTConfig(model="m", data="t.jsonl", out=str(tmp_path / "s"), trainer_arg=[pair])
        sft_config(cfg, str(tmp_path / "s"), use_cpu=True, dtype=torch.float32)

    kwargs = "activation_checkpointing_kwargs=..."
    for build, command, pair, python, flag in (
            (reranker, "train reranker", "learning_rate=1", "learning_rate", "--lr"),
            (reranker, "train reranker", "max_steps=3", "max_steps", "--steps"),
            (reranker, "train reranker", "warmup_steps=3", "warmup_steps", "--warmup"),
            (sft, "train reasoner", "max_steps=3", "max_steps", "--max-steps"),
            (sft, "train reasoner", "learning_rate=1", "learning_rate", "--lr"),
            (sft, "train reasoner", "save_strategy=no", "unime's checkpoint and resume convention",
             "unime's checkpoint and resume convention"),
            (sft, "train reasoner", "gradient_checkpointing_kwargs={}",
             f"gradient_checkpointing; its settings: trainer_arg {kwargs}",
             f"--gradient-checkpointing; its settings: --trainer-arg {kwargs}")):
        key = pair.partition("=")[0]
        with pytest.raises(UsageError) as refused:
            build(pair)
        assert str(refused.value) == f"trainer_arg[{key!r}]: unime sets it ({python})", pair
        assert describe(refused.value, command) == f"{command}: --trainer-arg {key}: unime sets it ({flag})", pair
    with pytest.raises(UsageError) as refused:
        sft("activation_checkpointing_kwargs={every_n_layers: 2}")
    assert str(refused.value) == ("trainer_arg['activation_checkpointing_kwargs']: has no effect without "
                                  "gradient_checkpointing")
    assert describe(refused.value, "train reasoner") == (
        "train reasoner: --trainer-arg activation_checkpointing_kwargs: has no effect without --gradient-checkpointing")


def test_gradcache_with_deepspeed_is_refused(tmp_path, monkeypatch, capsys):
    """Refused from Python naming the fields; on the command line (review) after the command's name, as every other
    refusal of a trainer's options reads (`train embedder: --trainer-arg KEY: ...`): it read without it."""
    from unime.cli import main
    from unime.cli.failures import describe
    from unime.errors import UnimeError
    from unime.train.embedder_config import EmbedderTrainingConfig

    EmbedderTrainingConfig(model="m", records="r.jsonl", out="o", gradcache=True,
                           trainer_arg=["adam_beta2=0.95"]).validate()
    config = EmbedderTrainingConfig(model="m", records="r.jsonl", out="o", gradcache=True,
                                    trainer_arg=["deepspeed=ds.json"])
    said = ("%s back-propagates each chunk's cached gradient itself, outside DeepSpeed's engine: use it without %s "
            "deepspeed=ds.json (or DeepSpeed without %s)")
    with pytest.raises(UnimeError) as caught:  # from Python: the fields (it named the flags)
        config.validate()
    assert str(caught.value) == said % ("gradcache", "trainer_arg", "gradcache")
    line = "train embedder: " + said % ("--gradcache", "--trainer-arg", "--gradcache")
    assert describe(caught.value, "train embedder") == line
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.jsonl").write_text('{"query": {"text": "a"}, "positive": {"text": "b"}}\n')
    assert main(["train", "embedder", "--model", "m", "--records", "r.jsonl", "--out", "o", "--gradcache",
                 "--trainer-arg", "deepspeed=ds.json"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"unime: error: {line}"
    assert not (tmp_path / "o").exists()


def test_gradcache_under_accelerate_launchs_deepspeed_is_refused(monkeypatch):
    """Review: the refusal looked only at `--trainer-arg deepspeed=`, so `accelerate launch --use_deepspeed ...
    --gradcache` (ACCELERATE_USE_DEEPSPEED in the environment, which accelerate reads as 1 / true / yes / on) ran.
    It is refused naming accelerate's setting, by the same detection as the sharded-parameter refusal."""
    from unime.errors import UnimeError
    from unime.train.embedder_config import EmbedderTrainingConfig

    config = EmbedderTrainingConfig(model="m", records="r.jsonl", out="o", gradcache=True)
    for value in ("true", "1", "yes", "ON"):
        monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", value)
        with pytest.raises(UnimeError, match=r"^gradcache .* outside DeepSpeed's engine: use it without accelerate "
                                             r"launch's DeepSpeed \(ACCELERATE_USE_DEEPSPEED\)"):
            config.validate()
    for value in ("false", "0", "no"):
        monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", value)
        config.validate()
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    EmbedderTrainingConfig(model="m", records="r.jsonl", out="o", gradcache=False).validate()  # DeepSpeed alone runs


def test_trainer_arg_on_the_command_line(capsys):
    """Repeatable on each training command; absent, the configs' default (empty)."""
    from unime.cli import build_parser
    from unime.cli.train import embedder_config_from_args

    parser = build_parser()
    args = parser.parse_args(["train", "embedder", "--model", "m", "--records", "r.jsonl", "--out", "o",
                              "--trainer-arg", "adam_beta2=0.95", "--trainer-arg", "report_to=wandb"])
    assert embedder_config_from_args(args).trainer_arg == ["adam_beta2=0.95", "report_to=wandb"]
    args = parser.parse_args(["train", "embedder", "--model", "m", "--records", "r.jsonl", "--out", "o"])
    assert embedder_config_from_args(args).trainer_arg == []
    for command in ("embedder", "judge", "reranker", "reasoner"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["train", command, "--help"])
        assert "--trainer-arg KEY=VALUE" in capsys.readouterr().out, command


def test_grpo_learning_rate_schedule_is_an_option(tmp_path):
    """The Embed-RL release trains GRPO at a constant learning rate (`lr_scheduler_type: constant`); unime's GRPO
    always decayed it linearly, with no option for it. `--lr-scheduler` (GRPO; default linear, as before) sets it,
    and `--trainer-arg lr_scheduler_type=...` is refused naming the option."""
    pytest.importorskip("trl")
    from unime.embed_rl.grpo import GRPOStageConfig, embed_rl_grpo_config
    from unime.errors import UsageError

    def schedule(**kw):
        cfg = GRPOStageConfig(model="m", records="rl.jsonl", embedder="e", out=str(tmp_path / "g"), **kw)
        args = embed_rl_grpo_config(cfg, output_dir=str(tmp_path / "g"), use_cpu=True, bf16=False, fp16=False)
        return str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))

    assert schedule() == "linear" and schedule(lr_scheduler="constant") == "constant"
    with pytest.raises(UsageError, match=r"^trainer_arg\['lr_scheduler_type'\]: unime sets it \(lr_scheduler\)$"):
        schedule(trainer_arg=["lr_scheduler_type=constant"])


def test_reranker_learning_rate_schedule_and_warmup_fraction_are_options(tmp_path):
    """The UniME-V2 release trains its reranker with a cosine schedule and warmup ratio 0.03
    (Rerank/scripts/train_qwen25VL_7B.sh); `train reranker` always decayed linearly after an integer number of
    warm-up steps. `--lr-scheduler` (default linear, as before) sets the schedule, `--warmup` below 1 is a fraction
    of the steps (as the embedder's), and `--trainer-arg lr_scheduler_type=...` is refused naming the option."""
    from unime.errors import UsageError
    from unime.train.reranker_trainer import RerankerTrainConfig, _training_arguments

    def arguments(**kw):
        cfg = RerankerTrainConfig(model="m", records=["r.jsonl"], out=str(tmp_path / "o"), device="cpu", **kw)
        return _training_arguments(cfg, tmp_path / "o" / "checkpoints")

    args = arguments()
    assert (str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)), args.warmup_steps) == ("linear", 0)
    args = arguments(lr_scheduler="cosine", warmup_steps=0.03)
    assert str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)) == "cosine"
    assert args.get_warmup_steps(1000) == 30 and args.get_warmup_steps(100) == 3  # ceil(0.03 x steps)
    assert arguments(warmup_steps=20).get_warmup_steps(1000) == 20
    with pytest.raises(UsageError, match=r"trainer_arg\['lr_scheduler_type'\]: unime sets it \(lr_scheduler\)$"):
        arguments(trainer_arg=["lr_scheduler_type=cosine"])


def test_the_lr_scheduler_names_are_transformers_scheduler_types():
    """`--lr-scheduler` takes transformers' `SchedulerType` names (`unime.options.LR_SCHEDULERS`, a copy kept so
    that parsing a command line does not import torch): the same names, every one accepted by the arguments."""
    from transformers.trainer_utils import SchedulerType

    from unime.options import LR_SCHEDULERS

    assert sorted(LR_SCHEDULERS) == sorted(s.value for s in SchedulerType)


def test_grpo_loss_types_are_trls():
    """`--loss-type` takes TRL's GRPOConfig loss types (`unime.embed_rl.grpo.GRPO_LOSS_TYPES`, a copy kept so that
    parsing a command line does not import torch): the values its `loss_type` help lists as supported, its default
    among them."""
    import dataclasses
    import re

    from trl import GRPOConfig

    from unime.embed_rl.grpo import GRPO_LOSS_TYPES

    field = next(f for f in dataclasses.fields(GRPOConfig) if f.name == "loss_type")
    supported = re.search(r"Supported values are (.*?)\.", field.metadata["help"]).group(1)
    assert sorted(GRPO_LOSS_TYPES) == sorted(re.findall(r"'(\w+)'", supported))
    assert field.default in GRPO_LOSS_TYPES


def test_configurations_that_shard_the_parameters_are_refused_by_each_trainer(tmp_path, tiny_model_dir, monkeypatch):
    """FSDP and DeepSpeed ZeRO-3 shard the parameters over the processes; every trainer saves its checkpoints and
    exports from its own process's module, which then holds shards (with FSDP2 forced on the CPU, the first
    checkpoint of `train embedder` failed in `_save`, LoRA and full alike). Refused, naming the setting, before a
    model loads; ZeRO-1/2 (whole parameters in every process) are not."""
    pytest.importorskip("trl")
    from unime.embed_rl.grpo import GRPOStageConfig, embed_rl_grpo_config
    from unime.embed_rl.reasoner_sft import ReasonerSFTConfig, sft_config
    from unime.errors import UsageError

    for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE",
                 "ACCELERATE_DEEPSPEED_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    zero3, zero2 = tmp_path / "ds_zero3.json", tmp_path / "ds_zero2.json"
    zero3.write_text(json.dumps({"zero_optimization": {"stage": 3}}), encoding="utf-8")
    zero2.write_text(json.dumps({"zero_optimization": {"stage": 2}}), encoding="utf-8")
    fsdp = r"^trainer_arg\['fsdp'\]: 'full_shard auto_wrap' shards the model's parameters across the processes"
    with pytest.raises(UsageError, match=fsdp):
        embedder_arguments(tmp_path / "e", trainer_arg=["fsdp=full_shard auto_wrap"])
    with pytest.raises(UsageError, match=fsdp):
        reranker_arguments(tmp_path / "r", tiny_model_dir("qwen2_vl"), monkeypatch,
                           trainer_arg=["fsdp=full_shard auto_wrap"])
    sft = ReasonerSFTConfig(model="m", data="t.jsonl", out=str(tmp_path / "s"), trainer_arg=["fsdp=true"])
    with pytest.raises(UsageError, match=r"^trainer_arg\['fsdp'\]: True shards"):
        sft_config(sft, str(tmp_path / "s"), use_cpu=True, dtype=torch.float32)
    grpo = GRPOStageConfig(model="m", records="rl.jsonl", embedder="e", out=str(tmp_path / "g"),
                           trainer_arg=[f"deepspeed={zero3}"])
    with pytest.raises(UsageError, match=r"^trainer_arg\['deepspeed'\]: '.*ds_zero3.json' \(ZeRO stage 3\) shards"):
        embed_rl_grpo_config(grpo, output_dir=str(tmp_path / "g"), use_cpu=True, bf16=False, fp16=False)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(UsageError, match=r"accelerate launch's FSDP \(ACCELERATE_USE_FSDP\) shards"):
        embedder_arguments(tmp_path / "e2")

    from unime.models.hf_arguments import refuse_sharded_parameters

    with pytest.raises(UsageError, match=r"\(ZeRO stage 3\) shards"):  # the config inline, as YAML or JSON
        refuse_sharded_parameters({"deepspeed": {"zero_optimization": {"stage": 3}}}, environ={})
    with pytest.raises(UsageError, match=r"\(ZeRO stage 3\) shards"):
        refuse_sharded_parameters({"deepspeed": '{"zero_optimization": {"stage": "3"}}'}, environ={})
    # accelerate launch --use_fsdp / --use_deepspeed --zero_stage 3 (or its config file) pass it in the environment
    with pytest.raises(UsageError, match=r"accelerate launch's FSDP \(ACCELERATE_USE_FSDP\) shards"):
        refuse_sharded_parameters({}, environ={"ACCELERATE_USE_FSDP": "true"})
    with pytest.raises(UsageError, match="accelerate launch's DeepSpeed ZeRO-3 shards"):
        refuse_sharded_parameters({}, environ={"ACCELERATE_USE_DEEPSPEED": "true",
                                               "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"})
    with pytest.raises(UsageError, match="accelerate launch's DeepSpeed ZeRO-3 shards"):
        refuse_sharded_parameters({}, environ={"ACCELERATE_USE_DEEPSPEED": "true",
                                               "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(zero3)})
    # accelerate's own reading of its switches (`str_to_bool`): 1 / yes / on, any case, are on too
    for value in ("1", "yes", "On", "TRUE", "y", "t"):
        with pytest.raises(UsageError, match=r"accelerate launch's FSDP \(ACCELERATE_USE_FSDP\) shards"):
            refuse_sharded_parameters({}, environ={"ACCELERATE_USE_FSDP": value})
        with pytest.raises(UsageError, match="accelerate launch's DeepSpeed ZeRO-3 shards"):
            refuse_sharded_parameters({}, environ={"ACCELERATE_USE_DEEPSPEED": value,
                                                   "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"})
    with pytest.raises(UsageError, match="ACCELERATE_USE_FSDP='maybe': accelerate reads 1 / 0, true / false"):
        refuse_sharded_parameters({}, environ={"ACCELERATE_USE_FSDP": "maybe"})
    # not sharded: no refusal
    for extra, environ in [({"fsdp": ""}, {}), ({"fsdp": False}, {}), ({"deepspeed": str(zero2)}, {}),
                           ({"deepspeed": {"zero_optimization": {"stage": 2}}}, {}),
                           ({}, {"ACCELERATE_USE_FSDP": "false"}), ({}, {"ACCELERATE_USE_FSDP": "0"}),
                           ({}, {"ACCELERATE_USE_FSDP": "no"}),
                           ({}, {"ACCELERATE_USE_DEEPSPEED": "0", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}),
                           ({}, {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"})]:
        refuse_sharded_parameters(extra, environ=environ)


def test_checkpointing_trainer_args_are_refused_or_reach_the_arguments(tmp_path):
    """QA: `--trainer-arg gradient_checkpointing=true` was accepted and silently ignored (transformers reads the
    deprecated name only when `activation_checkpointing` is unset, and unime always set it), and so was
    `gradient_checkpointing_kwargs`. Both names, and `activation_checkpointing`, are refused naming
    --gradient-checkpointing in every trainer; `activation_checkpointing_kwargs` goes over unime's non-reentrant
    default, and is refused without --gradient-checkpointing, where it would do nothing."""
    pytest.importorskip("trl")
    from trl import GRPOConfig, SFTConfig
    from transformers import TrainingArguments

    from unime.errors import UsageError
    from unime.models.hf_arguments import hf_training_arguments

    def build(args_cls, pairs, on=False):
        return hf_training_arguments(args_cls, output_dir=tmp_path / "o", batch_size=2, learning_rate=1e-4, seed=0,
                                     logging_steps=1, save_steps=10, save_total_limit=None, use_cpu=True,
                                     activation_checkpointing=on, trainer_arg=pairs,
                                     **({"num_generations": 2} if args_cls is GRPOConfig else {}))

    for args_cls in (TrainingArguments, SFTConfig, GRPOConfig):
        for key in ("gradient_checkpointing", "activation_checkpointing"):
            for on in (False, True):
                with pytest.raises(UsageError, match=rf"^trainer_arg\['{key}'\]: unime sets it "
                                                     r"\(--gradient-checkpointing\)$"):
                    build(args_cls, [f"{key}={str(not on).lower()}"], on=on)
        with pytest.raises(UsageError, match=r"^trainer_arg\['gradient_checkpointing_kwargs'\]: unime sets it "
                                             r"\(--gradient-checkpointing; its settings: --trainer-arg "
                                             r"activation_checkpointing_kwargs=...\)$"):
            build(args_cls, ["gradient_checkpointing_kwargs={use_reentrant: true}"], on=True)
        with pytest.raises(UsageError, match=r"^trainer_arg\['activation_checkpointing_kwargs'\]: has no effect "
                                             r"without --gradient-checkpointing$"):
            build(args_cls, ["activation_checkpointing_kwargs={every_n_layers: 2}"])
        got = build(args_cls, ["activation_checkpointing_kwargs={every_n_layers: 2}"], on=True)
        assert (got.activation_checkpointing, got.activation_checkpointing_kwargs) == \
            (True, {"use_reentrant": False, "every_n_layers": 2})
        got = build(args_cls, ["activation_checkpointing_kwargs={use_reentrant: true}"], on=True)
        assert got.activation_checkpointing_kwargs == {"use_reentrant": True}
        assert build(args_cls, [], on=False).activation_checkpointing is False


class _Mode(enum.Enum):
    FAST = "fast"
    SLOW = "slow"


class _Opaque:
    pass


@dataclasses.dataclass
class _Args:
    """A stand-in for TrainingArguments, with the kinds of annotations it has."""

    rate: float = 0.1
    maybe_rate: Optional[float] = None
    count: int = 1
    flag: bool = False
    name: str = ""
    mode: _Mode = _Mode.FAST
    mode_or_text: Union[_Mode, str] = "fast"
    side: Literal["left", "right"] = "left"
    tags: Optional[list[str]] = None
    weights: Optional[list[float]] = None
    kwargs: Union[dict, str, None] = None
    opaque: Optional[_Opaque] = None


def test_trainer_arg_values_are_checked_against_the_annotated_type_of_their_field():
    """QA: `adam_beta2=nan` (text to YAML) reached torch's Adam as a string, `.nan` as NaN; the value is now checked
    against the field's annotation, read from the class (here `_Args`, a stand-in), and refused naming the key —
    from Python as `trainer_arg['KEY']`."""
    from unime.errors import UsageError
    from unime.models.hf_arguments import user_trainer_args

    def check(pair):
        return user_trainer_args(_Args, [pair], {})

    accepted = {"rate=0.5": 0.5, "rate=2": 2, "rate=1e-8": 1e-8, "maybe_rate=null": None, "count=3": 3,
                "flag=true": True, "flag=no": False, "name=cosine": "cosine", "name=2024": 2024, "mode=slow": "slow",
                "mode_or_text=slow": "slow", "side=right": "right", "tags=[a, b]": ["a", "b"],
                "weights=[1, 0.5]": [1, 0.5], "kwargs={a: 1}": {"a": 1}, "kwargs=text": "text",
                "opaque=[whatever]": ["whatever"]}  # an annotation it cannot check: passed through as given
    for pair, want in accepted.items():
        got = check(pair)[pair.partition("=")[0]]
        assert got == want and type(got) is type(want), pair
    # a list of numbers given as text (YAML reads `1e-3`, without a dot, as text): each item converted, as a single
    # number is
    got = check("weights=[1, 1e-3, '0.5']")["weights"]
    assert got == [1, 0.001, 0.5] and [type(v) for v in got] == [int, float, float]
    refused = {"rate=nan": "trainer_arg['rate']: must be a finite number, got 'nan'",
               "rate=.nan": "trainer_arg['rate']: must be a finite number, got nan",
               "rate=-.inf": "trainer_arg['rate']: must be a finite number, got -inf",
               "rate=fast": "trainer_arg['rate']: must be a finite number, got 'fast'",
               "rate=true": "trainer_arg['rate']: must be a finite number, got True",
               "rate=": "trainer_arg['rate']: must be a finite number, got None",
               f"rate={10 ** 400}": f"trainer_arg['rate']: must be a finite number, got {10 ** 400}",
               "maybe_rate=.inf": "trainer_arg['maybe_rate']: must be a finite number or null, got inf",
               "count=1.5": "trainer_arg['count']: must be a whole number, got 1.5",
               "count='3'": "trainer_arg['count']: must be a whole number, got '3'",
               "count=false": "trainer_arg['count']: must be a whole number, got False",
               "flag=1": "trainer_arg['flag']: must be true or false, got 1",
               "flag=maybe": "trainer_arg['flag']: must be true or false, got 'maybe'",
               "mode=medium": "trainer_arg['mode']: must be one of fast, slow, got 'medium'",
               "side=up": "trainer_arg['side']: must be one of left, right, got 'up'",
               # an enum or text (transformers' `optim`, `hub_strategy`, ...): the text is one of the enum's values
               "mode_or_text=anything": "trainer_arg['mode_or_text']: must be one of fast, slow, got 'anything'",
               "tags=a": "trainer_arg['tags']: must be a list or null, got 'a'",
               "weights=[1, x]": "trainer_arg['weights']: must be a list, each item a finite number or null, "
                                 "got [1, 'x']",
               "kwargs=[1]": "trainer_arg['kwargs']: must be a mapping or a string or null, got [1]"}
    for pair, message in refused.items():
        with pytest.raises(UsageError) as caught:
            check(pair)
        assert str(caught.value) == message, pair


def test_trainer_arg_enum_or_text_fields_take_only_the_enums_values(tmp_path):
    """`hub_strategy=bogus` (a field annotated `HubStrategy | str`) passed the check as text and was refused only by
    transformers as the trainer built its arguments, after the output folder was claimed. Every field of an enum or
    text (`optim`, `lr_scheduler_type`, `eval_strategy`, ...) takes only the enum's values, named in the refusal —
    the ones transformers itself accepts."""
    from transformers import TrainingArguments
    from transformers.trainer_utils import HubStrategy, IntervalStrategy, SaveStrategy, SchedulerType
    from transformers.training_args import OptimizerNames

    from unime.errors import UsageError
    from unime.models.hf_arguments import check_trainer_arg_value

    fields = {"hub_strategy": HubStrategy, "eval_strategy": IntervalStrategy, "logging_strategy": IntervalStrategy,
              "save_strategy": SaveStrategy, "lr_scheduler_type": SchedulerType, "optim": OptimizerNames}
    for key, kind in fields.items():
        values = [e.value for e in kind]
        with pytest.raises(UsageError) as caught:
            check_trainer_arg_value(TrainingArguments, key, "bogus")
        assert str(caught.value) == f"trainer_arg[{key!r}]: must be one of {', '.join(values)}, got 'bogus'"
        with pytest.raises(ValueError, match="bogus is not a valid"):  # transformers refuses it too
            TrainingArguments(output_dir=str(tmp_path / "o"), **{key: "bogus"})
        assert [check_trainer_arg_value(TrainingArguments, key, v) for v in values] == values
    assert check_trainer_arg_value(TrainingArguments, "hub_strategy", HubStrategy.END) is HubStrategy.END


def test_trainer_arg_values_transformers_takes_as_text_still_reach_the_arguments(tmp_path):
    """`report_to=none`, `optim=adamw_torch`, `eval_strategy=steps` (an enum given by its value) pass the check and
    reach TrainingArguments as transformers reads them; `adam_epsilon=1e-8` (text to YAML) arrives as the float."""
    from transformers import TrainingArguments

    from unime.models.hf_arguments import hf_training_arguments

    args = hf_training_arguments(
        TrainingArguments, output_dir=tmp_path, batch_size=1, learning_rate=1e-3, seed=0, logging_steps=1,
        save_steps=10, save_total_limit=None, use_cpu=True,
        trainer_arg=["report_to=none", "optim=adamw_torch", "eval_strategy=steps", "eval_steps=5",
                     "adam_epsilon=1e-8", "torch_compile=false"])
    assert args.report_to == [] and args.optim.value == "adamw_torch" and args.eval_strategy.value == "steps"
    assert args.adam_epsilon == 1e-8 and isinstance(args.adam_epsilon, float) and args.torch_compile is False


def test_a_field_whose_annotation_cannot_be_resolved_is_passed_through_and_the_others_still_checked():
    """One annotation naming a type this environment lacks does not switch the check off for the other fields."""
    from unime.errors import UsageError
    from unime.models.hf_arguments import user_trainer_args

    partial = dataclasses.make_dataclass("_Partial", [("missing", "NoSuchType", None), ("rate", float, 0.1)])
    assert user_trainer_args(partial, ["missing=[1, x]"], {}) == {"missing": [1, "x"]}
    with pytest.raises(UsageError, match=r"^trainer_arg\['rate'\]: must be a finite number, got 'nan'$"):
        user_trainer_args(partial, ["rate=nan"], {})
