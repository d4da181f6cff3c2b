"""`JudgeScorer`: a generative MLLM used as a Yes/No judge of (query, candidate) pairs (SPEC §1.3).

The prompt is one user turn, rendered with the checkpoint's own chat template:

    I will provide you with a query and a candidate. ... respond with 'No'. Query: <query image><query text>,
    Candidate: <candidate image><candidate text>.

followed by the assistant's opening. The score is the 2-way softmax of the next-token logits of `Yes`
and `No` at the generation position: s = sigmoid(l_Yes - l_No).

Two ways to compute it, with the same prompt and the same numbers (a test holds them within 1e-4):

- reference (`score_pair`, `score_pairs_reference`): one independent full forward of the model per pair;
- fast (`score_candidates`, `score_pairs`): per query, the shared prefix (everything before the candidate)
  is run once with a KV cache; the candidates are then run as continuations of that cache, in
  right-padded chunks, and only the `Yes` and `No` rows of the LM head are applied to the last hidden
  state. Identical candidates of a query are scored once.

Details the fast path must get right (each one breaks equality with the reference when missed):
- Qwen-VL models use 3-row M-RoPE positions. A text continuation token i gets max(prefix positions)+1+i
  on all three rows; a continuation holding image tokens gets the model's own `get_rope_index` computed
  on the whole sequence, sliced to the continuation (image and video tokens take grid positions, fewer
  positions than tokens). Positions are always passed explicitly, never inferred by the model (which would use
  stale per-model state or the cache length).
- The prefix KV cache is never mutated: each chunk gets a fresh cache holding a batch-expanded copy.
- Continuation images go through the model's own forward with `pixel_values`, `image_grid_thw` and
  `mm_token_type_ids`, so family specifics (e.g. Qwen3-VL's deepstack features injected at early layers
  for image tokens) apply unchanged.
- The prefix is cut just before the whitespace that precedes the candidate, because byte-level BPE
  pre-tokenisers attach a leading space to the following word. Every pair is checked at the token
  level (prefix tokens + continuation tokens == tokens of the full prompt); a pair that fails the
  check is scored with the reference path instead, and counted in `stats.boundary_fallbacks`.
- Video (either side) takes the same path: a query video lives in the prefix, a candidate video in
  its continuation; temporal positions come from `get_rope_index` with the videos' `video_grid_thw`
  and, for Qwen2.5-VL, `second_per_grid_ts` (prefix's first, then the row's), and a candidate video's
  vision-encoder output is cached like an image's (key = the video reference + sampling settings).
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from unime.data.images import ImageLoader
from unime.data.items import Item
from unime.data.placeholders import strip_placeholders
from unime.data.video import Video
from unime.errors import ModelError
from unime.models.adapters import FamilyAdapter, Segment
from unime.models.loading import LoadedModel, load_model
from unime.models.prompts import JUDGE_CANDIDATE_LABEL, JUDGE_END, JUDGE_INSTRUCTION, JUDGE_QUERY_LABEL, NO, YES

# Between the instruction and "Query:" the SPEC's prompt has a line wrap inside a code span, i.e. a space.
JUDGE_INSTRUCTION_SEPARATOR = " "
# A marker that never occurs in real text, used to find where the candidate starts in a rendered prompt.
_SENTINEL = "\u0000unime-judge-candidate\u0000"


# -- the prompt (shared with the reranker, which trains on the same pairwise prompt) ------------------

def judge_item_segments(text: str, images: Sequence[Any] = (), video: Sequence[Any] | None = None) -> list[Segment]:
    """One side of the judge prompt: its video (if any), its images, then its text with the source
    format's image placeholders removed (SPEC 1.3: the images are shown, the placeholders dropped)."""
    segs: list[Segment] = []
    if video:
        segs.append(Segment("video", video if isinstance(video, Video) else list(video)))
    segs.extend(Segment("image", img) for img in images)
    clean = strip_placeholders(text)
    if clean:
        segs.append(Segment("text", clean))
    return segs


