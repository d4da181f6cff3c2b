"""Video items from files: decoding and sampling with PyAV, the safety rules, the frame cache, and the
family processors' video path (clips are written with PyAV, `tests/data/helpers.py`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FAMILIES
from tests.data.helpers import animated_gif, write_clip
from unime.data.images import ImageLoader
from unime.data.items import Item
from unime.data.video import FRAME_CACHE, VideoSampling, is_video_file_ref, uniform_indices, vlm2vec_indices
from unime.errors import DataError

av = pytest.importorskip("av")


@pytest.fixture()
def clips(tmp_path):
    write_clip(tmp_path / "a.mp4")
    write_clip(tmp_path / "b.mkv", n=31, fps=15, size=(80, 40), shift=7)
    FRAME_CACHE.clear()
    yield tmp_path
    FRAME_CACHE.clear()


def _red(frame) -> float:
    return float(np.asarray(frame)[..., 0].mean())


def test_uniform_indices_by_hand():
    assert uniform_indices(20, 8) == [0, 3, 5, 8, 11, 14, 16, 19]   # round(i * 19 / 7)
    assert uniform_indices(5, 5) == [0, 1, 2, 3, 4]
    assert uniform_indices(9, 1) == [4]
    assert uniform_indices(3, 0) == []


def test_vlm2vec_indices_by_hand():
    """VLM2Vec-V2 (src/utils/vision_utils/vision_utils.py): save_frames keeps floor(j * T / 64), j < 64, of a video
    over 64 frames; process_video_frames takes np.linspace(0, S - 1, 8, dtype=int) of the S saved, or all S < 8."""
    # T = 100: saved j -> floor(j * 1.5625); linspace(0, 63, 8) = 0, 9, ..., 63 -> floor(9i * 1.5625)
    assert vlm2vec_indices(100, 8, 64) == [0, 14, 28, 42, 56, 70, 84, 98]
    assert uniform_indices(100, 8) == [0, 14, 28, 42, 57, 71, 85, 99]  # unime's rule, for contrast
    # T = 30 (all saved): i * 29 / 7 = 0, 4.14, 8.29, 12.43, 16.57, 20.71, 24.86, 29 truncated
    assert vlm2vec_indices(30, 8, 64) == [0, 4, 8, 12, 16, 20, 24, 29]
    # fewer frames than asked: every frame, an odd count as it is (unime's rule rounds 5 down to 4)
    assert vlm2vec_indices(5, 8, 64) == [0, 1, 2, 3, 4]
    assert VideoSampling().indices(5, 0.5) == [0, 1, 3, 4]
    # a frame list is its saved frames (no 64 cap): 129 frames, i * 128 / 7 truncated
    assert vlm2vec_indices(129, 8, None) == [0, 18, 36, 54, 73, 91, 109, 128]
    assert vlm2vec_indices(9, 1, 64) == [0]
    assert VideoSampling(frame_rule="vlm2vec").indices(100, 10.0) == [0, 14, 28, 42, 56, 70, 84, 98]
    with pytest.raises(ValueError, match="frame count"):
        VideoSampling(num_frames=None, fps=2.0, frame_rule="vlm2vec")


def test_decode_samples_uniform_frames_with_timestamps(clips):
    v = ImageLoader(clips).load_video(["a.mp4"])
    assert (len(v), v.total_frames, v.fps) == (8, 20, 10.0)
    assert v.frame_indices == (0, 3, 5, 8, 11, 14, 16, 19)
    assert v.timestamps == pytest.approx([0.0, 0.3, 0.5, 0.8, 1.1, 1.4, 1.6, 1.9])
    # the decoded frames are the source frames those indices name (lossy codec: within a few levels)
    assert [_red(f) for f in v] == pytest.approx([12 * i for i in v.frame_indices], abs=6)
    assert v.size == (64, 48)


def test_sampling_by_fps_with_a_maximum(clips):
    loader = ImageLoader(clips, video=VideoSampling(num_frames=None, fps=3.0, max_frames=16))
    v = loader.load_video(["a.mp4"])           # 2.0 s x 3 fps = 6 frames
    assert v.frame_indices == (0, 4, 8, 11, 15, 19)
    capped = ImageLoader(clips, video=VideoSampling(num_frames=None, fps=30.0, max_frames=5)).load_video(["a.mp4"])
    assert len(capped) == 4                    # max 5, rounded down to the 2-frame temporal patch
    v = ImageLoader(clips, video=VideoSampling(num_frames=None, fps=2.0)).load_video(["b.mkv"])
    assert v.fps == 15.0 and v.total_frames == 31 and len(v) == 4     # 31/15 s x 2 fps = 4.13 → 4
    assert [_red(f) for f in v] == pytest.approx([(12 * i + 7) % 256 for i in v.frame_indices], abs=6)


def test_decoding_is_deterministic_and_cached_by_content(clips):
    loader = ImageLoader(clips)
    a = loader.load_video(["a.mp4"])
    FRAME_CACHE.clear()
    b = loader.load_video(["a.mp4"])
    assert a is not b and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert (FRAME_CACHE.hits, FRAME_CACHE.misses) == (0, 1)
    # the same bytes under another name and another data root: served from the cache
    other = clips / "elsewhere"
    other.mkdir()
    (other / "copy.mp4").write_bytes((clips / "a.mp4").read_bytes())
    c = ImageLoader(other).load_video(["copy.mp4"])
    assert c is b and (FRAME_CACHE.hits, FRAME_CACHE.misses) == (1, 1)
    # other sampling settings are another entry
    ImageLoader(clips, video=VideoSampling(num_frames=4)).load_video(["a.mp4"])
    assert FRAME_CACHE.misses == 2
    # a changed file under the same path is decoded again
    write_clip(clips / "a.mp4", shift=100)
    d = loader.load_video(["a.mp4"])
    assert _red(d[0]) == pytest.approx(100, abs=6) and FRAME_CACHE.misses == 3


def test_decoded_frames_are_pyav_s_own_rgb_frames_at_either_size_and_in_any_thread(clips):
    """The frames come out of one swscale context per thread (`unime.data.video._reformatter`, kept from frame to
    frame) where PyAV's `frame.to_image()` makes a new one per frame: the pixels must be PyAV's own, at the clip's
    size and resized to a pixel budget, decoded in this thread and in two others at once."""
    import threading

    from unime.data.video import decode_video, uniform_indices

    data = (clips / "a.mp4").read_bytes()
    with av.open(str(clips / "a.mp4")) as c:
        stored = list(c.decode(video=0))
    wanted = uniform_indices(len(stored), 8)
    for budget, size in ((None, (64, 48)), (8 * 32 * 24, (32, 24))):
        sampling = VideoSampling(num_frames=8) if budget is None else VideoSampling(num_frames=8,
                                                                                    max_video_pixels=budget)
        expected = [np.asarray(stored[i].to_image(width=size[0], height=size[1])) for i in wanted]
        results: dict[str, list] = {}

        def decode(name: str) -> None:
            results[name] = [np.asarray(f) for f in decode_video(data, sampling)]

        threads = [threading.Thread(target=decode, args=(n,)) for n in ("t1", "t2")]
        for t in threads:
            t.start()
        decode("main")
        for t in threads:
            t.join()
        assert sorted(results) == ["main", "t1", "t2"]
        for frames in results.values():
            assert [f.shape for f in frames] == [(size[1], size[0], 3)] * 8
            assert all(np.array_equal(f, e) for f, e in zip(frames, expected))


def test_pixel_budget_per_video_scales_frames_down(clips):
    budget = 8 * 32 * 24
    v = ImageLoader(clips, video=VideoSampling(max_video_pixels=budget)).load_video(["a.mp4"])
    w, h = v.size
    assert len(v) * w * h <= budget and (w, h) == (32, 24)
    frames = ImageLoader(clips).load_video(["a.mp4"])  # under the default budget: untouched
    assert frames.size == (64, 48)


def test_item_with_one_video_file_and_round_trip(tmp_path):
    from unime.data.io import read_records, write_records
    from unime.data.items import Record

    item = Item.from_dict({"text": "a clip", "video": "clips/x.mp4"})
    assert item.video == ("clips/x.mp4",) and item.to_dict() == {"text": "a clip", "video": ["clips/x.mp4"]}
    assert Item.from_dict(item.to_dict()) == item
    assert is_video_file_ref("clips/x.MP4") and not is_video_file_ref("f/0.png")
    rec = Record(query=Item("q"), positive=item, id="r0")
    for name in ("r.jsonl", "r.parquet"):
        write_records([rec], tmp_path / name)
        assert read_records(tmp_path / name)[0].positive == item
    with pytest.raises(DataError) as e:
        Item.from_dict({"video": 3}, record=7, field_name="positive")
    assert e.value.record == 7 and e.value.field == "positive.video"


def test_frame_lists_still_work_and_are_capped(tmp_path):
    from PIL import Image

    for i in range(10):
        Image.new("RGB", (40, 30), (20 * i, 0, 0)).save(tmp_path / f"f{i}.png")
    refs = [f"f{i}.png" for i in range(10)]
    v = ImageLoader(tmp_path).load_video(refs)  # 8 frames by default, as from a file
    assert v.frame_indices == (0, 1, 3, 4, 5, 6, 8, 9) and v.fps == 2.0 and v.total_frames == 10
    few = ImageLoader(tmp_path, video=VideoSampling(max_frames=4)).load_video(refs)
    assert few.frame_indices == (0, 3, 6, 9) and [_red(f) for f in few] == [0, 60, 120, 180]


def test_video_options_at_their_defaults_are_no_options():
    """`--video-frames 8` asks for the defaults: no sampling of its own (None), like no option at all, so the
    records of the sampling (run options, embedding-cache ids, stage hashes) do not change with it."""
    from unime.data.video import sampling_video_options

    assert VideoSampling.from_options(frames=8) is None
    assert VideoSampling.from_options(max_frames=64, max_pixels=32 * 448 * 448) is None
    assert VideoSampling.from_options(frames=8, max_frames=32) == VideoSampling.from_options(max_frames=32) == \
        VideoSampling(max_frames=32)
    assert sampling_video_options({"frames": 8, "fps": None, "max_frames": 32, "max_pixels": None}) == \
        {"max_frames": 32}
    assert sampling_video_options({"frames": 4, "fps": None, "max_frames": 64, "max_pixels": None}) == {"frames": 4}
    assert sampling_video_options({"frames": None, "fps": 2.0, "max_frames": 64, "max_pixels": None}) == {"fps": 2.0}


# -- the corrupt-video corpus -------------------------------------------------------------------------

def _corpus(root: Path) -> dict[str, tuple[list, VideoSampling, str]]:
    good = write_clip(root / "good.mp4").read_bytes()
    write_clip(root / "good.mkv")
    (root / "empty.mp4").write_bytes(b"")
    (root / "garbage.mp4").write_bytes(b"this is not a video at all" * 40)
    (root / "half.mp4").write_bytes(good[: len(good) // 2])
    (root / "cut.mkv").write_bytes((root / "good.mkv").read_bytes()[:1000])
    (root / "page.png").write_bytes(b"\x89PNG not really")
    return {
        "empty": (["empty.mp4"], VideoSampling(), "empty file"),
        "garbage": (["garbage.mp4"], VideoSampling(), "corrupt or unreadable video"),
        "truncated_mp4": (["half.mp4"], VideoSampling(), "garbage"),
        "truncated_mkv": (["cut.mkv"], VideoSampling(), "truncated video"),
        "missing": (["nope.mp4"], VideoSampling(), "not found"),
        "escape": (["../outside.mp4"], VideoSampling(), "escapes the data root"),
        # an absolute path inside the root is read (VLM2Vec's parsers write them); one outside it is refused
        "absolute": ([str(root.parent / "good.mp4")], VideoSampling(), "absolute"),
        "two_files": (["good.mp4", "good.mkv"], VideoSampling(), "one video file"),
        "huge_frames": (["good.mp4"], VideoSampling(max_frame_pixels=1000), "pixels per frame"),
        "too_long": (["good.mp4"], VideoSampling(max_duration_s=1.0), "over the limit"),
        "too_big": (["good.mp4"], VideoSampling(max_bytes=100), "bytes, over the limit"),
        "bad_frame": (["page.png", "page.png"], VideoSampling(), "corrupt or unreadable image"),
    }


def test_corrupt_video_corpus_gives_named_errors(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    for case, (refs, sampling, words) in _corpus(root).items():
        FRAME_CACHE.clear()
        loader = ImageLoader(root, video=sampling)
        with pytest.raises(DataError) as e:
            loader.load_video(refs, source="clips.jsonl", record=f"r-{case}", field="positive.video")
        err = e.value
        if case == "truncated_mp4":  # mp4 keeps its index at the end: a cut file is unreadable or truncated
            assert "corrupt or unreadable video" in str(err) or "truncated video" in str(err), case
        else:
            assert words in str(err), (case, str(err))
        assert err.source == "clips.jsonl" and err.record == f"r-{case}", case
        assert err.field.startswith("positive.video"), (case, err.field)
    FRAME_CACHE.clear()


def test_the_header_probe_finds_the_corpus_faults_a_header_shows_without_decoding(tmp_path, monkeypatch):
    import unime.data.video as video

    root = tmp_path / "data"
    root.mkdir()
    corpus = _corpus(root)
    monkeypatch.setattr(video, "_decode_frames", lambda *a, **k: pytest.fail("the probe decoded frames"))
    for case, (refs, sampling, words) in corpus.items():
        if len(refs) > 1:  # several references: the checker refuses or checks them frame by frame
            continue
        if case == "truncated_mkv":  # its header is whole: only decoding finds the cut
            video.probe_video_file(ImageLoader(root), refs[0], sampling)
            continue
        with pytest.raises(DataError) as e:
            video.probe_video_file(ImageLoader(root), refs[0], sampling, source="clips.jsonl", record=case,
                                   field="query.video[0]")
        assert words in str(e.value) or case == "truncated_mp4", (case, str(e.value))
        assert (e.value.source, e.value.record, e.value.field) == ("clips.jsonl", case, "query.video[0]")
    video.probe_video_file(ImageLoader(root), "good.mp4")
    video.probe_video_file(ImageLoader(root), str(root / "good.mp4"))
    video.probe_video_file(ImageLoader(root), (root / "good.mkv").read_bytes())


def test_corrupt_video_in_a_corpus_stops_encode_naming_the_record(tmp_path, tiny_model_dir):
    from unime.models.embedder import Embedder

    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 broken")
    emb = Embedder.from_pretrained(tiny_model_dir("qwen2_vl"), device="cpu", data_root=tmp_path)
    with pytest.raises(DataError, match="bad.mp4") as e:
        emb.encode([Item("fine"), Item(video=("bad.mp4",))])
    assert e.value.field == "items[1].video"  # the item's position in the list encoded


# -- the family processors' video path ------------------------------------------------------------------

def _qwen3_timestamps(indices, fps):
    """Qwen3-VL's prompt timestamps: the mean time of each pair of frames (one temporal patch)."""
    t = [i / fps for i in indices]
    return [(t[i] + t[i + 1]) / 2 for i in range(0, len(t), 2)]


