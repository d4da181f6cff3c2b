"""The demo's check after mining: does the judge discriminate within a query before its scores train anything?

The false-negative filter keeps a candidate c of query q when s(q, c) <= s(q, c_t) − β, and the soft
labels are the judge's scores: both work only if the judge's scores *vary within a query*. A judge that
gives every candidate (nearly) the same score (e.g. the Yes/No base rate of its training pairs) either
filters every candidate, so the query falls back to random negatives scored 1.0, or keeps them all with
flat soft labels. Training the hard-negative and soft-label rows on that measures the fallback policy,
not the method; so the demo stops (`DemoStopped`) unless told to continue.

From the mining outputs (`audit.parquet`: one row per (query, candidate) with the judge's score of the
candidate and of the positive, and the query's sampling status; `stats.json`: β):

- spread of a query = max − min of the judge's scores over its positive and its K candidates;
- weak when the median spread over queries is < β, or the share of queries that fell back to random
  negatives is > `max_fallback_share`.

The same two figures per dataset (when the audit names each query's dataset): a judge can be sharp on most
datasets and flat on a few, which the overall median hides. A dataset past either limit is named (`weak_datasets`)
in the log and the report — many of its queries train on random fallbacks — but only the overall check stops
the demo.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from unime.errors import DataError
from unime.mining.sampling import DEFAULT_BETA


@dataclass
class JudgeGate:
    queries: int
    median_spread: float
    spread_quartiles: tuple[float, float]
    beta: float
    fallback_share: float
    max_fallback_share: float
    # dataset → {"queries", "median_spread", "fallback_share"} (empty when the audit has no dataset column)
    by_dataset: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def weak(self) -> bool:
        return self.median_spread < self.beta or self.fallback_share > self.max_fallback_share

    def weak_datasets(self) -> list[str]:
        """Datasets whose median spread is < β or whose fallback share is > the limit, by name."""
        return sorted(d for d, m in self.by_dataset.items()
                      if m["median_spread"] < self.beta or m["fallback_share"] > self.max_fallback_share)

    def weak_datasets_line(self) -> str:
        """One sentence naming the weak datasets with their figures ('' when there are none)."""
        weak = self.weak_datasets()
        if not weak:
            return ""
        parts = [f"{d} (fallback {100 * self.by_dataset[d]['fallback_share']:.0f} % of "
                 f"{self.by_dataset[d]['queries']:.0f} queries, "
                 f"median spread {self.by_dataset[d]['median_spread']:.3f})"
                 for d in weak]
        return ("past the check's limits on " + ", ".join(parts) + f" (spread < β = {self.beta:g} or fallback > "
                f"{100 * self.max_fallback_share:.0f} %): the judge hardly separates candidates there, so many of "
                "those datasets' queries train on the random fallback")

    def reasons(self) -> list[str]:
        out = []
        if self.median_spread < self.beta:
            out.append(f"the median over {self.queries} queries of the spread (max − min) of the judge's scores over "
                       f"a query's positive and candidates is {self.median_spread:.4f}, below β = {self.beta:g} "
                       f"(quartiles {self.spread_quartiles[0]:.4f} / {self.spread_quartiles[1]:.4f})")
        if self.fallback_share > self.max_fallback_share:
            out.append(f"{100 * self.fallback_share:.1f} % of the queries had no candidate left after the "
                       f"false-negative filter and fell back to random negatives (limit "
                       f"{100 * self.max_fallback_share:.0f} %)")
        return out

    def to_dict(self) -> dict:
        return {**asdict(self), "weak": self.weak, "reasons": self.reasons(), "weak_datasets": self.weak_datasets(),
                "weak_datasets_line": self.weak_datasets_line()}


def query_spreads(query_index, candidate_scores, positive_scores) -> dict[int, float]:
    """Per query: max − min over {its positive's score} ∪ {its candidates' scores}."""
    q = np.asarray(query_index)
    s = np.asarray(candidate_scores, dtype=np.float64)
    p = np.asarray(positive_scores, dtype=np.float64)
    out: dict[int, float] = {}
    order = np.argsort(q, kind="stable")
    qs, ss, ps = q[order], s[order], p[order]
    starts = np.flatnonzero(np.r_[True, qs[1:] != qs[:-1]])
    for a, b in zip(starts, np.r_[starts[1:], len(qs)]):
        vals = np.r_[ss[a:b], ps[a:b]]
        out[int(qs[a])] = float(vals.max() - vals.min())
    return out


def judge_gate(mined_dir: str | Path, *, max_fallback_share: float) -> JudgeGate:
    """The numbers of the check from `unime mine`'s outputs in `mined_dir` (see the module doc). An audit that cannot
    be read (damaged, cut off, without a column the check reads) is a `DataError` naming it and how to make it again
    (`read_audit`)."""
    mined_dir = Path(mined_dir)
    audit_path, stats_path = mined_dir / "audit.parquet", mined_dir / "stats.json"
    for path in (audit_path, stats_path):
        if not path.is_file():
            raise DataError("mining output not found (run `unime mine` first)", source=str(path))
    beta = read_beta(stats_path)
    table = read_audit(audit_path)
    has_dataset = "dataset" in table
    if not table["query_index"]:
        raise DataError("no (query, candidate) rows", source=str(audit_path))
    spread_of = query_spreads(table["query_index"], table["judge_score"], table["positive_score"])
    spreads = np.array(list(spread_of.values()))
    status = {q: st for q, st in zip(table["query_index"], table["status"])}
    fallback = sum(st == "fallback" for st in status.values()) / len(status)
    by_dataset: dict[str, dict[str, float]] = {}
    if has_dataset:
        dataset_of = dict(zip(table["query_index"], table["dataset"]))
        for name in sorted(set(dataset_of.values())):
            qs = [q for q, d in dataset_of.items() if d == name]
            by_dataset[name] = {"queries": len(qs), "median_spread": float(np.median([spread_of[q] for q in qs])),
                                "fallback_share": sum(status[q] == "fallback" for q in qs) / len(qs)}
    q1, q3 = np.percentile(spreads, [25, 75])
    return JudgeGate(queries=len(spreads), median_spread=float(np.median(spreads)),
                     spread_quartiles=(float(q1), float(q3)), beta=beta, fallback_share=float(fallback),
                     max_fallback_share=max_fallback_share, by_dataset=by_dataset)


def mine_again(mined_dir: Path, what: str) -> str:
    """How the demo makes `what` of its mining folder `mined_dir` again: its mine stage runs again once mined.parquet
    (`unime mine`'s mark of a finished run) is gone, the judge's scores reused."""
    return (f"delete {mined_dir / 'mined.parquet'} and run the demo again: its mine stage runs again and rewrites "
            f"{what} (the judge's scores are reused)")


def read_beta(path: Path) -> float:
    """β of the mining `stats.json` at `path` (its config's beta, `DEFAULT_BETA` when it names none), read with the
    JSON file reader (`read_json_file`): a damaged file, or a beta that is no number, is a `DataError` naming the file
    and how the demo makes it again (`mine_again`), not json's traceback (QA)."""
    from unime.data.io import raw_message
    from unime.data.jsonl import read_json_file

    try:
        stats = read_json_file(path)
        config = stats.get("config", {}) if isinstance(stats, dict) else None
        beta = config.get("beta", DEFAULT_BETA) if isinstance(config, dict) else None
        if isinstance(beta, bool) or not isinstance(beta, (int, float)):
            raise DataError("no number config.beta in the mining stats", source=str(path))
    except DataError as e:
        raise DataError(f"{raw_message(e)}; {mine_again(path.parent, 'the stats')}", source=str(path)) from None
    return float(beta)


AUDIT_COLUMNS = ("query_index", "judge_score", "positive_score", "status")  # and "dataset" when the audit has it


def read_audit(path: Path) -> dict[str, list]:
    """The check's columns of `audit.parquet` at `path` (`AUDIT_COLUMNS`, and "dataset" when it has one), read through
    the checked Parquet reader (`open_parquet`, `parquet_rows`: the page checksums unime writes are verified). A file
    that is no Parquet file, a damaged row group or a missing column is a `DataError` naming the file and how the demo
    makes it again: its mine stage runs again once the folder's mined.parquet is gone (`unime mine`'s mark of a
    finished run; the judge's scores are reused), not pyarrow's traceback (QA)."""
    from unime.data.eval_formats import open_parquet, parquet_rows
    from unime.data.io import raw_message

    again = mine_again(path.parent, "the audit")
    try:
        pf = open_parquet(path)
        names = pf.schema_arrow.names
        missing = [c for c in AUDIT_COLUMNS if c not in names]
        if missing:
            raise DataError(f"no column {', '.join(map(repr, missing))} in the audit", source=str(path))
        columns = list(AUDIT_COLUMNS) + ["dataset"] * ("dataset" in names)
        rows = list(parquet_rows(pf, str(path), batch_size=65536, columns=columns))
    except DataError as e:
        raise DataError(f"{raw_message(e)}; {again}", source=str(path)) from None
    return {c: [r[c] for r in rows] for c in columns}


def stop_message(gate: JudgeGate, mined_dir: str | Path) -> str:
    return ("The demo stopped after the `mine` stage: the judge does not discriminate within a query — "
            + "; and ".join(gate.reasons()) + ". Training the hard-negative and soft-label rows on these scores "
            "would train on fallbacks (random negatives labelled 1.0), which measures the fallback policy, not "
            f"the method. See {Path(mined_dir) / 'report.md'} (judge audit: within-query AUC per dataset). "
            "What to do: give the judge more signal (more `judge_steps` / judge training records, a stronger "
            "judge base) and re-run (finished stages are skipped); or add `--oracle-judge` to see the recipe "
            "with the world's ground truth as the judge; or re-run with `--allow-weak-judge` to continue anyway.")
