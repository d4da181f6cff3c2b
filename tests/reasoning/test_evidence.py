"""Evidence extraction (SPEC §2.2): boxes → pixel crops, 1-based key frames → frames."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from unime.errors import DataError
from unime.reasoning.evidence import (
    boxes_to_pixels,
    crop_boxes,
    crop_evidence,
    extract_evidence,
    keep_crop,
    select_key_frames,
)
from unime.reasoning.tcot import Evidence


def gradient_image(w=200, h=100):
    """Pixel (x, y) has R = x, G = y, so a crop's top-left pixel tells where it was cut."""
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[..., 0] = np.arange(w, dtype=np.uint8)[None, :]
    arr[..., 1] = np.arange(h, dtype=np.uint8)[:, None]
    return Image.fromarray(arr)


# ------------------------------------------------------------------------------------------------
# boxes_to_pixels


def test_boxes_to_pixels_hand_computed():
    # 200 x 100 image: x ↦ x · 200 / 1000 = x / 5, y ↦ y / 10, rounded half-up
    #   [100, 200, 500, 800] → [20, 20, 100, 80]
    #   [  2,   5, 997, 995] → [0.4→0, 0.5→1, 199.4→199, 99.5→100]
    assert boxes_to_pixels([[100, 200, 500, 800], [2, 5, 997, 995]], 200, 100) == [(20, 20, 100, 80),
                                                                                  (0, 1, 199, 100)]


def test_boxes_to_pixels_clamps():
    # [-50, -10, 1200, 1001] → [-10 → 0, -1 → 0, 240 → 200, 100.1 → 100]
    assert boxes_to_pixels([(-50, -10, 1200, 1001)], 200, 100) == [(0, 0, 200, 100)]


def test_boxes_to_pixels_keeps_corner_order_and_checks_input():
    assert boxes_to_pixels([(500, 500, 100, 100)], 200, 100) == [(100, 50, 20, 10)]
    with pytest.raises(DataError, match="4 coordinates"):
        boxes_to_pixels([(1, 2, 3)], 200, 100)
    with pytest.raises(ValueError):
        boxes_to_pixels([(1, 2, 3, 4)], 0, 100)


# ------------------------------------------------------------------------------------------------
# crop rules


@pytest.mark.parametrize("box,kept", [
    ((0, 0, 10, 10), True),     # exactly 10 px both sides
    ((0, 0, 9, 50), False),     # 9 px wide
    ((0, 0, 50, 9), False),     # 9 px high
    ((0, 0, 500, 10), True),    # aspect 50 exactly
    ((0, 0, 510, 10), False),   # aspect 51
    ((0, 0, 10, 501), False),   # aspect 50.1, tall
    ((50, 50, 20, 80), False),  # inverted (negative width)
])
def test_keep_crop(box, kept):
    assert keep_crop(box) is kept


def test_crop_evidence_filters_and_crops_the_right_region():
    img = gradient_image(200, 100)
    boxes = [
        [100, 200, 500, 800],  # → (20, 20, 100, 80): 80 x 60, kept
        [0, 0, 40, 50],        # → (0, 0, 8, 5): too small
        [0, 0, 1000, 20],      # → (0, 0, 200, 2): 2 px high, dropped
        [500, 500, 100, 100],  # inverted, dropped
        [250, 0, 300, 1000],   # → (50, 0, 60, 100): 10 x 100, aspect 10, kept
    ]
    assert [i for i, _ in crop_boxes(boxes, 200, 100)] == [0, 4]
    crops = crop_evidence(img, boxes)
    assert [c.size for c in crops] == [(80, 60), (10, 100)]
    # top-left pixel of each crop = (R, G) = (x1, y1) of its pixel box
    assert crops[0].getpixel((0, 0))[:2] == (20, 20)
    assert crops[1].getpixel((0, 0))[:2] == (50, 0)
    assert crops[0].getpixel((79, 59))[:2] == (99, 79)


