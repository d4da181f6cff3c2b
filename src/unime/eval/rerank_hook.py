"""The reranking seam of the evaluation harness (SPEC §1.6, inference).

The embedder ranks every candidate; a reranker then looks at the top k only:

- ``top1`` (the paper's): the reranker *picks* one of the top-k candidates (listwise generation); the
  picked one moves to rank 1 and every other candidate keeps the embedder's order. If the reranker
  cannot pick (returns ``None``: unparsable answer), the embedder's order is kept and the fallback is
  counted.
- ``resort``: the reranker scores every top-k candidate against the query (pairwise P(Yes)) and the
  top k are sorted by that score, descending; equal scores keep the embedder's order. Ranks beyond k
  are untouched.

The reranker sees the embedder's top k with ties broken by candidate index: it never sees the labels.

Any object with ``pick`` and ``score_pairs`` plugs in (`RerankerProtocol`); the real one is
`unime.models.reranker.Reranker`, loaded lazily by `load_reranker`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from unime.data.items import Item
from unime.errors import ModelError

RERANK_MODES = ("top1", "resort")


@runtime_checkable
class RerankerProtocol(Protocol):
    def pick(self, query: Item, candidates: list[Item]) -> int | None:
        """Index (into `candidates`) of the candidate that best meets the query, or None if undecided."""

    def score_pairs(self, query: Item, candidates: list[Item]) -> np.ndarray:
        """One relevance score per candidate (higher = better), e.g. P(Yes) of the pairwise prompt."""


@dataclass
class RerankStats:
    queries: int = 0
    fallbacks: int = 0  # top1: the reranker returned None, the embedder's order was kept

    def to_dict(self) -> dict:
        return {"queries": self.queries, "fallbacks": self.fallbacks}


def rerank(ranked_indices: Sequence[int], reranker: RerankerProtocol, query: Item, candidates: Sequence[Item],
           k: int, mode: str, *, stats: RerankStats | None = None) -> np.ndarray:
    """Rerank the top `k` of `ranked_indices` (candidate indices, best first); returns the new order.

    `candidates` is the full candidate list that `ranked_indices` index into.
    """
    if mode not in RERANK_MODES:
        raise ValueError(f"mode must be one of {RERANK_MODES}, got {mode!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    order = np.asarray(ranked_indices, dtype=np.int64)
    head, tail = order[:k], order[k:]
    shown = [candidates[int(i)] for i in head]
    if stats is not None:
        stats.queries += 1
    if mode == "top1":
        picked = reranker.pick(query, shown)
        if picked is None:
            if stats is not None:
                stats.fallbacks += 1
            return order.copy()
        picked = int(picked)
        if not 0 <= picked < len(head):
            raise ModelError(f"reranker picked candidate {picked} of {len(head)}")
        new_head = np.concatenate([head[picked:picked + 1], np.delete(head, picked)])
    else:
        scores = np.asarray(reranker.score_pairs(query, shown), dtype=np.float64).reshape(-1)
        if scores.shape[0] != len(head):
            raise ModelError(f"reranker returned {scores.shape[0]} scores for {len(head)} candidates")
        if not np.all(np.isfinite(scores)):
            raise ModelError("reranker returned NaN or infinite scores")
        # stable: equal reranker scores keep the embedder's order
        new_head = head[np.argsort(-scores, kind="stable")]
    return np.concatenate([new_head, tail])


def scores_after_rerank(scores: np.ndarray, new_order: np.ndarray, k: int) -> np.ndarray:
    """Scores that rank the reranked top k first, in the reranked order, with no ties among them; the
    rest keep their embedder scores. Lets the ordinary metrics (with their tie policy) score a reranked
    list."""
    out = np.asarray(scores, dtype=np.float64).copy()
    head = np.asarray(new_order[:k], dtype=np.int64)
    top = float(out.max()) + 1.0
    out[head] = top + np.arange(len(head), 0, -1, dtype=np.float64)
    return out


def load_reranker(path: str, *, device: str | None = None, dtype=None, data_root: str | None = None):
    """`unime.models.reranker.Reranker.from_pretrained(path, ...)`, imported only when asked for."""
    try:
        from unime.models.reranker import Reranker  # type: ignore[import-not-found]
    except ImportError as e:
        raise ModelError(f"cannot load the reranker {path!r}: unime.models.reranker is not available in this "
                         f"installation ({e}). The reranker ships with the reranker stage; until then "
                         "`unime eval` runs without --rerank.") from None
    if not hasattr(Reranker, "from_pretrained"):
        raise ModelError("unime.models.reranker.Reranker has no from_pretrained(); cannot load the reranker")
    kwargs = {"device": device, "dtype": dtype}
    if data_root is not None:
        kwargs["data_root"] = data_root
    reranker = Reranker.from_pretrained(path, **kwargs)
    if not isinstance(reranker, RerankerProtocol):
        raise ModelError(f"{type(reranker).__name__} does not provide pick() and score_pairs()")
    return reranker
