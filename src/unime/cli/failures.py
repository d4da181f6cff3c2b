"""The one error contract of the command line: a failure the user can cause (bad data, a folder that
is not ours, a missing file, a disk that is full ...) ends as ONE line on stderr,

    unime: error: FILE: record line 7, field 'positive_score': score 1e400... is too large

and exit code 2. No traceback, unless `--log-level DEBUG`. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import errno
import sys
import traceback

from unime.errors import ChangedOptions, DataError, OptionError, UnimeError
from unime.options import as_on_the_command_line

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell tool whose reader went away ends with

# failures caused by the input or the environment, even when they escaped a reader's own checks
USER_CAUSED = (UnimeError, UnicodeDecodeError, OverflowError, RecursionError, OSError, MemoryError)


def describe(exc: BaseException, command: str | None = None) -> str:
    """One line for a user-caused failure (of `command`, named before a config's refusal as a usage error is)."""
    if isinstance(exc, OptionError):  # a config's refusal, in the command line's names of the options
        text = as_on_the_command_line(exc)
        text = f"{command}: {text}" if command else text
    elif isinstance(exc, (ChangedOptions, DataError)) and exc.config is not None:  # options named, as flags
        text = as_on_the_command_line(exc)
    elif isinstance(exc, UnimeError):
        text = str(exc)
    elif isinstance(exc, UnicodeDecodeError):
        text = f"input is not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r})"
    elif isinstance(exc, RecursionError):
        text = "input nested too deeply (e.g. JSON with thousands of levels)"
    elif isinstance(exc, OverflowError):
        text = f"a number in the input is too large: {exc}"
    elif isinstance(exc, OSError):
        what = exc.strerror or str(exc)
        if exc.errno == errno.ENOSPC:
            what = "no space left on the device"
        names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
        text = f"{' -> '.join(names)}: {what}" if names else what
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split()) or type(exc).__name__


def is_user_caused(exc: BaseException) -> bool:
    if isinstance(exc, UnimeError):
        return True
    if isinstance(exc, ValueError) and "embedded null byte" in str(exc):
        return True
    return isinstance(exc, USER_CAUSED) and not isinstance(exc, (NotImplementedError,))


def stdout_closed() -> bool:
    """Whether standard output is a pipe whose reader has gone (`unime ... | head`). If so, the rest of the
    output goes to the null device, so that the interpreter's own flush at exit does not fail again."""
    import os
    import select

    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        gone = any(events & select.POLLERR for _, events in poller.poll(0))  # a pipe without a reader
    except (AttributeError, ValueError, OSError):  # replaced or closed by a caller: nothing to tell
        return False
    if gone:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    return gone


def progress_bar_may_be_open() -> bool:
    """Whether a progress bar may be open on stderr: its line ends without a newline, so a line printed now would
    be glued onto it. One of this process (tqdm: transformers' Trainer, unime's stages), or, under a launcher
    (WORLD_SIZE > 1), one of another process of the group writing to the same terminal (the Trainer shows its bar
    on the first process only)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return True
    tqdm_module = sys.modules.get("tqdm.std")  # not imported: no bar
    bars = getattr(getattr(tqdm_module, "tqdm", None), "_instances", ())
    return any(not getattr(bar, "disable", True) for bar in list(bars))


def report(exc: BaseException, *, debug: bool, command: str | None = None) -> int:
    """Print the one line, on a line of its own (and, under DEBUG, the traceback); return the exit code."""
    if progress_bar_may_be_open():
        print(file=sys.stderr)
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    print(f"unime: error: {describe(exc, command)}", file=sys.stderr)
    return EXIT_USER_ERROR
