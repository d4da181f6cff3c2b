"""The base's optional tagging stage (`PretrainRecipe.tag_steps`, `unime.demo.vision_tagging`): the tags,
the pooled features, what the stage trains (the vision side only), the cache key, determinism."""

from __future__ import annotations

import pytest
import torch

from unime.data.synth import World
from unime.data.synth.scenes import Scene, SceneObject
from unime.demo.pretrain import PretrainRecipe, corpus_scenes, scene_signature
from unime.demo.vision_tagging import pooled_image_features, scene_tags, tag_targets, train_tagger

from tests.pretrain_stage_runs import stage_on_twice_and_off, weights_hash


def test_scene_tags_name_the_background_the_count_and_every_attribute_value():
    scene = Scene(id="s", background="gray", objects=(SceneObject("star", "red", "small", "left"),
                                                       SceneObject("star", "blue", "large", "top")))
    assert scene_tags(scene) == ["background:gray", "colour:blue", "colour:red", "count:2", "position:left",
                                 "position:top", "shape:star", "size:large", "size:small"]


def test_tag_targets_are_multi_hot_rows_over_the_sorted_vocabulary():
    vocab, y = tag_targets([["b", "a"], ["c"], []])
    assert vocab == ["a", "b", "c"]
    assert y.tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]


def test_corpus_scenes_are_the_training_scenes_not_excluded(tiny_world_dir):
    root = tiny_world_dir(3)
    train = [s for s in World.load(root).scenes.values() if s.split == "train"]
    sig = scene_signature(train[0])
    assert [s.id for s in corpus_scenes(root, {sig})] == [s.id for s in train if scene_signature(s) != sig]
    assert len(corpus_scenes(root, set())) == len(train)


def test_pooled_features_are_the_mean_and_max_of_each_images_merged_tokens(tiny_model_dir):
    """Against the vision tower called directly and split by hand (merged tokens = grid / merge²)."""
    from PIL import Image

    from unime.models.loading import load_model

    loaded = load_model(tiny_model_dir("qwen2_vl"))
    images = [Image.new("RGB", (56, 56), (200, 10, 10)), Image.new("RGB", (112, 56), (10, 10, 200))]
    px = loaded.processor.image_processor(images=images, return_tensors="pt")
    with torch.no_grad():
        got = pooled_image_features(loaded.model, px["pixel_values"], px["image_grid_thw"])
        tokens = loaded.model.model.visual(px["pixel_values"], grid_thw=px["image_grid_thw"]).pooler_output
    n0 = int(px["image_grid_thw"][0].prod()) // 4  # 56x56 px = 4x4 patches of 14 = 2x2 merged tokens
    assert n0 == 4 and tokens.shape[0] == n0 + 8
    first, second = tokens[:n0], tokens[n0:]
    want = torch.stack([torch.cat([first.mean(0), first.amax(0)]), torch.cat([second.mean(0), second.amax(0)])])
    torch.testing.assert_close(got, want)


def test_the_tagger_trains_the_vision_side_only_and_is_deterministic(tiny_world_dir, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    root = tiny_world_dir(3)
    rows = [(s.image, scene_tags(s)) for s in corpus_scenes(root, set())]
    model = tiny_model_dir("qwen2_vl")
    kw = dict(steps=3, batch_size=4, lr=1e-2, seed=0, device="cpu", progress=lambda m: None)
    metrics = train_tagger(model, root, rows, tmp_path / "a", **kw)
    train_tagger(model, root, rows, tmp_path / "b", **kw)
    assert weights_hash(tmp_path / "a") == weights_hash(tmp_path / "b")  # one thread, as in conftest
    assert metrics["steps"] == 3 and metrics["scenes"] == len(rows) and metrics["first_loss"] > 0
    from pathlib import Path

    before = load_file(str(Path(model) / "model.safetensors"))
    after = load_file(str(tmp_path / "a" / "model.safetensors"))
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".visual." in k or k.startswith("visual.") for k in changed), sorted(changed)[:5]
    assert any("merger" in k for k in changed)  # the tokens the language model reads are trained too
    assert (tmp_path / "a" / "tokenizer.json").is_file()  # the processor travels with the model


def test_tag_fields_enter_the_key_only_with_a_tagging_stage():
    base = PretrainRecipe.preset("default")
    assert base.tag_steps == 0
    assert base.replace(tag_lr=5e-3, tag_batch_size=2).key() == base.key()  # off: caches stay valid
    on = base.replace(tag_steps=10)
    keys = {base.key(), on.key(), on.replace(tag_lr=5e-3).key(), on.replace(tag_batch_size=2).key(),
            on.replace(tag_steps=11).key()}
    assert len(keys) == 5


@pytest.mark.slow
def test_tagging_stage_is_deterministic_and_changes_the_base(tmp_path):
    first, plain = stage_on_twice_and_off(tmp_path, tag_steps=3, tag_batch_size=4)
    t = first.manifest["tagging"]
    assert t["steps"] == 3 and t["scenes"] > 0 and t["tags"] > 10
    assert plain.manifest["tagging"] is None
