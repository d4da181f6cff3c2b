"""Two pretrainings of the same recipe into the per-machine cache at once (QA: a demo started twice, two jobs on a
shared home): the second waits for the first, then reuses its model; a killed first run does not block it. Real
processes (`unime models pretrain --preset quick`), each with the test's private UNIME_CACHE_DIR."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unime.demo import pretrain as pt
from unime.demo.pretrain import PretrainRecipe

QUICK = ["models", "pretrain", "--preset", "quick", "--device", "cpu"]
KEY = PretrainRecipe.preset("quick").key()
ENTRY = f"qwen2_vl-{KEY}"  # the cache folder of the quick recipe


# `unime ARGS...` once the file GO exists, its heavy imports done before: a run started on GO reaches the recipe's
# lock within a second, while the other one (a quick recipe trains in ~10 s) is still training; argv: GO ARGS...
_ON_GO = """
import os, sys, time
import unime.cli, unime.demo.pretrain, unime.models.tiny, unime.train.embedder_trainer
from unime.cli import main
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
sys.exit(main(sys.argv[2:]))
"""


def _start(cache: Path, log: Path) -> tuple[subprocess.Popen, Path]:
    """`unime models pretrain --preset quick` in its own process group, its output (unbuffered) in `log`, started
    by creating the returned file."""
    src = str(Path(pt.__file__).parents[2])  # this checkout's unime
    env = {**os.environ, "UNIME_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    go = log.with_suffix(".go")
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-c", _ON_GO, str(go), *QUICK], stdout=fh,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, go


def _until(check, what: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until `check()`; fails when `proc` ends first, or after `timeout` seconds."""
    t0 = time.monotonic()
    while not check():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL to the run's process group (a run that ended already is left alone)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _finish(proc: subprocess.Popen, log: Path) -> str:
    try:
        proc.wait(timeout=600)
    finally:
        _kill(proc)
    out = log.read_text()
    assert proc.returncode == 0, out
    return out


def _only_the_model(root: Path) -> None:
    """The cache holds the quick recipe's finished folder and nothing else: no work folder, no lock file."""
    assert sorted(p.name for p in root.iterdir()) == [ENTRY]
    assert sorted(p.name for p in (root / ENTRY).iterdir()) == [pt.MODEL_DIR, pt.MANIFEST]
    assert json.loads((root / ENTRY / pt.MANIFEST).read_text(encoding="utf-8"))["key"] == KEY
    assert (root / ENTRY / pt.MODEL_DIR / "model.safetensors").is_file()


def _building(root: Path) -> bool:
    """The first run has stamped its work folder (and holds the recipe's lock)."""
    return (root / f".{ENTRY}.work" / pt.WORK_KEY).is_file()


def _second_while_first_builds(tmp_path: Path) -> tuple[subprocess.Popen, subprocess.Popen]:
    """Two runs into the cache `tmp_path/cache`, logging to first.log and second.log: the second started once the
    first has stamped its work folder (while it generates its corpus and trains)."""
    cache = tmp_path / "cache"
    (first, go1), (second, go2) = _start(cache, tmp_path / "first.log"), _start(cache, tmp_path / "second.log")
    try:
        go1.touch()
        _until(lambda: _building(cache / "pretrained"), "the first run's work folder", first)
        go2.touch()
    except BaseException:
        _kill(first)
        _kill(second)
        raise
    return first, second


@pytest.mark.slow
def test_the_second_run_of_the_same_recipe_waits_for_the_first_and_reuses_its_model(tmp_path):
    """Before, the second run found the first one's work folder and 'continued' it while the first was still
    writing there: both trained in the same folder (or one failed on the other's half-written files)."""
    root = tmp_path / "cache" / "pretrained"
    first, second = _second_while_first_builds(tmp_path)
    out1, out2 = _finish(first, tmp_path / "first.log"), _finish(second, tmp_path / "second.log")
    model = str(root / ENTRY / pt.MODEL_DIR)
    assert out1.strip().splitlines()[-1] == model and out2.strip().splitlines()[-1] == model
    assert "[pretrain] base done" in out1 and "contrastive pretraining" in out1
    assert "contrastive pretraining" not in out2 and "generating the corpus" not in out2  # it trained nothing
    waits = [line for line in out2.splitlines() if "waiting for" in line]
    assert waits == [f"[pretrain] waiting for pid {first.pid} on {socket.gethostname()}: it is pretraining the "
                     f"base of the same recipe in {root / f'.{ENTRY}.work'}; its model will be reused"]
    assert f"[pretrain] reusing {root / ENTRY} (base, recipe key {KEY})" in out2
    assert "waiting for" not in out1
    _only_the_model(root)


@pytest.mark.slow
def test_a_killed_first_run_does_not_block_the_second(tmp_path):
    """The second run waits while the first is alive; killed (SIGKILL), the first one's lock goes with it: the
    second continues its work folder and publishes the model. A lock file a killed run left (its pid dead, its lock
    released by the OS) does not make a later run wait either; each run removes its lock file."""
    cache = tmp_path / "cache"
    root = cache / "pretrained"
    first, second = _second_while_first_builds(tmp_path)
    try:
        _until(lambda: "waiting for" in (tmp_path / "second.log").read_text(), "the second run to wait", second)
        assert first.poll() is None and second.poll() is None
    except BaseException:
        _kill(second)
        raise
    finally:
        _kill(first)  # SIGKILL: its lock goes with it
    out2 = _finish(second, tmp_path / "second.log")
    assert out2.count("waiting for") == 1
    assert "continuing the interrupted base pretraining" in out2 and "[pretrain] base done" in out2
    _only_the_model(root)

    # the state a run killed while it held the lock leaves: its lock file, naming a pid that is gone
    lock = root / f".{ENTRY}.unime-lock"
    lock.write_text(f"{first.pid}\n{socket.gethostname()}\n")
    third, go3 = _start(cache, tmp_path / "third.log")
    go3.touch()
    out3 = _finish(third, tmp_path / "third.log")
    assert "waiting for" not in out3 and f"[pretrain] reusing {root / ENTRY}" in out3
    _only_the_model(root)


def test_an_explicit_out_in_use_is_refused_at_once_as_minings_is(tmp_path, capsys):
    """--out is the command's claimed folder (`unime.outdir`): a second run on it is refused at once with the
    holder's pid, the wording of `unime mine` on a locked --out (tests/cli/test_cli_contract.py); nothing is
    written beside it (no work folder, no lock file of the recipe)."""
    from unime.cli import main

    out = tmp_path / "base"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(pt.__file__).parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from unime.outdir import claim; "
                               "claim(sys.argv[1], 'models pretrain'); print('held', flush=True); time.sleep(600)",
                               str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        t0 = time.monotonic()
        assert main([*QUICK, "--out", str(out)]) == 2
        assert time.monotonic() - t0 < 30
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"unime: error: output folder {out} is in use by another unime run (pid {holder.pid}); wait for it to "
            "finish or choose another --out")
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]
