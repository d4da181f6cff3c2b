"""Helpers for the index tests (and the service's, which serves an index)."""

from __future__ import annotations

from pathlib import Path

import pytest

MAPS = Path("/proc/self/maps")
needs_proc_maps = pytest.mark.skipif(not MAPS.exists(), reason="reads this process's mappings from /proc/self/maps")


def mapped_files() -> set[str]:
    """The files this process has memory-mapped now (Linux's /proc/self/maps: a file removed or renamed over since
    it was mapped is listed as "PATH (deleted)")."""
    out = set()
    for line in MAPS.read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/"):
            out.add(parts[5])
    return out
