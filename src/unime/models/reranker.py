"""`Reranker`: the UniME-V2 reranker at inference (SPEC §1.6).

    from unime.models.reranker import Reranker
    rr = Reranker.from_pretrained("runs/reranker", data_root="data")
    p_yes = rr.score_pairs(query, candidates)      # pairwise P(Yes), the judge's fast prefix-cached path
    best = rr.pick(query, candidates)              # listwise generation → 0-based index
    order = rr.rerank(query, ranked, k=5, mode="top1")

- `score_pairs` is `JudgeScorer.score_candidates` on the reranker's model: the pairwise prompt the
  reranker trains on *is* the judge prompt, so a reranker checkpoint is also a judge.
- `pick` renders the listwise prompt, generates greedily (`max_new_tokens` small) and parses
  `Ans: (k)` and its variants. An unparsable or out-of-range answer falls back to the argmax of the
  pairwise scores; every fallback is counted in `stats`.
- The number of listwise candidates the checkpoint was trained with (`unime_reranker.json`) is the
  default k of `rerank`; `pick` on a different number works but warns (once per number) and counts it.
- `rerank` reorders with the module's `rerank()`, which the evaluation harness also uses on any object
  with `pick` and `score_pairs` (`RerankerProtocol`): `top1` moves the picked candidate to rank 1 and
  keeps the rest in the embedder's order; `resort` sorts the top k by pairwise score (stable). Ranks
  beyond k are untouched.

The reranking rule (`rerank()`), for an embedder ranking and a reranker that looks at the top k only:

- ``top1`` (the paper's): the reranker *picks* one of the top-k candidates (listwise generation); the
  picked one moves to rank 1 and every other candidate keeps the embedder's order. If the reranker
  cannot pick (returns ``None``: unparsable answer), the embedder's order is kept and the fallback is
  counted.
- ``resort``: the reranker scores every top-k candidate against the query (pairwise P(Yes)) and the
  top k are sorted by that score, descending; equal scores keep the embedder's order. Ranks beyond k
  are untouched.

The reranker sees the embedder's top k with ties broken by candidate index: it never sees the labels.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from unime.data.images import ImageLoader
from unime.data.items import Item
from unime.errors import ModelError
from unime.models.adapters import FamilyAdapter, Segment
from unime.models.judge import JudgeScorer
from unime.models.loading import LoadedModel, load_model
from unime.models.rerank_prompts import answer_format, item_content, listwise_prompt, parse_listwise_answer

log = logging.getLogger(__name__)

METADATA_FILE = "unime_reranker.json"  # written by unime.train.reranker_trainer
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


def as_item(x: Any) -> Item:
    return x if isinstance(x, Item) else Item.from_dict(x)


def resolve_checkpoint(path: str | os.PathLike) -> str:
    """A model folder for `path`: itself if it is one (or a hub id), else the `adapter/` or `merged/` folder
    of a `unime train reranker|judge` output folder (the adapter first: it is what the run trained)."""
    p = Path(path)
    if not p.is_dir() or (p / "config.json").is_file() or (p / "adapter_config.json").is_file():
        return str(path)
    for sub in ("adapter", "merged"):
        if (p / sub / "adapter_config.json").is_file() or (p / sub / "config.json").is_file():
            return str(p / sub)
    return str(path)


def read_reranker_metadata(path: str | os.PathLike) -> dict:
    """The reranker's training metadata (`unime_reranker.json`), or {} for a plain checkpoint."""
    f = Path(path) / METADATA_FILE
    if not f.is_file():
        return {}
    return json.loads(f.read_text(encoding="utf-8"))


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
                 chunk_size: int = 16, name: str = ""):
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        self.model, self.processor, self.adapter = model, processor, adapter
        self.image_loader = image_loader or ImageLoader()
        self.device = device
        self.num_candidates = num_candidates
        self.max_new_tokens = max_new_tokens
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
                        **kwargs) -> "Reranker":
        """Load the output of `unime train reranker` (its folder, or the adapter/ or merged/ in it), or any
        plain generative checkpoint. `num_candidates` overrides the trained number."""
        path = resolve_checkpoint(path)
        loaded: LoadedModel = load_model(path, device=device, dtype=dtype, image_budget=image_budget)
        meta = read_reranker_metadata(path)
        if num_candidates is None:
            num_candidates = meta.get("num_candidates")
        loader = ImageLoader(data_root, allow_outside_root=allow_outside_root, video=video_sampling)
        return cls(loaded.model, loaded.processor, loaded.adapter, image_loader=loader, device=loaded.device,
                   num_candidates=num_candidates, name=str(path), **kwargs)

    # -- pairwise ----------------------------------------------------------------------------------
    def score_pairs(self, query: Any, candidates: Sequence[Any]) -> np.ndarray:
        """P(Yes) of the pairwise (judge) prompt for each candidate, float64, in order."""
        return self.judge.score_candidates(as_item(query), [as_item(c) for c in candidates])

    # -- listwise ----------------------------------------------------------------------------------
    def _content(self, item: Item, field: str) -> list[Segment]:
        load = self.image_loader.load
        images = [load(r, field=f"{field}.images[{i}]") for i, r in enumerate(item.images)]
        frames = self.image_loader.load_video(item.video, field=f"{field}.video") if item.video else []
        return item_content(item.text, images, frames)

    def listwise_segments(self, query: Any, candidates: Sequence[Any]) -> list[Segment]:
        q = self._content(as_item(query), "query")
        return listwise_prompt(q, [self._content(as_item(c), f"candidates[{i}]") for i, c in enumerate(candidates)])

    def generate_answer(self, query: Any, candidates: Sequence[Any]) -> str:
        """The reranker's greedy listwise answer text (special tokens removed)."""
        import torch

        segs = self.listwise_segments(query, candidates)
        text = self.adapter.render_user_turn(segs, assistant_prefix=self.answer_prefix)
        inputs = self.adapter.processor_inputs([text], [segs]).to(self.device)
        tok = self.adapter.tokenizer
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        new = out[0, inputs["input_ids"].shape[1]:]
        return tok.decode(new, skip_special_tokens=True)

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
        candidates = list(candidates)
        if not candidates:
            return None
        self._check_count(len(candidates))
        self.stats.picks += 1
        answer = self.generate_answer(query, candidates)
        k = parse_listwise_answer(answer)
        if k is not None and 1 <= k <= len(candidates):
            self.stats.parsed += 1
            self.stats.picked_positions[k] = self.stats.picked_positions.get(k, 0) + 1
            return k - 1
        if k is None:
            self.stats.unparsable += 1
        else:
            self.stats.out_of_range += 1
        self.stats.note_bad(answer)
        scores = self.score_pairs(query, candidates)
        return int(np.argmax(scores))  # first maximum on ties: the embedder's order

    # -- reordering --------------------------------------------------------------------------------
    def rerank(self, query: Any, ranked: Sequence[Any], k: int | None = None, mode: str = "top1") -> list[int]:
        """New order (indices into `ranked`, which is in the embedder's order, best first): the top `k`
        (default: the trained number of candidates, else all) reranked by `mode`, the rest unchanged."""
        if mode not in RERANK_MODES:
            raise ValueError(f"mode must be one of {RERANK_MODES}, got {mode!r}")
        ranked = [as_item(c) for c in ranked]
        if not ranked:
            return []
        k = min(k or self.num_candidates or len(ranked), len(ranked))
        return [int(i) for i in rerank(range(len(ranked)), self, as_item(query), ranked, k, mode)]
