"""The demo world's video part: generated clips as real .mp4 files (checked by decoding them here with PyAV and
locating the shape), ground-truth relevance by hand, MMEB-V2 video rows whose labels agree with the ground
truth, train and eval clips disjoint, byte-identical regeneration, and the image world unchanged by video."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from unime.data import vocab
from unime.data.synth import VideoSizes, World, generate_world
from unime.data.synth.clips import Clip, clip_files, clip_satisfaction, description, part_phrase, trajectory

av = pytest.importorskip("av")

SMALL = VideoSizes(eval_clips=10, train_clips=16)


@pytest.fixture(scope="module")
def video_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("vw") / "world"
    generate_world(root, sizes="tiny", video=SMALL)
    return root


def _frames(data: bytes) -> tuple[list[np.ndarray], float]:
    import io

    with av.open(io.BytesIO(data)) as c:
        rate = float(c.streams.video[0].average_rate)
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)], rate


def _centre_and_colour(frame: np.ndarray, background) -> tuple[float, float, np.ndarray]:
    """Centroid (pixels) and mean colour of the pixels far from the background colour."""
    mask = np.abs(frame.astype(int) - np.asarray(background)).sum(-1) > 120
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean()), frame[mask].mean(0)


def test_clip_trajectory_by_hand():
    move = Clip("c", "eval", "white", "circle", "purple", "right", ("move", "left"))
    xs = [round(x, 2) for x, _, _ in trajectory(move, 8)]
    # steps of 0.08: 0, .08, .16, .24, then back .16, .08, 0, -.08; centred: + 0.42
    assert xs == [0.42, 0.5, 0.58, 0.66, 0.58, 0.5, 0.42, 0.34]
    assert {round(y, 2) for _, y, _ in trajectory(move, 8)} == {0.5}
    turn = Clip("t", "eval", "black", "square", "red", "up", ("turn", "blue"))
    path = trajectory(turn, 8)
    assert [c for _, _, c in path] == ["red"] * 4 + ["blue"] * 4
    assert [round(y, 2) for _, y, _ in path] == [0.62, 0.54, 0.46, 0.38, 0.38, 0.38, 0.38, 0.38]
    assert description(turn) == "On a black background, the red square moves up then turns blue."
    assert part_phrase(turn, 1) == "the red square turns blue"


def test_written_clips_show_the_trajectory(tmp_path):
    clip = Clip("t", "eval", "white", "square", "red", "left", ("turn", "blue"))
    sizes = VideoSizes(eval_clips=1, frames=8, size=56, fps=4)
    files = clip_files(clip, sizes)
    frames, rate = _frames(files[clip.path])
    assert len(frames) == 8 and rate == 4.0 and frames[0].shape == (56, 56, 3)
    for frame, (x, y, colour) in zip(frames, trajectory(clip, 8)):
        cx, cy, mean = _centre_and_colour(frame, vocab.BACKGROUNDS["white"])
        assert (cx, cy) == pytest.approx((x * 56 - 0.5, y * 56 - 0.5), abs=1.0)
        assert mean == pytest.approx(vocab.COLOURS[colour], abs=30)
    # the segments: the first half, and the second half led by the last frame of the first
    first, _ = _frames(files[clip.segment_path(0)])
    second, _ = _frames(files[clip.segment_path(1)])
    assert len(first) == 4 and len(second) == 5
    assert np.abs(second[0].astype(int) - frames[3]).mean() < 3 and np.abs(first[3].astype(int) - frames[3]).mean() < 3


def test_clip_relevance_by_hand():
    a = Clip("a", "eval", "gray", "star", "green", "down", ("move", "right"))
    b = Clip("b", "eval", "gray", "star", "blue", "down", ("turn", "red"))
    assert clip_satisfaction(a.spec(), a) == 1.0
    assert clip_satisfaction(a.spec(), b) == pytest.approx(3 / 5)  # background, shape, first
    assert clip_satisfaction({"shape": "star", "then": ["turn", "red"]}, b) == 1.0
    assert clip_satisfaction({"shape": "star", "then": ["turn", "red"]}, a) == 0.5


def test_video_world_tasks_agree_with_the_ground_truth(video_world):
    from unime.data.skips import ErrorPolicy
    from unime.eval.tasks import read_mmeb_v2_task
    from unime.eval.tasks import load_task_config

    world = World.load(video_world)
    assert len(world.clips) == 26 and world.manifest["video"]["eval_clips"] == 10
    specs = load_task_config(str(video_world / "eval_tasks_video.yaml")).tasks
    assert (video_world / "eval_tasks_video.yaml").read_text().splitlines()[0] == (
        "# video tasks of the generated demo world (MMEB-V2 layout); task paths, and the image and video paths in "
        "their data (data_root: .), are relative to this folder")
    assert all(s.data_root == video_world.resolve() and s.path.is_relative_to(video_world.resolve()) for s in specs)
    assert [(s.name, s.meta_task, s.modality, s.option("eval_type")) for s in specs] == [
        ("clip_cls", "classification", "video", "local"), ("clip_qa", "vqa", "video", "local"),
        ("clip_ret", "retrieval", "video", "global"), ("clip_moment", "moment_retrieval", "video", "local")]
    for spec in specs:
        data = read_mmeb_v2_task(spec, ErrorPolicy("raise", None, spec.name))
        assert len(data.query) == 10
        for q, cands, grades in zip(data.query, data.candidates, data.grades):
            rel = world.relevances(data.table.items[q], [data.table.items[c] for c in cands])
            # the label is the one candidate the ground truth calls fully relevant
            assert grades.sum() == 1 and rel[int(np.argmax(grades))] == 1.0, spec.name
            assert sorted(rel)[-2] < 1.0, spec.name
            assert all(data.table.items[c].video for c in cands) == (spec.name in ("clip_ret", "clip_moment"))
        if spec.name == "clip_ret":  # one pool of every eval clip
            assert len(data.candidates[0]) == 10


def test_train_and_eval_clips_are_disjoint(video_world):
    from unime.data.io import read_records

    world = World.load(video_world)
    train = {c.id for c in world.clips.values() if c.split == "train"}
    evals = {c.id for c in world.clips.values() if c.split == "eval"}
    assert len(train) == 16 and len(evals) == 10
    assert not {c.signature for c in world.clips.values() if c.split == "train"} & \
        {c.signature for c in world.clips.values() if c.split == "eval"}
    records = read_records(video_world / "train" / "video_records.jsonl")
    assert {r.dataset for r in records} == {"clip_cls", "clip_qa", "clip_ret", "clip_moment"} and len(records) == 64
    used = {Path(v).stem.split("_p")[0] for r in records for it in (r.query, r.positive) for v in it.video}
    assert used and used <= train
    rows = "".join((video_world / "eval" / "video" / f"{t}.jsonl").read_text()
                   for t in ("clip_cls", "clip_qa", "clip_ret", "clip_moment"))
    assert not any(f"/{cid}" in rows for cid in train)
    # the training records' positives have full relevance for their queries
    assert all(world.relevance(r.query, r.positive) == 1.0 for r in records)


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_video_world_is_byte_identical_and_leaves_the_image_world_alone(video_world, tmp_path):
    again = tmp_path / "again"
    generate_world(again, sizes="tiny", video=SMALL)
    assert _digests(again) == _digests(video_world)
    plain = tmp_path / "plain"
    generate_world(plain, sizes="tiny")
    with_video, without = _digests(video_world), _digests(plain)
    for rel, digest in without.items():
        if rel not in ("world.json", "items.jsonl"):
            assert with_video[rel] == digest, rel
    # items.jsonl: the image world's items first, unchanged, then the video items
    assert (video_world / "items.jsonl").read_text().startswith((plain / "items.jsonl").read_text())
    assert not (plain / "eval_tasks_video.yaml").exists() and "video" not in json.loads(
        (plain / "world.json").read_text())


def test_unime_data_synth_video_options(tmp_path, capsys):
    from unime.cli import main

    assert main(["data", "synth", "--out", str(tmp_path / "w"), "--size", "tiny", "--video-clips", "3",
                 "--video-frames", "4"]) == 0
    world = World.load(tmp_path / "w")
    assert sum(c.split == "eval" for c in world.clips.values()) == 3
    assert sum(c.split == "train" for c in world.clips.values()) == 12  # 4 x --video-clips by default
    frames, _ = _frames((tmp_path / "w" / next(iter(world.clips.values())).path).read_bytes())
    assert len(frames) == 4
    capsys.readouterr()
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--size", "tiny", "--video-clips", "3",
                 "--video-frames", "5"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "unime: error: data synth: video frames must be even and >= 4, got 5"]
