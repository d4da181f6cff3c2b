"""The demo's side-by-side commands (`unime.demo.parallel`): what worker processes write equals what the same
stage calls write one after the other in this process, and a failing call is raised with its message; the same
for a command run as a torchrun group (`run_ranks`: mining's judge shards over the processes)."""

from __future__ import annotations

import contextlib
import signal

import pytest
from safetensors.torch import load_file

from unime.demo.parallel import auto_jobs, root_failure, run_parallel, run_ranks, threads_per_job, torchrun_line
from unime.demo.stage_calls import run_stage_command
from unime.demo.stage_logs import StageLogging


def test_jobs_and_threads_share_the_cores():
    assert auto_jobs("cpu", runs=4, cores=2) == 2
    assert auto_jobs("cpu", runs=1, cores=2) == 1       # one seed: nothing to run side by side
    assert auto_jobs("cpu", runs=4, cores=16) == 4      # at most one job per run
    assert auto_jobs("cuda", runs=4, cores=16) == 1     # one device: one command at a time
    assert threads_per_job(2, cores=2) == 1
    assert threads_per_job(4, cores=16) == 4
    assert threads_per_job(3, cores=2) == 1


def _train(model, world, out, seed):
    return ("train embedder", {"--model": model, "--records": world / "train" / "records.jsonl",
                               "--data-root": world, "--out": out, "--loss": "infonce", "--in-batch": True,
                               "--hard-negatives": 0, "--full": True, "--batch-size": 4, "--steps": 3,
                               "--lr": 0.001, "--warmup": 0.0, "--seed": seed, "--save-steps": 2,
                               "--device": "cpu"})


def test_two_training_runs_in_workers_equal_the_same_runs_in_process(tiny_model_dir, tiny_world_dir, tmp_path):
    model, world = tiny_model_dir("qwen2_vl"), tiny_world_dir(0)
    calls = {seed: _train(model, world, tmp_path / "workers" / f"s{seed}", seed) for seed in (0, 1)}
    run_parallel(list(calls.values()), jobs=2, threads=1)
    for seed in (0, 1):
        command, options = _train(model, world, tmp_path / "here" / f"s{seed}", seed)
        run_stage_command(command, options)  # in this process, one torch thread (conftest)
        apart = load_file(str(tmp_path / "workers" / f"s{seed}" / "merged" / "model.safetensors"))
        here = load_file(str(tmp_path / "here" / f"s{seed}" / "merged" / "model.safetensors"))
        assert apart.keys() == here.keys()
        assert all(apart[k].equal(here[k]) for k in here), f"seed {seed}: weights differ"
    s0 = load_file(str(tmp_path / "here" / "s0" / "merged" / "model.safetensors"))
    s1 = load_file(str(tmp_path / "here" / "s1" / "merged" / "model.safetensors"))
    assert not all(s0[k].equal(s1[k]) for k in s0)  # the two seeds did train differently


def test_a_failing_call_is_raised_with_its_message(tiny_model_dir, tiny_world_dir, tmp_path):
    from unime.errors import UnimeError

    model, world = tiny_model_dir("qwen2_vl"), tiny_world_dir(0)
    good = _train(model, world, tmp_path / "good", 0)
    bad_command, bad = _train(model, world, tmp_path / "bad", 1)
    bad = {**bad, "--records": tmp_path / "missing.jsonl"}
    with pytest.raises(UnimeError, match="missing.jsonl"):
        run_parallel([good, (bad_command, bad)], jobs=2, threads=1)
    assert (tmp_path / "good" / "merged").is_dir()  # the call already running finished its work


def _mine(world, embedder, judge, out):
    return {"--records": world / "train" / "records.jsonl", "--embedder": embedder, "--judge": judge, "--out": out,
            "--data-root": world, "--k": 4, "--count": 2, "--device": "cpu"}


