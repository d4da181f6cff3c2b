"""Short generated clips for the demo world's video tasks, written as real .mp4 files with PyAV.

A clip shows one shape of the world's vocabulary on a background in two halves: first it moves (left,
right, up or down), then it either moves again or stops and changes colour — "the red square moves left
then turns blue". A clip is fully described by its *signature* (background, shape, starting colour, first
motion, second event); the generator keeps signatures unique across the whole world, so train and eval
clips are disjoint and every description names exactly one clip of its split.

Frames: `frames` frames (even, >= 4) of `size` x `size` pixels at `fps` frames per second; half of them per
part. The shape moves `STEP` of the side per frame; the path is centred in the frame. A colour change
happens on the first frame of the second half. Each clip is also cut into its two parts (*segments*, their
own .mp4 files) for moment retrieval: the first half, and the second half led by the first half's last
frame (so the second segment shows the change: the turn of colour, or the turn of direction). Encoding: MPEG-4
Part 2 (in every PyAV wheel), one thread, a fixed high bit rate — the same clip gives byte-identical files.

Relevance (used by `unime.data.synth.relevance`): a clip *spec* {background, shape, colour, first, then}
is satisfied by a clip in the fraction of its five constraints the clip matches; a moment (one half of
one clip) is satisfied only by that segment.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw

from unime.data import vocab
from unime.data.synth.render import SUPERSAMPLE, draw_shape

MOTIONS = ("left", "right", "up", "down")
MOTION_VECTORS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
STEP = 0.08           # displacement per frame, as a fraction of the side
CLIP_RADIUS = 0.13    # shape radius, as a fraction of the side
SPEC_KEYS = ("background", "shape", "colour", "first", "then")


@dataclass(frozen=True)
class VideoSizes:
    """How many clips a world holds and how they look. `eval_clips=0` = a world without video."""

    eval_clips: int = 0
    train_clips: int = 0
    frames: int = 8
    size: int = 56       # 2 x 2 merged 28-px patches per frame for Qwen2-VL
    fps: int = 4

    def __post_init__(self):
        for name, value in self.__dict__.items():
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"video size {name} must be a non-negative integer, got {value!r}")
        if self.frames < 4 or self.frames % 2:
            raise ValueError(f"video frames must be even and >= 4, got {self.frames}")
        if self.size < 32 or self.size % 2:
            raise ValueError(f"video size must be even and >= 32 pixels, got {self.size}")
        if self.fps < 1:
            raise ValueError("video fps must be >= 1")

    @property
    def enabled(self) -> bool:
        return self.eval_clips > 0 or self.train_clips > 0


@dataclass(frozen=True)
class Clip:
    id: str
    split: str                     # train | eval
    background: str
    shape: str
    colour: str                    # the colour it starts with
    first: str                     # the first motion (a direction)
    then: tuple[str, str]          # ("move", direction) or ("turn", colour)

    @property
    def path(self) -> str:
        return f"videos/clips/{self.id}.mp4"

    def segment_path(self, part: int) -> str:
        return f"videos/segments/{self.id}_p{part}.mp4"

    @property
    def signature(self) -> tuple:
        return (self.background, self.shape, self.colour, self.first, self.then)

    @property
    def end_colour(self) -> str:
        return self.then[1] if self.then[0] == "turn" else self.colour

    def spec(self) -> dict[str, Any]:
        return {"background": self.background, "shape": self.shape, "colour": self.colour, "first": self.first,
                "then": list(self.then)}

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "split": self.split, **self.spec(), "video": self.path,
                "segments": [self.segment_path(0), self.segment_path(1)]}

    @classmethod
    def from_dict(cls, d: dict) -> "Clip":
        return cls(d["id"], d["split"], d["background"], d["shape"], d["colour"], d["first"], tuple(d["then"]))


# -- language ---------------------------------------------------------------------------------------------

def event_phrase(event: tuple[str, str]) -> str:
    kind, value = event
    return f"moves {value}" if kind == "move" else f"turns {value}"


def description(clip: Clip) -> str:
    """"On a black background, the red square moves left then turns blue." """
    return (f"On a {clip.background} background, the {clip.colour} {clip.shape} moves {clip.first} then "
            f"{event_phrase(clip.then)}.")


def part_phrase(clip: Clip, part: int) -> str:
    """What happens in one half: "the red square moves left" / "the red square turns blue"."""
    if part == 0:
        return f"the {clip.colour} {clip.shape} moves {clip.first}"
    colour = clip.colour  # before the change: "the red square turns blue"
    return f"the {colour} {clip.shape} {event_phrase(clip.then)}"


# -- relevance ------------------------------------------------------------------------------------------------

def clip_satisfaction(spec: dict, clip: Clip) -> float:
    """Fraction of the spec's constraints (background, shape, colour, first, then) the clip matches."""
    keys = [k for k in SPEC_KEYS if spec.get(k) is not None]
    if not keys:
        return 1.0
    have = clip.spec()
    return sum(list(spec[k]) == list(have[k]) if k == "then" else spec[k] == have[k] for k in keys) / len(keys)


