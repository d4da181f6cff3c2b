"""A small captioned-image collection generated for tests: real PNG files, a captions CSV with a label
column (the shape), two captions for some images — the layout a user brings, not the demo world's."""

from __future__ import annotations

import csv
import random
from pathlib import Path

COLOURS = {"red": (210, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 210), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle")
PLACES = {"left": 0.28, "right": 0.72}


def draw(shape: str, colour: tuple[int, int, int], x: float, size: int = 48):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (245, 245, 240))
    d = ImageDraw.Draw(img)
    cx, cy, r = int(x * size), size // 2, size // 5
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return img


def make_captioned_folder(root: Path, *, seed: int = 0, n: int | None = None) -> tuple[Path, Path]:
    """Write root/photos/*.png and root/captions.csv (columns file, text, category). Returns both."""
    rng = random.Random(seed)
    photos = root / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    combos = [(s, c, p) for s in SHAPES for c in COLOURS for p in PLACES]
    if n is not None:
        combos = combos[:n]
    rows = []
    for i, (shape, colour, place) in enumerate(combos, 1):
        name = f"pic_{i:03d}.png"
        draw(shape, COLOURS[colour], PLACES[place]).save(photos / name)
        rows.append({"file": name, "text": f"a {colour} {shape} on the {place}", "category": shape})
        if rng.random() < 0.3:
            rows.append({"file": name, "text": f"{colour} {shape}, {place} side", "category": shape})
    csv_path = root / "captions.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "text", "category"])
        w.writeheader()
        w.writerows(rows)
    return photos, csv_path