def test_crop_evidence_options():
    img = gradient_image(200, 100)
    # (0, 0, 8, 5) passes with min_side 5; 200 x 2 fails aspect and size
    assert [c.size for c in crop_evidence(img, [[0, 0, 40, 50]], min_side=5)] == [(8, 5)]
    # aspect 10 fails with max_aspect 5
    assert crop_evidence(img, [[250, 0, 300, 1000]], max_aspect=5) == []


# ------------------------------------------------------------------------------------------------
# key frames (1-based)


def test_key_frame_one_is_the_first_frame():
    frames = ["f0", "f1", "f2", "f3"]
    assert select_key_frames(frames, [1]) == ["f0"]
    assert select_key_frames(frames, [4, 2]) == ["f3", "f1"]  # given order kept


def test_key_frames_invalid_raise_clearly():
    frames = ["f0", "f1", "f2"]
    with pytest.raises(DataError) as e:
        select_key_frames(frames, [1, 0], source="rollouts.jsonl", record="q3")
    assert e.value.field == "key_frames[1]"
    assert "not a 1-based frame number (frames are numbered 1..3)" in str(e.value)
    assert "rollouts.jsonl" in str(e.value)
    with pytest.raises(DataError, match=r"key frame 4 is beyond the last frame \(3 frames"):
        select_key_frames(frames, [4])
    with pytest.raises(DataError, match="not an integer"):
        select_key_frames(frames, [1.0])
    with pytest.raises(DataError):
        select_key_frames(frames, [-1])


def test_key_frames_skip_policy_and_dedupe():
    frames = ["f0", "f1", "f2"]
    assert select_key_frames(frames, [0, 1, 4, 3, -2], on_invalid="skip") == ["f0", "f2"]
    assert select_key_frames(frames, [2, 2, 1]) == ["f1", "f0"]
    assert select_key_frames(frames, [2, 2, 1], dedupe=False) == ["f1", "f1", "f0"]
    with pytest.raises(ValueError):
        select_key_frames(frames, [1], on_invalid="ignore")


# ------------------------------------------------------------------------------------------------
# extract_evidence


def test_extract_evidence_image_and_video():
    img = gradient_image(200, 100)
    ev = Evidence(bboxes=[(100, 200, 500, 800), (0, 0, 40, 50)])
    out = extract_evidence(ev, image=img)
    assert [c.size for c in out.images] == [(80, 60)]
    assert out.skipped == ["bbox_2d[1] too small or too elongated to crop (8x5 px)"]  # 40/1000 of 200, 50/1000 of 100

    ev = Evidence(key_frames=[2, 9, 1])
    out = extract_evidence(ev, frames=["a", "b", "c"])
    assert out.images == ["b", "a"] and out.skipped == ["1 key frame(s) outside 1..3"]
    with pytest.raises(DataError):
        extract_evidence(ev, frames=["a", "b", "c"], on_invalid_frame="raise")


def test_extract_evidence_nothing_to_point_at():
    ev = Evidence(text_keywords=["x"], bboxes=[(0, 0, 500, 500)], key_frames=[1])
    out = extract_evidence(ev)
    assert out.images == []
    assert out.skipped == ["1 box(es) but no image", "1 key frame(s) but no video"]


def test_a_key_frame_past_a_short_clip_is_not_blamed_on_the_options_alone():
    """QA: a T-CoT with key frames [1, 3, 8] for a one-frame clip (sampled under the very --video-frames 8 the T-CoT
    file records: 2 frames, the one padded) was refused with "give the --video-* options the T-CoT was written with"
    only, which the user had done. The message names the other cause: a clip shorter than the sampling's count."""
    with pytest.raises(DataError) as e:
        select_key_frames(["f0", "f0"], [1, 3, 8], source="t.jsonl", record="r3", field="positive")
    msg = str(e.value)
    assert e.value.field == "positive.key_frames[1]"
    assert "key frame 3 is beyond the last frame (2 frames sampled, numbered 1..2" in msg
    assert "a clip with fewer frames than the sampling takes gives fewer" in msg
    assert "--video-* options the T-CoT was written with" in msg