@pytest.mark.parametrize("family", FAMILIES)
def test_processor_video_tensors(family, clips, tiny_model_dir):
    from unime.models.embedder import Embedder

    emb = Embedder.from_pretrained(tiny_model_dir(family), device="cpu", data_root=clips)
    item = Item(text="what happens?", video=("a.mp4",))
    inputs = emb.build_inputs([item])
    assert "pixel_values" not in inputs and "image_grid_thw" not in inputs  # not frames passed as images
    t, h, w = inputs["video_grid_thw"][0].tolist()
    assert t == 4                                 # 8 sampled frames / temporal patch 2
    vp = emb.processor.video_processor
    assert inputs["pixel_values_videos"].shape[0] == t * h * w
    n_tokens = int((inputs["input_ids"][0] == emb.processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")).sum())
    assert n_tokens == t * h * w // vp.merge_size ** 2
    if family == "qwen2_5_vl":
        # sampled fps = 8 of 20 frames at 10 fps = 4 fps; a temporal patch of 2 frames lasts 0.5 s
        assert [float(x) for x in inputs["second_per_grid_ts"]] == pytest.approx([0.5])
    if family == "qwen3_vl":
        text = emb.processor.tokenizer.decode(inputs["input_ids"][0])
        want = [f"<{x:.1f} seconds>" for x in _qwen3_timestamps([0, 3, 5, 8, 11, 14, 16, 19], 10.0)]
        found = [p.split(">")[0] + ">" for p in ("<" + s for s in text.split("<")[1:]) if "seconds>" in p]
        assert found == want


@pytest.mark.parametrize("family", FAMILIES)
def test_embedder_encodes_video_files(family, clips, tiny_model_dir):
    from unime.models.embedder import Embedder

    emb = Embedder.from_pretrained(tiny_model_dir(family), device="cpu", data_root=clips)
    items = [Item(text="clip", video=("a.mp4",)), Item(text="a red square"), Item(video=("b.mkv",)),
             Item(text="clip", video=("a.mp4",))]
    vecs = emb.encode(items, batch_size=3)
    assert vecs.shape[0] == 4 and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    assert np.array_equal(vecs[0], vecs[3])
    alone = emb.encode([items[2]])
    assert np.allclose(alone[0], vecs[2], atol=1e-4)        # batch / padding invariant
    assert not np.allclose(vecs[0], vecs[2], atol=1e-3)     # two different clips differ


def test_key_frames_feed_the_reasoning_embedder(clips):
    import io

    from PIL import Image

    from unime.reasoning.embed_inputs import reasoned_item

    loader = ImageLoader(clips)
    tcot = '<thinking>{"key_frames": [2, 8]}</thinking><rethink>red grows</rethink><answer>a clip</answer>'
    out = reasoned_item(Item(text="clip", video=("a.mp4",)), tcot, loader)
    assert out.video == ("a.mp4",)  # the clip itself stays a video
    evidence = [Image.open(io.BytesIO(b)) for b in out.images]
    video = loader.load_video(["a.mp4"])
    # 1-based: key frame 2 is the second sampled frame (source frame 3), key frame 8 the last (frame 19)
    assert [_red(f) for f in evidence] == pytest.approx([_red(video[1]), _red(video[7])], abs=0.5)
    assert _red(evidence[0]) == pytest.approx(36, abs=6) and _red(evidence[1]) == pytest.approx(228, abs=6)


def test_unime_embed_reads_video_files_with_the_sampling_options(clips, tiny_model_dir):
    import json

    from unime.cli import main
    from unime.models.embedder import Embedder

    (clips / "items.jsonl").write_text("".join(json.dumps(d) + "\n" for d in [
        {"text": "a clip", "video": "a.mp4"}, {"text": "a red square"}, {"video": ["a.mp4"]}]))
    model = tiny_model_dir("qwen2_vl")
    assert main(["embed", "--model", model, "--items", str(clips / "items.jsonl"), "--out", str(clips / "v.npy"),
                 "--device", "cpu", "--dtype", "fp32", "--video-frames", "4"]) == 0
    got = np.load(clips / "v.npy")
    emb = Embedder.from_pretrained(model, device="cpu", dtype="fp32", data_root=clips,
                                   video_sampling=VideoSampling(num_frames=4))
    want = emb.encode([Item("a clip", video=("a.mp4",)), Item("a red square"), Item(video=("a.mp4",))])
    np.testing.assert_allclose(got, want, atol=1e-5)
    eight = Embedder.from_pretrained(model, device="cpu", dtype="fp32", data_root=clips).encode(
        [Item("a clip", video=("a.mp4",))])
    assert not np.allclose(eight[0], got[0], atol=1e-4)  # 4 frames is not the default 8


def test_video_options_map_to_sampling():
    from argparse import Namespace

    from unime.data.video import VideoSampling

    none = Namespace(video_frames=None, video_fps=None, video_max_frames=None, video_max_pixels=None)
    assert VideoSampling.from_fields(none) is None
    s = VideoSampling.from_fields(Namespace(video_frames=None, video_fps=1.5, video_max_frames=12,
                                            video_max_pixels=None))
    assert (s.num_frames, s.fps, s.max_frames) == (None, 1.5, 12)


def test_the_numbering_of_a_sampling_is_what_decides_the_frames_taken():
    """Frame counts are rounded down to a multiple of 2 within max_frames (`frame_count`): 7 frames take the 6 that
    6 take, 8 frames within at most 4 the 4 that 4 take; by frame rate the rate and the maximum decide."""
    from unime.data.video import VideoSampling, numbering_options, parse_numbering

    assert VideoSampling().numbering() == {"frames": 8}
    assert VideoSampling(num_frames=7).numbering() == VideoSampling(num_frames=6).numbering() == {"frames": 6}
    assert VideoSampling(max_frames=4).numbering() == {"frames": 4}
    fps = VideoSampling.from_options(fps=1.5, max_frames=12)
    assert fps.numbering() == {"fps": 1.5, "max_frames": 12}
    assert numbering_options(fps.numbering()) == "--video-fps 1.5 --video-max-frames 12"
    assert numbering_options({"frames": 8}) == "--video-frames 8"
    assert parse_numbering({"fps": 2, "max_frames": 64}) == {"fps": 2, "max_frames": 64}
    for bad in ({"frames": 0}, {"frames": 8, "fps": 2}, {"fps": 2}, [8], {"frames": True}):
        with pytest.raises(ValueError, match="expected"):
            parse_numbering(bad)


def test_a_sampling_with_a_recorded_numbering_takes_the_frames_the_recorded_one_takes():
    """`with_numbering` (the T-CoT check's sampling of a recorded numbering): for clips of 1..100 frames over 0.5..50
    s, the frames the recorded sampling takes (`frame_count`), whatever limits it is given."""
    from unime.data.video import VideoSampling

    recorded = [VideoSampling(), VideoSampling(num_frames=7), VideoSampling(num_frames=100, max_frames=12),
                VideoSampling(num_frames=None, fps=1.5, max_frames=12), VideoSampling(num_frames=None, fps=8.0),
                VideoSampling.from_options(fps=2.0, max_frames=1)]
    for s in recorded:
        # (a base under --video-max-frames 1 has a minimum of 1 frame: the recorded rate's minimum is its own, 2)
        for base in (VideoSampling(), VideoSampling(num_frames=None, fps=4.0, max_frames=3),
                     VideoSampling.from_options(frames=8, max_frames=1)):
            t = base.with_numbering(s.numbering())
            assert t.max_video_pixels == base.max_video_pixels and t.numbering() == s.numbering()
            for total in (1, 2, 3, 7, 8, 16, 100):
                for duration in (0.5, 2.0, 50.0):
                    assert t.frame_count(total, duration) == s.frame_count(total, duration), (s, base, total)


# -- seeking in long clips ----------------------------------------------------------------------------------

def _keyframes(path: Path) -> list[int]:
    with av.open(str(path)) as c:
        return [i for i, p in enumerate(c.demux(video=0)) if p.size and p.is_keyframe]


def _long_clip(path: Path, *, n: int, gop: int, codec: str = "mpeg4", fps: int = 25) -> Path:
    """n frames, a keyframe every `gop` frames; frame i has red = 40 + (7 * i) % 180 and green = 40 + 15 * (i //
    100) (mid-range values: no clipping in the YUV round trip), so a decoded frame tells which one it is."""
    c = av.open(str(path), "w")
    s = c.add_stream(codec, rate=fps)
    s.width, s.height, s.pix_fmt = 48, 32, "yuv420p"
    s.codec_context.gop_size = gop
    s.bit_rate = 4_000_000
    s.options = {"sc_threshold": "1000000000"}  # keyframes every `gop` frames only, none at "scene changes"
    for i in range(n):
        a = np.zeros((32, 48, 3), np.uint8)
        a[..., 0] = 40 + (7 * i) % 180
        a[..., 1] = 40 + 15 * (i // 100)
        for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    return path


@pytest.mark.parametrize("codec", ["mpeg4", "libx264"])
def test_seeking_decodes_only_what_the_sampled_frames_need(tmp_path, codec):
    from unime.data.video import decode_video

    if codec not in av.codecs_available:
        pytest.skip(f"{codec} not in this PyAV build")
    data = _long_clip(tmp_path / "long.mp4", n=1200, gop=12, codec=codec).read_bytes()
    with av.open(str(tmp_path / "long.mp4")) as c:  # every frame, decoded here in order: the independent reference
        every = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(every) == 1200 and len(_keyframes(tmp_path / "long.mp4")) >= 100  # one every <= 12 frames
    for sampling in (VideoSampling(num_frames=8), VideoSampling(num_frames=None, fps=0.5, max_frames=64),
                     VideoSampling(num_frames=2)):
        seek = decode_video(data, sampling, seek=True)
        full = decode_video(data, sampling, seek=False)
        n = sampling.frame_count(1200, 1200 / 25)
        assert seek.frame_indices == full.frame_indices == tuple(uniform_indices(1200, n))
        assert seek.total_frames == full.total_frames == 1200
        # the same pixels as decoding the whole stream, and the frames the indices name
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(seek, full))
        assert all(np.array_equal(np.asarray(f), every[i]) for f, i in zip(seek, seek.frame_indices))
        assert [_red(f) for f in seek] == pytest.approx([40 + (7 * i) % 180 for i in seek.frame_indices], abs=6)
        assert [float(np.asarray(f)[..., 1].mean()) for f in seek] == pytest.approx(
            [40 + 15 * (i // 100) for i in seek.frame_indices], abs=6)
        # decoding from the start reaches the last sampled frame; seeking decodes at most a GOP per sampled frame
        assert full.decoded_frames == max(full.frame_indices) + 1
        assert len(seek) <= seek.decoded_frames <= len(seek) * 12 < full.decoded_frames


def test_seeking_in_a_clip_with_one_keyframe_decodes_from_the_start(tmp_path):
    from unime.data.video import decode_video

    data = _long_clip(tmp_path / "one_gop.mp4", n=300, gop=1000).read_bytes()
    assert _keyframes(tmp_path / "one_gop.mp4") == [0]
    seek = decode_video(data, VideoSampling(num_frames=4), seek=True)
    full = decode_video(data, VideoSampling(num_frames=4), seek=False)
    assert seek.frame_indices == full.frame_indices == (0, 100, 199, 299)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(seek, full))
    assert seek.decoded_frames == full.decoded_frames == 300  # no keyframe to jump to: nothing skipped


def test_bad_video_options_are_one_line_errors_in_their_own_names(tmp_path, capsys):
    """QA: --video-max-frames 1, --video-frames 0, --video-fps 0 / nan ended in tracebacks of VideoSampling's
    checks; --video-max-pixels 0 shrank frames to 1 x 1; --video-frames with --video-fps let frames win silently."""
    from unime.cli import main
    from unime.errors import UsageError

    for kwargs, message in ((dict(frames=0), "--video-frames must be >= 1, got 0"),
                            (dict(fps=0.0), "--video-fps must be a positive number, got 0.0"),
                            (dict(fps=float("nan")), "--video-fps must be a positive number, got nan"),
                            (dict(max_frames=0), "--video-max-frames must be >= 1, got 0"),
                            (dict(max_pixels=100), "--video-max-pixels must be >= 784"),
                            (dict(frames=4, fps=2.0), "give --video-frames N or --video-fps F, not both")):
        with pytest.raises(UsageError, match=message.replace("(", r"\(")):
            VideoSampling.from_options(**kwargs)
    one = VideoSampling.from_options(max_frames=1)  # one frame at most: allowed, the least lowered to it
    assert (one.min_frames, one.max_frames) == (1, 1) and one.frame_count(100, 4.0) == 1
    (tmp_path / "i.jsonl").write_text('{"text": "a"}\n')
    assert main(["embed", "--model", "m", "--items", str(tmp_path / "i.jsonl"), "--out", str(tmp_path / "x.npy"),
                 "--video-fps", "nan"]) == 2
    # the command line's own check of the option's range (> 0: NaN is none) answers first, in the option's name
    assert capsys.readouterr().err.strip() == "unime: error: embed: --video-fps must be > 0, got nan"


def test_frames_of_different_sizes_become_one_size_the_processor_can_stack(tmp_path, tiny_model_dir):
    """QA: a frame list with frames of different sizes was budgeted frame by frame and crashed the processor
    ("all input arrays must have the same shape"), under --on-error skip too."""
    from PIL import Image

    from unime.data.images import ImageLoader
    from unime.models.embedder import Embedder

    for i, size in enumerate([(40, 30), (80, 60), (40, 30), (64, 64)]):
        Image.new("RGB", size, (60 * i, 90, 30)).save(tmp_path / f"f{i}.png")
    refs = [f"f{i}.png" for i in range(4)]
    video = ImageLoader(tmp_path).load_video(refs)
    assert len({f.size for f in video.frames}) == 1 and video.frames[0].size == video.frames[1].size
    vec = Embedder.from_pretrained(tiny_model_dir("qwen2_vl"), device="cpu", data_root=str(tmp_path)).encode(
        [{"video": refs}])
    assert vec.shape[0] == 1 and np.isfinite(vec).all()


def test_a_video_of_several_files_or_files_and_frames_is_named_by_its_line_and_skippable(tmp_path, capsys):
    """QA: such an item stopped `unime embed` at encoding time with an error naming no file or line, even under
    --on-error skip; the item check now refuses it where it reads the line."""
    import json

    from PIL import Image

    from tests.data.helpers import write_clip
    from unime.cli import main

    write_clip(tmp_path / "a.mp4", n=8, fps=8)
    Image.new("RGB", (32, 32), (200, 0, 0)).save(tmp_path / "f.png")
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(x) + "\n" for x in (
        {"text": "fine"}, {"video": ["f.png", "a.mp4"]}, {"video": ["a.mp4", "a.mp4"]})))
    assert main(["embed", "--model", "m", "--items", str(items), "--out", str(tmp_path / "x.npy")]) == 2
    assert capsys.readouterr().err.strip() == (f"unime: error: {items}, record line 2, field 'item.video': a video is "
                                               "one video file or a list of frame images, not several files or a mix")


def test_a_video_shorter_than_a_temporal_patch_is_padded_with_its_last_frame(tmp_path, clips):
    """A one-frame video crashed Qwen3-VL's processor ('t:1 must be larger than temporal_factor:2'); a frame list
    or a decoded clip shorter than a temporal patch (2 frames) now repeats its last frame (QA)."""
    from PIL import Image

    from unime.data.video import as_video

    Image.new("RGB", (40, 30), (90, 0, 0)).save(tmp_path / "f0.png")
    v = ImageLoader(tmp_path).load_video(["f0.png"])
    assert len(v) == 2 and v.frame_indices == (0, 0) and v.total_frames == 1 and [_red(f) for f in v] == [90, 90]
    write_clip(clips / "one.mp4", n=1)
    one = ImageLoader(clips).load_video(["one.mp4"])
    assert len(one) == 2 and one.frame_indices == (0, 0) and one.total_frames == 1
    single = ImageLoader(clips, video=VideoSampling(num_frames=1)).load_video(["b.mkv"])
    assert len(single) == 2 and single.frame_indices[0] == single.frame_indices[1]
    mem = as_video([Image.new("RGB", (8, 8))])
    assert len(mem) == 2 and mem.frame_indices == (0, 0)
    # two frames or more are left alone (an odd count is padded by the processors themselves)
    three = as_video([Image.new("RGB", (8, 8))] * 3)
    assert len(three) == 3 and three.frame_indices == (0, 1, 2)


# -- clips whose container says less than their video stream ------------------------------------------------------

def _clip_with_longer_audio(path: Path, *, n: int = 20, fps: int = 10, audio_s: float = 3.0) -> Path:
    """`write_clip`'s frames (red = 12 * i) with a silent audio track lasting `audio_s` seconds, longer than the
    video's n / fps: the container's duration is the audio's. VP8 + Opus in .webm, MPEG-4 + AAC otherwise."""
    webm = path.suffix == ".webm"
    c = av.open(str(path), "w")
    s = c.add_stream("libvpx" if webm else "mpeg4", rate=fps)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    a = c.add_stream("libopus" if webm else "aac", rate=48000)
    _mux_red_frames(c, s, n)
    _mux_silence(c, a, audio_s)
    c.close()
    return path


def _mux_silence(c, a, seconds: float, *, frame_size: int = 960, integer: bool = False) -> None:
    """`seconds` of mono silence at 48 kHz encoded by the audio stream `a` of the container `c`, in frames of
    `frame_size` samples (MP3: 1152), float or (`integer`: PCM, FLAC) 16-bit samples."""
    for k in range(0, int(seconds * 48000), frame_size):
        samples = np.zeros((1, frame_size), np.int16 if integer else np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="s16" if integer else "fltp", layout="mono")
        frame.sample_rate, frame.pts = 48000, k
        for p in a.encode(frame):
            c.mux(p)
    for p in a.encode():
        c.mux(p)


@pytest.mark.parametrize("name", ["long_audio.webm", "long_audio.mkv"])
def test_a_matroska_clip_whose_audio_outlasts_its_video_is_its_video_frames(tmp_path, name):
    from unime.data.video import decode_video

    data = _clip_with_longer_audio(tmp_path / name).read_bytes()
    with av.open(str(tmp_path / name)) as c:  # the premise: no frame count, the container lasts as long as the audio
        assert c.streams.video[0].frames == 0 and c.duration / 1e6 >= 2.9
    for seek in (True, False):
        v = decode_video(data, VideoSampling(), seek=seek)
        assert (v.total_frames, v.fps) == (20, 10.0)
        assert v.frame_indices == (0, 3, 5, 8, 11, 14, 16, 19)   # uniform_indices(20, 8), not of 30 frames
        assert [_red(f) for f in v] == pytest.approx([12 * i for i in v.frame_indices], abs=8)


def test_a_frame_count_estimated_from_the_container_is_corrected_by_decoding(tmp_path, monkeypatch):
    import unime.data.video as video

    data = _clip_with_longer_audio(tmp_path / "long_audio.mkv").read_bytes()
    # no packet time stamps to count the frames by: the header's estimate (3 s x 10 fps = 30) stands until decoding
    # finds 20 frames; those are sampled, not refused as a truncated file
    monkeypatch.setattr(video, "_packet_index", lambda container, stream: None, raising=False)
    monkeypatch.setattr(video, "_matroska_duration", lambda stream: None, raising=False)
    v = video.decode_video(data, VideoSampling())
    assert v.total_frames == 20 and v.frame_indices == (0, 3, 5, 8, 11, 14, 16, 19)
    assert [_red(f) for f in v] == pytest.approx([12 * i for i in v.frame_indices], abs=8)


def test_a_matroska_clip_cut_before_its_announced_duration_is_truncated(tmp_path):
    from unime.data.video import decode_video

    whole = _clip_with_longer_audio(tmp_path / "long_audio.webm").read_bytes()
    with pytest.raises(DataError, match="truncated video"):
        decode_video(whole[: len(whole) // 3], VideoSampling(), name="cut.webm")


def test_a_clip_with_a_rotation_is_decoded_upright_as_players_show_it(tmp_path):
    from unime.data.video import decode_video

    # stored 64 x 32 (landscape) with a red mark in the top-left quadrant, and a display matrix of -90 degrees
    # (counter-clockwise, as FFmpeg reads it back): a phone's portrait clip. Players and FFmpeg's autorotate turn it
    # 90 degrees clockwise: 32 wide, 64 high, the mark in the top-right quadrant
    c = av.open(str(tmp_path / "portrait.mp4"), "w")
    s = c.add_stream("mpeg4", rate=10)
    s.width, s.height, s.pix_fmt = 64, 32, "yuv420p"
    s.set_display_rotation(-90)
    for _ in range(6):
        a = np.full((32, 64, 3), 30, np.uint8)
        a[:16, :32] = (220, 30, 30)
        for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    with av.open(str(tmp_path / "portrait.mp4")) as c:  # the premise: stored landscape, rotation in the header
        f = next(c.decode(video=0))
        assert (f.width, f.height, f.rotation) == (64, 32, -90)
    data = (tmp_path / "portrait.mp4").read_bytes()
    for sampling in (VideoSampling(num_frames=2), VideoSampling(num_frames=2, max_video_pixels=2 * 16 * 32)):
        v = decode_video(data, sampling)
        w, h = v.size
        assert (w, h) == ((32, 64) if sampling.max_video_pixels > 4096 else (16, 32))  # upright; budget halves it
        for frame in v:
            a = np.asarray(frame)[..., 0].astype(float)
            assert a[: h // 2, w // 2:].mean() > 180 and a[: h // 2, : w // 2].mean() < 70   # the mark: top right
            assert a[h // 2:].mean() < 70


# -- variable frame rate ------------------------------------------------------------------------------------------

def _vfr_clip(path: Path, times_ms: list[int]) -> Path:
    """Frame i (red = 12 * i) shown at times_ms[i] milliseconds."""
    import fractions

    c = av.open(str(path), "w")
    s = c.add_stream("mpeg4", rate=10)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    s.codec_context.time_base = fractions.Fraction(1, 1000)
    s.bit_rate = 4_000_000  # each frame its own colour (the default rate smears the 1-s frames)
    _mux_red_frames(c, s, len(times_ms), times_ms=times_ms)
    c.close()
    return path


def _mux_red_frames(c, s, n: int, times_ms: list[int] | None = None) -> None:
    """Encode frames 0..n-1 (red = 12 * i, 64 x 48) into stream `s` of container `c`, at `times_ms` when given."""
    import fractions

    for i in range(n):
        img = np.zeros((48, 64, 3), np.uint8)
        img[..., 0] = 12 * i
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        if times_ms is not None:
            frame.pts, frame.time_base = times_ms[i], fractions.Fraction(1, 1000)
        for p in s.encode(frame):
            c.mux(p)
    for p in s.encode():
        c.mux(p)


@pytest.mark.parametrize("name", ["vfr.mp4", "vfr.mkv"])
def test_a_variable_frame_rate_clip_is_sampled_uniformly_in_time_at_its_real_times(tmp_path, name):
    from unime.data.video import decode_video

    # frames at 0, 0.1, ..., 0.9 s (indices 0-9), then 1, 2, ..., 10 s (indices 10-19)
    times = [100 * i for i in range(10)] + [1000 * k for k in range(1, 11)]
    data = _vfr_clip(tmp_path / name, times).read_bytes()
    v = decode_video(data, VideoSampling())
    # 8 targets k * 10/7 s = 0, 1.43, 2.86, 4.29, 5.71, 7.14, 8.57, 10 → the nearest frames, at their own times
    assert v.frame_indices == (0, 10, 12, 13, 15, 16, 18, 19)
    assert v.timestamps == pytest.approx([0, 1, 3, 4, 6, 7, 9, 10])
    assert [_red(f) for f in v] == pytest.approx([12 * i for i in v.frame_indices], abs=8)


@pytest.mark.parametrize("name", ["vfr.mp4", "vfr.mkv"])
def test_a_variable_frame_rate_clip_lasts_its_real_span(tmp_path, name):
    """Video.duration was frames / header rate: 2.0 s for the Matroska clip (its header says 10 fps) whose frames
    run from 0 to 10 s."""
    from unime.data.video import decode_video

    times = [100 * i for i in range(10)] + [1000 * k for k in range(1, 11)]
    v = decode_video(_vfr_clip(tmp_path / name, times).read_bytes(), VideoSampling())
    assert v.duration == pytest.approx(10.1)  # the last frame at 10 s lasts its 0.1 s (the stream's 10 fps)
    cfr = decode_video(write_clip(tmp_path / "cfr.mkv", n=31, fps=30).read_bytes(), VideoSampling())
    assert cfr.duration == 31 / 30 and cfr.span is None


@pytest.mark.parametrize("name", ["vfr.mp4", "vfr.mov", "vfr.mkv"])
def test_a_variable_frame_rate_h264_clip_with_b_frames_lasts_its_real_span(tmp_path, name):
    """An MP4 / MOV packet's duration is its decode-time step: with x264's B-frames the frame before the 1.5 s gap
    (2.9 s, shown last of its group) carried the gap, and the span was taken as the latest of every packet's pts +
    duration: 4.4 s for frames shown from 0 to 3.15 s (the same clip in Matroska: 3.25 s), so `--video-fps 2` took
    8 frames instead of 6. The span ends where the last frame shown ends."""
    import fractions

    from unime.data.video import decode_video

    if "libx264" not in av.codecs_available:
        pytest.skip("PyAV without libx264")
    times = [0, 40, 80, 120, 160, 1000, 1100, 1200, 1300, 1400, 2900, 2950, 3000, 3050, 3100, 3150]
    c = av.open(str(tmp_path / name), "w")
    s = c.add_stream("libx264", rate=10)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    s.codec_context.time_base = fractions.Fraction(1, 1000)
    for i, t in enumerate(times):  # red = 12 * i; green and blue change too, so that x264 picks B-frames here
        a = np.zeros((48, 64, 3), np.uint8)
        a[:] = (12 * i, 255 - 12 * i, 37 * i % 256)
        frame = av.VideoFrame.from_ndarray(a, format="rgb24")
        frame.pts, frame.time_base = t, fractions.Fraction(1, 1000)
        for p in s.encode(frame):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    with av.open(str(tmp_path / name)) as c:  # the premise: B-frames (presentation order is not decode order)
        packets = [(float(p.pts * p.time_base), float(p.duration * p.time_base)) for p in c.demux(video=0) if p.size]
    assert [t for t, _ in packets] != sorted(t for t, _ in packets)
    if name != "vfr.mkv":  # ... and a packet's duration that is its decode step: one ends past 4 s
        assert max(t + d for t, d in packets) > 4.0
    v = decode_video((tmp_path / name).read_bytes(), VideoSampling(num_frames=None, fps=2.0))
    assert 3.15 < v.duration <= 3.25  # the last frame shown at 3.15 s lasts one 0.1 s step at most
    # round(3.2 x 2) = 6 targets 0, 0.63, 1.26, 1.89, 2.52, 3.15 s → the nearest frames (0.16 / 1.0: 1.0, ...)
    assert v.frame_indices == (0, 5, 8, 9, 10, 15)
    assert v.timestamps == pytest.approx([times[i] / 1000 for i in v.frame_indices])
    assert [_red(f) for f in v] == pytest.approx([12 * i for i in v.frame_indices], abs=8)


def _processor_times(emb, inputs) -> tuple[list[float] | None, list[str] | None]:
    """What a processor made of a video's times: Qwen2.5-VL's `second_per_grid_ts`, Qwen3-VL's prompt timestamps."""
    seconds = inputs.get("second_per_grid_ts")
    text = emb.processor.tokenizer.decode(inputs["input_ids"][0])
    stamps = [p.split(">")[0] + ">" for p in ("<" + s for s in text.split("<")[1:]) if "seconds>" in p]
    return (None if seconds is None else [float(x) for x in seconds]), stamps


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", ["vfr.mp4", "vfr.mkv"])
def test_a_variable_frame_rate_clip_reaches_the_processor_at_its_real_times(tmp_path, tiny_model_dir, family, name):
    """The processors were given the header rate and frame numbers, so the 8 frames at 0, 1, 3, 4, 6, 7, 9, 10 s
    were timed index / rate: Qwen3-VL wrote <0.5>, <1.2>, <1.6>, <1.9> seconds (mkv, 10 fps) and Qwen2.5-VL's
    temporal patch lasted 0.5 s, where the patches (2 frames each) sit at 0.5, 3.5, 6.5, 9.5 s, 3 s apart."""
    from unime.models.embedder import Embedder

    FRAME_CACHE.clear()
    times = [100 * i for i in range(10)] + [1000 * k for k in range(1, 11)]
    _vfr_clip(tmp_path / name, times)
    emb = Embedder.from_pretrained(tiny_model_dir(family), device="cpu", data_root=tmp_path)
    inputs = emb.build_inputs([Item(text="what happens?", video=(name,))])
    assert inputs["video_grid_thw"][0].tolist()[0] == 4
    seconds, stamps = _processor_times(emb, inputs)
    if family == "qwen2_5_vl":
        assert seconds == pytest.approx([3.0])
    if family == "qwen3_vl":
        assert stamps == ["<0.5 seconds>", "<3.5 seconds>", "<6.5 seconds>", "<9.5 seconds>"]
    if family == "qwen2_vl":  # frames placed by their order only: no times to give (docs/CONTRACTS.md)
        assert seconds is None and stamps == []


@pytest.mark.parametrize("family", FAMILIES)
def test_a_constant_frame_rate_clip_reaches_the_processor_as_before(clips, tiny_model_dir, family):
    """A constant frame-rate clip's processor inputs are those of its own rate, frame numbers and frame count."""
    import torch
    from transformers.video_utils import VideoMetadata

    from unime.models.embedder import Embedder

    emb = Embedder.from_pretrained(tiny_model_dir(family), device="cpu", data_root=clips)
    for ref, (fps, total, indices) in {"a.mp4": (10.0, 20, [0, 3, 5, 8, 11, 14, 16, 19]),
                                       "b.mkv": (15.0, 31, [0, 4, 9, 13, 17, 21, 26, 30])}.items():
        item = Item(text="what happens?", video=(ref,))
        got = emb.build_inputs([item])
        video = ImageLoader(clips).load_video([ref])
        assert video.processor_metadata() == {"fps": fps, "frames_indices": indices, "total_num_frames": total,
                                              "duration": total / fps}
        text = emb.render(emb.segments(item))
        meta = VideoMetadata(total_num_frames=total, fps=fps, width=video.size[0], height=video.size[1],
                             duration=total / fps, frames_indices=indices)
        want = emb.processor(text=[text], videos=[list(video.frames)], video_metadata=[meta], do_sample_frames=False,
                             cap_pixels_per_frame=True, padding=True, return_tensors="pt")
        assert sorted(got.keys()) == sorted(want.keys())
        for k in want:
            assert torch.equal(torch.as_tensor(got[k]), torch.as_tensor(want[k])), (ref, k)


def test_a_constant_frame_rate_clip_keeps_its_frame_number_sampling(tmp_path):
    from unime.data.video import decode_video

    # 30 fps in Matroska (millisecond time stamps 0, 33, 67, 100, ...: off the 1/30 s grid by rounding only)
    data = write_clip(tmp_path / "cfr.mkv", n=31, fps=30).read_bytes()
    v = decode_video(data, VideoSampling())
    assert v.frame_indices == tuple(uniform_indices(31, 8)) == (0, 4, 9, 13, 17, 21, 26, 30)
    assert v.timestamps == pytest.approx([i / 30 for i in v.frame_indices]) and v.frame_times is None


def test_a_single_video_path_is_a_video_file_whatever_its_extension(tmp_path):
    """QA: a camcorder .m2ts / .MTS (or any extension) given alone under "video" was a one-frame list, refused as
    "corrupt or unreadable image"."""
    from unime.data.io import ImageChecker, read_records, write_records
    from unime.data.items import Record

    write_clip(tmp_path / "a.mp4")
    (tmp_path / "cam.dat").write_bytes((tmp_path / "a.mp4").read_bytes())
    c = av.open(str(tmp_path / "cam.MTS"), "w", format="mpegts")
    s = c.add_stream("mpeg4", rate=10)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    _mux_red_frames(c, s, 20)
    c.close()
    assert is_video_file_ref("x/cam.MTS") and is_video_file_ref("x/cam.m2ts")
    loader = ImageLoader(tmp_path)
    for d in ({"video": "cam.dat"}, {"video": "cam.MTS"}, {"video": ["cam.MTS"]}):
        item = Item.from_dict(d)
        assert len(loader.load_video(item.video)) == 8
        ImageChecker(loader).check_item("positive", item, source="r.jsonl", record=1)
        ImageChecker(loader, decode_video=False).check_item("positive", item, source="r.jsonl", record=1)
    item = Item.from_dict({"text": "cam", "video": "cam.dat"})
    assert item.to_dict() == {"text": "cam", "video": "cam.dat"}  # read back as one video file, not a frame
    write_records([Record(query=Item("q"), positive=item, id="r0")], tmp_path / "r.jsonl")
    assert len(loader.load_video(read_records(tmp_path / "r.jsonl")[0].positive.video)) == 8
    (tmp_path / "bad.dat").write_bytes(b"not a video at all" * 10)
    with pytest.raises(DataError) as e:
        loader.load_video(Item.from_dict({"video": "bad.dat"}).video, field="positive.video")
    assert "video" in str(e.value) and "image" not in str(e.value)


def test_frame_lists_are_sampled_by_the_options_as_files_are(tmp_path):
    """QA: a frame list of up to 64 frames was used whole whatever --video-frames / --video-fps said, one of 65 was
    sampled to 8."""
    from PIL import Image

    for i in range(65):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / f"f{i}.png")
    refs = [f"f{i}.png" for i in range(65)]

    def indices(n, **options):
        return ImageLoader(tmp_path, video=VideoSampling.from_options(**options)).load_video(refs[:n]).frame_indices

    assert indices(64) == (0, 9, 18, 27, 36, 45, 54, 63) and indices(65) == (0, 9, 18, 27, 37, 46, 55, 64)
    assert indices(64, frames=4) == (0, 21, 42, 63) and indices(65, frames=4) == (0, 21, 43, 64)
    assert indices(64, frames=16) == indices(64, frames=16, max_frames=16) and len(indices(65, frames=16)) == 16
    # by frame rate: a list is a clip at 2 frames per second, so 20 frames last 10 s: 1 fps -> 10 frames
    assert indices(20, fps=1.0) == (0, 2, 4, 6, 8, 11, 13, 15, 17, 19)
    assert len(indices(64, fps=0.25)) == 8 and len(indices(64, fps=10.0)) == 64  # 32 s: 8 frames; all of them
    assert indices(3) == (0, 2) and indices(1) == (0, 0)  # rounded to a temporal patch; one frame padded


def test_embed_skipping_every_item_shows_why_before_the_error(tmp_path, capsys):
    """QA: `unime embed --on-error skip` with every item skipped said only "no items to encode"; and a bad video
    was counted as "(image: N)"."""
    import json

    from unime.cli import main

    write_clip(tmp_path / "a.mp4", n=8, fps=8)
    (tmp_path / "junk.mp4").write_bytes(b"not a video" * 20)
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(x) + "\n" for x in (
        {"video": "gone.mp4"}, {"video": ["a.mp4", "a.mp4"]}, {"video": "junk.mp4"})))
    assert main(["embed", "--model", "m", "--items", str(items), "--out", str(tmp_path / "x.npy"),
                 "--on-error", "skip"]) == 2
    out, err = capsys.readouterr()
    assert err.strip() == f"unime: error: {items}: no items to encode"
    lines = out.strip().splitlines()
    assert lines[0] == "skipped 3 record(s) (video: 3)" and len(lines) == 4
    assert "line 1" in lines[1] and "gone.mp4" in lines[1] and "line 3" in lines[3] and "junk.mp4" in lines[3]
    assert not (tmp_path / "x.npy").exists()


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_a_lone_video_path_of_any_extension_stays_a_video_file_through_a_written_records_file(suffix, tmp_path):
    """QA: a lone video path with an extension unime does not know (cam.dat) kept its mark through JSONL but came
    back from Parquet as a one-frame list (an image, not a video); a frame list stays a frame list in both."""
    from unime.data.io import read_records, write_records
    from unime.data.items import Record
    from unime.data.video import VideoFileRef

    write_clip(tmp_path / "a.mp4")
    (tmp_path / "cam.dat").write_bytes((tmp_path / "a.mp4").read_bytes())
    lone = Item.from_dict({"text": "cam", "video": "cam.dat"})
    frames = Item(text="frames", video=("f0.png", "f1.png"))
    one_frame = Item(text="one frame", video=("f0.png",))
    write_records([Record(query=Item("q"), positive=lone, negatives=[frames, one_frame], id="r0")],
                  tmp_path / f"r{suffix}")
    back = read_records(tmp_path / f"r{suffix}")[0]
    assert back.positive.video == ("cam.dat",) and isinstance(back.positive.video[0], VideoFileRef)
    assert not is_video_file_ref(back.negatives[1].video[0])  # a one-frame list is still a frame
    assert [n.video for n in back.negatives] == [("f0.png", "f1.png"), ("f0.png",)]
    assert len(ImageLoader(tmp_path).load_video(back.positive.video)) == 8


def test_a_fifo_a_folder_or_a_device_under_a_video_path_is_not_a_regular_file(tmp_path):
    """QA: a FIFO, a directory or a link to /dev/zero named clips/x.mp4 said "video file not found"."""
    from tests.data.helpers import not_regular_files
    from unime.data.io import ImageChecker
    from unime.data.video import probe_video_file

    loader = ImageLoader(tmp_path, allow_outside_root=True)  # /dev/zero lies outside the root
    for ref, kind in not_regular_files(tmp_path, ".mp4").items():
        item = Item.from_dict({"video": ref})
        reads = (lambda: loader.load_video(item.video, source="v.jsonl", record="r", field="video"),
                 lambda: probe_video_file(loader, ref, source="v.jsonl", record="r", field="video"),
                 lambda: ImageChecker(loader).check_files(item, source="v.jsonl", record="r"))
        for read in reads:
            with pytest.raises(DataError) as e:
                read()
            assert f"video {ref!r} exists but is not a regular file: it is {kind}" in str(e.value), ref
            assert (e.value.source, e.value.record) == ("v.jsonl", "r")
    with pytest.raises(DataError, match="video file not found: 'gone.mp4'"):
        loader.load_video(Item.from_dict({"video": "gone.mp4"}).video)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_an_image_file_named_as_a_video_is_said_to_be_an_image(tmp_path, fmt):
    """QA: a PNG saved as bad_png.mp4 said "video clips/bad_png.mp4 announces no frames"."""
    from PIL import Image

    from unime.data.video import probe_video_file

    (tmp_path / "clips").mkdir()
    Image.new("RGB", (16, 12), (200, 0, 0)).save(tmp_path / "clips" / "bad_image.mp4", fmt)
    loader = ImageLoader(tmp_path)
    for read in (lambda: loader.load_video(["clips/bad_image.mp4"], source="v.jsonl", record="r", field="video"),
                 lambda: probe_video_file(loader, "clips/bad_image.mp4", source="v.jsonl", record="r", field="video")):
        with pytest.raises(DataError) as e:
            read()
        assert str(e.value) == "v.jsonl, record r, field 'video': video clips/bad_image.mp4 is an image file " \
            f"({fmt}), not a video"


def _pad_with_free_box(path: Path, size: int) -> Path:
    """`path` (an MP4) with a top-level `free` box appended up to `size` bytes in all (a sparse file: no disk used)."""
    n = size - path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(0, 2)
        f.write(n.to_bytes(4, "big") + b"free")
        f.truncate(size)
    return path


def test_a_video_file_is_hashed_and_decoded_without_holding_it_in_memory(tmp_path):
    """QA: a 600 MB padded mp4 took 631 MB of Python memory to give 8 frames: `load_video` read the whole file
    (`read_bytes`) to hash it for the frame cache and decoded from those bytes. Now the file is hashed in chunks
    and decoded from the open file: memory does not grow with its size. The cache key is the same value as before
    (the SHA-1 of the file's bytes, then the sampling and the aspect-ratio limit), computed here independently."""
    import hashlib
    import tracemalloc
    from dataclasses import astuple

    small = write_clip(tmp_path / "small.mp4")
    padded = _pad_with_free_box(write_clip(tmp_path / "padded.mp4"), 50 * 1024 * 1024)
    sampling = VideoSampling()
    FRAME_CACHE.clear()
    tracemalloc.start()
    try:
        v = ImageLoader(tmp_path).load_video(Item.from_dict({"video": "padded.mp4"}).video)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < padded.stat().st_size / 4, peak
    ref = ImageLoader(tmp_path).load_video(["small.mp4"])
    assert v.frame_indices == ref.frame_indices == (0, 3, 5, 8, 11, 14, 16, 19)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(v, ref))

    def old_key(p: Path) -> str:
        return hashlib.sha1(p.read_bytes() + repr((astuple(sampling), None)).encode()).hexdigest()

    assert set(FRAME_CACHE._entries) == {old_key(padded), old_key(small)}
    # an in-memory video (inline bytes) is read as before, under the same key as its file
    FRAME_CACHE.clear()
    inline = ImageLoader(tmp_path).load_video([small.read_bytes()])
    assert inline.frame_indices == ref.frame_indices and set(FRAME_CACHE._entries) == {old_key(small)}
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(inline, ref))
    FRAME_CACHE.clear()


def test_an_animated_gif_is_one_video_file_in_every_form_and_an_image_as_an_image(tmp_path):
    """QA: an animated GIF given as a one-entry frame list (``{"video": ["clips/anim.gif"]}``, MMEB-V2's
    ``"query_image": [{"paths": ["clips/anim.gif"]}]``) was its first frame twice, where ``{"video": "clips/anim.gif"}``
    gave 8 of its 10 frames: every form now reads it as the video file it is. As an image it stays its first frame."""
    from PIL import Image

    from tests.data.helpers import QRY_V, VID
    from unime.data.io import ImageChecker
    from unime.data.mmeb_v2 import v2_row_from_dict

    gif = animated_gif(tmp_path / "clips" / "anim.gif")
    loader = ImageLoader(tmp_path)

    def mmeb_query(text):
        return v2_row_from_dict({"query_text": [text], "query_image": [{"paths": ["clips/anim.gif"]}],
                                 "cand_text": ["a"], "cand_image": [None],
                                 "dataset_infos": {"cand_names": ["a"], "label_name": "a"}}).query

    forms = {"list": Item.from_dict({"video": ["clips/anim.gif"]}),
             "alone": Item.from_dict({"video": "clips/anim.gif"}),
             "mmeb_v2": mmeb_query(f"{VID} {QRY_V}"), "inline": Item(video=(gif.read_bytes(),))}
    for form, item in forms.items():
        FRAME_CACHE.clear()
        v = loader.load_video(item.video)
        assert (v.frame_indices, v.total_frames, v.fps) == ((0, 1, 3, 4, 5, 6, 8, 9), 10, 10.0), form
        assert [_red(f) for f in v] == pytest.approx([25 * i for i in v.frame_indices], abs=1), form
        for decode in (True, False):
            ImageChecker(loader, decode_video=decode).check_item("query", item, source="q.jsonl", record=1)
    # as an image (an item's "image", an MMEB-V2 visual without a video token): its first frame
    for item in (Item.from_dict({"image": "clips/anim.gif"}), mmeb_query(QRY_V)):
        assert item.images == ("clips/anim.gif",) and not item.video
        first = loader.load(item.images[0])
        assert first.size == (32, 24) and _red(first) == 0
    # a still image in a one-entry list stays one frame (padded to a temporal patch), a GIF of one frame too
    Image.new("RGB", (32, 24), (90, 0, 0)).save(tmp_path / "still.gif")
    Image.new("RGB", (32, 24), (90, 0, 0)).save(tmp_path / "still.png")
    for ref in ("still.gif", "still.png"):
        v = loader.load_video([ref])
        assert (v.frame_indices, v.total_frames, v.source) == ((0, 0), 1, "<frame list>"), ref
    FRAME_CACHE.clear()


@pytest.mark.parametrize("fmt,codec,name", [("ipod", "aac", "voice.m4a"), ("mp3", "libmp3lame", "song.mp3"),
                                            ("flac", "flac", "song.flac"), ("wav", "pcm_s16le", "song.wav"),
                                            ("adts", "aac", "song.aac")])
def test_an_audio_file_in_a_one_entry_frame_list_is_said_to_have_no_video_stream(tmp_path, fmt, codec, name):
    """QA: an audio-only .m4a in a `paths` list was "corrupt or unreadable image ...: not in an image format PIL can
    read", as a record's "video" "has no video stream": a media container in a one-entry list is a video file. So
    are, later (QA), an .mp3, FLAC, WAV or raw AAC file (no video container's signature), in a list or inline."""
    from unime.data.io import ImageChecker

    c = av.open(str(tmp_path / name), "w", format=fmt)
    _mux_silence(c, c.add_stream(codec, rate=48000), 1.0, frame_size=1152 if codec == "libmp3lame" else 1024,
                 integer=codec in ("pcm_s16le", "flac"))
    c.close()
    loader = ImageLoader(tmp_path)
    for item, shown in ((Item.from_dict({"video": [name]}), name), (Item.from_dict({"video": name}), name),
                        (Item(video=((tmp_path / name).read_bytes(),)), "")):
        said = f"video {shown} has no video stream" if shown else "has no video stream"
        with pytest.raises(DataError, match=said):
            loader.load_video(item.video, source="v.jsonl", record=1, field="video")
        for decode in (True, False):
            with pytest.raises(DataError, match=said):
                ImageChecker(loader, decode_video=decode).check_item("query", item, source="v.jsonl", record=1)
    with pytest.raises(DataError, match="not in an image format PIL can read"):  # as an image: an image's message
        loader.load(name)


def _with_cover_art(path: Path, *, video: bool = True, audio: bool = False, cover_first: bool = False) -> Path:
    """An MP4 with a cover art stream (a green 40 x 30 JPEG of disposition ``attached_pic``, as yt-dlp
    --embed-thumbnail and iTunes write it: FFmpeg's ``covr`` atom) and, with `video`, an H.264 stream of
    `_mux_red_frames`' 20 frames at 10 fps (64 x 48); with `audio`, a second of silence. `cover_first`: the ``udta``
    box holding the cover is moved before the tracks in ``moov`` (which follows ``mdat``, so no offset moves), and
    FFmpeg lists the cover as the first video stream."""
    import io
    import struct

    from PIL import Image

    c = av.open(str(path), "w", format="mp4")
    cover = c.add_stream("mjpeg")
    cover.width, cover.height, cover.pix_fmt = 40, 30, "yuvj420p"
    cover.disposition = av.stream.Disposition.attached_pic
    if video:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        _mux_red_frames(c, s, 20)
    if audio:
        _mux_silence(c, c.add_stream("aac", rate=48000), 1.0)
    jpeg = io.BytesIO()
    Image.new("RGB", (40, 30), (0, 200, 0)).save(jpeg, "JPEG")
    packet = av.Packet(jpeg.getvalue())
    packet.stream, packet.pts, packet.dts = cover, 0, 0
    c.mux(packet)
    c.close()
    if cover_first:
        data = bytearray(path.read_bytes())

        def boxes(start: int, end: int) -> list[tuple[bytes, int, int]]:
            out = []
            while start < end:
                size = struct.unpack(">I", data[start:start + 4])[0]
                out.append((bytes(data[start + 4:start + 8]), start, size))
                start += size
            return out

        [(_, at, size)] = [b for b in boxes(0, len(data)) if b[0] == b"moov"]
        kids = sorted(boxes(at + 8, at + size), key=lambda b: {b"mvhd": 0, b"udta": 1}.get(b[0], 2))
        data[at + 8:at + size] = b"".join(bytes(data[i:i + n]) for _, i, n in kids)
        path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("cover_first", [False, True])
def test_a_video_with_cover_art_is_its_video_stream_and_cover_art_alone_is_no_video(tmp_path, cover_first):
    """A file with an embedded thumbnail (a video stream of disposition attached_pic, one JPEG) is its real video:
    its 20 frames at 10 fps, probed and decoded, whichever stream FFmpeg lists first; the cover first was decoded
    as a one-frame "video" (and then failed on a TypeError). Cover art without a video is no video."""
    from unime.data.io import ImageChecker
    from unime.data.video import probe_video_file

    path = _with_cover_art(tmp_path / "clip.mp4", cover_first=cover_first)
    with av.open(str(path)) as c:  # the file is what the test means: the cover is where it says
        kinds = [(s.codec_context.name, bool(s.disposition & av.stream.Disposition.attached_pic))
                 for s in c.streams.video]
    assert kinds == ([("mjpeg", True), ("h264", False)] if cover_first else [("h264", False), ("mjpeg", True)])
    loader = ImageLoader(tmp_path)
    probe_video_file(loader, "clip.mp4")
    FRAME_CACHE.clear()
    v = loader.load_video(["clip.mp4"])
    assert (v.fps, v.total_frames, v.duration) == (10.0, 20, 2.0)
    assert v.frame_indices == tuple(uniform_indices(20, 8)) and v.frames[0].size == (64, 48)
    assert [round(_red(f) / 12) for f in v.frames] == list(v.frame_indices)  # frame i has red 12 * i
    FRAME_CACHE.clear()
    for name, kwargs in (("cover.mp4", {}), ("song.m4a", {"audio": True})):
        _with_cover_art(tmp_path / name, video=False, **kwargs)
        item = Item.from_dict({"video": name})
        message = f"v.jsonl, record 3, field 'video': video {name} has no video stream except cover art"
        with pytest.raises(DataError) as e:
            loader.load_video(item.video, source="v.jsonl", record=3, field="video")
        assert str(e.value) == message
        for decode in (True, False):
            with pytest.raises(DataError, match="has no video stream except cover art"):
                ImageChecker(loader, decode_video=decode).check_item("query", item, source="v.jsonl", record=3)
    FRAME_CACHE.clear()


def _ftyp(major: bytes, *compatible: bytes) -> bytes:
    """An ISO-BMFF file's leading ``ftyp`` box: its size, the major brand, minor version 0, the compatible brands."""
    body = major + b"\0\0\0\0" + b"".join(compatible)
    return (8 + len(body)).to_bytes(4, "big") + b"ftyp" + body


def test_a_media_container_is_told_from_an_image_by_its_first_bytes():
    """QA: inline AVIF / HEIC image bytes were videos for their ``ftyp`` box, Ogg, FLV, ASF and MPEG-TS/PS files
    were no media containers. Minimal hand-made headers (bytes as the formats' specifications lay them out) against
    `is_video_file_ref`, which judges inline bytes by them alone."""
    mdat = b"\0\0\0\x10mdat" + b"\x11" * 8
    videos = {"mp4": _ftyp(b"isom", b"isom", b"iso2", b"avc1", b"mp41"), "mp42": _ftyp(b"mp42", b"mp42", b"isom"),
              "mov": _ftyp(b"qt  ", b"qt  "), "m4v": _ftyp(b"M4V ", b"M4V ", b"M4A ", b"mp42", b"isom"),
              "avc1": _ftyp(b"avc1"), "iso5": _ftyp(b"iso5", b"iso6", b"mp41"), "3gp": _ftyp(b"3gp5", b"3gp5", b"isom"),
              "dash": _ftyp(b"dash", b"iso6", b"mp41"),
              "animated avif": _ftyp(b"avis", b"avif", b"avis", b"msf1", b"iso8", b"mif1", b"miaf"),
              "unknown brand, mp4's compatible": _ftyp(b"XAVC", b"XAVC", b"mp42", b"iso2"),
              "HEVC sequence, an image's brand too": _ftyp(b"XXXX", b"mif1", b"hevc"),
              "ogg": b"OggS\0\x02" + b"\0" * 20, "flv": b"FLV\x01\x05\0\0\0\x09\0\0\0\0",
              "asf": bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c") + b"\0" * 14,
              "mpeg-ts": b"".join(b"\x47\x40\x11\x10" + bytes(184) for _ in range(4)),
              "m2ts": b"".join(b"\0\0\0\0\x47\x40\x11\x10" + bytes(184) for _ in range(4)),
              "mpeg-ps": b"\0\0\x01\xba\x44\0\x04\0\x04\x01" + bytes(20),
              "mkv": b"\x1a\x45\xdf\xa3" + bytes(20), "avi": b"RIFF\0\0\0\0AVI LIST"}
    images = {"avif": _ftyp(b"avif", b"avif", b"mif1", b"miaf", b"MA1B"), "heic": _ftyp(b"heic", b"mif1", b"heic"),
              "heix": _ftyp(b"heix", b"mif1", b"heix"), "heim": _ftyp(b"heim", b"mif1", b"heim"),
              "heis": _ftyp(b"heis", b"mif1", b"heis"), "mif1": _ftyp(b"mif1", b"heic"),
              "msf1": _ftyp(b"msf1", b"msf1", b"mif1"),
              "unknown brand, an image's compatible": _ftyp(b"XXXX", b"mif1", b"heic", b"miaf"),
              "png": b"\x89PNG\r\n\x1a\n" + bytes(400), "jpeg": b"\xff\xd8\xff\xe0" + bytes(400),
              "webp": b"RIFF\0\0\0\0WEBPVP8 " + bytes(400), "text": b"Good morning. " * 80, "Gs": b"G" * 800,
              # a GIF's first byte is an MPEG-TS sync byte: three in a row at 188-byte steps are not a stream
              "gif": b"".join(b"GIF89a" + b"\x47" * 182 for _ in range(4))}
    assert all(is_video_file_ref(head + mdat) for head in videos.values()), [
        name for name, head in videos.items() if not is_video_file_ref(head + mdat)]
    assert not any(is_video_file_ref(head + mdat) for head in images.values()), [
        name for name, head in images.items() if is_video_file_ref(head + mdat)]
    from unime.data.video import is_image_brand

    assert not any(is_image_brand(head) for head in videos.values())
    assert [name for name, head in images.items() if is_image_brand(head)] == [
        name for name, head in images.items() if head[4:8] == b"ftyp"]


@pytest.mark.parametrize("container, codec", [("ogg", "libvpx"), ("flv", "flv"), ("asf", "wmv2"),
                                              ("mpegts", "mpeg2video"), ("mpeg", "mpeg2video")])
def test_an_ogg_flv_asf_or_mpeg_file_of_any_name_in_a_one_entry_list_is_a_video(tmp_path, container, codec):
    """QA: an Ogg, FLV, WMV/ASF, MPEG-TS or MPEG-PS file without a video extension in a one-entry list (MMEB-V2's
    ``{"paths": [...]}``) was read as an image ("not in an image format PIL can read"): it is the video the path
    given alone is, inline bytes too (the frames PyAV decodes from it as a named video file)."""
    from unime.data.io import ImageChecker

    (tmp_path / "clips").mkdir()
    clip = write_clip(tmp_path / "clips" / "c.bin", codec=codec, container=container)
    (tmp_path / "clips" / "c.video").write_bytes(clip.read_bytes())
    loader = ImageLoader(tmp_path)
    FRAME_CACHE.clear()
    named = loader.load_video(Item.from_dict({"video": "clips/c.video"}).video)  # the path alone: a video file
    assert named.frame_indices == (0, 3, 5, 8, 11, 14, 16, 19) and named.total_frames == 20
    assert [_red(f) for f in named] == pytest.approx([12 * i for i in named.frame_indices], abs=8)
    for item in (Item.from_dict({"video": ["clips/c.bin"]}), Item(video=(clip.read_bytes(),))):
        FRAME_CACHE.clear()
        v = loader.load_video(item.video)
        assert (v.frame_indices, v.total_frames, v.fps) == (named.frame_indices, 20, named.fps)
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(v, named))
        for decode in (True, False):
            ImageChecker(loader, decode_video=decode).check_item("query", item, source="q.jsonl", record=1)
    FRAME_CACHE.clear()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "AVIF"])
