"""The demo world's annotation teacher: its T-CoTs parse, validate, and point at the right pixels."""

from __future__ import annotations

from collections import Counter

import pytest
from PIL import Image

from unime.data import vocab
from unime.data.items import Item
from unime.errors import DataError
from unime.reasoning.evidence import crop_evidence
from unime.reasoning.reasoner import item_modality
from unime.reasoning.tcot import parse_tcot, validate_tcot
from unime.reasoning.teacher import SOURCE, AnnotationTeacher, world_keywords


@pytest.fixture(scope="module")
def teacher(tiny_world_dir):
    return AnnotationTeacher(tiny_world_dir(1))


def _dominant_colour(img: Image.Image) -> str:
    """The world colour closest to most non-background pixels (independent of the annotations)."""
    votes = Counter()
    bgs = list(vocab.BACKGROUNDS.values())
    for px in img.getdata():
        if min(sum(abs(a - b) for a, b in zip(px, bg)) for bg in bgs) < 30:
            continue
        name, dist = min(((n, sum(abs(a - b) for a, b in zip(px, c))) for n, c in vocab.COLOURS.items()),
                         key=lambda t: t[1])
        if dist < 60:
            votes[name] += 1
    return votes.most_common(1)[0][0]


def test_every_training_tcot_parses_and_validates(teacher):
    rows = teacher.tcot_rows(teacher.world.records)
    assert len(rows) == 2 * len(teacher.world.records) > 0
    for r in rows:
        assert r.source == SOURCE
        tcot = parse_tcot(r.tcot, allow_outside_text=False)
        assert validate_tcot(tcot, modality=item_modality(r.item), require_evidence=True) == [], r.tcot
    # every task of the world is covered
    assert {r.record_id.rsplit("-", 1)[0] for r in rows} == {rec.dataset for rec in teacher.world.records}


def test_answers_agree_with_the_labels(teacher):
    for rec in teacher.world.records:
        meta = teacher.world.meta(rec.query)
        if meta["need"]["type"] == "answer":
            q = parse_tcot(teacher.tcot(rec.query, "query"))
            p = parse_tcot(teacher.tcot(rec.positive, "target"))
            assert q.answer == p.answer == rec.positive.text


def test_grounding_boxes_cover_the_referred_object(teacher):
    checked = 0
    for rec in teacher.world.records:
        meta = teacher.world.meta(rec.query)
        if meta["need"]["type"] != "object":
            continue
        scene = teacher.world.scenes[meta["scene"]]
        (k,) = [i for i, o in enumerate(scene.objects)
                if all(o.attr(a) == v for a, v in meta["need"]["mention"].items())]
        tcot = parse_tcot(teacher.tcot(rec.query, "query"))
        image = Image.open(teacher.root / rec.query.images[0]).convert("RGB")
        (crop,) = crop_evidence(image, tcot.evidence.bboxes)
        assert _dominant_colour(crop) == scene.objects[k].colour
        # the positive is the object's crop: its box sits inside the crop and shows the same colour
        ptcot = parse_tcot(teacher.tcot(rec.positive, "target"))
        pimg = Image.open(teacher.root / rec.positive.images[0]).convert("RGB")
        (pcrop,) = crop_evidence(pimg, ptcot.evidence.bboxes)
        assert _dominant_colour(pcrop) == scene.objects[k].colour
        assert pcrop.size[0] < pimg.size[0]
        checked += 1
    assert checked > 0


def test_scene_boxes_are_the_annotated_bboxes_scaled_to_1000(teacher):
    sid, ann = next(iter(teacher.annotations.items()))
    w, h = ann["image_size"]
    boxes = teacher.scene_boxes(sid, range(len(ann["objects"])))
    for box, obj in zip(boxes, ann["objects"]):
        assert box == [round(v * 1000 / s) for v, s in zip(obj["bbox"], (w, h, w, h))]


def test_world_keywords():
    assert world_keywords("<|image_1|>\nA small red circle is left of two blue stars on a gray background.") == [
        "small", "red", "circle", "left of", "two", "blue", "star", "gray"]
    assert world_keywords("the circle on the left") == ["circle", "left"]


def test_unknown_item_is_a_data_error(teacher):
    with pytest.raises(DataError, match="not an item of this world"):
        teacher.tcot(Item(text="something else"), "query")


# -- video (QA: the teacher did not know the need types 'clip' (clip_ret) and 'moment' (clip_moment)) ---------------

@pytest.fixture(scope="module")
def video_teacher(tmp_path_factory):
    from unime.data.synth import VideoSizes, generate_world

    root = tmp_path_factory.mktemp("video_world") / "world"
    generate_world(root, sizes="tiny", video=VideoSizes(eval_clips=2, train_clips=4))
    return AnnotationTeacher(root)


def _video_records(teacher, dataset=None):
    """The world's video training records (train/video_records.jsonl), of one dataset or all."""
    from unime.data.io import read_records

    recs = [r for r in read_records(teacher.root / "train" / "video_records.jsonl") if dataset in (None, r.dataset)]
    assert recs
    return recs


def _frames(teacher, item) -> list:
    """The item's video as the reasoner and the embedder see it (the default sampling)."""
    from unime.data.images import ImageLoader

    return list(ImageLoader(teacher.root).load_video(item.video).frames)


