"""Reranked evaluation of compositional (SugarCrepe) tasks: their own pairwise mode (the paper's: the
reranker's P(Yes) of each caption, the higher wins), independent of the run-wide listwise mode."""

from __future__ import annotations

import numpy as np
import pytest

from tests.eval.helpers import build_world, run_suite
from unime.eval.runners import Reranking

# P(Yes) per caption text: every row's positive scores above its negative
CAPTION_SCORES = {"orange": 0.9, "red": 0.8, "blue": 0.7, "green": 0.6, "green green": 0.1}


class CaptionReranker:
    """score_pairs from CAPTION_SCORES; pick always takes the last shown candidate (a bad listwise head)."""

    def __init__(self):
        self.picks = 0
        self.pair_calls: list[int] = []

    def pick(self, query, candidates):
        self.picks += 1
        return len(candidates) - 1

    def score_pairs(self, query, candidates):
        self.pair_calls.append(len(candidates))
        return np.array([CAPTION_SCORES.get(c.text, 0.0) for c in candidates])


def test_sugarcrepe_is_reranked_pairwise_whatever_the_run_mode(tmp_path):
    world = build_world(tmp_path)
    rr = CaptionReranker()
    results, _, _ = run_suite(world, reranking=Reranking(rr, topk=2, mode="top1"))
    comp = results["colours_sugarcrepe"]
    assert comp.metrics["accuracy"] == 0.5  # the embedder alone (test_compositional_accuracy_per_category)
    assert comp.reranked["accuracy"] == 1.0  # every positive has the higher P(Yes)
    assert comp.rerank_stats["queries"] == 4
    # the MMEB tasks used the listwise pick (top1); the 4 compositional rows used 4 pairwise calls of 2
    assert rr.pair_calls.count(2) >= 4


def test_run_mode_on_sugarcrepe_follows_the_listwise_pick(tmp_path):
    world = build_world(tmp_path)
    rr = CaptionReranker()
    results, _, _ = run_suite(world, reranking=Reranking(rr, topk=2, mode="top1", compositional_mode="run"))
    comp = results["colours_sugarcrepe"]
    # the pick moves the embedder's second caption first: every row's outcome flips. s3's exact tie (a miss under
    # pessimistic ties) is shown the higher index first, under that policy: the negative, then the positive, which
    # this reranker's pick of the last shown candidate moves up (the tie resolved by the reranker, a hit)
    per = {e["id"]: (e["correct"], e["correct_reranked"]) for e in comp.per_query}
    assert per["s0"] == (True, False) and per["s1"] == (True, False) and per["s2"] == (False, True)
    assert per["s3"] == (False, True) and comp.reranked["accuracy"] == 0.5


def test_unknown_compositional_mode_is_refused():
    with pytest.raises(ValueError, match="compositional"):
        Reranking(CaptionReranker(), topk=2, mode="top1", compositional_mode="listwise")
