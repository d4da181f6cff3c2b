"""`unime.mining.stages`: how a judge shard's groups are formed (the stages end to end: test_mining_pipeline)."""

from __future__ import annotations

import json

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


def test_the_audit_rows_are_columns_read_and_written_as_the_row_dicts_were(tmp_path):
    import pyarrow.parquet as pq

    from unime.mining.config import MineConfig
    from unime.mining.stages import run_sampling, write_outputs

    pool = [Item(text=f"candidate {i}", images=[f"img/{i}.png"] if i % 2 else []) for i in range(4)]
    records = [Record(query=Item(text="q0"), positive=pool[0], id="r0", dataset="a"),
               Record(query=Item(text="q1"), positive=pool[1], id="r1", dataset="b")]
    data = MiningInputs(records=records, pool=pool, pool_index={p.key: i for i, p in enumerate(pool)}, skips=None,
                        fingerprints={}, images_hashed=0, seconds=0.0)
    retrieval = RetrievalResult(candidate_ids=[np.array([2, 3]), np.array([0])],
                                candidate_sims=[np.array([0.5, 0.25], np.float32), np.array([0.125], np.float32)],
                                positive_sims=np.array([0.75, 0.5], np.float32), n_above_positive=np.zeros(2, np.int64))
    scores = {0: np.array([0.9, 0.95, 0.2]), 1: np.array([0.8, 0.1])}  # query 0's first candidate: a false negative
    c = MineConfig(records="r.jsonl", embedder="e", judge="j", out=str(tmp_path), count=1, beta=0.0)
    _, rows, _ = run_sampling(c, data, retrieval, scores, {})
    assert isinstance(rows.column("judge_score"), np.ndarray)  # a million rows at 20,000 records: no dict each
    expected = [
        {"query_index": 0, "record_id": "r0", "dataset": "a", "rank": 0, "pool_index": 2,
         "candidate_text": "candidate 2", "candidate_image": "", "similarity": 0.5, "positive_similarity": 0.75,
         "judge_score": 0.95,
         "positive_score": 0.9, "false_negative": True, "times_sampled": 0, "status": "ok"},
        {"query_index": 0, "record_id": "r0", "dataset": "a", "rank": 1, "pool_index": 3,
         "candidate_text": "candidate 3", "candidate_image": "img/3.png", "similarity": 0.25,
         "positive_similarity": 0.75, "judge_score": 0.2,
         "positive_score": 0.9, "false_negative": False, "times_sampled": 1, "status": "ok"},
        {"query_index": 1, "record_id": "r1", "dataset": "b", "rank": 0, "pool_index": 0,
         "candidate_text": "candidate 0", "candidate_image": "", "similarity": 0.125, "positive_similarity": 0.5,
         "judge_score": 0.1,
         "positive_score": 0.8, "false_negative": False, "times_sampled": 1, "status": "ok"}]
    assert [dict(r) for r in rows] == expected and len(rows) == 3 and dict(rows[-1]) == expected[-1]
    assert [type(v) for v in rows[0].values()] == [type(v) for v in expected[0].values()]
    write_outputs(tmp_path, [], rows, {})
    assert pq.read_table(tmp_path / "audit.parquet").to_pylist() == expected
    rows[1]["relevance"] = 0.5  # the demo audit adds its columns a cell at a time
    assert rows[1]["relevance"] == 0.5 and rows[0]["relevance"] is None