def merge_text(segments: Iterable[Segment]) -> list[Segment]:
    """Join adjacent text parts and drop empty ones (the chat template concatenates them anyway; fewer parts
    is tidier). Used by every prompt the judge and the reranker build."""
    out: list[Segment] = []
    for s in segments:
        if s.kind == "text" and out and out[-1].kind == "text":
            out[-1] = Segment("text", out[-1].value + s.value)
        elif s.kind != "text" or s.value:
            out.append(s)
    return out


def judge_prefix_segments(query_segments: Sequence[Segment]) -> list[Segment]:
    """Everything of the judge prompt before the candidate: instruction, query, candidate label up to
    (not including) its trailing whitespace."""
    label = JUDGE_CANDIDATE_LABEL.rstrip()
    return merge_text([Segment("text", JUDGE_INSTRUCTION + JUDGE_INSTRUCTION_SEPARATOR + JUDGE_QUERY_LABEL),
                        *query_segments, Segment("text", label)])


def judge_candidate_segments(candidate_segments: Sequence[Segment]) -> list[Segment]:
    """The candidate part of the judge prompt: the label's trailing whitespace, candidate, final period."""
    label = JUDGE_CANDIDATE_LABEL
    trailing = label[len(label.rstrip()):]
    return merge_text([Segment("text", trailing), *candidate_segments, Segment("text", JUDGE_END)])


def judge_prompt_segments(query_segments: Sequence[Segment], candidate_segments: Sequence[Segment]) -> list[Segment]:
    """The complete user turn of SPEC 1.3 for one (query, candidate) pair."""
    return merge_text([*judge_prefix_segments(query_segments), *judge_candidate_segments(candidate_segments)])


# -- scorer ------------------------------------------------------------------------------------------

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
    boundary_fallbacks: int = 0
    image_cache_hits: int = 0
    image_cache_misses: int = 0

    def reset(self) -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, 0)

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class _Prefix:
    text: str
    token_ids: list[int]  # unexpanded (one placeholder per image), for the boundary check
    input_ids: Any  # (1, Lp) expanded
    mm_token_type_ids: Any  # (1, Lp)
    image_grid_thw: Any  # (n_img, 3) or None
    video_grid_thw: Any
    second_per_grid_ts: Any
    next_position: int  # max prefix position + 1
    kv: list[tuple[Any, Any]] = field(default_factory=list)


