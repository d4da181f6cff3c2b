"""Independent stage commands of the demo (one per seed) run side by side in worker processes; a command that
spreads its own work over processes (`unime mine`'s judge shards) runs as a torchrun group (`run_ranks`).

A tiny model's step is too small to keep two CPU cores busy from one process (measured on 2 cores: two
1-thread training runs side by side finish in ~0.7x the time of the same two runs one after the other at 2
threads), so the demo runs `jobs` commands at once, each with `threads` torch threads. Each command is the
same stage call `unime.demo.stage_calls.run_stage_command` makes in-process; the outputs are what the
command writes when run alone (its own output folder, written atomically and resumable), so an interrupted
stage is redone the same way as a sequential one. Workers are spawned (no forked torch state) and end with the
demo process, also when it is killed with SIGKILL (`unime.parent_death`).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import re
import signal
import time
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Callable

from unime.demo.stage_logs import StageLogging
from unime.errors import UnimeError
from unime.parent_death import end_with_parent
from unime.process_group import PEER_LOST


def auto_jobs(device: str, runs: int, cores: int | None = None) -> int:
    """Jobs for `--jobs 0`: on the CPU as many as there are cores (at most one per run), else one."""
    cores = cores or os.cpu_count() or 1
    if not str(device).startswith("cpu"):
        return 1
    return max(1, min(cores, runs))


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(jobs, 1))


WORKERS_GRACE = 5.0  # seconds an interrupted demo's workers have to end on SIGTERM before SIGKILL


def run_parallel(calls: list[tuple[str, dict[str, Any]]], *, jobs: int, threads: int,
                 logs: StageLogging | None = None,
                 run: Callable[[str, dict[str, Any]], None] | None = None) -> None:
    """Run every (command, options) of `calls`, `jobs` at a time: a worker makes the command's stage call, or calls
    `run(command, options)` (a module-level function) when given. The first failure (in call order) is raised
    once the calls already running have finished, and calls not yet started are not run. An interruption of this
    process instead (Ctrl-C, SystemExit, a signal handler's exception such as torch's `SignalException`) ends the
    running workers at once (SIGTERM, then SIGKILL after `WORKERS_GRACE` seconds) and is raised: a stage resumes from
    what its commands finished. `logs`: where the workers' log records go (the stage's file and the console,
    `unime.demo.stage_logs`)."""
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=max(1, min(jobs, len(calls))), mp_context=ctx,
                               initializer=_init_worker, initargs=(threads, logs, None, os.getpid()))
    futures: list[Future] = []
    try:
        futures = [pool.submit(run or _run_one, command, options) for command, options in calls]
        for future in futures:
            future.result()
    except BaseException as e:
        failed = isinstance(e, Exception) and any(f.done() and not f.cancelled() and f.exception() is e
                                                  for f in futures)
        if not failed:
            _end_workers(pool)  # not a call's failure: an interruption of this process
            raise
        try:  # a call failed: the calls already running finish their work
            pool.shutdown(wait=True, cancel_futures=True)
        except BaseException:  # interrupted while waiting for them
            _end_workers(pool)
            raise
        raise
    pool.shutdown(wait=True)


def _end_workers(pool: ProcessPoolExecutor) -> None:
    """Stop `pool`'s worker processes now, whatever they run: SIGTERM, then SIGKILL to those left after
    `WORKERS_GRACE` seconds."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # no public list before Python 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    end = time.monotonic() + WORKERS_GRACE
    for process in processes:
        process.join(max(0.0, end - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()


def _init_worker(threads: int, logs: StageLogging | None = None, rank: int | None = None,
                 parent: int | None = None) -> None:
    """Set up a worker process started by the demo (`parent`: the demo's pid): first of all, it ends with the demo
    (kill -9 of the demo included, also while this worker was still starting)."""
    end_with_parent(parent)
    if logs is not None:
        logs.install(rank=rank)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _run_one(command: str, options: dict[str, Any]) -> None:
    from unime.demo.stage_calls import run_stage_command

    try:
        run_stage_command(command, options)
    except Exception as e:  # re-raised in the demo process: it must survive pickling
        try:
            pickle.loads(pickle.dumps(e))
        except Exception:
            raise UnimeError(f"{type(e).__name__}: {e}") from None
        raise


# commands whose work divides over the processes of a torchrun group (each process runs the same command)
RANKED_COMMANDS = ("mine",)


def torchrun_line(processes: int, line: str) -> str:
    """The command a user types for `line` ("unime COMMAND ...") run as `processes` torchrun processes."""
    return f"torchrun --standalone --nproc-per-node {processes} -m {line}"


def run_ranks(command: str, options: dict[str, Any], *, processes: int, threads: int,
              logs: StageLogging | None = None) -> None:
    """`torchrun --standalone --nproc-per-node PROCESSES -m unime COMMAND ...` (`torchrun_line`), made with torchrun's
    own launcher (`elastic_launch`, a rendezvous on a free local port): every process makes the command's stage
    call with `threads` torch threads. A failure of any process stops the others and is raised with its message.
    `logs`: where the processes' log records go (`run_parallel`)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=f"unime-demo-{os.getpid()}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, start_method="spawn")
    handlers = _signal_handlers()
    try:
        elastic_launch(config, _run_rank)(command, options, threads, logs, os.getpid())
    except ChildFailedError as e:
        rank, message = root_failure({r: f.message for r, f in e.failures.items()},
                                     {r: f.timestamp for r, f in e.failures.items()})
        raise UnimeError(f"`unime {command}` failed in process {rank} of {processes}: {message}") from None
    except SignalException as e:  # torch's handler: the group is stopped; the signal does what it did before
        _restore_signal_handlers(handlers)
        signal.raise_signal(e.sigval)  # SIGTERM's default ends this process, SIGINT's raises KeyboardInterrupt
        raise  # a handler that neither ended nor raised: the stage still stopped
    finally:
        _restore_signal_handlers(handlers)


def _signal_handlers() -> dict[signal.Signals, Any]:
    """This process's Python-visible signal handlers. torch's launcher (`elastic_launch`) sets its own for SIGTERM,
    SIGINT, SIGHUP and SIGQUIT (`TORCHELASTIC_SIGNALS_TO_HANDLE`), raising `SignalException`, and leaves them set:
    a SIGTERM of the demo after its mining stage then raised in the demo instead of ending it."""
    handlers = {}
    for signum in signal.valid_signals():
        try:
            handlers[signum] = signal.getsignal(signum)
        except (OSError, ValueError):
            pass
    return handlers


def _restore_signal_handlers(handlers: dict[signal.Signals, Any]) -> None:
    """Set back the handlers of `_signal_handlers` that changed since (one not set from Python cannot be)."""
    for signum, handler in handlers.items():
        if handler is not None and signal.getsignal(signum) != handler:
            signal.signal(signum, handler)


# what a process says when another process's step failed (`unime.process_group.PeerFailed`): the cause, relayed
_RELAYED = re.compile(r"^PeerFailed: process (\d+) of \d+ failed: (.*)$", re.S)


def root_failure(messages: dict[int, Any], timestamps: dict[int, int]) -> tuple[int, str]:
    """(rank, message) of the failure that caused the others. A process whose peer died fails too, with the
    transport's error, in the same second (torchrun's timestamps are whole seconds); one told of a peer's failure
    (`PeerFailed`) relays the cause. So the failures that are neither come first, then a relayed one (reported as
    the failed process's own), then the earliest, then the lowest rank."""
    def text(m: Any) -> str:
        return str(m.get("message", m)) if isinstance(m, dict) else str(m)

    def order(r: int):
        m = text(messages[r])
        return (2 if any(s in m for s in PEER_LOST) else 1 if _RELAYED.match(m) else 0, timestamps.get(r, 0), r)

    rank = min(messages, key=order)
    relayed = _RELAYED.match(text(messages[rank]))
    return (int(relayed.group(1)), relayed.group(2)) if relayed else (rank, text(messages[rank]))


def _run_rank(command: str, options: dict[str, Any], threads: int, logs: StageLogging | None = None,
              parent: int | None = None) -> None:
    _init_worker(threads, logs, rank=int(os.environ.get("RANK", "0") or 0), parent=parent)
    from torch.distributed.elastic.multiprocessing.errors import record

    record(_run_one)(command, options)
    # finished: after the launcher has read this return, the process ends without the interpreter's teardown, as
    # `unime mine` under torchrun does (a C++ thread sometimes aborted it there, failing a finished run)
    import atexit

    from unime.mining.ranks import leave_without_teardown

    atexit.register(leave_without_teardown)
