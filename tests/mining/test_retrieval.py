"""Stage A: the pool, FAISS search and the δ rule (the embedding cache: test_eval, test_mining_pipeline)."""

from __future__ import annotations

import numpy as np
import pytest

from unime.data.items import Item, Record
from unime.index.ann import IndexConfig, build_index
from unime.mining.retrieval import (CandidateWindow, apply_delta_rule, build_pool, query_positive_ids,
                                    search_hard_negatives)


def _unit(rng, n, d):
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_pool_is_the_deduplicated_union_of_positives_in_first_seen_order():
    a, b, c = Item(text="a"), Item(text="b"), Item(text="c")
    recs = [Record(Item(text="q1"), a, dataset="x"), Record(Item(text="q2"), b, dataset="y"),
            Record(Item(text="q3"), Item(text="a"), dataset="y")]
    pool = build_pool(recs, extra=[c, b])
    assert [p.text for p in pool] == ["a", "b", "c"]


def test_delta_rule_hand_worked():
    ids = np.array([7, 3, 9, 4, 5, 2, -1])
    sims = np.array([0.95, 0.90, 0.80, 0.80, 0.70, 0.60, -np.inf])
    # positive = 9 with sim 0.80: 7 and 3 are above it, 4 ties it (>= → dropped), 9 is the positive
    kept, ksims, above = apply_delta_rule(ids, sims, positive_id=9, positive_sim=0.80, k=5)
    assert kept.tolist() == [5, 2] and ksims.tolist() == [0.70, 0.60] and above == 3
    # the query itself in the pool is dropped too; k truncates in rank order
    kept, _, above = apply_delta_rule(ids, sims, positive_id=2, positive_sim=0.99, query_id=3, k=2)
    assert kept.tolist() == [7, 9] and above == 0


def test_margins_and_range_min_hand_worked():
    """sentence-transformers' knobs on the same ranking: positive 9 at 0.80. absolute 0.10 keeps sim <= 0.70
    (0.70 itself kept: not strict); relative 0.25 keeps sim <= 0.60; range_min skips the most similar survivors
    and the window ends at rank k (range_max), as `mine_hard_negatives`' range_min / range_max."""
    ids = np.array([7, 3, 9, 4, 8, 5, 2, 6, -1])
    sims = np.array([0.95, 0.90, 0.80, 0.80, 0.75, 0.70, 0.60, 0.50, -np.inf])
    kw = dict(positive_id=9, positive_sim=0.80)
    kept, _, above = apply_delta_rule(ids, sims, k=5, rule=CandidateWindow(absolute_margin=0.10), **kw)
    assert kept.tolist() == [5, 2, 6] and above == 3  # 8 (0.75) dropped; above counts only >= the positive
    kept, _, _ = apply_delta_rule(ids, sims, k=5, rule=CandidateWindow(relative_margin=0.25), **kw)
    assert kept.tolist() == [2, 6]
    kept, ksims, _ = apply_delta_rule(ids, sims, k=3, rule=CandidateWindow(range_min=1), **kw)
    assert kept.tolist() == [5, 2] and ksims.tolist() == [0.70, 0.60]  # survivors 8, 5, 2 up to k=3, 8 skipped
    kept, _, _ = apply_delta_rule(ids, sims, k=5, rule=CandidateWindow(range_min=1, absolute_margin=0.10), **kw)
    assert kept.tolist() == [2, 6]  # the margin first, then the skip
    with pytest.raises(ValueError, match="range_min"):
        search_hard_negatives(build_index(np.eye(4, dtype=np.float32)), np.eye(4, dtype=np.float32)[:1],
                              np.eye(4, dtype=np.float32)[:1], [0], k=2, rule=CandidateWindow(range_min=2))


def test_relative_margin_is_below_a_negative_positive_as_in_sentence_transformers():
    """sentence-transformers drops a candidate when sim > pos - |pos| * R (its documented threshold, sign-safe):
    positive 9 at -0.40 with R = 0.25 keeps sim <= -0.40 - 0.40 * 0.25 = -0.50. pos * (1 - R) = -0.30 would
    lie above the positive and keep 4 (-0.42) and 8 (-0.48) too."""
    ids = np.array([7, 3, 9, 4, 8, 5, 2, 6])
    sims = np.array([-0.10, -0.30, -0.40, -0.42, -0.48, -0.55, -0.60, -0.70])
    kw = dict(positive_id=9, positive_sim=-0.40)
    kept, ksims, above = apply_delta_rule(ids, sims, k=5, rule=CandidateWindow(relative_margin=0.25), **kw)
    assert kept.tolist() == [5, 2, 6] and ksims.tolist() == [-0.55, -0.60, -0.70] and above == 2
    kept, _, _ = apply_delta_rule(ids, sims, k=2, rule=CandidateWindow(range_min=1, relative_margin=0.25), **kw)
    assert kept.tolist() == [2]  # survivors 5, 2 up to k = 2, the first skipped


