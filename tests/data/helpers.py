"""Shared by the video tests of several folders: clips written with PyAV whose frames tell which source
frame they are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")


def write_clip(path: Path, *, n: int = 20, fps: int = 10, size: tuple[int, int] = (64, 48), codec: str = "mpeg4",
               shift: int = 0) -> Path:
    """A clip whose frame i is a flat colour with red = (12 * i + shift) % 256: a decoded frame tells which
    source frame it is."""
    w, h = size
    c = av.open(str(path), "w")
    s = c.add_stream(codec, rate=fps)
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    for i in range(n):
        a = np.zeros((h, w, 3), np.uint8)
        a[..., 0] = (12 * i + shift) % 256
        for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    return path
