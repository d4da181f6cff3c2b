"""The skip policy for bad input: raise (default) or skip, counting each skip and keeping examples.

Readers take `on_error="raise"|"skip"` and an optional `SkipReport`. Under "skip" a bad record is
left out, counted under its reason, and the first few are kept with file / record / field so the
user can find them. Nothing is ever skipped silently: without a caller-supplied report the reader
logs the summary itself.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from dataclasses import dataclass, field

from unime.errors import DataError
from unime.options import as_the_user_gave_it

ON_ERROR_CHOICES = ("raise", "skip")

# why a record was rejected; `DataError.reason` carries one of these when unime's readers raise ("output_format":
# a writer's, the record is good but the format written cannot hold it, e.g. a video in UniME-V2 JSON; "too_long": a
# text of more tokens than the model is built for, `unime.models.context`)
REASONS = ("malformed_json", "not_utf8", "schema", "empty_item", "bad_score", "placeholder", "image", "video",
           "output_format", "too_long")

log = logging.getLogger(__name__)


def data_error(reason: str, message: str, *, source=None, record=None, field=None, config=None,
               **values) -> DataError:
    """A `DataError` tagged with the skip-report reason it is counted under (`config`, `values`: a message naming
    options, `DataError`)."""
    err = DataError(message, source=source, record=record, field=field, config=config, **values)
    err.reason = reason  # type: ignore[attr-defined]
    return err


def empty_file_error(what: str, source, note: str = "") -> DataError:
    """`what` ("no rows", "no usable training records") of the file `source`, which holds no rows at all (it is empty,
    or blank lines): the message says so and asks for the file of the records (`note`: said before that)."""
    return DataError(f"{what} (the file is empty): {note}give the file that holds your records", source=source)


def reason_of(err: DataError) -> str:
    return getattr(err, "reason", None) or "schema"


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")


@dataclass
class SkipExample:
    reason: str
    source: str | None
    record: str | int | None
    field: str | None
    message: str


@dataclass
class SkipReport:
    """Counts of skipped records per reason, and the first `max_examples` of them."""

    max_examples: int = 5
    counts: Counter = field(default_factory=Counter)
    examples: list[SkipExample] = field(default_factory=list)

    def add(self, err: DataError, reason: str | None = None) -> None:
        reason = reason or reason_of(err)
        self.counts[reason] += 1
        if len(self.examples) < self.max_examples:
            # logged during the run: a hint naming options names them as the caller gives them (the command line's
            # flags in a command of `unime`, the fields from Python: `unime.options.command_line_wording`)
            self.examples.append(SkipExample(reason, None if err.source is None else str(err.source), err.record,
                                             err.field, as_the_user_gave_it(err)))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __len__(self) -> int:
        return self.total

    @property
    def per_reason(self) -> str:
        """"reason: n, ..." of the counts, sorted by reason."""
        return ", ".join(f"{r}: {n}" for r, n in sorted(self.counts.items()))

    def summary(self, what: str = "record(s)") -> str:
        if not self.total:
            return f"skipped 0 {what}"
        lines = [f"skipped {self.total} {what} ({self.per_reason})"]
        lines += [f"  - {e.message}" for e in self.examples]
        if self.total > len(self.examples):
            lines.append(f"  ... and {self.total - len(self.examples)} more")
        return "\n".join(lines)


@contextlib.contextmanager
def shown_on_failure(skips: SkipReport):
    """Print what `skips` counted when the work in the block fails (every record skipped: "no items to encode",
    too few images left, ...) before the error is reported, so the reasons are not lost with the run."""
    try:
        yield skips
    except Exception:
        if skips.total:
            print(skips.summary(), flush=True)
        raise


class ErrorPolicy:
    """Applies `on_error` to one read: raises, or counts into the report (logging it at `finish`)."""

    def __init__(self, on_error: str, skips: SkipReport | None, what: str):
        check_on_error(on_error)
        self.on_error = on_error
        self.own = skips is None
        self.skips = SkipReport() if skips is None else skips
        self.start = self.skips.total
        self.what = what
        self.first: DataError | None = None  # this read's first skipped record (a shared report keeps only a few)

    @property
    def skipped(self) -> int:
        """Records this read skipped."""
        return self.skips.total - self.start

    def handle(self, err: DataError) -> None:
        if self.on_error == "raise":
            raise err
        self.first = self.first or err
        self.skips.add(err)

    def finish(self) -> None:
        if self.skipped and self.own:
            log.warning("%s: %s", self.what, self.skips.summary())
