"""PEFT adapters saved in the key layout of transformers 4 (VLM2Vec's training, older unime, most adapters on the hub)
load on transformers 5's classes; an adapter whose keys fit no module is refused, never run as the untrained base."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from unime.errors import ModelError


def _trained_adapter(base: str, folder) -> None:
    """A DoRA adapter on the language model's and the vision tower's attention, with lora_B drawn at random (as a
    trained adapter's is, where a fresh one is zero and changes nothing), saved by peft in the model's layout."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=r".*\.(q_proj|v_proj|qkv)", use_dora=True)
    peft_model = get_peft_model(model, config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    peft_model.save_pretrained(folder)


def _rewritten(folder, out, rename) -> str:
    """A copy of the adapter `folder` whose weight keys are `rename(key)`."""
    from safetensors.torch import load_file, save_file

    out.mkdir()
    shutil.copy(folder / "adapter_config.json", out / "adapter_config.json")
    weights = load_file(str(folder / "adapter_model.safetensors"))
    save_file({rename(k): v for k, v in weights.items()}, str(out / "adapter_model.safetensors"))
    return str(out)


def _transformers_4_layout(key: str) -> str:
    """A key as transformers 4's Qwen2-VL classes named it: the decoder at model., the vision tower at visual."""
    return key.replace("base_model.model.model.language_model.", "base_model.model.model.") \
              .replace("base_model.model.model.visual.", "base_model.model.visual.")


def _items():
    return [{"text": "a red circle"}, {"text": "<|image_1|>\nRepresent the given image",
                                       "image": Image.new("RGB", (64, 56), (200, 10, 10))}]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_an_adapter_in_the_transformers_4_layout_gives_the_embeddings_of_the_same_adapter_in_the_current(
        tiny_model_dir, family, tmp_path):
    """peft only warned "Found missing adapter keys" and the model ran as its base: embeddings identical to the
    base's. The keys are renamed by transformers' own conversion of the class's checkpoints."""
    from safetensors import safe_open

    from unime import Embedder

    base = tiny_model_dir(family)
    _trained_adapter(base, tmp_path / "current")
    old = _rewritten(tmp_path / "current", tmp_path / "old", _transformers_4_layout)
    with safe_open(f"{old}/adapter_model.safetensors", "pt") as f:  # both parts of the model in the old layout
        assert {"base_model.model.visual.blocks.0.attn.qkv.lora_A.weight",
                "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"} <= set(f.keys())
    current = Embedder.from_pretrained(str(tmp_path / "current"), device="cpu").encode(_items())
    as_base = Embedder.from_pretrained(base, device="cpu").encode(_items())
    assert np.abs(current - as_base).max(axis=1).min() > 1e-3  # the adapter changes text and image embeddings
    np.testing.assert_allclose(Embedder.from_pretrained(old, device="cpu").encode(_items()), current, atol=1e-6)


def test_an_adapter_whose_keys_match_no_module_is_refused_naming_them(tiny_model_dir, tmp_path):
    """12 of 15: the tiny model's 2 decoder layers x (q_proj, v_proj) x (lora_A, lora_B, DoRA magnitude); its vision
    block's qkv (3 weights) still matches."""
    from unime.models.loading import load_model

    base = tiny_model_dir("qwen2_vl")
    _trained_adapter(base, tmp_path / "current")
    unknown = _rewritten(tmp_path / "current", tmp_path / "unknown",
                         lambda k: k.replace(".language_model.", ".decoder."))
    with pytest.raises(ModelError, match=rf"adapter '{unknown}' does not fit Qwen2VLForConditionalGeneration: 12 of "
                       r"the 15 adapter weights .* its keys that match no module: "
                       r"base_model\.model\.model\.decoder\.layers\.0\.self_attn\.q_proj\.lora_A\.weight, "):
        load_model(unknown, device="cpu")


def test_an_adapter_folder_without_its_weights_file_is_a_model_error_naming_it(tiny_model_dir, tmp_path):
    """QA: `reason generate --model A`, A a LoRA adapter folder (a trainer's OUT/adapter) whose
    adapter_model.safetensors was deleted, said only "Cannot find the requested files in the disk cache and outgoing
    traffic has been disabled": peft looked for the file on the hub. Refused naming the adapter and the file,
    before the base model's weights load."""
    from transformers import AutoModelForImageTextToText

    from unime.models.loading import load_model

    _trained_adapter(tiny_model_dir("qwen2_5_vl"), tmp_path / "adapter")
    (tmp_path / "adapter" / "adapter_model.safetensors").unlink()
    loads = []
    real = AutoModelForImageTextToText.from_pretrained.__func__
    import unittest.mock

    with unittest.mock.patch.object(AutoModelForImageTextToText, "from_pretrained",
                                    classmethod(lambda cls, *a, **k: loads.append(a) or real(cls, *a, **k))):
        with pytest.raises(ModelError, match=rf"^adapter '{tmp_path / 'adapter'}': the folder holds no adapter weights "
                                             r"\(no adapter_model\.safetensors or adapter_model\.bin\)"):
            load_model(tmp_path / "adapter", device="cpu")
    assert loads == []
