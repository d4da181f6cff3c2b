"""Shared by the mining tests (and the end-to-end kill test): a small record set over two datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from unime.data.io import write_records
from unime.data.items import Item, Record

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
SHAPES = ("circle", "square", "star")


def write_dataset(root: Path) -> Path:
    """9 records over two datasets: image→text classification and text→image retrieval."""
    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    records = []
    for i, (colour, rgb) in enumerate(COLOURS.items()):
        for j in range(2 if i < 2 else 1):
            path = f"img/{colour}{j}.png"
            arr = np.clip(np.array(rgb) + rng.integers(-20, 20, (40 + 8 * j, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / path)
            records.append(Record(query=Item(text="<|image_1|>\nRepresent the given image for classification: "
                                                  "what colour is shown?", images=(path,)),
                                  positive=Item(text=colour), dataset="colour_cls", id=f"cls-{colour}-{j}"))
    for k, shape in enumerate(SHAPES):
        colour = list(COLOURS)[k]
        records.append(Record(query=Item(text=f"Find an image that matches the given caption: a {colour} {shape}"),
                              positive=Item(text="<|image_1|>\nRepresent the given image.",
                                            images=(f"img/{colour}0.png",)),
                              dataset="t2i", id=f"t2i-{shape}"))
    path = root / "records.jsonl"
    write_records(records, path)
    return path