def test_an_apng_or_animated_webp_or_avif_is_a_video_as_an_animated_gif_is(tmp_path, fmt):
    """QA: an APNG or an animated WebP as an item's one video entry was its first frame twice (the path alone or
    named .mp4: refused, FFmpeg reads one frame of it or none), where an animated GIF is its frames; an animated
    AVIF was its still image alone (FFmpeg's first stream), one frame. Now each gives the frames the GIF of the same
    frames and delays gives (PyAV's reading of the GIF: an independent decoder; AVIF's lossy pixels within 3 of the
    GIF's), at a constant and at a variable frame rate, in every form; a still image stays one frame, and as an
    image an animation stays its first frame."""
    from PIL import Image, features

    from unime.data.io import ImageChecker

    if fmt == "AVIF" and not features.check("avif"):
        pytest.skip("this Pillow writes no AVIF")
    loader = ImageLoader(tmp_path)
    ext = fmt.lower()
    for delays in (100, [100, 100, 200, 100, 300, 100, 100, 50, 100, 100]):
        gif = animated_gif(tmp_path / "anim.gif", duration=delays)
        animation = animated_gif(tmp_path / f"anim.{ext}", duration=delays, fmt=fmt)
        for other in ("anim.bin", "anim.mp4"):
            (tmp_path / other).write_bytes(animation.read_bytes())
        FRAME_CACHE.clear()
        ref = loader.load_video([gif.name])
        assert ref.frame_indices == ((0, 1, 3, 4, 5, 6, 8, 9) if delays == 100 else (0, 2, 3, 4, 5, 5, 7, 9))
        forms = {"list": Item.from_dict({"video": [animation.name]}),
                 "other name": Item.from_dict({"video": ["anim.bin"]}),
                 "video extension": Item.from_dict({"video": ["anim.mp4"]}),
                 "alone": Item.from_dict({"video": animation.name}), "inline": Item(video=(animation.read_bytes(),))}
        for form, item in forms.items():
            FRAME_CACHE.clear()
            v = loader.load_video(item.video)
            assert (v.frame_indices, v.total_frames, v.timestamps, v.duration) == (
                ref.frame_indices, ref.total_frames, ref.timestamps, ref.duration), (form, delays)
            assert v.processor_metadata() == ref.processor_metadata(), (form, delays)
            assert len(v) == len(ref) and all(
                np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= (3 if fmt == "AVIF" else 0)
                for a, b in zip(v, ref)), (form, delays)
            for decode in (True, False):
                ImageChecker(loader, decode_video=decode).check_item("query", item, source="q.jsonl", record=1)
    assert ref.frame_times is not None  # the unequal delays: a variable frame rate
    first = loader.load(animation.name)  # as an image: its first frame
    assert first.size == (32, 24) and _red(first) == pytest.approx(0, abs=3)
    Image.new("RGB", (32, 24), (90, 0, 0)).save(tmp_path / f"still.{ext}")
    v = loader.load_video([f"still.{ext}"])
    assert (v.frame_indices, v.total_frames, v.source) == ((0, 0), 1, "<frame list>")
    FRAME_CACHE.clear()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_a_too_long_animation_is_refused_naming_the_file_and_the_limit_before_its_frames_are_decoded(tmp_path, fmt,
                                                                                                    monkeypatch):
    """QA: an APNG or animated WebP had every frame decoded to read its delays (a 10,000-frame one in full) before
    the duration limit refused it, as a "corrupt video"; its header probe checked its frame size alone. Its delays are
    now read from its chunks: a duration over the limit, or more frames than the limit at 100 frames per second, is
    refused by the probe and the decoder alike, naming the file and the limit, without decoding a frame (PIL's
    frame reading is made to fail here to show it is not reached)."""
    from PIL import Image

    from unime.data.io import ImageChecker
    from unime.data.video import probe_video_file

    frames = [Image.new("RGB", (32, 24), (6 * i, 0, 0)) for i in range(40)]  # 40 frames of 0.25 s: 10 s
    frames[0].save(tmp_path / "long.bin", format=fmt, save_all=True, append_images=frames[1:], duration=250, loop=0,
                   **({"lossless": True} if fmt == "WEBP" else {}))
    loader = ImageLoader(tmp_path)
    monkeypatch.setattr(Image.Image, "load", lambda self: (_ for _ in ()).throw(AssertionError("a frame decoded")))
    item = Item.from_dict({"video": "long.bin"})
    for sampling, message in (
            (VideoSampling(max_duration_s=9.0), "video long.bin lasts over the limit 9 s: its first 37 of 40 frames "
                                                "last 9.2 s"),
            (VideoSampling(max_duration_s=0.25), "video long.bin has 40 frames, over the limit 25 (0.25 s at 100 "
                                                 "frames per second, the fastest an animation is taken to play)")):
        loader.video_sampling = sampling
        FRAME_CACHE.clear()
        with pytest.raises(DataError) as e:
            loader.load_video(item.video, source="v.jsonl", record=2, field="video")
        assert str(e.value) == f"v.jsonl, record 2, field 'video': {message}"
        with pytest.raises(DataError) as e:
            probe_video_file(loader, "long.bin", sampling, source="v.jsonl", record=2, field="video")
        assert str(e.value) == f"v.jsonl, record 2, field 'video': {message}"
        for decode in (True, False):
            with pytest.raises(DataError, match="over the limit"):
                ImageChecker(loader, decode_video=decode).check_item("query", item, source="v.jsonl", record=2)
    FRAME_CACHE.clear()


