"""The demo's console and its stages' log files. While a stage runs, the log records of its commands go to
`OUT/logs/STAGE.log` (appended to: a resumed demo keeps the earlier attempt's lines below a header naming each
attempt's start), and the console shows from WARNING up: the demo's own lines (`[demo] ...`, printed, not logged),
the progress bars, every WARNING and ERROR. `unime --log-level LEVEL demo` keeps the console as it was (every record
the level lets through), besides the files.

The console is the root logger's plain `logging.StreamHandler`s (`unime.cli.configure_logging`'s,
`logging.basicConfig`'s); other handlers (a file, pytest's capture) are left as they are. The demo's worker
processes (its per-seed workers and torchrun ranks, `unime.demo.parallel`) install the same routing from a
`StageLogging` (`install`): every process
appends to the stage's one file, each record one `os.write` on a descriptor opened with O_APPEND, so the lines of
two processes do not cut into each other (one file per stage is the one place to read; a file per worker would
split one stage's story over several).

A multi-line WARNING whose lines after the first are details (`extra={DETAILS: True}`, e.g. mining's five example
records `mined.json` left out) shows its first line on the demo's console, the rest in the stage's log only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

LOGS_DIR = "logs"  # OUT/logs/STAGE.log
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WORKER_FORMAT = "%(asctime)s %(levelname)s %(name)s [process %(process)d]: %(message)s"
# a log record's attribute (`extra=`): its message's lines after the first are details, for a log file
DETAILS = "details_after_first_line"


def stage_log_path(out: str | os.PathLike, stage: str) -> Path:
    return Path(out) / LOGS_DIR / f"{stage}.log"


class AppendFileHandler(logging.Handler):
    """A log file several processes write: each record one `os.write` on a descriptor opened with O_APPEND (the
    kernel appends each write whole at the end; `logging.FileHandler`'s buffered stream may split a long record
    into several writes)."""

    def __init__(self, path: str | os.PathLike, fmt: str = FORMAT):
        super().__init__()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.setFormatter(logging.Formatter(fmt))
        self.addFilter(_unime_or_warning)

    def write_line(self, text: str) -> None:
        data = (text.rstrip("\n") + "\n").encode("utf-8", "backslashreplace")
        while data:
            data = data[os.write(self.fd, data):]

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(self.format(record))
        except Exception:  # noqa: BLE001 - logging's rule: a record that cannot be written is reported, not raised
            self.handleError(record)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        super().close()


def _unime_or_warning(record: logging.LogRecord) -> bool:
    """unime's own records at every level; other libraries' from WARNING up unless the `unime` loggers log DEBUG."""
    return (record.levelno >= logging.WARNING or record.name == "unime" or record.name.startswith("unime.")
            or logging.getLogger("unime").getEffectiveLevel() <= logging.DEBUG)


class _ConsoleLevel(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


class _SummaryFormatter(logging.Formatter):
    """The console's formatter, but a record marked `DETAILS` shows its first line only, naming the log."""

    def __init__(self, base: logging.Formatter | None, log_file: Path):
        super().__init__()
        self.base, self.log_file = base or logging.Formatter(), log_file

    def format(self, record: logging.LogRecord) -> str:
        text = self.base.format(record)
        if not getattr(record, DETAILS, False) or "\n" not in text:
            return text
        first, rest = text.split("\n", 1)
        return f"{first} ({rest.count(chr(10)) + 1} more line(s) in {self.log_file})"


def console_handlers() -> list[logging.Handler]:
    """The root logger's handlers that write to the console (see the module doc)."""
    return [h for h in logging.getLogger().handlers if type(h) is logging.StreamHandler]


@dataclass(frozen=True)
class StageLogging:
    """Where a stage's records go: `log_file`, and on the console from `console_level` up; `summary`: the console
    shows a record marked `DETAILS` by its first line (the demo's console; off with `--log-level` given, where
    `console_level` is the level given). Picklable: the demo's workers get it (`install`)."""

    log_file: Path
    console_level: int = logging.WARNING
    summary: bool = True

    @contextlib.contextmanager
    def routed(self, header: str | None = None) -> Iterator[AppendFileHandler]:
        """In this process, for the `with` block: the stage's records go to its file (after `header`, a line of its
        own), the console shows them from `console_level` up. The `unime` loggers log INFO at least meanwhile, so
        the file holds the INFO records also when the console shows less."""
        root, unime = logging.getLogger(), logging.getLogger("unime")
        handler = AppendFileHandler(self.log_file)
        if header:
            handler.write_line(header)
        saved = [(h, h.formatter) for h in console_handlers()]
        level_filter = _ConsoleLevel(self.console_level)
        for h, formatter in saved:
            h.addFilter(level_filter)
            if self.summary:
                h.setFormatter(_SummaryFormatter(formatter, self.log_file))
        unime_level = unime.level
        unime.setLevel(min(unime.getEffectiveLevel(), logging.INFO))
        root.addHandler(handler)
        try:
            yield handler
        finally:
            root.removeHandler(handler)
            handler.close()
            unime.setLevel(unime_level)
            for h, formatter in saved:
                h.removeFilter(level_filter)
                h.setFormatter(formatter)

    def install(self, *, rank: int | None = None) -> None:
        """In a worker process of the stage (spawned: no logging set up): its records to the stage's file, its
        console from `console_level` up, as in the demo's process. A torchrun rank after the first (`rank` > 0)
        shows only its errors on the console unless DEBUG is asked for (`unime.cli.configure_logging`'s rule);
        every rank's records go to the file."""
        level = self.console_level
        if rank and level > logging.DEBUG:
            level = max(level, logging.ERROR)
        console = logging.StreamHandler()
        formatter = logging.Formatter(FORMAT)
        console.setFormatter(_SummaryFormatter(formatter, self.log_file) if self.summary else formatter)
        console.addFilter(_ConsoleLevel(level))
        console.addFilter(_unime_or_warning)
        root = logging.getLogger()
        root.addHandler(console)
        root.addHandler(AppendFileHandler(self.log_file, WORKER_FORMAT))
        root.setLevel(min(self.console_level, logging.INFO))


def attempt_header(stage: str, code: str) -> str:
    """The line that opens an attempt of a stage in its log."""
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return f"===== stage {stage}: attempt started {started} (unime {code}) ====="
