"""One LoRA set-up for every fine-tuning stage (`unime.models.lora`): which modules each stage adapts, on tiny
models. Qwen2.5-VL is the family where it matters: its vision blocks' MLP is named like the decoder's
(gate_proj, up_proj, down_proj)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from unime.errors import UsageError
from unime.models.lora import EMBEDDER_LORA, GENERATIVE_LORA, LoraSettings, apply_lora, lora_config

DECODER = {f"model.language_model.layers.{i}.{proj}" for i in (0, 1)
           for proj in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
QWEN2_5_VL_VISION_MLP = {f"model.visual.blocks.0.mlp.{proj}" for proj in ("gate_proj", "up_proj", "down_proj")}


def adapted(peft_model) -> set[str]:
    """Names (relative to the base model) of the modules that carry a LoRA adapter."""
    return {n.split("base_model.model.", 1)[1].rsplit(".lora_A", 1)[0]
            for n, _ in peft_model.named_parameters() if ".lora_A" in n}


def load(path):
    return AutoModelForImageTextToText.from_pretrained(path)


def test_lora_targets_the_decoder_only_unless_asked(tiny_model_dir):
    """Qwen2.5-VL's vision MLP has gate/up/down_proj too: the default targets stay in the decoder."""
    path = tiny_model_dir("qwen2_5_vl")
    lora = apply_lora(AutoModelForImageTextToText.from_pretrained(path), LoraSettings(r=4, alpha=8, dropout=0.1))
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in lora.named_parameters() if ".lora_A" in n}
    assert adapted and all("language_model" in n for n in adapted)
    assert len(adapted) == 2 * 7  # 7 projections × 2 decoder layers
    assert all(not p.requires_grad for n, p in lora.named_parameters() if "lora_" not in n)
    both = apply_lora(AutoModelForImageTextToText.from_pretrained(path),
                      LoraSettings(r=4, alpha=8, dropout=0.1, vision=True))
    assert any("visual" in n and ".lora_A" in n for n, _ in both.named_parameters())
    # Qwen2-VL's vision blocks use other names: asking for vision LoRA with decoder names is an error
    q2 = tiny_model_dir("qwen2_vl")
    with pytest.raises(UsageError, match="no vision-tower module"):
        apply_lora(AutoModelForImageTextToText.from_pretrained(q2),
                   LoraSettings(r=4, alpha=8, dropout=0.1, vision=True))
    q2_vision = LoraSettings(r=4, alpha=8, dropout=0.1, vision=True, targets=("q_proj", "qkv", "fc1", "fc2"))
    adapted = [n for n, _ in apply_lora(AutoModelForImageTextToText.from_pretrained(q2), q2_vision).named_parameters()
               if ".lora_A" in n]
    assert any("visual" in n for n in adapted) and any("language_model" in n for n in adapted)
    with pytest.raises(UsageError, match="matched no module"):
        apply_lora(AutoModelForImageTextToText.from_pretrained(q2),
                   LoraSettings(EMBEDDER_LORA.r, EMBEDDER_LORA.alpha, EMBEDDER_LORA.dropout, targets=("nonexistent",)))
    with pytest.raises(UsageError, match="--lora-r must be >= 1, got 0"):  # QA: it read "matched no module"
        apply_lora(AutoModelForImageTextToText.from_pretrained(q2), LoraSettings(0, 8, 0.1))
    dora = apply_lora(AutoModelForImageTextToText.from_pretrained(path),
                      LoraSettings(r=4, alpha=8, dropout=0.1, dora=True))
    assert any("lora_magnitude_vector" in n for n, _ in dora.named_parameters())


def test_bare_module_names_reach_the_vision_blocks_of_qwen2_5_vl(tiny_model_dir):
    """What the reasoner's SFT and GRPO did before they used `LoraSettings`: PEFT given the bare names
    adapts the vision MLP too. The shared settings keep every generative stage in the language model."""
    from peft import LoraConfig, get_peft_model

    path = tiny_model_dir("qwen2_5_vl")
    bare = get_peft_model(load(path), LoraConfig(r=4, lora_alpha=8, target_modules=list(GENERATIVE_LORA.targets),
                                                 task_type="CAUSAL_LM"))
    assert adapted(bare) == DECODER | QWEN2_5_VL_VISION_MLP
    assert adapted(apply_lora(load(path), GENERATIVE_LORA, task_type="CAUSAL_LM")) == DECODER
    vision = LoraSettings(4, 8, 0.0, vision=True)
    assert adapted(apply_lora(load(path), vision, task_type="CAUSAL_LM")) == DECODER | QWEN2_5_VL_VISION_MLP


