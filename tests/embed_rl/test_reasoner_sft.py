"""Cold-start SFT of the reasoner on TRL's `SFTTrainer`: the rows and TRL's collation (completion-only
labels), the first step's loss against a hand computation on three families, and short training runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.embed_rl.helpers import TCOT
from tests.models.helpers import in_a_hub_cache
from unime.data.items import Item
from unime.reasoning.reasoner import TCoTRow, reasoning_prompt_segments, write_tcot_rows
from unime.reasoning.tcot import render_tcot
from unime.embed_rl.reasoner_sft import ReasonerSFTConfig, end_of_turn_text, sft_config, sft_rows, sft_trainer

IGNORE = -100


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft_images")
    Image.new("RGB", (64, 64), (220, 40, 40)).save(root / "red.png")
    noise = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "noise.jpg", quality=80)  # lossy: a re-encoding would change pixels
    for k, rgb in enumerate([(10, 200, 10), (200, 200, 10)]):
        Image.new("RGB", (64, 48), rgb).save(root / f"frame{k}.png")
    return root


def _rows(video: bool = False):
    """An image record, a text record, a two-image record (one JPEG) and, if asked, a video (frames) record."""
    rows = [TCoTRow("r0", "target", Item(images=("red.png",)), TCOT),
            TCoTRow("r1", "query", Item(text="a blue circle"), TCOT.replace("red", "blue")),
            TCoTRow("r2", "target", Item(text="two pictures", images=("noise.jpg", "red.png")), TCOT)]
    if video:
        rows.append(TCoTRow("r3", "target", Item(video=("frame0.png", "frame1.png")), TCOT.replace("red", "green")))
    return rows


def _trainer(loaded, rows, out, **options):
    cfg = ReasonerSFTConfig(model="m", data="d", out=str(out), device="cpu", **options)
    args = sft_config(cfg, str(out), use_cpu=True, dtype=loaded.model.dtype)
    return sft_trainer(loaded.model, loaded.processor, rows, args)


def _hand_inputs(adapter, loader, row: TCoTRow):
    """The prompt through the adapter's processor path, the answer's ids appended: built without TRL."""
    images = [loader.load(ref) for ref in row.item.images]
    frames = loader.load_video(row.item.video) if row.item.video else []
    segs = reasoning_prompt_segments(row.item.text, images, frames, row.side)
    enc = adapter.processor_inputs([adapter.render_user_turn(segs)], [segs])
    answer = adapter.tokenizer.encode(row.tcot + "<|im_end|>", add_special_tokens=False)
    return enc, answer


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from unime.models.loading import load_model

    return load_model(tiny_model_dir("qwen2_vl"), device="cpu")


def test_trl_collation_labels_only_the_answer(loaded, image_root, tmp_path):
    from unime.data.images import ImageLoader

    a, loader = loaded.adapter, ImageLoader(str(image_root))
    assert end_of_turn_text(a) == "<|im_end|>"
    rows, skipped = sft_rows(_rows(video=True), a, loader)
    assert skipped == 0 and [len(r["images"]) for r in rows] == [1, 0, 2, 2]
    assert "Frame 2:" in rows[3]["prompt"]
    trainer = _trainer(loaded, rows, tmp_path / "o")
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])  # TRL's vision-language collator
    pad = a.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    pixels = []
    for i, row in enumerate(_rows(video=True)):
        enc, answer = _hand_inputs(a, loader, row)
        prompt = enc["input_ids"][0]
        n, m = len(prompt), len(prompt) + len(answer)
        ids, labels, mask = batch["input_ids"][i], batch["labels"][i], batch["attention_mask"][i]
        # the prompt is exactly what generation sees, the answer follows, then padding
        assert torch.equal(ids[:n], prompt) and ids[n:m].tolist() == answer
        assert (labels[:n] == IGNORE).all() and labels[n:m].tolist() == answer and (labels[m:] == IGNORE).all()
        assert mask[:m].all() and not mask[m:].any()
        assert torch.equal(batch["mm_token_type_ids"][i, :n], enc["mm_token_type_ids"][0])
        assert not batch["mm_token_type_ids"][i, n:].any()
        assert a.tokenizer.decode(labels[n:m]) == row.tcot + "<|im_end|>"
        assert ((ids == pad).sum() > 0) == bool(row.item.images or row.item.video) and not (labels == pad).any()
        if "pixel_values" in enc:
            pixels.append(enc["pixel_values"])
    assert torch.equal(batch["pixel_values"], torch.cat(pixels))


@pytest.mark.parametrize("family,lora_r", [("qwen2_vl", 0), ("qwen2_5_vl", 4), ("qwen3_vl", 0)])
def test_first_step_loss_is_cross_entropy_over_answer_tokens_only(tiny_model_dir, image_root, tmp_path, family,
                                                                   lora_r):
    """The trainer's first logged loss (one step over every row) equals the mean next-token negative
    log-likelihood of the answer tokens, computed row by row from the model's logits."""
    from unime.data.images import ImageLoader
    from unime.embed_rl.reasoner_sft import lora_model
    from unime.models.loading import load_model

    loaded = load_model(tiny_model_dir(family), device="cpu")
    a, model, loader = loaded.adapter, loaded.model, ImageLoader(str(image_root))
    model.train(False)
    nll, count = 0.0, 0
    with torch.no_grad():
        for row in _rows(video=True):
            enc, answer = _hand_inputs(a, loader, row)
            n = enc["input_ids"].shape[1]
            full = dict(enc)
            full["input_ids"] = torch.cat([enc["input_ids"], torch.tensor([answer])], dim=1)
            full["attention_mask"] = torch.ones_like(full["input_ids"])
            full["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"], torch.zeros(1, len(answer),
                                                                                          dtype=torch.long)], dim=1)
            logp = torch.log_softmax(model(**full).logits[0].double(), dim=-1)
            for t in range(n, n + len(answer)):  # position t-1 predicts token t
                nll -= logp[t - 1, full["input_ids"][0, t]].item()
                count += 1
    rows, _ = sft_rows(_rows(video=True), a, loader)
    if lora_r:
        loaded.model = lora_model(model, ReasonerSFTConfig(model="m", data="d", out="o", lora_r=lora_r))
    trainer = _trainer(loaded, rows, tmp_path / "o", max_steps=1, batch_size=4, logging_steps=1,
                       save_steps=10_000, lora_r=lora_r)
    trainer.train()
    first = [h for h in trainer.state.log_history if "loss" in h][0]
    assert first["step"] == 1
    assert abs(first["loss"] - nll / count) < 1e-5, (first["loss"], nll / count)


