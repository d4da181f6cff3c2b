"""Cold-start SFT of the reasoner: assistant-only loss masking, and a short training run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from unime.reasoning.reasoner import TCoTRow, reasoning_prompt_segments, write_tcot_rows
from unime.reasoning.tcot import render_tcot
from unime.embed_rl.reasoner_sft import IGNORE_INDEX, SFTCollator, end_of_turn_text, sft_features

TCOT = render_tcot({"bbox_2d": [[100, 100, 600, 600]]}, "The image shows a red circle.", "red circle")


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from unime.models.loading import load_model

    return load_model(tiny_model_dir("qwen2_vl"), device="cpu")


def test_labels_mask_everything_but_the_assistant_answer(loaded):
    a = loaded.adapter
    img = Image.new("RGB", (64, 64), (220, 40, 40))
    segs = reasoning_prompt_segments("", [img], [], "target")
    f = sft_features(a, segs, TCOT)
    ids, labels = f["input_ids"][0], f["labels"][0]
    # the prompt part is exactly what generation sees: the rendered user turn with the image expanded
    prompt = a.processor_inputs([a.render_user_turn(segs)], [segs])["input_ids"][0]
    n = len(prompt)
    assert torch.equal(ids[:n], prompt)
    assert (labels[:n] == IGNORE_INDEX).all()
    assert end_of_turn_text(a) == "<|im_end|>"
    assert a.tokenizer.decode(labels[n:]) == TCOT + "<|im_end|>"
    assert torch.equal(labels[n:], ids[n:])
    # the image tokens are in the masked part
    pad = a.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (ids == pad).sum() > 0 and not (labels == pad).any()


def test_model_loss_is_cross_entropy_over_answer_tokens_only(loaded):
    a, model = loaded.adapter, loaded.model
    img = Image.new("RGB", (64, 64), (40, 80, 220))
    f1 = sft_features(a, reasoning_prompt_segments("", [img], [], "target"), TCOT)
    f2 = sft_features(a, reasoning_prompt_segments("a blue circle", [], [], "query"), TCOT.replace("red", "blue"))
    batch = SFTCollator(a.tokenizer.pad_token_id)([f1, f2])
    assert batch["input_ids"].shape[0] == 2 and batch["pixel_values"].shape[0] == f1["pixel_values"].shape[0]
    with torch.no_grad():
        out = model(**batch)
        logits = out.logits.float()
    # independent: next-token log-likelihood of each answer token, averaged over answer tokens of both rows
    nll, count = 0.0, 0
    for r in range(2):
        lab = batch["labels"][r]
        for t in range(1, lab.shape[0]):
            if lab[t] != IGNORE_INDEX:
                nll -= torch.log_softmax(logits[r, t - 1], -1)[lab[t]].item()
                count += 1
    assert count == int((batch["labels"] != IGNORE_INDEX).sum())
    assert abs(out.loss.item() - nll / count) < 1e-4
    # padding never enters the loss: the shorter row is padded with -100
    short = int(np.argmin([f1["input_ids"].shape[1], f2["input_ids"].shape[1]]))
    assert (batch["labels"][short, -1] == IGNORE_INDEX) and (batch["attention_mask"][short, -1] == 0)


def test_sft_run_lowers_the_loss_and_saves_a_reasoner(tiny_model_dir, tmp_path):
    from unime.data.items import Item
    from unime.reasoning.reasoner import Reasoner
    from unime.embed_rl.reasoner_sft import ReasonerSFTConfig, train_reasoner_sft

    (tmp_path / "imgs").mkdir()
    rows = []
    for i, (c, rgb) in enumerate({"red": (220, 40, 40), "blue": (40, 80, 220)}.items()):
        Image.new("RGB", (64, 64), rgb).save(tmp_path / "imgs" / f"{c}.png")
        rows.append(TCoTRow(f"r{i}", "target", Item(images=(f"imgs/{c}.png",)),
                            render_tcot({"bbox_2d": [[100, 100, 600, 600]]}, f"A {c} circle.", f"{c} circle")))
        rows.append(TCoTRow(f"r{i}", "query", Item(text=f"a {c} circle"),
                            render_tcot({"text_keywords": [c, "circle"]}, f"The query asks for a {c} circle.",
                                        f"{c} circle")))
    rows.append(TCoTRow("bad", "query", Item(text="x"), "no tags at all"))
    write_tcot_rows(rows, tmp_path / "tcots.jsonl")
    cfg = ReasonerSFTConfig(model=tiny_model_dir("qwen2_vl"), data=str(tmp_path / "tcots.jsonl"),
                            out=str(tmp_path / "sft"), epochs=30, learning_rate=3e-3, batch_size=4, lora_r=0,
                            logging_steps=5, skip_invalid=True, device="cpu", save_steps=10_000)
    summary = train_reasoner_sft(cfg)
    assert summary["examples"] == 4 and summary["skipped_invalid"] == 1
    assert summary["last_loss"] < 0.5 * summary["first_loss"]
    saved = json.loads((tmp_path / "sft" / "sft_summary.json").read_text())
    assert saved["steps"] == summary["steps"] == 30
    from unime.models.curves import read_curves_csv

    curves = read_curves_csv(tmp_path / "sft" / "curves.csv")  # one row per logged step (every 5th)
    assert [r["step"] for r in curves] == [5, 10, 15, 20, 25, 30]
    assert (curves[0]["loss"], curves[-1]["loss"]) == (summary["first_loss"], summary["last_loss"])
    assert (tmp_path / "sft" / "curves.png").stat().st_size > 1000
    reasoner = Reasoner.from_pretrained(tmp_path / "sft", device="cpu", data_root=str(tmp_path), max_new_tokens=48)
    out = reasoner.generate([Item(text="a red circle")], "query")
    assert out[0][0].startswith("<thinking>")


def test_lora_sft_exports_the_adapter_and_a_merged_plain_folder(tiny_model_dir, tmp_path):
    from transformers import AutoModelForImageTextToText

    from unime.data.items import Item
    from unime.embed_rl.reasoner_sft import ReasonerSFTConfig, train_reasoner_sft

    write_tcot_rows([TCoTRow("r0", "query", Item(text="a red circle"), TCOT)], tmp_path / "t.jsonl")
    cfg = ReasonerSFTConfig(model=tiny_model_dir("qwen2_vl"), data=str(tmp_path / "t.jsonl"), out=str(tmp_path / "o"),
                            max_steps=2, lora_r=4, device="cpu", logging_steps=1)
    train_reasoner_sft(cfg)
    assert (tmp_path / "o" / "adapter" / "adapter_config.json").is_file()  # every trainer's export
    assert not (tmp_path / "o" / "merged" / "adapter_config.json").exists()
    AutoModelForImageTextToText.from_pretrained(tmp_path / "o" / "merged")
