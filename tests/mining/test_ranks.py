"""`unime.mining.ranks`: a process's place under torchrun, from its environment."""

from __future__ import annotations

import multiprocessing
import socket

import pytest

from unime.errors import DataError, UsageError
from unime.mining.ranks import Ranks


def test_one_process_without_torchrun(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    r = Ranks.from_env()
    assert (r.rank, r.world, r.primary) == (0, 1, True)
    assert r.mine([3, 4, 7]) == [3, 4, 7]
    assert r.device("cuda") == "cuda"
    assert r.share({"a": 1}) == {"a": 1}
    r.check_backend("ray")  # one process: every backend
    assert r.start() is False  # no process group needed
    assert r.primary_step(lambda: 7) == 7 and r.every_step(lambda: 8) == 8
    with pytest.raises(DataError, match="bad"):  # one process: its own error, nothing shared
        r.primary_step(lambda: (_ for _ in ()).throw(DataError("bad")))


def test_the_environment_of_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "6")
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(UsageError, match="RANK 6 / WORLD_SIZE 4"):
        Ranks.from_env()
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    r = Ranks.from_env()
    assert (r.rank, r.world, r.local_rank, r.primary) == (5, 8, 2, False)
    assert r.mine(list(range(20))) == [5, 13]
    assert r.device("cuda") == "cuda:2"
    assert r.device("cpu") == "cpu"
    r.check_backend("local")
    r.check_backend("oracle")
    for backend in ("ray", "vllm"):
        with pytest.raises(UsageError, match=f"--backend {backend} spreads the judge's work itself"):
            r.check_backend(backend)


