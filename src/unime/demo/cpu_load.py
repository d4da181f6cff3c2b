"""How busy the machine's cores are with other work when a demo stage starts.

The demo's in-process stages run torch at two threads on two cores; beside any other busy process their OpenMP
threads wait on each other and a step slows far more than by the share of a core it loses (measured for issue
#13: the reranker's training step went from ~0.4 s to 17 s while a one-thread job ran beside it). A stage that
starts on a busy machine is therefore flagged: a warning, and a mark beside its time in the report, so that
nobody reads such a time (or an ETA built on it) as the demo's.

Linux only (`/proc/stat`); elsewhere the check says nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

BUSY_CORES = 0.5  # other work on at least half a core at a stage's start: flagged
PROC_STAT = Path("/proc/stat")


def _cpu_times(text: str) -> tuple[int, int, int]:
    """(busy, total, cores) jiffies of the aggregate `cpu` line of /proc/stat (idle and iowait are not busy)."""
    lines = text.splitlines()
    head = next((ln for ln in lines if ln.startswith("cpu ")), None)
    if head is None:
        raise ValueError("no aggregate cpu line")
    values = [int(v) for v in head.split()[1:]]
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal (guest time is inside user)
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    cores = sum(1 for ln in lines if ln.startswith("cpu") and ln[3:4].isdigit())
    return total - idle, total, max(cores, 1)


def busy_cores(window: float = 0.3, *, read=lambda: PROC_STAT.read_text()) -> float | None:
    """Cores kept busy over the next `window` seconds, by everything running (the caller idles meanwhile);
    None where /proc/stat cannot be read."""
    try:
        busy0, total0, cores = _cpu_times(read())
        time.sleep(window)
        busy1, total1, _ = _cpu_times(read())
    except (OSError, ValueError):
        return None
    if total1 <= total0:
        return None
    return cores * (busy1 - busy0) / (total1 - total0)
