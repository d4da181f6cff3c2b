"""Stage C of UniME-V2 (SPEC §1.4): false-negative filtering and cyclical sampling of hard negatives.

Pure functions over one query's retrieved candidates (in retrieval-rank order) and their judge
scores. The mining pipeline calls `sample_negatives` once per query and feeds every result to a
`SamplingStats` so the report can say how many queries needed repeating or a fallback.

Choices (all options):
- a candidate is a false negative iff its judge score s > α = s(q, c_t) − β (strict: s == α is kept);
- cyclical sampling visits the survivors' positions 0, i, 2i, …, then 1, 1+i, 1+2i, …, and so on
  (i = `interval`, default `DEFAULT_INTERVAL`) — our reading of the paper's "five-step interval";
- `strategy` (sentence-transformers' `sampling_strategy`): "cyclical" (the above, default), "top" (the
  survivors in retrieval order), "random" (the survivors in an order drawn with the query's `rng`); the
  first `count` of that order are picked, "random"'s put back in retrieval order (similarity descending, as
  sentence-transformers sorts its draw);
- fewer survivors than `count`: the picked list is repeated cyclically ([a, b, a, b, …]), as the
  released data shows;
- no survivor: `fallback="random"` draws `count` of the original candidates at random (without
  replacement when there are enough) and gives each the score 1.0 (the paper's behaviour);
  `fallback="drop"` returns an empty result with status "dropped".
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

from unime.errors import DataError

DEFAULT_BETA = 0.01  # β: a candidate is a false negative when its judge score s > s(q, c_t) − β
DEFAULT_INTERVAL = 5  # i: the cyclical sampling interval
DEFAULT_COUNT = 10  # negatives picked per query
STATUSES = ("ok", "repeated", "fallback", "dropped")
STRATEGIES = ("cyclical", "top", "random")  # the order the survivors are picked in (`survivor_order`)
FALLBACK_SCORE = 1.0  # score the paper gives to randomly drawn negatives of a query with no survivor

Fallback = Literal["random", "drop"]


def _finite_scores(values: Any, *, field_name: str, source: str | None, record: str | int | None) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f"scores must be numbers: {e}", source=source, record=record, field=field_name) from None
    if arr.ndim > 1:
        raise DataError(f"expected a flat list of scores, got shape {arr.shape}", source=source, record=record,
                        field=field_name)
    bad = np.flatnonzero(~np.isfinite(arr.reshape(-1)))
    if bad.size:
        where = f"[{int(bad[0])}]" if arr.ndim == 1 else ""
        raise DataError(f"score {arr.reshape(-1)[bad[0]]!r} is not a finite number", source=source, record=record,
                        field=field_name + where)
    return arr


def false_negative_mask(candidate_scores: Sequence[float] | np.ndarray, positive_score: float,
                        beta: float = DEFAULT_BETA, *, source: str | None = None,
                        record: str | int | None = None) -> np.ndarray:
    """Boolean mask over the candidates, True = false negative (judge score s > s(q, c_t) − β).

    NaN / infinite scores raise `DataError` naming the field (`candidate_scores[i]` or `positive_score`).
    """
    scores = _finite_scores(candidate_scores, field_name="candidate_scores", source=source, record=record)
    if scores.ndim != 1:
        raise DataError("expected a list of scores", source=source, record=record, field="candidate_scores")
    pos = _finite_scores(positive_score, field_name="positive_score", source=source, record=record)
    if pos.ndim != 0:
        raise DataError(f"expected one number, got shape {pos.shape}", source=source, record=record,
                        field="positive_score")
    if not math.isfinite(beta):
        raise ValueError(f"beta must be finite, got {beta}")
    alpha = float(pos) - beta
    return scores > alpha


def cyclical_order(n: int, interval: int = DEFAULT_INTERVAL) -> list[int]:
    """All positions 0..n-1 in cyclical order: 0, i, 2i, …, then 1, 1+i, …, …, i-1, 2i-1, … (i = interval)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    return [p for offset in range(min(interval, n)) for p in range(offset, n, interval)]


def survivor_order(n: int, strategy: str = "cyclical", *, interval: int = DEFAULT_INTERVAL,
                   rng: np.random.Generator | None = None) -> list[int]:
    """All positions 0..n-1 of the survivors in the order `strategy` picks them: cyclical (`cyclical_order`),
    top (0, 1, …, n-1), random (a permutation drawn with `rng`)."""
    if strategy == "cyclical":
        return cyclical_order(n, interval)
    if strategy == "top":
        return list(range(n))
    if strategy == "random":
        if rng is None:
            raise ValueError("strategy 'random' needs an rng")
        return [int(p) for p in rng.permutation(n)]
    raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")


@dataclass(frozen=True)
class SampleResult:
    """The negatives picked for one query.

    `indices` point into the candidate list given to `sample_negatives` (retrieval order);
    `ids[k] = candidate_ids[indices[k]]`; `scores[k]` is that candidate's judge score, or 1.0 for
    fallback draws. `n_filtered` = candidates dropped as false negatives, `n_survivors` = the rest.
    """

    indices: list[int]
    ids: list[Any]
    scores: list[float]
    status: str
    n_filtered: int
    n_survivors: int

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; expected one of {STATUSES}")


