"""The final export of every trainer (`unime.models.export.export_final`) on tiny models."""

import json
from pathlib import Path

import pytest
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


def _constant_update_model(base: str, delta: float):
    """A bf16 model whose every adapted weight is 1.0 and whose LoRA update is `delta` in every entry (r 4, alpha
    8: ΔW = 2 · B·A = 2 · 4 · 1 · delta / 8)."""
    from peft.tuners.lora import LoraLayer

    model, processor = _lora_model(base, dtype=torch.bfloat16)
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    with torch.no_grad():
        for layer in layers:
            layer.get_base_layer().weight.fill_(1.0)
            layer.lora_A["default"].weight.fill_(1.0)
            layer.lora_B["default"].weight.fill_(delta / 8)
    return model, processor, len(layers)


def test_merge_reports_the_share_of_the_update_lost_to_rounding(tiny_model_dir, tmp_path, caplog):
    """Next to 1.0, bf16 holds 1 and 1 + 2^-7 only: an update of 1e-3 rounds away entirely (loss 1), one of
    0.75 · 2^-7 rounds up to 2^-7 (error 0.25 · 2^-7: loss 1/3), and merged in fp32 nothing is lost (0)."""
    base = tiny_model_dir("qwen2_vl")
    for delta, choice, loss in ((1e-3, "auto", 1.0), (0.75 * 2 ** -7, "bf16", 1 / 3), (1e-3, "fp32", 0.0)):
        model, processor, n = _constant_update_model(base, delta)
        out = tmp_path / f"{choice}-{delta}"
        caplog.clear()
        with caplog.at_level("INFO", logger="unime.models.export"):
            export_final(model, processor, out, card=_card(), base_model=base, merged_dtype=choice)
        lost = json.loads((out / "merged" / "unime_merge.json").read_text())["LoRA update lost to rounding"]
        assert lost["modules"] == n == 14  # q k v o gate up down, 2 layers
        for key in ("overall", "median", "max"):
            assert abs(lost[key] - loss) < 1e-6, (choice, key, lost)
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        if loss > 0.1:
            assert len(warned) == 1 and f"lost {100 * loss:.0f}% of the trained LoRA update" in warned[0]
            assert "OUT/adapter" in warned[0] and "--merged-dtype fp32" in warned[0]
        else:
            assert warned == []
        weights = _saved_weights(out / "merged")
        q = weights["model.layers.0.self_attn.q_proj.weight"].float()
        expected = {1.0: 1.0, 1 / 3: 1 + 2 ** -7, 0.0: 1 + 1e-3}[loss]
        assert torch.allclose(q, torch.full_like(q, expected), rtol=0, atol=1e-7)
        assert f"rounding lost {100 * loss:.1f}% of the LoRA update's norm" in caplog.text
        assert "| LoRA update lost to rounding | modules: 14," in (out / "README.md").read_text()


def test_an_export_after_a_left_padded_call_loads_with_the_processors_own_padding_side(tiny_model_dir, tmp_path):
    """QA: the GRPO output loaded left-padded. A fast tokenizer's backend keeps the padding of its last padded call
    (a reranker's or generator's `padding_side="left"`) and `save_pretrained` writes it into tokenizer.json, where
    transformers reads the padding side from at load. The export writes the tokenizer's own side and leaves the
    backend as it was."""
    from transformers import AutoTokenizer

    base = tiny_model_dir("qwen2_vl")
    model, processor = _lora_model(base)
    processor(text=["a", "a b c"], padding=True, padding_side="left", return_tensors="pt")
    backend = processor.tokenizer._tokenizer
    assert backend.padding["direction"] == "left" and processor.tokenizer.padding_side == "right"
    export_final(model, processor, tmp_path / "out", card=_card(), base_model=base)
    for folder in ("adapter", "merged"):
        assert AutoTokenizer.from_pretrained(tmp_path / "out" / folder).padding_side == "right"
    assert backend.padding["direction"] == "left"  # the processor in memory as it was


def test_the_checkpoint_dtype_of_a_qwen3_vl_release_is_the_one_its_text_config_records(tmp_path, monkeypatch):
    """QA (a Qwen3-VL-2B-Instruct download): its config.json records "dtype": "bfloat16" in text_config only, none at
    the top. The base checkpoint's dtype was None (so `--merged-dtype base` warned and wrote fp32, twice the size),
    and reading the deprecated `torch_dtype` for it logged transformers' deprecation warning."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    from tests.models.helpers import qwen3_vl_release_checkpoint
    from unime.models.export import checkpoint_dtype

    config = AutoConfig.from_pretrained(qwen3_vl_release_checkpoint(tmp_path / "release", weights=False))
    assert config.dtype is None and config.text_config.dtype == torch.bfloat16  # as a download has it
    warned = []
    logger = hf_logging.get_logger("transformers.configuration_utils")
    logger.warning_once.cache_clear()  # transformers warns once per process
    monkeypatch.setattr(logger, "warning", lambda msg, *args, **kwargs: warned.append(msg))
    assert checkpoint_dtype(config) == torch.bfloat16
    assert warned == []
    # a config that records one at the top keeps it (the text_config's is not read over it)
    config.dtype = torch.float16
    assert checkpoint_dtype(config) == torch.float16


@pytest.mark.slow
def test_merged_dtype_base_of_a_qwen3_vl_release_writes_its_bf16(tmp_path, caplog):
    """The export of a LoRA trained in fp32 on a Qwen3-VL-2B-Instruct-shaped download (bf16 weights, the dtype in
    text_config only): `base` writes merged/ in bf16 with no "records no dtype" warning, `auto` the fp32 trained in,
    and the card names the base's bf16."""
    from tests.models.helpers import qwen3_vl_release_checkpoint

    base = qwen3_vl_release_checkpoint(tmp_path / "release")
    for choice, dtype in (("base", torch.bfloat16), ("auto", torch.float32)):
        model, processor = _lora_model(base, dtype=torch.float32)
        out = tmp_path / choice
        caplog.clear()
        with caplog.at_level("WARNING", logger="unime.models.export"):
            export_final(model, processor, out, card=_card(), base_model=base, merged_dtype=choice)
        assert {t.dtype for t in _saved_weights(out / "merged").values()} == {dtype}
        assert [r.getMessage() for r in caplog.records if r.name == "unime.models.export"] == []
        assert ("| base checkpoint dtype | bfloat16" in (out / "README.md").read_text()) == (dtype == torch.float32)


def test_the_model_card_names_the_recipe_the_output_folders_marker_records(tiny_model_dir, tmp_path):
    """A trained folder found months later says which recipe made it: the card of a run with --recipe names it (the
    output folder's marker records it, `unime.cli._claim_output`); a run without one gets no such line."""
    base = tiny_model_dir("qwen2_vl")
    for name, recipe in (("with", "unime-v2/qwen2-vl-2b"), ("without", None)):
        out = tmp_path / name
        out.mkdir()
        (out / ".unime-output.json").write_text(json.dumps({
            "command": "train embedder", "preexisting": [], "overwrite": False,
            "provenance": {"recipe": recipe, "config": None, "sources": {"out": "command line"}}}))
        model, processor = _lora_model(base)
        export_final(model, processor, out, card=_card(), base_model=base)
        for card in (out / "README.md", out / "adapter" / "README.md", out / "merged" / "README.md"):
            lines = [line for line in card.read_text().splitlines() if "recipe" in line.lower()]
            assert lines == (["- Recipe: `unime-v2/qwen2-vl-2b` (`--recipe`; its values and their sources: "
                              "docs/RECIPES.md)"] if recipe else []), (name, card)
