"""Image resolution control (`--min-pixels` / `--max-pixels` / `--image-size`): the processor's own
bounds, visual token counts computed by hand, the budget recorded with a trained checkpoint and reused
by eval unless overridden."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from unime.models.image_budget import BUDGET_FILE, ImageBudget, parse_image_size, recorded_budget

# Tiny Qwen2-VL processor: patch 14 × merge 2 → one merged token per 28×28 pixels; its own bounds are
# min 28·28·4 = 3136 and max 28·28·64 = 50176 pixels (unime.models.tiny.TinySize).
F = 28


def test_parse_image_size_and_budget_validation():
    assert parse_image_size(672) == (672, 672)
    assert parse_image_size("640x480") == (640, 480)
    assert parse_image_size(None) is None
    with pytest.raises(ValueError):
        parse_image_size("0x4")
    with pytest.raises(ValueError):
        ImageBudget(min_pixels=10, max_pixels=5)
    b = ImageBudget.from_options(None, 12544, "56")
    assert b.image_size == (56, 56) and b.over(ImageBudget(min_pixels=1, max_pixels=9)) == \
        ImageBudget(min_pixels=1, max_pixels=12544, image_size=(56, 56))
    assert ImageBudget.from_dict(b.to_dict()) == b
    assert ImageBudget.from_dict(dict(b.as_items())) == b


def test_processor_bounds_give_the_hand_computed_visual_tokens(tiny_model_dir):
    from unime.models.adapters import Segment
    from unime.models.loading import load_processor

    model = tiny_model_dir("qwen2_vl")
    square, wide = Image.new("RGB", (224, 224), "red"), Image.new("RGB", (280, 140), "blue")

    def tokens(budget, image):
        from unime.models.adapters import QwenVLAdapter

        proc, eff = load_processor(model, image_budget=budget)
        adapter = QwenVLAdapter(proc, eff)
        segs = [Segment("image", image), Segment("text", "x")]
        inputs = adapter.processor_inputs([adapter.render_user_turn(segs)], [segs])
        return adapter.count_visual_tokens(inputs["input_ids"]), proc

    # default bounds: 224×224 = 50176 px = the max → 8×8 = 64 tokens; 280×140 = 39200 px fits → 5×10 = 50
    assert tokens(None, square)[0] == 64
    assert tokens(None, wide)[0] == 50
    # max 12544 = 28·28·16: 224×224 shrinks by sqrt(50176/12544) = 2 → 112×112 → 4×4 = 16 tokens;
    # 280×140 shrinks by sqrt(39200/12544) = 1.768 → floor(2.83)·28 × floor(5.66)·28 = 56×140 → 2×5 = 10
    n, proc = tokens(ImageBudget(max_pixels=12544), square)
    assert n == 16 and proc.image_processor.size["longest_edge"] == 12544
    assert tokens(ImageBudget(max_pixels=12544), wide)[0] == 10
    # fixed resize to 56×56 = 3136 px (= the min) → 2×2 = 4 tokens, whatever the source size
    assert tokens(ImageBudget(image_size=(56, 56)), wide)[0] == 4
    # a larger min bound enlarges: 56×56 under min 28·28·16 → 112×112 → 16 tokens
    assert tokens(ImageBudget(min_pixels=12544, max_pixels=50176), Image.new("RGB", (56, 56)))[0] == 16


def test_video_frames_fit_the_same_budget():
    frames = [Image.new("RGB", (224, 224)), Image.new("RGB", (280, 140))]
    out = ImageBudget(max_pixels=12544).prepare_frames(frames, factor=F)
    assert [f.size for f in out] == [(112, 112), (140, 56)]
    assert [f.size for f in ImageBudget(image_size=(56, 28)).prepare_frames(frames, factor=F)] == [(56, 28)] * 2


def test_recorded_budget_is_found_from_the_run_and_its_subfolders(tmp_path):
    run = tmp_path / "run"
    for sub in ("merged", "adapter", "checkpoints/checkpoint-2"):
        (run / sub).mkdir(parents=True)
    ImageBudget(max_pixels=12544).save(run)
    for sub in ("", "merged", "adapter", "checkpoints/checkpoint-2"):
        assert recorded_budget(run / sub) == ImageBudget(max_pixels=12544), sub
    other = tmp_path / "plain"
    other.mkdir()
    assert recorded_budget(other) is None
    (other / BUDGET_FILE).write_text('{"max_pixels": -3}')
    from unime.errors import ModelError

    with pytest.raises(ModelError, match="bad image budget"):
        recorded_budget(other)


def _tiny_image_world(root: Path) -> None:
    """Two images of known sizes, four training records (text query → image positive) and one MMEB
    task whose candidates are the two images."""
    root.mkdir(parents=True)
    Image.new("RGB", (224, 224), (200, 30, 30)).save(root / "square.png")
    Image.new("RGB", (280, 140), (30, 30, 200)).save(root / "wide.png")
    recs = []
    for i, (text, img) in enumerate([("a red square", "square.png"), ("a blue band", "wide.png")] * 2):
        recs.append({"id": f"r{i}", "dataset": "d", "query": {"text": text}, "positive": {"text": "", "images": [img]},
                     "negatives": []})
    (root / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    rows = [{"qry_text": "a red square", "qry_img_path": "", "tgt_text": ["", ""],
             "tgt_img_path": ["square.png", "wide.png"]},
            {"qry_text": "a blue band", "qry_img_path": "", "tgt_text": ["", ""],
             "tgt_img_path": ["wide.png", "square.png"]}]
    (root / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "eval_tasks.yaml").write_text(
        "tasks:\n  - {name: pick, format: mmeb, path: task.jsonl, meta_task: retrieval, split: IND}\n")


@pytest.mark.slow
def test_train_records_the_budget_and_eval_reuses_or_overrides_it(tiny_model_dir, tmp_path):
    from unime.cli import main

    world = tmp_path / "world"
    _tiny_image_world(world)
    out = tmp_path / "emb"
    assert main(["train", "embedder", "--model", tiny_model_dir("qwen2_vl"), "--records", str(world / "records.jsonl"),
                 "--out", str(out), "--loss", "infonce", "--hard-negatives", "0", "--batch-size", "2", "--steps", "1",
                 "--lora-r", "4", "--device", "cpu", "--max-pixels", "12544", "--save-steps", "100"]) == 0
    for folder in (out, out / "adapter", out / "merged"):
        assert json.loads((folder / BUDGET_FILE).read_text())["max_pixels"] == 12544, folder
    # the processor saved with the checkpoint carries the bound too (plain transformers users get it)
    saved = json.loads((out / "merged" / "processor_config.json").read_text())["image_processor"]
    assert saved["size"]["longest_edge"] == 12544

    def eval_tokens(*extra):
        dest = tmp_path / f"eval{len(list(tmp_path.glob('eval*')))}"
        assert main(["eval", "--model", str(out / "merged"), "--tasks", str(world), "--out", str(dest),
                     "--no-cache", "--device", "cpu", *extra]) == 0
        meta = json.loads((dest / "summary.json").read_text())["meta"]
        return meta["visual_tokens_encoded"], meta["image_budget"]

    # the training bound by default: square 16 + wide 10 tokens (hand-computed in the test above)
    assert eval_tokens() == (16 + 10, {"min_pixels": None, "max_pixels": 12544, "image_size": None})
    # --max-pixels 3136 = 28·28·4: square shrinks by 4 → 56×56 → 4 tokens; wide by 3.54 → 28×56 → 2 tokens
    n, budget = eval_tokens("--max-pixels", "3136")
    assert (n, budget["max_pixels"]) == (4 + 2, 3136)
    # a fixed resize on top of the recorded bound: both 56×56 → 4 tokens each
    assert eval_tokens("--image-size", "56")[0] == 4 + 4


def test_max_pixels_below_a_qwen3_vl_releases_own_minimum_is_a_usage_error_naming_the_fix(tmp_path, capsys):
    """QA (a Qwen3-VL-2B-Instruct download): its preprocessor_config.json bounds images to 65536..16777216 pixels
    (Qwen2-VL's: 3136..); `--max-pixels 40000` (fine on Qwen2-VL) ended in a traceback of a ValueError ("min pixels
    65536 > max pixels 40000"). It is now the one-line usage error, naming the checkpoint's bound and the option
    that fixes it; with --min-pixels too the bounds are the ones given."""
    from tests.models.helpers import qwen3_vl_release_checkpoint
    from unime.cli import main
    from unime.errors import UsageError
    from unime.models.loading import load_processor

    release = qwen3_vl_release_checkpoint(tmp_path / "release", weights=False)
    with pytest.raises(UsageError) as err:
        load_processor(release, image_budget=ImageBudget(max_pixels=40000))
    assert str(err.value) == ("--max-pixels 40000 is below the checkpoint's own minimum of 65536 pixels per image (its "
                              "image processor's size.shortest_edge): give --min-pixels too, at most 40000")
    with pytest.raises(UsageError, match=r"^--min-pixels 20000000 is above the checkpoint's own maximum of 16777216 "
                                         r"pixels per image \(its image processor's size.longest_edge\): give "
                                         r"--max-pixels too, at least 20000000$"):
        load_processor(release, image_budget=ImageBudget(min_pixels=20_000_000))
    processor, _ = load_processor(release, image_budget=ImageBudget(min_pixels=3136, max_pixels=40000))
    assert processor.image_processor.size == {"shortest_edge": 3136, "longest_edge": 40000}
    items = tmp_path / "items.jsonl"
    items.write_text('{"text": "a red square"}\n')
    code = main(["embed", "--model", release, "--items", str(items), "--out", str(tmp_path / "e.npy"),
                 "--device", "cpu", "--max-pixels", "40000"])
    err_text = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err_text and "give --min-pixels too, at most 40000" in err_text
