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
