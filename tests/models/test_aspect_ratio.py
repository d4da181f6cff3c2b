"""An image whose long side is more than 200 times its short side: every Qwen-VL processor refuses it (transformers'
`smart_resize` raises a bare ValueError mid-batch). unime refuses it when it checks images, before the model, naming
the file, record and field, and `--on-error skip` leaves it out and counts it like any bad image."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.eval.helpers import build_world
from unime.cli import main
from unime.data.images import ImageLoader
from unime.errors import DataError
from unime.models.image_budget import PROCESSOR_MAX_ASPECT_RATIO, ImageBudget, fitted_size


def test_the_limit_is_transformers_own():
    """transformers keeps the 200 as a literal inside `smart_resize`: pinned here against the function itself."""
    assert PROCESSOR_MAX_ASPECT_RATIO == 200
    assert fitted_size(8, 1600, factor=28, min_pixels=784, max_pixels=50176)  # 200: taken
    with pytest.raises(ValueError, match="aspect ratio"):
        fitted_size(8, 1608, factor=28, min_pixels=784, max_pixels=50176)  # 201
    with pytest.raises(ValueError, match="aspect ratio"):
        fitted_size(1608, 8, factor=28, min_pixels=784, max_pixels=50176)


def test_the_loader_refuses_an_image_over_the_ratio_from_its_header_naming_it(tmp_path):
    Image.new("RGB", (2000, 8)).save(tmp_path / "wide.png")
    Image.new("RGB", (8, 1600)).save(tmp_path / "tall.png")
    loader = ImageLoader(tmp_path, max_aspect_ratio=200)
    with pytest.raises(DataError, match=r"^items.jsonl, record line 2, field 'images\[0\]': image wide.png is 2000x8: "
                       r"its long side is 250 times its short side, over the 200 the model's image processor "
                       r"accepts$"):
        loader.check_header("wide.png", source="items.jsonl", record="line 2", field="images[0]")
    assert loader.load("tall.png").size == (8, 1600)  # 200 exactly: the processor takes it
    with pytest.raises(DataError, match="in-memory image> is 2000x8"):
        loader.load(Image.new("RGB", (2000, 8)))
    assert ImageLoader(tmp_path).load("wide.png").size == (2000, 8)  # no limit unless the caller sets one
    # a fixed --image-size is what the processor sees: no limit then
    assert ImageBudget().max_aspect_ratio() == 200 and ImageBudget(image_size=32).max_aspect_ratio() is None


def _items(tmp_path):
    Image.new("RGB", (2000, 8), (200, 0, 0)).save(tmp_path / "wide.png")
    Image.new("RGB", (64, 64), (0, 0, 200)).save(tmp_path / "ok.png")
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(x) + "\n" for x in
                             [{"text": "hi"}, {"images": ["wide.png"]}, {"images": ["ok.png"]}]))
    return items


def test_embed_names_the_image_or_skips_and_counts_it(tiny_model_dir, tmp_path, capsys):
    """QA: `unime embed` (even under --on-error skip) ended in transformers' traceback "absolute aspect ratio must be
    smaller than 200"."""
    items, model = _items(tmp_path), tiny_model_dir("qwen2_vl")
    capsys.readouterr()  # the fixture's own output
    assert main(["embed", "--model", model, "--items", str(items), "--out", str(tmp_path / "a.npy"),
                 "--device", "cpu"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"unime: error: {items}, record line 2, field 'item.images[0]': image wide.png is 2000x8: its long "
                   "side is 250 times its short side, over the 200 the model's image processor accepts"]
    assert main(["embed", "--model", model, "--items", str(items), "--out", str(tmp_path / "b.npy"),
                 "--device", "cpu", "--on-error", "skip"]) == 0
    assert "skipped 1 record(s) (image: 1)" in capsys.readouterr().out
    assert np.load(tmp_path / "b.npy").shape[0] == 2
    assert json.loads((tmp_path / "b.npy.lines.json").read_text())["lines"] == [1, 3]
    # with a fixed --image-size the processor gets a square: the image is encoded, as before
    assert main(["embed", "--model", model, "--items", str(items), "--out", str(tmp_path / "c.npy"),
                 "--device", "cpu", "--image-size", "32"]) == 0
    assert np.load(tmp_path / "c.npy").shape[0] == 3


def test_the_embedder_refuses_it_in_python_too(tiny_model_dir):
    from unime import Embedder

    emb = Embedder.from_pretrained(tiny_model_dir("qwen2_vl"), device="cpu")
    with pytest.raises(DataError, match="is 2000x8"):
        emb.encode([{"image": Image.new("RGB", (2000, 8))}])


@pytest.mark.slow
def test_eval_names_the_image_or_leaves_its_row_out_and_counts_it(tiny_model_dir, tmp_path):
    from unime.eval.runners import EvalConfig, evaluate_checkpoint

    cfg = build_world(tmp_path)
    Image.new("RGB", (8, 2000), (0, 200, 0)).save(tmp_path / "images/green.png")  # colour_cls row c1's query
    run = dict(model=tiny_model_dir("qwen2_vl"), tasks=str(cfg), only=["colour_cls"], device="cpu", dtype="float32",
               no_cache=True)
    with pytest.raises(DataError, match="images/green.png is 8x2000: its long side is 250 times") as e:
        evaluate_checkpoint(EvalConfig(out=str(tmp_path / "a"), **run), show_progress=False)
    assert (e.value.source, e.value.record, e.value.field) == (str(tmp_path / "eval/mmeb/colour_cls.jsonl"),
                                                               "line 2 (id c1)", "query.images[0]")
    summary = evaluate_checkpoint(EvalConfig(out=str(tmp_path / "b"), on_error="skip", **run), show_progress=False)
    assert summary["meta"]["skipped_rows"] == 1
    task = json.loads((tmp_path / "b" / "tasks" / "colour_cls.json").read_text())
    assert task["counts"]["skipped_rows"] == 1 and task["counts"]["queries"] == 3


def test_wrappers_built_directly_default_to_the_processors_limit(tiny_model_dir):
    """QA: `Embedder(model, processor, adapter)` (and the judge, reranker, reasoner, collator built the same way)
    defaulted to an `ImageLoader()` without a limit, so a 2000x8 image ended in transformers' bare ValueError."""
    from unime import Embedder
    from unime.models.judge import JudgeScorer
    from unime.models.loading import load_model
    from unime.models.reranker import Reranker
    from unime.reasoning.reasoner import Reasoner
    from unime.train.reranker_trainer import PromptAnswerCollator

    loaded = load_model(tiny_model_dir("qwen2_vl"), device="cpu")
    emb = Embedder(loaded.model, loaded.processor, loaded.adapter)
    with pytest.raises(DataError, match="is 2000x8: its long side is 250 times its short side, over the 200"):
        emb.encode([{"image": Image.new("RGB", (2000, 8))}])
    for wrapper in (JudgeScorer(loaded.model, loaded.processor, loaded.adapter),
                    Reranker(loaded.model, loaded.processor, loaded.adapter),
                    Reasoner(loaded.model, loaded.processor, loaded.adapter),
                    PromptAnswerCollator(loaded.adapter)):
        assert wrapper.image_loader.max_aspect_ratio == 200, type(wrapper).__name__
    fixed = load_model(tiny_model_dir("qwen2_vl"), device="cpu", image_budget=ImageBudget(image_size=32))
    assert Embedder(fixed.model, fixed.processor, fixed.adapter).image_loader.max_aspect_ratio is None


def test_a_video_file_over_the_ratio_is_refused_from_its_header_naming_it(tmp_path, tiny_model_dir, capsys,
                                                                          monkeypatch):
    """QA: a video FILE (not a frame list) of 2000x8 frames ended in transformers' bare 'absolute aspect ratio must
    be smaller than 200' ValueError, even under --on-error skip."""
    import unime.data.video as video
    from tests.data.helpers import write_clip
    from unime.data.video import FRAME_CACHE, probe_video_file

    write_clip(tmp_path / "wide.mp4", n=4, size=(2000, 8))
    FRAME_CACHE.clear()
    assert ImageLoader(tmp_path).load_video(["wide.mp4"]).size == (2000, 8)  # no limit: decoded (and cached)
    message = (r"^items.jsonl, record line 2, field 'video': video wide.mp4 is 2000x8: its long side is 250 times "
               r"its short side, over the 200 the model's video processor accepts$")
    loader = ImageLoader(tmp_path, max_aspect_ratio=200)

    def no_decoding(*args, **kwargs):
        raise AssertionError("frames decoded")

    with monkeypatch.context() as m:
        m.setattr(video, "_decode_frames", no_decoding)  # refused from the stream's header, the cache not used
        with pytest.raises(DataError, match=message):
            loader.load_video(["wide.mp4"], source="items.jsonl", record="line 2")
        with pytest.raises(DataError, match=message):
            probe_video_file(loader, "wide.mp4", source="items.jsonl", record="line 2", field="video")
    FRAME_CACHE.clear()
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"text": "hi"}) + "\n" + json.dumps({"video": "wide.mp4"}) + "\n")
    model = tiny_model_dir("qwen2_vl")
    capsys.readouterr()
    assert main(["embed", "--model", model, "--items", str(items), "--out", str(tmp_path / "a.npy"),
                 "--device", "cpu"]) != 0
    assert capsys.readouterr().err.strip().splitlines() == [
        f"unime: error: {items}, record line 2, field 'item.video[0]': video wide.mp4 is 2000x8: its long side is 250 "
        "times its short side, over the 200 the model's video processor accepts"]
    assert main(["embed", "--model", model, "--items", str(items), "--out", str(tmp_path / "b.npy"),
                 "--device", "cpu", "--on-error", "skip"]) == 0
    assert "skipped 1 record(s) (video: 1)" in capsys.readouterr().out
    assert np.load(tmp_path / "b.npy").shape[0] == 1
    FRAME_CACHE.clear()


