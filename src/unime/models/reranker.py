"""`Reranker`: the UniME-V2 reranker at inference (SPEC §1.6).

    from unime.models.reranker import Reranker
    rr = Reranker.from_pretrained("runs/reranker", data_root="data")
    p_yes = rr.score_pairs(query, candidates)      # pairwise P(Yes), the judge's fast prefix-cached path
    best = rr.pick(query, candidates)              # listwise generation → 0-based index
    picks = rr.pick_many(queries, candidate_lists) # the same, `batch_size` prompts per generate call
    picks = rr.listwise_picks(queries, candidate_lists)  # the same as (index, "answer" | "fallback")
    order = rr.rerank(query, ranked, k=5, mode="top1")

- `score_pairs` is `JudgeScorer.score_candidates` on the reranker's model: the pairwise prompt the
  reranker trains on *is* the judge prompt, so a reranker checkpoint is also a judge.
- `pick` renders the listwise prompt, generates greedily (`max_new_tokens` small, stopping once
  `Ans: (k)` is complete) and parses `Ans: (k)` and its variants; `pick_many` left-pads `batch_size`
  prompts into one `generate` call (the same picks up to float rounding). An unparsable or
  out-of-range answer falls back to the argmax of the pairwise scores; every fallback is counted in
  `stats`, and `listwise_picks` marks each pick's source (`ListwisePick`: "answer" or "fallback").
- The number of listwise candidates the checkpoint was trained with (`unime_reranker.json`) is the
  default k of `rerank`; `pick` on a different number works but warns (once per number) and counts it.
- `rerank` reorders with the module's `rerank()`; `rerank_many()`, its form for many queries, is what
  the evaluation harness uses on any object with `pick` and `score_pairs` (`RerankerProtocol`; and
  `pick_many` if it has one): `top1` moves the picked candidate to rank 1 and keeps the rest in the
  embedder's order; `resort` sorts the top k by pairwise score (stable). Ranks beyond k are untouched.

The reranking rule (`rerank()`), for an embedder ranking and a reranker that looks at the top k only:

- ``top1`` (the paper's): the reranker *picks* one of the top-k candidates (listwise generation); the
  picked one moves to rank 1 and every other candidate keeps the embedder's order. A reranker that
  returns no pick (``None``) keeps the embedder's order, counted in `rerank_many`'s stats as a fallback;
  `Reranker.pick` always returns one (an unparsable answer falls back to its pairwise scores, counted in
  `Reranker.stats`), so with it that count is 0.
- ``resort``: the reranker scores every top-k candidate against the query (pairwise P(Yes)) and the
  top k are sorted by that score, descending; equal scores keep the embedder's order. Ranks beyond k
  are untouched.

The reranker sees the embedder's top k in the order it is given (the evaluation's: `unime.eval.runners`, equal
scores in a label-free order set by the tie policy); it never sees the labels.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, Sequence, runtime_checkable

import numpy as np

from unime.data.images import ImageLoader
from unime.data.items import Item, item_list, one_item, require_list
from unime.errors import ModelError
from unime.models.adapters import FamilyAdapter, Segment
from unime.models.checkpoint_role import METADATA_FILE, refuse_other_role  # METADATA_FILE: the reranker's record
from unime.models.generation import generate_texts
from unime.models.image_budget import adapter_image_loader
from unime.models.judge import JudgeScorer
from unime.models.loader_keywords import check_loader_keywords
from unime.models.loading import LoadedModel, load_model, refuse_unknown_keywords, trained_model_folder
from unime.models.rerank_prompts import (answer_format, item_content, listwise_answer_done, listwise_prompt,
                                         parse_listwise_answer)

log = logging.getLogger(__name__)

RERANK_MODES = ("top1", "resort")
# listwise prompts per `generate` call in `pick_many`: measured on the demo's reranker at one CPU thread
# (bench/reranker_generation.py), batches of 8 that stop at `Ans: (k)` take 0.53x the CPU time of one prompt at a
# time; kept moderate for a GPU's memory (8 prompts of 5 candidates' images each)
LISTWISE_BATCH = 8


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


def require_k(k: int) -> None:
    """ValueError unless `k` (the candidates a reranker sees) is at least 1."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def rerank(ranked_indices: Sequence[int], reranker: RerankerProtocol, query: Item, candidates: Sequence[Item],
           k: int, mode: str, *, stats: RerankStats | None = None) -> np.ndarray:
    """Rerank the top `k` of `ranked_indices` (candidate indices, best first); returns the new order.

    `candidates` is the full candidate list that `ranked_indices` index into.
    """
    return rerank_many([ranked_indices], reranker, [query], [candidates], k, mode, stats=stats)[0]