def test_modules_to_save_are_trained_in_full_beside_lora(tiny_model_dir):
    model = apply_lora(load(tiny_model_dir("qwen2_5_vl")), GENERATIVE_LORA, modules_to_save=("lm_head",),
                       task_type="CAUSAL_LM")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in trainable if "lora_" not in n} == {"base_model.model.lm_head.modules_to_save.default.weight"}
    assert adapted(model) == DECODER


@pytest.mark.parametrize("settings", [LoraSettings(r=4, alpha=8, dropout=0.0, targets=("q_proj", "v_proj")),
                                      LoraSettings(r=2, alpha=3, dropout=0.25, targets=("fc1", "qkv"), vision=True,
                                                   dora=True),
                                      LoraSettings(r=8, alpha=16, dropout=0.1, targets=("all-linear",))])
def test_the_settings_of_an_adapter_are_read_back_from_its_peft_config(settings):
    """`LoraSettings.from_peft_config` undoes `lora_config`: what an adapter unime made was trained with."""
    assert LoraSettings.from_peft_config(lora_config(settings).to_dict()) == settings


def test_another_tools_target_names_are_read_as_given():
    config = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["v_proj", "q_proj"]}
    assert LoraSettings.from_peft_config(config) == LoraSettings(r=8, alpha=16, dropout=0.05,
                                                                 targets=("q_proj", "v_proj"))


def test_stage_configs_read_the_settings_of_their_path():
    from unime.embed_rl.grpo import GRPOStageConfig
    from unime.embed_rl.reasoner_sft import ReasonerSFTConfig
    from unime.train.embedder_trainer import EmbedderTrainingConfig
    from unime.train.reranker_trainer import RerankerTrainConfig

    assert (EMBEDDER_LORA.r, EMBEDDER_LORA.alpha, EMBEDDER_LORA.dropout) == (16, 64, 0.1)
    assert (GENERATIVE_LORA.r, GENERATIVE_LORA.alpha, GENERATIVE_LORA.dropout) == (16, 32, 0.05)
    assert LoraSettings.from_options(EmbedderTrainingConfig(model="m", out="o", records="r")) == EMBEDDER_LORA
    assert LoraSettings.from_options(RerankerTrainConfig(model="m", records=["r"], out="o")) == GENERATIVE_LORA
    assert LoraSettings.from_options(ReasonerSFTConfig(model="m", data="d", out="o")) == GENERATIVE_LORA
    grpo = LoraSettings.from_options(GRPOStageConfig(model="m", embedder="e", records="r", out="o", lora_r=16))
    assert grpo == GENERATIVE_LORA
    cfg = lora_config(grpo, task_type="CAUSAL_LM")
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules) == (16, 32, 0.05, grpo.target_modules())


def test_reasoner_sft_with_lora_leaves_the_vision_tower_of_qwen2_5_vl_untouched(tiny_model_dir, tmp_path):
    """Two LoRA steps, merged: every vision weight is the base model's, the decoder's projections moved."""
    from unime.data.items import Item
    from unime.embed_rl.reasoner_sft import ReasonerSFTConfig, train_reasoner_sft
    from unime.reasoning.reasoner import TCoTRow, write_tcot_rows
    from unime.reasoning.tcot import render_tcot

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (64, 64), (220, 40, 40)).save(tmp_path / "imgs" / "red.png")
    tcot = render_tcot({"bbox_2d": [[100, 100, 600, 600]]}, "A red circle.", "red circle")
    write_tcot_rows([TCoTRow("r0", "target", Item(images=("imgs/red.png",)), tcot),
                     TCoTRow("r0", "query", Item(text="a red circle"), tcot)], tmp_path / "t.jsonl")
    base = tiny_model_dir("qwen2_5_vl")
    cfg = ReasonerSFTConfig(model=base, data=str(tmp_path / "t.jsonl"), out=str(tmp_path / "o"), max_steps=2,
                            lora_r=4, learning_rate=1e-2, device="cpu", logging_steps=1, batch_size=2)
    train_reasoner_sft(cfg)
    before, after = load(base).state_dict(), load(tmp_path / "o" / "merged").state_dict()  # every trainer's export
    vision = [k for k in before if ".visual." in k]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)
    q = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(before[q], after[q])


