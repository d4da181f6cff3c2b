"""Report metrics on hand-worked examples, and the judge audit of `unime mine --audit` on a demo world."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from unime.mining.report import (LOG_LOSS_CLIP, audit_metrics, filter_curve, log_loss_against_base_rate,
                                 mann_whitney_auc, media_swap_audit, roc_auc, spearman, within_query_audit,
                                 within_query_auc)


def test_auc_hand_worked_with_ties():
    labels = [1, 0, 1, 0, 0]
    scores = [0.9, 0.8, 0.5, 0.5, 0.1]
    # positive pairs (pos, neg): (0.9 > all 3) = 3; (0.5: > 0.1, = 0.5, < 0.8) = 1 + 0.5 → 4.5 / 6
    assert mann_whitney_auc(labels, scores) == pytest.approx(4.5 / 6)
    assert roc_auc(labels, scores) == pytest.approx(4.5 / 6)
    assert roc_auc([1, 1], [0.1, 0.2]) is None
    rng = np.random.default_rng(0)
    y, s = rng.random(200) < 0.3, rng.normal(size=200).round(1)
    assert mann_whitney_auc(y, s) == pytest.approx(roc_auc(y, s), abs=1e-12)


def test_within_query_auc_hand_worked_is_not_the_pooled_auc():
    # query a: relevant 0.9, irrelevant 0.8 and 0.95 -> pairs (0.9>0.8) ok, (0.9<0.95) wrong: 1/2
    # query b: relevant 0.1 (tie with one irrelevant 0.1, above 0.0) -> 0.5 + 1 = 1.5 of 2
    # query c: only irrelevant candidates -> no pair
    q = ["a", "a", "a", "b", "b", "b", "c"]
    y = [True, False, False, True, False, False, False]
    s = [0.9, 0.8, 0.95, 0.1, 0.1, 0.0, 0.5]
    out = within_query_auc(q, y, s)
    assert out["pairs"] == 4 and out["queries"] == 2
    assert out["auc"] == pytest.approx(2.5 / 4)
    assert out["mean_query_auc"] == pytest.approx((0.5 + 0.75) / 2)
    # pooled over queries the same scores give another number: 0.9 beats 4 of (0.8, 0.95, 0.1, 0.0, 0.5),
    # 0.1 beats 0.0 and ties 0.1 -> 5.5 of 10
    assert roc_auc(y, s) == pytest.approx(5.5 / 10)


def test_within_query_audit_counts_the_positive_once_per_query():
    rows = [  # one query of dataset d: positive scored 0.7; candidates: a false negative 0.6, true negatives 0.65, 0.1
        {"dataset": "d", "query_index": 0, "positive_score": 0.7, "positive_relevance": 1.0,
         "relevance": 1.0, "judge_score": 0.6, "similarity": 0.2},
        {"dataset": "d", "query_index": 0, "positive_score": 0.7, "positive_relevance": 1.0,
         "relevance": 0.5, "judge_score": 0.65, "similarity": 0.3},
        {"dataset": "d", "query_index": 0, "positive_score": 0.7, "positive_relevance": 1.0,
         "relevance": 0.0, "judge_score": 0.1, "similarity": 0.1},
    ]
    out = within_query_audit(rows)
    d = out["by_dataset"]["d"]
    # relevant {0.7, 0.6} vs irrelevant {0.65, 0.1}: 0.7>0.65, 0.7>0.1, 0.6<0.65, 0.6>0.1 -> 3/4
    assert d["judge"]["auc"] == pytest.approx(0.75) and d["judge"]["pairs"] == 4
    # candidates only: {0.6} vs {0.65, 0.1} -> 1/2; similarity {0.2} vs {0.3, 0.1} -> 1/2
    assert d["judge_candidates_only"]["auc"] == pytest.approx(0.5)
    assert d["similarity_candidates_only"]["auc"] == pytest.approx(0.5)
    assert out["mean_over_datasets"] == pytest.approx(0.75) and out["min_over_datasets"] == pytest.approx(0.75)
    # log loss on the same pairs: labels (1, 1, 0, 0), scores (0.7, 0.6, 0.65, 0.1); base rate 1/2 -> level ln 2
    expected = -(math.log(0.7) + math.log(0.6) + math.log(1 - 0.65) + math.log(1 - 0.1)) / 4
    for ll in (d["log_loss"], out["log_loss"]):
        assert ll["pairs"] == 4 and ll["base_rate"] == pytest.approx(0.5)
        assert ll["log_loss"] == pytest.approx(expected)
        assert ll["base_rate_log_loss"] == pytest.approx(math.log(2))
        assert ll["ratio"] == pytest.approx(expected / math.log(2))


def test_log_loss_at_the_base_rate_equals_its_level_and_stays_finite_at_hard_scores():
    # a constant score at the base rate 1/4 reaches the level H(1/4) exactly
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    ll = log_loss_against_base_rate([True, False, False, False], [0.25] * 4)
    assert ll["log_loss"] == pytest.approx(h) and ll["base_rate_log_loss"] == pytest.approx(h)
    assert ll["ratio"] == pytest.approx(1.0)
    # a wrong hard score is clipped, not infinite; labels of one class have no level to compare with
    ll = log_loss_against_base_rate([True, True], [1.0, 0.0])
    assert ll["log_loss"] == pytest.approx(-math.log(LOG_LOSS_CLIP) / 2)
    assert ll["base_rate_log_loss"] == 0.0 and ll["ratio"] is None
    assert log_loss_against_base_rate([], [])["log_loss"] is None


class _FakeJudge:
    """score_groups of a judge that reads the query's image (the colour drawn in it) or only the text."""

    COLOUR = {"a.png": "red", "b.png": "blue", "c.png": "green"}

    def __init__(self, reads_image: bool):
        self.reads_image, self.groups = reads_image, []

    def score(self, query, cand) -> float:
        if self.reads_image:
            return 1.0 if cand.text == self.COLOUR[query.images[0]] else 0.0
        return 0.9 if cand.text == "red" else 0.1

    def score_groups(self, groups):
        self.groups += groups
        return [np.array([self.score(q, c) for c in cands]) for q, cands in groups]


