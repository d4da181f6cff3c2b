"""`unime mine --backend oracle`: the generated world's ground truth in place of the judge (a diagnostic)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from unime.data.io import read_records, write_records
from unime.mining.backends import JudgeSpec, make_backend


@pytest.fixture(scope="module")
def world_subset(tmp_path_factory, tiny_world_dir):
    root = tmp_path_factory.mktemp("oracle")
    world_dir = tiny_world_dir(0)
    keep, seen = [], {}
    for r in read_records(world_dir / "train" / "records.jsonl"):
        if seen.get(r.dataset, 0) < 8 and r.dataset in ("shape_cls", "t2i", "i2t", "modify", "refer_grounding"):
            keep.append(r)
            seen[r.dataset] = seen.get(r.dataset, 0) + 1
    subset = root / "subset.jsonl"
    write_records(keep, subset)
    return world_dir, subset, keep


def test_oracle_scores_are_the_world_relevance(world_subset):
    world_dir, _, keep = world_subset
    backend = make_backend("oracle", JudgeSpec(path=str(world_dir)))
    rec = next(r for r in keep if r.dataset == "shape_cls")
    others = [r.positive for r in keep if r.dataset == "shape_cls" and r.positive.text != rec.positive.text]
    images = [r.positive for r in keep if r.dataset == "t2i"][:1]
    assert others and images
    (scores,) = backend.score_groups([(rec.query, [rec.positive, *others, *images])])
    # a classification query: its own answer fully satisfies it, another answer and an image do not
    assert scores.dtype.name == "float64" and scores.tolist() == [1.0] + [0.0] * (len(others) + len(images))
    assert backend.stats()["pairs"] == 1 + len(others) + len(images)


def test_mining_with_the_oracle_filters_exactly_the_relevant_candidates(world_subset, tmp_path, tiny_model_dir):
    from unime.data.synth import World
    from unime.mining.config import MineConfig
    from unime.mining.pipeline import run_mining

    world_dir, subset, keep = world_subset
    out = tmp_path / "mined"
    beta = 0.01
    run_mining(MineConfig(records=str(subset), embedder=tiny_model_dir("qwen2_vl"), judge=str(world_dir),
                          backend="oracle", out=str(out), data_root=str(world_dir), k=12, count=3, beta=beta,
                          shard_size=4, device="cpu", audit=True, world=str(world_dir), audit_threshold=0.5))
    world = World.load(world_dir)
    rows = pq.read_table(out / "audit.parquet").to_pylist()
    assert rows and all(r["judge_score"] == r["relevance"] for r in rows)
    # the false-negative filter flags a candidate exactly when its relevance is within beta of the positive's
    for r in rows:
        assert r["false_negative"] == (r["relevance"] > r["positive_relevance"] - beta)
    assert any(r["false_negative"] for r in rows) and not all(r["false_negative"] for r in rows)
    mined = {r.id: r for r in read_records(out / "mined.parquet")}
    assert set(mined) <= {r.id for r in keep}
    for rid, m in mined.items():
        assert m.positive_score == pytest.approx(world.relevance(m.query, m.positive)) == 1.0
        for neg, s in zip(m.negatives, m.negative_scores):
            assert s == pytest.approx(world.relevance(m.query, neg)) and s <= 1.0 - beta
    audit = json.loads((out / "audit.json").read_text())
    assert 0 < audit["false_negatives"] < audit["candidates"]  # both kinds retrieved: the filter had work
    assert audit["auc_judge_score"] == 1.0 and audit["at_beta"]["precision"] == 1.0