# The vision tower's linear layers of each family, by name (Qwen2.5-VL's MLP shares the decoder's names).
VISION_TARGETS = {"qwen2_vl": ("qkv", "proj", "fc1", "fc2"),
                  "qwen2_5_vl": ("qkv", "proj", "gate_proj", "up_proj", "down_proj"),
                  "qwen3_vl": ("qkv", "proj", "linear_fc1", "linear_fc2")}


def _stage_lora(trainer: str, model, **options):
    """`model` with the LoRA adapter the trainer's own code puts on it, for a config with `options`."""
    if trainer == "embedder":
        from unime.train.embedder_trainer import EmbedderTrainingConfig, lora_model

        return lora_model(model, EmbedderTrainingConfig(model="m", out="o", records="r", **options))
    if trainer == "reranker":
        from unime.train.reranker_trainer import RerankerTrainConfig, lora_model

        return lora_model(model, RerankerTrainConfig(model="m", records=["r"], out="o", **options))
    if trainer == "reasoner_sft":
        from unime.embed_rl.reasoner_sft import ReasonerSFTConfig, lora_model

        return lora_model(model, ReasonerSFTConfig(model="m", data="d", out="o", **options))
    from unime.embed_rl.grpo import GRPOStageConfig, lora_model

    return lora_model(model, GRPOStageConfig(model="m", embedder="e", records="r", out="o", lora_r=8, **options))


@pytest.mark.parametrize("family", sorted(VISION_TARGETS))
@pytest.mark.parametrize("trainer", ["embedder", "reranker", "reasoner_sft", "grpo"])
def test_every_trainer_adapts_the_language_model_only_unless_vision_is_asked(tiny_model_dir, family, trainer):
    """Per family and trainer, the modules that carry LoRA: the decoder's 7 projections × 2 layers, nothing
    under the vision tower (`model.visual`); with `lora_vision` and the family's vision names, the vision
    blocks too."""
    path = tiny_model_dir(family)
    names = adapted(_stage_lora(trainer, load(path)))
    assert names == DECODER, sorted(names ^ DECODER)
    vision = adapted(_stage_lora(trainer, load(path), lora_vision=True,
                                 lora_targets=GENERATIVE_LORA.targets + VISION_TARGETS[family]))
    assert vision > DECODER and {n for n in vision - DECODER if not n.startswith("model.visual.")} == set()
    assert {n.rsplit(".", 1)[1] for n in vision - DECODER} == set(VISION_TARGETS[family])


