"""Shared helpers of the tests in this folder. Assigning a value to a field of a config once it is made
(`unime.options.RangeChecked.__setattr__`), for the walking tests of every config (`tests/test_config_types.py`,
`tests/test_config_ranges.py`). The processes a process started, and whether they still run, for the tests that
kill a launcher (`tests/test_parent_death.py`, tests/demo, tests/mining)."""

from __future__ import annotations

import dataclasses
import os
import signal
import time

import pytest

from unime.errors import OptionError


def refused_assignment(cfg, name: str, value) -> OptionError | None:
    """The OptionError of `cfg.NAME = value`, after checking that the field kept its value; None for a frozen
    config, which refuses every assignment (FrozenInstanceError)."""
    before = getattr(cfg, name)
    if type(cfg).__dataclass_params__.frozen:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(cfg, name, value)
        return None
    with pytest.raises(OptionError) as caught:
        setattr(cfg, name, value)
    assert getattr(cfg, name) is before
    return caught.value


def assert_assignment_refused_as_made(cls, required: dict, name: str, value) -> None:
    """`cls(**required, NAME=value)` and, on a config made without it, `cfg.NAME = value` are refused with the same
    message (in the Python API's names and as the command line names them)."""
    with pytest.raises(OptionError) as made:
        cls(**{**required, name: value})
    assigned = refused_assignment(cls(**required), name, value)
    if assigned is not None:
        assert str(assigned) == str(made.value)
        assert assigned.render(lambda field: f"<{field}>") == made.value.render(lambda field: f"<{field}>")


def descendants(pid: int) -> list[int]:
    """The pids of the processes `pid` started, and theirs, read from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    children.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(name))
            except (OSError, IndexError, ValueError):
                pass
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def running(pid: int) -> bool:
    """The process runs (a zombie, ended and not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def survivors(pids: list[int], within: float) -> list[int]:
    """The processes of `pids` still running after `within` seconds (or none sooner)."""
    end = time.monotonic() + within
    while True:
        alive = [p for p in pids if running(p)]
        if not alive or time.monotonic() > end:
            return alive
        time.sleep(0.2)


def kill_all(pids: list[int]) -> None:
    """SIGKILL the processes of `pids` that still run (a test's own processes, by pid)."""
    for pid in pids:
        if running(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