def test_video_training_tcots_parse_validate_and_name_frames_of_the_video(video_teacher):
    video = video_teacher.tcot_rows(_video_records(video_teacher))
    assert {r.record_id.rsplit("-", 1)[0] for r in video} == {"clip_ret", "clip_moment", "clip_cls", "clip_qa"}
    for r in video:
        tcot = parse_tcot(r.tcot, allow_outside_text=False)
        modality = item_modality(r.item)
        n = len(_frames(video_teacher, r.item)) if modality == "video" else None
        assert validate_tcot(tcot, modality=modality, num_frames=n, require_evidence=True) == [], r.tcot


def test_a_clip_query_and_its_clip_name_the_clips_annotation(video_teacher):
    for rec in _video_records(video_teacher, "clip_ret"):
        clip = video_teacher.world.clips[video_teacher.world.meta(rec.positive)["clip"]]
        q = parse_tcot(video_teacher.tcot(rec.query, "query"))
        p = parse_tcot(video_teacher.tcot(rec.positive, "target"))
        assert q.answer == p.answer
        for word in (clip.background, clip.colour, clip.shape, f"moves {clip.first}", clip.then[1]):
            assert word in q.answer
        assert not q.evidence.key_frames and {clip.colour, clip.shape} <= set(q.evidence.text_keywords)
        assert p.evidence.key_frames == [1, 5, 8]  # 8-frame clips: first, first of the second half, last


def test_a_moment_querys_key_frames_are_the_frames_of_its_segment(video_teacher):
    """Each frame of the positive segment (as sampled) is, up to the codec, closest to a frame of the whole clip
    that the query's key frames pick; the segment's key frames are all of its frames."""
    import numpy as np

    def diff(a, b) -> float:
        return float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean())

    parts = set()
    for rec in _video_records(video_teacher, "clip_moment"):
        meta = video_teacher.world.meta(rec.positive)
        parts.add(meta["part"])
        q = parse_tcot(video_teacher.tcot(rec.query, "query"))
        p = parse_tcot(video_teacher.tcot(rec.positive, "target"))
        assert q.answer == p.answer
        clip, segment = _frames(video_teacher, rec.query), _frames(video_teacher, rec.positive)
        assert p.evidence.key_frames == list(range(1, len(segment) + 1))
        assert len(clip) == 8 and q.evidence.key_frames == ([1, 2, 3, 4] if meta["part"] == 0 else [4, 5, 6, 7, 8])
        for frame in segment:
            nearest = min(range(len(clip)), key=lambda k: diff(clip[k], frame))
            assert nearest + 1 in q.evidence.key_frames
    assert parts == {0, 1}  # both halves are checked


# -- video sampling (QA: the key frames assumed the default 8-frame sampling whatever --video-frames said) ----------

def _frames_sampled(teacher, item, sampling) -> list:
    from unime.data.images import ImageLoader

    return list(ImageLoader(teacher.root, video=sampling).load_video(item.video).frames)


def test_key_frames_are_numbered_among_the_frames_the_sampling_given_takes(video_teacher):
    """8-frame clips sampled with 4 frames take frames 0, 2, 5, 7: a clip's events (frames 0, 4, 7) are shown by
    sampled frames 1, 3 (frame 5, the nearest to 4) and 4; a moment query's halves (frames 0-3, 3-7) by 1, 2 and
    3, 4; a segment (4 or 5 frames) by its 4 sampled frames."""
    from unime.data.video import VideoSampling

    sampling = VideoSampling(num_frames=4)
    teacher = AnnotationTeacher(video_teacher.root, video_sampling=sampling)
    assert teacher.clip_key_frames() == [1, 3, 4]
    assert [teacher.part_key_frames(p) for p in (0, 1)] == [[1, 2], [3, 4]]
    assert [teacher.segment_key_frames(p) for p in (0, 1)] == [[1, 2, 3, 4], [1, 2, 3, 4]]
    for r in teacher.tcot_rows(_video_records(teacher)):  # every key frame within the frames the sampling takes
        if item_modality(r.item) == "video":
            n = len(_frames_sampled(teacher, r.item, sampling))
            assert n == 4 and validate_tcot(parse_tcot(r.tcot), modality="video", num_frames=n) == [], r.tcot


def test_reason_teacher_takes_the_video_options(video_teacher, tmp_path):
    """`--video-fps 2` on 8-frame clips at 4 fps (2 s): 4 frames per clip, 2 per segment (1 s, its first and last
    frame); the key frames of every video row are within them."""
    from unime.cli import main
    from unime.data.io import read_records
    from unime.data.video import VideoSampling
    from unime.reasoning.reasoner import read_tcot_rows

    out = tmp_path / "t.jsonl"
    assert main(["reason", "teacher", "--world", str(video_teacher.root), "--records",
                 str(video_teacher.root / "train" / "video_records.jsonl"), "--out", str(out),
                 "--video-fps", "2"]) == 0
    rows = read_tcot_rows(out)
    assert len(rows) == 2 * len(read_records(video_teacher.root / "train" / "video_records.jsonl"))
    sampling = VideoSampling(num_frames=None, fps=2.0)
    seen = set()
    for r in rows:
        if item_modality(r.item) == "video":
            key_frames = parse_tcot(r.tcot).evidence.key_frames
            n = len(_frames_sampled(video_teacher, r.item, sampling))
            assert key_frames and max(key_frames) <= n, (r.tcot, n)
            seen.add((n, tuple(key_frames)))
    assert (4, (1, 3, 4)) in seen and (2, (1, 2)) in seen, seen  # a whole clip's events; a segment's two frames
