"""The final export of every trainer (`unime.models.export.export_final`) on tiny models."""

import json
from pathlib import Path

import torch

from unime.models.export import ModelCard, export_final
from unime.models.lora import LoraSettings, apply_lora


def _card() -> ModelCard:
    return ModelCard(title="t", base_model="b", summary="s", usage="u")


def _lora_model(base: str, dtype=torch.float32):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(base, dtype=dtype)
    torch.manual_seed(0)
    return apply_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0), task_type="CAUSAL_LM"), \
        AutoProcessor.from_pretrained(base)


def test_merged_config_gets_the_base_use_cache_back_after_the_trainer_turned_it_off(tiny_model_dir, tmp_path):
    """The HF Trainer sets `config.use_cache = False` for training; a generative checkpoint (judge, reranker,
    reasoner) exported with it ran `generate` without its KV cache. The export restores the base's config."""
    base = tiny_model_dir("qwen2_vl")
    model, processor = _lora_model(base)
    model.config.use_cache = False  # as transformers' Trainer does at init (TrainingArguments.use_cache)
    model.config.text_config.use_cache = False
    export_final(model, processor, tmp_path / "out", card=_card(), base_model=base)
    saved = json.loads((tmp_path / "out" / "merged" / "config.json").read_text())
    base_saved = json.loads((Path(base) / "config.json").read_text())
    assert saved.get("use_cache") == base_saved.get("use_cache")  # absent in both: the library default
    assert saved["text_config"]["use_cache"] is True == base_saved["text_config"]["use_cache"]


def _bf16_checkpoint(tiny: str, folder: Path) -> str:
    """The tiny model saved in bf16 (as real checkpoints are): config.json records "dtype": "bfloat16"."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    AutoModelForImageTextToText.from_pretrained(tiny, dtype=torch.bfloat16).save_pretrained(folder)
    AutoProcessor.from_pretrained(tiny).save_pretrained(folder)
    return str(folder)


def _saved_weights(folder: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_merged_dtype_auto_keeps_the_trained_dtype_and_says_it_differs_from_the_base(tiny_model_dir, tmp_path):
    """CPU training of a bf16 checkpoint runs in fp32: `auto` (as before) writes merged/ in fp32, twice the
    base's size, and the card says so; `base` writes the base checkpoint's bf16."""
    base = _bf16_checkpoint(tiny_model_dir("qwen2_vl"), tmp_path / "base")
    for choice, dtype, name in (("auto", torch.float32, "float32"), ("base", torch.bfloat16, "bfloat16"),
                                ("bf16", torch.bfloat16, "bfloat16"), ("fp32", torch.float32, "float32")):
        model, processor = _lora_model(base, dtype=torch.float32)  # trained in fp32
        out = tmp_path / choice
        export_final(model, processor, out, card=_card(), base_model=base, merged_dtype=choice)
        weights = _saved_weights(out / "merged")
        assert {t.dtype for t in weights.values()} == {dtype}
        assert json.loads((out / "merged" / "config.json").read_text())["dtype"] == name
        size = sum(t.numel() for t in weights.values()) * (4 if dtype == torch.float32 else 2)
        card = (out / "README.md").read_text()
        assert f"| dtype | {name} |\n" in card and f"| bytes | {size} |\n" in card
        assert ("| base checkpoint dtype | bfloat16" in card) == (dtype == torch.float32)
        assert card == (out / "merged" / "README.md").read_text()