@pytest.mark.slow  # two mining processes and one in-process run (~1 min)
def test_mining_as_a_torchrun_group_writes_what_one_process_writes(tiny_model_dir, tiny_world_dir, tmp_path):
    import pyarrow.parquet as pq

    world, embedder, judge = tiny_world_dir(0), tiny_model_dir("qwen2_vl"), tiny_model_dir("qwen2_5_vl")
    assert torchrun_line(2, "unime mine --k 4") == "torchrun --standalone --nproc-per-node 2 -m unime mine --k 4"
    log = tmp_path / "logs" / "mine.log"  # the demo's stage log: every process appends its records to it
    with _handlers_kept():
        run_ranks("mine", _mine(world, embedder, judge, tmp_path / "ranks"), processes=2, threads=1,
                  logs=StageLogging(log))
    info = [line for line in log.read_text().splitlines() if " INFO unime.mining." in line]
    assert len({line.split("[process ")[1].split("]")[0] for line in info}) == 2, info  # both ranks' lines
    run_stage_command("mine", _mine(world, embedder, judge, tmp_path / "here"))  # one torch thread (conftest)
    shards = sorted((tmp_path / "ranks" / "judge").glob("shard-*.parquet"))
    assert len(shards) >= 2
    assert {pq.read_schema(p).metadata[b"unime.rank"] for p in shards} == {b"0", b"1"}
    for name in ("mined.json", "mined.parquet", "retrieval.parquet"):
        assert (tmp_path / "ranks" / name).read_bytes() == (tmp_path / "here" / name).read_bytes(), name


@pytest.mark.slow
def test_a_failing_torchrun_group_is_raised_with_the_message(tiny_model_dir, tiny_world_dir, tmp_path):
    from unime.errors import UnimeError

    world = tiny_world_dir(0)
    options = {**_mine(world, tiny_model_dir("qwen2_vl"), tiny_model_dir("qwen2_5_vl"), tmp_path / "m"),
               "--records": tmp_path / "missing.jsonl"}
    # the cause is rank 0's (it reads the records), relayed to rank 1, whichever failure torchrun's launcher records
    with pytest.raises(UnimeError, match=r"`unime mine` failed in process 0 of 2: DataError: .*missing.jsonl"):
        with _handlers_kept():
            run_ranks("mine", options, processes=2, threads=1)


def _own_handler(signum, frame):  # a handler the caller of run_ranks set, which torch's launcher replaces
    raise AssertionError(f"signal {signum}")


@contextlib.contextmanager
def _handlers_kept():
    """Set `_own_handler` for the signals torch's launcher handles; after the block, raising or not, each is still
    set (torch's own, raising its SignalException, stayed set: a SIGTERM of the demo after its mining stage raised
    in the demo, whose except clause then waited for its per-seed workers). The handlers found are set back."""
    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
    before = {s: signal.signal(s, _own_handler) for s in signals}
    try:
        yield
    finally:
        after = {s: signal.getsignal(s) for s in signals}
        for s, handler in before.items():
            signal.signal(s, handler)
        assert after == {s: _own_handler for s in signals}, after


def test_the_failure_reported_is_the_cause_not_a_peer_that_lost_it():
    lost = {"message": "RuntimeError: [gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:396"}
    cause = {"message": "DataError: records.jsonl: record file not found"}
    # the process that lost its peer is listed first and in the same second (torchrun's timestamps are seconds)
    assert root_failure({1: lost, 0: cause}, {1: 100, 0: 100}) == (0, cause["message"])
    assert root_failure({0: lost, 1: cause}, {0: 99, 1: 100}) == (1, cause["message"])  # even when it came first
    assert root_failure({0: "boom", 1: "bang"}, {0: 101, 1: 100}) == (1, "bang")  # else the earliest
    assert root_failure({0: "boom", 1: "bang"}, {0: 100, 1: 100}) == (0, "boom")  # then the lowest rank
    relayed = {"message": "PeerFailed: process 0 of 2 failed: " + cause["message"]}
    assert root_failure({1: relayed}, {1: 100}) == (0, cause["message"])  # rank 0's own failure not recorded
    assert root_failure({1: relayed, 0: cause}, {1: 99, 0: 100}) == (0, cause["message"])
    assert root_failure({0: lost, 1: relayed}, {0: 99, 1: 100}) == (0, cause["message"])  # relayed before lost


