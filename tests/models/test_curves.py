"""Training curves at the run's last step (`unime.models.curves.LogLastStep`, added by
`run_state.train_or_finish`): a step count that is not a multiple of the logging interval still logs its last
steps — the curves end there, the whole-run loss averages every step, the reranker / judge report their first
and last loss and plot their curves — while a run whose steps are a multiple of the interval logs exactly the
rows it did before, and no run's weights change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.train.helpers import base_config, write_world

pytestmark = pytest.mark.slow


def _curves(out: Path) -> list[dict[str, float]]:
    from unime.models.curves import read_curves_csv

    return read_curves_csv(Path(out) / "curves.csv")


def _last_checkpoint_tensors(out: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the run's last checkpoint (the trained weights: adapter or full state)."""
    from safetensors.torch import load_file

    last = max((Path(out) / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    tensors = {}
    for f in sorted(last.glob("*.safetensors")):
        tensors.update({f"{f.name}:{k}": v for k, v in load_file(f).items()})
    assert tensors, last
    return tensors


def _assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _window_means(per_step: list[float], steps: list[int]) -> list[float]:
    """The loss the trainer logs at each of `steps`: the mean of the per-step losses since the previous log."""
    out, prev = [], 0
    for s in steps:
        out.append(sum(per_step[prev:s]) / (s - prev))
        prev = s
    return out


# -- embedder ----------------------------------------------------------------------------------------------------
def test_embedder_logs_its_last_step_and_averages_every_step(tiny_model_dir, mined_world, tmp_path):
    """6 steps logged every 4 (and the first): rows at 1, 4 and 6; train_loss is the mean of the 6 per-step
    losses of an independent run logged at every step; the weights are those of that run."""
    from unime.train.embedder_trainer import train_embedder

    world, records = mined_world
    model = tiny_model_dir("qwen2_vl")
    every = train_embedder(base_config(model, tmp_path / "every", world, records=str(records), steps=6,
                                       logging_steps=1))
    per_step = [r["loss"] for r in _curves(every.out)]
    assert len(per_step) == 6
    sparse = train_embedder(base_config(model, tmp_path / "sparse", world, records=str(records), steps=6,
                                        logging_steps=4))
    rows = _curves(sparse.out)
    assert [int(r["step"]) for r in rows] == [1, 4, 6]
    assert [r["loss"] for r in rows] == pytest.approx(_window_means(per_step, [1, 4, 6]), rel=1e-5)
    metrics = json.loads((sparse.out / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["final_loss_step"] == 6
    assert metrics["train_loss"] == pytest.approx(sum(per_step) / 6, rel=1e-5)
    assert metrics["final_loss"] == pytest.approx((per_step[4] + per_step[5]) / 2, rel=1e-5)
    _assert_same_tensors(_last_checkpoint_tensors(sparse.out), _last_checkpoint_tensors(every.out))


def test_a_multiple_of_the_interval_logs_the_same_rows_as_without_the_last_step_log(tiny_model_dir, mined_world,
                                                                                  tmp_path):
    """8 steps logged every 4: the same curves.csv, byte for byte, and the same weights as the Trainer's own
    logging gives (the run trained without `LogLastStep`) — the demo's runs (multiples of their interval)
    keep their numbers. A guard: it holds with or without the last-step log."""
    from unime.models.curves import LogLastStep
    from unime.train.embedder_trainer import prepare_embedder_training, train_embedder

    world, records = mined_world
    model = tiny_model_dir("qwen2_vl")
    cfg = dict(records=str(records), steps=8, logging_steps=4)
    with_last = train_embedder(base_config(model, tmp_path / "with", world, **cfg))
    plain = prepare_embedder_training(base_config(model, tmp_path / "plain", world, **cfg))
    assert not any(isinstance(c, LogLastStep) for c in plain.trainer.callback_handler.callbacks)
    plain.trainer.train()
    assert [int(r["step"]) for r in _curves(with_last.out)] == [1, 4, 8]
    assert (with_last.out / "curves.csv").read_bytes() == (tmp_path / "plain" / "curves.csv").read_bytes()
    _assert_same_tensors(_last_checkpoint_tensors(with_last.out), _last_checkpoint_tensors(tmp_path / "plain"))


# -- reranker and judge ------------------------------------------------------------------------------------------
def _generative_run(model: str, records: str, out: Path, role: str, *, steps: int, logging_steps: int):
    from unime.train.reranker_trainer import RerankerTrainConfig, train_reranker

    role_options = ({"num_negatives": 2, "train_modules": ("lm_head",)} if role == "reranker"
                    else {"losses": ("pair",), "holdout": 0.0})
    cfg = RerankerTrainConfig(model=model, records=[records], out=str(out), role=role, learning_rate=1e-2,
                              max_steps=steps, batch_size=2, logging_steps=logging_steps, seed=0, device="cpu",
                              **role_options)
    return train_reranker(cfg)


@pytest.mark.parametrize("role, logging_steps, logged", [("reranker", 2, [1, 2, 3]), ("judge", 10, [1, 3])])
def test_reranker_and_judge_log_their_last_step(tiny_model_dir, tmp_path, role, logging_steps, logged):
    """3 steps: logged every 2 (rows at 1, 2 and 3: the first step is logged too), or every 10 (rows at 1 and 3;
    before the fix: no row at all — first and last loss null, no curves.png). The logged losses are the windows'
    means of a run logged at every step."""
    records = write_world(tmp_path, scores=role == "reranker")
    model = tiny_model_dir("qwen2_vl")
    every = _generative_run(model, records, tmp_path / "every", role, steps=3, logging_steps=1)
    per_step = [h["loss"] for h in every.log_history]
    assert len(per_step) == 3
    result = _generative_run(model, records, tmp_path / "sparse", role, steps=3, logging_steps=logging_steps)
    out = tmp_path / "sparse"
    expected = _window_means(per_step, logged)
    rows = _curves(out)
    assert [int(r["step"]) for r in rows] == logged
    assert [r["loss"] for r in rows] == pytest.approx(expected, rel=1e-5)
    meta = json.loads((out / "unime_reranker.json").read_text())
    assert meta["steps"] == 3
    assert (meta["first_loss"], meta["last_loss"]) == pytest.approx((expected[0], expected[-1]), rel=1e-5)
    assert (result.first_loss, result.last_loss) == (meta["first_loss"], meta["last_loss"])
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _assert_same_tensors(_last_checkpoint_tensors(out), _last_checkpoint_tensors(tmp_path / "every"))


# -- reasoner SFT ------------------------------------------------------------------------------------------------
def test_reasoner_sft_logs_its_last_step_and_averages_every_step(tiny_model_dir, tmp_path):
    """3 steps logged every 2: rows at 1, 2 and 3 (the first step is logged too; before the fix: one row, at step 2;
    logged every 10: 'loss None -> None')."""
    from tests.embed_rl.helpers import TCOT
    from unime.data.items import Item
    from unime.embed_rl.reasoner_sft import ReasonerSFTConfig, train_reasoner_sft
    from unime.reasoning.reasoner import TCoTRow, write_tcot_rows

    rows = [TCoTRow(f"r{i}", "query", Item(text=f"a {c} circle"), TCOT.replace("red", c))
            for i, c in enumerate(("red", "blue", "green", "yellow"))]
    write_tcot_rows(rows, tmp_path / "tcots.jsonl")

    def run(name: str, logging_steps: int) -> dict:
        return train_reasoner_sft(ReasonerSFTConfig(
            model=tiny_model_dir("qwen2_vl"), data=str(tmp_path / "tcots.jsonl"), out=str(tmp_path / name),
            max_steps=3, batch_size=1, learning_rate=3e-3, lora_r=4, logging_steps=logging_steps, device="cpu",
            save_steps=10_000))

    run("every", 1)
    per_step = [r["loss"] for r in _curves(tmp_path / "every")]
    assert len(per_step) == 3
    summary = run("sparse", 2)
    curves = _curves(tmp_path / "sparse")
    assert [int(r["step"]) for r in curves] == [1, 2, 3]
    expected = _window_means(per_step, [1, 2, 3])
    assert [r["loss"] for r in curves] == pytest.approx(expected, rel=1e-5)
    assert summary["steps"] == 3
    assert (summary["first_loss"], summary["last_loss"]) == pytest.approx((expected[0], expected[-1]), rel=1e-5)
    assert summary["train_loss"] == pytest.approx(sum(per_step) / 3, rel=1e-5)
    _assert_same_tensors(_last_checkpoint_tensors(tmp_path / "sparse"), _last_checkpoint_tensors(tmp_path / "every"))