def _brute_force(q, pool, pos_ids, k, query_ids=None):
    out = []
    for i in range(len(q)):
        sims = pool @ q[i]
        pos_sim = float(q[i] @ pool[pos_ids[i]])
        order = np.argsort(-sims, kind="stable")
        keep = [j for j in order if j != pos_ids[i] and sims[j] < pos_sim
                and (query_ids is None or j != query_ids[i])]
        out.append(keep[:k])
    return out


def test_flat_search_matches_brute_force_and_refetches_low_ranked_positives():
    rng = np.random.default_rng(0)
    pool = _unit(rng, 400, 16)
    q = _unit(rng, 30, 16)
    # positives: some at the top, some deep in the ranking (many candidates above them)
    pos_ids = []
    for i in range(30):
        order = np.argsort(-(pool @ q[i]))
        pos_ids.append(int(order[[0, 5, 100, 300, 399][i % 5]]))
    res = search_hard_negatives(build_index(pool), q, pool[pos_ids], pos_ids, k=10, overfetch=2)
    expected = _brute_force(q, pool, pos_ids, 10)
    for i in range(30):
        assert res.candidate_ids[i].tolist() == expected[i], i
        np.testing.assert_allclose(res.candidate_sims[i], pool[expected[i]] @ q[i], atol=1e-5)
        assert np.all(np.diff(res.candidate_sims[i]) <= 1e-7)  # rank order kept
        assert np.all(res.candidate_sims[i] < res.positive_sims[i])
    # the positive ranked last has no candidate below it; the one at rank 300 has 99 below it, 10 kept
    assert [len(res.candidate_ids[i]) for i in range(5)] == [10, 10, 10, 10, 0]
    assert res.n_above_positive[:4].tolist() == [0, 5, 100, 300]


def test_query_in_pool_is_excluded():
    rng = np.random.default_rng(1)
    pool = _unit(rng, 50, 8)
    q = pool[[3, 4]]
    pos = [int(np.argsort(-(pool @ q[0]))[5]), int(np.argsort(-(pool @ q[1]))[5])]
    res = search_hard_negatives(build_index(pool), q, pool[pos], pos, k=5, query_ids=[3, 4])
    assert res.candidate_ids[0].tolist() == _brute_force(q, pool, pos, 5, [3, 4])[0]
    assert 3 not in res.candidate_ids[0].tolist()


@pytest.mark.parametrize("kind,overfetch", [("flat", 16), ("flat", 0), ("hnsw", 0)],
                         ids=["flat-search", "flat-scan", "hnsw"])
