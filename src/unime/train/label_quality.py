"""Checks on what an embedder is about to learn from: which loss fits the records, and whether the judge
labels of mined records are real judgements or the mining fallback's placeholders.

- `choose_loss(records)`: with ``--loss auto`` (the default) plain pairs (no negatives) train with in-batch
  InfoNCE and no hard negatives; records with judged negatives train with the released soft-label loss
  (symmetric KL) on up to 8 of them; negatives without judge scores train with InfoNCE on them plus
  in-batch negatives.
- `fallback_share(records, source)`: the share of mined records whose negatives came from the fallback
  (no candidate survived the false-negative filter: random candidates, every score 1.0). Read from the
  mining run's `stats.json` beside the records when there is one, else recognised in the records. A soft
  loss on such records pulls the query *towards* random candidates scored 1.0, above the positive;
  `train embedder` refuses records mined mostly that way unless told otherwise.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from unime.data.items import Record
from unime.mining.sampling import FALLBACK_SCORE

log = logging.getLogger(__name__)

DEFAULT_SOFT_NEGATIVES = 8       # the paper's k
FALLBACK_REFUSE_SHARE = 0.5      # a soft loss refuses records mined mostly by the fallback
FALLBACK_WARN_SHARE = 0.10       # and warns above this (the paper: < 1 %)


@dataclass(frozen=True)
class LossChoice:
    loss: str
    hard_negatives: int
    reason: str


def choose_loss(records: Sequence[Record], hard_negatives: int | None = None) -> LossChoice:
    """The loss `--loss auto` picks for these records (see the module doc)."""
    n_neg = min((len(r.negatives) for r in records), default=0)
    if n_neg == 0:
        k = 0 if hard_negatives is None else hard_negatives
        return LossChoice("infonce", k, "records without hard negatives (plain pairs): in-batch InfoNCE")
    k = min(DEFAULT_SOFT_NEGATIVES, n_neg) if hard_negatives is None else hard_negatives
    scored = all(r.positive_score is not None and r.negative_scores is not None for r in records)
    if scored:
        return LossChoice("symmetric_kl", k, f"judge-scored records: soft labels (symmetric KL) over {k} negatives")
    return LossChoice("infonce", k, f"negatives without judge scores: InfoNCE over {k} hard + in-batch negatives")


def is_fallback_record(rec: Record) -> bool:
    """Negatives that all carry exactly the fallback score above a positive scored lower (what the
    mining fallback writes; a judge's softmax practically never outputs exactly 1.0 for every one)."""
    scores = rec.negative_scores or []
    return bool(scores) and all(s == FALLBACK_SCORE for s in scores) and (rec.positive_score or 0.0) < FALLBACK_SCORE


def fallback_share(records: Sequence[Record], source: str | os.PathLike | None = None) -> tuple[float, int, str]:
    """(share, count, where the figure comes from) of fallback-mined records."""
    if source is not None and os.path.isfile(source):
        stats = Path(source).resolve().parent / "stats.json"
        if stats.is_file():
            try:
                counts = json.loads(stats.read_text())["sampling"]["counts"]
                total = sum(int(v) for v in counts.values())
                mined = total - int(counts.get("dropped", 0))
                n = int(counts.get("fallback", 0))
                if mined > 0:
                    return n / mined, n, str(stats)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                pass
    n = sum(is_fallback_record(r) for r in records)
    return (n / len(records) if records else 0.0), n, "the records' scores"
