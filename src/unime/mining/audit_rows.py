"""Stage C's audit (`audit.parquet`): one row per (query, retrieved candidate), held as columns.

A mining run of 20,000 records at K = 50 has a million audit rows; as a list of dicts (14 keys each) they held
~600 MB until the report was written. `AuditRows` keeps one NumPy array per numeric column and one list of
references per text column (the candidates' texts are the pool items' own strings), and reads as the list of
dicts did: `rows[i]`, iteration and `len` give `AuditRow` mappings (`row["judge_score"]`, a Python scalar),
and `row[key] = value` sets a cell (the demo audit's `relevance`), so the report's code is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# the numeric columns and their dtypes (those of audit.parquet's schema, `unime.mining.stages.write_outputs`)
NUMERIC = {"query_index": np.int64, "rank": np.int32, "pool_index": np.int64, "similarity": np.float32,
           "positive_similarity": np.float32, "judge_score": np.float64, "positive_score": np.float64,
           "false_negative": np.bool_, "times_sampled": np.int32}
ORDER = ("query_index", "record_id", "dataset", "rank", "pool_index", "candidate_text", "candidate_image",
         "similarity", "positive_similarity", "judge_score", "positive_score", "false_negative", "times_sampled",
         "status")


class AuditRows(Sequence):
    """The audit rows as columns; `add_query` appends a query's rows, `finish` joins them (see the module doc)."""

    def __init__(self):
        self._parts: dict[str, list] = {name: [] for name in ORDER}
        self.columns: dict[str, Any] = {}
        self._n = 0

    def add_query(self, n: int, *, texts: dict[str, Sequence[str]], numbers: dict[str, Any],
                  per_query: dict[str, Any]) -> None:
        """`n` rows of one query: `texts` / `numbers` one value per row, `per_query` one value for all of them."""
        for name, values in texts.items():
            self._parts[name].extend(values)
        for name, values in numbers.items():
            self._parts[name].append(np.asarray(values, dtype=NUMERIC[name]))
        for name, value in per_query.items():
            if name in NUMERIC:
                self._parts[name].append(np.full(n, value, dtype=NUMERIC[name]))
            else:
                self._parts[name].extend([value] * n)
        self._n += n

    def finish(self) -> "AuditRows":
        for name, parts in self._parts.items():
            self.columns[name] = (np.concatenate(parts) if parts else np.zeros(0, dtype=NUMERIC[name])) \
                if name in NUMERIC else parts
        self._parts = {}
        return self

    def column(self, name: str):
        return self.columns[name]

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [AuditRow(self, j) for j in range(*i.indices(self._n))]
        if not -self._n <= i < self._n:
            raise IndexError(i)
        return AuditRow(self, i % self._n)

    def __iter__(self):
        return (AuditRow(self, i) for i in range(self._n))

    def set_cell(self, name: str, i: int, value: Any) -> None:
        if name not in self.columns:  # a new column (the demo audit's relevance): None until set
            self.columns[name] = [None] * self._n
        self.columns[name][i] = value

    def arrow_table(self, schema):
        """audit.parquet's table: the columns of `schema`, in its types."""
        import pyarrow as pa

        return pa.table({f.name: pa.array(self.columns[f.name], f.type) for f in schema}, schema=schema)


class AuditRow(Mapping):
    """One audit row, a view of `AuditRows`' columns: reads give Python scalars, as the row dicts held."""

    __slots__ = ("rows", "i")

    def __init__(self, rows: AuditRows, i: int):
        self.rows, self.i = rows, i

    def __getitem__(self, name: str) -> Any:
        value = self.rows.columns[name][self.i]
        return value.item() if isinstance(value, np.generic) else value

    def __setitem__(self, name: str, value: Any) -> None:
        self.rows.set_cell(name, self.i, value)

    def __iter__(self):
        return iter(self.rows.columns)

    def __len__(self) -> int:
        return len(self.rows.columns)
