"""INFO lines for mining's long steps without progress bars: the retrieval's encoding and search say how far
they are (`retrieval: searched 8,192 of 20,000 queries, 12 s`), as the judge says how many shards it scores, so
a log shows progress without `--progress` (whose tqdm bars go to the terminal, not to a log)."""

from __future__ import annotations

import logging
import time

LOG_EVERY_SECONDS = 15.0  # at most one line per step in this interval, besides the last


class ProgressLog:
    """`update(done)` logs `<what> done of total <unit>, elapsed` when `every` seconds (`LOG_EVERY_SECONDS`) passed
    since the last line, or at the total; `finish()` logs the last line if `update` did not. `enabled=False` (a
    process other than the first under torchrun) logs nothing."""

    def __init__(self, log: logging.Logger, what: str, total: int, unit: str, *, every: float | None = None,
                 enabled: bool = True):
        self.log, self.what, self.total, self.unit = log, what, total, unit
        self.every = LOG_EVERY_SECONDS if every is None else every
        self.enabled = enabled
        self.t0 = self.last = time.perf_counter()
        self.done = 0
        self.logged = -1

    def update(self, done: int) -> None:
        self.done = done
        now = time.perf_counter()
        if self.enabled and (now - self.last >= self.every or done >= self.total) and done != self.logged:
            self.log.info("%s %s of %s %s, %.0f s", self.what, f"{done:,}", f"{self.total:,}", self.unit, now - self.t0)
            self.last, self.logged = now, done

    def add(self, n: int) -> None:
        self.update(self.done + n)

    def finish(self) -> None:
        if self.done != self.logged:
            self.last = -float("inf")
            self.update(self.done)
