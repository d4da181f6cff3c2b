"""Judge scores of training records: the one check of every score a record holds, read from a file (the readers of
`unime.data.io`) or built in memory (`Record.validate`, which training runs on its records), so that `unime data
check`, the readers and training refuse the same values.

A score is a judge probability (P(Yes)): a number, finite and in [0, 1]. Each refusal is a `DataError` tagged
with its skip reason (`unime.data.skips`) naming the source file, the record and the field.
"""

from __future__ import annotations

import math
from typing import Any

from unime.data.skips import data_error


def parse_score(value: Any, *, source=None, record=None, field: str, allow_none: bool = True) -> float | None:
    """`value` as a judge score (the module doc); a missing one is None where `allow_none`."""
    if value is None:
        if allow_none:
            return None
        raise data_error("schema", "missing score", source=source, record=record, field=field)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise data_error("schema", f"score must be a number, got {type(value).__name__}", source=source,
                         record=record, field=field)
    try:
        out = float(value)
    except OverflowError:  # an integer too large for a float (hundreds of digits)
        raise data_error("bad_score", f"score {str(value)[:20]}... ({len(str(value))} digits) is too large",
                         source=source, record=record, field=field) from None
    if not math.isfinite(out):
        raise data_error("bad_score", f"score {value!r} is not a finite number", source=source, record=record,
                         field=field)
    if not 0.0 <= out <= 1.0:
        raise data_error("bad_score", f"score {value!r} is outside [0, 1] (a judge score is a probability, P(Yes))",
                         source=source, record=record, field=field)
    return out


def parse_scores(value: Any, n: int | None, *, source=None, record=None, field: str) -> list[float] | None:
    """A list of `n` judge scores (each named `field[i]` in errors), or None."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        raise data_error("schema", f"expected a list of scores, got {type(value).__name__}", source=source,
                         record=record, field=field)
    if n is not None and len(value) != n:  # the shape before the values
        raise data_error("schema", f"{len(value)} scores for {n} items", source=source, record=record, field=field)
    return [parse_score(v, source=source, record=record, field=f"{field}[{i}]", allow_none=False)
            for i, v in enumerate(value)]