def test_a_torchrun_worker_whose_command_finished_ends_without_the_teardown():
    """The demo's torchrun workers end as `unime mine`'s processes do under torchrun: once the command finished (and
    the launcher read the return), a teardown that would abort does not run; a failed command does not skip it."""
    import subprocess
    import sys

    script = ("import atexit, os\natexit.register(os.abort)\n"  # stands for a C++ thread aborting at teardown
              "import unime.demo.parallel as parallel\n"
              "def run_one(command, options):\n"
              "    if options.get('fail'):\n        raise RuntimeError('failed')\n"
              "    print('ran', command, end='')\n"
              "parallel._run_one = run_one\n"
              "try:\n    parallel._run_rank('mine', {OPTIONS}, 1)\nexcept RuntimeError:\n    pass\n")

    def run(options: str):
        return subprocess.run([sys.executable, "-c", script.replace("{OPTIONS}", options)], capture_output=True,
                              text=True, timeout=120)

    finished, failed = run("{}"), run("{'fail': True}")
    assert (finished.returncode, finished.stdout) == (0, "ran mine")
    assert failed.returncode != 0


def test_workers_end_when_the_demo_is_killed_while_they_start(tmp_path):
    """kill -9 of the demo while its workers were still starting (before they could set up their death signal):
    they end as soon as they are set up, instead of waiting for calls as orphans."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import descendants, kill_all, survivors

    options = {"--records": str(tmp_path / "missing.jsonl")}
    demo = subprocess.Popen([sys.executable, "-c", "from unime.demo.parallel import run_parallel\n"
                             f"run_parallel([('train embedder', {options!r})] * 2, jobs=2, threads=1)\n"])
    started: list[int] = []
    try:
        end = time.monotonic() + 120
        while not any("spawn_main" in _command(p) for p in started) and time.monotonic() < end:
            started = descendants(demo.pid)
            time.sleep(0.01)
        assert any("spawn_main" in _command(p) for p in started), "no worker started"
        os.kill(demo.pid, signal.SIGKILL)
        demo.wait(timeout=30)
        assert survivors(started, within=30) == [], [_command(p) for p in started]
    finally:
        kill_all(started + [demo.pid])


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read().replace("\0", " ")
    except OSError:
        return ""



_INTERRUPTED_DEMO = """
import signal, sys
from unime.demo.parallel import run_parallel

class Stop(Exception):
    pass

def stop(signum, frame):  # as torch's launcher's handler raises its SignalException
    raise Stop(signum)

def read(command, options):  # a long call: it reads a named pipe the test holds open and never writes
    with open(options["--records"]) as f:
        f.read()

if __name__ == "__main__":
    signal.signal(signal.SIGTERM, stop)
    try:
        run_parallel([("train embedder", {"--records": sys.argv[1]})], jobs=2, threads=1, run=read)
    except Stop:
        sys.exit(3)
"""


def test_a_signal_handlers_exception_ends_the_running_workers_at_once(tmp_path):
    """A SIGTERM whose handler raises in the demo (torch's launcher's handler raised its SignalException there) ends
    the workers at once instead of waiting for their calls (whole training runs): the demo ends within seconds and
    its worker with it."""
    import errno
    import os
    import subprocess
    import sys
    import time

    from tests.helpers import descendants, kill_all, survivors

    pipe = tmp_path / "records.jsonl"
    os.mkfifo(pipe)
    (tmp_path / "demo.py").write_text(_INTERRUPTED_DEMO)
    with open(tmp_path / "demo.err", "w") as err:
        demo = subprocess.Popen([sys.executable, str(tmp_path / "demo.py"), str(pipe)], stderr=err)
    writer, workers = None, []
    try:
        end = time.monotonic() + 600  # the worker imports torch (`_init_worker`) before the call
        while writer is None:
            try:
                writer = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)  # once the call has the pipe open to read
            except OSError as e:
                assert e.errno == errno.ENXIO, e
                assert demo.poll() is None, (tmp_path / "demo.err").read_text()
                assert time.monotonic() < end, "the call never opened the pipe"
                time.sleep(0.05)
        workers = [p for p in descendants(demo.pid) if "spawn_main" in _command(p)]
        assert len(workers) == 1, workers
        os.kill(demo.pid, signal.SIGTERM)
        try:
            demo.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("the demo still waits for its worker 30 s after the SIGTERM")
        assert demo.returncode == 3, (tmp_path / "demo.err").read_text()  # the handler's exception, raised
        assert survivors(workers, within=10) == [], [_command(p) for p in workers]
    finally:
        kill_all(workers + descendants(demo.pid) + [demo.pid])
        if writer is not None:
            os.close(writer)