def test_the_exact_scan_count_is_in_the_retrieval_record_stats_and_report(tmp_path):
    """An hnsw retrieval whose queries' positives rank deep: the number finished by the exact scan was only logged;
    it is in the retrieval stage's record of manifest.json (stats.json carries that record) and in report.md.
    Pool 3000, k 10 (fetch 26 with the default overfetch 16), hnsw_m 4: searched at 26 and 104, then scanned (a
    search of 416 would score more than the pool); positives at ranks 0, 3, 60 have at least 104 - 61 >= 10
    candidates below them by then, those at 400 and 2500 are scanned: 16 of 40 queries."""
    from unime.mining.config import MineConfig
    from unime.mining.manifest import Manifest
    from unime.mining.report import write_report
    from unime.mining.sampling import SamplingStats
    from unime.mining.stages import retrieve

    rng = np.random.default_rng(5)

    def unit(n):
        v = rng.normal(size=(n, 16)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    pool_vecs, q = unit(3000), unit(40)
    ranks = [[0, 3, 60, 400, 2500][i % 5] for i in range(40)]
    pos = [int(np.argsort(-(pool_vecs @ q[i]))[ranks[i]]) for i in range(40)]
    pool = [Item(text=f"candidate {i}") for i in range(3000)]
    records = [Record(query=Item(text=f"query {i}"), positive=pool[p], id=f"r{i}") for i, p in enumerate(pos)]
    data = MiningInputs(records=records, pool=pool, pool_index={p.key: i for i, p in enumerate(pool)}, skips=None,
                        fingerprints={}, images_hashed=0, seconds=0.0)

    class Vectors:  # the embedding cache's encoder, its vectors given: queries, positives, pool (`retrieval_encoder`)
        def vectors(self, rows):
            return np.concatenate([q, pool_vecs[pos], pool_vecs])[rows]

    c = MineConfig(records="r.jsonl", embedder="e", judge="j", out=str(tmp_path), index="hnsw", hnsw_m=4,
                   ef_search=16, k=10)
    manifest = Manifest(tmp_path / "manifest.json")
    res = retrieve(c, data, manifest, "h", Vectors(), np.arange(3080), {}, tmp_path / "retrieval.parquet", 0.0, 0)
    assert res.n_exact_scan == 16 == sum(r >= 400 for r in ranks)
    stage = json.loads((tmp_path / "manifest.json").read_text())["stages"]["retrieval"]
    assert stage["exact_scan"] == {"queries": 16, "of": 40}
    stats = {"records": 40, "mined": 0, "pool_size": 3000, "retrieval": stage, "config_hash": "h",
             "config": {"k": 10, "index": "hnsw", "judge": "j", "backend": "local", "embedder": "e", "beta": 0.01,
                        "interval": 2, "count": 3, "fallback": "random", "seed": 0},
             "sampling": SamplingStats().to_dict(), "sampling_table": "", "skipped_records": {"total": 0},
             "outputs": {"json": "written"}, "times_this_run": {"search": 1.0}, "judge_shard_seconds": 0.0,
             "judge_shards_resumed": 0, "judge": {}}
    write_report(tmp_path, stats, [], None)
    assert json.loads((tmp_path / "stats.json").read_text())["retrieval"]["exact_scan"] == {"queries": 16, "of": 40}
    assert "- exact scan: 16 of 40 queries (40.0 %) had fewer than K candidates below their positive in the " \
           "deepest hnsw search worth doing and were finished by an exact scan of the index's vectors" \
           in (tmp_path / "report.md").read_text()


def test_a_bad_score_names_the_record_by_its_line_in_the_file_or_its_index_in_memory(tmp_path):
    """QA: mining named an id-less record "index 2" (1-based, no line): in a file with blank lines that is not its
    line. It names it as its reader does (`record line 4`), and one given in memory as Python indexes it
    (`records[1]`)."""
    import pytest

    from unime.data.io import read_records
    from unime.errors import DataError
    from unime.mining.config import MineConfig
    from unime.mining.stages import run_sampling

    path = tmp_path / "r.jsonl"
    rows = [{"query": {"text": f"q{i}"}, "positive": {"text": f"candidate {i}"}} for i in range(2)]
    path.write_text("\n" + json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")  # lines 2 and 4
    pool = [Item(text=f"candidate {i}") for i in range(3)]
    retrieval = RetrievalResult(candidate_ids=[np.array([2]), np.array([2])],
                                candidate_sims=[np.array([0.5], np.float32), np.array([0.5], np.float32)],
                                positive_sims=np.array([0.75, 0.5], np.float32), n_above_positive=np.zeros(2, np.int64))
    scores = {0: np.array([0.9, 0.2]), 1: np.array([0.8, np.nan])}  # the second record's candidate: no number
    c = MineConfig(records=str(path), embedder="e", judge="j", out=str(tmp_path / "out"), count=1)
    in_memory = [Record(query=Item(text=r["query"]["text"]), positive=pool[i]) for i, r in enumerate(rows)]
    for records, name in [(read_records(path), "line 4"), (in_memory, "records[1]")]:
        data = MiningInputs(records=records, pool=pool, pool_index={p.key: i for i, p in enumerate(pool)}, skips=None,
                            fingerprints={}, images_hashed=0, seconds=0.0)
        with pytest.raises(DataError) as caught:
            run_sampling(c, data, retrieval, scores, {})
        assert str(caught.value).startswith(f"{path}, record {name}, field 'candidate_scores[0]': score ")
