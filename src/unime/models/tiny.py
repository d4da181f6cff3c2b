"""Local factory of tiny models of the real Qwen-VL architectures (`unime models build-tiny`).

No weights can be downloaded on an offline machine, so the embedded default is a *tiny* model of the
real Hugging Face class (e.g. `Qwen2VLForConditionalGeneration` built from a small config), with a
byte-level BPE tokenizer trained locally on the demo world's language plus the family's special
tokens, the family's own image/video processors with small pixel bounds, and the family's chat
template. The result is an ordinary HF folder: `AutoProcessor.from_pretrained(DIR)` and
`AutoModelForImageTextToText.from_pretrained(DIR)` load it offline, and every other part of unime
treats it exactly as it treats `Qwen/Qwen2-VL-2B-Instruct`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from unime.data import vocab
from unime.models import prompts
from unime.models.chat_templates import QWEN2_VL_CHAT_TEMPLATE, QWEN3_VL_CHAT_TEMPLATE
from unime.options import RangeChecked, option

# Special tokens shared by the Qwen-VL families (same strings as the released checkpoints).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# What `build_tiny` writes for a family, revised when that changes: a pretrained recipe's cache key includes it
# (`unime.demo.pretrain`), so that a base cached from an earlier build is not reused as if it were today's.
# Qwen2.5-VL: 1 = vision_config.tokens_per_second 2, as released (before: transformers' default);
# Qwen3-VL: 1 = images normalised with the release's mean / std 0.5 (before: CLIP's).
BUILD_REVISION = {"qwen2_5_vl": 1, "qwen3_vl": 1}


@dataclass(frozen=True)
class TinySize:
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 128
    vision_depth: int = 1
    vision_hidden: int = 32
    vision_heads: int = 2
    vocab: int = 1024
    # std of the random initialisation (HF's `initializer_range`, default 0.02). At this width 0.02 leaves
    # image and text signals too weak to reach the answer token of a randomly initialised judge; 0.1 made
    # single judge tasks learnable in a few hundred CPU steps (see the project notes).
    init_std: float = 0.02
    # pixel bounds of the image processor: 28*28*4 .. 28*28*64 → 4..64 merged image tokens (Qwen2)
    min_pixels: int = 28 * 28 * 4
    max_pixels: int = 28 * 28 * 64


FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def tokenizer_corpus() -> list[str]:
    """Sentences covering the demo world's words and every prompt unime writes."""
    words = list(vocab.SHAPES) + list(vocab.COLOURS) + list(vocab.SIZES) + list(vocab.POSITIONS)
    words += list(vocab.RELATIONS) + list(vocab.COUNT_WORDS) + list(vocab.BACKGROUNDS)
    lines = [
        prompts.JUDGE_INSTRUCTION, prompts.LISTWISE_INSTRUCTION, prompts.EMBED_SUMMARY_PROMPT,
        "You are a helpful assistant.", "Query: Candidate: Ans: (1) (2) (3) (4) (5) (6) (7) (8) (9) (10)",
        "Represent the given image with the following question: Represent the given text for retrieval",
        "Find an image that matches the given caption. Select the portion of the image that answers",
        "What is the colour of the shape? How many objects are in the image? Which object is on the",
        "The same scene with the circle blue. A photo of a small red circle on the left of a large star.",
        '<thinking>{"text_keywords": ["red", "circle"], "bbox_2d": [[10, 20, 300, 400]], '
        '"key_frames": [1, 2, 3]}</thinking><rethink>The query asks for a shape.</rethink><answer>circle</answer>',
        "0 1 2 3 4 5 6 7 8 9 10 100 1000 , . : ; ' \" ( ) [ ] { } ? ! - _ / \n",
    ]
    # frequent Yes / No so byte-level BPE merges them into single tokens
    lines += ["Yes", "No", "Yes No", "No Yes"] * 50
    lines += [" ".join(words)] * 20
    lines += vocab.world_sentences() * 5  # the demo world's instructions, captions and questions
    for c in vocab.COLOURS:
        for s in vocab.SHAPES:
            lines.append(f"a {c} {s}. The {c} {s} is small. A large {c} {s} on the left.")
    return lines