class JudgeScorer:
    """Scores (query, candidate) pairs with a frozen generative MLLM (SPEC 1.3).

        judge = JudgeScorer.from_pretrained("Qwen/Qwen2.5-VL-7B-Instruct", data_root="data")
        scores = judge.score_candidates(query_item, [positive, *candidates])   # fast path
        s = judge.score_pair(query_item, candidate_item)                      # reference path
    """

    def __init__(self, model, processor, adapter: FamilyAdapter, *, image_loader: ImageLoader | None = None,
                 device: str = "cpu", chunk_size: int = 16, name: str = "", image_cache_size: int = 1024):
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        self.model, self.processor, self.adapter = model, processor, adapter
        self.tokenizer = adapter.tokenizer
        self.image_loader = image_loader or ImageLoader()
        self.device = device
        self.chunk_size = chunk_size
        self.name = name
        # refuse a judge whose answers are not single tokens (ModelError from the adapter)
        self.yes_id = adapter.single_token_id(YES)
        self.no_id = adapter.single_token_id(NO)
        if self.yes_id == self.no_id:
            raise ModelError(f"'{YES}' and '{NO}' map to the same token id {self.yes_id}")
        self.stats = JudgeStats()
        # vision-encoder outputs of candidate images, by image key (LRU): a pool image retrieved for
        # many queries goes through the vision tower once, not once per query
        self.image_cache_size = image_cache_size
        self._image_cache: OrderedDict[str, tuple[Any, list[Any] | None]] = OrderedDict()
        if self.model is not None:
            self.model.eval()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str | None = None, dtype=None,
                        data_root: str | os.PathLike | None = None, allow_outside_root: bool = False,
                        adapter_path: str | None = None, load_weights: bool = True, video_sampling=None,
                        image_budget=None,
                        **kwargs) -> "JudgeScorer":
        """Load a judge checkpoint. `load_weights=False` loads only the processor and config: enough to
        build prompts and resolve the Yes/No ids (e.g. for a vLLM backend), not to score."""
        loader = ImageLoader(data_root, allow_outside_root=allow_outside_root, video=video_sampling)
        if not load_weights:
            from transformers import AutoConfig

            from unime.models.adapters import adapter_for
            from unime.models.loading import is_peft_adapter, load_processor

            base = str(path)
            if is_peft_adapter(path):
                import json
                from pathlib import Path

                base = json.loads((Path(path) / "adapter_config.json").read_text())["base_model_name_or_path"]
            has_tokenizer = os.path.isfile(os.path.join(str(path), "tokenizer_config.json"))
            processor, budget = load_processor(str(path) if has_tokenizer else base, image_budget=image_budget,
                                               budget_from=str(path))
            config = AutoConfig.from_pretrained(base)
            return cls(None, processor, adapter_for(config, processor, budget), image_loader=loader,
                       device=device or "cpu",
                       name=str(path), **kwargs)
        loaded: LoadedModel = load_model(path, device=device, dtype=dtype, adapter_path=adapter_path,
                                         image_budget=image_budget)
        return cls(loaded.model, loaded.processor, loaded.adapter, image_loader=loader, device=loaded.device,
                   name=str(path), **kwargs)

    def clear_image_cache(self) -> None:
        """Forget cached vision-encoder outputs (needed after changing the model's weights)."""
        self._image_cache.clear()

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
        segs = self.prompt_segments(query, candidate)
        text = self.adapter.render_user_turn(segs)
        inputs = self.adapter.processor_inputs([text], [segs]).to(self.device)
        with torch.inference_mode():
            out = self.model(**inputs, use_cache=False, logits_to_keep=1)
        logits = out.logits[0, -1].float()
        self.stats.pairs_scored_reference += 1
        return float(logits[self.yes_id] - logits[self.no_id])

    def score_pair(self, query: Item, candidate: Item) -> float:
        """Reference score of one pair: sigmoid(l_Yes - l_No) of a full forward."""
        return _sigmoid(self.margin_pair(query, candidate))

    def score_pairs_reference(self, pairs: Sequence[tuple[Item, Item]]) -> np.ndarray:
        return np.array([self.score_pair(q, c) for q, c in pairs], dtype=np.float64)

    # -- fast path ----------------------------------------------------------------------------------
    def score_candidates(self, query: Item, candidates: Sequence[Item]) -> np.ndarray:
        """Scores of `candidates` for `query` (float64, in order), sharing the query prefix."""
        return _sigmoid_array(self.margin_candidates(query, candidates))

    def score_pairs(self, pairs: Sequence[tuple[Item, Item]], *, show_progress: bool = False) -> np.ndarray:
        """Scores of arbitrary pairs (in order): grouped by query, each distinct pair scored once."""
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
        import torch

        self._require_model()
        candidates = list(candidates)
        self.stats.pairs_requested += len(candidates)
        if not candidates:
            return np.zeros(0, dtype=np.float64)
        unique: dict[str, int] = {}
        for c in candidates:
            unique.setdefault(c.key, len(unique))
        self.stats.duplicate_pairs += len(candidates) - len(unique)
        uniq_items = list({c.key: c for c in candidates}.values())
        margins = np.zeros(len(uniq_items), dtype=np.float64)

        with torch.inference_mode():
            q_segs = self.item_segments(query, field="query")
            fast: list[tuple[int, str, list[Segment], int]] = []  # (index, continuation text, segs, n_tokens)
            reference: list[int] = []
            prefix = self._prefix_text(q_segs)
            for j, cand in enumerate(uniq_items):
                c_segs = judge_candidate_segments(self.item_segments(cand, field="candidate"))
                cont = self._continuation_text(prefix, q_segs, c_segs)
                if cont is None:
                    self.stats.boundary_fallbacks += 1
                    reference.append(j)
                    continue
                fast.append((j, cont[0], c_segs, cont[1]))
            if fast:
                state = self._run_prefix(prefix[0], prefix[1], judge_prefix_segments(q_segs))
                # similar lengths together: less padding per chunk
                fast.sort(key=lambda t: t[3])
                for s in range(0, len(fast), self.chunk_size):
                    chunk = fast[s:s + self.chunk_size]
                    keys = [self._media_keys(uniq_items[t[0]]) for t in chunk]
                    m = self._run_continuations(state, [t[1] for t in chunk], [t[2] for t in chunk], keys)
                    for (j, *_), v in zip(chunk, m):
                        margins[j] = v
                self.stats.pairs_scored_fast += len(fast)
        for j in reference:
            margins[j] = self.margin_pair(query, uniq_items[j])
        return margins[[unique[c.key] for c in candidates]]

    # -- fast path internals ------------------------------------------------------------------------
    def _tokens(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _prefix_text(self, q_segs: list[Segment]) -> tuple[str, list[int]]:
        rendered = self.adapter.render_user_turn(
            judge_prefix_segments(q_segs) + [Segment("text", _SENTINEL)])
        cut = rendered.index(_SENTINEL)
        text = rendered[:cut]
        return text, self._tokens(text)

    def _continuation_text(self, prefix: tuple[str, list[int]], q_segs, c_segs) -> tuple[str, int] | None:
        """The continuation string of a pair, or None when its tokens would not match the full prompt's."""
        full = self.adapter.render_user_turn(merge_text([*judge_prefix_segments(q_segs), *c_segs]))
        p_text, p_tokens = prefix
        if not full.startswith(p_text):
            return None
        cont = full[len(p_text):]
        c_tokens = self._tokens(cont)
        if p_tokens + c_tokens != self._tokens(full):
            return None
        return cont, len(c_tokens)

    def _rope_positions(self, input_ids, mm_token_type_ids, image_grid_thw, video_grid_thw, second_per_grid_ts):
        """(3, 1, L) M-RoPE positions of one unpadded sequence, computed by the model itself."""
        import inspect

        backbone = self.adapter.backbone(self.model)
        kwargs = dict(input_ids=input_ids, mm_token_type_ids=mm_token_type_ids, image_grid_thw=image_grid_thw,
                      video_grid_thw=video_grid_thw)
        accepted = inspect.signature(backbone.get_rope_index).parameters
        if second_per_grid_ts is not None and "second_per_grid_ts" in accepted:  # Qwen2.5-VL video timing
            kwargs["second_per_grid_ts"] = second_per_grid_ts
        positions, _ = backbone.get_rope_index(**kwargs)
        return positions

    def _run_prefix(self, text: str, token_ids: list[int], segs: list[Segment]) -> _Prefix:
        import torch

        inputs = self.adapter.processor_inputs([text], [segs]).to(self.device)
        input_ids = inputs["input_ids"]
        mm_types = inputs.get("mm_token_type_ids")
        if mm_types is None:
            mm_types = torch.zeros_like(input_ids)
        image_grid, video_grid = inputs.get("image_grid_thw"), inputs.get("video_grid_thw")
        second = inputs.get("second_per_grid_ts")
        if image_grid is not None or video_grid is not None:
            positions = self._rope_positions(input_ids, mm_types, image_grid, video_grid, second)
        else:
            positions = self.adapter.text_continuation_positions(0, input_ids.shape[1], 1, device=input_ids.device)
        kwargs = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
        out = self.adapter.backbone(self.model)(
            input_ids=input_ids, attention_mask=inputs["attention_mask"], mm_token_type_ids=mm_types,
            position_ids=positions, use_cache=True, return_dict=True, **kwargs)
        cache = out.past_key_values
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        self.stats.prefix_forwards += 1
        self.stats.prefix_tokens += int(input_ids.shape[1])
        return _Prefix(text=text, token_ids=token_ids, input_ids=input_ids, mm_token_type_ids=mm_types,
                       image_grid_thw=image_grid, video_grid_thw=video_grid, second_per_grid_ts=second,
                       next_position=int(positions.max()) + 1, kv=kv)

    def _media_keys(self, item: Item) -> dict[str, list[str]]:
        """Cache keys of a candidate's images and video (a video's key includes its sampling settings)."""
        sampling = repr(getattr(self.image_loader, "video_sampling", None))
        return {"image": [Item(images=(ref,)).key for ref in item.images],
                "video": ["video:" + Item(video=item.video).key + sampling] if item.video else []}

    def _encoded_images(self, pixel_values, image_grid, keys: list[str], kind: str = "image"):
        """Vision-encoder outputs for the images (or videos) of a chunk, from the cache where possible, in
        the `mm_encoder_outputs` form the model's forward accepts (per-item tuples; Qwen3-VL's deepstack
        features as per-layer tuples)."""
        sizes = image_grid.prod(-1).tolist()
        starts = np.cumsum([0] + sizes)
        missing = [i for i, k in enumerate(keys) if k not in self._image_cache]
        self.stats.image_cache_hits += len(keys) - len(missing)
        self.stats.image_cache_misses += len(missing)
        fresh: dict[str, tuple[Any, list[Any] | None]] = {}
        backbone = self.adapter.backbone(self.model)
        for i in missing:
            if keys[i] in fresh:
                continue
            # one image per call: its features then do not depend on which images shared its batch, so
            # scores do not depend on the cache's history (a resumed run reproduces an uninterrupted one)
            encode = backbone.get_video_features if kind == "video" else backbone.get_image_features
            out = encode(pixel_values[starts[i]:starts[i + 1]], image_grid[i:i + 1], return_dict=True)
            deep = getattr(out, "deepstack_features", None)
            fresh[keys[i]] = (out.pooler_output[0], [layer[0] for layer in deep] if deep is not None else None)
        feats = []
        for k in keys:
            if k in fresh:
                feats.append(fresh[k])
            else:
                self._image_cache.move_to_end(k)
                feats.append(self._image_cache[k])
        for k, v in fresh.items():
            if self.image_cache_size > 0:
                self._image_cache[k] = v
        while len(self._image_cache) > self.image_cache_size:
            self._image_cache.popitem(last=False)
        result = _EncoderOutput(pooler_output=tuple(f[0] for f in feats))
        if feats and feats[0][1] is not None:
            result.deepstack_features = [tuple(f[1][layer] for f in feats) for layer in range(len(feats[0][1]))]
        return result

    def _run_continuations(self, prefix: _Prefix, texts: list[str], segs: list[list[Segment]],
                           media_keys: list[dict[str, list[str]]] | None = None) -> list[float]:
        import torch
        from transformers import DynamicCache

        inputs = self.adapter.processor_inputs(texts, segs, padding_side="right").to(self.device)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        batch, length = ids.shape
        mm_types = inputs.get("mm_token_type_ids")
        if mm_types is None:
            mm_types = torch.zeros_like(ids)
        lengths = mask.sum(dim=1)
        # text continuation token i: max(prefix positions) + 1 + i, on all three rows (the family's rule)
        positions = self.adapter.text_continuation_positions(prefix.next_position, length, batch, device=ids.device)
        image_grid, video_grid = inputs.get("image_grid_thw"), inputs.get("video_grid_thw")
        seconds = _as_1d(inputs.get("second_per_grid_ts"), ids.device)
        n_images = [sum(1 for s in row if s.kind == "image") for row in segs]
        n_videos = [sum(1 for s in row if s.kind == "video") for row in segs]
        first_image = first_video = 0
        for b in range(batch):
            n, v = n_images[b], n_videos[b]
            if n == 0 and v == 0:
                continue
            # continuation with vision tokens: the model's own rope index on the whole sequence (prefix's
            # images / videos first, then the row's), sliced to the continuation
            real = int(lengths[b])
            full_ids = torch.cat([prefix.input_ids[0], ids[b, :real]]).unsqueeze(0)
            full_types = torch.cat([prefix.mm_token_type_ids[0], mm_types[b, :real]]).unsqueeze(0)
            grids = _cat(prefix.image_grid_thw, image_grid[first_image:first_image + n] if n else None)
            vgrids = _cat(prefix.video_grid_thw, video_grid[first_video:first_video + v] if v else None)
            secs = _cat(_as_1d(prefix.second_per_grid_ts, ids.device),
                        seconds[first_video:first_video + v] if v and seconds is not None else None)
            pos = self._rope_positions(full_ids, full_types, grids, vgrids, secs)
            positions[:, b, :real] = pos[:, 0, prefix.input_ids.shape[1]:]
            first_image += n
            first_video += v
        prefix_len = prefix.input_ids.shape[1]
        attention = torch.cat([torch.ones(batch, prefix_len, dtype=mask.dtype, device=mask.device), mask], dim=1)
        # a fresh cache per chunk holding a batch-expanded copy: the prefix cache is never mutated
        cache = DynamicCache(ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
                                             for k, v in prefix.kv], config=self.model.config)
        kwargs = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
        if (image_grid is not None or video_grid is not None) and media_keys is not None and self.image_cache_size > 0:
            encoded = {}
            if image_grid is not None:
                flat = [k for row in media_keys for k in row["image"]]
                encoded["image"] = self._encoded_images(kwargs.pop("pixel_values"), image_grid, flat)
            if video_grid is not None:
                flat = [k for row in media_keys for k in row["video"]]
                encoded["video"] = self._encoded_images(kwargs.pop("pixel_values_videos"), video_grid, flat,
                                                        kind="video")
            kwargs["mm_encoder_outputs"] = encoded
        out = self.adapter.backbone(self.model)(
            input_ids=ids, attention_mask=attention, mm_token_type_ids=mm_types, position_ids=positions,
            past_key_values=cache, use_cache=True, return_dict=True, **kwargs)
        hidden = out.last_hidden_state[torch.arange(batch, device=ids.device), lengths - 1]
        self.stats.continuation_tokens += int(lengths.sum())
        return self._yes_no_margin(hidden).tolist()

    def _yes_no_margin(self, hidden):
        """l_Yes - l_No from final hidden states, using only the two LM-head rows."""
        head = self.adapter.lm_head(self.model)
        rows = head.weight[[self.yes_id, self.no_id]].float()
        logits = hidden.float() @ rows.T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[[self.yes_id, self.no_id]].float()
        return (logits[:, 0] - logits[:, 1]).double().cpu().numpy()


class _EncoderOutput:
    """The attributes the model's forward reads from `mm_encoder_outputs["image"]`."""

    def __init__(self, pooler_output):
        self.pooler_output = pooler_output
        self.deepstack_features = None


def _as_1d(values, device):
    """`second_per_grid_ts` as a 1-D float tensor (processors return a list or a tensor), or None."""
    import torch

    if values is None:
        return None
    return torch.as_tensor(values, dtype=torch.float32, device=device).reshape(-1)


def _cat(a, b):
    import torch

    if a is None:
        return b
    if b is None:
        return a
    return torch.cat([a, b])


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _sigmoid_array(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))
