"""Labelled judge-training records from the demo world's ground truth.

The demo's judge is a tiny model trained here (`unime train judge`), standing in for the paper's
Qwen2.5-VL-7B. Its labels come from the world's scene annotations, never from the embedder being
mined for: for each training query,
- `Yes`: its labelled positive, plus (up to `extra_positives`) other same-task candidates whose
  ground-truth relevance is 1.0 — exactly the partial captions that make false negatives, so the judge
  learns that they satisfy the query;
- `No`: `negatives_per_query` same-task candidates with relevance < `no_below`, half of them the most
  relevant such candidates (hard) and half at random.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from unime.data.items import Record
from unime.data.synth import World


def judge_training_records(world: World, *, negatives_per_query: int = 4, extra_positives: int = 1,
                           no_below: float = 1.0, seed: int = 0) -> list[Record]:
    rng = np.random.default_rng(seed)
    by_task: dict[str, list[Record]] = defaultdict(list)
    for rec in world.records:
        by_task[rec.dataset].append(rec)
    out: list[Record] = []
    for task, recs in sorted(by_task.items()):
        pool = list({r.positive.key: r.positive for r in recs}.values())
        for rec in recs:
            rel = np.asarray(world.relevances(rec.query, pool), dtype=float)
            yes = [i for i in np.flatnonzero(rel >= 1.0) if pool[i].key != rec.positive.key]
            no = np.flatnonzero(rel < no_below)
            if len(no) == 0:
                continue
            n_hard = negatives_per_query // 2
            hard = list(no[np.argsort(-rel[no], kind="stable")][:n_hard])
            rest = [i for i in no if i not in set(hard)]
            n_rand = min(negatives_per_query - len(hard), len(rest))
            rand = list(rng.choice(rest, size=n_rand, replace=False)) if n_rand > 0 else []
            negatives = [pool[i] for i in hard + rand]
            out.append(Record(query=rec.query, positive=rec.positive, negatives=negatives, dataset=task,
                              id=f"{rec.id}-judge"))
            for j, i in enumerate(rng.permutation(yes)[:extra_positives]):
                out.append(Record(query=rec.query, positive=pool[i], negatives=negatives, dataset=task,
                                  id=f"{rec.id}-judge-fn{j}"))
    return out
