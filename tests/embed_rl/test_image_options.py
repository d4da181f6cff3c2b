"""QA: the Embed-RL commands took no image-resolution options (`--max-pixels` / `--min-pixels` / `--image-size`),
although every command that reads images does. Each now takes them and they reach the model: with `--image-size
56` a 224×224 image is 2×2 = 4 merged visual tokens instead of 8×8 = 64 (the tiny Qwen2-VL processor: one token
per 28×28 pixels, its own bound 50176 px = 224×224; `tests/models/test_image_budget.py`), counted in the
`input_ids` the language model is run on."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from tests.embed_rl.helpers import TCOT
from unime.data.items import Item, Record
from unime.models.prompts import EMB_TOKEN

pytestmark = pytest.mark.slow

COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 220)}


@pytest.fixture(scope="module")
def image_world(tmp_path_factory):
    """224×224 images, records (text query → image positive), their T-CoTs and one MMEB task over the images."""
    from unime.data.io import write_records
    from unime.reasoning.reasoner import TCoTRow, write_tcot_rows

    root = tmp_path_factory.mktemp("image_options")
    recs = []
    for i, (c, rgb) in enumerate(list(COLOURS.items()) * 2):
        Image.new("RGB", (224, 224), rgb).save(root / f"{c}.png")
        recs.append(Record(query=Item(text=f"a {c} square"), positive=Item(text="<|image_1|>", images=(f"{c}.png",)),
                           id=f"r{i}"))
    write_records(recs, root / "records.jsonl")
    write_tcot_rows([TCoTRow(r.id, side, item, TCOT, source="test") for r in recs
                     for side, item in (("query", r.query), ("target", r.positive))], root / "tcots.jsonl")
    rows = [{"qry_text": f"a {c} square", "qry_img_path": "", "tgt_text": ["", ""],
             "tgt_img_path": [f"{c}.png", f"{o}.png"]} for c, o in (("red", "blue"), ("blue", "red"))]
    (root / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "eval_tasks.yaml").write_text(
        "tasks:\n  - {name: pick, format: mmeb, path: task.jsonl, meta_task: retrieval, split: IND}\n")
    return root


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


def _commands(root, tiny_model_dir):
    model, emb = tiny_model_dir("qwen2_vl"), tiny_model_dir("qwen2_vl", (EMB_TOKEN,))
    records, tcots = str(root / "records.jsonl"), str(root / "tcots.jsonl")
    return {
        "reason generate": ["reason", "generate", "--model", model, "--records", records, "--max-new-tokens", "2",
                            "--batch-size", "4", "--device", "cpu", "--out", "{out}/t.jsonl"],
        "reason split": ["reason", "split", "--records", records, "--tcots", tcots, "--judge", model,
                         "--device", "cpu", "--out-dir", "{out}"],
        "reason eval": ["reason", "eval", "--embedder", emb, "--tasks", str(root / "eval_tasks.yaml"), "--tcots",
                        "none", "--device", "cpu", "--out", "{out}"],
        "train reasoner sft": ["train", "reasoner", "--stage", "sft", "--model", model, "--tcots", tcots,
                               "--max-steps", "1", "--batch-size", "8", "--lora-r", "0", "--device", "cpu",
                               "--out", "{out}"],
        "train reasoner grpo": ["train", "reasoner", "--stage", "grpo", "--model", model, "--embedder", emb,
                                "--records", records, "--max-steps", "1", "--num-generations", "2",
                                "--max-completion-length", "2", "--weights", "0.05,0.8,0", "--device", "cpu",
                                "--out", "{out}"],
    }


@pytest.mark.parametrize("command", ["reason generate", "reason split", "reason eval", "train reasoner sft",
                                     "train reasoner grpo"])
def test_image_size_reaches_the_model_of_every_embed_rl_command(command, image_world, tiny_model_dir, visual_tokens,
                                                                 tmp_path):
    from unime.cli import main

    argv = _commands(image_world, tiny_model_dir)[command]
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
        assert meta["image_budget"]["image_size"] == [56, 56] and meta["visual_tokens_encoded"] == 2 * 4  # two images, each encoded once