def test_an_animation_s_delays_read_from_its_chunks_are_pil_s_and_sample_the_frames_pil_s_reading_samples(tmp_path):
    """The delays `_chunk_delays` reads from an APNG's fcTL / an animated WebP's ANMF chunks are those PIL gives after
    decoding each frame (a default image before an APNG's animation: a frame without one; a fraction of a
    millisecond; a delay of 0), and the frames sampled with them are those sampled with PIL's reading (every frame
    decoded), pixel for pixel, at a constant and at a variable frame rate."""
    from unittest import mock

    from PIL import Image

    import unime.data.video as video

    frames = [Image.new("RGB", (32, 24), (20 * i, 5 * i, 90)) for i in range(12)]
    files = {"const.png": ({}, "PNG"), "frac.png": ({"duration": 100 / 3}, "PNG"),
             "vary.png": ({"duration": [40, 0, 250, 100, 1000, 60, 70, 80, 90, 20, 30, 110]}, "PNG"),
             "default.png": ({"duration": [50 + 10 * i for i in range(11)], "default_image": True}, "PNG"),
             "const.webp": ({"lossless": True}, "WEBP"),
             "vary.webp": ({"duration": [40, 0, 250, 100, 1000, 60, 70, 80, 90, 20, 30, 110], "lossless": True},
                           "WEBP")}
    for name, (kwargs, fmt) in files.items():
        path = tmp_path / name
        frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], loop=0,
                       **{"duration": 80, **kwargs})
        with Image.open(path) as img:
            pil = []
            for i in range(img.n_frames):
                img.seek(i)
                img.load()
                pil.append(img.info.get("duration"))
            with path.open("rb") as fh:
                assert video._chunk_delays(fh, img.format, img.n_frames) == pil, name
        assert len(set(pil)) > 1 or name.startswith(("const", "frac"))
        assert (pil[0] is None) == (name == "default.png")  # PIL's default image is a frame without a delay
        for sampling in (VideoSampling(), VideoSampling(num_frames=None, fps=3.0)):
            read = video.decode_video(path.read_bytes(), sampling, name=name)
            with mock.patch.object(video, "_chunk_delays", return_value=None):  # PIL's reading of the delays
                decoded = video.decode_video(path.read_bytes(), sampling, name=name)
            assert decoded.decoded_frames == len(pil) and read.decoded_frames == max(read.frame_indices) + 1
            assert (read.frame_indices, read.fps, read.total_frames, read.frame_times, read.span) == (
                decoded.frame_indices, decoded.fps, decoded.total_frames, decoded.frame_times, decoded.span), name
            assert [f.tobytes() for f in read.frames] == [f.tobytes() for f in decoded.frames], name


