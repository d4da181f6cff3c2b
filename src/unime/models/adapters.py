"""Family adapters: everything that differs between model families, chosen by `config.model_type`.

An adapter turns unime `Item`s into chat messages (content parts in order), renders them with the
checkpoint's own chat template, builds processor inputs, knows where the text backbone lives, and gives
the family's position rule (Qwen-VL's 3-row M-RoPE) to code that runs a prompt in pieces (the judge's
prefix KV cache, `unime.models.prefix_scoring`).
Source-format image placeholders (MMEB's `<|image_1|>`, LLaVA's `<image>`) are mapped here, to
the family's image token, by position: placeholder n → the item's n-th image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from unime.data.placeholders import SOURCE_IMAGE_PLACEHOLDER, placeholder_refs
from unime.data.video import Video, as_video
from unime.errors import DataError, ModelError


@dataclass
class Segment:
    """One content part of a user turn: kind is 'text', 'image' or 'video'; value is the text, the
    PIL image, or the video (`unime.data.video.Video`, or a plain list of PIL frames)."""

    kind: str
    value: Any


@dataclass
class PositionInputs:
    """What decides the positions of a batch of token sequences: the ids, the token types (0 text,
    1 image, 2 video) and the vision grids of the processor's output (`of(inputs)`)."""

    input_ids: Any
    mm_token_type_ids: Any
    image_grid_thw: Any = None
    video_grid_thw: Any = None
    second_per_grid_ts: Any = None  # Qwen2.5-VL's video timing (a list or a tensor, as the processor gives it)

    @classmethod
    def of(cls, inputs) -> "PositionInputs":
        import torch

        types = inputs.get("mm_token_type_ids")
        return cls(inputs["input_ids"], torch.zeros_like(inputs["input_ids"]) if types is None else types,
                   inputs.get("image_grid_thw"), inputs.get("video_grid_thw"), inputs.get("second_per_grid_ts"))


def item_segments(text: str, images: Sequence[Any], video: Sequence[Any] | None = None, *,
                  record: Any = None, field: str | None = None) -> list[Segment]:
    """Split an item's text at its image placeholders; images without a placeholder come first.

    Placeholder `<|image_n|>` refers to image n (1-based); a placeholder naming a missing image is an
    error. Video frames, if any, come before everything else.
    """
    segs: list[Segment] = []
    if video:
        segs.append(Segment("video", video if isinstance(video, Video) else list(video)))
    used: set[int] = set()
    pieces: list[Segment] = []
    pos = 0
    for m, idx in placeholder_refs(text):
        if m.start() > pos:
            pieces.append(Segment("text", text[pos:m.start()]))
        if idx < 0 or idx >= len(images):
            raise DataError(f"placeholder {m.group(0)!r} but the item has {len(images)} image(s)",
                            record=record, field=field or "text")
        pieces.append(Segment("image", images[idx]))
        used.add(idx)
        pos = m.end()
    if pos < len(text):
        pieces.append(Segment("text", text[pos:]))
    segs.extend(Segment("image", img) for i, img in enumerate(images) if i not in used)
    segs.extend(pieces)
    # tidy whitespace next to images: "<|image_1|>\nRepresent..." → "Represent..."
    out = []
    for s in segs:
        if s.kind == "text":
            t = s.value.strip("\n") if out and out[-1].kind != "text" else s.value
            if t.strip():
                out.append(Segment("text", t))
        else:
            out.append(s)
    return out


VLM2VEC_MIN_SIDE = 28  # VLM2Vec enlarges an image with a side under this to 56×56 (`FamilyAdapter.vlm2vec_image`)