def rerank_many(orders: Sequence[Sequence[int]], reranker: RerankerProtocol, queries: Sequence[Item],
                candidate_lists: Sequence[Sequence[Item]], k: int, mode: str, *,
                stats: RerankStats | None = None, return_keys: bool = False):
    """`rerank` for many queries at once: in `top1` mode their picks come from one `pick_many` call when the
    reranker has one (the `Reranker` batches its generation), else from `pick` per query.

    With `return_keys`: (those orders, per query the reranker's verdict on each of the top k in the order shown:
    `top1` 1.0 for the pick and 0.0 for the rest (all 0.0 without a pick), `resort` the pairwise scores), so that a
    caller can tell the ties the reranker left from the ones it resolved (`unime.eval.runners.scores_after_rerank`)."""
    if mode not in RERANK_MODES:
        raise ValueError(f"mode must be one of {RERANK_MODES}, got {mode!r}")
    require_k(k)
    if not len(orders) == len(queries) == len(candidate_lists):
        raise ValueError(f"{len(orders)} orders, {len(queries)} queries, {len(candidate_lists)} candidate lists")
    orders = [np.asarray(o, dtype=np.int64) for o in orders]
    heads = [o[:k] for o in orders]
    shown = [[cands[int(i)] for i in head] for head, cands in zip(heads, candidate_lists)]
    if stats is not None:
        stats.queries += len(orders)
    out, keys = [], []
    if mode == "top1":
        many = getattr(reranker, "pick_many", None)
        picks = many(queries, shown) if callable(many) else [reranker.pick(q, s) for q, s in zip(queries, shown)]
        for order, head, picked in zip(orders, heads, picks):
            keys.append(np.zeros(len(head), dtype=np.float64))
            if picked is None:
                if stats is not None:
                    stats.fallbacks += 1
                out.append(order.copy())
                continue
            picked = int(picked)
            if not 0 <= picked < len(head):
                raise ModelError(f"reranker picked candidate {picked} of {len(head)}")
            keys[-1][picked] = 1.0
            out.append(np.concatenate([head[picked:picked + 1], np.delete(head, picked), order[k:]]))
        return (out, keys) if return_keys else out
    for order, head, query, cands in zip(orders, heads, queries, shown):
        scores = np.asarray(reranker.score_pairs(query, cands), dtype=np.float64).reshape(-1)
        if scores.shape[0] != len(head):
            raise ModelError(f"reranker returned {scores.shape[0]} scores for {len(head)} candidates")
        if not np.all(np.isfinite(scores)):
            raise ModelError("reranker returned NaN or infinite scores")
        # stable: equal reranker scores keep the embedder's order
        out.append(np.concatenate([head[np.argsort(-scores, kind="stable")], order[k:]]))
        keys.append(scores)
    return (out, keys) if return_keys else out


def read_reranker_metadata(path: str | os.PathLike) -> dict:
    """The reranker's training metadata (`unime_reranker.json`), or {} for a plain checkpoint."""
    f = Path(path) / METADATA_FILE
    if not f.is_file():
        return {}
    return json.loads(f.read_text(encoding="utf-8"))


class ListwisePick(NamedTuple):
    """A listwise pick and where it came from: "answer" (the generated `Ans: (k)` named a candidate) or
    "fallback" (the answer named none: the argmax of the pairwise scores)."""

    index: int
    source: str
    tokens: int = 0  # the tokens the model read for it: the listwise prompt's, and the fallback's pairwise prompts'


@dataclass
class RerankerStats:
    """What `pick` did: answers parsed, how many picked each position (1-based, the embedder's order: a
    reranker that always answers the same number has learnt the answer format, not the ranking),
    fallbacks to pairwise scores (unparsable / out of range), and calls whose candidate count differs from
    the trained one. The first few bad answers are kept."""

    picks: int = 0
    parsed: int = 0
    unparsable: int = 0
    out_of_range: int = 0
    count_mismatches: int = 0
    bad_answers: list[str] = field(default_factory=list)
    picked_positions: dict[int, int] = field(default_factory=dict)
    max_examples: int = 5

    @property
    def fallbacks(self) -> int:
        return self.unparsable + self.out_of_range

    def note_bad(self, answer: str) -> None:
        if len(self.bad_answers) < self.max_examples:
            self.bad_answers.append(answer)

    def reset(self) -> None:
        self.picks = self.parsed = self.unparsable = self.out_of_range = self.count_mismatches = 0
        self.bad_answers = []
        self.picked_positions = {}

    def as_dict(self) -> dict:
        return {"picks": self.picks, "parsed": self.parsed, "unparsable": self.unparsable,
                "out_of_range": self.out_of_range, "fallbacks": self.fallbacks,
                "count_mismatches": self.count_mismatches, "bad_answers": list(self.bad_answers),
                "picked_positions": {str(k): n for k, n in sorted(self.picked_positions.items())}}