def _swap_fixture(judge):
    """Three image queries of dataset d (positive = the colour in the image, candidates = the two other
    colours, true negatives), one text-only query of dataset t; audit rows scored by `judge`."""
    from unime.data.items import Item
    from unime.data.items import Record

    pool = [Item("red"), Item("blue"), Item("green")]
    records, rows = [], []
    for qi, img in enumerate(["a.png", "b.png", "c.png"]):
        q = Item("<|image_1|>\nwhat colour?", images=(img,))
        pos = next(p for p in pool if p.text == _FakeJudge.COLOUR[img])
        records.append(Record(query=q, positive=pos, negatives=[], dataset="d"))
        for pi, cand in enumerate(pool):
            if cand is not pos:
                rows.append({"dataset": "d", "query_index": qi, "pool_index": pi, "relevance": 0.0,
                             "positive_relevance": 1.0, "positive_score": judge.score(q, pos),
                             "judge_score": judge.score(q, cand)})
    records.append(Record(query=Item("a red thing"), positive=pool[0], negatives=[], dataset="t"))
    rows.append({"dataset": "t", "query_index": 3, "pool_index": 1, "relevance": 0.0, "positive_relevance": 1.0,
                 "positive_score": 0.5, "judge_score": 0.5})
    return records, pool, rows


def test_media_swap_control_separates_a_judge_that_reads_the_image_from_one_that_reads_text():
    seeing = _FakeJudge(reads_image=True)
    out = media_swap_audit(*_swap_fixture(seeing), seeing, per_dataset=10)
    assert set(out["by_dataset"]) == {"d"}  # the text-only query has no media to swap
    d = out["by_dataset"]["d"]
    # own image: positive 1 > both negatives 0 -> AUC 1. Swapped: each query shows the next one's colour, so
    # its positive scores 0, one negative 1 (wrong), the other 0 (tie, 1/2) -> 0.5 of 2 pairs = 0.25
    assert d["queries"] == 3 and d["auc_own_media"] == pytest.approx(1.0)
    assert d["auc_swapped_media"] == pytest.approx(0.25)
    # 3 queries x 3 scores; per query the positive and one negative change by 1 -> 6 of 9
    assert d["mean_abs_score_change"] == pytest.approx(6 / 9)
    # every re-scored query got another query's image, the text and the candidates unchanged
    records = _swap_fixture(seeing)[0]
    assert len(seeing.groups) == 3
    for (q, cands), rec in zip(seeing.groups, records):
        assert q.text == rec.query.text and q.images != rec.query.images and cands[0] == rec.positive
    blind = _FakeJudge(reads_image=False)
    out = media_swap_audit(*_swap_fixture(blind), blind, per_dataset=10)
    d = out["by_dataset"]["d"]
    assert d["auc_own_media"] == d["auc_swapped_media"] and d["mean_abs_score_change"] == 0.0
    assert out["mean_auc_swapped_media"] == d["auc_swapped_media"]


