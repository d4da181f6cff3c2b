"""The bad-input corpus: each case is one bad line among good ones, with the exact outcome every reading
command must give — the skip reason it is counted under, the field it names and a fragment of the
message. Built in a temporary folder (images, a symlink, a FIFO, a decompression bomb), never shipped
as files, so nothing hostile sits in the repository.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

GOOD_IMAGE = "img/good.png"


@dataclass(frozen=True)
class Case:
    name: str
    line: Callable[[Path], bytes]  # root -> the bad JSONL line (no newline)
    reason: str                    # SkipReport reason
    field: str | None              # the field the error names (None: the whole line)
    fragment: str                  # in the message


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (a decompression bomb's opening)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def build_images(root: Path) -> None:
    """The good image and the hostile files the image cases point at."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(root / GOOD_IMAGE)
    (root / "img" / "garbage.png").write_bytes(b"this is not an image at all" * 10)
    full = (root / GOOD_IMAGE).read_bytes()
    (root / "img" / "truncated.png").write_bytes(full[: len(full) // 2])
    (root / "img" / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    outside = root.parent / f"{root.name}-outside.png"
    outside.write_bytes(full)
    link = root / "img" / "link.png"
    if not link.is_symlink():
        link.symlink_to(outside.resolve())
    fifo = root / "img" / "fifo.png"
    if not fifo.exists():
        os.mkfifo(fifo)


def good_record(i: int, image: str = GOOD_IMAGE) -> dict:
    return {"id": f"r{i}", "query": {"text": f"<|image_1|>\nquery {i}", "images": [image]},
            "positive": {"text": f"positive {i}"}, "negatives": [{"text": f"negative {i}"}],
            "positive_score": 0.9, "negative_scores": [0.1]}


def _rec(**change) -> Callable[[Path], bytes]:
    def build(root: Path) -> bytes:
        rec = good_record(99)
        for k, v in change.items():
            if v is _DROP:
                rec.pop(k)
            else:
                rec[k] = v
        return json.dumps(rec).encode()
    return build


def _img(ref: str) -> Callable[[Path], bytes]:
    return _rec(query={"text": "<|image_1|>\nbad image query", "images": [ref]})


_DROP = object()
_QIMG = "query.images[0]"

RECORD_CASES: list[Case] = [
    Case("not_utf8", lambda r: b'{"id": "x", "query": {"text": "caf\xe9"}, "positive": {"text": "p"}}',
         "not_utf8", None, "not UTF-8 text at column 35"),
    Case("malformed_json", lambda r: b'{"query": {"text": "q"}, ', "malformed_json", None, "malformed JSON"),
    Case("deep_json", lambda r: b"[" * 100_000 + b"]" * 100_000, "malformed_json", None, "nested too deeply"),
    Case("not_an_object", lambda r: b"[1, 2]", "schema", None, "a record must be a JSON object"),
    Case("huge_int_score", lambda r: _rec()(r).replace(b'"positive_score": 0.9', b'"positive_score": 1' + b"0" * 400),
         "bad_score", "positive_score", "(401 digits) is too large"),
    Case("nan_score", lambda r: _rec()(r).replace(b'"positive_score": 0.9', b'"positive_score": NaN'),
         "bad_score", "positive_score", "not a finite number"),
    Case("string_score", _rec(positive_score="0.9"), "schema", "positive_score", "must be a number"),
    # QA: judge scores outside [0, 1] were accepted by `data check` and by training alike
    Case("score_above_one", _rec(positive_score=1.5), "bad_score", "positive_score", "score 1.5 is outside [0, 1]"),
    Case("score_below_zero", _rec(negative_scores=[-0.25]), "bad_score", "negative_scores[0]",
         "score -0.25 is outside [0, 1]"),
    Case("scores_count", _rec(negative_scores=[0.1, 0.2]), "schema", "negative_scores", "2 scores for 1"),
    Case("missing_positive", _rec(positive=_DROP), "schema", "positive", "missing"),
    Case("unknown_key", _rec(colour="red"), "schema", "colour", "unknown key(s) ['colour']"),
    Case("text_not_string", _rec(positive={"text": 5}), "schema", "positive.text", "must be a string"),
    Case("empty_item", _rec(positive={"text": ""}), "empty_item", "positive", "empty item"),
    Case("placeholder", _rec(positive={"text": "<|image_1|> no image"}), "placeholder", "positive.text",
         "placeholder"),
    Case("image_empty_ref", _img(""), "schema", "query.images", "non-empty"),
    Case("image_nul_byte", _img("img/a\x00b.png"), "image", _QIMG, "holds a NUL byte"),
    Case("image_too_long", _img("img/" + "a" * 5000 + ".png"), "image", _QIMG, "is too long"),
    Case("image_long_name", _img("img/" + "b" * 300 + ".png"), "image", _QIMG, "is too long"),
    Case("image_absolute", _img("/etc/hostname"), "image", _QIMG, "absolute image path"),
    Case("image_parent_escape", _img("../outside.png"), "image", _QIMG, "escapes the data root"),
    Case("image_symlink_escape", _img("img/link.png"), "image", _QIMG, "escapes the data root"),
    Case("image_url", _img("https://example.com/cat.png"), "image", _QIMG, "image file not found"),
    Case("image_missing", _img("img/none.png"), "image", _QIMG, "image file not found"),
    Case("image_directory", _img("img"), "image", _QIMG, "image 'img' exists but is not a regular file: it is a "
         "directory"),
    Case("image_fifo", _img("img/fifo.png"), "image", _QIMG, "image 'img/fifo.png' exists but is not a regular file: "
         "it is a FIFO (named pipe)"),
    Case("image_garbage", _img("img/garbage.png"), "image", _QIMG, "corrupt or unreadable image"),
    Case("image_truncated", _img("img/truncated.png"), "image", _QIMG, "corrupt image"),
    Case("image_bomb", _img("img/bomb.png"), "image", _QIMG, "has 10000000000 pixels, over the limit"),
]

# the cases whose line is read before its images: reported by the reader itself
READER_CASES = [c for c in RECORD_CASES if c.reason != "image"]
IMAGE_CASES = [c for c in RECORD_CASES if c.reason == "image"]


def write_records_file(root: Path, bad: list[Case], *, n_good: int = 4, name: str = "records.jsonl") -> Path:
    """`n_good` good records, then each bad case on its own line (line n_good + 1 + i)."""
    lines = [json.dumps(good_record(i)).encode() for i in range(n_good)] + [c.line(root) for c in bad]
    path = root / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes; symlinks and FIFOs by name only)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink() or not p.is_file():
            out[rel] = b"<" + ("link" if p.is_symlink() else "dir" if p.is_dir() else "special").encode() + b">"
        else:
            out[rel] = p.read_bytes()
    return out
