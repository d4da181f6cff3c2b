"""bench/gpu_smoke: exits cleanly without a GPU; its checks run (on CPU here) and pass."""

from __future__ import annotations

import importlib.util
import os
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


@pytest.mark.slow
def test_the_checks_pass_on_cpu(capsys):
    spec = importlib.util.spec_from_file_location("gpu_smoke", BENCH / "gpu_smoke.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--device", "cpu", "--family", "qwen2_vl"]) == 0  # at one thread (conftest)
    out = capsys.readouterr().out
    checks = [line for line in out.splitlines() if line.startswith("CHECK ")]
    assert len(checks) == 5 and all(line.endswith("-> ok") for line in checks)
