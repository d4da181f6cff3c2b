"""Reranking never breaks an exact tie in the positive's favour by its position (MMEB lists the positive first):
a reranker that changes nothing leaves the embedder's figure, the ties it does not resolve stay ties under the
run's tie policy, and the listwise prompt does not show a tied positive first under the pessimistic policy.

Every row below is written out so that the expected figure is worked out by hand: the query's vector is (1, 0)
and candidate j's is (s_j, 1), so its score is exactly s_j."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unime.data.items import Item
from unime.eval.runners import EvalOptions, Reranking, run_mmeb, scores_after_rerank
from unime.eval.tasks import ItemTable, MMEBData, TaskSpec


class Scripted:
    """pick: a fixed position of the shown list (None: no pick); score_pairs: fixed scores by candidate text."""

    def __init__(self, pick=None, scores=None):
        self._pick, self._scores = pick, scores or {}
        self.seen = []

    def pick(self, query, candidates):
        self.seen.append([c.text for c in candidates])
        return self._pick

    def score_pairs(self, query, candidates):
        self.seen.append([c.text for c in candidates])
        return np.array([self._scores.get(c.text, 0.5) for c in candidates])


def mmeb_row(scores, names=None):
    """One MMEB row: the query and candidates named `names` (default c0, c1, ..; the positive first) scoring
    `scores`; a name given twice is the same item (the positive listed again among the negatives)."""
    names = names or [f"c{j}" for j in range(len(scores))]
    table = ItemTable()
    q = table.add(Item(text="query"))
    cands = np.array([table.add(Item(text=n)) for n in names], dtype=np.int64)
    vec = {q: (1.0, 0.0)}
    for c, s in zip(cands, scores):
        vec[int(c)] = (float(s), 1.0)
    vectors = np.array([vec[i] for i in range(len(table))])
    data = MMEBData(table=table, query=np.array([q]), candidates=[cands], ids=["r1"])
    spec = TaskSpec(name="t", format="mmeb", path=Path("t.jsonl"), data_root=Path("."))
    return spec, data, (lambda idx: vectors[idx])


def p_at_1(scores, reranker, *, k, mode="top1", ties="pessimistic", names=None):
    spec, data, vecs = mmeb_row(scores, names)
    res = run_mmeb(spec, data, vecs, EvalOptions(ties=ties), Reranking(reranker, k, mode))
    return res.metrics["precision@1"], res.reranked["precision@1"]


@pytest.mark.parametrize("mode", ["top1", "resort"])
def test_a_reranker_that_changes_nothing_scores_what_the_embedder_scores(mode):
    # the review's example: [.3, .3, .1], top 2, no pick (or equal pairwise scores): the positive ties with c1,
    # a miss under pessimistic ties (the reranked row scored it a hit), a hit under index ties
    assert p_at_1([0.3, 0.3, 0.1], Scripted(), k=2, mode=mode) == (0.0, 0.0)
    assert p_at_1([0.3, 0.3, 0.1], Scripted(), k=2, mode=mode, ties="index") == (1.0, 1.0)
    # a tie at the k-th score with a candidate the reranker never saw: still a tie
    assert p_at_1([0.3, 0.3, 0.3], Scripted(), k=2, mode=mode) == (0.0, 0.0)
    assert p_at_1([0.3, 0.3, 0.3], Scripted(), k=2, mode=mode, ties="index") == (1.0, 1.0)
    # no tie: the positive first or not, as before
    assert p_at_1([0.4, 0.3, 0.1], Scripted(), k=2, mode=mode) == (1.0, 1.0)
    assert p_at_1([0.2, 0.3, 0.1], Scripted(), k=2, mode=mode) == (0.0, 0.0)


def test_a_tie_the_reranker_resolves_is_its_verdict():
    # shown [c1, c0] (pessimistic: the higher index first among equal scores); picking position 1 picks c0
    assert p_at_1([0.3, 0.3, 0.1], Scripted(pick=1), k=2) == (0.0, 1.0)
    assert p_at_1([0.3, 0.3, 0.1], Scripted(pick=0), k=2) == (0.0, 0.0)
    assert p_at_1([0.3, 0.3, 0.1], Scripted(scores={"c0": 0.9, "c1": 0.2}), k=2, mode="resort") == (0.0, 1.0)
    # the reranker moves a lower-scored candidate up past the positive
    assert p_at_1([0.4, 0.3, 0.1], Scripted(pick=1), k=2, ties="index") == (1.0, 0.0)


def test_a_pick_among_one_candidate_does_not_lift_it_above_its_unseen_ties():
    # top 1 of three equal scores: the reranker sees one candidate and "picks" it; the other two were never judged
    r = Scripted(pick=0)
    assert p_at_1([0.3, 0.3, 0.3], r, k=1) == (0.0, 0.0)
    assert r.seen == [["c2"]]  # pessimistic: the higher index first, the positive is the first left out
    assert p_at_1([0.3, 0.3, 0.3], Scripted(pick=0), k=1, ties="index") == (1.0, 1.0)


def test_picking_one_copy_of_an_item_listed_twice_picks_both():
    # the positive A listed again at index 2: the embedder cannot tell them apart (a miss under pessimistic ties),
    # nor can the reranker: picking either copy leaves the tie
    for pick in (0, 1):
        assert p_at_1([0.3, 0.1, 0.3], Scripted(pick=pick), k=3, names=["A", "B", "A"]) == (0.0, 0.0)
    # the copy left out of the top k (k = 1, shown: the copy at index 2) shares the pick too
    assert p_at_1([0.3, 0.1, 0.3], Scripted(pick=0), k=1, names=["A", "B", "A"]) == (0.0, 0.0)
    assert p_at_1([0.3, 0.1, 0.3], Scripted(pick=2), k=3, names=["A", "B", "A"]) == (0.0, 0.0)  # B: shown last


@pytest.mark.parametrize("ties, shown", [("pessimistic", ["c2", "c1", "c0"]), ("index", ["c0", "c1", "c2"])])
def test_the_listwise_prompt_order_among_ties_follows_the_tie_policy_not_the_positive_first(ties, shown):
    r = Scripted(pick=None)
    p_at_1([0.3, 0.3, 0.3, 0.1], r, k=3, ties=ties)
    assert r.seen == [shown]
    r = Scripted(pick=None)
    p_at_1([0.3, 0.5, 0.3, 0.1], r, k=3, ties=ties)  # only equal scores are reordered
    assert r.seen == [["c1", "c2", "c0"] if ties == "pessimistic" else ["c1", "c0", "c2"]]


def test_scores_after_rerank_on_written_out_rows():
    s = np.array([0.9, 0.5, 0.5, 0.5, 0.1])

    def weak_order(x):  # candidate groups, best first
        return [sorted(np.flatnonzero(x == v).tolist()) for v in sorted(set(x.tolist()), reverse=True)]

    # top 2 = [0, 1]; equal verdicts: the embedder's order, and 2, 3 (tied with 1, never shown) stay tied with it
    assert weak_order(scores_after_rerank(s, [0, 1], [0.2, 0.2])) == [[0], [1, 2, 3], [4]]
    # the reranker puts 1 above 0: the last of the top 2 (0, at 0.9) no longer ties with 2, 3, which follow it
    out = scores_after_rerank(s, [0, 1], [0.1, 0.9])
    assert weak_order(out) == [[1], [0], [2, 3], [4]] and out[2] == out[3] == 0.5 and out[4] == 0.1
    # a pick (top1 verdicts) over [3, 2]: 2 first, then 3 tied with 1 (both 0.5, neither judged above the other)
    assert weak_order(scores_after_rerank(s, [0, 3, 2], [0.0, 0.0, 1.0])) == [[2], [0], [1, 3], [4]]
    # with the items: 4 is the same item as 0, but 4 does not tie with the k-th score, so it is not a copy left out
    items = ["a", "b", "c", "b", "a"]
    assert weak_order(scores_after_rerank(s, [0, 1], [0.0, 1.0], items)) == [[1, 3], [0], [2], [4]]
    with pytest.raises(ValueError):
        scores_after_rerank(s, [0, 1], [1.0])