def test_sft_run_lowers_the_loss_and_saves_a_reasoner(tiny_model_dir, tmp_path):
    from unime.reasoning.reasoner import Reasoner
    from unime.embed_rl.reasoner_sft import train_reasoner_sft

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

    curves = read_curves_csv(tmp_path / "sft" / "curves.csv")  # one row per logged step (the first, every 5th)
    assert [r["step"] for r in curves] == [1, 5, 10, 15, 20, 25, 30]
    assert (curves[0]["loss"], curves[-1]["loss"]) == (summary["first_loss"], summary["last_loss"])
    assert (tmp_path / "sft" / "curves.png").stat().st_size > 1000
    reasoner = Reasoner.from_pretrained(tmp_path / "sft", device="cpu", data_root=str(tmp_path), max_new_tokens=48)
    out = reasoner.generate([Item(text="a red circle")], "query")
    assert out[0][0].startswith("<thinking>")


def test_lora_sft_exports_the_adapter_and_a_merged_plain_folder(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    from unime.embed_rl.reasoner_sft import train_reasoner_sft

    write_tcot_rows([TCoTRow("r0", "query", Item(text="a red circle"), TCOT)], tmp_path / "t.jsonl")
    cfg = ReasonerSFTConfig(model=tiny_model_dir("qwen2_vl"), data=str(tmp_path / "t.jsonl"), out=str(tmp_path / "o"),
                            max_steps=2, lora_r=4, device="cpu", logging_steps=1)
    train_reasoner_sft(cfg)
    assert (tmp_path / "o" / "adapter" / "adapter_config.json").is_file()  # every trainer's export
    assert not (tmp_path / "o" / "merged" / "adapter_config.json").exists()
    AutoModelForImageTextToText.from_pretrained(tmp_path / "o" / "merged")
    # its generation_config sets nothing of a decoding (no chat sampling defaults a later generation would take)
    from transformers import GenerationConfig

    from unime.models.generation import ignored_checkpoint_decoding

    assert ignored_checkpoint_decoding(GenerationConfig.from_pretrained(tmp_path / "o" / "merged")) == {}
    # the LoRA initialisation follows --seed: a second run in this process (another RNG state) is bit-identical
    torch.manual_seed(12345)
    train_reasoner_sft(ReasonerSFTConfig(**{**cfg.__dict__, "out": str(tmp_path / "again")}))
    a = load_file(tmp_path / "o" / "merged" / "model.safetensors")
    b = load_file(tmp_path / "again" / "merged" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_folder_as_model_is_recorded_as_the_base_the_weights_start_from(tiny_model_dir, tmp_path):
    """QA: `train reasoner --model RUN` (a trainer's output folder) named RUN as base_model in the model card — no
    model folder. Now the card, the adapter's config and sft_summary.json name RUN's merged/."""
    import shutil

    from unime.embed_rl.reasoner_sft import train_reasoner_sft

    run = tmp_path / "run"  # a trainer's output folder: merged/ is what every loader loads
    shutil.copytree(tiny_model_dir("qwen2_vl"), run / "merged")
    write_tcot_rows([TCoTRow("r0", "query", Item(text="a red circle"), TCOT)], tmp_path / "t.jsonl")
    train_reasoner_sft(ReasonerSFTConfig(model=str(run), data=str(tmp_path / "t.jsonl"), out=str(tmp_path / "o"),
                                         max_steps=1, lora_r=4, device="cpu", logging_steps=1))
    base = str((run / "merged").resolve())
    assert f"\nbase_model: {base}\n" in (tmp_path / "o" / "README.md").read_text()
    adapter_config = json.loads((tmp_path / "o" / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == base
    summary = json.loads((tmp_path / "o" / "sft_summary.json").read_text())
    assert (summary["base_model"], summary["started_from_adapter"]) == (base, None)


def _keys_and_tensors(adapter_dir):
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


def test_an_adapter_folder_as_model_is_trained_on_not_wrapped_in_a_second_lora(tiny_model_dir, tmp_path):
    """QA: `train reasoner --stage sft --model SFT/adapter --lora-r 4` put a second LoRA on the loaded adapter and
    TRL's SFT failed ('MultimodalCausalLMOutputWithPast' object has no attribute 'last_hidden_state'). Now the
    adapter is trained on, as the reranker's and embedder's trainers do (`unime.models.lora.model_to_train`): the
    exported adapter has the start adapter's tensors, trained, on the same base, and the run records where it
    started; full fine-tuning (--lora-r 0) of an adapter is refused."""
    from unime.embed_rl.reasoner_sft import train_reasoner_sft
    from unime.errors import ModelError

    base = str(Path(tiny_model_dir("qwen2_vl")).resolve())
    write_tcot_rows([TCoTRow("r0", "query", Item(text="a red circle"), TCOT)], tmp_path / "t.jsonl")
    first = ReasonerSFTConfig(model=base, data=str(tmp_path / "t.jsonl"), out=str(tmp_path / "o"), max_steps=1,
                              lora_r=4, device="cpu", logging_steps=1, learning_rate=1e-2)
    train_reasoner_sft(first)
    start = (tmp_path / "o" / "adapter").resolve()
    summary = train_reasoner_sft(ReasonerSFTConfig(**{**first.__dict__, "model": str(start),
                                                      "out": str(tmp_path / "o2")}))
    assert (summary["base_model"], summary["started_from_adapter"]) == (base, str(start))
    assert summary["steps"] == 1
    a, b = _keys_and_tensors(start), _keys_and_tensors(tmp_path / "o2" / "adapter")
    assert a.keys() == b.keys() and not [k for k in b if k.count("base_model.model.") > 1]  # one LoRA, not nested
    assert any(not torch.equal(a[k], b[k]) for k in a)  # trained
    config = json.loads((tmp_path / "o2" / "adapter" / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["r"]) == (base, 4)
    assert f"started from adapter | {start}" in (tmp_path / "o2" / "README.md").read_text()
    with pytest.raises(ModelError, match="merge it first"):
        train_reasoner_sft(ReasonerSFTConfig(**{**first.__dict__, "model": str(start), "out": str(tmp_path / "o3"),
                                                "lora_r": 0}))
    assert not (tmp_path / "o3").exists()  # refused before the run claimed its folder


def test_the_card_of_a_run_on_an_adapter_shows_the_adapters_own_lora_settings(tiny_model_dir, tmp_path):
    """QA: with an adapter as --model, the reasoner's model card showed the stage's default LoRA alpha, dropout and
    targets (32, 0.05, the seven decoder projections), not those the adapter was trained with. Now they are read from
    the adapter's config."""
    from unime.embed_rl.reasoner_sft import train_reasoner_sft

    write_tcot_rows([TCoTRow("r0", "query", Item(text="a red circle"), TCOT)], tmp_path / "t.jsonl")
    first = ReasonerSFTConfig(model=tiny_model_dir("qwen2_vl"), data=str(tmp_path / "t.jsonl"),
                              out=str(tmp_path / "o"), max_steps=1, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                              lora_targets=("q_proj", "v_proj"), device="cpu", logging_steps=1)
    train_reasoner_sft(first)
    train_reasoner_sft(ReasonerSFTConfig(model=str(tmp_path / "o" / "adapter"), data=first.data,
                                         out=str(tmp_path / "o2"), max_steps=1, lora_r=4, device="cpu"))
    card = (tmp_path / "o2" / "README.md").read_text()
    lora = card[card.index("## LoRA"):]
    for row in ("| lora_r | 4 |", "| lora_alpha | 8 |", "| lora_dropout | 0 |", "| lora_targets | q_proj, v_proj |",
                "| lora_vision | False |"):
        assert row in lora


def test_a_hub_adapter_as_model_is_trained_on_as_an_adapter_folder_is(tiny_model_dir, tmp_path, monkeypatch):
    """QA: a PEFT adapter given as a hub id loaded through transformers' own adapter loading, as a plain model, so the
    run put a fresh LoRA on it instead of training the adapter (a local adapter folder was trained on). Now the hub
    id's snapshot is loaded as an adapter folder: the exported adapter holds the hub adapter's tensors, trained, and
    the run records the hub id it started from. Offline, from a hub cache laid out as huggingface_hub lays it out."""
    from unime.embed_rl.reasoner_sft import train_reasoner_sft
    from unime.models.loading import load_model

    base = str(Path(tiny_model_dir("qwen2_vl")).resolve())
    write_tcot_rows([TCoTRow("r0", "query", Item(text="a red circle"), TCOT)], tmp_path / "t.jsonl")
    first = ReasonerSFTConfig(model=base, data=str(tmp_path / "t.jsonl"), out=str(tmp_path / "o"), max_steps=1,
                              lora_r=4, device="cpu", logging_steps=1, learning_rate=1e-2)
    train_reasoner_sft(first)
    in_a_hub_cache(tmp_path / "o" / "adapter", tmp_path / "hub", "someone/an-adapter", monkeypatch)
    start = _keys_and_tensors(tmp_path / "o" / "adapter")
    loaded = load_model("someone/an-adapter", device="cpu")
    assert (loaded.base_path, loaded.peft_path) == (base, "someone/an-adapter")
    state = {k.replace(".default.", "."): v for k, v in loaded.model.state_dict().items()}
    assert all(torch.equal(state[k], v) for k, v in start.items())  # the hub adapter's own weights
    summary = train_reasoner_sft(ReasonerSFTConfig(**{**first.__dict__, "model": "someone/an-adapter",
                                                      "out": str(tmp_path / "o2")}))
    assert (summary["base_model"], summary["started_from_adapter"]) == (base, "someone/an-adapter")
    trained = _keys_and_tensors(tmp_path / "o2" / "adapter")
    assert start.keys() == trained.keys() and any(not torch.equal(start[k], trained[k]) for k in start)
    assert "started from adapter | someone/an-adapter" in (tmp_path / "o2" / "README.md").read_text()


def test_a_retry_after_the_merge_it_first_refusal_runs_into_the_same_out(tiny_model_dir, tmp_path, capsys):
    """QA: full fine-tuning (--lora-r 0) of an adapter folder was refused ("merge it first") after the run had
    written its options into --out, so the retry with the merged model was refused as a folder holding a run with
    other options (--model). The refusal now comes before the folder is claimed; the retry runs."""
    from unime.cli import main
    from unime.embed_rl.reasoner_sft import train_reasoner_sft

    write_tcot_rows([TCoTRow("r0", "query", Item(text="a red circle"), TCOT)], tmp_path / "t.jsonl")
    train_reasoner_sft(ReasonerSFTConfig(model=tiny_model_dir("qwen2_vl"), data=str(tmp_path / "t.jsonl"),
                                         out=str(tmp_path / "o"), max_steps=1, lora_r=4, device="cpu"))
    argv = ["train", "reasoner", "--stage", "sft", "--tcots", str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "o2"),
            "--lora-r", "0", "--max-steps", "1", "--device", "cpu"]
    capsys.readouterr()
    assert main([*argv, "--model", str(tmp_path / "o" / "adapter")]) == 2
    assert "merge it first" in capsys.readouterr().err and not (tmp_path / "o2").exists()
    assert main([*argv, "--model", str(tmp_path / "o" / "merged")]) == 0
    assert json.loads((tmp_path / "o2" / "sft_summary.json").read_text())["steps"] == 1


def test_a_key_frame_past_the_frames_of_the_prompt_is_refused_naming_the_row(loaded, image_root):
    """A T-CoT naming key frame 3 of a two-frame video (written with another video sampling than the prompt's): the
    reasoner would be taught to name a frame it is not shown. It is a DataError naming the file, the row and the key
    frame, or with --skip-invalid a skipped row (counted); key frames 1 and 2 are kept."""
    from unime.data.images import ImageLoader
    from unime.errors import DataError

    loader = ImageLoader(str(image_root))
    video = Item(video=("frame0.png", "frame1.png"))
    rows = [TCoTRow("v", "target", video, render_tcot({"key_frames": [1, 3]}, "Frames.", "frames")),
            TCoTRow("w", "target", video, render_tcot({"key_frames": [1, 2]}, "Frames.", "frames"))]
    with pytest.raises(DataError) as e:
        sft_rows(rows, loaded.adapter, loader, source="t.jsonl")
    assert (e.value.source, e.value.record, e.value.field) == ("t.jsonl", "v/target", "tcot.key_frames[1]")
    assert "key frame 3 is beyond the last frame (2 frames sampled" in str(e.value)
    out, skipped = sft_rows(rows, loaded.adapter, loader, skip_invalid=True)
    assert skipped == 1 and len(out) == 1 and "[1, 2]" in out[0]["completion"]


def test_a_video_rows_clip_is_decoded_once_by_the_check_and_its_frames_are_the_prompts(loaded, tiny_model_dir,
                                                                                       tmp_path, monkeypatch):
    """The run's checks of a row of a video clip (`CheckedImages.check` before the model loads, then `sft_rows`'s
    key-frame checks) decode the clip once under the command's sampling: the row's T-CoT was written at --video-fps 2
    and is read at --video-frames 4, two samplings that take the same frames of the 2-s, 20-frame clip (uniform 4 of
    20: round(i * 19 / 3) = 0, 6, 13, 19), so the clip is decoded once more under the recorded sampling to compare.
    The key-frame check decoded the clip again under the command's (its frame-cache key lacked the checkpoint's
    aspect limit, which `CheckedImages` did not show): 2 decodes of the same frames. The prompt's frames are the
    frames compared: frame i of the clip has red 12 * i, so 0, 72, 156, 228; the key frames 2 and 4 name 72 and 228."""
    pytest.importorskip("av")
    from tests.data.helpers import write_clip
    from unime.data import video as video_module
    from unime.data.skips import ErrorPolicy, SkipReport
    from unime.data.video import FRAME_CACHE, VideoSampling
    from unime.embed_rl.reasoner_sft import CheckedImages
    from unime.models.image_budget import ImageBudget
    from unime.models.loading import checkpoint_image_loader
    from unime.reasoning import evidence

    write_clip(tmp_path / "clip.mp4", n=20, fps=10)
    ours = VideoSampling.from_options(frames=4)
    decoded, picked = [], []
    real_decode, real_select = video_module.decode_video, evidence.select_key_frames
    monkeypatch.setattr(video_module, "decode_video", lambda data, sampling, **kw: decoded.append(sampling)
                        or real_decode(data, sampling, **kw))
    monkeypatch.setattr(evidence, "select_key_frames", lambda frames, keys, **kw: picked.append(
        (list(frames), real_select(frames, keys, **kw))) or picked[-1][1])
    FRAME_CACHE.clear()
    row = TCoTRow("v", "query", Item(text="", video=("clip.mp4",)),
                  render_tcot({"key_frames": [2, 4]}, "Frames.", "frames"),
                  video_sampling=VideoSampling.from_options(fps=2.0).numbering())
    loader = CheckedImages(checkpoint_image_loader(tiny_model_dir("qwen2_vl"), ImageBudget(), tmp_path, video=ours))
    try:
        rows = loader.check([row], source="t.jsonl", policy=ErrorPolicy("raise", SkipReport(), "reasoner SFT"))
        out, skipped = sft_rows(rows, loaded.adapter, loader, source="t.jsonl")
    finally:
        FRAME_CACHE.clear()
    assert decoded.count(ours) == 1 and len(decoded) == 2 and skipped == 0
    red = [float(np.asarray(f)[..., 0].mean()) for f in out[0]["images"]]
    assert red == pytest.approx([0, 72, 156, 228], abs=6)
    (shown, keys), = picked
    assert [float(np.asarray(f)[..., 0].mean()) for f in shown] == pytest.approx([0, 72, 156, 228], abs=6)
    assert [float(np.asarray(f)[..., 0].mean()) for f in keys] == pytest.approx([72, 228], abs=6)


def test_gradient_checkpointing_recomputes_the_decoder_and_trains_the_same_weights(tiny_model_dir, tmp_path,
                                                                                   monkeypatch):
    """QA: TRL's SFTConfig turns activation checkpointing on by default and unime always turned it off, with no
    option to ask for it (`--trainer-arg gradient_checkpointing=true` was ignored). --gradient-checkpointing sends
    every decoder layer through transformers' checkpoint, and a LoRA run on an image row and a text row gives the
    losses and weights of the run without it, and leaves the frozen vision tower out of the backward pass (TRL and
    transformers hook its patch embedding to require grad, which only reentrant checkpoints need); without the option
    nothing is checkpointed, as before."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from tests.train.helpers import count_checkpointed_layers, count_vision_mlp_runs
    from unime.embed_rl.reasoner_sft import train_reasoner_sft
    from unime.models.curves import read_curves_csv

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (64, 64), (220, 40, 40)).save(tmp_path / "imgs" / "red.png")
    write_tcot_rows([TCoTRow("r0", "query", Item(text="a red circle"), TCOT),
                     TCoTRow("r0", "target", Item(images=("imgs/red.png",)), TCOT)], tmp_path / "t.jsonl")
    model = tiny_model_dir("qwen2_vl")
    runs = {}
    for on in (False, True):
        calls = count_checkpointed_layers(monkeypatch)
        vision_runs = count_vision_mlp_runs(monkeypatch)
        cfg = ReasonerSFTConfig(model=model, data=str(tmp_path / "t.jsonl"), out=str(tmp_path / str(on)), max_steps=3,
                                lora_r=4, batch_size=2, learning_rate=1e-2, device="cpu", logging_steps=1,
                                gradient_checkpointing=on)
        train_reasoner_sft(cfg)
        monkeypatch.undo()
        runs[on] = (dict(calls), len(vision_runs),
                    load_file(tmp_path / str(on) / "adapter" / "adapter_model.safetensors"),
                    [r["loss"] for r in read_curves_csv(tmp_path / str(on) / "curves.csv") if "loss" in r])
    (off_calls, off_vision, off_weights, off_losses), (on_calls, on_vision, on_weights, on_losses) = \
        runs[False], runs[True]
    layers = AutoConfig.from_pretrained(model).text_config.num_hidden_layers
    assert off_calls == {} and on_calls["Qwen2VLDecoderLayer"] == 3 * layers  # one forward per step
    assert on_vision == off_vision > 0  # the frozen vision tower is not recomputed: no backward goes through it
    assert len(on_losses) == 3 and on_losses == pytest.approx(off_losses, rel=1e-6, abs=1e-7)
    assert on_weights.keys() == off_weights.keys()
    for key in off_weights:
        torch.testing.assert_close(on_weights[key], off_weights[key], rtol=1e-5, atol=1e-6)
    assert all(off_weights[k].abs().max() > 0 for k in off_weights if "lora_B" in k)


@pytest.mark.parametrize("mode", ["full", "lora_vision"])
def test_gradient_checkpointing_trains_the_same_weights_in_full_and_vision_lora_runs(tiny_model_dir, tmp_path,
                                                                                     monkeypatch, mode):
    """--gradient-checkpointing with full fine-tuning (--lora-r 0: the vision tower trained too) and with
    --lora-vision (LoRA in the vision tower too), where the vision tower's blocks are checkpointed and back-propagated
    through (and so recomputed: their MLPs run more often): 3 SGD steps on an image row and a text row give the
    losses and weights of the run without it, and the vision tower's trained tensors moved."""
    from tests.train.helpers import (assert_same_weights_and_vision_trained, count_checkpointed_layers,
                                      count_vision_mlp_runs, trained_run)
    from unime.embed_rl.reasoner_sft import train_reasoner_sft

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (64, 64), (220, 40, 40)).save(tmp_path / "imgs" / "red.png")
    write_tcot_rows([TCoTRow("r0", "query", Item(text="a red circle"), TCOT),
                     TCoTRow("r0", "target", Item(images=("imgs/red.png",)), TCOT)], tmp_path / "t.jsonl")
    model = tiny_model_dir("qwen2_vl")
    own = {"full": dict(lora_r=0, learning_rate=1e-2),
           "lora_vision": dict(lora_r=4, lora_vision=True, lora_targets=("q_proj", "v_proj", "qkv", "fc1"),
                               lora_dropout=0.0, learning_rate=0.5)}[mode]
    runs = {}
    for on in (False, True):
        out = tmp_path / str(on)
        calls, vision_runs = count_checkpointed_layers(monkeypatch), count_vision_mlp_runs(monkeypatch)
        train_reasoner_sft(ReasonerSFTConfig(model=model, data=str(tmp_path / "t.jsonl"), out=str(out), max_steps=3,
                                             batch_size=2, device="cpu", logging_steps=1, gradient_checkpointing=on,
                                             trainer_arg=["optim=sgd", "max_grad_norm=0"], **own))
        monkeypatch.undo()
        runs[on] = trained_run(out, mode, calls, vision_runs)
    (off_calls, off_vision, off_weights, off_losses), (on_calls, on_vision, on_weights, on_losses) = \
        runs[False], runs[True]
    assert off_calls == {} and on_calls["Qwen2VLDecoderLayer"] > 0 and on_calls["Qwen2VLVisionBlock"] > 0
    assert on_vision > off_vision > 0
    assert len(on_losses) == 3 and on_losses == pytest.approx(off_losses, rel=1e-6, abs=1e-7)
    assert_same_weights_and_vision_trained(on_weights, off_weights, model, mode)


def test_a_box_inverted_or_outside_the_image_is_refused_naming_the_file_line_and_side(loaded, image_root, tmp_path):
    """QA: the SFT trained the reasoner on T-CoTs with boxes [[900, 900, 100, 100]] and [[1200, 1200, 1900, 1900]],
    which `reason materialize` then dropped without a word. The SFT refuses them as materialize and split do
    (`parse_tcot_row`), naming the T-CoT file, its line, record id and side; --skip-invalid counts them."""
    from unime.data.images import ImageLoader
    from unime.reasoning.reasoner import read_tcot_rows
    from unime.reasoning.tcot import TCoTError

    item = Item(images=("red.png",))
    boxes = {"a": [[100, 100, 900, 900]], "b": [[0, 0, 500, 500], [900, 900, 100, 100]],
             "c": [[1200, 1200, 1900, 1900]]}
    write_tcot_rows([TCoTRow(rid, side, item, render_tcot({"bbox_2d": boxes[rid]}, "Red.", "red"))
                     for rid, side in (("a", "target"), ("b", "query"), ("c", "target"))], tmp_path / "t.jsonl")
    rows = read_tcot_rows(tmp_path / "t.jsonl")
    loader = ImageLoader(str(image_root))
    with pytest.raises(TCoTError) as e:
        sft_rows(rows, loaded.adapter, loader, source="t.jsonl")
    assert (e.value.source, e.value.record, e.value.field) == ("t.jsonl", "line 2 (id b, side query)",
                                                               "thinking.bbox_2d[1]")
    assert "box [900, 900, 100, 100] is inverted (x1 > x2)" in str(e.value)
    with pytest.raises(TCoTError, match=r"line 3 \(id c, side target\), field 'thinking.bbox_2d\[0\]': box "
                                        r"\[1200, 1200, 1900, 1900\] lies wholly outside the image"):
        sft_rows(rows[2:], loaded.adapter, loader, source="t.jsonl")
    out, skipped = sft_rows(rows, loaded.adapter, loader, skip_invalid=True)
    assert skipped == 2 and len(out) == 1


def test_train_reasoner_refuses_a_bad_tcot_before_the_model_loads(tiny_model_dir, image_root, tmp_path, monkeypatch):
    """The run's T-CoT check comes before the model loads (as its image check): a bad box stops it at once; with
    --skip-invalid the row is counted instead (`sft_rows`)."""
    from unime.embed_rl.reasoner_sft import train_reasoner_sft
    from unime.models import loading
    from unime.reasoning.tcot import TCoTError

    Image.new("RGB", (64, 64), (220, 40, 40)).save(tmp_path / "red.png")
    write_tcot_rows([TCoTRow("r0", "query", Item(text="a red circle"), TCOT),
                     TCoTRow("r1", "target", Item(images=("red.png",)),
                             render_tcot({"bbox_2d": [[900, 100, 100, 900]]}, "Red.", "red"))], tmp_path / "t.jsonl")
    loads = []
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: loads.append(a) or pytest.fail("model loaded"))
    with pytest.raises(TCoTError, match=r"t\.jsonl, record line 2 \(id r1, side target\), field "
                                        r"'thinking\.bbox_2d\[0\]': box \[900, 100, 100, 900\] is inverted"):
        train_reasoner_sft(ReasonerSFTConfig(model=tiny_model_dir("qwen2_vl"), data=str(tmp_path / "t.jsonl"),
                                             out=str(tmp_path / "o"), max_steps=1, lora_r=4, device="cpu"))
    assert loads == []


def test_a_corrupt_image_of_a_tcot_row_is_named_by_its_line_record_id_and_side(tiny_model_dir, tmp_path, monkeypatch):
    """QA: `train reasoner --stage sft` on a T-CoT file whose image is truncated said "t.jsonl, record line 1, field
    'item.images[0]'", without the row's record id and side, which its T-CoT errors (and `reason split` /
    `materialize` on the same file) name; and before the model loads."""
    from unime.errors import DataError
    from unime.embed_rl.reasoner_sft import train_reasoner_sft
    from unime.models import loading

    Image.new("RGB", (64, 64), (220, 40, 40)).save(tmp_path / "red.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "red.png").read_bytes()[:60])
    write_tcot_rows([TCoTRow("r0", "query", Item(images=("red.png",)), TCOT),
                     TCoTRow("r1", "target", Item(images=("red.png", "cut.png")), TCOT)], tmp_path / "t.jsonl")
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(DataError, match=r"t\.jsonl, record line 2 \(id r1, side target\), field 'item\.images\[1\]': "
                                        r"corrupt image cut\.png"):
        train_reasoner_sft(ReasonerSFTConfig(model=tiny_model_dir("qwen2_5_vl"), data=str(tmp_path / "t.jsonl"),
                                             out=str(tmp_path / "o"), max_steps=1, lora_r=4, device="cpu"))
