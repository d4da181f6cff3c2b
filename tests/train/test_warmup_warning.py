"""QA: a shortened run never left warm-up, silently (`--recipe unime-v2/qwen2-vl-2b --steps 100` keeps the recipe's
`--warmup 200`; a 3-step run's learning rate was 0.0 then 1e-06). Every trainer warns once, naming --warmup and
--steps, when the warm-up covers the run; the values are not changed."""

from __future__ import annotations

import logging

import pytest

from tests.train.helpers import base_config, write_world


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "warm-up" in r.getMessage()]


@pytest.mark.parametrize("warmup,warned", [(5, True), (2, True), (1, False), (0.1, False)])
def test_the_embedder_warns_when_the_warm_up_covers_the_run(tiny_model_dir, mined_world, tmp_path, caplog, warmup,
                                                             warned):
    from unime.data.io import read_records
    from unime.models.curves import read_curves_csv
    from unime.train.embedder_trainer import train_embedder

    world, records = mined_world
    caplog.set_level(logging.WARNING, logger="unime")
    train_embedder(base_config(tiny_model_dir("qwen2_vl"), tmp_path / "run", world, steps=2, warmup=warmup),
                   records=read_records(records)[:4])
    got = _warnings(caplog)
    assert len(got) == int(warned), got
    if warned:
        # from Python, the config's fields (QA: it named the flags --warmup / --steps)
        assert f"warmup {warmup} >= the run's 2 optimizer steps (steps, " in got[0]
        # not changed: the learning rate is still rising at the last step (lr x step / warmup)
        rows = read_curves_csv(tmp_path / "run" / "curves.csv")
        assert [float(r["learning_rate"]) for r in rows] == pytest.approx([0.0, 2e-3 / warmup])


@pytest.mark.parametrize("role", ["reranker", "judge"])
def test_the_reranker_and_judge_warn_when_the_warm_up_covers_the_run(tiny_model_dir, tmp_path, caplog, role):
    from unime.train.reranker_trainer import RerankerTrainConfig, train_reranker

    records = write_world(tmp_path, scores=role == "reranker")
    caplog.set_level(logging.WARNING, logger="unime")
    train_reranker(RerankerTrainConfig(model=tiny_model_dir("qwen2_vl"), records=[records], out=str(tmp_path / role),
                                       role=role, losses=("pair",), max_steps=2, warmup_steps=5, batch_size=2,
                                       logging_steps=1, seed=0, device="cpu", holdout=0.0,
                                       train_modules=("lm_head",)))
    got = _warnings(caplog)
    assert len(got) == 1 and "warmup_steps 5 >= the run's 2 optimizer steps (max_steps, " in got[0], got


def test_the_warning_names_the_reasoners_options_and_the_fraction_in_steps():
    from unime.models.warmup import warmup_warning

    text = warmup_warning(10, 10, 3, "--trainer-arg warmup_steps", "--max-steps")
    assert text.startswith("--trainer-arg warmup_steps 10 >= the run's 3 optimizer steps (--max-steps")
    assert warmup_warning(0.5, 1, 1, "--warmup", "--steps").startswith("--warmup 0.5 (1 steps) >= the run's 1 ")
    assert warmup_warning(0.5, 2, 3, "--warmup", "--steps") is None


def test_warmup_steps_follow_transformers_rule():
    """`--print-config` computes the warm-up's steps without transformers; they must be the ones the run uses."""
    from transformers import TrainingArguments

    from unime.models.warmup import warmup_steps

    for warmup, steps, want in ((200, 10, 200), (200.0, 500, 200), (0.1, 10, 1), (0.1, 11, 2), (0.5, 3, 2),
                                (0, 7, 0), (1, 1, 1)):
        assert warmup_steps(warmup, steps) == want
        assert TrainingArguments.get_warmup_steps(type("A", (), {"warmup_steps": warmup})(), steps) == want


