"""Every trainer's log dicts (transformers' `{'loss': ..., 'grad_norm': ...}`) go to `logging`, not to stdout
(`unime.models.curves.log_training_dicts`): stdout keeps a command's own output only (`unime train embedder`'s
last line is its merged folder), with the progress bar (INFO) or without it (WARNING: transformers' printer)."""

from __future__ import annotations

import logging
import re

import pytest

from tests.train.helpers import trainer_argv
from unime.models.prompts import EMB_TOKEN

pytestmark = pytest.mark.slow

TRAINERS = ["embedder", "reranker", "judge", "reasoner sft", "reasoner grpo"]
DICT_ON_STDOUT = re.compile(r"\{'[a-z_/]+': ")  # a printed log dict: {'loss': ...


def _dict_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "unime.models.curves"]


@pytest.mark.parametrize("trainer", TRAINERS)
def test_a_training_command_prints_no_log_dict_and_logs_each_at_info(trainer, tmp_path, tiny_model_dir, capsys,
                                                                       caplog):
    pytest.importorskip("trl")
    from unime.cli import main

    out, argv = tmp_path / "out", trainer_argv(trainer, tmp_path, tiny_model_dir)
    if trainer == "reasoner grpo":  # an embedder with <emb>, short completions
        argv[argv.index("--embedder") + 1] = tiny_model_dir("qwen2_vl", (EMB_TOKEN,))
        argv += ["--max-completion-length", "8"]
    capsys.readouterr()  # the fixtures' model-building output
    with caplog.at_level(logging.INFO, logger="unime"):
        assert main([*argv, "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert not DICT_ON_STDOUT.search(stdout), stdout
    lines = _dict_lines(caplog)
    steps = 1 if trainer.startswith("reasoner") else 2
    # one line per logged step (each step logged: logging-steps 1, or the run's last step), then the summary
    assert [line.split(":")[0] for line in lines] == [f"step {s}/{steps}" for s in range(1, steps + 1)] + [
        f"step {steps}/{steps}"], lines
    assert re.fullmatch(rf"step 1/{steps}: .*loss -?[0-9.e+-]+, .*epoch [0-9.]+", lines[0]), lines[0]
    assert "train_runtime" in lines[-1] and "total_flos" not in lines[-1]
    if trainer == "embedder":
        assert stdout.strip().splitlines()[-1] == str(out / "merged")


@pytest.mark.parametrize("trainer", ["embedder", "reranker"])
def test_without_the_bar_the_printer_prints_nothing_either(trainer, tmp_path, tiny_model_dir, capsys, caplog):
    """At WARNING the embedder and reranker turn the bar off (transformers then adds its printer): no dict on
    stdout, and none logged (INFO is below the level)."""
    from unime.cli import main

    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="unime"):
        assert main([*trainer_argv(trainer, tmp_path, tiny_model_dir), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert not DICT_ON_STDOUT.search(stdout), stdout
    assert _dict_lines(caplog) == []
    if trainer == "embedder":
        assert stdout.strip().splitlines()[-1] == str(out / "merged")


def test_the_demo_captioner_prints_no_log_dict(tiny_world_dir, tiny_model_dir, tmp_path, capsys, caplog):
    """The pretraining's captioning stage trains TRL's SFTTrainer without the bar (its printer) and outside
    `train_or_finish`: its dicts are logged too."""
    from unime.demo.captioning import train_captioner
    from unime.demo.pretrain import corpus_captions

    root = tiny_world_dir(3)
    with caplog.at_level(logging.INFO, logger="unime"):
        metrics = train_captioner(tiny_model_dir("qwen2_vl"), root, corpus_captions(root, set())[:8],
                                  tmp_path / "c", steps=2, batch_size=4, lr=1e-2, seed=0, device="cpu",
                                  progress=lambda m: None)
    assert not DICT_ON_STDOUT.search(capsys.readouterr().out)
    lines = _dict_lines(caplog)
    assert [line.split(":")[0] for line in lines] == ["step 1/2", "step 2/2", "step 2/2"], lines
    assert lines[1].startswith(f"step 2/2: loss {metrics['last_loss']:.4g}, "), (lines, metrics)