def _heic(path: Path) -> Path:
    """A HEIC file's first boxes by hand (an ``ftyp`` of brand heic, a ``meta`` box): PIL here reads no HEIC."""
    path.write_bytes(_ftyp(b"heic", b"mif1", b"heic") + b"\0\0\0\x20meta" + bytes(24))
    return path


def test_an_avif_or_heic_image_in_a_one_entry_list_is_an_image_not_a_video(tmp_path, monkeypatch):
    """QA: the inline bytes of an AVIF or HEIC image (an ISO-BMFF ``ftyp`` box, as an MP4's) were a video file; a
    HEIC file PIL cannot read, in a one-entry list, a video decode failure. An AVIF image is one frame (the image
    loader's pixels); a HEIC one PIL cannot read is an error naming the record, the field and pillow-heif; an
    animated AVIF stays a video."""
    from PIL import Image, features

    import unime.data.images as images
    from unime.data.io import ImageChecker
    from unime.data.mmeb_v2 import v2_row_from_dict

    if not features.check("avif"):
        pytest.skip("this Pillow writes no AVIF")
    loader = ImageLoader(tmp_path)
    frames = [Image.new("RGB", (32, 24), (25 * i, 200, 0)) for i in range(4)]
    frames[0].save(tmp_path / "still.avif")
    frames[0].save(tmp_path / "anim.avif", save_all=True, append_images=frames[1:], duration=100)
    still = (tmp_path / "still.avif").read_bytes()
    assert not is_video_file_ref(still) and is_video_file_ref((tmp_path / "anim.avif").read_bytes())
    image = loader.load(still)
    for item in (Item(video=(still,)), Item.from_dict({"video": ["still.avif"]})):
        FRAME_CACHE.clear()
        v = loader.load_video(item.video)
        assert (v.frame_indices, v.total_frames, v.fps, v.source) == ((0, 0), 1, 2.0, "<frame list>")
        assert np.array_equal(np.asarray(v[0]), np.asarray(image))
    row = v2_row_from_dict({"query_text": ["what is it?"], "query_image": [{"paths": ["x"], "bytes": [still]}],
                            "cand_text": ["a"], "cand_image": [None],
                            "dataset_infos": {"cand_names": ["a"], "label_name": "a"}})
    assert row.query.images == (still,) and not row.query.video  # MMEB-V2's inline image: an image

    monkeypatch.setattr(images, "_PLUGINS_LOADED", {}, raising=False)
    monkeypatch.setitem(__import__("sys").modules, "pillow_heif", None)  # not installed: its import fails
    heic = _heic(tmp_path / "photo.heic")
    said = ("is a HEIF / HEIC image, which PIL cannot read without the pillow-heif package "
            "(pip install pillow-heif)")
    for item, field, name in ((Item.from_dict({"video": ["photo.heic"]}), "video[0]", "photo.heic"),
                              (Item(video=(heic.read_bytes(),)), "video[0]", "<inline bytes>")):
        with pytest.raises(DataError) as e:
            loader.load_video(item.video, source="v.jsonl", record=1, field="video")
        assert str(e.value) == f"v.jsonl, record 1, field '{field}': image {name} {said}"
        with pytest.raises(DataError, match="pip install pillow-heif"):
            ImageChecker(loader).check_item("query", item, source="v.jsonl", record=1)
    with pytest.raises(DataError) as e:
        loader.load("photo.heic", source="v.jsonl", record=1, field="image")
    assert str(e.value) == f"v.jsonl, record 1, field 'image': image photo.heic {said}"
    FRAME_CACHE.clear()


