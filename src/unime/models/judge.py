"""`JudgeScorer`: a generative MLLM used as a Yes/No judge of (query, candidate) pairs (SPEC §1.3).

The prompt is the one user turn of `unime.models.judge_prompt`, followed by the assistant's opening. The
score is the 2-way softmax of the next-token logits of `Yes` and `No` at the generation position:
s = sigmoid(l_Yes - l_No).

Two ways to compute it, with the same prompt and the same numbers (a test holds them within 1e-4):

- reference (`score_pair`, `score_pairs_reference`): one independent full forward of the model per pair;
- fast (`score_candidates`, `score_pairs`): per query, the shared prefix (everything before the candidate)
  is run once with a KV cache and the candidates as its continuations (`unime.models.prefix_scoring`, whose
  positions come from the family adapter); only the `Yes` and `No` rows of the LM head are applied to the
  last hidden state. Identical candidates of a query are scored once; a candidate whose tokens do not
  split at the prefix boundary is scored with the reference path (counted in `stats.boundary_fallbacks`).
- Items are `Item`s, or what `Item.from_dict` reads (`{"text": ..., "image": ...}`, a plain string), as
  `Embedder.encode` and `Reranker` take them.
- Video (either side) takes the same path: a query video lives in the prefix, a candidate video in its
  continuation, its vision-encoder output cached like an image's (key = the video reference + sampling).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from unime.data.images import ImageLoader
from unime.data.items import Item, item_list, one_item, require_list
from unime.errors import ModelError
from unime.models.adapters import FamilyAdapter, Segment
from unime.models.checkpoint_role import refuse_other_role
from unime.models.image_budget import adapter_image_loader
from unime.models.judge_prompt import (judge_candidate_segments, judge_item_segments, judge_prefix_segments,
                                       judge_prompt_segments, merge_text)
from unime.models.loader_keywords import check_loader_keywords
from unime.models.loading import (LoadedModel, load_model, refuse_unknown_keywords, resolve_device,
                                  trained_model_folder)
from unime.models.prefix_scoring import IMAGE_CACHE_BYTES, PrefixEngine
from unime.models.prompts import NO, YES

# candidates per forward of the fast path unless the caller gives its own (`PrefixEngine.chunk_size`); GRPO's process
# judge (`ScoredPick`) takes it, and `unime plan` plans that judge's chunks with it
CHUNK_SIZE = 16


@dataclass
class JudgeStats:
    """Counters of the work the scorer did (reset with `reset()`)."""

    pairs_requested: int = 0
    pairs_scored_fast: int = 0
    pairs_scored_reference: int = 0
    duplicate_pairs: int = 0
    prefix_forwards: int = 0
    prefix_tokens: int = 0
    continuation_tokens: int = 0
    reference_tokens: int = 0
    boundary_fallbacks: int = 0
    image_cache_hits: int = 0
    image_cache_misses: int = 0

    def reset(self) -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, 0)

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @property
    def tokens_read(self) -> int:
        """The tokens the model read: each prefix once, the continuations after it, the reference forwards'
        prompts (`FamilyAdapter.input_token_counts`)."""
        return self.prefix_tokens + self.continuation_tokens + self.reference_tokens


class JudgeScorer:
    """Scores (query, candidate) pairs with a frozen generative MLLM (SPEC 1.3).

        judge = JudgeScorer.from_pretrained("Qwen/Qwen2.5-VL-7B-Instruct", data_root="data")
        scores = judge.score_candidates(query_item, [positive, *candidates])   # fast path
        s = judge.score_pair(query_item, candidate_item)                      # reference path
    """

    def __init__(self, model, processor, adapter: FamilyAdapter, *, image_loader: ImageLoader | None = None,
                 device: str = "cpu", chunk_size: int = CHUNK_SIZE, name: str = "", image_cache_size: int = 1024,
                 image_cache_bytes: int = IMAGE_CACHE_BYTES):
        self.model, self.processor, self.adapter = model, processor, adapter
        self.tokenizer = adapter.tokenizer
        self.image_loader = adapter_image_loader(adapter, image_loader)
        self.device = device
        self.name = name
        # refuse a judge whose answers are not single tokens (ModelError from the adapter)
        self.yes_id = adapter.single_token_id(YES)
        self.no_id = adapter.single_token_id(NO)
        if self.yes_id == self.no_id:
            raise ModelError(f"'{YES}' and '{NO}' map to the same token id {self.yes_id}")
        self.stats = JudgeStats()
        # the fast path: prefix KV cache, chunks of `chunk_size` candidates, the vision features of up to
        # `image_cache_size` candidate images kept on the device, within `image_cache_bytes` (512 MiB: a 7B judge
        # at 672 px, ~4 MB an image, keeps ~125) (`engine.chunk_size` / `engine.image_cache_size` /
        # `engine.image_cache_bytes` may be changed)
        self.engine = PrefixEngine(model, adapter, device=device, chunk_size=chunk_size,
                                   image_cache_size=image_cache_size, image_cache_bytes=image_cache_bytes,
                                   stats=self.stats)
        if self.model is not None:
            self.model.eval()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str | None = None, dtype=None,
                        data_root: str | os.PathLike | None = None, allow_outside_root: bool = False,
                        adapter_path: str | None = None, load_weights: bool = True, video_sampling=None,
                        image_budget=None, attn_implementation: str | None = None,
                        **kwargs) -> "JudgeScorer":
        """Load a judge checkpoint: a model or adapter folder, a hub id (of a model or an adapter), or the output
        folder of `unime train judge|reranker` (its merged/, else its adapter/: a reranker checkpoint is also a judge).
        `load_weights=False` loads only the processor and config: enough to build prompts and resolve the
        Yes/No ids (e.g. for a vLLM backend), not to score. `kwargs`: `JudgeScorer`'s own (`chunk_size`, the image
        cache's sizes), checked before anything loads."""
        refuse_unknown_keywords(cls, kwargs, ("image_loader", "device", "name"))
        check_loader_keywords("JudgeScorer", dict(
            data_root=data_root, allow_outside_root=allow_outside_root, adapter_path=adapter_path,
            load_weights=load_weights, video_sampling=video_sampling, image_budget=image_budget,
            attn_implementation=attn_implementation, **kwargs))
        # an embedder's folder would score with a model never trained to answer Yes/No (QA: loaded silently)
        refuse_other_role("judge", path, trained_model_folder(path), adapter_path, takes=("reranker",))
        path = trained_model_folder(path)
        loader_options = dict(allow_outside_root=allow_outside_root, video=video_sampling)
        if not load_weights:
            from transformers import AutoConfig

            from unime.models.adapters import adapter_for
            from unime.models.loading import adapter_folder, load_processor, refuse_unreachable_hub_model

            base = folder = str(path)
            refuse_unreachable_hub_model(path)
            if (adapter := adapter_folder(path)) is not None:  # an adapter folder, or a hub id naming one
                import json
                from pathlib import Path

                folder = adapter
                base = json.loads((Path(folder) / "adapter_config.json").read_text())["base_model_name_or_path"]
                refuse_unreachable_hub_model(base)
            has_tokenizer = os.path.isfile(os.path.join(folder, "tokenizer_config.json"))
            processor, budget = load_processor(folder if has_tokenizer else base, image_budget=image_budget,
                                               budget_from=folder)
            config = AutoConfig.from_pretrained(base)
            return cls(None, processor, adapter_for(config, processor, budget),
                       image_loader=budget.image_loader(data_root, **loader_options),
                       device="cpu" if device is None else resolve_device(device),  # a device this machine has
                       name=str(path), **kwargs)
        loaded: LoadedModel = load_model(path, device=device, dtype=dtype, adapter_path=adapter_path,
                                         image_budget=image_budget, attn_implementation=attn_implementation)
        return cls(loaded.model, loaded.processor, loaded.adapter,
                   image_loader=loaded.image_budget.image_loader(data_root, **loader_options), device=loaded.device,
                   name=str(path), **kwargs)

    def clear_image_cache(self) -> None:
        """Forget cached vision-encoder outputs (needed after changing the model's weights)."""
        self.engine.image_cache.clear()

    def _require_model(self) -> None:
        if self.model is None:
            raise ModelError(f"the judge {self.name!r} was loaded without weights (prompts only); it cannot score")

    # -- prompt assembly --------------------------------------------------------------------------
    def item_segments(self, item: Item, *, field: str = "item") -> list[Segment]:
        load = self.image_loader.load
        images = [load(r, field=f"{field}.images[{i}]") for i, r in enumerate(item.images)]
        frames = self.image_loader.load_video(item.video, field=f"{field}.video") if item.video else []
        return judge_item_segments(item.text, images, frames)

    def prompt_segments(self, query: Item, candidate: Item) -> list[Segment]:
        return judge_prompt_segments(self.item_segments(query, field="query"),
                                     self.item_segments(candidate, field="candidate"))

    def prompt(self, query: Item, candidate: Item) -> str:
        """The rendered judge prompt (chat template applied, generation prompt appended)."""
        return self.adapter.render_user_turn(self.prompt_segments(query, candidate))

    # -- reference path: one full forward per pair ------------------------------------------------
    def margin_pair(self, query: Item, candidate: Item) -> float:
        """l_Yes - l_No at the generation position, from an independent full forward of the pair."""
        import torch

        self._require_model()
        segs = self.prompt_segments(one_item(query, name="query"), one_item(candidate, name="candidate"))
        text = self.adapter.render_user_turn(segs)
        inputs = self.adapter.processor_inputs([text], [segs]).to(self.device)
        with torch.inference_mode():
            out = self.model(**inputs, use_cache=False, logits_to_keep=1)
        logits = out.logits[0, -1].float()
        self.stats.pairs_scored_reference += 1
        self.stats.reference_tokens += sum(self.adapter.input_token_counts(inputs))
        return float(logits[self.yes_id] - logits[self.no_id])

    def score_pair(self, query: Item, candidate: Item) -> float:
        """Reference score of one pair: sigmoid(l_Yes - l_No) of a full forward."""
        return _sigmoid(self.margin_pair(query, candidate))

    def score_pairs_reference(self, pairs: Sequence[tuple[Item, Item]]) -> np.ndarray:
        pairs = [_pair(p, i) for i, p in enumerate(require_list(pairs, name="pairs", of="(query, candidate) pairs"))]
        return np.array([self.score_pair(q, c) for q, c in pairs], dtype=np.float64)

    # -- fast path ----------------------------------------------------------------------------------
    def score_candidates(self, query: Item, candidates: Sequence[Item]) -> np.ndarray:
        """Scores of `candidates` for `query` (float64, in order), sharing the query prefix."""
        return _sigmoid_array(self.margin_candidates(query, candidates))

    def score_pairs(self, pairs: Sequence[tuple[Item, Item]], *, show_progress: bool = False) -> np.ndarray:
        """Scores of arbitrary pairs (in order): grouped by query, each distinct pair scored once."""
        pairs = [_pair(p, i) for i, p in enumerate(require_list(pairs, name="pairs", of="(query, candidate) pairs"))]
        groups: dict[str, tuple[Item, list[int]]] = {}
        for i, (q, _) in enumerate(pairs):
            groups.setdefault(q.key, (q, []))[1].append(i)
        out = np.zeros(len(pairs), dtype=np.float64)
        it: Iterable = groups.values()
        if show_progress:
            from tqdm.auto import tqdm

            it = tqdm(it, total=len(groups), desc="judge", unit="query")
        for q, idx in it:
            out[idx] = self.score_candidates(q, [pairs[i][1] for i in idx])
        return out

    def margin_candidates(self, query: Item, candidates: Sequence[Item]) -> np.ndarray:
        """l_Yes - l_No for each candidate (float64, in order), fast path."""
        self._require_model()
        query, candidates = one_item(query, name="query"), item_list(candidates, name="candidates")
        self.stats.pairs_requested += len(candidates)
        if not candidates:
            return np.zeros(0, dtype=np.float64)
        unique: dict[str, int] = {}
        for c in candidates:
            unique.setdefault(c.key, len(unique))
        self.stats.duplicate_pairs += len(candidates) - len(unique)
        first = {}  # an item's key → its first position in `candidates`, which its errors name
        for i, c in enumerate(candidates):
            first.setdefault(c.key, i)
        uniq_items = list({c.key: c for c in candidates}.values())
        prefix = judge_prefix_segments(self.item_segments(query, field="query"))
        continuations = []
        for cand in uniq_items:
            c_segs = judge_candidate_segments(self.item_segments(cand, field=f"candidates[{first[cand.key]}]"))
            continuations.append((merge_text([*prefix, *c_segs]), c_segs, self._media_keys(cand)))
        margins, failed = self.engine.score(prefix, continuations, self._yes_no_margin)
        for j in failed:
            margins[j] = self.margin_pair(query, uniq_items[j])
        return margins[[unique[c.key] for c in candidates]]

    def _media_keys(self, item: Item) -> dict[str, list[str]]:
        """Cache keys of a candidate's images and video (a video's key includes its sampling settings)."""
        sampling = repr(getattr(self.image_loader, "video_sampling", None))
        return {"image": [Item(images=(ref,)).key for ref in item.images],
                "video": ["video:" + Item(video=item.video).key + sampling] if item.video else []}

    def _yes_no_margin(self, hidden):
        """l_Yes - l_No from final hidden states, using only the two LM-head rows."""
        head = self.adapter.lm_head(self.model)
        rows = head.weight[[self.yes_id, self.no_id]].float()
        logits = hidden.float() @ rows.T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[[self.yes_id, self.no_id]].float()
        return (logits[:, 0] - logits[:, 1]).double().cpu().numpy()


def _pair(pair, i: int) -> tuple[Item, Item]:
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:  # "got tuple" of a 1-tuple said too little (QA)
        got = f"a {type(pair).__name__} of {len(pair)}" if isinstance(pair, (list, tuple)) else type(pair).__name__
        raise TypeError(f"pairs[{i}] must be a (query, candidate) pair, got {got}")
    return one_item(pair[0], name=f"pairs[{i}][0]"), one_item(pair[1], name=f"pairs[{i}][1]")


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _sigmoid_array(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))
