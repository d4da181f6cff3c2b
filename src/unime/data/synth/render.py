"""Pillow rendering of scenes and object crops (4x supersampled, then box-filtered: smooth edges,
byte-identical output for the same scene)."""

from __future__ import annotations

import io
import math

from PIL import Image, ImageDraw

from unime.data import vocab
from unime.data.synth.scenes import SLOTS, Scene, SceneObject

SUPERSAMPLE = 4
RADIUS = {"small": 0.075, "large": 0.13}  # fraction of the image side
CROP_FRACTION = 0.36  # side of a crop window, as a fraction of the image side


def object_centre(obj: SceneObject, size: int) -> tuple[float, float]:
    x, y = SLOTS[obj.position]
    return x * size + obj.jitter[0], y * size + obj.jitter[1]


def object_bbox(obj: SceneObject, size: int) -> list[int]:
    cx, cy = object_centre(obj, size)
    r = RADIUS[obj.size] * size
    return [max(0, math.floor(cx - r)), max(0, math.floor(cy - r)), min(size, math.ceil(cx + r)),
            min(size, math.ceil(cy + r))]


def crop_box(obj: SceneObject, size: int) -> tuple[int, int, int, int]:
    """A fixed-size window centred on the object (clamped to the image), so object size stays visible."""
    side = round(CROP_FRACTION * size)
    cx, cy = object_centre(obj, size)
    x0 = min(max(0, round(cx - side / 2)), size - side)
    y0 = min(max(0, round(cy - side / 2)), size - side)
    return x0, y0, x0 + side, y0 + side


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)]
    if shape == "star":
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else r * 0.45
            ang = -math.pi / 2 + i * math.pi / 5
            pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
        return pts
    if shape == "cross":
        w = r * 0.38
        return [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w),
                (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w),
                (cx - r, cy - w), (cx - w, cy - w)]
    return None


def draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, size: int, scale: int) -> None:
    cx, cy = object_centre(obj, size)
    draw_shape(draw, obj.shape, vocab.COLOURS[obj.colour], cx * scale, cy * scale, RADIUS[obj.size] * size * scale)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, fill, cx: float, cy: float, r: float) -> None:
    """One shape of the vocabulary centred at (cx, cy) with radius r (pixels of `draw`'s image)."""
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        h = r * 0.85
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    else:
        pts = _polygon(shape, cx, cy, r)
        if pts is None:
            raise ValueError(f"unknown shape {shape!r}")
        draw.polygon(pts, fill=fill)


def render_scene(scene: Scene, size: int) -> Image.Image:
    big = Image.new("RGB", (size * SUPERSAMPLE, size * SUPERSAMPLE), vocab.BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(big)
    for obj in scene.objects:
        draw_object(draw, obj, size, SUPERSAMPLE)
    return big.resize((size, size), Image.Resampling.BOX)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()