class Reranker:
    def __init__(self, model, processor, adapter: FamilyAdapter, *, image_loader: ImageLoader | None = None,
                 device: str = "cpu", num_candidates: int | None = None, max_new_tokens: int = 8,
                 chunk_size: int = 16, batch_size: int = LISTWISE_BATCH, name: str = ""):
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.processor, self.adapter = model, processor, adapter
        self.image_loader = adapter_image_loader(adapter, image_loader)
        self.device = device
        self.num_candidates = num_candidates
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size  # listwise prompts per generate call (pick_many)
        self.name = name
        # the pairwise path is the judge's, on the same model
        self.judge = JudgeScorer(model, processor, adapter, image_loader=self.image_loader, device=device,
                                 chunk_size=chunk_size, name=name)
        self.answer_prefix = answer_format(adapter).prefix
        self.stats = RerankerStats()
        self._warned_counts: set[int] = set()
        self.model.eval()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str | None = None, dtype=None,
                        data_root: str | os.PathLike | None = None, allow_outside_root: bool = False,
                        num_candidates: int | None = None, video_sampling=None, image_budget=None,
                        attn_implementation: str | None = None, **kwargs) -> "Reranker":
        """Load the output of `unime train reranker` (its folder, or the adapter/ or merged/ in it), or any
        plain generative checkpoint. A run folder loads as every loader loads it
        (`unime.models.loading.trained_model_folder`): its merged/ when it has one (`--merge`, full fine-tuning),
        else its adapter/ on its base model. `num_candidates` overrides the trained number. `kwargs`: `Reranker`'s
        own (`batch_size`, `max_new_tokens`, `chunk_size`), checked before the weights load."""
        refuse_unknown_keywords(cls, kwargs, ("image_loader", "device", "name"))
        check_loader_keywords("Reranker", dict(
            data_root=data_root, allow_outside_root=allow_outside_root, num_candidates=num_candidates,
            video_sampling=video_sampling, image_budget=image_budget, attn_implementation=attn_implementation,
            **kwargs))
        # an embedder's folder (loaded silently); a judge's is taken: the pairwise path is the judge's
        refuse_other_role("reranker", path, trained_model_folder(path), takes=("judge",))
        path = trained_model_folder(path)
        loaded: LoadedModel = load_model(path, device=device, dtype=dtype, image_budget=image_budget,
                                         attn_implementation=attn_implementation)
        meta = read_reranker_metadata(path)
        if num_candidates is None:
            num_candidates = meta.get("num_candidates")
        loader = loaded.image_budget.image_loader(data_root, allow_outside_root=allow_outside_root,
                                                  video=video_sampling)
        return cls(loaded.model, loaded.processor, loaded.adapter, image_loader=loader, device=loaded.device,
                   num_candidates=num_candidates, name=str(path), **kwargs)

    # -- pairwise ----------------------------------------------------------------------------------
    def score_pairs(self, query: Any, candidates: Sequence[Any], *, return_token_counts: bool = False):
        """P(Yes) of the pairwise (judge) prompt for each candidate, float64, in order. With `return_token_counts`:
        (those scores, the tokens the model read for them: the query's prefix once and each candidate's
        continuation, `JudgeStats.tokens_read`)."""
        before = self.judge.stats.tokens_read
        scores = self.judge.score_candidates(one_item(query, name="query"), item_list(candidates, name="candidates"))
        return (scores, self.judge.stats.tokens_read - before) if return_token_counts else scores

    # -- listwise ----------------------------------------------------------------------------------
    def _content(self, item: Item, field: str) -> list[Segment]:
        load = self.image_loader.load
        images = [load(r, field=f"{field}.images[{i}]") for i, r in enumerate(item.images)]
        frames = self.image_loader.load_video(item.video, field=f"{field}.video") if item.video else []
        return item_content(item.text, images, frames)

    def listwise_segments(self, query: Any, candidates: Sequence[Any]) -> list[Segment]:
        q = self._content(one_item(query, name="query"), "query")
        return listwise_prompt(q, [self._content(c, f"candidates[{i}]")
                                   for i, c in enumerate(item_list(candidates, name="candidates"))])

    def generate_answers(self, queries: Sequence[Any], candidate_lists: Sequence[Sequence[Any]], *,
                         return_token_counts: bool = False):
        """The reranker's greedy listwise answer texts (special tokens removed), `batch_size` prompts per
        `generate` call; each answer ends where `Ans: (k)` is complete (`listwise_answer_done`). With
        `return_token_counts`: (those texts, each prompt's tokens the model read)."""
        queries = require_list(queries, name="queries")
        lists = require_list(candidate_lists, name="candidate_lists", of="candidate lists")
        segs = [self.listwise_segments(q, c) for q, c in zip(queries, lists, strict=True)]
        out = generate_texts(self.model, self.adapter, segs, device=self.device, max_new_tokens=self.max_new_tokens,
                             batch_size=self.batch_size, assistant_prefix=self.answer_prefix,
                             stop=listwise_answer_done, return_token_counts=True)
        texts = [o[0] for o in out[0]]
        return (texts, out[1]) if return_token_counts else texts

    def generate_answer(self, query: Any, candidates: Sequence[Any]) -> str:
        """`generate_answers` for one prompt."""
        return self.generate_answers([query], [candidates])[0]

    def _check_count(self, n: int) -> None:
        if self.num_candidates is None or n == self.num_candidates:
            return
        self.stats.count_mismatches += 1
        if n not in self._warned_counts:
            self._warned_counts.add(n)
            log.warning("reranker %s was trained with %d listwise candidates but is asked to pick among %d; "
                        "it works, but expect lower quality", self.name, self.num_candidates, n)

    def pick(self, query: Any, candidates: Sequence[Any]) -> int | None:
        """0-based index of the candidate the listwise generation picks; None for an empty list.

        An unparsable or out-of-range answer falls back to the argmax of `score_pairs` (counted)."""
        return self.pick_many([query], [item_list(candidates, name="candidates")])[0]

    def pick_many(self, queries: Sequence[Any], candidate_lists: Sequence[Sequence[Any]]) -> list[int | None]:
        """`pick` for many (query, candidates) pairs, their listwise prompts generated `batch_size` at a time."""
        return [p.index if p is not None else None for p in self.listwise_picks(queries, candidate_lists)]

    def listwise_picks(self, queries: Sequence[Any],
                       candidate_lists: Sequence[Sequence[Any]]) -> list[ListwisePick | None]:
        """`pick_many` with where each pick came from (`ListwisePick.source`); None for an empty list."""
        queries = require_list(queries, name="queries")
        lists = [item_list(c, name=f"candidate_lists[{i}]")
                 for i, c in enumerate(require_list(candidate_lists, name="candidate_lists", of="candidate lists"))]
        if len(lists) != len(queries):
            raise ValueError(f"{len(queries)} queries for {len(lists)} candidate lists")
        asked = [i for i, c in enumerate(lists) if c]
        answers, tokens = self.generate_answers([queries[i] for i in asked], [lists[i] for i in asked],
                                                return_token_counts=True)
        picks: list[ListwisePick | None] = [None] * len(lists)
        for i, answer, n in zip(asked, answers, tokens):
            before = self.judge.stats.tokens_read  # a fallback's pairwise scoring
            pick = self._read_answer(answer, queries[i], lists[i])
            picks[i] = pick._replace(tokens=n + self.judge.stats.tokens_read - before)
        return picks

    def _read_answer(self, answer: str, query: Any, candidates: list) -> ListwisePick:
        self._check_count(len(candidates))
        self.stats.picks += 1
        k = parse_listwise_answer(answer)
        if k is not None and 1 <= k <= len(candidates):
            self.stats.parsed += 1
            self.stats.picked_positions[k] = self.stats.picked_positions.get(k, 0) + 1
            return ListwisePick(k - 1, "answer")
        if k is None:
            self.stats.unparsable += 1
        else:
            self.stats.out_of_range += 1
        self.stats.note_bad(answer)
        scores = self.score_pairs(query, candidates)
        return ListwisePick(int(np.argmax(scores)), "fallback")  # first maximum on ties: the embedder's order

    # -- reordering --------------------------------------------------------------------------------
    def rerank(self, query: Any, ranked: Sequence[Any], k: int | None = None, mode: str = "top1") -> list[int]:
        """New order (indices into `ranked`, which is in the embedder's order, best first): the top `k`
        (default: the trained number of candidates, else all) reranked by `mode`, the rest unchanged."""
        if mode not in RERANK_MODES:
            raise ValueError(f"mode must be one of {RERANK_MODES}, got {mode!r}")
        if k is not None:  # k=0 meant the default
            require_k(k)
        ranked = item_list(ranked, name="ranked")
        if not ranked:
            return []
        k = min(k or self.num_candidates or len(ranked), len(ranked))
        query = one_item(query, name="query")
        return [int(i) for i in rerank(range(len(ranked)), self, query, ranked, k, mode)]