def test_an_avif_image_pil_cannot_read_says_whether_a_plugin_is_missing(tmp_path, monkeypatch):
    """A corrupt AVIF image (its ``ftyp`` box, no image) is corrupt where PIL reads AVIF; where it does not (a Pillow
    built without libavif), the message says what to install."""
    import sys

    import unime.data.images as images

    bad = _ftyp(b"avif", b"avif", b"mif1", b"miaf") + b"\0\0\0\x20meta" + bytes(24)
    loader = ImageLoader(tmp_path)
    monkeypatch.setattr(images, "_PLUGINS_LOADED", {}, raising=False)
    monkeypatch.setitem(sys.modules, "pillow_avif", None)  # not installed: its import fails
    monkeypatch.setattr(images, "_pil_reads_avif", lambda: True, raising=False)
    with pytest.raises(DataError) as e:
        loader.load(bad, source="s.jsonl", record=2, field="image")
    assert str(e.value) == ("s.jsonl, record 2, field 'image': corrupt or unreadable image <inline bytes>: an AVIF "
                            "image that PIL's AVIF reader cannot read")
    monkeypatch.setattr(images, "_pil_reads_avif", lambda: False)
    with pytest.raises(DataError) as e:
        loader.load(bad, source="s.jsonl", record=2, field="image")
    assert str(e.value) == ("s.jsonl, record 2, field 'image': image <inline bytes> is an AVIF image, which PIL cannot "
                            "read without the pillow-avif-plugin package (pip install pillow-avif-plugin)")