def read_corpus(path: str | os.PathLike) -> list[str]:
    """The non-empty lines of a text file (a tokenizer corpus: e.g. `data import`'s train/corpus.txt)."""
    from unime.errors import DataError

    p = Path(path)
    if not p.is_file():
        raise DataError("tokenizer corpus not found", source=str(p))
    lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise DataError("tokenizer corpus is empty", source=str(p))
    return lines


def build_tokenizer(extra_tokens: list[str] | None = None, vocab_size: int = 1024,
                    corpus: list[str] | None = None):
    """Train a byte-level BPE (Qwen2's pre-tokenizer regex) on the demo world's language and every prompt
    unime writes, plus `corpus` (the user's own text, e.g. their captions) when given."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(tokenizer_corpus() + list(corpus or []), trainer=trainer)
    bpe_vocab = tok.get_vocab()
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" "))
              for m in json.loads(tok.to_str())["model"]["merges"]]
    hf_tok = Qwen2Tokenizer(vocab=bpe_vocab, merges=merges, unk_token=None, bos_token=None,
                            eos_token="<|im_end|>", pad_token="<|endoftext|>")
    hf_tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS[1:] + list(extra_tokens or [])})
    hf_tok.add_tokens(["<|endoftext|>"], special_tokens=True)
    for word in (prompts.YES, prompts.NO):
        ids = hf_tok.encode(word, add_special_tokens=False)
        if len(ids) != 1:  # the corpus above makes this hold, unless the vocabulary is too small for its merges
            from unime.errors import ModelError

            raise ModelError(f"a tokenizer of at most {vocab_size} tokens splits {word!r} into {len(ids)} tokens; a "
                             "Yes/No judge needs single-token answers: give a larger vocabulary size (--vocab-size; "
                             "the default 1024 holds them)")
    return hf_tok


def _text_config(size: TinySize, vocab_size: int, family: str, special: dict[str, int]) -> dict:
    head_dim = size.hidden // size.heads
    half = head_dim // 2
    cfg = dict(vocab_size=vocab_size, hidden_size=size.hidden, intermediate_size=size.intermediate,
               num_hidden_layers=size.layers, num_attention_heads=size.heads,
               num_key_value_heads=size.kv_heads, max_position_embeddings=4096,
               bos_token_id=special["<|endoftext|>"], eos_token_id=special["<|im_end|>"],
               pad_token_id=special["<|endoftext|>"])
    if family == "qwen3_vl":
        # Qwen3-VL interleaves M-RoPE sections (released 2B: [24, 20, 20] of 64)
        t = half - 2 * (half * 5 // 16)
        cfg.update(head_dim=head_dim, rope_parameters={
            "rope_type": "default", "rope_theta": 5000000.0, "mrope_interleaved": True,
            "mrope_section": [t, half * 5 // 16, half * 5 // 16]})
    else:
        # Qwen2-VL's released sections are [16, 24, 24] of 64
        a = half // 4
        b = (half - a) // 2
        cfg.update(rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                    "mrope_section": [a, b, half - a - b]})
    return cfg


def load_tokenizer(path: str | os.PathLike, extra_tokens: list[str] | None = None):
    """An existing tokenizer folder (e.g. a real Qwen-VL checkpoint's), completed with the Qwen-VL special
    tokens the chat template and the processor need, and the extra tokens. Yes / No must stay single tokens
    (the judge reads their logits)."""
    from transformers import AutoTokenizer

    from unime.errors import ModelError

    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: not a tokenizer folder ({e})") from None
    vocab_now = tok.get_vocab()
    missing = [t for t in QWEN_SPECIAL_TOKENS + list(extra_tokens or []) if t not in vocab_now]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if tok.eos_token is None:
        tok.eos_token = "<|im_end|>"
    if tok.pad_token is None:
        tok.pad_token = "<|endoftext|>"
    for word in (prompts.YES, prompts.NO):
        if len(tok.encode(word, add_special_tokens=False)) != 1:
            raise ModelError(f"{path}: the tokenizer splits {word!r} into several tokens; a Yes/No judge needs "
                             "single-token answers")
    return tok


def check_tiny_shape(config) -> None:
    """OptionError naming the fields of `config` (`hidden`, `vision_hidden` and `vision_heads`, the last two None for
    their defaults, as `TinyBuildConfig.size` reads them) whose sizes the model cannot run with — it is built from
    them alone and fails only at its first forward, with a tensor-size error from the rotary embedding: the text's
    `TinySize.heads` heads each of an even size, the vision tower's heads a whole size divisible by 4."""
    from unime.errors import OptionError

    heads = TinySize.heads
    if config.hidden % (2 * heads):
        raise OptionError(config, "{hidden} must be a multiple of {step} ({heads} attention heads, each of an even "
                          "size for the rotary embedding), got {got}", step=2 * heads, heads=heads, got=config.hidden)
    width = config.vision_hidden or config.hidden
    vision_heads = config.vision_heads or max(width // 32, 1)
    if width % vision_heads or (width // vision_heads) % 4:
        width_name = "{vision_hidden}" if config.vision_hidden else "{hidden}"
        heads_name = "{vision_heads}" if config.vision_heads else "(the width // 32)"
        raise OptionError(config, f"the vision heads' size, {width_name} / {heads_name} = {{width}} / {{count}}, "
                          "must be a whole number divisible by 4 (the vision tower's rotary embedding)",
                          width=width, count=vision_heads)


@dataclass(kw_only=True)
class TinyBuildConfig(RangeChecked):
    """Options of `unime models build-tiny` (`unime.options`): `size()` is the model's `TinySize`."""

    family: str = option("qwen2_vl", "model family (architecture class and chat template)", choices=list(FAMILIES))
    out: str = option(help="output folder (an ordinary HF folder)")
    seed: int = option(0, "initialisation seed")
    hidden: int = option(TinySize.hidden, f"text hidden size (a multiple of {2 * TinySize.heads})", at_least=1)
    layers: int = option(TinySize.layers, "text decoder layers", at_least=1)
    vision_depth: int = option(TinySize.vision_depth, "vision encoder blocks", at_least=1)
    vision_hidden: int | None = option(None, "vision encoder width (default: the text hidden size; at 32 a tiny "
                                       "model never learns to use its images)", at_least=1)
    vision_heads: int | None = option(None, "vision attention heads (default: width / 32; width / heads a multiple "
                                      "of 4)", at_least=1)
    init_std: float = option(TinySize.init_std, "std of the random initialisation (HF initializer_range); 0.1 "
                             "trains a tiny judge faster", above=0)
    extra_tokens: list[str] = option(help="extra special token (repeatable), e.g. <emb>", factory=list,
                                     dest="extra_token", action="append", cli_default=[])
    tokenizer_corpus: str | None = option(None, "text file (one text per line, e.g. `data import`'s "
                                          "train/corpus.txt): the local BPE tokenizer is also trained on it, so your "
                                          "words become whole tokens", metavar="FILE", exclusive="tokenizer")
    tokenizer: str | None = option(None, "use an existing tokenizer folder (e.g. a real Qwen-VL checkpoint's) instead "
                                   "of training one", metavar="DIR", exclusive="tokenizer")
    # (below the 256 bytes of its alphabet a byte-level BPE has no fewer tokens; a few hundred more hold Yes / No)
    vocab_size: int = option(TinySize.vocab, "the most tokens of the locally trained tokenizer (BPE stops earlier "
                             "when its corpus has no more merges; default %(default)s)", at_least=256)

    def check_together(self) -> None:
        super().check_together()
        check_tiny_shape(self)

    def size(self) -> TinySize:
        vision_hidden = self.vision_hidden or self.hidden
        return TinySize(hidden=self.hidden, layers=self.layers, vision_depth=self.vision_depth,
                        vision_hidden=vision_hidden, vision_heads=self.vision_heads or max(vision_hidden // 32, 1),
                        intermediate=2 * self.hidden, init_std=self.init_std, vocab=self.vocab_size)


def build_tiny_model(cfg: TinyBuildConfig) -> Path:
    """`unime models build-tiny`: `build_tiny` with the config's size, tokens and tokenizer."""
    corpus = read_corpus(cfg.tokenizer_corpus) if cfg.tokenizer_corpus else None
    return build_tiny(cfg.family, cfg.out, seed=cfg.seed, size=cfg.size(), extra_tokens=cfg.extra_tokens,
                      tokenizer_corpus_lines=corpus, tokenizer_dir=cfg.tokenizer)


def build_tiny(family: str, out_dir: str | os.PathLike, *, seed: int = 0, size: TinySize = TinySize(),
               extra_tokens: list[str] | None = None, tokenizer_corpus_lines: list[str] | None = None,
               tokenizer_dir: str | os.PathLike | None = None) -> Path:
    """Build and save a tiny model of `family` to `out_dir` (written atomically). Returns the path.

    The tokenizer: trained locally on unime's prompts and the demo world's language, plus
    `tokenizer_corpus_lines` (the user's text) when given; or `tokenizer_dir`, an existing tokenizer."""
    import torch
    from transformers import AutoModelForImageTextToText

    from unime.models.known_checkpoints import family_checkpoint

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    out = Path(out_dir)
    if tokenizer_dir is not None:
        if tokenizer_corpus_lines:
            raise ValueError("give a tokenizer folder or a corpus to train one on, not both")
        tokenizer = load_tokenizer(tokenizer_dir, extra_tokens)
    else:
        tokenizer = build_tokenizer(extra_tokens, vocab_size=size.vocab, corpus=tokenizer_corpus_lines)
    special = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    vocab_size = len(tokenizer)
    text = _text_config(size, vocab_size, family, special)
    ids = dict(image_token_id=special["<|image_pad|>"], video_token_id=special["<|video_pad|>"],
               vision_start_token_id=special["<|vision_start|>"], vision_end_token_id=special["<|vision_end|>"])

    if family == "qwen2_vl":
        from transformers import Qwen2VLConfig, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

        vision = dict(depth=size.vision_depth, embed_dim=size.vision_hidden, hidden_size=size.hidden,
                      num_heads=size.vision_heads, mlp_ratio=2, patch_size=14, spatial_merge_size=2,
                      temporal_patch_size=2)
        config = Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
        patch = 14
        proc_cls, img_cls, vid_cls, template = (Qwen2VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor,
                                                QWEN2_VL_CHAT_TEMPLATE)
    elif family == "qwen2_5_vl":
        from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLProcessor, Qwen2VLImageProcessor,
                                  Qwen2VLVideoProcessor)

        vision = dict(depth=size.vision_depth, hidden_size=size.vision_hidden, intermediate_size=2 * size.vision_hidden,
                      num_heads=size.vision_heads, out_hidden_size=size.hidden, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                      fullatt_block_indexes=[size.vision_depth - 1],
                      # the releases' (transformers' default is 4): a video frame's M-RoPE time position
                      tokens_per_second=family_checkpoint(family).vision["tokens_per_second"])
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
        patch = 14
        proc_cls, img_cls, vid_cls, template = (Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor,
                                                QWEN2_VL_CHAT_TEMPLATE)
    else:
        from transformers import Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLProcessor, Qwen3VLVideoProcessor

        vision = dict(depth=size.vision_depth, hidden_size=size.vision_hidden, intermediate_size=2 * size.vision_hidden,
                      num_heads=size.vision_heads, out_hidden_size=size.hidden, patch_size=16,
                      spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                      deepstack_visual_indexes=[0])
        config = Qwen3VLConfig(text_config=text, vision_config=vision, **ids)
        patch = 16
        proc_cls, img_cls, vid_cls, template = (Qwen3VLProcessor, Qwen2VLImageProcessor, Qwen3VLVideoProcessor,
                                                QWEN3_VL_CHAT_TEMPLATE)

    scale = (patch * 2) ** 2 / (28 * 28)  # keep the same number of merged tokens per image across families
    pixel_bounds = {"shortest_edge": int(size.min_pixels * scale), "longest_edge": int(size.max_pixels * scale)}
    # normalised as the family's releases (Qwen3-VL: 0.5 / 0.5, not the image processor's default CLIP mean / std)
    image_processor = img_cls(size=pixel_bounds, patch_size=patch, merge_size=2, temporal_patch_size=2,
                              **family_checkpoint(family).image_normalisation)
    video_processor = vid_cls(size=pixel_bounds, patch_size=patch, merge_size=2, temporal_patch_size=2)
    processor = proc_cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                         chat_template=template)

    for cfg in (config, config.text_config, config.vision_config):
        cfg.initializer_range = size.init_std
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config.pad_token_id = special["<|endoftext|>"]
    model.generation_config.eos_token_id = [special["<|im_end|>"], special["<|endoftext|>"]]

    from unime.models.export import model_folder

    with model_folder(out) as tmp:  # the model's files replace those of the same name; the user's files stay
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return out
