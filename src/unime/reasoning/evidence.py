"""Evidence extraction for Embed-RL (SPEC §2.2): T-CoT boxes → image crops, key frames → video frames.

The Embedder receives these as extra images right after `</thinking>`.

- Boxes are normalised to 0–1000; `boxes_to_pixels` scales them to the image size (rounded half-up)
  and clamps them to the image. A crop is kept only if both sides are >= `min_side` px (10) and its
  aspect ratio (long side / short side) is <= `max_aspect` (50); a box left out is listed in `skipped` with its
  size in pixels (`unime reason materialize` counts them). A box inverted or wholly outside the image is no region
  at all: the commands reading a T-CoT file refuse it (`unime.reasoning.tcot.check_boxes`); here, where a rollout's
  mistakes must not stop the reward, it is left out as a crop of no size.
- Key frames are **1-based**: key frame 1 is `frames[0]`. The released code indexed frames with them
  directly (0-based), an off-by-one we do not copy. 0, negatives and numbers past the last frame
  raise `DataError`, or are skipped under `on_invalid="skip"`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from PIL import Image

from unime.errors import DataError
from unime.reasoning.tcot import COORD_MAX, Evidence

PixelBox = tuple[int, int, int, int]


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def boxes_to_pixels(bboxes: Sequence[Sequence[float]], width: int, height: int, *,
                    scale: float = COORD_MAX) -> list[PixelBox]:
    """Scale 0..`scale` boxes `(x1, y1, x2, y2)` to pixels of a `width` × `height` image, clamped to it.

    x ↦ round(x · width / scale) clamped to [0, width]; y likewise with height. The order of the
    corners is kept (an inverted box stays inverted, and `crop_evidence` drops it).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    out = []
    for i, b in enumerate(bboxes):
        if len(b) != 4:
            raise DataError(f"a box needs 4 coordinates, got {list(b)!r}", field=f"bbox_2d[{i}]")
        x1, y1, x2, y2 = (float(v) for v in b)
        px = [min(max(_round_half_up(x * width / scale), 0), width) for x in (x1, x2)]
        py = [min(max(_round_half_up(y * height / scale), 0), height) for y in (y1, y2)]
        out.append((px[0], py[0], px[1], py[1]))
    return out


def keep_crop(box: PixelBox, *, min_side: int = 10, max_aspect: float = 50.0) -> bool:
    """Both sides >= `min_side` px and long side / short side <= `max_aspect`."""
    w, h = box[2] - box[0], box[3] - box[1]
    if w < min_side or h < min_side or w <= 0 or h <= 0:
        return False
    return max(w, h) / min(w, h) <= max_aspect


def crop_boxes(bboxes: Sequence[Sequence[float]], width: int, height: int, *, min_side: int = 10,
               max_aspect: float = 50.0, scale: float = COORD_MAX) -> list[tuple[int, PixelBox]]:
    """`(index of the box in bboxes, pixel box)` for every box that survives the crop rules."""
    pixel = boxes_to_pixels(bboxes, width, height, scale=scale)
    return [(i, b) for i, b in enumerate(pixel) if keep_crop(b, min_side=min_side, max_aspect=max_aspect)]


def crop_evidence(image: Image.Image, bboxes: Sequence[Sequence[float]], *, min_side: int = 10,
                  max_aspect: float = 50.0, scale: float = COORD_MAX) -> list[Image.Image]:
    """The crops of `image` at the 0–1000 `bboxes` that pass the size and aspect rules, in box order."""
    w, h = image.size
    return [image.crop(b) for _, b in crop_boxes(bboxes, w, h, min_side=min_side, max_aspect=max_aspect,
                                                  scale=scale)]


