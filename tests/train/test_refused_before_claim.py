"""A training command refused for its options (a `--trainer-arg` unime refuses, ...) writes nothing: every trainer
checks what needs no model before the output folder is claimed. Before, the folder was claimed first and
`train embedder` left `.unime-output.json`, `.unime.lock` and `train_inputs.json` in a new --out."""

from __future__ import annotations

import pytest

from tests.train.helpers import trainer_argv as _argv


TRAINERS = ["embedder", "reranker", "judge", "reasoner sft", "reasoner grpo"]
# each refusal reads as the value checks' do (below): the command, then `--trainer-arg KEY: ...`
REFUSALS = {"fsdp=full_shard": "--trainer-arg fsdp: 'full_shard' shards the model's parameters",
            "learning_rate=1": "--trainer-arg learning_rate: unime sets it (--lr)",
            "adam_beta3=0.9": "--trainer-arg adam_beta3: {args} has no field 'adam_beta3'",
            "activation_checkpointing_kwargs={every_n_layers: 2}":
                "--trainer-arg activation_checkpointing_kwargs: has no effect without --gradient-checkpointing",
            "report_to": "--trainer-arg expects KEY=VALUE, got 'report_to'"}
ARGS_CLASSES = {"embedder": "TrainingArguments", "reranker": "TrainingArguments", "judge": "TrainingArguments",
                "reasoner sft": "SFTConfig", "reasoner grpo": "GRPOConfig"}


@pytest.mark.parametrize("trainer", TRAINERS)
@pytest.mark.parametrize("refused", sorted(REFUSALS))
def test_a_refused_trainer_arg_leaves_no_output_folder(trainer, refused, tmp_path, tiny_model_dir, capsys,
                                                       monkeypatch):
    pytest.importorskip("trl")
    from unime.cli import main

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    out = tmp_path / "out"
    assert main([*_argv(trainer, tmp_path, tiny_model_dir), "--out", str(out), "--trainer-arg", refused]) == 2
    command = "train " + trainer.split()[0]
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"unime: error: {command}: " + REFUSALS[refused].format(args=ARGS_CLASSES[trainer]))
    assert not out.exists()


# accelerate launch's settings, from its environment variables (QA: these read without the command's name)
LAUNCH_REFUSALS = {(("ACCELERATE_USE_FSDP", "true"),): "accelerate launch's FSDP (ACCELERATE_USE_FSDP) shards the "
                                                        "model's parameters",
                   (("ACCELERATE_USE_DEEPSPEED", "true"), ("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")):
                       "accelerate launch's DeepSpeed ZeRO-3 shards the model's parameters",
                   (("ACCELERATE_USE_FSDP", "maybe"),): "ACCELERATE_USE_FSDP='maybe': accelerate reads 1 / 0, true / "
                                                        "false, yes / no or on / off"}


@pytest.mark.parametrize("trainer", ["embedder", "reasoner grpo"])
@pytest.mark.parametrize("environ", sorted(LAUNCH_REFUSALS))
def test_a_refused_launch_setting_reads_after_the_command_and_leaves_no_folder(trainer, environ, tmp_path,
                                                                               tiny_model_dir, capsys, monkeypatch):
    pytest.importorskip("trl")
    from unime.cli import main

    for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE",
                 "ACCELERATE_DEEPSPEED_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ:
        monkeypatch.setenv(name, value)
    out = tmp_path / "out"
    assert main([*_argv(trainer, tmp_path, tiny_model_dir), "--out", str(out)]) == 2
    command = "train " + trainer.split()[0]
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"unime: error: {command}: {LAUNCH_REFUSALS[environ]}")
    assert not out.exists()


@pytest.mark.parametrize("trainer", TRAINERS)
def test_a_refused_command_leaves_an_existing_folder_untouched(trainer, tmp_path, tiny_model_dir, capsys):
    """An empty folder stays empty (no marker, no lock); with --overwrite, a folder of another command keeps its
    marker and files."""
    pytest.importorskip("trl")
    from unime.cli import main

    argv = [*_argv(trainer, tmp_path, tiny_model_dir), "--trainer-arg", "learning_rate=1"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*argv, "--out", str(empty)]) == 2
    assert list(empty.iterdir()) == []
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    (other / ".unime-output.json").write_text('{"command": "data synth"}')
    assert main([*argv, "--out", str(other), "--overwrite"]) == 2
    assert sorted(p.name for p in other.iterdir()) == [".unime-output.json", "notes.txt"]
    assert (other / ".unime-output.json").read_text() == '{"command": "data synth"}'
    assert "unime sets it" in capsys.readouterr().err


