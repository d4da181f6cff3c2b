"""A worker process ends with the process that started it, also when that process is killed with SIGKILL
(`unime.parent_death`): a launcher started here, its child set up as a unime worker sets itself up, the launcher
is killed with SIGKILL, and the child must end within seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.helpers import kill_all, survivors

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# a launcher: starts one child running CHILD, prints the child's pid, waits (until it is killed)
_LAUNCHER = ("import subprocess, sys, time\n"
             "child = subprocess.Popen([sys.executable, '-c', sys.argv[1]])\n"
             "print(child.pid, flush=True)\ntime.sleep(600)\n")
_CHILD = ("import os, signal, time\nfrom unime.parent_death import end_with_parent, _watch_parent\n"
          "{SETUP}\nprint('ready', flush=True)\ntime.sleep(600)\n")


def _child_after_the_launcher_is_killed(setup: str) -> list[int]:
    """The child still running 10 s after its launcher was killed with SIGKILL (empty: it ended)."""
    launcher = subprocess.Popen([sys.executable, "-c", _LAUNCHER, _CHILD.replace("{SETUP}", setup)],
                                stdout=subprocess.PIPE, text=True)
    child = []
    try:
        child = [int(launcher.stdout.readline())]
        assert launcher.stdout.readline().strip() == "ready"  # the child set itself up
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait(timeout=30)
        return survivors(child, within=10)
    finally:
        kill_all(child + [launcher.pid])
        launcher.stdout.close()


def test_a_worker_ends_when_its_launcher_is_killed():
    assert _child_after_the_launcher_is_killed("end_with_parent()") == []


def test_without_prctl_a_thread_watching_the_parent_ends_the_worker():
    # the way on a system without PR_SET_PDEATHSIG (macOS): a thread polls the parent's pid
    assert _child_after_the_launcher_is_killed("_watch_parent(os.getppid(), signal.SIGTERM, 0.1)") == []


def test_a_worker_not_set_up_outlives_its_launcher():
    # what the two tests above would see without `end_with_parent`: the child keeps running as an orphan
    child = _child_after_the_launcher_is_killed("pass")
    assert len(child) == 1


def test_a_worker_whose_launcher_ended_before_it_was_set_up_ends_at_once():
    script = ("from unime.parent_death import end_with_parent\n"
              f"end_with_parent(parent={os.getpid() + 10 ** 7})\nprint('still running')\n")  # a launcher gone
    ended = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (ended.returncode, ended.stdout) == (-signal.SIGTERM, "")
    started = subprocess.run([sys.executable, "-c", script.replace(f"{os.getpid() + 10 ** 7}", str(os.getpid()))],
                             capture_output=True, text=True, timeout=60)  # its launcher (this process) runs
    assert (started.returncode, started.stdout) == (0, "still running\n")


def test_only_a_torchrun_worker_ends_with_its_launcher(monkeypatch):
    from unime.parent_death import launched_by_torchrun

    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert not launched_by_torchrun()  # a command started from a shell (nohup included) outlives it
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # set by torchrun for each of its processes
    assert launched_by_torchrun()