def select_key_frames(frames: Sequence[Any], key_frames_1_based: Sequence[int], *,
                      on_invalid: Literal["raise", "skip"] = "raise", dedupe: bool = True,
                      source: str | None = None, record: str | int | None = None,
                      field: str | None = None) -> list[Any]:
    """`frames[k - 1]` for each 1-based key frame k, in the given order (repeats dropped if `dedupe`).

    A key frame outside 1..len(frames) (or not an integer) raises `DataError` naming `source`, `record` and
    `key_frames[i]` (after `field`, e.g. `query.key_frames[1]`), or is skipped when `on_invalid="skip"`.
    """
    if on_invalid not in ("raise", "skip"):
        raise ValueError(f"on_invalid must be 'raise' or 'skip', got {on_invalid!r}")
    n = len(frames)
    picked, seen = [], set()
    for i, k in enumerate(key_frames_1_based):
        problem = None
        if isinstance(k, bool) or not isinstance(k, int):
            problem = f"key frame {k!r} is not an integer"
        elif k < 1:
            problem = f"key frame {k} is not a 1-based frame number (frames are numbered 1..{n})"
        elif k > n:
            problem = (f"key frame {k} is beyond the last frame ({n} frames sampled, numbered 1..{n}; key frames "
                       "are numbered among the frames sampled, and a clip with fewer frames than the sampling takes "
                       "gives fewer; else give the --video-* options the T-CoT was written with)")
        if problem:
            if on_invalid == "raise":
                raise DataError(problem, source=source, record=record,
                                field=f"{field}.key_frames[{i}]" if field else f"key_frames[{i}]")
            continue
        if dedupe and k in seen:
            continue
        seen.add(k)
        picked.append(frames[k - 1])
    return picked


@dataclass
class ExtractedEvidence:
    """Evidence images for one item, plus what was left out and why (for counting in reports)."""

    images: list[Any] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def extract_evidence(evidence: Evidence, *, image: Image.Image | None = None, frames: Sequence[Any] | None = None,
                     min_side: int = 10, max_aspect: float = 50.0,
                     on_invalid_frame: Literal["raise", "skip"] = "skip", source: str | None = None,
                     record: str | int | None = None, field: str | None = None) -> ExtractedEvidence:
    """Crops of `image` for the boxes, then the key frames of `frames`, as the Embedder's extra images.

    Boxes refer to the item's first image (`image`); evidence that has nothing to point at (boxes
    without an image, key frames without frames), crops failing the size / aspect rules and invalid
    key frames (under the default `on_invalid_frame="skip"`) are listed in `skipped`; with "raise" an invalid key
    frame raises `DataError` naming `source`, `record` and `field` (`select_key_frames`).
    """
    out = ExtractedEvidence()
    if evidence.bboxes:
        if image is None:
            out.skipped.append(f"{len(evidence.bboxes)} box(es) but no image")
        else:
            w, h = image.size
            for i, b in enumerate(boxes_to_pixels(evidence.bboxes, w, h)):  # the boxes `crop_boxes` keeps, cropped
                if keep_crop(b, min_side=min_side, max_aspect=max_aspect):
                    out.images.append(image.crop(b))
                else:
                    out.skipped.append(f"bbox_2d[{i}] too small or too elongated to crop ({b[2] - b[0]}x{b[3] - b[1]} "
                                       "px)")
    if evidence.key_frames:
        if frames is None:
            out.skipped.append(f"{len(evidence.key_frames)} key frame(s) but no video")
        else:
            out.images.extend(select_key_frames(frames, evidence.key_frames, on_invalid=on_invalid_frame,
                                                source=source, record=record, field=field))
            n_invalid = sum(1 for k in evidence.key_frames if not 1 <= k <= len(frames))
            if n_invalid:
                out.skipped.append(f"{n_invalid} key frame(s) outside 1..{len(frames)}")
    return out


def left_out_line(left_out: Sequence[str], *, total: int | None = None) -> str:
    """How a command reports the evidence it left out (`ExtractedEvidence.skipped`, one line per piece, named by the
    caller): "N piece(s) of evidence left out (the rules), e.g. " and the first 3 lines; N is `total` when given (the
    count of which `left_out` holds examples), else their number."""
    return (f"{len(left_out) if total is None else total} piece(s) of evidence left out (boxes need both sides >= 10 "
            "px and an aspect ratio <= 50 to be cropped; a box needs an image, a key frame a video of that many "
            "frames), e.g. " + "; ".join(left_out[:3]))
