"""Stage C (SPEC §1.4): false-negative filter, cyclical order, negative sampling, stats."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unime.errors import DataError
from unime.mining.sampling import (
    SampleResult,
    SamplingStats,
    cyclical_order,
    false_negative_mask,
    sample_negatives,
)


def rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------------------
# false_negative_mask


def test_false_negative_mask_threshold():
    # positive 0.9, beta 0.1 → α = 0.8 ; s > 0.8 is a false negative
    mask = false_negative_mask([0.95, 0.81, 0.79, 0.2, 0.9], 0.9, beta=0.1)
    assert mask.tolist() == [True, True, False, False, True]


def test_false_negative_mask_equality_is_kept():
    # values exactly representable in binary: α = 0.75 − 0.25 = 0.5 exactly; s == α must be kept
    mask = false_negative_mask([0.5, 0.5000001, 0.4999999], 0.75, beta=0.25)
    assert mask.tolist() == [False, True, False]


def test_false_negative_mask_default_beta():
    # default β = 0.01 → α = s_pos − 0.01, computed the same way as the module (float subtraction)
    alpha = 0.6 - 0.01
    mask = false_negative_mask([alpha, np.nextafter(alpha, 1.0), 0.595, 0.585], 0.6)
    assert mask.tolist() == [False, True, True, False]


def test_false_negative_mask_nan_names_field():
    with pytest.raises(DataError) as e:
        false_negative_mask([0.1, float("nan"), 0.3], 0.5, source="mined.jsonl", record="q17")
    msg = str(e.value)
    assert e.value.field == "candidate_scores[1]"
    assert "mined.jsonl" in msg and "q17" in msg and "candidate_scores[1]" in msg
    with pytest.raises(DataError) as e:
        false_negative_mask([0.1], float("nan"))
    assert e.value.field == "positive_score"
    with pytest.raises(DataError) as e:
        false_negative_mask([0.1, math.inf], 0.5)
    assert e.value.field == "candidate_scores[1]"


# ---------------------------------------------------------------------------------------------
# cyclical_order


def test_cyclical_order_hand_worked():
    # n = 12, interval 5:
    #   offset 0: 0, 5, 10     offset 1: 1, 6, 11     offset 2: 2, 7
    #   offset 3: 3, 8         offset 4: 4, 9
    assert cyclical_order(12, 5) == [0, 5, 10, 1, 6, 11, 2, 7, 3, 8, 4, 9]
    # n = 7, interval 3: offset 0: 0, 3, 6 ; offset 1: 1, 4 ; offset 2: 2, 5
    assert cyclical_order(7, 3) == [0, 3, 6, 1, 4, 2, 5]
    # interval 1 = retrieval order; interval larger than n = retrieval order as well
    assert cyclical_order(4, 1) == [0, 1, 2, 3]
    assert cyclical_order(3, 5) == [0, 1, 2]
    assert cyclical_order(0, 5) == []


@pytest.mark.parametrize("n,interval", [(1, 5), (12, 5), (50, 5), (49, 7), (10, 10), (13, 4)])
def test_cyclical_order_is_a_permutation(n, interval):
    order = cyclical_order(n, interval)
    assert sorted(order) == list(range(n))


def test_cyclical_order_rejects_bad_interval():
    with pytest.raises(ValueError):
        cyclical_order(5, 0)


# ---------------------------------------------------------------------------------------------
# sample_negatives


def test_sample_twelve_survivors_interval_five():
    # 12 candidates, all below α (positive 0.9, β 0.01 → α = 0.89), so 12 survivors in retrieval order.
    # Cyclical order of 12 with interval 5 (see test_cyclical_order_hand_worked) truncated to count = 10:
    #   [0, 5, 10, 1, 6, 11, 2, 7, 3, 8]
    ids = [f"c{i}" for i in range(12)]
    scores = [0.5 - 0.01 * i for i in range(12)]
    res = sample_negatives(ids, scores, 0.9, count=10, rng=rng())
    assert res.status == "ok"
    assert res.indices == [0, 5, 10, 1, 6, 11, 2, 7, 3, 8]
    assert res.ids == ["c0", "c5", "c10", "c1", "c6", "c11", "c2", "c7", "c3", "c8"]
    assert res.scores == pytest.approx([scores[i] for i in res.indices])
    assert (res.n_filtered, res.n_survivors) == (0, 12)


def test_sample_filters_then_cycles_over_survivors():
    # 15 candidates; those at retrieval ranks 0, 4 and 9 score above α = 0.8 − 0.01 = 0.79 → dropped.
    # Survivors (candidate indices): [1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 14]  (12 of them)
    # survivor positions in cyclical order (n = 12, interval 5), first 10: [0, 5, 10, 1, 6, 11, 2, 7, 3, 8]
    #   → candidates [1, 7, 13, 2, 8, 14, 3, 10, 5, 11]
    scores = [0.3] * 15
    for i in (0, 4, 9):
        scores[i] = 0.95
    res = sample_negatives(list(range(15)), scores, 0.8, count=10, rng=rng())
    assert res.status == "ok"
    assert res.indices == [1, 7, 13, 2, 8, 14, 3, 10, 5, 11]
    assert (res.n_filtered, res.n_survivors) == (3, 12)


def test_sample_repeats_when_few_survivors():
    # 5 candidates, ranks 1 and 3 are false negatives → survivors [0, 2, 4];
    # cyclical order of 3 with interval 5 is [0, 1, 2] → picked [0, 2, 4], repeated to length 10:
    #   [0, 2, 4, 0, 2, 4, 0, 2, 4, 0]
    ids = ["a", "fn1", "b", "fn2", "c"]
    scores = [0.1, 0.99, 0.2, 0.99, 0.3]
    res = sample_negatives(ids, scores, 0.7, count=10, rng=rng())
    assert res.status == "repeated"
    assert res.indices == [0, 2, 4, 0, 2, 4, 0, 2, 4, 0]
    assert res.ids == ["a", "b", "c", "a", "b", "c", "a", "b", "c", "a"]
    assert res.scores == pytest.approx([0.1, 0.2, 0.3, 0.1, 0.2, 0.3, 0.1, 0.2, 0.3, 0.1])
    assert (res.n_filtered, res.n_survivors) == (2, 3)


def _fifteen_with_false_negatives_at_0_4_9():
    scores = [0.3] * 15
    for i in (0, 4, 9):
        scores[i] = 0.95
    return list(range(15)), scores


def test_strategy_top_takes_the_first_survivors_in_retrieval_order():
    # survivors [1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 14]; top 10 = the first ten of them
    ids, scores = _fifteen_with_false_negatives_at_0_4_9()
    res = sample_negatives(ids, scores, 0.8, count=10, rng=rng(), strategy="top")
    assert res.status == "ok" and res.indices == [1, 2, 3, 5, 6, 7, 8, 10, 11, 12]
    # fewer survivors than count: the survivors in order, repeated
    res = sample_negatives(["a", "fn1", "b", "fn2", "c"], [0.1, 0.99, 0.2, 0.99, 0.3], 0.7, count=7, rng=rng(),
                           strategy="top")
    assert res.status == "repeated" and res.indices == [0, 2, 4, 0, 2, 4, 0]


def test_strategy_random_draws_distinct_survivors_with_the_seed():
    ids, scores = _fifteen_with_false_negatives_at_0_4_9()
    survivors = [1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 14]
    res = sample_negatives(ids, scores, 0.8, count=10, rng=rng(3), strategy="random")
    assert res.status == "ok" and len(set(res.indices)) == 10 and set(res.indices) <= set(survivors)
    # sentence-transformers' draw: `count` of the survivors, stored in retrieval order (similarity descending)
    assert res.indices == sorted(survivors[j] for j in np.random.default_rng(3).permutation(12)[:10])
    assert sample_negatives(ids, scores, 0.8, count=10, rng=rng(3), strategy="random").indices == res.indices
    others = {tuple(sample_negatives(ids, scores, 0.8, count=10, rng=rng(s), strategy="random").indices)
              for s in range(4, 9)}
    assert len(others | {tuple(res.indices)}) > 1
    # fewer survivors than count: one drawn order of all of them, repeated
    res = sample_negatives(["a", "fn1", "b", "fn2", "c"], [0.1, 0.99, 0.2, 0.99, 0.3], 0.7, count=7, rng=rng(1),
                           strategy="random")
    assert res.status == "repeated" and res.indices == [0, 2, 4, 0, 2, 4, 0]
    with pytest.raises(ValueError, match="strategy"):
        sample_negatives(ids, scores, 0.8, rng=rng(), strategy="hardest")


def test_sample_two_survivors_alternate_like_released_data():
    res = sample_negatives(["a", "b", "x"], [0.1, 0.2, 0.95], 0.5, count=6, rng=rng())
    assert res.ids == ["a", "b", "a", "b", "a", "b"]


def test_sample_equality_edge_is_kept():
    # α = 0.75 − 0.25 = 0.5 exactly; the candidate scored 0.5 survives, the one at 0.625 does not
    res = sample_negatives(["eq", "above"], [0.5, 0.625], 0.75, beta=0.25, count=1, rng=rng())
    assert res.ids == ["eq"] and res.status == "ok" and res.n_filtered == 1


def test_sample_nan_raises_with_field():
    with pytest.raises(DataError) as e:
        sample_negatives(["a", "b"], [0.1, float("nan")], 0.5, rng=rng(), source="s.json", record=3)
    assert e.value.field == "candidate_scores[1]" and "record 3" in str(e.value)
    with pytest.raises(DataError) as e:
        sample_negatives(["a", "b"], [0.1, 0.2], float("nan"), rng=rng())
    assert e.value.field == "positive_score"


def test_sample_length_mismatch_raises():
    with pytest.raises(DataError) as e:
        sample_negatives(["a", "b", "c"], [0.1, 0.2], 0.5, rng=rng())
    assert e.value.field == "candidate_scores"


def test_fallback_random_reproducible_and_scored_one():
    # every candidate above α → no survivor → random draw without replacement, scores all 1.0
    ids = [f"c{i}" for i in range(50)]
    scores = [0.99] * 50
    a = sample_negatives(ids, scores, 0.5, count=10, rng=rng(123))
    b = sample_negatives(ids, scores, 0.5, count=10, rng=rng(123))
    c = sample_negatives(ids, scores, 0.5, count=10, rng=rng(124))
    assert a.status == "fallback" and a.n_survivors == 0 and a.n_filtered == 50
    assert a.indices == b.indices and a.ids == b.ids
    assert a.indices != c.indices  # a different seed draws differently
    assert a.scores == [1.0] * 10
    assert len(set(a.indices)) == 10  # without replacement
    # the draw equals an independent draw of the same generator
    assert a.indices == rng(123).choice(50, size=10, replace=False).tolist()
    assert a.ids == [ids[i] for i in a.indices]


def test_fallback_random_with_replacement_when_too_few():
    res = sample_negatives(["a", "b", "c"], [0.9, 0.9, 0.9], 0.5, count=8, rng=rng(1))
    assert res.status == "fallback" and len(res.indices) == 8 and set(res.ids) <= {"a", "b", "c"}
    assert res.scores == [1.0] * 8


def test_fallback_drop():
    res = sample_negatives(["a", "b"], [0.9, 0.9], 0.5, count=8, fallback="drop", rng=rng())
    assert res.status == "dropped" and res.indices == [] and res.ids == [] and res.scores == []
    assert res.n_filtered == 2


def test_no_candidates_at_all_is_dropped():
    res = sample_negatives([], [], 0.5, count=8, rng=rng())
    assert res.status == "dropped" and res.indices == []


def test_bad_options_raise():
    with pytest.raises(ValueError):
        sample_negatives(["a"], [0.1], 0.5, count=0, rng=rng())
    with pytest.raises(ValueError):
        sample_negatives(["a"], [0.1], 0.5, fallback="oops", rng=rng())
    with pytest.raises(ValueError):
        SampleResult([], [], [], "weird", 0, 0)


# ---------------------------------------------------------------------------------------------
# SamplingStats


def test_sampling_stats_counts_and_merge():
    r = rng()
    ok = sample_negatives(list(range(12)), [0.1] * 12, 0.9, count=10, rng=r)
    rep = sample_negatives(["a", "b", "c"], [0.1, 0.99, 0.2], 0.5, count=10, rng=r)
    fb = sample_negatives(["a", "b"], [0.9, 0.9], 0.5, count=10, rng=r)
    dr = sample_negatives(["a", "b"], [0.9, 0.9], 0.5, count=10, fallback="drop", rng=r)
    s1 = SamplingStats()
    s1.add(ok, "n24news")
    s1.add(rep, "n24news")
    s1.add(fb, "sun397")
    s2 = SamplingStats()
    s2.add(dr, "sun397")
    s2.add(ok, "sun397")
    s1.merge(s2)
    assert s1.counts == {"ok": 2, "repeated": 1, "fallback": 1, "dropped": 1}
    assert s1.total == 5
    d = s1.to_dict()
    assert d["by_dataset"]["n24news"] == {"ok": 1, "repeated": 1, "fallback": 0, "dropped": 0}
    assert d["by_dataset"]["sun397"] == {"ok": 1, "repeated": 0, "fallback": 1, "dropped": 1}
    # false negatives: n24news 0 + 1 ; sun397 2 + 2 + 0 ; candidates n24news 12 + 3, sun397 2 + 2 + 12
    assert d["false_negatives"] == {"n24news": 1, "sun397": 4}
    assert d["candidates"] == {"n24news": 15, "sun397": 16}
    assert SamplingStats.from_dict(d).to_dict() == d
    table = s1.format_table()
    lines = table.splitlines()
    assert lines[0].split() == ["dataset", "ok", "repeated", "fallback", "dropped", "queries", "false_neg_%"]
    # TOTAL: 5 false negatives of 31 candidates = 16.1 %
    assert lines[-1].split() == ["TOTAL", "2", "1", "1", "1", "5", "16.1"]
    assert lines[1].split() == ["n24news", "1", "1", "0", "0", "2", f"{100 / 15:.1f}"]
