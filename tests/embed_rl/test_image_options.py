"""QA: the Embed-RL commands took no image-resolution options (`--max-pixels` / `--min-pixels` / `--image-size`),
although every command that reads images does. Each now takes them and they reach the model: with `--image-size
56` a 224×224 image is 2×2 = 4 merged visual tokens instead of 8×8 = 64 (the tiny Qwen2-VL processor: one token
per 28×28 pixels, its own bound 50176 px = 224×224; `tests/models/test_image_budget.py`), counted in the
`input_ids` the language model is run on."""

from __future__ import annotations

import json

import pytest

from tests.embed_rl.helpers import embed_rl_commands, write_image_world

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def image_world(tmp_path_factory):
    return write_image_world(tmp_path_factory.mktemp("image_options"))


@pytest.fixture
def visual_tokens(monkeypatch):
    """The image tokens in the `input_ids` of every run of the tiny Qwen2-VL language model, summed."""
    from transformers.models.qwen2_vl import modeling_qwen2_vl

    seen = [0]
    forward = modeling_qwen2_vl.Qwen2VLModel.forward

    def counting(self, input_ids=None, *args, **kwargs):
        if input_ids is not None:
            seen[0] += int((input_ids == self.config.image_token_id).sum())
        return forward(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(modeling_qwen2_vl.Qwen2VLModel, "forward", counting)
    return seen


@pytest.mark.parametrize("command", ["reason generate", "reason split", "reason eval", "train reasoner sft",
                                     "train reasoner grpo"])
def test_image_size_reaches_the_model_of_every_embed_rl_command(command, image_world, tiny_model_dir, visual_tokens,
                                                                 tmp_path):
    from unime.cli import main

    argv = embed_rl_commands(image_world, tiny_model_dir)[command]
    counts = {}
    for name, extra in (("default", []), ("56", ["--image-size", "56"])):
        visual_tokens[0] = 0
        out = tmp_path / name
        assert main([a.replace("{out}", str(out)) for a in argv] + extra) == 0
        counts[name] = visual_tokens[0]
    # the same runs of the model, each image 4 tokens instead of 64
    assert counts["default"] > 0 and counts["default"] == 16 * counts["56"], counts
    if command.startswith("train"):  # the setting is recorded with the trained reasoner (eval / generate reuse it)
        for folder in (tmp_path / "56", tmp_path / "56" / "merged"):
            assert json.loads((folder / "unime_images.json").read_text())["image_size"] == [56, 56]
        assert not (tmp_path / "default" / "unime_images.json").exists()
    if command == "reason eval":
        meta = json.loads((tmp_path / "56" / "summary.json").read_text())["meta"]
        assert meta["image_budget"]["image_size"] == [56, 56]
        assert meta["visual_tokens_encoded"] == 2 * 4  # two images, each encoded once
