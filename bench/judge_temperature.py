"""The false-negative filter with a temperature on the judge's scores: would a calibrated judge filter better?

    python bench/judge_temperature.py --demo runs/demo                 # a demo run past its mining stage
    python bench/judge_temperature.py --demo runs/demo --temperatures 1,2,4,8 --beta 0.01

The judge's score is P(Yes) = sigmoid(m), m = l_Yes − l_No (SPEC 1.3). A temperature T (post-hoc calibration)
scores sigmoid(m / T) instead: the order of a query's candidates does not change (nor any within-query AUC), but
their distances do, and the filter (SPEC 1.4: a candidate is a false negative when its score exceeds the
positive's minus β) reads distances. From the audit of a mining run (`mined/audit.parquet`: every candidate's
judge score, its query's positive's score and the world's ground-truth relevance), per T: the share of
candidates filtered, the filter's precision and recall against the true false negatives (relevance 1), and the
share of queries left with no candidate (a fallback to random negatives). Nothing is re-scored: m is recovered
from the stored scores (scores within 1e-12 of 0 or 1 are clipped there).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", required=True, help="a demo output folder (mined/audit.parquet)")
    ap.add_argument("--temperatures", default="1,1.5,2,3,4,8")
    ap.add_argument("--beta", type=float, default=0.01)
    args = ap.parse_args()

    import numpy as np
    import pandas as pd

    audit = pd.read_parquet(Path(args.demo) / "mined" / "audit.parquet")

    def margin(p):
        p = np.clip(p.astype(np.float64), 1e-12, 1 - 1e-12)
        return np.log(p) - np.log1p(-p)

    m, m_pos = margin(audit["judge_score"].to_numpy()), margin(audit["positive_score"].to_numpy())
    true = audit["relevance"].to_numpy() >= 1.0
    queries = audit["query_index"].to_numpy()
    print(f"{len(audit)} candidates of {len(np.unique(queries))} queries, {int(true.sum())} true false negatives; "
          f"β = {args.beta}")
    print("| T | filtered | precision | recall | queries with no candidate left |")
    print("|---:|---:|---:|---:|---:|")
    for t in (float(x) for x in args.temperatures.split(",")):
        flagged = 1 / (1 + np.exp(-m / t)) > 1 / (1 + np.exp(-m_pos / t)) - args.beta
        left = pd.Series(~flagged).groupby(queries).sum()
        print(f"| {t:g} | {flagged.mean() * 100:.1f} % | {true[flagged].mean():.3f} | {flagged[true].mean():.3f} | "
              f"{(left == 0).mean() * 100:.1f} % |")


if __name__ == "__main__":
    main()
