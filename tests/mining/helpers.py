"""Shared by the mining tests (and the end-to-end kill test): a small record set over two datasets; the Ray backend
tests' driver process (`run_ray_driver`)."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import unime
from unime.data.io import write_records
from unime.data.items import Item, Record

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
SHAPES = ("circle", "square", "star")


def write_dataset(root: Path) -> Path:
    """9 records over two datasets: image→text classification and text→image retrieval."""
    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    records = []
    for i, (colour, rgb) in enumerate(COLOURS.items()):
        for j in range(2 if i < 2 else 1):
            path = f"img/{colour}{j}.png"
            arr = np.clip(np.array(rgb) + rng.integers(-20, 20, (40 + 8 * j, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / path)
            records.append(Record(query=Item(text="<|image_1|>\nRepresent the given image for classification: "
                                                  "what colour is shown?", images=(path,)),
                                  positive=Item(text=colour), dataset="colour_cls", id=f"cls-{colour}-{j}"))
    for k, shape in enumerate(SHAPES):
        colour = list(COLOURS)[k]
        records.append(Record(query=Item(text=f"Find an image that matches the given caption: a {colour} {shape}"),
                              positive=Item(text="<|image_1|>\nRepresent the given image.",
                                            images=(f"img/{colour}0.png",)),
                              dataset="t2i", id=f"t2i-{shape}"))
    path = root / "records.jsonl"
    write_records(records, path)
    return path


RAY_DRIVER = Path(__file__).with_name("ray_driver.py")
SRC = str(Path(unime.__file__).resolve().parents[1])  # this tree's src/, for the driver process


@dataclass
class DriverRun:
    returncode: int
    stdout: str
    stderr: str
    result: Any  # what the case returned (None if it wrote nothing)

    def check(self) -> Any:
        """The case's result, after checking the driver exited 0 and wrote it (else: its stderr's end)."""
        assert self.returncode == 0 and self.result is not None, (
            f"the Ray driver process exited with {self.returncode}:\n{self.stderr[-4000:]}")
        return self.result


def run_ray_driver(case: str, folder: Path, *, cwd: Path, timeout: float = 900.0, **inputs: Any) -> DriverRun:
    """Run `ray_driver.py`'s `case(**inputs)` as its own process, in its own session, in `cwd`; files in `folder`.

    The driver's Ray processes (cluster included) are in the driver's process group: once the driver has ended
    (or, past `timeout`, been killed) the group gets SIGTERM, then SIGKILL after 10 s, so a crash leaves no Ray
    process behind. The driver is reaped only after that: until then its pid, the group's id, is not reused."""
    in_path, out_path = folder / f"ray_{case}.in.pkl", folder / f"ray_{case}.out.pkl"
    in_path.write_bytes(pickle.dumps(inputs))
    out_path.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(folder / f"ray_{case}.stdout", "w+") as out, open(folder / f"ray_{case}.stderr", "w+") as err:
        proc = subprocess.Popen([sys.executable, str(RAY_DRIVER), case, str(in_path), str(out_path)], cwd=cwd,
                                env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            _wait_unreaped(proc.pid, timeout)
        finally:
            _end_group(proc.pid)
            proc.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    result = pickle.loads(out_path.read_bytes()) if out_path.exists() else None
    return DriverRun(proc.returncode, stdout, stderr, result)


def _wait_unreaped(pid: int, timeout: float) -> None:
    """Wait until process `pid` (a child) has exited, without reaping it; at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None:
        if time.monotonic() > deadline:
            return
        time.sleep(0.2)


def _end_group(pgid: int, grace: float = 10.0) -> None:
    """SIGTERM to process group `pgid`, SIGKILL to what is left of it after `grace` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (an exited, unreaped leader is a zombie: not running)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False