def test_each_process_of_several_runs_on_its_own_gpu(monkeypatch):
    """Under torchrun: no --device (cuda when present) and `cuda` go on the process's GPU; `cuda:N` (which would put
    every process on GPU N) is refused in one line; one process keeps what it was given."""
    import torch

    r = Ranks(rank=3, world=8, local_rank=3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert [r.device(d) for d in (None, "cuda", "cpu")] == ["cuda:3", "cuda:3", "cpu"]
    for explicit in ("cuda:0", "cuda:3"):
        with pytest.raises(UsageError) as e:
            r.device(explicit)
        assert str(e.value) == (f"mine: --device {explicit}: under torchrun (8 processes) each process uses its "
                                "own GPU (cuda:LOCAL_RANK); pass --device cuda and choose the GPUs with "
                                "CUDA_VISIBLE_DEVICES")
    assert [Ranks().device(d) for d in (None, "cuda", "cuda:1")] == [None, "cuda", "cuda:1"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert r.device(None) is None  # no CUDA: the CPU, as for one process


def test_mine_under_torchrun_refuses_a_gpu_index_before_any_work(monkeypatch, tmp_path):
    from unime.mining.config import MineConfig
    from unime.mining.pipeline import run_mining

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(Ranks, "start", lambda self: pytest.fail("joined the process group"))
    config = MineConfig(records=str(tmp_path / "r.jsonl"), embedder="e", judge="j", out=str(tmp_path / "out"),
                        device="cuda:0")
    with pytest.raises(UsageError, match="--device cuda:0: under torchrun"):
        run_mining(config)
    assert not (tmp_path / "out").exists()


def _fail(message):
    raise DataError(message)


def _group_member(rank: int, port: int, results) -> None:
    import os

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    ranks = Ranks.from_env()
    out = []
    try:
        assert ranks.start() is True
        out.append(ranks.primary_step(lambda: "rank 0's value"))  # None on rank 1
        out.append(ranks.every_step(lambda: rank * 10))
        for step in (lambda: ranks.primary_step(lambda: _fail("records.jsonl: record file not found")),
                     lambda: ranks.every_step(lambda: _fail("judge on rank 1: out of memory") if rank else None)):
            try:
                step()
                out.append("no error")
            except Exception as e:
                out.append(f"{type(e).__name__}: {e}")
    finally:
        ranks.stop()
    results.put((rank, out))


def _run_pair(member) -> dict:
    """`member(rank, port, results)` in two spawned processes (ranks 0 and 1 of a gloo group on a free loopback
    port), each putting (rank, value) on `results`: {rank: value}, once both ended cleanly."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=member, args=(rank, port, results)) for rank in (0, 1)]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return got


def test_a_failed_step_stops_every_process_with_its_error(tmp_path):
    """Two real gloo processes: a step's failure on one rank is raised on every rank (the others as `PeerFailed`
    naming the rank and its error), and the group goes on working after it (no process waits on a dead peer)."""
    got = _run_pair(_group_member)
    assert got[0] == ["rank 0's value", 0, "DataError: records.jsonl: record file not found",
                      "PeerFailed: process 1 of 2 failed: DataError: judge on rank 1: out of memory"]
    assert got[1] == [None, 10, "PeerFailed: process 0 of 2 failed: DataError: records.jsonl: record file not found",
                      "DataError: judge on rank 1: out of memory"]


def _leaving_member(rank: int, port: int, results) -> None:
    import os
    import time

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    ranks = Ranks.from_env()
    ranks.start()
    ranks.every_step(lambda: None)  # the last shared step
    if rank == 0:
        time.sleep(1.0)  # rank 0's own work after it (mining: the audit and the report)
    reached = time.time()
    ranks.stop()
    results.put((rank, (reached, time.time())))


def test_a_finished_run_leaves_the_group_together(tmp_path):
    """`stop()` after a run without an error: a process done early waits for the others before it tears its
    connections down (one that left early sometimes died at exit in gloo's threads)."""
    got = _run_pair(_leaving_member)
    assert got[1][0] < got[0][0] - 0.5  # rank 1 reached stop() well before rank 0 ...
    assert got[1][1] >= got[0][0]  # ... and left only once rank 0 had reached it too


def _exit_of(script: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


# a teardown that aborts, as a C++ thread of a finished torchrun process sometimes did (exit handlers run last first,
# so a handler registered before stands for what runs after them)
_ABORTING_TEARDOWN = "import atexit, os\natexit.register(os.abort)\n"


def test_a_process_that_leaves_without_teardown_ends_with_status_0_and_loses_no_output():
    ended = _exit_of(_ABORTING_TEARDOWN + "from unime.mining.ranks import leave_without_teardown\n"
                     "import sys\nprint('mined', end='')\nsys.stderr.write('done')\nleave_without_teardown()\n"
                     "print('never')")
    assert (ended.returncode, ended.stdout, ended.stderr) == (0, "mined", "done")
    torn_down = _exit_of(_ABORTING_TEARDOWN + "print('mined', end='')")  # the control: the abort is real
    assert torn_down.returncode != 0


@pytest.mark.slow  # two torchrun processes load a tiny embedder and judge (~1 min on 2 busy cores)
def test_the_processes_of_torchrun_end_when_torchrun_is_killed(tiny_model_dir, tiny_world_dir, tmp_path):
    """kill -9 of torchrun (an OOM kill, a scheduler) while `unime mine` runs under it: its processes end within
    seconds (`unime.parent_death`) instead of mining on as orphans."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import descendants, kill_all, survivors

    world, out = tiny_world_dir(0), tmp_path / "mined"
    log = tmp_path / "torchrun.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # DEBUG: the second process logs its lines too, so the log tells when both run the command
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "unime",
           "--log-level", "DEBUG", "mine", "--records", str(world / "train" / "records.jsonl"),
           "--embedder", tiny_model_dir("qwen2_vl"), "--judge", tiny_model_dir("qwen2_5_vl"), "--out", str(out),
           "--data-root", str(world), "--k", "8", "--count", "2", "--device", "cpu", "--threads", "1"]
    with open(log, "w") as sink:
        torchrun = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT)
    workers: list[int] = []
    try:
        end = time.monotonic() + 400
        while log.read_text().count("unime.mining.inputs: image content digest") < 2 and torchrun.poll() is None:
            assert time.monotonic() < end, log.read_text()[-3000:]
            time.sleep(0.2)
        workers = descendants(torchrun.pid)
        assert torchrun.poll() is None and len(workers) >= 2, log.read_text()[-3000:]  # both mining
        os.kill(torchrun.pid, signal.SIGKILL)
        torchrun.wait(timeout=30)
        assert survivors(workers, within=10) == []
        assert not (out / "mined.json").exists()  # they stopped mining: the run was not finished
    finally:
        kill_all(workers + [torchrun.pid])
