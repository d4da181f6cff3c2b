"""Prefix-KV scoring: many continuations of one shared prompt prefix, the prefix run once.

    engine = PrefixEngine(model, adapter, device="cpu", chunk_size=16, image_cache_size=1024,
                          image_cache_bytes=IMAGE_CACHE_BYTES, stats=stats)
    values, failed = engine.score(prefix_segments, [(full_segments, continuation_segments, media_keys), ...],
                                  readout)

The prefix (a prompt's segments up to a cut) is rendered with the chat template, run once with a KV cache;
the continuations are then run on that cache in right-padded chunks of similar length, and `readout` maps
each continuation's last hidden state to a number (the judge: l_Yes - l_No from two LM-head rows).

What this must get right (each one breaks equality with a full forward of the prompt when missed):
- Positions come from the family adapter (`FamilyAdapter.prefix_positions` / `continuation_positions`,
  Qwen-VL's 3-row M-RoPE) and are always passed explicitly, never inferred by the model (which would use
  stale per-model state or the cache length).
- The prefix KV cache is never mutated: each chunk gets a fresh cache holding a batch-expanded copy.
- Continuation images and videos go through the model's own forward (`pixel_values`, `image_grid_thw`,
  `mm_token_type_ids`, ...), so family specifics (e.g. Qwen3-VL's deepstack features) apply unchanged;
  their vision-encoder outputs are cached by media key (LRU), each encoded on its own so that a feature
  does not depend on which others shared its batch (a resumed run reproduces an uninterrupted one). The cache
  holds at most `image_cache_size` items and `image_cache_bytes` bytes of features (`FeatureCache`): they sit on
  the model's device, and a 7B judge's features of one 672-px image take ~4 MB (576 tokens x 3584 x bf16), so
  1024 of them would be ~4 GB of GPU memory beside the model. The cache only skips recomputation: the scores
  are the same whatever it holds.
- The KV cache goes in and comes out under the name the installed transformers uses (`cache` in recent 5.x, e.g. 5.24;
  `past_key_values` in earlier ones; the old name goes in 5.40): `_cache_argument`, `_output_cache`.
- Every continuation is checked at the token level (prefix tokens + continuation tokens == tokens of the
  full prompt); one that fails is returned in `failed` for the caller to score with a full forward, and
  counted in `stats.boundary_fallbacks`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from unime.models.adapters import FamilyAdapter, PositionInputs, Segment

# the default memory bound of the judge's vision-feature cache (`PrefixEngine.image_cache_bytes`)
IMAGE_CACHE_BYTES = 512 * 2**20

# A marker that never occurs in real text, used to find where the continuation starts in a rendered prompt.
_SENTINEL = "\u0000unime-judge-candidate\u0000"


@dataclass
class Prefix:
    text: str
    token_ids: list[int]  # unexpanded (one placeholder per image), for the boundary check
    layout: PositionInputs | None = None  # (1, Lp) expanded ids, token types and vision grids, once run
    next_position: int = 0  # max prefix position + 1
    kv: list[tuple[Any, Any]] = field(default_factory=list)


class PrefixEngine:
    """Runs continuations of a shared prefix on its KV cache (see the module doc). `stats` is any object
    with the counters `prefix_forwards`, `prefix_tokens`, `continuation_tokens`, `boundary_fallbacks`,
    `pairs_scored_fast`, `image_cache_hits`, `image_cache_misses` (the judge's `JudgeStats`).
    `image_cache_size` (items) and `image_cache_bytes` bound the vision-feature cache (either at 0: no cache, the
    media go through the model's own forward); either may be changed between calls."""

    def __init__(self, model, adapter: FamilyAdapter, *, device: str, chunk_size: int, image_cache_size: int,
                 stats, image_cache_bytes: int = IMAGE_CACHE_BYTES):
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        self.model, self.adapter, self.device = model, adapter, device
        self.chunk_size = chunk_size
        self.image_cache_size, self.image_cache_bytes = image_cache_size, image_cache_bytes
        self.stats = stats
        # vision-encoder outputs of continuation images / videos, by media key (LRU): a pool image
        # retrieved for many queries goes through the vision tower once, not once per query
        self.image_cache = FeatureCache()
        self._cache_argument: str | None = None  # the forward's KV-cache keyword, looked up at the first chunk

    def score(self, prefix_segments: list[Segment],
              continuations: Sequence[tuple[list[Segment], list[Segment], dict[str, list[str]]]],
              readout: Callable[[Any], np.ndarray]) -> tuple[np.ndarray, list[int]]:
        """Per continuation (full prompt's segments, its own segments, media keys {"image": [...],
        "video": [...]}) the readout of its last hidden state (float64, in order), and the indices whose
        token boundary check failed (their values are 0)."""
        import torch

        values = np.zeros(len(continuations), dtype=np.float64)
        fast: list[tuple[int, str, list[Segment], int]] = []  # (index, continuation text, segs, n_tokens)
        failed: list[int] = []
        with torch.inference_mode():
            prefix = self.split(prefix_segments)
            for j, (full, segs, _) in enumerate(continuations):
                cont = self.continuation_text(prefix, full)
                if cont is None:
                    self.stats.boundary_fallbacks += 1
                    failed.append(j)
                    continue
                fast.append((j, cont[0], segs, cont[1]))
            if fast:
                self.run_prefix(prefix, prefix_segments)
                fast.sort(key=lambda t: t[3])  # similar lengths together: less padding per chunk
                for s in range(0, len(fast), self.chunk_size):
                    chunk = fast[s:s + self.chunk_size]
                    hidden = self.run_continuations(prefix, [t[1] for t in chunk], [t[2] for t in chunk],
                                                    [continuations[t[0]][2] for t in chunk])
                    for (j, *_), v in zip(chunk, readout(hidden)):
                        values[j] = v
                self.stats.pairs_scored_fast += len(fast)
        return values, failed

    # -- the token boundary ----------------------------------------------------------------------------
    def _tokens(self, text: str) -> list[int]:
        return self.adapter.tokenizer.encode(text, add_special_tokens=False)

    def split(self, prefix_segments: list[Segment]) -> Prefix:
        """The rendered prefix: the chat template's text up to where a continuation starts."""
        rendered = self.adapter.render_user_turn(prefix_segments + [Segment("text", _SENTINEL)])
        text = rendered[:rendered.index(_SENTINEL)]
        return Prefix(text=text, token_ids=self._tokens(text))

    def continuation_text(self, prefix: Prefix, full_segments: list[Segment]) -> tuple[str, int] | None:
        """The continuation string of a full prompt, or None when its tokens would not match the full
        prompt's (prefix tokens + continuation tokens != tokens of the whole)."""
        full = self.adapter.render_user_turn(full_segments)
        if not full.startswith(prefix.text):
            return None
        cont = full[len(prefix.text):]
        c_tokens = self._tokens(cont)
        if prefix.token_ids + c_tokens != self._tokens(full):
            return None
        return cont, len(c_tokens)

    # -- forwards --------------------------------------------------------------------------------------
    def run_prefix(self, prefix: Prefix, segs: list[Segment]) -> None:
        """Run the prefix once; keep its KV cache, layout and next position on `prefix`."""
        inputs = self.adapter.processor_inputs([prefix.text], [segs]).to(self.device)
        layout = PositionInputs.of(inputs)
        positions = self.adapter.prefix_positions(self.model, layout)
        kwargs = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
        out = self.adapter.backbone(self.model)(
            input_ids=layout.input_ids, attention_mask=inputs["attention_mask"],
            mm_token_type_ids=layout.mm_token_type_ids, position_ids=positions, use_cache=True, return_dict=True,
            **kwargs)
        prefix.kv = [(layer.keys, layer.values) for layer in _output_cache(out).layers]
        prefix.layout, prefix.next_position = layout, int(positions.max()) + 1
        self.stats.prefix_forwards += 1
        self.stats.prefix_tokens += int(layout.input_ids.shape[1])

    def run_continuations(self, prefix: Prefix, texts: list[str], segs: list[list[Segment]],
                          media_keys: list[dict[str, list[str]]] | None = None):
        """(B, H) last hidden states of continuations of `prefix` (one chunk)."""
        import torch
        from transformers import DynamicCache

        inputs = self.adapter.processor_inputs(texts, segs, padding_side="right").to(self.device)
        layout = PositionInputs.of(inputs)
        ids, mask = layout.input_ids, inputs["attention_mask"]
        batch = ids.shape[0]
        lengths = mask.sum(dim=1)
        counts = [(sum(s.kind == "image" for s in row), sum(s.kind == "video" for s in row)) for row in segs]
        positions = self.adapter.continuation_positions(self.model, prefix.layout, prefix.next_position, layout,
                                                        lengths, counts)
        prefix_len = prefix.layout.input_ids.shape[1]
        attention = torch.cat([torch.ones(batch, prefix_len, dtype=mask.dtype, device=mask.device), mask], dim=1)
        # a fresh cache per chunk holding a batch-expanded copy: the prefix cache is never mutated
        cache = DynamicCache(ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
                                             for k, v in prefix.kv], config=self.model.config)
        kwargs = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
        if (layout.image_grid_thw is not None or layout.video_grid_thw is not None) and media_keys is not None \
                and self.image_cache_size > 0 and self.image_cache_bytes > 0:  # either bound at 0: no cache
            encoded = {}
            if layout.image_grid_thw is not None:
                flat = [k for row in media_keys for k in row["image"]]
                encoded["image"] = self._encoded_media(kwargs.pop("pixel_values"), layout.image_grid_thw, flat)
            if layout.video_grid_thw is not None:
                flat = [k for row in media_keys for k in row["video"]]
                encoded["video"] = self._encoded_media(kwargs.pop("pixel_values_videos"), layout.video_grid_thw,
                                                       flat, kind="video")
            kwargs["mm_encoder_outputs"] = encoded
        backbone = self.adapter.backbone(self.model)
        if self._cache_argument is None:
            self._cache_argument = _cache_argument(backbone)
        out = backbone(
            input_ids=ids, attention_mask=attention, mm_token_type_ids=layout.mm_token_type_ids,
            position_ids=positions, use_cache=True, return_dict=True, **{self._cache_argument: cache}, **kwargs)
        self.stats.continuation_tokens += int(lengths.sum())
        return out.last_hidden_state[torch.arange(batch, device=ids.device), lengths - 1]

    def _encoded_media(self, pixel_values, grid, keys: list[str], kind: str = "image"):
        """Vision-encoder outputs for the images (or videos) of a chunk, from the cache where possible, in
        the `mm_encoder_outputs` form the model's forward accepts (per-item tuples; Qwen3-VL's deepstack
        features as per-layer tuples)."""
        sizes = grid.prod(-1).tolist()
        starts = np.cumsum([0] + sizes)
        missing = [i for i, k in enumerate(keys) if k not in self.image_cache]
        self.stats.image_cache_hits += len(keys) - len(missing)
        self.stats.image_cache_misses += len(missing)
        fresh: dict[str, tuple[Any, list[Any] | None]] = {}
        backbone = self.adapter.backbone(self.model)
        encode = backbone.get_video_features if kind == "video" else backbone.get_image_features
        for i in missing:
            if keys[i] in fresh:
                continue
            # one item per call: its features then do not depend on which others shared its batch
            out = encode(pixel_values[starts[i]:starts[i + 1]], grid[i:i + 1], return_dict=True)
            deep = getattr(out, "deepstack_features", None)
            fresh[keys[i]] = (out.pooler_output[0], [layer[0] for layer in deep] if deep is not None else None)
        feats = [fresh[k] if k in fresh else self.image_cache.use(k) for k in keys]
        for k, v in fresh.items():
            self.image_cache.add(k, v)
        self.image_cache.shrink(self.image_cache_size, self.image_cache_bytes)
        result = _EncoderOutput(pooler_output=tuple(f[0] for f in feats))
        if feats and feats[0][1] is not None:
            result.deepstack_features = [tuple(f[1][layer] for f in feats) for layer in range(len(feats[0][1]))]
        return result


class FeatureCache:
    """Vision-encoder outputs (pooled features, deepstack features or None) by media key, least recently used
    first, with the bytes their tensors hold (`element_size() * nelement()`, on whatever device they sit)."""

    def __init__(self):
        self._entries: OrderedDict[str, tuple[tuple[Any, list[Any] | None], int]] = OrderedDict()
        self.nbytes = 0

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def use(self, key: str) -> tuple[Any, list[Any] | None]:
        """The features of `key`, now the most recently used."""
        self._entries.move_to_end(key)
        return self._entries[key][0]

    def add(self, key: str, features: tuple[Any, list[Any] | None]) -> None:
        pooled, deep = features
        size = sum(t.element_size() * t.nelement() for t in [pooled, *(deep or [])])
        if key in self._entries:
            self.nbytes -= self._entries.pop(key)[1]
        self._entries[key] = (features, size)
        self.nbytes += size

    def shrink(self, max_entries: int, max_bytes: int) -> None:
        """Drop the least recently used entries until at most `max_entries` remain, holding at most `max_bytes`
        (an entry larger than `max_bytes` alone is not kept)."""
        while self._entries and (len(self._entries) > max_entries or self.nbytes > max_bytes):
            self.nbytes -= self._entries.popitem(last=False)[1][1]

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0


class _EncoderOutput:
    """The attributes the model's forward reads from `mm_encoder_outputs["image"]`."""

    def __init__(self, pooler_output):
        self.pooler_output = pooler_output
        self.deepstack_features = None


def _cache_argument(backbone) -> str:
    """The name under which `backbone.forward` takes a KV cache: `cache` (recent transformers 5.x) or
    `past_key_values` (earlier 5.x)."""
    import inspect

    return "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"


def _output_cache(out):
    """The KV cache of a model output: its `cache` field (recent transformers 5.x) or `past_key_values`."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values