def test_query_positives_are_excluded_for_every_record_of_the_query(kind, overfetch):
    """Image-to-text: two records with the same query image and different captions (c1, c2) are one query under
    --exclude-query-positives; neither caption is a candidate of either record, as sentence-transformers groups
    rows by anchor. Pool ids c1 0, c2 1, c3 2, c4 3 (c4 an extra pool item). Image I scores c2 1.0, c3 0.75,
    c1 0.5, c4 0.25; image J (its own query) c1 0.75, c3 0.5, c2 0, c4 -1. Hand-worked, k = 3:
    record 0 (I, c1 at 0.5): c2 and c3 above it, [c4] kept; grouped, c2 is a positive: one above.
    record 1 (I, c2 at 1.0): [c3, c1, c4]; grouped [c3, c4] (c1 is the other caption).
    record 2 (J, c3 at 0.5): c1 above, [c2, c4] either way (J's only positive is c3).
    Every path: the FAISS search alone (fetch = pool), its exhaustive scan (fetch 3 < pool, fewer than k kept),
    an approximate index searched again deeper."""
    img_i, img_j = Item(images=["i.png"]), Item(images=["j.png"])
    c1, c2, c3, c4 = (Item(text=t) for t in ("c1", "c2", "c3", "c4"))
    records = [Record(img_i, c1, dataset="x"), Record(Item(images=["i.png"]), c2, dataset="x"),
               Record(img_j, c3, dataset="x")]
    pool_items = build_pool(records, extra=[c4])
    assert [it.text for it in pool_items] == ["c1", "c2", "c3", "c4"]
    pool_index = {it.key: n for n, it in enumerate(pool_items)}
    groups = query_positive_ids(records, pool_index)
    assert [g.tolist() for g in groups] == [[0, 1], [0, 1], [2]]
    pool = np.array([[0.5, 0.75], [1, 0], [0.75, 0.5], [0.25, -1]], dtype=np.float32)
    q = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    pos = [0, 1, 2]
    index = build_index(pool, IndexConfig(kind=kind))
    plain = search_hard_negatives(index, q, pool[pos], pos, k=3, overfetch=overfetch)
    assert [x.tolist() for x in plain.candidate_ids] == [[3], [2, 0, 3], [1, 3]]
    assert plain.n_above_positive.tolist() == [2, 0, 1]
    grouped = search_hard_negatives(index, q, pool[pos], pos, k=3, overfetch=overfetch, query_positive_ids=groups)
    assert [x.tolist() for x in grouped.candidate_ids] == [[3], [2, 3], [1, 3]]
    assert [x.tolist() for x in grouped.candidate_sims] == [[0.25], [0.75, 0.25], [0.0, -1.0]]
    assert grouped.n_above_positive.tolist() == [1, 0, 1]
    kept, _, above = apply_delta_rule(np.array([1, 2, 0, 3]), np.array([1.0, 0.75, 0.5, 0.25]), positive_id=1,
                                      positive_sim=1.0, k=3, query_positive_ids=groups[1])
    assert kept.tolist() == [2, 3] and above == 0


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_agree_with_exact(kind):
    rng = np.random.default_rng(2)
    pool = _unit(rng, 2000, 32)
    q = _unit(rng, 20, 32)
    pos = [int(np.argsort(-(pool @ q[i]))[3]) for i in range(20)]
    exact = search_hard_negatives(build_index(pool), q, pool[pos], pos, k=10)
    approx = search_hard_negatives(build_index(pool, IndexConfig(kind=kind, nprobe=32)), q, pool[pos], pos, k=10)
    overlap = np.mean([len(set(a.tolist()) & set(b.tolist())) / 10
                       for a, b in zip(exact.candidate_ids, approx.candidate_ids)])
    assert overlap >= 0.8
    for i in range(20):
        assert pos[i] not in approx.candidate_ids[i].tolist()
        assert np.all(approx.candidate_sims[i] < approx.positive_sims[i])


def test_ivf_searches_a_low_ranked_positive_once_more_to_its_whole_ranking():
    rng = np.random.default_rng(5)
    pool = _unit(rng, 3000, 16)
    q = _unit(rng, 40, 16)
    # positives from the top to deep in the ranking: most queries need more than the first fetch of k + 2
    pos = [int(np.argsort(-(pool @ q[i]))[[0, 3, 60, 400, 2500][i % 5]]) for i in range(40)]
    index = build_index(pool, IndexConfig(kind="ivf", nlist=30, nprobe=4))
    # the oracle: each query's whole IVF ranking (every vector of its probed lists), then the δ rule
    full_sims, full_ids = index.search(q, 3000)
    fetches = []
    search = index.search
    index.search = lambda x, f, **kw: fetches.append(f) or search(x, f, **kw)
    res = search_hard_negatives(index, q, pool[pos], pos, k=10, overfetch=2)
    probed = (full_ids >= 0).sum(axis=1)
    assert fetches == [12, int(probed.max()) + 1]  # before: 12, 48, 192, 768 (4x deeper until all probed)
    for i in range(40):
        want, want_sims, want_above = apply_delta_rule(full_ids[i], full_sims[i], positive_id=pos[i],
                                                       positive_sim=float(res.positive_sims[i]), k=10)
        assert res.candidate_ids[i].tolist() == want.tolist(), i
        np.testing.assert_array_equal(res.candidate_sims[i], want_sims)
        assert res.n_above_positive[i] == want_above, i


