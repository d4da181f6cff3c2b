"""Shared by the video tests of several folders: clips written with PyAV whose frames tell which source
frame they are, a small MMEB-V2 world of video and visual-document tasks (`build_fixture`), and a mined set with
a video negative (`mined_parquet_with_one_video_negative`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from unime.data.io import write_records
from unime.data.items import Item, Record

av = pytest.importorskip("av")


def write_clip(path: Path, *, n: int = 20, fps: int = 10, size: tuple[int, int] = (64, 48), codec: str = "mpeg4",
               shift: int = 0, container: str | None = None) -> Path:
    """A clip whose frame i is a flat colour with red = (12 * i + shift) % 256: a decoded frame tells which
    source frame it is. `container`: FFmpeg's muxer (e.g. "ogg", "flv"), else the one of `path`'s extension."""
    w, h = size
    c = av.open(str(path), "w", format=container)
    s = c.add_stream(codec, rate=fps)
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    for i in range(n):
        a = np.zeros((h, w, 3), np.uint8)
        a[..., 0] = (12 * i + shift) % 256
        for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    return path


VID = "<|vision_start|><|video_pad|><|vision_end|>"
IMG = "<|vision_start|><|image_pad|><|vision_end|>"
QRY_V = "Find a video that contains the following visual content:"
TGT_V = "Understand the content of the provided video."
QRY_D = "Find a document image that matches the given query:"
TGT_D = "Understand the content of the provided document image."


# -- the MMEB-V2 fixture (tests/data/test_mmeb_v2.py, tests/eval/test_media_checks.py) ----------------------

def write_jsonl_rows(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _page(root: Path, name: str, colour) -> str:
    p = root / "pages" / f"{name}.png"
    p.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (56, 72), (250, 250, 250))
    img.paste(Image.new("RGB", (30, 20), colour), (10, 10 + 5 * len(name)))
    img.save(p)
    return f"pages/{name}.png"


def build_fixture(root: Path) -> tuple[Path, dict]:
    """Several video and visdoc tasks in V2 rows, one image task in V1 rows. Returns the config path and,
    per task, the expected items by hand: [(query, [candidates], [grades])]."""
    clips = {}
    (root / "clips").mkdir()
    for i, (n, fps, shift) in enumerate([(20, 10, 0), (16, 8, 60), (24, 12, 120), (12, 6, 180)]):
        clips[i] = f"clips/c{i}.mp4"
        write_clip(root / clips[i], n=n, fps=fps, shift=shift)
    frames = []
    for j in range(4):
        Image.new("RGB", (40, 32), (30 * j, 90, 0)).save(root / f"f{j}.png")
        frames.append(f"f{j}.png")
    expect: dict[str, list] = {}

    # video retrieval, global: each caption finds its clip in the pool of all rows' clips
    caps = ["a dark square", "a dim square", "a red square", "a bright red square"]
    write_jsonl_rows(root / "video/ret/rows.jsonl", [
        {"query_text": [f"{QRY_V} {caps[i]}"], "query_image": [None], "cand_text": [f"{VID} {TGT_V}"],
         "cand_image": [{"paths": [clips[i]]}], "dataset_infos": {"cand_names": [f"c{i}"], "label_name": f"c{i}"}}
        for i in range(4)])
    pool = [Item(text=TGT_V, video=(clips[i],)) for i in range(4)]
    expect["vid_ret"] = [(Item(text=f"{QRY_V} {caps[i]}"), pool, [float(j == i) for j in range(4)]) for i in range(4)]

    # video QA, local: a clip (file or frame list) and its own answer options
    qa = [(clips[0], ["red", "blue", "green"], "red"), (frames, ["moving", "still"], "still"),
          (clips[2], ["one", "two", "three", "four"], "three")]
    rows = []
    expect["vid_qa"] = []
    for k, (vis, opts, ans) in enumerate(qa):
        paths = vis if isinstance(vis, list) else [vis]
        rows.append({"query_text": [f"{VID} Given the video, answer: what is it? "], "query_image": [{"paths": paths}],
                     "cand_text": opts, "cand_image": [None] * len(opts),
                     "dataset_infos": {"cand_names": opts, "label_name": ans}})
        expect["vid_qa"].append((Item(text="Given the video, answer: what is it?", video=tuple(paths)),
                                 [Item(text=o) for o in opts], [float(o == ans) for o in opts]))
    write_jsonl_rows(root / "video/qa/rows.jsonl", rows)

    # moment retrieval, local: the query clip's moments are frame lists
    moments = [[frames[0], frames[1]], [frames[2], frames[3]], [frames[1], frames[2]]]
    write_jsonl_rows(root / "video/mret/rows.jsonl", [
        {"query_text": [f"{VID} Find the moment: the square turns green"], "query_image": [{"paths": [clips[1]]}],
         "cand_text": [f"{VID} {TGT_V}"] * 3, "cand_image": [{"paths": m} for m in moments],
         "dataset_infos": {"cand_names": ["m0", "m1", "m2"], "label_name": "m1"}}])
    expect["vid_mret"] = [(Item(text="Find the moment: the square turns green", video=(clips[1],)),
                           [Item(text=TGT_V, video=tuple(m)) for m in moments], [0.0, 1.0, 0.0])]

    # visual documents, global with a corpus and graded qrels (rel_scores), NDCG@5
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (0, 200, 200), (200, 0, 200), (90, 90, 90)]
    pages = {f"d{k}": _page(root, f"d{k}", c) for k, c in enumerate(colours)}
    write_jsonl_rows(root / "visdoc/docs/corpus/corpus.jsonl", [
        {"cand_text": [f"{IMG} {TGT_D}"], "cand_image": [{"paths": [p]}], "dataset_infos": {"cand_names": [n]}}
        for n, p in pages.items()])
    judged = [("the red chart", {"d0": 2, "d5": 1}), ("green table", {"d1": 1}),
              ("blue and cyan pages", {"d2": 2, "d4": 2, "d6": 1}), ("yellow", {"d3": 1})]
    write_jsonl_rows(root / "visdoc/docs/queries/q.jsonl", [
        {"query_text": [f"{QRY_D} {q}"], "query_image": [None],
         "cand_text": [f"{IMG} {TGT_D}"] * len(rel), "cand_image": [{"paths": [pages[n]]} for n in rel],
         "dataset_infos": {"cand_names": list(rel), "label_name": list(rel), "rel_scores": list(rel.values())}}
        for q, rel in judged])
    # the pool as VLM2Vec builds it: the rows' candidates by first appearance, then the rest of the corpus
    in_pool = list(dict.fromkeys([n for _, rel in judged for n in rel] + list(pages)))
    corpus = [Item(text=f"<|image_1|> {TGT_D}", images=(pages[n],)) for n in in_pool]
    expect["docs"] = [(Item(text=f"{QRY_D} {q}"), corpus, [float(rel.get(n, 0)) for n in in_pool]) for q, rel in judged]

    # a second visdoc task without a corpus file: the pool is the rows' candidates
    write_jsonl_rows(root / "visdoc/small/q.jsonl", [
        {"query_text": [f"{QRY_D} red"], "query_image": [None], "cand_text": [f"{IMG} {TGT_D}"] * 2,
         "cand_image": [{"paths": [pages["d0"]]}, {"paths": [pages["d1"]]}],
         "dataset_infos": {"cand_names": ["d0", "d1"], "label_name": ["d0", "d1"], "rel_scores": [3, 1]}},
        {"query_text": [f"{QRY_D} violet"], "query_image": [None], "cand_text": [f"{IMG} {TGT_D}"],
         "cand_image": [{"paths": [pages["d5"]]}],
         "dataset_infos": {"cand_names": ["d5"], "label_name": ["d5"], "rel_scores": [1]}}])
    small = [Item(text=f"<|image_1|> {TGT_D}", images=(pages[n],)) for n in ("d0", "d1", "d5")]
    expect["docs_small"] = [(Item(text=f"{QRY_D} red"), small, [3.0, 1.0, 0.0]),
                            (Item(text=f"{QRY_D} violet"), small, [0.0, 0.0, 1.0])]

    # an image task in MMEB-V1 rows
    labels = [["red", "green", "blue"][k:] + ["red", "green", "blue"][:k] for k in range(3)]  # positive first
    write_jsonl_rows(root / "image/cls/rows.jsonl", [
        {"qry_text": "<|image_1|>\nRepresent the given image for classification", "qry_img_path": pages[f"d{k}"],
         "tgt_text": labels[k], "tgt_img_path": ["", "", ""]} for k in range(3)])
    expect["img_cls"] = []
    for k in range(3):
        expect["img_cls"].append((Item(text="<|image_1|>\nRepresent the given image for classification",
                                       images=(pages[f"d{k}"],)), [Item(text=t) for t in labels[k]], [1.0, 0.0, 0.0]))

    cfg = {"data_root": ".", "tasks": [
        {"name": "vid_ret", "format": "mmeb_v2", "path": "video/ret", "modality": "video", "meta_task": "retrieval",
         "eval_type": "global"},
        {"name": "vid_qa", "format": "mmeb_v2", "path": "video/qa", "modality": "video", "meta_task": "vqa",
         "eval_type": "local"},
        {"name": "vid_mret", "format": "mmeb_v2", "path": "video/mret", "modality": "video", "meta_task": "mret",
         "eval_type": "local"},
        {"name": "docs", "format": "mmeb_v2", "path": "visdoc/docs/queries", "corpus": "visdoc/docs/corpus",
         "modality": "visdoc", "meta_task": "vidore_v1", "eval_type": "global"},
        {"name": "docs_small", "format": "mmeb_v2", "path": "visdoc/small", "modality": "visdoc",
         "meta_task": "visrag", "eval_type": "global"},
        {"name": "img_cls", "format": "mmeb", "path": "image/cls", "modality": "image", "meta_task": "classification"},
    ]}
    path = root / "eval_tasks.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path, expect


def mined_parquet_with_one_video_negative(path) -> str:
    """Three mined records as `unime mine` writes them; the second one's negatives[1] is a video clip (an image query
    given a video negative from the global pool), which the UniME-V2 JSON format cannot hold."""
    recs = [Record(Item("<|image_1|>\nq1", ("img/a.png",)), Item("red"), [Item("green"), Item("blue")],
                   positive_score=0.9, negative_scores=[0.1, 0.2], dataset="colour_cls", id="m1"),
            Record(Item("<|image_1|>\nq2", ("img/b.png",)), Item("green"),
                   [Item("red"), Item("Understand the content of the provided video.", video=("clips/v0.mp4",))],
                   positive_score=0.8, negative_scores=[0.3, 0.4], dataset="colour_cls", id="m2"),
            Record(Item("a red circle"), Item("<|image_1|>\nimg", ("img/a.png",)), [Item("", ("img/b.png",))],
                   positive_score=0.7, negative_scores=[0.5], dataset="t2i", id="m3")]
    write_records(recs, path)
    return str(path)


def not_regular_files(root: Path, suffix: str) -> dict[str, str]:
    """Paths under `root` ending in `suffix` that exist but are no regular file (a FIFO, a folder, a link to
    /dev/zero, which lies outside any data root), by what they are."""
    os.mkfifo(root / f"pipe{suffix}")
    (root / f"folder{suffix}").mkdir()
    os.symlink("/dev/zero", root / f"zero{suffix}")
    return {f"pipe{suffix}": "a FIFO (named pipe)", f"folder{suffix}": "a directory", f"zero{suffix}": "a device"}


def animated_gif(path: Path, n: int = 10, *, duration=100, fmt: str | None = None) -> Path:
    """A GIF of `n` frames at 10 fps whose frame i is a flat colour of red 25 * i (exact in its palette); `duration`:
    the frames' delay in ms (a list: each frame's); `fmt`: PIL's format of another animation ("PNG": an APNG,
    "WEBP", lossless) than `path`'s extension says."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [Image.new("RGB", (32, 24), (25 * i, 0, 0)) for i in range(n)]
    lossless = {"lossless": True} if (fmt or path.suffix[1:]).upper() == "WEBP" else {}
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=duration, loop=0, **lossless)
    return path
