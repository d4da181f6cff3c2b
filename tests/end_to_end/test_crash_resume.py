"""kill -9 at seeded random moments, then re-run the same command: the outputs equal those of an
uninterrupted run. UNIME_KILL_POINTS kill points per stage (mining, embedder training, reranker
training, eval; default 5, i.e. 20 in the slow tier; each extra point costs at most 3/4 of one
uninterrupted stage run, about 3 minutes of one test worker for the 12 points above 2 per stage), chained
on one output folder: each re-run is killed
again until the last one finishes (a re-run that finishes before its kill moment ends the chain, so the
kills that hit can be fewer: UNIME_KILL_LOG=FILE records them). Plus three kill points after the final
checkpoint (during the embedder's export, between its export and its metrics, during the reranker's
export)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

KILLS = int(os.environ.get("UNIME_KILL_POINTS", "5"))
SRC = str(Path(__file__).resolve().parents[2] / "src")
CLI = "import sys; from unime.cli import main; sys.exit(main(sys.argv[1:]))"


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-c", CLI, "--log-level", "WARNING", *argv], stdout=open(log, "a"),
                            stderr=subprocess.STDOUT, env=env)


def _run(argv: list[str], log: Path) -> float:
    t0 = time.monotonic()
    proc = _start(argv, log)
    assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
    return time.monotonic() - t0


def _kill_and_finish(argv: list[str], wall: float, log: Path, seed: int) -> list[float]:
    """Start `argv` KILLS times, SIGKILL each at a seeded moment within the uninterrupted wall time
    `wall`, then let a last run finish. Returns the kill moments (seconds after start) that hit a
    running process. When every run of a chain finished before its kill moment (the machine became
    faster than during the timed run), the chain's output folder is moved aside and the chain is
    started again with the measured duration of its first, complete run as the wall time."""
    out = Path(argv[argv.index("--out") + 1])
    rng = random.Random(seed)
    chain_start = time.monotonic()
    for attempt in range(3):
        hits: list[float] = []
        first_complete: float | None = None
        for i in range(KILLS):
            at = rng.uniform(0.1, 0.75) * wall  # within the run (a re-run with less left to do is faster)
            t0 = time.monotonic()
            proc = _start(argv, log)
            try:
                proc.wait(timeout=at)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                hits.append(round(at, 2))
            else:  # it finished first (the earlier runs left little to do): still a valid re-run
                assert proc.returncode == 0, log.read_text()[-3000:]
                if i == 0:
                    first_complete = time.monotonic() - t0
        if hits:
            break
        out.rename(out.with_name(f"{out.name}.no-kill-{attempt}"))  # folders of this test only
        wall = first_complete or wall / 2
    killed_seconds = time.monotonic() - chain_start
    final_seconds = _run(argv, log)
    if hits:
        _record_kills(out, hits, {"uninterrupted_s": round(wall, 2), "killed_runs_s": round(killed_seconds, 2),
                                  "final_run_s": round(final_seconds, 2)})
    return hits


def _record_kills(out: Path, hits: list, timings: dict | None = None) -> None:
    """With UNIME_KILL_LOG=FILE, append the kill moments that hit a running process (for the counts a
    release check reports), with the chain's timings (the uninterrupted run, the killed runs together,
    the last run): what one kill point costs."""
    path = os.environ.get("UNIME_KILL_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0],
                                 "kills": hits, **(timings or {})}) + "\n")


def _same_tensors(a: Path, b: Path) -> None:
    x, y = load_file(a), load_file(b)
    assert x.keys() == y.keys()
    for k in x:
        torch.testing.assert_close(y[k], x[k], rtol=0, atol=1e-6)


def test_mining_killed_repeatedly_gives_the_uninterrupted_outputs(tmp_path, tiny_model_dir):
    from tests.mining.helpers import write_dataset

    records = write_dataset(tmp_path / "data")

    def argv(out):
        return ["mine", "--records", str(records), "--embedder", tiny_model_dir("qwen2_vl"), "--judge",
                tiny_model_dir("qwen2_5_vl"), "--out", str(out), "--k", "4", "--count", "3", "--interval", "2",
                "--shard-size", "1", "--device", "cpu", "--chunk-size", "3"]

    wall = _run(argv(tmp_path / "straight"), tmp_path / "log")
    hits = _kill_and_finish(argv(tmp_path / "killed"), wall, tmp_path / "log", seed=1)
    assert hits, "no kill hit a running process"
    for name in ("mined.json", "mined.parquet", "audit.parquet"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name


def test_embedder_training_killed_repeatedly_gives_the_uninterrupted_weights(tmp_path, tiny_model_dir, tiny_world_dir):
    from tests.conftest import mined_world_records
    from unime.data.io import write_records

    world = tiny_world_dir(0)  # the session's seed-0 tiny world, read only
    records = tmp_path / "mined.jsonl"
    write_records(mined_world_records(world)[:8], records)

    def argv(out):
        return ["train", "embedder", "--model", tiny_model_dir("qwen2_vl"), "--records", str(records),
                "--data-root", str(world), "--out", str(out), "--hard-negatives", "2", "--batch-size", "2",
                "--steps", "12", "--save-steps", "2", "--logging-steps", "1", "--lr", "1e-3", "--lora-r", "4",
                "--lora-dropout", "0.1", "--device", "cpu", "--seed", "3"]

    wall = _run(argv(tmp_path / "straight"), tmp_path / "log")
    hits = _kill_and_finish(argv(tmp_path / "killed"), wall, tmp_path / "log", seed=2)
    assert hits, "no kill hit a running process"
    _same_tensors(tmp_path / "straight" / "adapter" / "adapter_model.safetensors",
                  tmp_path / "killed" / "adapter" / "adapter_model.safetensors")
    a = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    b = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert b["steps"] == a["steps"] == 12
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)  # the whole run, across the kills


def test_reranker_training_killed_repeatedly_gives_the_uninterrupted_weights(tmp_path, tiny_model_dir):
    from tests.train.helpers import write_world

    records = write_world(tmp_path / "data")

    def argv(out):
        return ["train", "reranker", "--model", tiny_model_dir("qwen2_vl"), "--records", records, "--out", str(out),
                "--negatives", "2", "--steps", "8", "--save-steps", "1", "--batch-size", "2", "--lr", "1e-2",
                "--logging-steps", "1", "--device", "cpu"]

    wall = _run(argv(tmp_path / "straight"), tmp_path / "log")
    hits = _kill_and_finish(argv(tmp_path / "killed"), wall, tmp_path / "log", seed=3)
    assert hits, "no kill hit a running process"
    _same_tensors(tmp_path / "straight" / "adapter" / "adapter_model.safetensors",
                  tmp_path / "killed" / "adapter" / "adapter_model.safetensors")
    a = json.loads((tmp_path / "straight" / "unime_reranker.json").read_text())
    b = json.loads((tmp_path / "killed" / "unime_reranker.json").read_text())
    assert b["steps"] == a["steps"] == 8 and b["last_loss"] == pytest.approx(a["last_loss"], rel=1e-5)


def test_eval_killed_repeatedly_gives_the_uninterrupted_results(tmp_path, tiny_model_dir):
    from tests.eval.helpers import build_world

    tasks = build_world(tmp_path / "world")

    def argv(out):
        return ["eval", "--model", tiny_model_dir("qwen2_vl"), "--tasks", str(tasks), "--out", str(out),
                "--cache-dir", str(out / "cache"), "--device", "cpu", "--batch-size", "2"]

    wall = _run(argv(tmp_path / "straight"), tmp_path / "log")
    hits = _kill_and_finish(argv(tmp_path / "killed"), wall, tmp_path / "log", seed=4)
    assert hits, "no kill hit a running process"
    a = json.loads((tmp_path / "straight" / "summary.json").read_text())
    b = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert b["tasks"] == a["tasks"]
    def results(path: Path) -> dict:  # everything but the wall-clock timings
        return {k: v for k, v in json.loads(path.read_text()).items() if k != "seconds"}

    for p in sorted((tmp_path / "straight" / "tasks").glob("*.json")):
        assert results(tmp_path / "killed" / "tasks" / p.name) == results(p)


# -- after the final checkpoint: a run killed while exporting -----------------------------------------------
# the command in a subprocess with one function patched to announce itself and wait (for the kill) when
# it is called; PAUSE_AT = "module:function" (+ PAUSE_ARG: only when its first argument ends with that name)
_PAUSED_CLI = """
import importlib, os, sys, time
from unime.cli import main

