"""Shared by the trainer tests (and the end-to-end kill tests): a hand-built reranker world and the embedder
trainer's test configuration."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from tests.conftest import HARD_NEGATIVES as K  # hard negatives per query in these tests

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 220, 20)}


def write_world(root, *, scores: bool = True) -> str:
    """Four records: a text query, its colour swatch as positive, the other swatches as negatives."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name, rgb in COLOURS.items():
        Image.new("RGB", (56, 56), rgb).save(root / "images" / f"{name}.png")
    lines = []
    for i, name in enumerate(COLOURS):
        negs = [n for n in COLOURS if n != name]
        rec = {"id": f"r{i}", "query": {"text": f"a {name} square"},
               "positive": {"text": f"{name}", "images": [f"images/{name}.png"]},
               "negatives": [{"text": n, "images": [f"images/{n}.png"]} for n in negs]}
        if scores:
            rec["negative_scores"] = [0.1, 0.3, 0.2]
            rec["positive_score"] = 0.9
        lines.append(json.dumps(rec))
    path = root / "records.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def base_config(model_dir: str, out: Path, world_dir: Path, **overrides):
    from unime.train.embedder_trainer import EmbedderTrainingConfig

    cfg = dict(model=model_dir, out=str(out), data_root=str(world_dir), hard_negatives=K, batch_size=4, steps=8,
               lr=2e-3, warmup=0, lora_r=8, lora_alpha=16, lora_dropout=0.0, logging_steps=1, save_steps=1000,
               device="cpu", seed=0)
    cfg.update(overrides)
    return EmbedderTrainingConfig(**cfg)


def count_checkpointed_layers(monkeypatch):
    """{layer class name: calls} of the activation checkpoints transformers takes (its `checkpoint`, wrapped), as a
    Counter filled while the test runs."""
    import collections

    import transformers.modeling_utils as modeling_utils

    calls = collections.Counter()
    real = modeling_utils.checkpoint

    def counting(function, *args, **kwargs):
        layer = function.args[0]  # transformers hands over partial(Layer.forward, layer, **kwargs)
        calls[type(layer).__name__] += 1
        return real(function, *args, **kwargs)

    monkeypatch.setattr(modeling_utils, "checkpoint", counting)
    return calls


def count_vision_mlp_runs(monkeypatch) -> list:
    """A list that grows by one per run of a Qwen2-VL vision block's MLP: a checkpointed block the backward pass goes
    through is recomputed, so its MLP runs twice per step instead of once."""
    from transformers.models.qwen2_vl import modeling_qwen2_vl

    runs: list = []
    mlp = modeling_qwen2_vl.VisionMlp
    monkeypatch.setattr(mlp, "forward", lambda self, *a, _f=mlp.forward, **k: runs.append(1) or _f(self, *a, **k))
    return runs


def trainer_argv(trainer: str, tmp_path, tiny_model_dir) -> list[str]:
    """The command line of a short CPU run of `trainer` (embedder, reranker, judge, reasoner sft, reasoner grpo) on
    data written under `tmp_path`, without --out."""
    from tests.embed_rl.helpers import write_image_world

    model = tiny_model_dir("qwen2_vl")
    if trainer in ("embedder", "reranker", "judge"):
        records = write_world(tmp_path / "data")
        return ["train", trainer, "--model", model, "--records", records, "--device", "cpu", "--steps", "2"]
    world = tmp_path / "rl"
    world.mkdir()
    write_image_world(world)
    if trainer == "reasoner sft":
        return ["train", "reasoner", "--stage", "sft", "--model", model, "--tcots", str(world / "tcots.jsonl"),
                "--max-steps", "1", "--device", "cpu"]
    embedder = tiny_model_dir("qwen2_vl", ("<emb>",))  # GRPO's frozen embedder pools at <emb>
    return ["train", "reasoner", "--stage", "grpo", "--model", model, "--embedder", embedder, "--records",
            str(world / "records.jsonl"), "--max-steps", "1", "--num-generations", "2", "--device", "cpu"]


def assert_same_weights_and_vision_trained(on: dict, off: dict, model_dir: str, mode: str) -> None:
    """The weights of a run with --gradient-checkpointing (`on`) are those of the run without it (`off`), and the
    vision tower's trained tensors moved: every LoRA B of it (mode "lora_vision"; B starts at 0), else most of its
    tensors from the base model's in `model_dir` (full fine-tuning), or none of them (mode "full_freeze_vision")."""
    import torch
    from safetensors.torch import load_file

    assert on.keys() == off.keys()
    for key in off:
        torch.testing.assert_close(on[key], off[key], rtol=1e-5, atol=1e-6)
    vision = [k for k in off if ".visual." in k or k.startswith("visual.")]
    if mode == "lora_vision":
        vision_b = [k for k in vision if "lora_B" in k]
        assert vision_b and all(off[k].abs().max() > 0 for k in vision_b)
        return
    base = load_file(Path(model_dir) / "model.safetensors")
    moved = [not torch.equal(off[k], base[k]) for k in vision]
    assert moved and (not any(moved) if mode == "full_freeze_vision" else sum(moved) > len(moved) // 2)


def trained_run(out, mode: str, calls, vision_runs) -> tuple:
    """What a run into `out` left for the checkpointing comparisons: ({layer class: checkpoints}, vision MLP runs,
    its weights — OUT/merged's with full fine-tuning (mode "full..."), else OUT/adapter's — and its logged losses)."""
    from safetensors.torch import load_file

    from unime.models.curves import read_curves_csv

    out = Path(out)
    weights = out / "merged" / "model.safetensors" if mode.startswith("full") else \
        out / "adapter" / "adapter_model.safetensors"
    return (dict(calls), len(vision_runs), load_file(weights),
            [r["loss"] for r in read_curves_csv(out / "curves.csv") if "loss" in r])