def test_a_heic_image_is_read_by_pillow_heif_once_it_is_installed(tmp_path, monkeypatch):
    """The message says to install pillow-heif: once it is, the image loader registers its reader (its
    register_heif_opener) and reads the image. pillow-heif stands in here for a reader of a made-up HEIC: a PNG
    after its ``ftyp`` box."""
    import io
    import sys
    import types

    from PIL import Image, PngImagePlugin

    import unime.data.images as images

    def opener(fp, filename=None):
        return PngImagePlugin.PngImageFile(io.BytesIO(fp.read()[len(_ftyp(b"heic", b"mif1")):]))

    def register_heif_opener():
        Image.register_open("FAKEHEIF", opener, lambda prefix: prefix[4:12] == b"ftypheic")

    monkeypatch.setattr(images, "_PLUGINS_LOADED", {}, raising=False)
    monkeypatch.setitem(sys.modules, "pillow_heif", types.SimpleNamespace(register_heif_opener=register_heif_opener))
    png = io.BytesIO()
    Image.new("RGB", (8, 6), (10, 200, 30)).save(png, format="PNG")
    (tmp_path / "photo.heic").write_bytes(_ftyp(b"heic", b"mif1") + png.getvalue())
    try:
        for ref in ("photo.heic", (tmp_path / "photo.heic").read_bytes()):
            img = ImageLoader(tmp_path).load(ref)
            assert img.size == (8, 6) and img.getpixel((3, 3)) == (10, 200, 30)
        v = ImageLoader(tmp_path).load_video(["photo.heic"])  # a one-entry list: one frame
        assert (v.frame_indices, v.source, v[0].getpixel((0, 0))) == ((0, 0), "<frame list>", (10, 200, 30))
    finally:
        Image.OPEN.pop("FAKEHEIF", None)
        if "FAKEHEIF" in Image.ID:
            Image.ID.remove("FAKEHEIF")
    FRAME_CACHE.clear()


