"""Worker processes that do not outlive the process that started them.

unime's launchers start worker processes: the demo's per-seed workers and its torchrun group
(`unime.demo.parallel`), and torchrun / accelerate launch start `unime COMMAND` once per process. When the launcher
is killed with SIGKILL (kill -9, an OOM kill, a cluster scheduler) it cannot stop its workers, which kept computing
as orphans. Each worker calls `end_with_parent` as it starts: it then ends (SIGTERM) when its parent process ends,
however the parent ended. The worker sets this up itself, so it holds for the launcher's children and for the
children of a launcher unime does not control (torchrun's workers) alike; a SIGTERM or Ctrl-C of the launcher
stops the workers as before (the launcher forwards it, or its end does).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def end_with_parent(parent: int | None = None, *, signum: int = signal.SIGTERM) -> None:
    """End this process with `signum` when its parent process ends. `parent`: the pid of the process that started
    this one, when it says so (a launcher passes `os.getpid()`): if it has already ended by the time this runs (a
    launcher killed while its worker was starting), this process ends at once. None: the parent this process has
    now. On Linux the kernel sends the signal (PR_SET_PDEATHSIG); elsewhere a daemon thread checks the parent's
    pid every second."""
    expected = os.getppid() if parent is None else parent
    if not (sys.platform.startswith("linux") and _set_death_signal(signum)):
        _watch_parent(expected, signum)
    if os.getppid() != expected:  # the parent ended before the death signal was set up: nothing would send it
        os.kill(os.getpid(), signum)


def launched_by_torchrun() -> bool:
    """This process is a worker of torchrun / accelerate launch / torch's `elastic_launch` (it set TORCHELASTIC_RUN_ID
    for it): its launcher stops it, so it ends with the launcher. A command started another way (from a shell,
    under nohup) does not."""
    return bool(os.environ.get("TORCHELASTIC_RUN_ID"))


def _set_death_signal(signum: int) -> bool:
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int, signum: int, interval: float = 1.0) -> threading.Thread:
    def watch():
        while os.getppid() == parent:
            time.sleep(interval)
        os.kill(os.getpid(), signum)

    thread = threading.Thread(target=watch, name="unime-parent-watch", daemon=True)
    thread.start()
    return thread
