"""Labelled judge-training records from the demo world's ground truth, on the distribution the judge judges.

The demo's judge is a tiny model trained here (`unime train judge`), standing in for the paper's
Qwen2.5-VL-7B. Mining (`unime mine`) shows it, for each training query, candidates retrieved from the
*global pool*: the de-duplicated union of every training record's positive, all tasks mixed
(`unime.mining.retrieval.build_pool`). For colour / count / shape queries only a few percent of those
candidates are the same task's answers, so a judge trained only on same-task negatives is asked at
mining time about items it never saw labelled. Its labels therefore come from that same global pool,
and from the world's scene annotations only, never from the embedder being mined for. For each
training query:

- `No`: `negatives_per_query` pool items with ground-truth relevance < `no_below`, filled round-robin
  from three sources (a source that runs dry leaves its turn to the next):
    1. same-task hard: the same task's answers with the highest relevance (partial matches), among a
       seeded sample of `task_sample` of them when the task has more;
    2. global hard: the highest-relevance items of a seeded random sample of `global_sample` pool items
       (scoring every (query, pool item) pair would be quadratic in the world's size);
    3. global random: random items of that sample;
- `Yes`: its labelled positive, plus (up to `extra_positives`) pool items of relevance 1.0 found among
  the same-task answers and the sample: exactly the true false negatives mining meets, so the judge
  learns that they satisfy the query. Each becomes a record with the same negatives.

Deterministic for a seed: query `i` draws from `np.random.default_rng((seed, i))`, independent of the others.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from unime.data.items import Item, Record
from unime.data.synth import World
from unime.mining.retrieval import build_pool

SOURCES = ("task_hard", "global_hard", "global_random")


def judge_training_records(world: World, *, negatives_per_query: int = 4, extra_positives: int = 1,
                           no_below: float = 1.0, global_sample: int = 96, task_sample: int = 64, seed: int = 0,
                           stats: dict | None = None) -> list[Record]:
    """The judge's labelled records (see the module doc). `stats`, when given, receives the counts per
    negative source, how many negatives are not an answer of the query's own task, and the extra Yes."""
    if negatives_per_query < 1:
        raise ValueError("negatives_per_query must be >= 1")
    records = world.records
    pool: list[Item] = build_pool(records)  # the pool mining retrieves from
    keys = [it.key for it in pool]
    key_index = {k: i for i, k in enumerate(keys)}
    members: dict[str, dict[int, None]] = defaultdict(dict)  # pool indices of each task's answers, in order
    for rec in records:
        members[rec.dataset].setdefault(key_index[rec.positive.key])
    task_members = {t: list(m) for t, m in members.items()}
    task_sets = {t: set(m) for t, m in members.items()}
    counts: Counter = Counter()
    out: list[Record] = []
    order = sorted(range(len(records)), key=lambda i: records[i].dataset)  # grouped by task, stable
    for qi in order:
        rec = records[qi]
        rng = np.random.default_rng((seed, qi))
        pos = key_index[rec.positive.key]
        same = np.asarray(task_members[rec.dataset])
        if len(same) > task_sample:
            same = rng.choice(same, size=task_sample, replace=False)
        sample = rng.choice(len(pool), size=min(global_sample, len(pool)), replace=False)
        query = rec.query.key
        rel_same = np.asarray(world.relevances(query, [keys[i] for i in same]), dtype=float)
        rel_sample = np.asarray(world.relevances(query, [keys[i] for i in sample]), dtype=float)

        def hardest(idx: np.ndarray, rel: np.ndarray) -> list[int]:
            no = rel < no_below
            return [int(i) for i in idx[no][np.argsort(-rel[no], kind="stable")]]

        queues = {"task_hard": hardest(same, rel_same), "global_hard": hardest(sample, rel_sample),
                  "global_random": [int(i) for i in rng.permutation(sample[rel_sample < no_below])]}
        chosen: list[int] = []
        sources: list[str] = []
        taken = {pos}
        while len(chosen) < negatives_per_query and any(queues.values()):
            for src in SOURCES:
                q = queues[src]
                while q and q[0] in taken:
                    q.pop(0)
                if q and len(chosen) < negatives_per_query:
                    i = q.pop(0)
                    taken.add(i)
                    chosen.append(i)
                    sources.append(src)
        if not chosen:
            counts["queries_without_negatives"] += 1
            continue
        counts.update(sources)
        own = task_sets[rec.dataset]
        counts["other_task"] += sum(i not in own for i in chosen)
        counts["negatives"] += len(chosen)
        negatives = [pool[i] for i in chosen]
        out.append(Record(query=rec.query, positive=rec.positive, negatives=negatives, dataset=rec.dataset,
                          id=f"{rec.id}-judge"))
        yes = sorted({int(i) for i in np.concatenate([same[rel_same >= 1.0], sample[rel_sample >= 1.0]])} - {pos})
        for j, i in enumerate(rng.permutation(np.asarray(yes, dtype=np.int64))[:extra_positives]):
            counts["extra_yes"] += 1
            counts["extra_yes_other_task"] += int(i) not in own
            out.append(Record(query=rec.query, positive=pool[int(i)], negatives=negatives, dataset=rec.dataset,
                              id=f"{rec.id}-judge-fn{j}"))
    if stats is not None:
        stats.update({"records": len(out), "queries": len(records), "pool": len(pool),
                      "global_sample": global_sample, "task_sample": task_sample,
                      **{k: int(v) for k, v in counts.items()}})
    return out
