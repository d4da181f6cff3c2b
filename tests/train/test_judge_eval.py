"""The judge's held-out log (`unime.train.judge_eval.JudgeHeldOutCallback`) across a kill and a resume."""

from __future__ import annotations

import json
from types import SimpleNamespace

from transformers import TrainerState

from unime.models.prompts import NO, YES
from unime.outdir import claim
from unime.train import judge_eval
from unime.train.judge_eval import EVAL_FILE, JudgeHeldOutCallback


def _steps(path):
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_a_resume_drops_the_rows_written_after_its_checkpoint_and_evaluates_them_once(tmp_path, monkeypatch):
    # QA: killed after the step-20 row, resumed from checkpoint-15 → the step-20 row appeared twice
    examples = [SimpleNamespace(answer=a, record=i // 2) for i, a in enumerate([YES, NO, YES, NO])]
    monkeypatch.setattr(judge_eval, "score_pairs", lambda model, collator, ex, batch_size: [0.9, 0.1, 0.6, 0.4])
    out = tmp_path / "jC"
    with claim(out, "train judge"):
        killed = JudgeHeldOutCallback(examples, None, out, base_rate=0.5, every=10)
        state = TrainerState(global_step=0, max_steps=30)
        killed.on_train_begin(None, state, None)
        for state.global_step in (10, 20):
            killed.on_step_end(None, state, None)
        assert _steps(out / EVAL_FILE) == [10, 20]

        resumed = JudgeHeldOutCallback(examples, None, out, base_rate=0.5, every=10)
        state = TrainerState(global_step=15, max_steps=30)  # the last checkpoint
        resumed.on_train_begin(None, state, None)
        assert _steps(out / EVAL_FILE) == [10]
        for state.global_step in range(16, 31):
            resumed.on_step_end(None, state, None)
        resumed.on_train_end(None, state, None)
    assert _steps(out / EVAL_FILE) == [10, 20, 30]
    assert [m["step"] for m in resumed.history] == [10, 20, 30] and resumed.final["step"] == 30
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]


def test_a_fresh_run_starts_a_fresh_log(tmp_path, monkeypatch):
    examples = [SimpleNamespace(answer=a, record=0) for a in (YES, NO)]
    monkeypatch.setattr(judge_eval, "score_pairs", lambda model, collator, ex, batch_size: [0.7, 0.2])
    out = tmp_path / "j"
    with claim(out, "train judge"):
        (out / EVAL_FILE).write_text(json.dumps({"step": 40}) + "\n")
        cb = JudgeHeldOutCallback(examples, None, out, base_rate=0.5, every=5)
        state = TrainerState(global_step=0, max_steps=10)
        cb.on_train_begin(None, state, None)
        assert not (out / EVAL_FILE).exists()
        state.global_step = 5
        cb.on_step_end(None, state, None)
    assert _steps(out / EVAL_FILE) == [5]
