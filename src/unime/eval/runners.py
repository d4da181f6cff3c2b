"""Benchmark runners: MMEB protocol, global image↔text retrieval, compositional accuracy, graded relevance.

A run: read every task (bad data fails before any model work) → register every item with one
`RunEncoder` (distinct items across all tasks are encoded once, cached on disk; `encode_tasks`) → let the
embedder go → score each task (`score_tasks`), optionally reranking the top k
(`unime.models.reranker.rerank_many`: the reranker loads only now, never beside the embedder) → write the
report (`report`).

Scores are cosine similarities of L2-normalised embeddings. Ties follow `metrics` (``ties=``).
Metric values are fractions in [0, 1]; the markdown table shows them x100 like the papers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from unime.data.image_digests import ImageDigests
from unime.data.io import raw_message
from unime.data.items import Item
from unime.data.video import VideoOptions
from unime.errors import DataError, ModelError
from unime.eval import metrics as M
from unime.eval.mmeb_v2 import headline_metric
from unime.eval.tasks import (CompositionalData, EmptyTaskError, MissingTaskDataError, MMEBData, QrelsData,
                              RetrievalData, TaskData, TaskSpec, TaskSuite, load_task_config, load_task_data)
from unime.models.embedding_cache import (RunEncoder, cache_settings, default_cache_dir, embedding_settings,
                                          image_root, model_fingerprint)
from unime.models.image_budget import ImageOptions
from unime.models.loading import (EmbedderOptions, checkpoint_image_loader, free_dropped_models,
                                 refuse_missing_local_model)
from unime.models.reranker import LISTWISE_BATCH, RERANK_MODES, RerankerProtocol, RerankStats, rerank_many
from unime.options import allow_outside_root_option, on_error_option, option

log = logging.getLogger(__name__)

DEFAULT_RERANK_TOPK = 5  # the paper's Table 3 (the released code uses 10)


@dataclass
class EvalOptions:
    ties: str = "pessimistic"
    rerank_topk: int = DEFAULT_RERANK_TOPK
    rerank_mode: str = "top1"
    chunk_rows: int = 512  # query rows scored at once in global retrieval
    run_depth: int = 0  # > 0: qrels tasks keep each query's top `run_depth` candidates (`TaskResult.run`)

    def __post_init__(self):
        M.check_ties(self.ties)
        if self.rerank_mode not in RERANK_MODES:
            raise ValueError(f"rerank mode must be one of {RERANK_MODES}, got {self.rerank_mode!r}")
        if self.rerank_topk < 1:
            raise ValueError("rerank top-k must be >= 1")


@dataclass
class TaskResult:
    spec: TaskSpec
    metrics: dict[str, float]
    counts: dict[str, int]
    reranked: dict[str, float] | None = None
    rerank_stats: dict | None = None
    per_query: list[dict] | None = None
    seconds: float = 0.0
    # a qrels task under `EvalOptions.run_depth`: per query (its id, [(candidate id, score), ..] best first, in the
    # order the metrics ranked them), written as a TREC run by `unime eval --save-run` (`report.write_run`)
    run: list[tuple[str, list[tuple[str, float]]]] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"task": self.spec.name, "format": self.spec.format, "meta_task": self.spec.meta_task,
                             "split": self.spec.split, "path": str(self.spec.path), "metrics": self.metrics,
                             "counts": self.counts, "seconds": round(self.seconds, 3)}
        if self.reranked is not None:
            d["metrics_reranked"] = self.reranked
            d["rerank_stats"] = self.rerank_stats
        if self.per_query is not None:
            d["per_query"] = self.per_query
        return d


COMPOSITIONAL_RERANK_MODES = ("pairwise", "run")


@dataclass
class Reranking:
    reranker: Any
    topk: int
    mode: str
    stats: RerankStats = field(default_factory=RerankStats)
    # compositional (SugarCrepe) tasks: "pairwise" = P(Yes) of each caption, the higher wins (the paper's
    # protocol, SPEC 1.6); "run" = the run-wide `mode` on the two captions
    compositional_mode: str = "pairwise"

    def __post_init__(self):
        if self.compositional_mode not in COMPOSITIONAL_RERANK_MODES:
            raise ValueError(f"compositional rerank mode must be one of {COMPOSITIONAL_RERANK_MODES}, "
                             f"got {self.compositional_mode!r}")


Vectors = Callable[[np.ndarray], np.ndarray]  # task item indices → L2-normalised vectors


def scores_after_rerank(scores: np.ndarray, head: np.ndarray, keys: np.ndarray,
                        candidates: Sequence | None = None) -> np.ndarray:
    """Scores that rank a row as reranked, for the ordinary metrics (with their tie policy) to score it.

    The top k shown to the reranker (`head`, candidate indices) rank first, by the reranker's verdict on each
    (`keys`, higher first: `rerank_many(..., return_keys=True)`), then by the embedder's score; two candidates equal
    in both stay tied, so a tie the reranker did not resolve is still a tie for the tie policy (a reranker that
    changes nothing gives the embedder's ranking). A candidate outside the top k that scores as much as the k-th
    (left out only by the order among equal scores) was never judged: it ties with the last of the reranked top k
    when that one has its embedder score, else ranks just below the top k. With `candidates` (the row's items),
    a candidate that is the same item as a shown one shares its verdict (the highest, if shown twice): a pick
    between copies of one item resolves nothing. The rest keep their embedder scores, below the top k."""
    out = np.asarray(scores, dtype=np.float64).copy()
    head = np.asarray(head, dtype=np.int64)
    verdict = np.asarray(keys, dtype=np.float64).reshape(-1)
    if verdict.shape != head.shape:
        raise ValueError(f"{len(verdict)} reranker verdicts for {len(head)} candidates")
    if not len(head):
        return out
    kth = out[head].min()
    outside = np.ones(len(out), dtype=bool)
    outside[head] = False
    tied = np.flatnonzero(outside & (out == kth))
    emb = out[head]
    if candidates is not None and (len(tied) or len({candidates[c] for c in head}) < len(head)):
        best: dict = {}
        for c, v in zip(head, verdict):
            best[candidates[c]] = max(v, best.get(candidates[c], v))
        copy = np.array([candidates[c] in best for c in tied], dtype=bool)
        head, tied = np.concatenate([head, tied[copy]]), tied[~copy]
        verdict = np.array([best[candidates[c]] for c in head], dtype=np.float64)
        emb = out[head]
    # dense rank of each (verdict, embedder score) pair, ascending (np.lexsort: the last key is the primary one)
    order = np.lexsort((emb, verdict))
    step = (np.diff(verdict[order]) != 0) | (np.diff(emb[order]) != 0)
    rank = np.empty(len(head), dtype=np.float64)
    rank[order] = np.concatenate([[0.0], np.cumsum(step)])
    top = float(out.max()) + 1.0
    out[head] = top + 1.0 + rank
    if emb[order[0]] == kth:  # the last of the top k has the score of the candidates tied with it outside
        out[tied] = top + 1.0
    return out


def load_reranker(path: str, *, device: str | None = None, dtype=None, data_root: str | None = None,
                  image_budget=None, batch_size: int | None = None, allow_outside_root: bool = False,
                  attn_implementation: str | None = None):
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
    if image_budget is not None and image_budget.is_set:
        kwargs["image_budget"] = image_budget
    if batch_size is not None:
        kwargs["batch_size"] = batch_size
    if allow_outside_root:
        kwargs["allow_outside_root"] = True
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    from unime.models.loading import loading_as

    with loading_as("--rerank"):
        reranker = Reranker.from_pretrained(path, **kwargs)
    if not isinstance(reranker, RerankerProtocol):
        raise ModelError(f"{type(reranker).__name__} does not provide pick() and score_pairs()")
    return reranker


def _rerank_scores(rows: Sequence[np.ndarray], rr: Reranking, queries: Sequence[Item],
                   candidate_lists: Sequence[Sequence[Item]], *, ties: str) -> list[np.ndarray]:
    """Each row of embedder scores after reranking its top k (the queries' picks asked of the reranker
    together: `rerank_many`), as `scores_after_rerank` scores. Only each row's top k is selected (`M.top_order`),
    not the whole row sorted; the rows of a matrix (a chunk of a global pool) are selected at once.

    The top k is chosen, and shown to the reranker (the listwise prompt's order), by score and then by a
    label-free order among equal scores that follows the tie policy `ties`: ``"index"`` the lower index first (as
    the embedder's own ranking then is); ``"pessimistic"`` the higher index first, so that a positive listed first
    (MMEB's, at index 0) is shown after the candidates it ties with and is the first left out at a tie on the k-th
    score: exactly the embedder's pessimistic order there, and never an advantage of its position."""
    later = ties == "pessimistic"
    orders = (list(M.top_order(rows, rr.topk, later_first=later)) if isinstance(rows, np.ndarray)
              else [M.top_order(s, rr.topk, later_first=later) for s in rows])
    _, keys = rerank_many(orders, rr.reranker, queries, candidate_lists, rr.topk, rr.mode, stats=rr.stats,
                          return_keys=True)
    return [scores_after_rerank(s, o, v, c) for s, o, v, c in zip(rows, orders, keys, candidate_lists)]


# -- MMEB ------------------------------------------------------------------------------------------------

def run_mmeb(spec: TaskSpec, data: MMEBData, vecs: Vectors, opts: EvalOptions, rr: Reranking | None = None
             ) -> TaskResult:
    """Each query ranked against its own candidates (positive at index 0); Precision@1 (= Hit@1), plus
    Recall@5 / @10 (= Hit@K with one positive: the ceiling of a reranker that sees the top K) and the chance
    level of each (a random ranking: mean over rows of min(K, n) / n for a row of n candidates).

    A row that lists its positive again among the negatives (the same item) can never score under
    pessimistic ties; such rows are counted (`counts["repeated_positive_rows"]`) and logged."""
    table = vecs(np.arange(len(data.table)))
    items = data.table.items
    rows, per_query, ranks = [], [], []
    repeated = []
    for i, (q, cands) in enumerate(zip(data.query, data.candidates)):
        s = table[cands] @ table[q]
        rows.append(s)
        rel = np.zeros(len(cands))
        rel[0] = 1.0
        if np.any(cands[1:] == cands[0]):
            repeated.append(i)
        top = M.top_ranked(s, rel, ties=opts.ties)
        ranks.append(int(M.first_relevant_rank(s, rel, ties=opts.ties)))
        per_query.append({"id": data.ids[i], "top1": top, "hit": top == 0, "rank": ranks[-1] + 1})
    rows_rr = []
    if rr is not None:
        with image_root(rr.reranker, spec.data_root):
            rows_rr = _rerank_scores(rows, rr, [items[q] for q in data.query],
                                     [[items[c] for c in cands] for cands in data.candidates], ties=opts.ties)
        for entry, s2 in zip(per_query, rows_rr):
            rel = np.zeros(len(s2))
            rel[0] = 1.0
            entry["top1_reranked"] = M.top_ranked(s2, rel, ties=opts.ties)
    hits = M.positive_first_hits(rows, ties=opts.ties)
    sizes = np.array([len(c) for c in data.candidates])
    counts = {"queries": len(rows), "candidates": int(sizes.sum()), "candidates_per_query_min": int(sizes.min()),
              "candidates_per_query_max": int(sizes.max()), "distinct_items": len(data.table),
              "repeated_positive_rows": len(repeated)}
    if repeated:
        first = ", ".join(f"{j + 1}" + (f" (id {data.ids[j]})" if data.ids[j] else "") for j in repeated[:5])
        log.warning("%s: %d of %d rows list their positive again among the negatives (rows %s%s); under %s ties "
                    "they cannot score", spec.name, len(repeated), len(rows), first,
                    ", ..." if len(repeated) > 5 else "", opts.ties)
    metrics = {"precision@1": float(hits.mean())}
    r = np.asarray(ranks)
    for k in (5, 10):
        metrics[f"recall@{k}"] = float(np.mean(r < k))
    for k in (1, 5, 10):
        metrics[f"chance@{k}"] = float(np.mean(np.minimum(k, sizes) / sizes))
    result = TaskResult(spec, metrics, counts, per_query=per_query)
    if rr is not None:
        result.reranked = {"precision@1": float(M.positive_first_hits(rows_rr, ties=opts.ties).mean())}
    return result


# -- global retrieval ------------------------------------------------------------------------------------

def _first_ranks(q: np.ndarray, g: np.ndarray, relevant: Callable[[np.ndarray], np.ndarray], opts: EvalOptions,
                 rerank_fn: Callable[[np.ndarray, np.ndarray], list[np.ndarray]] | None = None) -> np.ndarray:
    """0-based rank of the first relevant gallery item for every query row (chunked; `rerank_fn` maps a
    chunk's query rows and their score rows to the reranked score rows)."""
    out = np.empty(len(q), dtype=np.int64)
    for s in range(0, len(q), opts.chunk_rows):
        idx = np.arange(s, min(s + opts.chunk_rows, len(q)))
        scores = q[idx] @ g.T
        if rerank_fn is not None:
            scores = np.stack(rerank_fn(idx, scores))
        out[idx] = M.first_relevant_rank(scores, relevant(idx), ties=opts.ties)
    return out


def run_retrieval(spec: TaskSpec, data: RetrievalData, vecs: Vectors, opts: EvalOptions,
                  rr: Reranking | None = None) -> TaskResult:
    """Image↔text retrieval over the whole gallery, several captions per image.

    text→image: each caption is a query; its image is the one relevant item.
    image→text: each image is a query; a hit if any of its captions is in the top K.
    """
    ks = spec.option("recall_ks", [1, 5, 10])
    img, cap = vecs(data.image), vecs(data.caption)
    n_img = len(data.image)
    # relevance as boolean masks (a chunk's float64 copy would be 8x their size)
    t2i_rel = lambda idx: data.caption_image[idx][:, None] == np.arange(n_img)[None, :]  # noqa: E731
    i2t_rel = lambda idx: idx[:, None] == data.caption_image[None, :]  # noqa: E731
    items = data.table.items
    img_items = [items[i] for i in data.image]
    cap_items = [items[i] for i in data.caption]

    def compute(rerank_t2i=None, rerank_i2t=None) -> dict[str, float]:
        t2i = M.recall_at_ks(_first_ranks(cap, img, t2i_rel, opts, rerank_t2i), ks)
        i2t = M.recall_at_ks(_first_ranks(img, cap, i2t_rel, opts, rerank_i2t), ks)
        out = {f"text_to_image/recall@{k}": v for k, v in t2i.items()}
        out.update({f"image_to_text/recall@{k}": v for k, v in i2t.items()})
        return out

    counts = {"images": n_img, "captions": len(data.caption), "distinct_items": len(data.table)}
    result = TaskResult(spec, compute(), counts)
    if rr is not None:
        with image_root(rr.reranker, spec.data_root):
            result.reranked = compute(
                lambda idx, s: _rerank_scores(s, rr, [cap_items[i] for i in idx], [img_items] * len(idx),
                                              ties=opts.ties),
                lambda idx, s: _rerank_scores(s, rr, [img_items[i] for i in idx], [cap_items] * len(idx),
                                              ties=opts.ties))
    return result


# -- compositional ---------------------------------------------------------------------------------------

def run_compositional(spec: TaskSpec, data: CompositionalData, vecs: Vectors, opts: EvalOptions,
                      rr: Reranking | None = None) -> TaskResult:
    """SugarCrepe style: correct when the image is closer to the positive caption than to the negative one
    (an exact tie is a miss under ``ties="pessimistic"``, a hit under ``"index"``: positive listed first)."""
    img, pos, neg = vecs(data.image), vecs(data.positive), vecs(data.negative)
    s_pos = np.einsum("nd,nd->n", img, pos).astype(np.float64)
    s_neg = np.einsum("nd,nd->n", img, neg).astype(np.float64)
    correct = M.positive_first_hits(np.stack([s_pos, s_neg], axis=1), ties=opts.ties)
    cats = np.asarray(data.category)

    def summarise(ok: np.ndarray) -> dict[str, float]:
        out = {"accuracy": float(ok.mean())}
        for c in sorted(set(data.category)):
            out[f"accuracy/{c}"] = float(ok[cats == c].mean())
        return out

    per_query = [{"id": data.ids[i], "category": data.category[i], "correct": bool(correct[i]),
                  "margin": float(s_pos[i] - s_neg[i])} for i in range(len(correct))]
    counts = {"queries": len(correct), "distinct_items": len(data.table)}
    for c in sorted(set(data.category)):
        counts[f"queries/{c}"] = int((cats == c).sum())
    result = TaskResult(spec, summarise(correct), counts, per_query=per_query)
    if rr is not None:
        items = data.table.items
        rows = []
        queries = [items[i] for i in data.image]
        captions = [[items[p], items[n]] for p, n in zip(data.positive, data.negative)]
        with image_root(rr.reranker, spec.data_root):
            if rr.compositional_mode == "pairwise":  # P(Yes) of both captions, independent of the embedder
                for query, pair in zip(queries, captions):
                    p = np.asarray(rr.reranker.score_pairs(query, pair), dtype=np.float64).reshape(-1)
                    if p.shape[0] != 2 or not np.all(np.isfinite(p)):
                        raise ModelError(f"reranker returned {p.tolist()} for 2 captions")
                    rr.stats.queries += 1
                    rows.append(p)
            else:
                rows = _rerank_scores(list(np.stack([s_pos, s_neg], axis=1)), rr, queries, captions, ties=opts.ties)
        ok_rr = M.positive_first_hits(rows, ties=opts.ties)
        result.reranked = summarise(ok_rr)
        for i, e in enumerate(per_query):
            e["correct_reranked"] = bool(ok_rr[i])
    return result


# -- graded relevance ------------------------------------------------------------------------------------

def score_graded_queries(spec: TaskSpec, data: QrelsData, vecs: Vectors, opts: EvalOptions, rr: Reranking | None,
                         per_query_metrics: Callable[[np.ndarray], dict[str, float]], *,
                         run: list | None = None) -> tuple[list[dict], list[dict], list[dict], int]:
    """Rank each query's graded candidates by cosine (and, with `rr`, after reranking) and score the ranked
    grades with `per_query_metrics`. Queries without a relevant candidate are counted and left out.
    Returns (plain metrics, reranked metrics, per-query entries with ids, skipped count). With `run` (a list), each
    scored query's top `opts.run_depth` candidates by cosine are appended to it: (query id, [(candidate id, score),
    ..]) in the metrics' order (their tie policy); a candidate's id is its BEIR `_id`, else its index in the row.

    A BEIR corpus document whose id is the query's (`QrelsData.identical`) is never retrieved for it, as BEIR's
    ``ignore_identical_ids`` (its default) drops it from the results: it ranks after every other candidate (so it
    is out of a reranked top k smaller than the corpus) and is left out of `run`; a grade of it still counts in the
    ideal ranking (NDCG) and in the relevant total (recall), as BEIR's qrels keep it. (BEIR scores MRR and MAP on
    the retrieved list, where it is not; here a *relevant* one at the last rank adds 1/rank-sized terms. BEIR's
    own qrels do not judge a query's own document relevant.)"""
    table = vecs(np.arange(len(data.table)))
    items = data.table.items
    plain, reranked, entries = [], [], []
    kept, rows = [], []
    for i, (q, cands, grades) in enumerate(zip(data.query, data.candidates, data.grades)):
        if not np.any(grades > 0):
            continue
        s = table[cands] @ table[q]
        own = data.identical[i] if data.identical is not None else -1
        if own >= 0:  # below every other candidate (cosines are in [-1, 1])
            s = np.asarray(s, dtype=np.float64)
            s[own] = float(s.min()) - 2.0
        m = per_query_metrics(M.ranked_grades(s, grades, ties=opts.ties))
        plain.append(m)
        entries.append({"id": data.ids[i], **m})
        kept.append(i)
        rows.append(s)
        if run is not None:
            top = [j for j in M.rank_order(s, grades, ties=opts.ties)[:opts.run_depth + 1] if j != own][:opts.run_depth]
            run.append((str(data.ids[i]), [(data.corpus_ids[j] if data.corpus_ids else str(j), float(s[j]))
                                           for j in top]))
    skipped = len(data.query) - len(kept)
    if rr is not None and kept:
        with image_root(rr.reranker, spec.data_root):
            rows_rr = _rerank_scores(rows, rr, [items[data.query[i]] for i in kept],
                                     [[items[c] for c in data.candidates[i]] for i in kept], ties=opts.ties)
        for i, entry, s2 in zip(kept, entries, rows_rr):
            m2 = per_query_metrics(M.ranked_grades(s2, data.grades[i], ties=opts.ties))
            reranked.append(m2)
            entry["reranked"] = m2
    if not plain:
        from unime.errors import DataError

        raise DataError(f"task {spec.name!r}: no query has a relevant candidate", source=str(spec.path))
    return plain, reranked, entries, skipped


def run_qrels(spec: TaskSpec, data: QrelsData, vecs: Vectors, opts: EvalOptions, rr: Reranking | None = None
              ) -> TaskResult:
    """NDCG@k (linear gain), Recall@k, MRR and MAP (binary: grade > 0) averaged over the queries that have
    at least one relevant candidate; queries without one are counted and left out (as BEIR does)."""
    ks = spec.option("ks", [5, 10])

    def per_query_metrics(g_ranked: np.ndarray) -> dict[str, float]:
        m = {f"ndcg@{k}": M.ndcg_at_k(g_ranked, k) for k in ks}
        m.update({f"recall@{k}": M.recall_at_k(g_ranked, k) for k in ks})
        m["mrr"] = M.reciprocal_rank(g_ranked)
        m["map"] = M.average_precision(g_ranked)
        return m

    run = [] if opts.run_depth > 0 else None
    plain, reranked, per_query, skipped = score_graded_queries(spec, data, vecs, opts, rr, per_query_metrics, run=run)
    mean = lambda rows: {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}  # noqa: E731
    counts = {"queries": len(plain), "queries_without_relevant": skipped, "distinct_items": len(data.table)}
    result = TaskResult(spec, mean(plain), counts, per_query=per_query, run=run)
    if rr is not None:
        result.reranked = mean(reranked)
    return result


def run_mmeb_v2(spec: TaskSpec, data: QrelsData, vecs: Vectors, opts: EvalOptions, rr: Reranking | None = None
                ) -> TaskResult:
    """Hit@1 and NDCG@k (linear gain) / recall@k per query, averaged over the queries with a relevant
    candidate; the headline metric (``metric``) is listed first."""
    ks = spec.option("ks", [1, 5, 10])

    def per_query(g: np.ndarray) -> dict[str, float]:
        m = {"hit@1": M.hit_at_k(g, 1)}
        m.update({f"ndcg@{k}": M.ndcg_at_k(g, k) for k in sorted(set(ks) | {5})})
        m.update({f"recall@{k}": M.recall_at_k(g, k) for k in ks})
        return m

    head = headline_metric(spec)
    plain, reranked, details, skipped = score_graded_queries(spec, data, vecs, opts, rr, per_query)

    def mean(rows: list[dict]) -> dict[str, float]:
        keys = [head] + [k for k in rows[0] if k != head]
        return {k: float(np.mean([r[k] for r in rows])) for k in keys}

    counts = {"queries": len(plain), "queries_without_relevant": skipped, "distinct_items": len(data.table),
              "candidates_per_query": int(np.mean([len(c) for c in data.candidates]))}
    result = TaskResult(spec, mean(plain), counts, per_query=details)
    if rr is not None:
        result.reranked = mean(reranked)
    return result


RUNNERS = {"mmeb": run_mmeb, "retrieval": run_retrieval, "compositional": run_compositional, "qrels": run_qrels,
           "mmeb_v2": run_mmeb_v2}


# -- a whole run -----------------------------------------------------------------------------------------

@dataclass
class RunOutput:
    results: list[TaskResult]
    encoding: dict
    timing: dict
    rerank: dict | None = None
    attempts: int | None = None  # this run's attempt (1 + the interrupted ones it continued), when resumable


@dataclass
class EncodedTasks:
    """`encode_tasks`' result: the tasks, each task's rows in the encoder (every row encoded) and the timings."""
    tasks: list[tuple[TaskSpec, TaskData]]
    rows: list[np.ndarray]
    timing: dict[str, float]


def run_tasks(tasks: list[tuple[TaskSpec, TaskData]], encoder: RunEncoder, *, opts: EvalOptions | None = None,
              reranking: Reranking | None = None, show_progress: bool = False) -> RunOutput:
    """Register every task's items, encode the distinct ones once, score every task."""
    return score_tasks(encode_tasks(tasks, encoder), encoder, opts=opts, reranking=reranking,
                       show_progress=show_progress)


def encode_tasks(tasks: list[tuple[TaskSpec, TaskData]], encoder: RunEncoder) -> EncodedTasks:
    """Register every task's items and encode the distinct ones once: after this the scoring (`score_tasks`)
    reads vectors only, and the embedder can be let go before a reranker loads."""
    t0 = time.perf_counter()
    task_rows = [encoder.add(data.table.items, spec.data_root, references=data.references, source=str(spec.path),
                             where=data.table.origins) for spec, data in tasks]
    t1 = time.perf_counter()
    encoder.encode_pending()
    t2 = time.perf_counter()
    return EncodedTasks(tasks, task_rows, {"keys_seconds": round(t1 - t0, 3), "encode_seconds": round(t2 - t1, 3)})


def score_tasks(encoded: EncodedTasks, encoder: RunEncoder, *, opts: EvalOptions | None = None,
                reranking: Reranking | None = None, show_progress: bool = False) -> RunOutput:
    """Score every task of `encoded` from `encoder`'s vectors (and rerank each one's top k with `reranking`)."""
    opts = opts or EvalOptions()
    t2 = time.perf_counter()
    results = []
    it = zip(encoded.tasks, encoded.rows)
    if show_progress:
        from tqdm.auto import tqdm

        it = tqdm(list(it), desc="score", unit="task")
    for (spec, data), rows in it:
        ts = time.perf_counter()
        res = RUNNERS[spec.format](spec, data, lambda idx, rows=rows: encoder.vectors(rows[np.asarray(idx)]),
                                   opts, reranking)
        if reranking is not None:
            res.rerank_stats = reranking.stats.to_dict()
            reranking.stats = RerankStats()
            own = getattr(reranking.reranker, "stats", None)  # the reranker's own counters, if it keeps any
            if callable(getattr(own, "as_dict", None)):
                res.rerank_stats["reranker"] = own.as_dict()
                if callable(getattr(own, "reset", None)):
                    own.reset()
        res.seconds = time.perf_counter() - ts
        if data.skipped:
            res.counts["skipped_rows"] = data.skipped
        if getattr(data, "dropped_candidates", 0):
            res.counts["dropped_candidates"] = data.dropped_candidates
        results.append(res)
        log.info("%s: %s", spec.name, ", ".join(f"{k}={v:.4f}" for k, v in res.metrics.items()))
    t3 = time.perf_counter()
    timing = {**encoded.timing, "score_seconds": round(t3 - t2, 3)}
    rerank_info = None
    if reranking is not None:
        rerank_info = {"topk": reranking.topk, "mode": reranking.mode,
                       "compositional_mode": reranking.compositional_mode}
    return RunOutput(results=results, encoding=encoder.stats.to_dict(), timing=timing, rerank=rerank_info)


class SuiteData(list):
    """`load_suite_data`'s (spec, data) pairs of the tasks read, `skipped_tasks`: {task name: why the skip
    policy left it out ("no data file: ..." or "no good rows: ...", the task's error and its first bad row)}, and
    `skipped_task_rows`: {task name: its bad rows} of the tasks left out that had rows."""

    def __init__(self, pairs=(), skipped_tasks: dict[str, str] | None = None,
                 skipped_task_rows: dict[str, int] | None = None):
        super().__init__(pairs)
        self.skipped_tasks = dict(skipped_tasks or {})
        self.skipped_task_rows = dict(skipped_task_rows or {})


def load_suite_data(suite: TaskSuite, *, on_error: str = "raise", image_loader=None) -> SuiteData:
    """Read every task (fails on the first bad row unless ``on_error="skip"``, which counts skipped rows
    per task: they appear in each task's ``counts["skipped_rows"]``). Under the skip policy a task without
    its data file (a partial copy of a benchmark), or left with no rows (or, graded, with no query that has a
    relevant candidate) is reported and left out, why recorded in the result's `skipped_tasks`
    (`skipped_task_names`); an error only when no task is left, and
    media are checked by `image_loader`'s rules under each task's data root (`load_task_data`: the model's loader,
    `unime.models.loading.checkpoint_image_loader`, with the run's video sampling)."""
    out = SuiteData()
    for spec in suite.tasks:
        try:
            data = load_task_data(spec, on_error=on_error, image_loader=image_loader)
        except EmptyTaskError as e:  # MissingTaskDataError included
            missing = isinstance(e, MissingTaskDataError)
            if on_error != "skip":
                if not missing:
                    raise
                raise MissingTaskDataError(f"{raw_message(e)}; evaluate the tasks you have with --task NAME "
                                           "(repeatable), or leave out the ones without data with --on-error skip",
                                           source=e.source) from e
            first = f"; first bad row: {e.first_skipped}" if e.first_skipped is not None else ""
            log.warning("%s; the task is left out, the others are scored%s", e, first)
            out.skipped_tasks[spec.name] = f"{'no data file' if missing else 'no good rows'}: {e}{first}"
            if e.skipped:
                out.skipped_task_rows[spec.name] = e.skipped
            continue
        dropped = getattr(data, "dropped_candidates", 0)
        log.info("task %s (%s): %d distinct items, %d references%s%s", spec.name, spec.format, len(data.table),
                 data.references, f", {data.skipped} rows skipped" if data.skipped else "",
                 f", {dropped} bad candidates dropped" if dropped else "")
        out.append((spec, data))
    if not out:
        raise DataError(f"no task has (good) rows: {[t.name for t in suite.tasks]}", source=str(suite.source))
    return out


def skipped_task_names(suite: TaskSuite, data: list[tuple[TaskSpec, TaskData]]) -> list[str]:
    """The tasks of `suite` that `load_suite_data` left out (no data file, no good rows, or none to
    score, under the skip policy)."""
    read = {spec.name for spec, _ in data}
    return [t.name for t in suite.tasks if t.name not in read]


def eval_on_error_option():
    """The `--on-error` option of the commands that evaluate a task config (`unime eval`, `unime eval reference`,
    `unime reason eval`): `load_suite_data`'s policy, what it left out reported by `skipped_data_meta`."""
    return on_error_option("a bad data row stops the run (raise, default) or is left out and counted (skip)")


def skipped_data_meta(suite: TaskSuite, data: SuiteData, on_error: str) -> dict:
    """A run's meta entries on what `load_suite_data(suite, on_error=...)` left out (`data`): rows (those of the
    tasks left out included, per task in `skipped_task_rows`), bad candidates, tasks and why (the report's
    `unime.eval.report.skip_lines`)."""
    rows = sum(d.skipped for _, d in data) + sum(data.skipped_task_rows.values())
    return {"on_error": on_error, "skipped_rows": rows, "skipped_task_rows": data.skipped_task_rows,
            "skipped_tasks": skipped_task_names(suite, data), "skipped_task_reasons": data.skipped_tasks,
            "dropped_candidates": sum(getattr(d, "dropped_candidates", 0) for _, d in data)}


@dataclass(kw_only=True)
class EvalConfig(EmbedderOptions, ImageOptions, VideoOptions):
    """Options of `unime eval`: each field declares its option (`unime.options`)."""

    model: str | None = option(None, "embedder checkpoint (HF folder, hub id, or PEFT adapter folder)")
    tasks: list[str] | str | None = option(
        None, "task config YAML, a folder holding eval_tasks.yaml (e.g. the demo world or a `data import` folder), "
              "the name of a shipped config (mmeb_v1), MMEB-eval files (.jsonl / .parquet, one task each) / "
              "folders of them, or BEIR folders (corpus.jsonl, queries.jsonl, qrels/*.tsv: a qrels task each, named "
              "after the folder, images relative to it)", nargs="+", metavar="TASKS")
    tasks_root: str | None = option(None, "folder the task paths are relative to (overrides the config's root; e.g. "
                                    "your MMEB-eval folder for --tasks mmeb_v1)")
    only: list[str] | None = option(None, "evaluate only this task (repeatable)", dest="task", action="append",
                                    metavar="NAME")
    out: str | None = option(None, "output folder (required)")
    compare: list[str] = option(help="result folders to put side by side (with this run, if --model is given)",
                                factory=list, nargs="+", metavar="DIR", cli_default=[])
    pooling: str = option("auto", "auto: <emb> token if the tokenizer has it, else the last token",
                          choices=["auto", "last", "emb"])
    cache_dir: str | None = option(None, "embedding cache folder (default: $UNIME_CACHE_DIR/embeddings or "
                                   "~/.cache/unime/embeddings)")
    no_cache: bool = option(False, "do not read or write the embedding cache")
    ties: str = option("pessimistic", "exact score ties: pessimistic = a tie with a relevant item counts against it "
                       "(default); index = lower candidate index wins (VLM2Vec's argmax)", choices=list(M.TIE_POLICIES))
    on_error: str = eval_on_error_option()
    allow_outside_root: bool = allow_outside_root_option()
    rerank_path: str | None = option(None, "reranker checkpoint: report every task with and without reranking",
                                     dest="rerank", metavar="CKPT")
    rerank_topk: int = option(DEFAULT_RERANK_TOPK, "candidates the reranker sees (default %(default)s, the paper's)",
                              dest="topk", at_least=1)
    rerank_mode: str = option("top1", "top1: the reranker's pick moves to rank 1; resort: sort the top k by pairwise "
                              "score", dest="mode", choices=list(RERANK_MODES))
    rerank_batch: int = option(LISTWISE_BATCH, "listwise prompts the reranker generates together (the picks do not "
                               "depend on it; default %(default)s)", at_least=1)
    rerank_compositional: str = option(
        "pairwise", "reranking of compositional (SugarCrepe) tasks: pairwise = the reranker's P(Yes) of each caption, "
                    "the higher wins (the paper's); run = the run-wide --mode", dest="compositional_mode",
        choices=list(COMPOSITIONAL_RERANK_MODES))
    save_run: int | None = option(None, "write runs/TASK.trec for every qrels task (BEIR folders, qrels rows): each "
                                  "query's top N candidates by the embedder as a TREC run (query_id Q0 doc_id rank "
                                  "score unime), for trec_eval / ir_measures", at_least=1, metavar="N")
    overwrite: bool = option(False, cli=False)  # a re-run with other options starts over (else refused)

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.tasks, (list, tuple)) and len(self.tasks) == 1:  # one config: its path, as recorded
            self.tasks = self.tasks[0]


def evaluate_checkpoint(cfg: EvalConfig, *, show_progress: bool = True) -> dict:
    """`unime eval --model ...`: evaluate the embedder `cfg.model` on the task config(s) `cfg.tasks` into the
    folder `cfg.out`; returns the summary.

    Follows the resume convention (`unime.eval.rerun`): a re-run continues from the embedding cache, a
    finished run (same options and inputs) returns its summary (with `"finished_before": True`) and does
    nothing, other options raise `ChangedOptions` unless `cfg.overwrite`."""
    from dataclasses import asdict

    from unime.eval import report, rerun
    from unime.models.embedder import Embedder
    from unime.options import option_aliases

    from unime.data.video import VideoSampling
    from unime.models.image_budget import ImageBudget

    t_start = time.perf_counter()
    model, tasks, out_dir, tasks_root, only, device, dtype, batch_size, ties, on_error, rerank_path = (
        cfg.model, cfg.tasks, cfg.out, cfg.tasks_root, cfg.only, cfg.device, cfg.dtype, cfg.batch_size, cfg.ties,
        cfg.on_error, cfg.rerank_path)
    video_sampling, image_budget = VideoSampling.from_fields(cfg), ImageBudget.from_args(cfg)
    opts = EvalOptions(ties=ties, rerank_topk=cfg.rerank_topk, rerank_mode=cfg.rerank_mode,
                       run_depth=cfg.save_run or 0)
    suite = load_task_config(tasks, root=tasks_root, only=only)
    # bad data fails here, before the model is loaded (under skip, videos decoded: a clip damaged past its header
    # leaves its row out, not the run)
    data = load_suite_data(suite, on_error=on_error,
                           image_loader=checkpoint_image_loader(model, image_budget, video=video_sampling,
                                                                allow_outside_root=cfg.allow_outside_root))
    # the options that change the results (batch size, cache and progress bars do not)
    run_options = {"model": str(model), "tasks": tasks, "tasks_root": tasks_root, "only": only, "device": device,
                   "dtype": str(dtype), "pooling": cfg.pooling, "ties": ties, "on_error": on_error,
                   "reranker": rerank_path, "rerank_topk": cfg.rerank_topk, "rerank_mode": cfg.rerank_mode,
                   "rerank_compositional": cfg.rerank_compositional, "compare": list(cfg.compare),
                   "video_sampling": asdict(video_sampling) if video_sampling is not None else None,
                   "image_budget": image_budget.to_dict(),
                   **({"item_format": cfg.item_format} if cfg.item_format else {}),  # absent: as runs before it
                   **({"save_run": cfg.save_run} if cfg.save_run else {})}
    if cfg.allow_outside_root:  # recorded when given only: a run recorded before the option existed is the same run
        run_options["allow_outside_root"] = True
    if rerank_path:  # before any encoding: the reranker loads only after it (a typo found late cost the encoding)
        refuse_missing_local_model(rerank_path, "--rerank")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    finished = rerun.begin(out_dir, run_options, rerun.input_identity(out_dir, model, data, rerank_path,
                                                                     allow_outside_root=cfg.allow_outside_root),
                           overwrite=cfg.overwrite, config=cfg, key_fields={"reranker": "rerank_path"},
                           aliases=option_aliases(cfg))
    if finished is not None:
        return {**finished, "finished_before": True}
    t_data = time.perf_counter()
    # image_budget: explicit resolution options, over each checkpoint's recorded setting
    embedder = Embedder.from_pretrained(model, device=device, dtype=dtype, pooling=cfg.pooling, batch_size=batch_size,
                                        video_sampling=video_sampling, image_budget=image_budget,
                                        allow_outside_root=cfg.allow_outside_root, item_format=cfg.item_format,
                                        attn_implementation=cfg.attn_implementation)
    t_model = time.perf_counter()
    settings = cache_settings(embedding_settings(embedder, dtype), embedder)
    model_id = model_fingerprint(model, settings, keyed="the embedding cache")
    cache = None if cfg.no_cache else Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    encoder = RunEncoder(embedder, model_id, cache_dir=cache, batch_size=batch_size, show_progress=show_progress,
                         model_info={"model": str(model), "settings": settings},
                         allow_outside_root=cfg.allow_outside_root,
                         digests=ImageDigests(Path(out_dir) / rerun.DIGESTS_FILE))  # no image read again
    encoder.on_saved = lambda st: rerun.record_work(out_dir, encoded=st.encoded, encode_seconds=st.encode_seconds,
                                                    wall_seconds=time.perf_counter() - t_start)
    encoded = encode_tasks(data, encoder)
    # every item is encoded: the embedder is let go (what the report says of it kept), so that the reranker does
    # not load beside it
    embedder_meta = {"device": embedder.device, "image_budget": embedder.image_budget.to_dict(),
                     "item_format": embedder.item_format, "visual_tokens_encoded": embedder.visual_tokens}
    encoder.embedder = embedder = None
    free_dropped_models()
    t_reranker = time.perf_counter()
    reranking = None
    if rerank_path:
        reranking = Reranking(load_reranker(rerank_path, device=device, dtype=dtype, image_budget=image_budget,
                                            batch_size=cfg.rerank_batch, allow_outside_root=cfg.allow_outside_root,
                                            attn_implementation=cfg.attn_implementation),
                              cfg.rerank_topk, cfg.rerank_mode, compositional_mode=cfg.rerank_compositional)
        if video_sampling is not None and hasattr(reranking.reranker, "image_loader"):
            reranking.reranker.image_loader.video_sampling = video_sampling
    load_model_seconds = (t_model - t_data) + (time.perf_counter() - t_reranker)
    run = score_tasks(encoded, encoder, opts=opts, reranking=reranking, show_progress=show_progress)
    run.timing = {"load_data_seconds": round(t_data - t_start, 3), "load_model_seconds": round(load_model_seconds, 3),
                  **run.timing, "wall_seconds": round(time.perf_counter() - t_start, 3)}
    # a resumed run: the counters and timings of the whole run (the interrupted attempts' saved work added)
    run.encoding, run.timing = rerun.whole_run(out_dir, run.encoding, run.timing)
    meta = {"model": str(model), "model_id": model_id, "tasks_config": str(suite.source), "ties": ties,
            **skipped_data_meta(suite, data, on_error),
            "cache_dir": str(cache) if cache else None, "device": embedder_meta["device"], "dtype": str(dtype),
            "batch_size": batch_size, "image_budget": embedder_meta["image_budget"],
            "item_format": embedder_meta["item_format"],
            "visual_tokens_encoded": embedder_meta["visual_tokens_encoded"]}
    if rerank_path:
        meta["reranker"] = str(rerank_path)
    run.attempts = rerun.attempts(out_dir)  # 1 + the interrupted attempts this run continued from
    summary = report.write_run(out_dir, run, meta=meta, compare=cfg.compare)
    rerun.finish(out_dir)
    return summary