def test_hnsw_scans_its_own_vectors_for_a_positive_ranked_deeper_than_a_search_is_worth():
    """hnsw (hnsw_m 4: up to 8 neighbours scored per visited vector) on a pool of 3000: a search of fetch f scores
    up to 8f vectors, more than the pool past f = 375. Queries still short after fetch 192 used to be searched at
    768, then at the whole pool (efSearch 3000, slower than a scan and still approximate); they are now finished
    by the exact scan of the index's own vectors: their lists are those of an exact (flat) index of the same storage."""
    rng = np.random.default_rng(5)
    pool = _unit(rng, 3000, 16)
    q = _unit(rng, 40, 16)
    ranks = [[0, 3, 60, 400, 2500][i % 5] for i in range(40)]
    pos = [int(np.argsort(-(pool @ q[i]))[ranks[i]]) for i in range(40)]
    for storage in ("float32", "float16"):  # float16: the exact index of the same fp16-rounded vectors
        exact = search_hard_negatives(build_index(pool, IndexConfig(storage=storage)), q, pool[pos], pos, k=10,
                                      overfetch=2)
        index = build_index(pool, IndexConfig(kind="hnsw", ef_search=16, hnsw_m=4, storage=storage))
        fetches = []
        search = index.search
        index.search = lambda x, f, **kw: fetches.append(f) or search(x, f, **kw)
        res = search_hard_negatives(index, q, pool[pos], pos, k=10, overfetch=2)
        assert sorted(set(fetches)) == [12, 48, 192]  # before: 12, 48, 192, 768, 3000
        for i in range(40):
            if ranks[i] >= 400:  # 400 candidates above the positive: past 192, scanned
                assert res.candidate_ids[i].tolist() == exact.candidate_ids[i].tolist(), (storage, i)
                np.testing.assert_allclose(res.candidate_sims[i], exact.candidate_sims[i], atol=1e-6)
                assert res.n_above_positive[i] == exact.n_above_positive[i]
                assert storage == "float16" or res.n_above_positive[i] == ranks[i]  # fp16: rounded scores
            assert pos[i] not in res.candidate_ids[i].tolist()


def test_a_deep_hnsw_search_puts_the_breadth_back_so_the_recall_after_it_is_the_configured_one():
    """`unime mine` measures the index's recall after the search. The search widens an hnsw index's efSearch for
    the queries whose positive ranks deep (fetch 12, 48, ..., the pool); it used to leave it widened, so the
    recall in the mining report was that of the widest search (here near 1.0), not of --ef-search 16."""
    from unime.index.ann import measure_recall

    rng = np.random.default_rng(5)
    pool = _unit(rng, 3000, 16)
    q = _unit(rng, 40, 16)
    pos = [int(np.argsort(-(pool @ q[i]))[[0, 3, 60, 400, 2500][i % 5]]) for i in range(40)]
    index = build_index(pool, IndexConfig(kind="hnsw", ef_search=16, hnsw_m=4))
    configured = measure_recall(index, pool, k=10, queries=q)["recall"]
    fetches = []
    search = index.search
    index.search = lambda x, f, **kw: fetches.append(f) or search(x, f, **kw)
    search_hard_negatives(index, q, pool[pos], pos, k=10, overfetch=2)
    index.search = search
    assert max(fetches) > 16 and index.hnsw.efSearch == 16
    assert measure_recall(index, pool, k=10, queries=q)["recall"] == configured
    index.hnsw.efSearch = max(fetches)  # what the recall was measured at before: another value
    assert measure_recall(index, pool, k=10, queries=q)["recall"] > configured + 0.1


