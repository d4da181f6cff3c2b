"""Ranking metrics against hand-computed values (the arithmetic is written out next to each check)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.eval.ranking_reference import (forbid_pool_sized_sort, random_tied_rows, reference_first_relevant_rank,
                                          reference_ndcg_at_k, reference_rank_order, reference_ranked_grades,
                                          reference_top_order)
from unime.eval import metrics as M


def test_rank_order_breaks_ties_pessimistically_or_by_index():
    scores = [0.5, 0.9, 0.5, 0.9]
    rel = [1, 0, 0, 1]
    # 0.9: candidates 1 (irrelevant) and 3 (relevant) → irrelevant first; 0.5: 2 (irrelevant) then 0
    assert M.rank_order(scores, rel, ties="pessimistic").tolist() == [1, 3, 2, 0]
    # lowest index wins: 1 before 3, 0 before 2
    assert M.rank_order(scores, rel, ties="index").tolist() == [1, 3, 0, 2]
    # without labels: by index
    assert M.rank_order(scores).tolist() == [1, 3, 0, 2]
    # row-wise on a matrix
    mat = M.rank_order([[0.1, 0.3, 0.2], [0.3, 0.3, 0.1]], [[0, 0, 1], [1, 0, 0]])
    assert mat.tolist() == [[1, 2, 0], [1, 0, 2]]
    with pytest.raises(ValueError):
        M.rank_order([0.1, float("nan")])
    with pytest.raises(ValueError):
        M.rank_order([0.1], ties="optimistic")


def test_positive_first_hits_mmeb_protocol():
    rows = [np.array([0.6, 0.5, 0.1]),   # positive strictly best → hit
            np.array([0.4, 0.5]),        # a negative beats it → miss
            np.array([0.5, 0.5, 0.1])]   # tie with the positive
    assert M.positive_first_hits(rows, ties="pessimistic").tolist() == [1.0, 0.0, 0.0]
    assert M.positive_first_hits(rows, ties="index").tolist() == [1.0, 0.0, 1.0]
    # a single candidate (only the positive) is always a hit
    assert M.positive_first_hits([np.array([-0.3])]).tolist() == [1.0]


def test_hit_recall_mrr_ap_on_a_written_out_list():
    g = [0, 1, 0, 1, 1]  # relevant at ranks 2, 4, 5
    assert M.hit_at_k(g, 1) == 0.0 and M.hit_at_k(g, 2) == 1.0
    assert M.recall_at_k(g, 2) == pytest.approx(1 / 3)
    assert M.recall_at_k(g, 4) == pytest.approx(2 / 3)
    assert M.reciprocal_rank(g) == pytest.approx(1 / 2)
    assert M.reciprocal_rank(g, k=1) == 0.0
    # AP = mean(P@2, P@4, P@5) = mean(1/2, 2/4, 3/5) = (0.5 + 0.5 + 0.6) / 3
    assert M.average_precision(g) == pytest.approx((0.5 + 0.5 + 0.6) / 3)
    assert M.average_precision([1, 0, 1, 0, 1]) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert M.average_precision([0, 0]) == 0.0 and M.reciprocal_rank([0, 0]) == 0.0


def test_ndcg_linear_gain():
    g = [3, 2, 0, 1]
    # DCG@3 = 3/log2(2) + 2/log2(3) + 0/log2(4) = 3 + 1.2618595 = 4.2618595
    # IDCG@3 (ideal 3, 2, 1) = 3 + 1.2618595 + 1/2 = 4.7618595
    assert M.dcg_at_k(g, 3) == pytest.approx(4.2618595, abs=1e-6)
    assert M.ndcg_at_k(g, 3) == pytest.approx(4.2618595 / 4.7618595, abs=1e-6)
    # @4: DCG = 4.2618595 + 1/log2(5) = 4.2618595 + 0.4306766; IDCG = 4.7618595 + 0/log2(5)
    assert M.ndcg_at_k(g, 4) == pytest.approx((4.2618595 + 0.4306766) / 4.7618595, abs=1e-6)
    # linear, not exponential gain: grade 3 at rank 1 alone, k=1 → 3/3
    assert M.ndcg_at_k([2, 3], 1) == pytest.approx(2 / 3)
    assert M.ndcg_at_k([0, 0, 0], 5) == 0.0
    assert M.ndcg_at_k([1, 2, 3], 10) == pytest.approx((1 + 2 / math.log2(3) + 3 / 2) / (3 + 2 / math.log2(3) + 1 / 2))


def test_ranked_grades_with_ties_then_ndcg():
    # scores: candidate 1 is best; 0 and 2 tie. grades 0 / 1 / 2
    scores, grades = [0.7, 1.0, 0.7], [0, 1, 2]
    pess = M.ranked_grades(scores, grades, ties="pessimistic")
    assert pess.tolist() == [1, 0, 2]  # in the tie the less relevant candidate 0 comes first
    assert M.ranked_grades(scores, grades, ties="index").tolist() == [1, 0, 2]
    assert M.ranked_grades(scores, [2, 1, 0], ties="pessimistic").tolist() == [1, 0, 2]
    assert M.ranked_grades(scores, [2, 1, 0], ties="index").tolist() == [1, 2, 0]
    # DCG = 1 + 0 + 2/log2(4) = 2; IDCG = 2 + 1/log2(3)
    assert M.ndcg_at_k(pess, 5) == pytest.approx(2 / (2 + 1 / math.log2(3)))


def test_first_relevant_rank_and_recall_at_ks():
    # 3 queries x 4 gallery items
    scores = np.array([[0.9, 0.1, 0.2, 0.3],    # relevant {0}: rank 0
                       [0.5, 0.5, 0.9, 0.1],    # relevant {1}: 2 is better, 0 ties → pessimistic rank 2
                       [0.1, 0.2, 0.3, 0.4]])   # relevant {0, 1}: best relevant is 1 at rank 2
    rel = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0]])
    assert M.first_relevant_rank(scores, rel).tolist() == [0, 2, 2]
    assert M.first_relevant_rank(scores, rel, ties="index").tolist() == [0, 2, 2]
    assert M.first_relevant_rank(scores[1:2], [[1, 0, 0, 0]], ties="index").tolist() == [1]
    r = M.recall_at_ks(np.array([0, 2, 2]), [1, 3])
    assert r == {1: pytest.approx(1 / 3), 3: 1.0}
    # no relevant item in a row: rank = row length, never a hit
    assert M.first_relevant_rank([[0.1, 0.2]], [[0, 0]]).tolist() == [2]


@pytest.mark.parametrize("ties", M.TIE_POLICIES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_first_relevant_rank_equals_the_sorting_reference_with_ties_and_grades(ties, dtype):
    rng = np.random.default_rng(7)
    for levels in (2, 5, 50, 100_000):
        s = random_tied_rows(rng, 40, 30, levels, dtype)
        graded = rng.choice([0, 0, 0, 0, 1, 2, 3], size=s.shape).astype(float)
        graded[:3] = 0  # rows without a relevant candidate rank it at len(row)
        binary = rng.random(s.shape) < 0.1
        for rel in (graded, binary, binary.astype(np.int8), graded.astype(np.int64)):
            want = reference_first_relevant_rank(s, rel, ties=ties)
            assert M.first_relevant_rank(s, rel, ties=ties).tolist() == want.tolist()
            for i in (0, 5, 17):  # one row at a time (run_mmeb)
                assert int(M.first_relevant_rank(s[i], rel[i], ties=ties)) == int(want[i])


@pytest.mark.parametrize("ties", M.TIE_POLICIES)
def test_ranked_grades_equal_the_sorting_reference_few_or_many_graded(ties):
    rng = np.random.default_rng(11)
    for levels in (2, 7, 100_000):
        for p_graded in (0.02, 0.3, 1.0):  # counted (<= RANK_BY_COUNTING_MAX graded) and sorted rows
            s = random_tied_rows(rng, 6, 300, levels, np.float64)
            g = np.where(rng.random(s.shape) < p_graded, rng.choice([0.5, 1, 2], size=s.shape), 0.0)
            assert M.ranked_grades(s, g, ties=ties).tolist() == reference_ranked_grades(s, g, ties=ties).tolist()
            for i in range(len(s)):
                got = M.ranked_grades(list(s[i]), list(g[i]), ties=ties)
                assert got.tolist() == reference_ranked_grades(s[i], g[i], ties=ties).tolist()


@pytest.fixture
def no_pool_sized_sort(monkeypatch):
    """`forbid_pool_sized_sort` for the whole test."""
    forbid_pool_sized_sort(monkeypatch)


def test_first_relevant_rank_sorts_no_pool_row_and_makes_no_float_copy(no_pool_sized_sort):
    import tracemalloc

    rng = np.random.default_rng(3)
    scores = rng.standard_normal((64, 5000)).astype(np.float32)
    rel = np.zeros(scores.shape, dtype=bool)
    rel[np.arange(64), rng.integers(0, 5000, 64)] = True
    want = [int(np.sum(scores[i] > scores[i][rel[i]][0])) for i in range(64)]  # no ties in normal draws
    tracemalloc.start()
    try:
        got = M.first_relevant_rank(scores, rel)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got.tolist() == want
    # the sorting version held a float64 copy and an int64 order of the chunk (2 x 2.5 MB); masks are 0.3 MB
    assert peak < scores.nbytes / 2, peak


def test_ranked_grades_of_a_pool_row_sorts_only_its_graded_candidates(no_pool_sized_sort):
    s = np.linspace(1, 0, 5000)  # candidate i at rank i
    g = np.zeros(5000)
    g[[10, 4000]] = [2, 1]
    ranked = M.ranked_grades(s, g)
    assert np.flatnonzero(ranked).tolist() == [10, 4000] and ranked[[10, 4000]].tolist() == [2, 1]


@pytest.mark.parametrize("ties", M.TIE_POLICIES)
def test_top_ranked_is_the_first_of_the_sorting_reference(ties):
    rng = np.random.default_rng(5)
    for levels in (2, 5, 100_000):
        s = random_tied_rows(rng, 30, 40, levels, np.float32)
        g = rng.choice([0, 0, 1, 2], size=s.shape)
        for i in range(len(s)):
            assert M.top_ranked(s[i], g[i], ties=ties) == int(reference_rank_order(s[i], g[i], ties=ties)[0])
            assert M.top_ranked(s[i], ties=ties) == int(reference_rank_order(s[i], ties=ties)[0])


def test_top_ranked_of_a_pool_row_sorts_only_the_tied_best(no_pool_sized_sort):
    s = np.zeros(5000)
    s[[7, 300, 4000]] = 1.0  # three tied best; pessimistic: the least relevant, then the lowest index
    g = np.zeros(5000)
    g[[7, 4000]] = [2, 1]
    assert M.top_ranked(s, g) == 300 and M.top_ranked(s, g, ties="index") == 7
    g[300] = 1
    assert M.top_ranked(s, g) == 300 and M.top_ranked(np.linspace(0, 1, 5000)) == 4999


def test_top_order_on_a_written_out_row_with_ties():
    s = [0.5, 0.9, 0.5, 0.9, 0.5, 0.1]
    # 0.9: candidates 1 then 3 (lower index first); 0.5: 0, 2, 4; then 0.1: 5
    assert M.top_order(s, 1).tolist() == [1]
    assert M.top_order(s, 3).tolist() == [1, 3, 0]  # a tie at the k-th score keeps the lower index
    assert M.top_order(s, 4).tolist() == [1, 3, 0, 2]
    assert M.top_order(s, 10).tolist() == [1, 3, 0, 2, 4, 5]  # a row shorter than k: all of it
    assert M.top_order([[0.1, 0.3, 0.2], [0.3, 0.3, 0.1]], 2).tolist() == [[1, 2], [0, 1]]
    # later_first: equal scores by the higher index, on a tie at the k-th score too
    assert M.top_order(s, 3, later_first=True).tolist() == [3, 1, 4]
    assert M.top_order(s, 10, later_first=True).tolist() == [3, 1, 4, 2, 0, 5]
    assert M.top_order([[0.1, 0.3, 0.2], [0.3, 0.3, 0.1]], 2, later_first=True).tolist() == [[1, 2], [1, 0]]
    with pytest.raises(ValueError):
        M.top_order([0.1, float("nan")], 1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        M.top_order(s, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_top_order_equals_the_sorting_reference_with_ties(dtype):
    rng = np.random.default_rng(13)
    for levels in (2, 3, 5, 50, 100_000):
        s = random_tied_rows(rng, 40, 60, levels, dtype)
        for k in (1, 2, 5, 10, 59, 60, 100):
            want = reference_top_order(s, k)
            assert M.top_order(s, k).tolist() == want.tolist()
            assert M.top_order(s[:, ::-1], k).tolist() == reference_top_order(s[:, ::-1], k).tolist()
            # the higher index first = the lower index first in the reversed row
            later = s.shape[1] - 1 - reference_top_order(s[:, ::-1], k)
            assert M.top_order(s, k, later_first=True).tolist() == later.tolist()
            for i in (0, 7, 33):  # one row at a time (MMEB, qrels)
                assert M.top_order(list(s[i]), k).tolist() == want[i].tolist()


def test_top_order_of_a_pool_row_sorts_only_its_top_k(no_pool_sized_sort):
    s = np.zeros(5000)
    s[[4000, 12, 300, 2500]] = [0.9, 0.8, 0.8, 0.8]  # three tied at the 3rd score: 12 and 300 are kept
    assert M.top_order(s, 3).tolist() == [4000, 12, 300]
    assert M.top_order(np.stack([s, np.linspace(0, 1, 5000)]), 2).tolist() == [[4000, 12], [4999, 4998]]


def test_ndcg_equals_the_full_sort_reference_with_tied_grades():
    rng = np.random.default_rng(17)
    for n in (1, 2, 7, 300):
        for levels in ([0, 0, 0, 0.5, 1, 1, 2, 3], [-0.0, 0, 1, 2], [0, 0], [-1, 0, 0, 1, 2]):  # -1: sorted whole
            g = rng.choice(levels, size=n)
            for k in (1, 2, 3, 5, 10, n - 1, n, n + 5):
                assert M.ndcg_at_k(g, k) == reference_ndcg_at_k(g, k)  # the same k grades, summed in the same order
                assert M.ndcg_at_k(list(g), k) == reference_ndcg_at_k(g, k)


def test_ndcg_of_a_pool_sized_list_sorts_only_its_relevant_grades(no_pool_sized_sort):
    g = np.zeros(5000)
    g[[3, 40, 2000, 4999]] = [1, 3, 2, 2]
    # DCG@5: 1 at rank 4, 3 at rank 41 (beyond 5) → 1/log2(5); IDCG@5: 3, 2, 2, 1 → 3 + 2/log2(3) + 2/2 + 1/log2(5)
    assert M.ndcg_at_k(g, 5) == pytest.approx((1 / math.log2(5)) / (3 + 2 / math.log2(3) + 1 + 1 / math.log2(5)))