class FamilyAdapter:
    """Qwen-VL style adapter (Qwen2-VL, Qwen2.5-VL, Qwen3-VL share the message format)."""

    model_types: tuple[str, ...] = ()
    image_token = "<|image_pad|>"
    video_token = "<|video_pad|>"
    vlm2vec_model_types: tuple[str, ...] = ()  # the families VLM2Vec's raw input text is defined for (`vlm2vec_text`)
    model_type: str | None = None  # the checkpoint's `config.model_type` (`adapter_for` sets it)

    def __init__(self, processor, image_budget=None):
        from unime.models.image_budget import ImageBudget

        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        # the fixed resize and per-frame bounds; the pixel bounds of images live on the processor
        self.image_budget = image_budget or ImageBudget()

    # -- messages -------------------------------------------------------------------------------
    @staticmethod
    def content_parts(segments: Sequence[Segment]) -> list[dict]:
        parts = []
        for s in segments:
            if s.kind == "text":
                parts.append({"type": "text", "text": s.value})
            elif s.kind == "image":
                parts.append({"type": "image"})
            elif s.kind == "video":
                parts.append({"type": "video"})
            else:  # pragma: no cover
                raise ValueError(s.kind)
        return parts

    def render(self, messages: list[dict], *, add_generation_prompt: bool) -> str:
        return self.processor.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def render_user_turn(self, segments: Sequence[Segment], *, assistant_prefix: str = "",
                         system: str | None = None) -> str:
        """Render one user turn followed by the assistant's opening (and `assistant_prefix`)."""
        messages = []
        if system is not None:
            messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
        messages.append({"role": "user", "content": self.content_parts(segments)})
        return self.render(messages, add_generation_prompt=True) + assistant_prefix

    def check_vlm2vec(self) -> None:
        """Refuse a family VLM2Vec's input format is not defined for (`vlm2vec_text`)."""
        if self.model_type not in self.vlm2vec_model_types:
            raise ModelError(f"--item-format vlm2vec is defined for VLM2Vec's Qwen2-VL / Qwen2.5-VL input "
                             f"({', '.join(self.vlm2vec_model_types) or 'no family of this adapter'}), not for "
                             f"model_type {self.model_type!r}; use --item-format chat")

    def vlm2vec_text(self, text: str, images: int, video: bool) -> str:
        """An item as the raw text VLM2Vec's Qwen2-VL / Qwen2.5-VL path feeds the processor (no chat template; its
        `process_input_text` and evaluation datasets): with an image, the image token, a space and the text with
        its image placeholders removed, then every " \n" made "\n" and a newline added unless it ends with one
        (`'<|image_1|>\nRepresent the image.'` and MMEB's row `'<|image_1|>\nRepresent the image.\n'` →
        `'<|image_pad|>\nRepresent the image.\n'`); with a video, the
        video token, a space and the text; text alone as it is. One image or one video per item: VLM2Vec defines
        no other layout, so more is a `DataError`."""
        if images > 1 or (images and video):
            what = f"{images} images" + (" and a video" if video else "")
            raise DataError(f"--item-format vlm2vec takes one image or one video per item (VLM2Vec's Qwen2-VL "
                            f"input), this item has {what}; use --item-format chat", field="images")
        if video:
            return f"{self.video_token} {text}"
        if images:
            body = SOURCE_IMAGE_PLACEHOLDER.sub("", text)
            out = f"{self.image_token} {body}".replace(" \n", "\n")
            return out if out.endswith("\n") else out + "\n"  # MMEB's rows end with it already: one, as VLM2Vec
        return text

    @staticmethod
    def vlm2vec_image(image):
        """An image as VLM2Vec's Qwen2-VL / Qwen2.5-VL input function hands it to the processor: one with a side
        under `VLM2VEC_MIN_SIDE` px is resized to twice that square (56×56, PIL's default resampling), any other
        as it is (their `Qwen2_VL_process_fn`, after the collator's fixed resize of `--image-size`)."""
        if min(image.size) < VLM2VEC_MIN_SIDE:
            return image.resize((2 * VLM2VEC_MIN_SIDE, 2 * VLM2VEC_MIN_SIDE))
        return image

    # -- tensors --------------------------------------------------------------------------------
    def processor_inputs(self, texts: list[str], segments_per_text: list[Sequence[Segment]], *,
                         padding_side: str | None = None, add_special_tokens: bool = False, vlm2vec: bool = False):
        """The processor's batch of `texts`; `vlm2vec`: images after the fixed resize as VLM2Vec passes them
        (`vlm2vec_image`)."""
        budget = self.image_budget
        images = [budget.prepare(s.value) for segs in segments_per_text for s in segs if s.kind == "image"]
        if vlm2vec:
            images = [self.vlm2vec_image(im) for im in images]
        videos = [as_video(s.value) for segs in segments_per_text for s in segs if s.kind == "video"]
        if videos and budget.is_set:  # the frames under the same budget as images
            import dataclasses

            from unime.models.image_budget import processor_factor

            factor = processor_factor(getattr(self.processor, "video_processor", None) or self.processor)
            videos = [dataclasses.replace(v, frames=tuple(budget.prepare_frames(v.frames, factor=factor)))
                      for v in videos]
        kwargs: dict[str, Any] = dict(text=texts, padding=True, return_tensors="pt")
        if images:
            kwargs["images"] = images
        if videos:
            kwargs.update(self.video_kwargs(videos))
        if padding_side is not None:
            kwargs["padding_side"] = padding_side
        return self.processor(**kwargs)

    @staticmethod
    def input_token_counts(inputs) -> list[int]:
        """The tokens the model reads for each row of `processor_inputs`' batch: the row's input_ids without padding
        (its attention mask), the chat template and the image/video placeholder tokens included. What unime serve
        reports as a request's usage (embeddings, rerank)."""
        return [int(n) for n in inputs["attention_mask"].sum(dim=1).tolist()]

    def count_visual_tokens(self, input_ids) -> int:
        """Image and video placeholder tokens in a batch of token ids (after the processor's expansion)."""
        ids = [self.tokenizer.convert_tokens_to_ids(t) for t in (self.image_token, self.video_token)]
        return int(sum(int((input_ids == i).sum()) for i in ids if i is not None))

    @staticmethod
    def video_kwargs(videos: Sequence[Video]) -> dict[str, Any]:
        """The processor's video path: the sampled frames and, per video, where they sit in time
        (`Video.processor_metadata`: a variable frame-rate clip's real times; the processor turns it into
        `second_per_grid_ts` for Qwen2.5-VL and frame timestamps for Qwen3-VL; Qwen2-VL places frames by order).
        Frames are already sampled, so the processor must not sample again. Each frame is capped at an even share
        of the whole video's pixel budget, as the reference implementation (qwen-vl-utils) does and as the
        processors will by default (`cap_pixels_per_frame`; transformers warns while it is left unset)."""
        from transformers.video_utils import VideoMetadata

        meta = [VideoMetadata(width=v.size[0], height=v.size[1], **v.processor_metadata()) for v in videos]
        return {"videos": [list(v.frames) for v in videos], "video_metadata": meta, "do_sample_frames": False,
                "cap_pixels_per_frame": True}

    # -- positions: Qwen-VL's 3-row M-RoPE ------------------------------------------------------
    @staticmethod
    def text_continuation_positions(next_position: int, length: int, batch: int = 1, device=None):
        """(3, batch, length) M-RoPE positions of text tokens continuing a sequence whose largest position
        is `next_position - 1`: token i gets next_position + i on all three rows (the rule of Qwen-VL's
        `get_rope_index` for text after vision; a real-size test holds it to the model's own function)."""
        import torch

        pos = (next_position + torch.arange(length, device=device)).view(1, 1, -1)
        return pos.expand(3, batch, -1).clone()

    def sequence_positions(self, model, input_ids, mm_token_type_ids, image_grid_thw=None, video_grid_thw=None,
                           second_per_grid_ts=None):
        """(3, 1, L) positions of one unpadded sequence holding images or videos, computed by the model
        itself (`get_rope_index`: vision tokens take grid positions, fewer positions than tokens)."""
        import inspect

        backbone = self.backbone(model)
        kwargs = dict(input_ids=input_ids, mm_token_type_ids=mm_token_type_ids, image_grid_thw=image_grid_thw,
                      video_grid_thw=video_grid_thw)
        accepted = inspect.signature(backbone.get_rope_index).parameters
        if second_per_grid_ts is not None and "second_per_grid_ts" in accepted:  # Qwen2.5-VL video timing
            kwargs["second_per_grid_ts"] = second_per_grid_ts
        positions, _ = backbone.get_rope_index(**kwargs)
        return positions

    def prefix_positions(self, model, seq: PositionInputs):
        """(3, 1, L) positions of a prompt prefix (batch of one, unpadded)."""
        if seq.image_grid_thw is None and seq.video_grid_thw is None:
            return self.text_continuation_positions(0, seq.input_ids.shape[1], 1, device=seq.input_ids.device)
        return self.sequence_positions(model, seq.input_ids, seq.mm_token_type_ids, seq.image_grid_thw,
                                       seq.video_grid_thw, seq.second_per_grid_ts)

    def continuation_positions(self, model, prefix: PositionInputs, next_position: int, batch: PositionInputs,
                               lengths, vision_counts: Sequence[tuple[int, int]]):
        """(3, B, L) positions of right-padded continuations of `prefix` (whose largest position is
        `next_position - 1`). A text-only row follows `text_continuation_positions`; a row holding images or
        videos (`vision_counts[b]` = (images, videos) of row b, in the batch's order) gets the model's own
        positions of the whole sequence (prefix's images / videos first, then the row's), sliced to the row."""
        import torch

        ids = batch.input_ids
        n_rows, length = ids.shape
        positions = self.text_continuation_positions(next_position, length, n_rows, device=ids.device)
        seconds = _as_1d(batch.second_per_grid_ts, ids.device)
        prefix_len = prefix.input_ids.shape[1]
        first_image = first_video = 0
        for b, (n, v) in enumerate(vision_counts):
            if n == 0 and v == 0:
                continue
            real = int(lengths[b])
            full_ids = torch.cat([prefix.input_ids[0], ids[b, :real]]).unsqueeze(0)
            full_types = torch.cat([prefix.mm_token_type_ids[0], batch.mm_token_type_ids[b, :real]]).unsqueeze(0)
            grids = _cat(prefix.image_grid_thw, batch.image_grid_thw[first_image:first_image + n] if n else None)
            vgrids = _cat(prefix.video_grid_thw, batch.video_grid_thw[first_video:first_video + v] if v else None)
            secs = _cat(_as_1d(prefix.second_per_grid_ts, ids.device),
                        seconds[first_video:first_video + v] if v and seconds is not None else None)
            pos = self.sequence_positions(model, full_ids, full_types, grids, vgrids, secs)
            positions[:, b, :real] = pos[:, 0, prefix_len:]
            first_image += n
            first_video += v
        return positions

    @staticmethod
    def backbone(model):
        """The multimodal backbone (no LM head) of a `*ForConditionalGeneration` model."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        return base.model

    @staticmethod
    def vision_tower(model):
        """The vision encoder with its merger (projector) of a `*ForConditionalGeneration` model."""
        return FamilyAdapter.backbone(model).visual

    def freeze_vision(self, model) -> int:
        """Keep the vision tower (and merger) out of training; returns how many parameters it froze."""
        tower = self.vision_tower(model)
        tower.requires_grad_(False)
        return sum(p.numel() for p in tower.parameters())

    @staticmethod
    def lm_head(model):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        return base.lm_head

    def single_token_id(self, word: str) -> int:
        ids = self.tokenizer.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            raise ModelError(f"the tokenizer splits {word!r} into {len(ids)} tokens {ids}; a Yes/No judge needs "
                             "single-token answers")
        return ids[0]


class QwenVLAdapter(FamilyAdapter):
    model_types = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
    vlm2vec_model_types = ("qwen2_vl", "qwen2_5_vl")  # VLM2Vec has no Qwen3-VL backbone


ADAPTERS: dict[str, type[FamilyAdapter]] = {t: cls for cls in (QwenVLAdapter,) for t in cls.model_types}


def adapter_for(config, processor, image_budget=None) -> FamilyAdapter:
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise ModelError(f"no family adapter for model_type {model_type!r}; supported: {sorted(ADAPTERS)}")
    adapter = ADAPTERS[model_type](processor, image_budget=image_budget)
    adapter.model_type = model_type
    return adapter


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