# -- sampling -------------------------------------------------------------------------------------------------

def sample_clip(rng: random.Random, clip_id: str, split: str, combos: list[tuple[str, str]]) -> Clip:
    colour, shape = rng.choice(combos)
    first = rng.choice(MOTIONS)
    if rng.random() < 0.5:
        then = ("move", rng.choice(MOTIONS))
    else:
        then = ("turn", rng.choice([c for c in vocab.COLOURS if c != colour]))
    return Clip(clip_id, split, rng.choice(list(vocab.BACKGROUNDS)), shape, colour, first, then)


# -- rendering and writing ------------------------------------------------------------------------------------

def trajectory(clip: Clip, frames: int) -> list[tuple[float, float, str]]:
    """Per frame: the shape's centre (fractions of the side) and its colour."""
    half = frames // 2
    pts = [(0.0, 0.0)]
    dx, dy = MOTION_VECTORS[clip.first]
    for _ in range(half - 1):
        x, y = pts[-1]
        pts.append((x + STEP * dx, y + STEP * dy))
    dx, dy = MOTION_VECTORS[clip.then[1]] if clip.then[0] == "move" else (0, 0)
    for _ in range(frames - half):
        x, y = pts[-1]
        pts.append((x + STEP * dx, y + STEP * dy))
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    ox, oy = 0.5 - (min(xs) + max(xs)) / 2, 0.5 - (min(ys) + max(ys)) / 2
    return [(x + ox, y + oy, clip.colour if i < half else clip.end_colour) for i, (x, y) in enumerate(pts)]


def render_frames(clip: Clip, frames: int, size: int) -> list[Image.Image]:
    out = []
    for x, y, colour in trajectory(clip, frames):
        big = Image.new("RGB", (size * SUPERSAMPLE, size * SUPERSAMPLE), vocab.BACKGROUNDS[clip.background])
        draw_shape(ImageDraw.Draw(big), clip.shape, vocab.COLOURS[colour], x * size * SUPERSAMPLE,
                   y * size * SUPERSAMPLE, CLIP_RADIUS * size * SUPERSAMPLE)
        out.append(big.resize((size, size), Image.Resampling.BOX))
    return out


def mp4_bytes(frames: list[Image.Image], fps: int) -> bytes:
    """The frames as an MPEG-4 Part 2 .mp4 (deterministic: one thread, fixed bit rate)."""
    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 1_000_000
        stream.codec_context.thread_count = 1
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(img.convert("RGB")), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def clip_files(clip: Clip, sizes: VideoSizes) -> dict[str, bytes]:
    """Relative path → bytes: the clip and its two halves."""
    frames = render_frames(clip, sizes.frames, sizes.size)
    half = sizes.frames // 2
    return {clip.path: mp4_bytes(frames, sizes.fps), clip.segment_path(0): mp4_bytes(frames[:half], sizes.fps),
            clip.segment_path(1): mp4_bytes(frames[half - 1:], sizes.fps)}
