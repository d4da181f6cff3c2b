"""bench/gpu_smoke: exits cleanly without a GPU; its checks run (on CPU here) and pass."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the script would run for real")
def test_the_script_exits_0_with_a_message_without_a_gpu():
    env = dict(os.environ, PYTHON=sys.executable)
    out = subprocess.run(["bash", str(BENCH / "gpu_smoke.sh")], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and "no CUDA device" in out.stdout


def test_a_python_without_torch_fails_with_its_error(tmp_path):
    """Before, the ImportError went to /dev/null and the script passed (exit 0, 'no CUDA device ... skipped')."""
    shim = tmp_path / "python3"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')  # -S: no site-packages, so no torch
    shim.chmod(0o755)
    env = dict(os.environ, PYTHON=str(shim))
    out = subprocess.run(["bash", str(BENCH / "gpu_smoke.sh")], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "No module named 'torch'" in out.stderr and "cannot import torch" in out.stderr
    assert "no CUDA device" not in out.stdout


def _script(monkeypatch):
    """bench/gpu_smoke.py as a module (registered while the test runs: its dataclass looks its module up)."""
    spec = importlib.util.spec_from_file_location("gpu_smoke", BENCH / "gpu_smoke.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_smoke", mod)
    spec.loader.exec_module(mod)
    return mod


def _lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.split(" ", 1)[0] in ("PASS", "FAIL", "SKIP")]


def test_the_bf16_judge_comparison_fails_beyond_its_tolerance(capsys, monkeypatch):
    """Before, the bf16 fast path vs per-pair difference was only printed (`ok` was set by fp32 alone). On CPU in
    bf16 (the bf16 paths, slowly) the check passes at the stated tolerance and fails at an impossible one (0: a
    difference is never below 0), and the run exits 1 with a FAIL line."""
    smoke = _script(monkeypatch)
    argv = ["--device", "cpu", "--dtype", "bf16", "--family", "qwen2_vl", "--checks", "judge"]
    assert smoke.main(argv) == 0
    passed = _lines(capsys.readouterr().out)
    assert len(passed) == 1 and passed[0].startswith("PASS qwen2_vl judge fast path:")
    assert "fp32 max |fast - per-pair|" in passed[0] and "bf16 max |fast - per-pair|" in passed[0]
    assert smoke.main(argv + ["--tolerance", "judge_bf16=0"]) == 1
    out = capsys.readouterr().out
    failed = _lines(out)
    assert len(failed) == 1 and failed[0].startswith("FAIL qwen2_vl judge fast path:")
    assert "bf16 max |fast - per-pair|" in failed[0] and "(tolerance 0e+00;" in failed[0]
    assert out.splitlines()[-1].startswith("gpu_smoke: FAIL: some checks failed")


def test_a_failing_command_check_fails_the_run(capsys, monkeypatch):
    """A trainer that exits non-zero is a FAIL line and exit status 1 (here `unime train embedder` refuses the
    injected usage error of a chunk size of 0), not an exception that ends the script."""
    smoke = _script(monkeypatch)
    argv = smoke._embedder_argv
    smoke._embedder_argv = lambda ctx, out, batch_size: argv(ctx, out, batch_size) + ["--chunk-size", "0"]
    assert smoke.main(["--device", "cpu", "--quick", "--family", "qwen2_vl", "--checks", "train_embedder"]) == 1
    lines = _lines(capsys.readouterr().out)
    assert len(lines) == 1 and lines[0].startswith("FAIL qwen2_vl train embedder (LoRA + GradCache): exit status 2")


@pytest.mark.slow  # ~1 min on one thread: the library checks and every trainer, one step each
def test_the_quick_run_passes_on_cpu(capsys, monkeypatch):
    smoke = _script(monkeypatch)
    assert smoke.main(["--device", "cpu", "--quick", "--family", "qwen2_vl"]) == 0  # at one thread (conftest)
    lines = _lines(capsys.readouterr().out)
    expected = ["bf16+sdpa", "judge fast path", "gradcache", "encode throughput", "peak memory",
                "train embedder (LoRA + GradCache)", "train reranker", "reranker listwise pick (generate)",
                "train judge", "train reasoner --stage sft", "reason generate (T-CoT generate)",
                "train reasoner --stage grpo", "torchrun x1 train embedder (gloo)", "torchrun x1 mine (gloo)"]
    assert [line.split(":")[0].split(" ", 2)[2] for line in lines] == expected
    skipped = {"peak memory", "train reasoner --stage grpo", "torchrun x1 train embedder (gloo)",
               "torchrun x1 mine (gloo)"}
    for line, name in zip(lines, expected):
        assert line.startswith("SKIP " if name in skipped else "PASS "), line


@pytest.mark.slow  # ~2 min on 2 busy cores: two torchrun launches of 2 processes
def test_processes_2_runs_train_embedder_and_mine_under_torchrun_on_cpu(capsys, monkeypatch):
    smoke = _script(monkeypatch)
    assert smoke.main(["--device", "cpu", "--quick", "--family", "qwen2_vl", "--processes", "2",
                       "--checks", "torchrun_train_embedder,torchrun_mine"]) == 0
    lines = _lines(capsys.readouterr().out)
    assert len(lines) == 2
    assert lines[0].startswith("PASS qwen2_vl torchrun x2 train embedder (gloo): fp32, 1 of 1 steps logged")
    assert lines[1].startswith("PASS qwen2_vl torchrun x2 mine (gloo): ")
    assert " of 8 records mined, as one process (identical mined.parquet)" in lines[1]
    assert "judge shards written by ranks 0,1" in lines[1]


@pytest.mark.slow  # one `unime mine` of the smoke's 8 records in this process (~30 s on one thread)
def test_the_mine_check_wants_the_records_one_process_keeps_and_says_why_the_others_were_dropped(
        tmp_path, monkeypatch, tiny_model_dir):
    """Before, the torchrun mine check passed on any number of records mined above 0 and said nothing of those left
    out (7 of 8 here: records can be dropped by design, SPEC 1.4, when the δ rule leaves a query no candidate). It
    now compares with one process on the same inputs: the same records pass, each dropped one named with its reason;
    a record the torchrun run loses and one process keeps fails the check."""
    import pyarrow.parquet as pq

    smoke = _script(monkeypatch)
    ctx = smoke.Smoke(family="qwen2_vl", model_dir=tiny_model_dir(), device="cpu", work=tmp_path)
    one, ranks = tmp_path / "one", tmp_path / "ranks"
    assert smoke._run_unime(smoke._mine_argv(ctx, one)) == 0
    shutil.copytree(one, ranks)  # the torchrun run writes what one process writes (tests/mining's torchrun test)
    # read from the run's own files, not through the check: the records left out are those retrieval gave nothing
    ids = [json.loads(line)["id"] for line in (tmp_path / "data" / "records.jsonl").read_text().splitlines()]
    empty = [ids[row["query_index"]] for row in pq.read_table(one / "retrieval.parquet").to_pylist()
             if not row["candidate_ids"]]
    kept = pq.read_table(one / "mined.parquet").column("id").to_pylist()
    assert len(ids) == 8 and sorted(kept + empty) == sorted(ids)
    ok, figures = smoke.compare_mined(ranks, one)
    # here one record is dropped (r2: every pool item at or above its positive); the check must not count on it
    assert ok and figures.startswith(f"{len(kept)} of 8 records mined, as one process (identical mined.parquet)"), \
        figures
    for name in empty:
        assert f"{name}: no candidate retrieved (" in figures

    table = pq.read_table(ranks / "mined.parquet")
    pq.write_table(table.slice(1), ranks / "mined.parquet")  # the torchrun run loses its first record
    ok, figures = smoke.compare_mined(ranks, one)
    assert not ok
    assert figures.startswith(f"{len(kept) - 1} of 8 records mined, one process {len(kept)}; dropped here, kept by "
                              f"one process: {kept[0]}; dropped "), figures
