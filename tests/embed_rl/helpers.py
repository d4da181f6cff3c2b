"""Shared by the Embed-RL tests (and the resume-convention test): a rendered T-CoT answer and the colours of
the GRPO world."""

from __future__ import annotations

import json

from PIL import Image

from unime.data.items import Item, Record
from unime.models.prompts import EMB_TOKEN
from unime.reasoning.tcot import render_tcot

TCOT = render_tcot({"bbox_2d": [[100, 100, 600, 600]]}, "The image shows a red circle.", "red circle")
COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 170, 60), "yellow": (235, 210, 40)}
IMAGE_COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 220)}


def write_colour_records(root, prompt_repeats: int = 0) -> list[Record]:
    """One 64×64 image per colour under root/imgs and `root/records.jsonl` (text query → image positive). With
    `prompt_repeats`, record i's image prompt is longer by i × that many sentences (prompts of different lengths in
    one batch: TRL pads prompts on the left; a right-padding processor misplaced the image tokens of shorter ones)."""
    from unime.data.io import write_records

    (root / "imgs").mkdir()
    recs = []
    for i, (c, rgb) in enumerate(COLOURS.items()):
        Image.new("RGB", (64, 64), rgb).save(root / "imgs" / f"{c}.png")
        positive = Item(text="<|image_1|>" + " Represent the given image." * (prompt_repeats * i),
                        images=(f"imgs/{c}.png",))
        recs.append(Record(query=Item(text=f"a {c} circle"), positive=positive, id=f"r{i}"))
    write_records(recs, root / "records.jsonl")
    return recs


def write_image_world(root):
    """224×224 images, records (text query → image positive), their T-CoTs and one MMEB task over the images."""
    from unime.data.io import write_records
    from unime.reasoning.reasoner import TCoTRow, write_tcot_rows

    recs = []
    for i, (c, rgb) in enumerate(list(IMAGE_COLOURS.items()) * 2):
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


def embed_rl_commands(root, tiny_model_dir):
    """The Embed-RL commands over `write_image_world(root)`'s files ("{out}": the output to fill in)."""
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
