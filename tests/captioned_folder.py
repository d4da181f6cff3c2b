"""A small captioned-image collection generated for tests: real PNG files, a captions CSV with a label
column (the shape), two captions for some images — the layout a user brings, not the demo world's."""

from __future__ import annotations

import csv
import random
from pathlib import Path

COLOURS = {"red": (210, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 210), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle")
PLACES = {"left": 0.28, "right": 0.72}


BACKGROUNDS = {"white": (245, 245, 240), "grey": (150, 150, 150), "black": (20, 20, 20)}


def draw(shape: str, colour: tuple[int, int, int], x: float, size: int = 48, background=(245, 245, 240)):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), background)
    d = ImageDraw.Draw(img)
    cx, cy, r = int(x * size), size // 2, size // 5
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return img


def make_captioned_folder(root: Path, *, seed: int = 0, n: int | None = None, backgrounds: int = 1
                          ) -> tuple[Path, Path]:
    """Write root/photos/*.png and root/captions.csv (columns file, text, category). Returns both.
    `backgrounds` > 1 multiplies the collection (24 images per background)."""
    rng = random.Random(seed)
    photos = root / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    bgs = list(BACKGROUNDS)[:backgrounds]
    combos = [(s, c, p, b) for b in bgs for s in SHAPES for c in COLOURS for p in PLACES]
    if n is not None:
        combos = combos[:n]
    rows = []
    for i, (shape, colour, place, bg) in enumerate(combos, 1):
        name = f"pic_{i:03d}.png"
        draw(shape, COLOURS[colour], PLACES[place], background=BACKGROUNDS[bg]).save(photos / name)
        on = "" if bg == "white" else f" on {bg}"
        rows.append({"file": name, "text": f"a {colour} {shape} on the {place}{on}", "category": shape})
        if rng.random() < 0.3:
            rows.append({"file": name, "text": f"{colour} {shape}, {place} side{on}", "category": shape})
    csv_path = root / "captions.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "text", "category"])
        w.writeheader()
        w.writerows(rows)
    return photos, csv_path