mod_name, func_name = os.environ["PAUSE_AT"].split(":")
mod = importlib.import_module(mod_name)
original, only = getattr(mod, func_name), os.environ.get("PAUSE_ARG")

def paused(*args, **kwargs):
    if not only or (args and str(args[0]).endswith(only)):
        print("test pause in", func_name, flush=True)
        time.sleep(3600)
    return original(*args, **kwargs)

setattr(mod, func_name, paused)
sys.exit(main(sys.argv[1:]))
"""


def _kill_when_paused(argv: list[str], pause_at: str, pause_arg: str | None = None) -> None:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PAUSE_AT": pause_at, "PAUSE_ARG": pause_arg or ""}
    proc = subprocess.Popen([sys.executable, "-c", _PAUSED_CLI, "--log-level", "WARNING", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if "test pause" in line or not line:
                break
        assert "test pause in" in line, f"never reached {pause_at} (exit {proc.poll()})"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        _record_kills(Path("."), [pause_at + (f"({pause_arg})" if pause_arg else "")])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_embedder_killed_after_its_final_checkpoint_exports_it_without_another_step(tmp_path, tiny_model_dir,
                                                                                   tiny_world_dir):
    from tests.conftest import mined_world_records
    from unime.data.io import write_records

    world = tiny_world_dir(0)  # the session's seed-0 tiny world, read only
    records = tmp_path / "mined.jsonl"
    write_records(mined_world_records(world)[:8], records)

    def argv(out):
        return ["train", "embedder", "--model", tiny_model_dir("qwen2_vl"), "--records", str(records),
                "--data-root", str(world), "--out", str(out), "--hard-negatives", "2", "--batch-size", "2",
                "--steps", "4", "--save-steps", "2", "--logging-steps", "1", "--lr", "1e-3", "--lora-r", "4",
                "--device", "cpu", "--seed", "3"]

    log = tmp_path / "log"
    _run(argv(tmp_path / "straight"), log)
    killed = tmp_path / "killed"
    # kill point 1: the export has begun (checkpoint-4 complete, no adapter/merged yet)
    _kill_when_paused(argv(killed), "unime.models.export:export_final")
    assert (killed / "checkpoints" / "checkpoint-4" / "trainer_state.json").is_file()
    assert not (killed / "adapter").exists() and not (killed / "metrics.json").exists()
    # kill point 2: the re-run exported the adapter and merged model, and dies before metrics.json
    _kill_when_paused(argv(killed), "unime.models.export:write_json_atomic", "metrics.json")
    assert (killed / "adapter" / "adapter_model.safetensors").is_file() and not (killed / "metrics.json").exists()
    _run(argv(killed), log)
    _same_tensors(tmp_path / "straight" / "adapter" / "adapter_model.safetensors",
                  killed / "adapter" / "adapter_model.safetensors")
    a = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert b["steps"] == a["steps"] == 4  # no step 5
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6)


def test_reranker_killed_during_its_export_exports_the_final_checkpoint(tmp_path, tiny_model_dir):
    from tests.train.helpers import write_world

    records = write_world(tmp_path / "data")

    def argv(out):
        return ["train", "reranker", "--model", tiny_model_dir("qwen2_vl"), "--records", records, "--out", str(out),
                "--negatives", "2", "--steps", "3", "--save-steps", "1", "--batch-size", "2", "--lr", "1e-2",
                "--logging-steps", "1", "--device", "cpu"]

    log = tmp_path / "log"
    _run(argv(tmp_path / "straight"), log)
    killed = tmp_path / "killed"
    # kill point 3: the reranker's export has begun (its last checkpoint complete)
    _kill_when_paused(argv(killed), "unime.train.reranker_trainer:export_reranker")
    assert not (killed / "unime_reranker.json").exists()
    _run(argv(killed), log)
    _same_tensors(tmp_path / "straight" / "adapter" / "adapter_model.safetensors",
                  killed / "adapter" / "adapter_model.safetensors")
    a = json.loads((tmp_path / "straight" / "unime_reranker.json").read_text())
    b = json.loads((killed / "unime_reranker.json").read_text())
    assert b["steps"] == a["steps"] == 3 and b["last_loss"] == pytest.approx(a["last_loss"], rel=1e-6)
