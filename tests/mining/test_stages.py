"""`unime.mining.stages`: how a judge shard's groups are formed (the stages end to end: test_mining_pipeline)."""

from __future__ import annotations

import numpy as np

from unime.data.items import Item, Record
from unime.mining.inputs import MiningInputs
from unime.mining.retrieval import RetrievalResult
from unime.mining.stages import shard_groups


def test_a_shard_merges_identical_queries_and_scores_each_distinct_pair_once():
    q1, q2 = Item(text="a red circle"), Item(text="a blue star")
    pool = [Item(text=f"candidate {i}") for i in range(5)]
    records = [Record(query=q1, positive=pool[0]), Record(query=q2, positive=pool[1]),
               Record(query=q1, positive=pool[2]), Record(query=q2, positive=pool[3])]
    data = MiningInputs(records=records, pool=pool, pool_index={p.key: i for i, p in enumerate(pool)}, skips=None,
                        fingerprints={}, images_hashed=0, seconds=0.0)
    ids = [np.array([1, 2]), np.array([0, 4]), np.array([1, 3]), np.array([4, 0])]
    retrieval = RetrievalResult(candidate_ids=ids, candidate_sims=[np.zeros(2, np.float32)] * 4,
                                positive_sims=np.zeros(4, np.float32), n_above_positive=np.zeros(4, np.int64))
    idx, groups = shard_groups(data, retrieval, 0, 3)  # records 0, 1, 2: q1 twice
    assert idx == [0, 1, 2]
    assert [(q.text, [c.text for c in cands]) for q, cands in groups] == [
        ("a red circle", ["candidate 0", "candidate 1", "candidate 2", "candidate 3"]),  # 0+[1,2], then 2+[1,3]
        ("a blue star", ["candidate 1", "candidate 0", "candidate 4"])]
    idx, groups = shard_groups(data, retrieval, 1, 3)  # the last, short shard
    assert idx == [3] and [[c.text for c in cands] for _, cands in groups] == [["candidate 3", "candidate 4",
                                                                                 "candidate 0"]]