def test_mining_never_changes_an_hnsw_indexs_breadth_even_while_it_searches():
    """The retrieval's deeper searches (fetch 12, 48, 192) and the recall measurement (k 20 > --ef-search 16) ran at
    efSearch widened in place on the index, put back after each: now each search has its own breadth (FAISS's
    per-search parameters), so the index reads 16 throughout, and the results are those of the index set by hand."""
    from unime.index.ann import measure_recall

    rng = np.random.default_rng(5)
    pool = _unit(rng, 3000, 16)
    q = _unit(rng, 40, 16)
    pos = [int(np.argsort(-(pool @ q[i]))[[0, 3, 60, 400, 2500][i % 5]]) for i in range(40)]
    index = build_index(pool, IndexConfig(kind="hnsw", ef_search=16, hnsw_m=4))
    wide = {}
    for f in (12, 20, 48, 192):  # the reference: the index's own breadth set to each fetch
        index.hnsw.efSearch = max(16, f)
        wide[f] = index.search(q, f)[1]
    index.hnsw.efSearch = 16
    search, seen = index.search, []

    def spy(x, f, **kw):
        seen.append((f, index.hnsw.efSearch))
        return search(x, f, **kw)

    index.search = spy
    res = search_hard_negatives(index, q, pool[pos], pos, k=10, overfetch=2)
    recall = measure_recall(index, pool, k=20, queries=q)
    index.search = search
    assert seen and {e for _, e in seen} == {16} and {f for f, _ in seen} == {12, 48, 192, 20}
    exact = np.argsort(-(q @ pool.T), axis=1)[:, :20]
    assert recall["recall"] == pytest.approx(np.mean([len(set(a) & set(e)) / 20 for a, e in zip(wide[20], exact)]))
    for i in range(40):  # a query finished by the first search: its candidates are the first wide search's
        kept = [j for j in wide[12][i].tolist() if j != pos[i] and float(q[i] @ pool[j]) < float(q[i] @ pool[pos[i]])]
        if len(kept) >= 10:
            assert res.candidate_ids[i].tolist() == kept[:10], i


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_measured_recall_equals_a_hand_count_of_the_overlap(kind):
    from unime.index.ann import measure_recall

    rng = np.random.default_rng(3)
    pool = _unit(rng, 3000, 16)
    q = _unit(rng, 40, 16)
    index = build_index(pool, IndexConfig(kind=kind, nprobe=2, ef_search=16, hnsw_m=4))
    r = measure_recall(index, pool, k=20, queries=q)
    # independent count: FAISS approximate ids vs a full argsort of the exact similarities
    if kind == "hnsw":
        assert index.hnsw.efSearch == 16  # put back after the measurement
        index.hnsw.efSearch = 20  # the measurement searches at max(ef_search, k) to return k hits
    _, approx = index.search(q, 20)
    exact = np.argsort(-(q @ pool.T), axis=1)[:, :20]
    expected = np.mean([len(set(a.tolist()) & set(e.tolist())) / 20 for a, e in zip(approx, exact)])
    assert r["sample"] == 40 and r["k"] == 20
    assert r["recall"] == pytest.approx(expected)
    assert 0.0 < r["recall"] < 1.0  # a deliberately weak index on uniform data misses some neighbours


def test_exact_topk_matches_argsort_across_chunks():
    from unime.index.ann import exact_topk

    rng = np.random.default_rng(4)
    pool = _unit(rng, 1000, 8)
    q = _unit(rng, 5, 8)
    assert exact_topk(pool, q, 7, chunk=128).tolist() == np.argsort(-(q @ pool.T), axis=1)[:, :7].tolist()


def _delta_rule_by_full_sort(q, pool, pos_ids, query_ids, k, range_min=0, absolute=0.0, relative=0.0, grouped=False):
    """The δ rule on a full NumPy sort of the pool per query: similarity descending, ties by the higher id
    first (FAISS's order), dropping the positive, the query (and, `grouped`, the positives of the other rows of
    its group, `_groups`) and everything at or above the positive; then
    sentence-transformers' margins (sim <= pos - absolute, sim <= pos - |pos| * relative, in float64) and the
    window [range_min, k) of what is left."""
    out = []
    for i in range(len(q)):
        sims = pool @ q[i]
        order = np.lexsort((-np.arange(len(pool)), -sims))
        pos_sim = q[i] @ pool[pos_ids[i]]
        dropped = {pos_ids[i], query_ids[i]} | (set(_groups(pos_ids)[i].tolist()) if grouped else set())
        others = [j for j in order if j not in dropped]
        n_above = sum(sims[j] >= pos_sim for j in others)
        kept = [j for j in others if sims[j] < pos_sim and float(sims[j]) <= float(pos_sim) - absolute
                and float(sims[j]) <= float(pos_sim) - abs(float(pos_sim)) * relative][range_min:k]
        out.append((kept, [sims[j] for j in kept], n_above))
    return out


def _groups(pos_ids):
    """Rows 3g, 3g+1, 3g+2 as one query (--exclude-query-positives): per row the positives of its group."""
    pos = np.asarray(pos_ids, dtype=np.int64)
    return [pos[i - i % 3:i - i % 3 + 3] for i in range(len(pos))]


RULES = [{}, {"range_min": 3}, {"absolute": 0.25}, {"relative": 0.1},
         {"range_min": 2, "absolute": 0.5, "relative": 0.2}, {"grouped": True},
         {"grouped": True, "range_min": 2, "absolute": 0.25}]


