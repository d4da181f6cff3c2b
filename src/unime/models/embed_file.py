"""`unime embed`: a JSONL file of items → one float32 array, written exactly where asked.

Every line is parsed and every image opened before the model loads: a bad one stops the run naming the
file, the line and the field, or under `on_error="skip"` is left out and counted; the array then has a
row per kept line and `OUT.lines.json` lists the (1-based) line each row came from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from unime.data.atomic import atomic_open
from unime.data.images import ImageLoader
from unime.data.io import ImageChecker
from unime.data.items import Item
from unime.data.jsonl import iter_jsonl
from unime.data.skips import ErrorPolicy, SkipReport, data_error
from unime.errors import DataError


def read_items_file(path: str, *, data_root: str, on_error: str = "raise", skips: SkipReport | None = None,
                    video_sampling=None) -> tuple[list[Item], list[int]]:
    """The good items of a JSONL items file and their line numbers (images and videos opened and decoded)."""
    policy = ErrorPolicy(on_error, skips, path)
    checker = ImageChecker(ImageLoader(data_root, video=video_sampling))
    items, lines = [], []
    for n, obj in iter_jsonl(path, on_malformed=policy.handle):
        try:
            item = Item.from_dict(obj, source=path, record=f"line {n}")
            if item.is_empty:
                raise data_error("empty_item", "empty item (no text and no image)", source=path, record=f"line {n}")
            checker.check(item, source=path, record=f"line {n}")
            items.append(item)
            lines.append(n)
        except DataError as e:
            policy.handle(e)
    policy.finish()
    return items, lines


def encode_items_file(items_path: str, out: str, *, model: str, data_root: str | None = None,
                      device: str | None = None, dtype: str = "auto", batch_size: int = 16,
                      on_error: str = "raise", video_sampling=None,
                      image_budget=None) -> tuple[Path, int, int, SkipReport]:
    """Encode the items of `items_path` with `model`; write the array to exactly `out` (atomic; its
    folder is created). `image_budget` (`unime.models.image_budget.ImageBudget`): its set fields override
    the model's pixel bounds. Returns (path, rows, dimension, skips)."""
    from unime.models.embedder import Embedder

    if not os.path.isfile(items_path):
        raise DataError("items file not found", source=items_path)
    from unime.data.roots import resolve_data_root

    root = resolve_data_root(items_path, data_root)  # --data-root, else the one recorded beside the file
    skips = SkipReport()
    items, lines = read_items_file(items_path, data_root=root, on_error=on_error, skips=skips,
                                   video_sampling=video_sampling)
    if not items:
        raise DataError("no items to encode", source=items_path)
    emb = Embedder.from_pretrained(model, device=device, dtype=dtype, data_root=root, batch_size=batch_size,
                                   video_sampling=video_sampling, image_budget=image_budget)
    vecs = emb.encode(items, show_progress=True)
    path = Path(out)
    with atomic_open(path, "wb") as fh:  # np.save on a file object: no ".npy" appended to the name
        np.save(fh, vecs)
    if skips.total:
        with atomic_open(f"{path}.lines.json") as fh:
            json.dump({"items": items_path, "lines": lines, "skipped": skips.total}, fh)
    return path, int(vecs.shape[0]), int(vecs.shape[1]), skips
