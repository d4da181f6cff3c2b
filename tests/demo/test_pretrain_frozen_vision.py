"""The base recipe's `freeze_vision`: the captioning and contrastive stages leave the vision tower (and its
merger) as the tagging stage left it; the field enters the cache key only when on."""

from __future__ import annotations

import pytest
import torch

from unime.demo.pretrain import PretrainRecipe, pretrain


def _is_vision(name: str) -> bool:
    return ".visual." in name or name.startswith("visual.")


def test_freeze_vision_enters_the_key_only_when_on():
    base = PretrainRecipe.preset("default")
    assert base.freeze_vision is False
    assert base.replace(freeze_vision=False).key() == base.key() == "bb68263762bd4680"  # caches stay valid
    assert base.replace(freeze_vision=True).key() != base.key()


def test_the_captioner_with_a_frozen_tower_trains_the_language_side_only(tiny_world_dir, tiny_model_dir, tmp_path):
    from pathlib import Path

    from safetensors.torch import load_file

    from unime.demo.captioning import train_captioner
    from unime.demo.pretrain import corpus_captions

    root = tiny_world_dir(3)
    model = tiny_model_dir("qwen2_vl")
    metrics = train_captioner(model, root, corpus_captions(root, set())[:8], tmp_path / "c", steps=2, batch_size=4,
                              lr=1e-2, seed=0, device="cpu", freeze_vision=True, progress=lambda m: None)
    assert metrics["vision_frozen"] is True and metrics["steps"] == 2
    before = load_file(str(Path(model) / "model.safetensors"))
    after = load_file(str(tmp_path / "c" / "model.safetensors"))
    vision = [k for k in after if _is_vision(k)]
    assert vision and all(torch.equal(after[k], before[k]) for k in vision)
    assert any(not torch.equal(after[k], before[k]) for k in after if not _is_vision(k) and k in before)


@pytest.mark.slow
def test_with_a_frozen_tower_the_tagging_stage_alone_decides_the_vision_weights(tmp_path):
    """Two frozen-tower recipes that differ only after tagging (captioning and contrastive learning rates) end
    with equal vision weights and different language weights; the same recipe unfrozen moves the tower."""
    from safetensors.torch import load_file

    frozen = PretrainRecipe.preset("quick").replace(tag_steps=3, tag_batch_size=4, caption_steps=2,
                                                     caption_batch_size=4, freeze_vision=True)
    runs = {name: load_file(str(pretrain(recipe, out=tmp_path / name, progress=lambda m: None).model
                                / "model.safetensors"))
            for name, recipe in (("a", frozen), ("b", frozen.replace(caption_lr=5e-3, lr=5e-3)),
                                 ("open", frozen.replace(freeze_vision=False)))}
    a, b, opened = runs["a"], runs["b"], runs["open"]
    vision = [k for k in a if _is_vision(k)]
    assert vision and all(torch.equal(a[k], b[k]) for k in vision)
    assert any(not torch.equal(a[k], b[k]) for k in a if not _is_vision(k))
    assert any(not torch.equal(a[k], opened[k]) for k in vision)
