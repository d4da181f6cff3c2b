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
Each piece is its own content part of the turn, with no separator added, as in the released Embed-RL code (its
messages append the item's text, the T-CoT and the summary prompt as separate text parts, which the Qwen-VL chat
templates write one after the other).
Without a T-CoT the turn is the item followed by the summary prompt (the "same embedder without
T-CoT" baseline).

Boxes refer to the item's first image (the image the reasoner was shown first). Crops are kept only
if both sides are >= 10 px and the aspect ratio is <= 50 (`unime.reasoning.evidence.crop_evidence`).

Image placeholders that a reasoner happens to write (`<image>`, `<|image_1|>`) are removed from the
T-CoT text: only evidence images are images. A completion that is not a well-formed T-CoT (frequent in early RL
rollouts) is handled by `on_invalid`: "raw" (default) puts the completion text after the item with no evidence —
it is still what the reasoner wrote, and the outcome reward should see it; "raise" raises the parser's
`TCoTError` (and a `DataError` for a key frame past the frames sampled: a T-CoT file read with another video sampling
than it was written with); "drop" embeds the item without reasoning.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from unime.data.items import Item
from unime.data.placeholders import SOURCE_IMAGE_PLACEHOLDER
from unime.models.adapters import Segment
from unime.models.prompts import EMB_TOKEN, EMBED_SUMMARY_PROMPT

ON_INVALID = ("raw", "raise", "drop")


def evidence_images(tcot, images: Sequence[Any], frames: Sequence[Any], *, min_side: int = 10,
                    max_aspect: float = 50.0, on_invalid_frame: str = "skip", left_out: list | None = None,
                    **where: Any) -> list[Any]:
    """Crops of `images[0]` for the T-CoT's boxes (kept if both sides >= min_side and aspect <= max_aspect),
    then the key frames (1-based) of `frames`. Evidence with nothing to point at (boxes on a text item,
    key frames outside the video) is left out — a rollout's mistakes must not stop the reward; with
    `on_invalid_frame="raise"` a key frame outside the video raises `DataError` naming `where` (source, record,
    field). `left_out`, when given, gets what was left out and why (`ExtractedEvidence.skipped`), for counting."""
    from unime.reasoning.evidence import extract_evidence

    ev = extract_evidence(tcot.evidence, image=images[0] if images else None, frames=list(frames) if frames else None,
                          min_side=min_side, max_aspect=max_aspect, on_invalid_frame=on_invalid_frame, **where)
    if left_out is not None:
        left_out.extend(ev.skipped)
    return ev.images


def reasoning_segments(item_segments: Sequence[Segment], tcot_text: str | None, *, images: Sequence[Any] = (),
                       frames: Sequence[Any] = (), on_invalid: str = "raw", min_side: int = 10,
                       max_aspect: float = 50.0, summary_prompt: str = EMBED_SUMMARY_PROMPT,
                       record: Any = None, source: str | None = None, field: str | None = None,
                       left_out: list | None = None) -> list[Segment]:
    """The embedder's user turn for an item (`item_segments`, as `Embedder.segments` builds them) with
    its T-CoT (`None` = no reasoning). `images` / `frames` are the item's loaded images and video frames
    (the evidence is cut from them). `on_invalid="raise"` also refuses a key frame outside `frames`: a
    `DataError` naming `source`, `record` and `field` (e.g. `query.key_frames[1]`). `left_out`: see
    `evidence_images`."""
    from unime.reasoning.tcot import TCoTError, parse_tcot

    if on_invalid not in ON_INVALID:
        raise ValueError(f"on_invalid must be one of {ON_INVALID}, got {on_invalid!r}")
    segs = list(item_segments)
    if tcot_text is not None:
        # a generated T-CoT is text: image placeholders in it (`<image>`, `<|image_1|>`) must not become images
        tcot_text = SOURCE_IMAGE_PLACEHOLDER.sub("", tcot_text)
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
            frame_rule = "raise" if on_invalid == "raise" else "skip"
            segs.extend(Segment("image", im) for im in evidence_images(
                tcot, images, frames, min_side=min_side, max_aspect=max_aspect, on_invalid_frame=frame_rule,
                left_out=left_out, source=source, record=record, field=field))
            if tail.strip():
                segs.append(Segment("text", tail.strip()))
    segs.append(Segment("text", summary_prompt))
    return segs


def _png(img) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def reasoned_item(item: Item, tcot_text: str | None, loader, *, on_invalid: str = "raw", min_side: int = 10,
                  max_aspect: float = 50.0, summary_prompt: str = EMBED_SUMMARY_PROMPT, record: Any = None,
                  source: str | None = None, field: str | None = None, left_out: list | None = None) -> Item:
    """The reasoning-conditioned input as a plain `Item`: the item's text and images, then the T-CoT text,
    the evidence images as inline PNG bytes at `<|image_k|>` placeholders, and the summary prompt.

    `Embedder.segments(reasoned_item(...))` gives exactly `reasoning_segments(...)` (same rendered text, same
    images in the same places), so the embedder trainer, `Embedder.encode`, the RL reward and the eval
    harness all see the same input without knowing about T-CoTs. `loader` (an `ImageLoader`) loads the
    item's images to cut the evidence from; a bad one is named by `source` (the file), `record` and `field` (the
    item's field in the record, e.g. "query"). `left_out`: see `evidence_images`."""
    at = f"{field}." if field else ""
    images = [loader.load(r, source=source, record=record, field=f"{at}images[{i}]") for i, r in enumerate(item.images)]
    frames = loader.load_video(item.video, source=source, record=record, field=f"{at}video") if item.video else []
    from unime.models.adapters import item_segments

    base = item_segments(item.text, images, frames, record=record)
    segs = reasoning_segments(base, tcot_text, images=images, frames=frames, on_invalid=on_invalid,
                              min_side=min_side, max_aspect=max_aspect, summary_prompt=summary_prompt,
                              record=record, source=source, field=field, left_out=left_out)
    text, refs = item.text, list(item.images)
    for s in segs[len(base):]:
        if s.kind == "text":
            text += s.value
        else:
            refs.append(_png(s.value))
            text += f"<|image_{len(refs)}|>"
    return Item(text=text, images=tuple(refs), video=item.video)


def _item_name(item: Item) -> str:
    """How a piece of evidence left out names its item: its text's start, else its first image's path."""
    if item.text.strip():
        return repr(item.text.strip()[:40])
    return next((r for r in item.images if isinstance(r, str)), "an item without text")


class ReasonedEmbedder:
    """An `Embedder` (pooling="emb") that embeds items together with their T-CoT and evidence, through
    `reasoned_item` + the embedder's own input path (one implementation for training, reward and eval)."""

    def __init__(self, embedder, *, on_invalid: str = "raw", min_side: int = 10, max_aspect: float = 50.0):
        if embedder.pooling != "emb":
            raise ValueError(f"an Embed-RL embedder pools at {EMB_TOKEN} (SPEC 2.1); this one pools "
                             f"{embedder.pooling!r}. Add the token with `unime.models.embedder.add_emb_token` (or "
                             "`unime.embed_rl.tcot_embedder.prepare_emb_checkpoint`) and load it with pooling='emb'")
        if embedder.instruction_suffix:
            raise ValueError("a ReasonedEmbedder ends each input with the summary prompt; the embedder must not add "
                             f"an instruction_suffix (got {embedder.instruction_suffix!r})")
        if on_invalid not in ON_INVALID:
            raise ValueError(f"on_invalid must be one of {ON_INVALID}, got {on_invalid!r}")
        self.embedder = embedder
        self.on_invalid = on_invalid
        self.min_side, self.max_aspect = min_side, max_aspect
        # the evidence left out by the crop rules (`evidence_images`), one line per piece, over every call (the reward
        # of GRPO and `reason eval` count it, as `reason materialize` counts its own)
        self.left_out: list[str] = []

    @property
    def hidden_size(self) -> int:
        return self.embedder.hidden_size

    def reasoned_items(self, items: Sequence[Item], tcots: Sequence[str | None]) -> list[Item]:
        if len(items) != len(tcots):
            raise ValueError(f"{len(tcots)} T-CoTs for {len(items)} items")
        out = []
        for i, (it, t) in enumerate(zip(items, tcots)):
            dropped: list[str] = []
            out.append(reasoned_item(it, t, self.embedder.image_loader, on_invalid=self.on_invalid,
                                     min_side=self.min_side, max_aspect=self.max_aspect, record=i, left_out=dropped))
            self.left_out.extend(f"{_item_name(it)}: {d}" for d in dropped)
        return out

    def build_inputs(self, items: Sequence[Item], tcots: Sequence[str | None]):
        return self.embedder.build_inputs(self.reasoned_items(items, tcots))

    def embed(self, items: Sequence[Item], tcots: Sequence[str | None]):
        """Embeddings with gradients if enabled (training): (n, hidden) torch tensor, L2-normalised."""
        return self.embedder.forward(self.build_inputs(items, tcots))

    def encode(self, items: Sequence[Item], tcots: Sequence[str | None], *, batch_size: int | None = None,
               show_progress: bool = False) -> np.ndarray:
        """float32 (n, hidden), no grad; identical (item, T-CoT) inputs are encoded once. An embedding holding NaN or
        inf (the model's fault, e.g. NaN weights) is the embedder's `NonFiniteEmbedding` naming the first such input
        as given here, without its T-CoT: GRPO's rewards and `reason eval`'s metrics failed on it with a traceback
        naming neither (QA)."""
        from unime.models.embedder import NonFiniteEmbedding

        items = list(items)
        try:
            return self.embedder.encode(self.reasoned_items(items, list(tcots)), batch_size=batch_size,
                                        show_progress=show_progress)
        except NonFiniteEmbedding as e:
            raise e.naming(item=items[e.index]) from None