@pytest.mark.parametrize("storage", ["float32", "float16"])
@pytest.mark.parametrize("block_bytes", [None, 3000])
@pytest.mark.parametrize("rule", RULES, ids=lambda r: ",".join(f"{k}={v}" for k, v in r.items()) or "delta")
def test_search_equals_a_full_sort_with_ties_and_low_ranked_positives(storage, block_bytes, rule):
    """Vectors of quarter-integers: every inner product is exact in float32 (and fp16 storage), so ties are
    real ties and the reference needs no tolerance (a candidate at exactly pos - 0.25 tests the margin's
    non-strict edge). A third of the pool repeats other rows (ties across ids); positives from the top to the
    very bottom of the ranking; some queries are pool items. The margins and range_min (`CandidateWindow`)
    on both paths (the FAISS search and the exhaustive scan) against the brute-force reference."""
    rng = np.random.default_rng(5)
    pool = rng.integers(-3, 4, size=(300, 8)).astype(np.float32) / 4
    pool[200:] = pool[rng.integers(0, 200, size=100)]
    q = rng.integers(-3, 4, size=(60, 8)).astype(np.float32) / 4
    query_ids = np.full(60, -1)
    query_ids[::7] = rng.integers(0, 300, size=len(query_ids[::7]))
    q[::7] = pool[query_ids[::7]]
    pos_ids = []
    for i in range(60):
        order = np.lexsort((-np.arange(300), -(pool @ q[i])))
        pos_ids.append(int(order[[0, 3, 40, 150, 280, 299][i % 6]]))
    kw = {} if block_bytes is None else {"block_bytes": block_bytes}
    window = CandidateWindow(rule.get("range_min", 0), rule.get("absolute", 0.0), rule.get("relative", 0.0))
    res = search_hard_negatives(build_index(pool, IndexConfig(storage=storage)), q, pool[pos_ids], pos_ids, k=10,
                                overfetch=2, query_ids=query_ids, rule=window, **kw,
                                query_positive_ids=_groups(pos_ids) if rule.get("grouped") else None)
    expected = _delta_rule_by_full_sort(q, pool, pos_ids, query_ids, 10, **rule)
    for i, (ids, sims, n_above) in enumerate(expected):
        assert res.candidate_ids[i].tolist() == ids, i
        assert res.candidate_sims[i].tolist() == sims, i
        assert res.n_above_positive[i] == n_above, i
    full = 10 - rule.get("range_min", 0)
    assert sum(len(x) < full for x in res.candidate_ids) > 0 and sum(res.n_above_positive > 12) > 10
    if rule.get("absolute") or rule.get("relative") or rule.get("grouped"):  # drops some the δ rule alone keeps
        plain = _delta_rule_by_full_sort(q, pool, pos_ids, query_ids, 10, range_min=rule.get("range_min", 0))
        assert [e[0] for e in expected] != [p[0] for p in plain]


def test_the_queries_finished_by_the_exact_scan_are_counted():
    """`n_exact_scan`: the queries a search left short, finished by the exact scan. Pool 3000, k 10, fetch 12
    (overfetch 2), positives at ranks 0, 3, 60, 400, 2500 (8 queries each). flat: a positive at rank 3 or deeper
    leaves at most 12 - 4 = 8 < 10 candidates below it in the first search, so 32 queries are scanned at once.
    hnsw (hnsw_m 4): searched at 12, 48, 192, then scanned (a search of 768 would score more than the pool): the
    positives at rank 60 have 192 - 61 >= 10 below them by then, those at 400 and 2500 are scanned: 16. ivf never
    scans."""
    rng = np.random.default_rng(5)
    pool = _unit(rng, 3000, 16)
    q = _unit(rng, 40, 16)
    ranks = [[0, 3, 60, 400, 2500][i % 5] for i in range(40)]
    pos = [int(np.argsort(-(pool @ q[i]))[ranks[i]]) for i in range(40)]
    for kind, scanned in (("flat", sum(r >= 3 for r in ranks)), ("hnsw", sum(r >= 400 for r in ranks)),
                          ("ivf", 0)):
        index = build_index(pool, IndexConfig(kind=kind, ef_search=16, hnsw_m=4, nprobe=2))
        res = search_hard_negatives(index, q, pool[pos], pos, k=10, overfetch=2)
        assert res.n_exact_scan == scanned, kind
    assert (32, 16) == (sum(r >= 3 for r in ranks), sum(r >= 400 for r in ranks))