def test_every_trainer_refuses_full_fine_tuning_of_an_adapter_folder_in_its_validate(tmp_path):
    """The "merge it first" refusal is the configs' (`validate`, before a run writes in its folder), from the --model
    path alone: an adapter folder, or a run folder holding only its adapter/; a model folder (or a run folder with
    merged/) passes. Full fine-tuning only: with LoRA an adapter is trained on."""
    from unime.embed_rl.grpo import GRPOStageConfig
    from unime.embed_rl.reasoner_sft import ReasonerSFTConfig
    from unime.errors import ModelError
    from unime.train.embedder_config import EmbedderTrainingConfig
    from unime.train.reranker_trainer import RerankerTrainConfig

    (tmp_path / "run" / "adapter").mkdir(parents=True)
    (tmp_path / "run" / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    common = dict(out=str(tmp_path / "o"))
    configs = {  # (full, LoRA) of each trainer, given --model
        "embedder": lambda m, full: EmbedderTrainingConfig(model=m, records="r", full=full, loss="infonce",
                                                           hard_negatives=1, **common),
        "reranker": lambda m, full: RerankerTrainConfig(model=m, records=["r"], full=full, **common),
        "sft": lambda m, full: ReasonerSFTConfig(model=m, data="t", lora_r=0 if full else 4, **common),
        "grpo": lambda m, full: GRPOStageConfig(model=m, records="r", embedder="e", lora_r=0 if full else 4, **common),
    }
    for name, make in configs.items():
        flag = "--lora-r 0" if name in ("sft", "grpo") else "--full"
        for model in (tmp_path / "run", tmp_path / "run" / "adapter"):
            with pytest.raises(ModelError, match=rf"full fine-tuning \({flag}\) of the adapter folder {model}: merge"):
                make(str(model), True).validate()
            make(str(model), False).validate()
        make(str(tmp_path / "model"), True).validate()


@pytest.mark.parametrize("family", sorted(VISION_TARGETS))
@pytest.mark.parametrize("trainer", ["embedder", "reranker", "reasoner_sft", "grpo"])
def test_all_linear_adapts_the_language_model_only_unless_vision_is_asked(tiny_model_dir, family, trainer):
    """--lora-targets all-linear is every linear layer of the language model (the decoder's 7 projections x 2
    layers; not lm_head, as PEFT's all-linear); with --lora-vision, every linear layer of the vision tower too
    (QA: the vision blocks, merger and deepstack mergers were adapted without --lora-vision)."""
    path = tiny_model_dir(family)
    names = adapted(_stage_lora(trainer, load(path), lora_targets=("all-linear",)))
    assert names == DECODER, sorted(names ^ DECODER)
    vision_linears = {n for n, m in load(path).named_modules()
                      if n.startswith("model.visual.") and isinstance(m, torch.nn.Linear)}
    assert vision_linears
    both = adapted(_stage_lora(trainer, load(path), lora_targets=("all-linear",), lora_vision=True))
    assert both == DECODER | vision_linears, sorted(both ^ (DECODER | vision_linears))


@pytest.mark.parametrize("trainer", ["embedder", "reranker", "judge", "reasoner sft"])
def test_lora_vision_without_vision_targets_is_refused_before_the_model_loads(trainer, tmp_path, tiny_model_dir,
                                                                              capsys, monkeypatch):
    """--lora-vision with the default targets on Qwen2-VL (vision blocks: qkv, proj, fc1, fc2) adapts no vision
    module: refused from the folder's config.json, before the checkpoint loads (it was refused after a whole load),
    with the message `apply_lora` gives on the loaded model."""
    pytest.importorskip("trl")
    from tests.train.helpers import trainer_argv
    from unime.cli import main

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", no_load)
    out = tmp_path / "out"
    assert main([*trainer_argv(trainer, tmp_path, tiny_model_dir), "--out", str(out), "--lora-vision"]) == 2
    err = capsys.readouterr().err
    assert "--lora-vision: the targets ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', " \
           "'down_proj'] match no vision-tower module of Qwen2VLForConditionalGeneration" in err
    assert "the model was loaded" not in err
    assert not out.exists()


@pytest.mark.parametrize("family, targets, refused", [
    ("qwen2_vl", ("q_proj", "v_proj"), True), ("qwen2_vl", ("q_proj", "qkv"), False),
    ("qwen2_5_vl", ("gate_proj",), False), ("qwen3_vl", ("down_proj",), True),
    ("qwen3_vl", ("linear_fc1",), False), ("qwen2_vl", ("all-linear",), False)])
def test_the_check_before_loading_agrees_with_apply_lora(family, targets, refused, tiny_model_dir):
    """The check from config.json refuses exactly what `apply_lora` refuses on the loaded model, same message."""
    from unime.models.lora import refuse_lora_vision_without_vision_targets

    path = tiny_model_dir(family)
    settings = LoraSettings(r=4, alpha=8, dropout=0.0, targets=targets, vision=True)
    if not refused:
        refuse_lora_vision_without_vision_targets(path, settings)
        apply_lora(load(path), settings)
        return
    with pytest.raises(UsageError) as before:
        refuse_lora_vision_without_vision_targets(path, settings)
    with pytest.raises(UsageError) as after:
        apply_lora(load(path), settings)
    assert str(before.value) == str(after.value)
    assert "match no vision-tower module" in str(before.value)