# -- a video stream without a decodable frame ------------------------------------------------------------

def _frameless_clip(path: Path, codec: str = "mpeg4", *, audio: bool = False, options=None) -> Path:
    """A container with a 64 x 48 video stream of `codec` and no packet (the header written, no frame muxed); with
    `audio`, a second of silence beside it (the file then holds packets, none of them video)."""
    c = av.open(str(path), "w", options=options or {})
    s = c.add_stream(codec, rate=10)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    if audio:
        _mux_silence(c, c.add_stream("libopus" if path.suffix == ".webm" else "aac", rate=48000), 1.0)
    else:
        c.start_encoding()
    c.close()
    return path


def _garbled_clip(path: Path, codec: str = "mpeg4", n: int = 5) -> Path:
    """`n` frames encoded by `codec`, each packet muxed with its bytes replaced by as many seeded random ones (its
    time stamps and keyframe flag kept): a header FFmpeg reads, `n` packets none of which decodes."""
    import random

    rng = random.Random(0)
    c = av.open(str(path), "w")
    s = c.add_stream(codec, rate=10)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    frames = [av.VideoFrame.from_ndarray(np.full((48, 64, 3), 12 * i, np.uint8), format="rgb24") for i in range(n)]
    for packet in [p for f in [*frames, None] for p in s.encode(f)]:
        bad = av.Packet(bytes(rng.randrange(256) for _ in range(packet.size)))
        bad.stream, bad.time_base, bad.is_keyframe = s, packet.time_base, packet.is_keyframe
        bad.pts, bad.dts, bad.duration = packet.pts, packet.dts, packet.duration
        c.mux(bad)
    c.close()
    return path


def _no_frame_corpus(root: Path) -> dict[str, str]:
    """Files whose video stream gives no frame, and what is said of each (by hand: 5 frames encoded, 5 packets)."""
    none = "its video stream has no frames"
    _frameless_clip(root / "empty.mkv")  # Matroska / WebM: no cluster, FFmpeg's demuxer stops at "End of file"
    _frameless_clip(root / "empty.webm", "libvpx")
    _frameless_clip(root / "empty.avi")  # its header says 0 frames
    _frameless_clip(root / "silent.mkv", audio=True)  # clusters of audio, no video packet
    _frameless_clip(root / "silent.webm", "libvpx", audio=True)
    # a fragmented MP4's empty moov (a recording stopped before its first fragment): no frame size for MPEG-4 Part 2
    _frameless_clip(root / "frag.mp4", options={"movflags": "frag_keyframe+empty_moov"})
    _frameless_clip(root / "frag264.mp4", "libx264", options={"movflags": "frag_keyframe+empty_moov"})
    _garbled_clip(root / "garbled.mkv")
    _garbled_clip(root / "garbled.webm", "libvpx")
    _garbled_clip(root / "garbled.mp4")  # MPEG-4 Part 2 in MP4: FFmpeg finds no frame size without a frame
    return {**{f: f"empty video {f}: {none}" for f in ("empty.mkv", "empty.webm", "empty.avi", "silent.mkv",
                                                         "silent.webm", "frag.mp4", "frag264.mp4")},
            **{f: f"corrupt video {f}: none of its 5 packet(s) decode" for f in ("garbled.mkv", "garbled.webm",
                                                                                 "garbled.mp4")}}


def test_a_video_stream_without_a_decodable_frame_is_said_to_be_empty_or_to_have_no_packet_that_decodes(tmp_path):
    """A video stream of no packet (.mkv, .webm, .avi, a fragmented .mp4's empty moov, clusters of audio alone) or of
    packets none of which decodes was "corrupt or unreadable video X: End of file", "announces no frames", "has an
    empty frame size 0x0", "corrupt or unseekable video X: [Errno 1094995529] Invalid data ..." or "it decoded 0
    frames once, not again: max() arg is an empty sequence": decoding it, probing its header and `data check` say
    what is wrong, naming the record and the field."""
    import re

    from unime.data.io import ImageChecker
    from unime.data.video import probe_video_file

    expected = _no_frame_corpus(tmp_path)
    loader = ImageLoader(tmp_path)
    for name, message in expected.items():
        where = {"source": "v.jsonl", "record": name, "field": "query.video"}
        readers = {"file": lambda: loader.load_video([name], **where),
                   "bytes": lambda: loader.load_video([(tmp_path / name).read_bytes()], **where),
                   "probe": lambda: probe_video_file(loader, name, **where)}
        for how, read in readers.items():
            FRAME_CACHE.clear()
            if how == "probe" and name in ("garbled.mkv", "garbled.webm", "silent.mkv", "silent.webm"):
                read()  # a whole header with a frame size (and a duration, the audio's): the probe decodes nothing
                continue
            with pytest.raises(DataError) as e:
                read()
            said = message if how != "bytes" else message.replace(name, "<inline video bytes>")
            assert str(e.value).startswith(f"v.jsonl, record {name}, field 'query.video': {said}"), (how, str(e.value))
            assert (e.value.source, e.value.record, e.value.field) == ("v.jsonl", name, "query.video")
        with pytest.raises(DataError, match=re.escape(message)):
            ImageChecker(loader).check_item("query", Item.from_dict({"video": name}), source="v.jsonl", record=1)
    # a Matroska file cut in its header: FFmpeg's words stand, no frame nor video stream is claimed (a whole one of no
    # cluster and no video track, an audio track alone, has no video stream: `test_an_audio_only_file_...`)
    (tmp_path / "cut.mkv").write_bytes((tmp_path / "empty.mkv").read_bytes()[:300])
    with pytest.raises(DataError, match="corrupt or unreadable video cut.mkv: (End of file|Input/output error)"):
        loader.load_video(["cut.mkv"])
    FRAME_CACHE.clear()


def _data_check_skips(tmp_path: Path, capsys, names) -> tuple[Path, list[str]]:
    """`unime data check` of a records file (r.jsonl in `tmp_path`) of one record per video file of `names`, its
    positive the video alone, each record skipped as bad video: (the file, the lines naming each)."""
    import json

    from unime.cli import main

    f = tmp_path / "r.jsonl"
    f.write_text("".join(json.dumps({"id": name, "query": {"text": "q"}, "positive": {"video": name}}) + "\n"
                         for name in names))
    FRAME_CACHE.clear()
    assert main(["data", "check", str(f)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[1] == f"skipped {len(names)} record(s) (video: {len(names)})", out
    FRAME_CACHE.clear()
    return f, out[2:]


def test_data_check_says_which_videos_have_no_frame_and_which_have_no_packet_that_decodes(tmp_path, capsys):
    expected = _no_frame_corpus(tmp_path)
    f, lines = _data_check_skips(tmp_path, capsys, list(expected))
    for line, (name, message) in zip(lines, expected.items()):
        assert line.startswith(f"  - {f}, record line ") and f"(id {name}), field 'positive.video[0]': {message}" \
            in line, (name, line)
    FRAME_CACHE.clear()


# -- an audio-only file, a clip whose packets are garbage ------------------------------------------------------

def _audio_only(path: Path, *, packets: bool = True) -> Path:
    """A file of one audio track (Opus in .webm, AAC otherwise): a second of silence, or with `packets=False` the
    header alone (no frame muxed: a Matroska / WebM file of no cluster)."""
    c = av.open(str(path), "w")
    a = c.add_stream("libopus" if path.suffix == ".webm" else "aac", rate=48000)
    if packets:
        _mux_silence(c, a, 1.0)
    else:
        c.start_encoding()
    c.close()
    return path


def test_an_audio_only_file_is_said_to_have_no_video_stream_by_the_probe_the_readers_and_data_check(tmp_path, capsys):
    """An audio track alone (.mkv, .webm, .mp4), with its packets or its header alone, is "video X has no video
    stream", naming the record and the field, from its header (the probe), when it is read (a file, bytes) and by
    `unime data check`. A Matroska / WebM file of an audio track and no cluster was "corrupt or unreadable video X:
    End of file" (FFmpeg's demuxer gives up looking for a cluster), where the same file in MP4 had no video stream."""
    from unime.data.video import probe_video_file

    names = ["audio.mkv", "audio.webm", "audio.mp4", "mute.mkv", "mute.webm", "mute.mp4"]
    for name in names:
        _audio_only(tmp_path / name, packets=name.startswith("audio"))
    loader = ImageLoader(tmp_path)
    for name in names:
        where = {"source": "v.jsonl", "record": 4, "field": "positive.video"}
        for how, read in {"probe": lambda: probe_video_file(loader, name, **where),
                          "file": lambda: loader.load_video([name], **where),
                          "bytes": lambda: loader.load_video([(tmp_path / name).read_bytes()], **where)}.items():
            FRAME_CACHE.clear()
            with pytest.raises(DataError) as e:
                read()
            shown = name if how != "bytes" else "<inline video bytes>"
            assert str(e.value) == f"v.jsonl, record 4, field 'positive.video': video {shown} has no video stream", \
                (name, how)
    f, lines = _data_check_skips(tmp_path, capsys, names)
    for line_no, (line, name) in enumerate(zip(lines, names), 1):
        assert line == f"  - {f}, record line {line_no} (id {name}), field 'positive.video[0]': video {name} has no " \
                       f"video stream", line


def _garbage_packets(src: Path, dst: Path) -> Path:
    """`src` with the bytes of each of its video packets overwritten by as many seeded random ones, in place: its
    header (and a Matroska file's block headers) kept, the packets' payloads garbage. A packet's payload is found
    where PyAV's demuxer says its packet lies (an MP4's sample offset; a Matroska block's start, its payload a few
    bytes on)."""
    import random

    rng = random.Random(0)
    data = bytearray(src.read_bytes())
    with av.open(str(src)) as c:
        for packet in c.demux(c.streams.video[0]):
            if packet.size:
                at = data.find(bytes(packet), packet.pos)
                assert packet.pos <= at <= packet.pos + 8, "the packet's payload not where its block starts"
                data[at:at + packet.size] = rng.randbytes(packet.size)
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("name,codec", [("g.mkv", "mpeg4"), ("g264.mkv", "libx264"), ("g.webm", "libvpx"),
                                        ("g264.mp4", "libx264")])
def test_a_clip_whose_packets_are_overwritten_passes_the_header_probe_and_is_refused_when_read(tmp_path, capsys,
                                                                                               name, codec):
    """The probe reads headers only (`probe_video_file`): a clip of 20 frames whose packets were overwritten after
    its header passes it, and is refused when it is read ("none of its 20 packet(s) decode"), naming the record and
    the field: by the readers, and by `unime data check`, which decodes every video."""
    from unime.data.video import probe_video_file

    _garbage_packets(write_clip(tmp_path / f"src_{name}", codec=codec), tmp_path / name)
    loader = ImageLoader(tmp_path)
    where = {"source": "v.jsonl", "record": 4, "field": "positive.video"}
    FRAME_CACHE.clear()
    probe_video_file(loader, name, **where)  # a whole header: width, height, rate and duration
    said = f"corrupt video {name}: none of its 20 packet(s) decode"
    with pytest.raises(DataError) as e:
        loader.load_video([name], **where)
    assert str(e.value).startswith(f"v.jsonl, record 4, field 'positive.video': {said}"), str(e.value)
    f, lines = _data_check_skips(tmp_path, capsys, [name])
    assert lines[0].startswith(f"  - {f}, record line 1 (id {name}), field 'positive.video[0]': {said}"), lines
