"""Shapes of the released checkpoints unime targets, without their weights.

The numbers below are the published `config.json` values of each hub checkpoint (text and vision
parts; the rest keeps transformers' defaults, which match the releases). They let unime reason about a
real-size model on a machine that cannot download it: `meta_model(name)` instantiates the real
`*ForConditionalGeneration` class on the `meta` device (no memory), which is what the real-size tests
and `unime plan` (memory estimates) use. `image_processor_kwargs` are the releases'
`preprocessor_config.json` pixel bounds and, where it is not the image processor's default (CLIP's mean / std),
its normalisation. `family_checkpoint` gives the tiny models (`unime.models.tiny`) what they copy from the releases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from unime.errors import UnimeError


@dataclass(frozen=True)
class KnownCheckpoint:
    name: str                 # hub id
    family: str               # config.model_type
    text: dict[str, Any]
    vision: dict[str, Any]
    tie_word_embeddings: bool
    image_processor: dict[str, Any] = field(default_factory=dict)  # patch_size, size bounds, image_mean / _std

    @property
    def patch_size(self) -> int:
        return int(self.vision["patch_size"])

    @property
    def merge_size(self) -> int:
        return int(self.vision.get("spatial_merge_size", 2))

    @property
    def image_normalisation(self) -> dict[str, list[float]]:
        """The release image processor's `image_mean` / `image_std` where they are not the class's default."""
        return {k: list(self.image_processor[k]) for k in ("image_mean", "image_std") if k in self.image_processor}

    def processor(self, tokenizer):
        """The family's processor with the release's image bounds and chat template around `tokenizer`
        (e.g. the real Qwen tokenizer); no download."""
        from transformers import (Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor,
                                  Qwen3VLProcessor, Qwen3VLVideoProcessor)

        from unime.models.chat_templates import QWEN2_VL_CHAT_TEMPLATE, QWEN3_VL_CHAT_TEMPLATE

        ip = self.image_processor
        image_processor = Qwen2VLImageProcessor(patch_size=ip["patch_size"], merge_size=self.merge_size,
                                                temporal_patch_size=2, **self.image_normalisation,
                                                size={"shortest_edge": ip["min_pixels"],
                                                      "longest_edge": ip["max_pixels"]})
        if self.family == "qwen3_vl":
            return Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                    video_processor=Qwen3VLVideoProcessor(), chat_template=QWEN3_VL_CHAT_TEMPLATE)
        cls = Qwen2VLProcessor if self.family == "qwen2_vl" else Qwen2_5_VLProcessor
        return cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
                   chat_template=QWEN2_VL_CHAT_TEMPLATE)

    def config(self):
        """The transformers config of the checkpoint (real shapes)."""
        from transformers import AutoConfig

        text = dict(self.text, tie_word_embeddings=self.tie_word_embeddings)
        cfg = AutoConfig.for_model(self.family, text_config=text, vision_config=dict(self.vision),
                                   tie_word_embeddings=self.tie_word_embeddings)
        return cfg


_QWEN2_VISION = dict(depth=32, embed_dim=1280, mlp_ratio=4, num_heads=16, in_chans=3, patch_size=14,
                     spatial_merge_size=2, temporal_patch_size=2)
_QWEN25_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_chans=3, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                      fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu", tokens_per_second=2)
_QWEN3_VISION_SMALL = dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, in_channels=3,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                           deepstack_visual_indexes=[5, 11, 17], hidden_act="gelu_pytorch_tanh")
_QWEN2_IMAGES = dict(patch_size=14, min_pixels=56 * 56, max_pixels=28 * 28 * 16384)       # 3136 .. 12845056
_QWEN3_IMAGES = dict(patch_size=16, min_pixels=65536, max_pixels=16777216, image_mean=(0.5, 0.5, 0.5),
                     image_std=(0.5, 0.5, 0.5))

_MROPE2 = {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0}
_MROPE3 = {"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True, "rope_theta": 5000000.0}

KNOWN_CHECKPOINTS: dict[str, KnownCheckpoint] = {c.name: c for c in [
    KnownCheckpoint(
        "Qwen/Qwen2-VL-2B-Instruct", "qwen2_vl",
        text=dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                  rope_parameters=_MROPE2),
        vision=dict(_QWEN2_VISION, hidden_size=1536), tie_word_embeddings=True, image_processor=_QWEN2_IMAGES),
    KnownCheckpoint(
        "Qwen/Qwen2-VL-7B-Instruct", "qwen2_vl",
        text=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                  num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                  rope_parameters=_MROPE2),
        vision=dict(_QWEN2_VISION, hidden_size=3584), tie_word_embeddings=False, image_processor=_QWEN2_IMAGES),
    KnownCheckpoint(
        "Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5_vl",
        text=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                  num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000,
                  rope_parameters=_MROPE2),
        vision=dict(_QWEN25_VISION, out_hidden_size=2048), tie_word_embeddings=True, image_processor=_QWEN2_IMAGES),
    KnownCheckpoint(
        "Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl",
        text=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                  num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
                  rope_parameters=_MROPE2),
        vision=dict(_QWEN25_VISION, out_hidden_size=3584), tie_word_embeddings=False, image_processor=_QWEN2_IMAGES),
    KnownCheckpoint(
        "Qwen/Qwen3-VL-2B-Instruct", "qwen3_vl",
        text=dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
                  rope_parameters=_MROPE3),
        vision=dict(_QWEN3_VISION_SMALL, out_hidden_size=2048), tie_word_embeddings=True,
        image_processor=_QWEN3_IMAGES),
    KnownCheckpoint(
        "Qwen/Qwen3-VL-4B-Instruct", "qwen3_vl",
        text=dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                  num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
                  rope_parameters=_MROPE3),
        vision=dict(_QWEN3_VISION_SMALL, out_hidden_size=2560), tie_word_embeddings=True,
        image_processor=_QWEN3_IMAGES),
    KnownCheckpoint(
        "Qwen/Qwen3-VL-8B-Instruct", "qwen3_vl",
        text=dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                  num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
                  rope_parameters=_MROPE3),
        vision=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, in_channels=3, patch_size=16,
                    spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                    deepstack_visual_indexes=[8, 16, 24], hidden_act="gelu_pytorch_tanh", out_hidden_size=4096),
        tie_word_embeddings=False, image_processor=_QWEN3_IMAGES),
]}


def known_checkpoint(name: str) -> KnownCheckpoint:
    """The release of hub id `name` (`qwen/qwen2-vl-2b-instruct` too: the Hub matches repo ids in any case) or of
    its short name (`Qwen2-VL-2B-Instruct`, in any case)."""
    lowered = {k.lower(): v for k, v in KNOWN_CHECKPOINTS.items()}
    short = {k.split("/")[-1].lower(): v for k, v in KNOWN_CHECKPOINTS.items()}
    for names in (lowered, short):
        if name.lower() in names:
            return names[name.lower()]
    raise UnimeError(f"unknown checkpoint {name!r}; known: {', '.join(KNOWN_CHECKPOINTS)}")


def family_checkpoint(family: str) -> KnownCheckpoint:
    """The first known release of `family` (config.model_type): what the family's releases share (their image
    normalisation, the Qwen2.5-VL vision's tokens_per_second), which the tiny model of the family copies."""
    for ckpt in KNOWN_CHECKPOINTS.values():
        if ckpt.family == family:
            return ckpt
    raise UnimeError(f"no known checkpoint of the family {family!r}")


def meta_model(name_or_config):
    """The real `*ForConditionalGeneration` of a known checkpoint (or a config) on the meta device:
    every parameter has its real shape and takes no memory."""
    import torch
    from transformers import AutoModelForImageTextToText

    config = name_or_config.config() if isinstance(name_or_config, KnownCheckpoint) else (
        known_checkpoint(name_or_config).config() if isinstance(name_or_config, str) else name_or_config)
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config)