@pytest.mark.parametrize("trainer", ["embedder", "reranker", "reasoner sft", "reasoner grpo"])
def test_the_trainer_functions_check_before_they_claim(trainer, tmp_path):
    """Called as a library (the demo's stages), each trainer refuses before it claims its folder too."""
    pytest.importorskip("trl")
    from unime.errors import UsageError

    out, extra = str(tmp_path / "out"), ["fsdp=full_shard"]
    if trainer == "embedder":
        from unime.train.embedder_trainer import EmbedderTrainingConfig, train_embedder as train
        cfg = EmbedderTrainingConfig(model="m", records="r.jsonl", out=out, device="cpu", trainer_arg=extra)
    elif trainer == "reranker":
        from unime.train.reranker_trainer import RerankerTrainConfig, train_reranker as train
        cfg = RerankerTrainConfig(model="m", records=["r.jsonl"], out=out, device="cpu", trainer_arg=extra)
    elif trainer == "reasoner sft":
        from unime.embed_rl.reasoner_sft import ReasonerSFTConfig, train_reasoner_sft as train
        cfg = ReasonerSFTConfig(model="m", data="t.jsonl", out=out, trainer_arg=extra)
    else:
        from unime.embed_rl.grpo import GRPOStageConfig, train_reasoner_grpo as train
        cfg = GRPOStageConfig(model="m", records="rl.jsonl", embedder="e", out=out, trainer_arg=extra)
    with pytest.raises(UsageError, match=r"^trainer_arg\['fsdp'\]: 'full_shard' shards the model's parameters"):
        train(cfg)
    assert not (tmp_path / "out").exists()


# QA: these values reached the trainer and failed after the model had loaded (a TypeError from torch's Adam, or from
# inside Trainer's epoch loop for max_grad_norm), leaving checkpoints/, train_config.json and train_inputs.json in
# --out; `max_grad_norm=.nan` on the reasoner was accepted and turned clipping off
BAD_VALUES = {"adam_beta2=nan": "--trainer-arg adam_beta2: must be a finite number, got 'nan'",
              "adam_beta2=.nan": "--trainer-arg adam_beta2: must be a finite number, got nan",
              "max_grad_norm=.inf": "--trainer-arg max_grad_norm: must be a finite number, got inf",
              "ddp_timeout=1.5": "--trainer-arg ddp_timeout: must be a whole number, got 1.5",
              "torch_compile=maybe": "--trainer-arg torch_compile: must be true or false, got 'maybe'",
              # a field of an enum or text (`HubStrategy | str`): transformers takes only the enum's values
              "hub_strategy=bogus": "--trainer-arg hub_strategy: must be one of end, every_save, checkpoint, "
                                    "all_checkpoints, got 'bogus'"}
COMMANDS = {"embedder": "train embedder", "reranker": "train reranker", "reasoner sft": "train reasoner"}
# (train embedder sets max_grad_norm from its --max-grad-norm, and refuses the key as such)
BAD_CASES = [(trainer, bad) for trainer in COMMANDS for bad in sorted(BAD_VALUES)
             if not (trainer == "embedder" and bad.startswith("max_grad_norm"))]


@pytest.mark.parametrize(("trainer", "bad"), BAD_CASES)
def test_a_trainer_arg_value_that_does_not_fit_its_field_is_refused_before_the_folder(trainer, bad, tmp_path,
                                                                                     tiny_model_dir, capsys):
    """The value is checked against the annotated type of the field of the trainer's arguments (transformers'
    TrainingArguments, TRL's SFTConfig) before any work: one line naming the key, exit 2, no folder."""
    pytest.importorskip("trl")
    from unime.cli import main

    out = tmp_path / "out"
    assert main([*_argv(trainer, tmp_path, tiny_model_dir), "--out", str(out), "--trainer-arg", bad]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"unime: error: {COMMANDS[trainer]}: {BAD_VALUES[bad]}"
    assert not out.exists()