def sample_negatives(candidate_ids: Sequence[Any], candidate_scores: Sequence[float] | np.ndarray,
                     positive_score: float, *, beta: float = DEFAULT_BETA, interval: int = DEFAULT_INTERVAL,
                     count: int = DEFAULT_COUNT,
                     fallback: Fallback = "random", rng: np.random.Generator, strategy: str = "cyclical",
                     source: str | None = None, record: str | int | None = None) -> SampleResult:
    """Filter false negatives, then pick `count` negatives by cyclical sampling (SPEC §1.4), or in `strategy`'s
    order (`survivor_order`).

    `candidate_ids` / `candidate_scores` are one query's retrieved candidates in retrieval-rank order.
    Status: "ok" (enough survivors), "repeated" (1..count-1 survivors, list repeated cyclically),
    "fallback" (no survivor, random draw with score 1.0), "dropped" (no survivor and
    `fallback="drop"`, or no candidate at all to draw from).
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if fallback not in ("random", "drop"):
        raise ValueError(f"fallback must be 'random' or 'drop', got {fallback!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    ids = list(candidate_ids)
    scores = _finite_scores(candidate_scores, field_name="candidate_scores", source=source, record=record)
    if scores.ndim != 1 or len(scores) != len(ids):
        raise DataError(f"{scores.size} scores for {len(ids)} candidates", source=source, record=record,
                        field="candidate_scores")
    is_false_negative = false_negative_mask(scores, positive_score, beta, source=source, record=record)
    survivors = np.flatnonzero(~is_false_negative).tolist()  # retrieval order kept
    n_filtered = int(is_false_negative.sum())
    n_survivors = len(survivors)

    if n_survivors > 0:
        once = [survivors[j] for j in survivor_order(n_survivors, strategy, interval=interval, rng=rng)]
        if strategy == "random":  # the draw in retrieval order: the most similar first, as sentence-transformers
            once[:count] = sorted(once[:count])
        picked = [once[k % len(once)] for k in range(count)]
        status = "ok" if n_survivors >= count else "repeated"
    elif fallback == "random" and ids:
        drawn = rng.choice(len(ids), size=count, replace=len(ids) < count)
        picked = [int(i) for i in drawn]
        return SampleResult(indices=picked, ids=[ids[i] for i in picked], scores=[FALLBACK_SCORE] * count,
                            status="fallback", n_filtered=n_filtered, n_survivors=0)
    else:
        return SampleResult(indices=[], ids=[], scores=[], status="dropped", n_filtered=n_filtered, n_survivors=0)
    return SampleResult(indices=picked, ids=[ids[i] for i in picked], scores=[float(scores[i]) for i in picked],
                        status=status, n_filtered=n_filtered, n_survivors=n_survivors)


@dataclass
class SamplingStats:
    """Counts of `SampleResult` statuses, overall and per dataset, plus false-negative totals.

    `add()` one result per query; `merge()` combines shards; `to_dict()` / `from_dict()` for manifests;
    `format_table()` for the report.
    """

    by_dataset: dict[str, Counter] = field(default_factory=dict)
    filtered: Counter = field(default_factory=Counter)  # false negatives dropped, per dataset
    candidates: Counter = field(default_factory=Counter)  # candidates seen, per dataset

    def add(self, result: SampleResult, dataset: str = "") -> None:
        self.by_dataset.setdefault(dataset, Counter())[result.status] += 1
        self.filtered[dataset] += result.n_filtered
        self.candidates[dataset] += result.n_filtered + result.n_survivors

    def merge(self, other: "SamplingStats") -> "SamplingStats":
        for ds, c in other.by_dataset.items():
            self.by_dataset.setdefault(ds, Counter()).update(c)
        self.filtered.update(other.filtered)
        self.candidates.update(other.candidates)
        return self

    @property
    def counts(self) -> dict[str, int]:
        """Queries per status over all datasets (every status present, zeros included)."""
        total = Counter()
        for c in self.by_dataset.values():
            total.update(c)
        return {s: int(total[s]) for s in STATUSES}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts,
            "by_dataset": {ds: {s: int(c[s]) for s in STATUSES} for ds, c in sorted(self.by_dataset.items())},
            "false_negatives": {ds: int(v) for ds, v in sorted(self.filtered.items())},
            "candidates": {ds: int(v) for ds, v in sorted(self.candidates.items())},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SamplingStats":
        return cls(by_dataset={ds: Counter(c) for ds, c in d.get("by_dataset", {}).items()},
                   filtered=Counter(d.get("false_negatives", {})), candidates=Counter(d.get("candidates", {})))

    def format_table(self) -> str:
        """Plain-text table: one row per dataset and a total row; columns = statuses, queries, FN rate."""
        header = ["dataset", *STATUSES, "queries", "false_neg_%"]
        rows = []
        for ds in sorted(self.by_dataset):
            c = self.by_dataset[ds]
            n = sum(c[s] for s in STATUSES)
            rows.append([ds or "(none)", *(str(c[s]) for s in STATUSES), str(n),
                         _pct(self.filtered[ds], self.candidates[ds])])
        tot = self.counts
        rows.append(["TOTAL", *(str(tot[s]) for s in STATUSES), str(self.total),
                     _pct(sum(self.filtered.values()), sum(self.candidates.values()))])
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(r, widths)))
                 for r in [header, *rows]]
        return "\n".join(lines)


def _pct(num: int, den: int) -> str:
    return f"{100.0 * num / den:.1f}" if den else "-"
