"""The sorting implementations the counting and selecting ones of `unime.eval.metrics` replaced, kept as the
reference their tests (and bench/eval_scoring_scale.py's "old") compare against, with the rows and the sort guard
those tests use."""

from __future__ import annotations

import numpy as np

from unime.eval import metrics as M


def reference_rank_order(scores, relevance=None, *, ties="pessimistic"):
    scores = np.asarray(scores, dtype=np.float64)
    index = np.broadcast_to(np.arange(scores.shape[-1]), scores.shape)
    if ties == "pessimistic" and relevance is not None:
        return np.lexsort((index, np.asarray(relevance, dtype=np.float64), -scores), axis=-1)
    return np.lexsort((index, -scores), axis=-1)


def reference_ranked_grades(scores, relevance, *, ties="pessimistic"):
    relevance = np.asarray(relevance, dtype=np.float64)
    return np.take_along_axis(relevance, reference_rank_order(scores, relevance, ties=ties), axis=-1)


def reference_first_relevant_rank(scores, relevance, *, ties="pessimistic"):
    g = reference_ranked_grades(scores, relevance, ties=ties) > 0
    return np.where(g.any(axis=-1), g.argmax(axis=-1), g.shape[-1])


def reference_top_order(scores, k):
    """What `unime eval --rerank` took a row's top k with before `M.top_order`: the whole row sorted."""
    return reference_rank_order(scores)[..., :k]


def reference_ndcg_at_k(grades_ranked, k):
    """`M.ndcg_at_k` as it was: the ideal DCG from the whole list of grades sorted."""
    g = np.asarray(grades_ranked, dtype=np.float64)
    ideal = M.dcg_at_k(np.sort(g)[::-1], k)
    return M.dcg_at_k(g, k) / ideal if ideal > 0 else 0.0


def random_tied_rows(rng, rows, n, levels, dtype):
    """Scores drawn from `levels` distinct values (many exact ties), with a positive and a negative zero."""
    values = np.linspace(-1, 1, levels).astype(dtype)
    values[levels // 2] = -0.0
    s = values[rng.integers(0, levels, size=(rows, n))]
    s[:, 0] = 0.0
    return s


def forbid_pool_sized_sort(monkeypatch):
    """np.lexsort / argsort / sort refuse rows longer than 100 (the relevant candidates alone may be sorted)."""
    def guard(name):
        real = getattr(np, name)

        def sort(a, *args, **kwargs):
            keys = a if name == "lexsort" else [a]
            assert all(np.shape(k)[-1] <= 100 for k in keys), f"np.{name} of a pool-sized row"
            return real(a, *args, **kwargs)
        return sort
    for name in ("lexsort", "argsort", "sort"):
        monkeypatch.setattr(np, name, guard(name))