@pytest.mark.parametrize("argv,warning", [
    # the recipe's 200 warm-up steps (released code) with a shortened run: what the run logs at its start
    (["train", "embedder", "--recipe", "unime-v2/qwen2-vl-2b", "--steps", "10"],
     "--warmup 200 >= the run's 10 optimizer steps (--steps"),
    (["train", "embedder", "--recipe", "unime-v2/qwen2-vl-2b", "--steps", "200"],
     "--warmup 200 >= the run's 200 optimizer steps (--steps"),
    (["train", "embedder", "--recipe", "unime-v2/qwen2-vl-2b", "--steps", "201"], None),
    (["train", "embedder", "--model", "m", "--steps", "1"], "--warmup 0.1 (1 steps) >= the run's 1 optimizer steps"),
    (["train", "embedder", "--recipe", "unime-v2/qwen2-vl-2b"], None),  # steps from the epochs: not known
    (["train", "reranker", "--model", "m", "--steps", "3", "--warmup", "3"],
     "--warmup 3 >= the run's 3 optimizer steps (--steps"),
    (["train", "judge", "--model", "m", "--steps", "4", "--warmup", "3"], None),
])
def test_print_config_shows_the_warm_up_warning_of_the_run(capsys, argv, warning):
    """QA: `--print-config` of `--recipe unime-v2/qwen2-vl-2b --steps 10` showed warmup 200 without a word, while
    the run itself warns at its start. It prints the run's WARNING (the same function) on stderr."""
    from unime.cli import main

    assert main([*argv, "--print-config"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("# unime train ")
    lines = [line for line in err.splitlines() if "warm-up" in line]
    if warning is None:
        assert lines == []
    else:
        assert len(lines) == 1 and lines[0].startswith("unime: WARNING: " + warning), err


def test_print_config_uses_the_steps_the_run_uses(tmp_path, capsys):
    """A --steps that an --epochs on the command line drops is not the run's: no warning from it."""
    from unime.cli import main

    config = tmp_path / "c.yaml"
    config.write_text("steps: 3\nwarmup: 3\n", encoding="utf-8")
    base = ["train", "reranker", "--model", "m", "--config", str(config), "--print-config"]
    assert main(base) == 0
    assert "--warmup 3 >= the run's 3 optimizer steps" in capsys.readouterr().err
    assert main([*base, "--epochs", "2"]) == 0
    assert "warm-up" not in capsys.readouterr().err


def test_the_warm_up_module_does_not_import_transformers():
    """`--print-config` imports `unime.models.warmup`; transformers takes seconds to import."""
    import subprocess
    import sys

    code = "import sys, unime.models.warmup as w; w.run_warmup_warning(5, 2); assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("argv,warning", [
    (["--stage", "sft", "--trainer-arg", "warmup_steps=50", "--max-steps", "10"],
     "--trainer-arg warmup_steps 50 >= the run's 10 optimizer steps (--max-steps"),
    (["--stage", "grpo", "--trainer-arg", "warmup_steps=3", "--max-steps", "3"],
     "--trainer-arg warmup_steps 3 >= the run's 3 optimizer steps (--max-steps"),
    # a fraction of the run: ceil(0.5 x 1) = 1 step, the whole run
    (["--stage", "grpo", "--trainer-arg", "warmup_steps=0.5", "--max-steps", "1"],
     "--trainer-arg warmup_steps 0.5 (1 steps) >= the run's 1 optimizer steps"),
    (["--stage", "sft", "--trainer-arg", "warmup_steps=3", "--max-steps", "4"], None),
    (["--stage", "sft", "--trainer-arg", "warmup_steps=0.5", "--max-steps", "3"], None),  # 2 steps of 3
    (["--stage", "sft", "--trainer-arg", "warmup_steps=50"], None),  # steps from the epochs: not known
    (["--stage", "sft", "--max-steps", "1"], None),  # no warm-up (the stages' default, 0)
    (["--stage", "sft", "--trainer-arg", "report_to=none", "--max-steps", "1"], None),
])
def test_print_config_of_the_reasoner_shows_the_warm_up_warning_of_the_run(capsys, argv, warning):
    """QA: `train reasoner --stage sft --trainer-arg warmup_steps=50 --max-steps 10 --print-config` showed no
    warning, while its run warns at the start (and `train embedder|reranker|judge --print-config` do)."""
    from unime.cli import main

    assert main(["train", "reasoner", "--model", "m", *argv, "--print-config"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "warm-up" in line]
    if warning is None:
        assert lines == []
    else:
        assert len(lines) == 1 and lines[0].startswith("unime: WARNING: " + warning), lines


def test_the_reasoner_sft_run_warns_at_its_start(tiny_model_dir, tmp_path, caplog):
    """The run's WARNING names the same options as `--print-config`'s."""
    from tests.embed_rl.helpers import TCOT
    from unime.data.items import Item
    from unime.embed_rl.reasoner_sft import ReasonerSFTConfig, train_reasoner_sft
    from unime.reasoning.reasoner import TCoTRow, write_tcot_rows

    write_tcot_rows([TCoTRow("r0", "query", Item(text="a red circle"), TCOT)], tmp_path / "t.jsonl")
    caplog.set_level(logging.WARNING, logger="unime")
    train_reasoner_sft(ReasonerSFTConfig(model=tiny_model_dir("qwen2_vl"), data=str(tmp_path / "t.jsonl"),
                                         out=str(tmp_path / "o"), max_steps=1, lora_r=4, device="cpu",
                                         trainer_arg=["warmup_steps=2"]))
    got = _warnings(caplog)
    # from Python, the fields (QA: it named the flags --trainer-arg / --max-steps)
    assert len(got) == 1 and got[0].startswith("trainer_arg warmup_steps 2 >= the run's 1 optimizer steps "
                                               "(max_steps, "), got