def test_filter_curve_and_spearman_hand_worked():
    labels = [True, False, True, False]
    scores = [0.95, 0.90, 0.60, 0.10]
    pos = [0.92, 0.92, 0.92, 0.50]
    curve = {p["beta"]: p for p in filter_curve(labels, scores, pos, betas=(0.0, 0.05, 0.5))}
    # β=0: flagged s > s_pos → only 0.95 (TP)
    assert curve[0.0] == {"beta": 0.0, "flagged": 1, "true_positives": 1, "precision": 1.0, "recall": 0.5}
    # β=0.05: 0.95, 0.90 flagged → 1 TP of 2
    assert curve[0.05]["precision"] == 0.5 and curve[0.05]["recall"] == 0.5
    # β=0.5: 0.95, 0.90, 0.60 (> 0.42) and 0.10 (> 0.0) → all
    assert curve[0.5]["flagged"] == 4 and curve[0.5]["recall"] == 1.0
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    m = audit_metrics([1.0, 0.2, 1.0, 0.0], scores, pos, [0.3, 0.2, 0.1, 0.0], beta=0.05, betas=(0.0,))
    assert m["false_negatives"] == 2 and m["at_beta"]["beta"] == 0.05 and len(m["curve"]) == 2
    assert m["auc_judge_score"] == pytest.approx(roc_auc(labels, scores))


def test_mine_audit_on_the_demo_world(tmp_path, tiny_model_dir, tiny_world_dir):
    from unime.data.io import read_records, write_records
    from unime.data.synth import World
    from unime.mining.config import MineConfig
    from unime.mining.pipeline import run_mining

    world_dir = tiny_world_dir(0)
    records = read_records(world_dir / "train" / "records.jsonl")
    # two records of each of a few datasets keep the test fast
    keep, seen = [], {}
    for r in records:
        if seen.get(r.dataset, 0) < 2 and r.dataset in ("shape_cls", "i2t", "t2i", "modify", "refer_grounding"):
            keep.append(r)
            seen[r.dataset] = seen.get(r.dataset, 0) + 1
    subset = tmp_path / "subset.jsonl"
    write_records(keep, subset)
    out = tmp_path / "mined"
    cfg = MineConfig(records=str(subset), embedder=tiny_model_dir("qwen2_vl"), judge=tiny_model_dir("qwen2_vl"),
                     out=str(out), data_root=str(world_dir), k=5, count=3, shard_size=4, device="cpu",
                     audit=True, world=str(world_dir), audit_threshold=0.5)
    run_mining(cfg)
    audit = json.loads((out / "audit.json").read_text())
    rows = pq.read_table(out / "audit.parquet").to_pylist()
    world = World.load(world_dir)
    pool = {r.positive.key: r.positive for r in keep}
    pool_items = list(pool.values())
    for row in rows:
        rec = keep[row["query_index"]]
        assert row["relevance"] == pytest.approx(world.relevance(rec.query, pool_items[row["pool_index"]]))
        assert row["positive_relevance"] == pytest.approx(world.relevance(rec.query, rec.positive))
    labels = [r["relevance"] >= 0.5 for r in rows]
    assert audit["candidates"] == len(rows) and audit["false_negatives"] == sum(labels)
    assert 0 < sum(labels) < len(rows)  # both classes present: the AUC below is a number
    assert audit["auc_judge_score"] == roc_auc(labels, [r["judge_score"] for r in rows])
    at = audit["at_beta"]
    flagged = [r["false_negative"] for r in rows]
    assert at["flagged"] == sum(flagged) and at["true_positives"] == sum(f and y for f, y in zip(flagged, labels))
    report = (out / "report.md").read_text()
    assert "Judge audit" in report and "plots/audit_beta.png" in report and (out / "plots" / "audit_beta.png").is_file()
    # the media-swap control re-scored the image queries (t2i's are text) with another query's image
    swap = audit["media_swap"]["by_dataset"]
    assert set(swap) == {"shape_cls", "i2t", "modify", "refer_grounding"}
    assert all(v["queries"] == 2 and v["auc_own_media"] is not None for v in swap.values())
    assert "### Media-swap control" in report