def test_an_eval_suite_reads_each_task_by_the_models_loader_under_the_tasks_root(tmp_path):
    """`load_suite_data(image_loader=)` takes the model's loader (`checkpoint_image_loader`, the one way a loader for
    a model's images is built) and applies its rules under each task's data root, not its own root."""
    from unime.eval.runners import load_suite_data
    from unime.eval.tasks import load_task_config

    cfg = build_world(tmp_path)
    Image.new("RGB", (8, 2000), (0, 200, 0)).save(tmp_path / "images/green.png")
    suite = load_task_config(str(cfg), only=["colour_cls"])
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(DataError, match=r"images/green.png is 8x2000: its long side is 250 times"):
        load_suite_data(suite, image_loader=ImageBudget().image_loader(tmp_path / "elsewhere"))
    [(spec, data)] = load_suite_data(suite, image_loader=ImageBudget(image_size=32).image_loader(tmp_path / "x"))
    assert spec.name == "colour_cls" and data.skipped == 0


@pytest.mark.parametrize("kind", ["file", "frame list"])
def test_the_video_pixel_budget_never_pushes_a_videos_frames_over_the_ratio(tmp_path, kind):
    """QA: the ratio was checked on the stream's (or frame's) size, then the per-video pixel budget scaled both sides
    down, each rounded down on its own: 2000x10 frames (200:1, taken) under a budget of 2 x 1100 x 5.5 pixels came
    out 1100x5 (220:1), and transformers raised its bare ValueError. The long side is now cut to 200 x the short
    side: 1000x5, which the processor takes."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    from tests.data.helpers import write_clip
    from unime.data.video import FRAME_CACHE, VideoSampling

    sampling = VideoSampling(num_frames=2, max_video_pixels=12100)  # scale sqrt(12100 / (2 x 2000 x 10)) = 0.55
    if kind == "file":
        refs = [write_clip(tmp_path / "wide.mp4", n=4, size=(2000, 10)).name]
    else:
        refs = [f"f{i}.png" for i in range(2)]
        for r in refs:
            Image.new("RGB", (2000, 10), (0, 90, 0)).save(tmp_path / r)
    FRAME_CACHE.clear()
    video = ImageLoader(tmp_path, max_aspect_ratio=200, video=sampling).load_video(refs)
    assert [f.size for f in video.frames] == [(1000, 5), (1000, 5)]  # 2000 x 0.55 = 1100 > 200 x 5
    assert smart_resize(5, 1000, factor=28, min_pixels=784, max_pixels=50176)  # transformers' own check: taken
    assert ImageLoader(tmp_path, video=sampling).load_video(refs).frames[0].size == (1100, 5)  # no limit: as before
    FRAME_CACHE.clear()


def test_the_frames_fitted_to_max_pixels_stay_within_the_ratio(tiny_model_dir):
    """QA: with --max-pixels, video frames are fitted to the budget by `smart_resize` (each side a multiple of the
    patch factor) before the processor, which checks the ratio of the fitted size: 10000x50 frames (200:1) under
    672x672 pixels were fitted to 9492x28 (339:1) and the embedder ended in transformers' bare ValueError. The long
    side is now cut to 200 x the short side (in factor multiples): 5600x28, and the video is embedded."""
    from unime import Embedder
    from unime.models.loading import load_model

    frames = [Image.new("RGB", (10000, 50), (0, 0, 90))] * 2
    assert fitted_size(50, 10000, factor=28, min_pixels=784, max_pixels=451584) == (28, 9492)  # transformers' rule
    fitted = ImageBudget(max_pixels=451584).prepare_frames(frames, factor=28)
    assert [f.size for f in fitted] == [(5600, 28), (5600, 28)]
    loaded = load_model(tiny_model_dir("qwen2_vl"), device="cpu", image_budget=ImageBudget(max_pixels=451584))
    emb = Embedder(loaded.model, loaded.processor, loaded.adapter)
    assert emb.encode([{"video": frames}]).shape[0] == 1  # a frame list of the two frames
