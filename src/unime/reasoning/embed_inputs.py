"""Embedder inputs with reasoning (SPEC §2.1): an item, its T-CoT, and the evidence the T-CoT points at.

One user turn, in this order::

    [video | images | text of the item]            (the item as `Embedder.segments` gives it)
    <thinking>{JSON}</thinking>                     (the T-CoT up to and including </thinking>)
    evidence images                                 (crops of the item's image for `bbox_2d`, then the
                                                     key frames of the item's video, 1-based)
    <rethink>…</rethink><answer>…</answer>          (the rest of the T-CoT)
    Summarize the above content in one word:        (prompts.EMBED_SUMMARY_PROMPT)

and the assistant turn opens with `<emb>` (added by `Embedder.render` when pooling="emb"); the
embedding is the last-layer hidden state at `<emb>`, L2-normalised — the existing `Embedder` does it.
Without a T-CoT the turn is the item followed by the summary prompt (the "same embedder without
T-CoT" baseline).

Boxes refer to the item's first image (the image the reasoner was shown first). Crops are kept only
if both sides are >= 10 px and the aspect ratio is <= 50 (`unime.reasoning.evidence.crop_evidence`).

A completion that is not a well-formed T-CoT (frequent in early RL rollouts) is handled by
`on_invalid`: "raw" (default) puts the completion text after the item with no evidence — it is still
what the reasoner wrote, and the outcome reward should see it; "raise" raises the parser's
`TCoTError`; "drop" embeds the item without reasoning.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from unime.data.items import Item
from unime.models.adapters import Segment
from unime.models.prompts import EMB_TOKEN, EMBED_SUMMARY_PROMPT

ON_INVALID = ("raw", "raise", "drop")


def evidence_images(tcot, images: Sequence[Any], frames: Sequence[Any], *, min_side: int = 10,
                    max_aspect: float = 50.0) -> list[Any]:
    """Crops of `images[0]` for the T-CoT's boxes (kept if both sides >= min_side and aspect <= max_aspect),
    then the key frames (1-based) of `frames`. Evidence with nothing to point at (boxes on a text item,
    key frames outside the video) is left out — a rollout's mistakes must not stop the reward."""
    from unime.reasoning.evidence import extract_evidence

    ev = extract_evidence(tcot.evidence, image=images[0] if images else None, frames=list(frames) if frames else None,
                          min_side=min_side, max_aspect=max_aspect, on_invalid_frame="skip")
    return ev.images


def reasoning_segments(item_segments: Sequence[Segment], tcot_text: str | None, *, images: Sequence[Any] = (),
                       frames: Sequence[Any] = (), on_invalid: str = "raw", min_side: int = 10,
                       max_aspect: float = 50.0, summary_prompt: str = EMBED_SUMMARY_PROMPT,
                       record: Any = None) -> list[Segment]:
    """The embedder's user turn for an item (`item_segments`, as `Embedder.segments` builds them) with
    its T-CoT (`None` = no reasoning). `images` / `frames` are the item's loaded images and video frames
    (the evidence is cut from them)."""
    from unime.reasoning.tcot import TCoTError, parse_tcot

    if on_invalid not in ON_INVALID:
        raise ValueError(f"on_invalid must be one of {ON_INVALID}, got {on_invalid!r}")
    segs = list(item_segments)
    if tcot_text is not None and tcot_text.strip():
        try:
            tcot = parse_tcot(tcot_text, record=record)
        except TCoTError:
            if on_invalid == "raise":
                raise
            if on_invalid == "raw":
                segs.append(Segment("text", tcot_text.strip()))
        else:
            head, tail = tcot.split_for_evidence()
            segs.append(Segment("text", head.strip()))
            segs.extend(Segment("image", im) for im in evidence_images(tcot, images, frames, min_side=min_side,
                                                                       max_aspect=max_aspect))
            if tail.strip():
                segs.append(Segment("text", tail.strip()))
    segs.append(Segment("text", summary_prompt))
    return segs


class ReasonedEmbedder:
    """An `Embedder` (pooling="emb") that embeds items together with their T-CoT and evidence."""

    def __init__(self, embedder, *, on_invalid: str = "raw", min_side: int = 10, max_aspect: float = 50.0):
        if embedder.pooling != "emb":
            raise ValueError(f"an Embed-RL embedder pools at {EMB_TOKEN} (SPEC 2.1); this one pools "
                             f"{embedder.pooling!r}. Add the token with `unime.models.embedder.add_emb_token` (or "
                             "`unime.train.tcot_embedder.prepare_emb_checkpoint`) and load it with pooling='emb'")
        if embedder.instruction_suffix:
            raise ValueError("a ReasonedEmbedder ends each input with the summary prompt; the embedder must not add "
                             f"an instruction_suffix (got {embedder.instruction_suffix!r})")
        if on_invalid not in ON_INVALID:
            raise ValueError(f"on_invalid must be one of {ON_INVALID}, got {on_invalid!r}")
        self.embedder = embedder
        self.on_invalid = on_invalid
        self.min_side, self.max_aspect = min_side, max_aspect

    @property
    def hidden_size(self) -> int:
        return self.embedder.hidden_size

    def segments(self, item: Item, tcot_text: str | None, *, record: Any = None) -> list[Segment]:
        load = self.embedder.image_loader.load
        images = [load(r, record=record, field=f"images[{i}]") for i, r in enumerate(item.images)]
        frames = [load(r, record=record, field=f"video[{i}]") for i, r in enumerate(item.video)]
        from unime.models.adapters import item_segments

        base = item_segments(item.text, images, frames, record=record)
        return reasoning_segments(base, tcot_text, images=images, frames=frames, on_invalid=self.on_invalid,
                                  min_side=self.min_side, max_aspect=self.max_aspect, record=record)

    def build_inputs(self, items: Sequence[Item], tcots: Sequence[str | None]):
        if len(items) != len(tcots):
            raise ValueError(f"{len(tcots)} T-CoTs for {len(items)} items")
        segs = [self.segments(it, t, record=i) for i, (it, t) in enumerate(zip(items, tcots))]
        return self.embedder.build_inputs(items, segments=segs)

    def embed(self, items: Sequence[Item], tcots: Sequence[str | None]):
        """Embeddings with gradients if enabled (training): (n, hidden) torch tensor, L2-normalised."""
        return self.embedder.forward(self.build_inputs(items, tcots))

    def encode(self, items: Sequence[Item], tcots: Sequence[str | None], *, batch_size: int | None = None,
               show_progress: bool = False) -> np.ndarray:
        """float32 (n, hidden), no grad; identical (item, T-CoT) inputs are encoded once."""
        import torch

        items = list(items)
        tcots = list(tcots)
        if len(items) != len(tcots):
            raise ValueError(f"{len(tcots)} T-CoTs for {len(items)} items")
        keys = [(it.key, t) for it, t in zip(items, tcots)]
        first: dict[tuple, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        uniq = list(first.values())
        out = np.zeros((len(uniq), self.hidden_size), dtype=np.float32)
        bs = batch_size or self.embedder.batch_size
        batches = range(0, len(uniq), bs)
        if show_progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="encode (T-CoT)", unit="batch")
        model = self.embedder.model
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                for s in batches:
                    idx = uniq[s:s + bs]
                    reps = self.embed([items[i] for i in idx], [tcots[i] for i in idx])
                    out[s:s + len(idx)] = reps.float().cpu().numpy()
        finally:
            model.train(was_training)
        row = {k: j for j, k in enumerate(first)}
        return out[[row[k] for k in keys]]
