"""Shared by the eval tests (and the end-to-end and rerun tests): a deterministic colour embedder and a small
eval world whose expected scores can be worked out by hand (see `tests/eval/test_eval.py`).

The fake embedder maps an image to its mean RGB colour and a text to the sum of the RGB colours of the
colour words it contains.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from unime.data.images import ImageLoader
from unime.data.items import Item
from unime.eval.runners import EvalOptions, load_suite_data, run_tasks
from unime.eval.tasks import load_task_config
from unime.models.embedding_cache import RunEncoder

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
           "orange": (255, 128, 0)}


class FakeEmbedder:
    """Colour embedder; records every item it is asked to encode."""

    def __init__(self, root="."):
        self.image_loader = ImageLoader(root)
        self.calls: list[list[Item]] = []

    def encode(self, items, batch_size=None, show_progress=False):
        items = list(items)
        self.calls.append(items)
        out = np.zeros((len(items), 3), dtype=np.float32)
        for i, it in enumerate(items):
            if it.images:
                img = self.image_loader.load(it.images[0])
                out[i] = np.asarray(img, dtype=np.float64).reshape(-1, 3).mean(0) / 255.0
            for word in it.text.replace("<|image_1|>", " ").split():
                if word in COLOURS:
                    out[i] += np.asarray(COLOURS[word], dtype=np.float64) / 255.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    @property
    def encoded(self) -> list[Item]:
        return [it for call in self.calls for it in call]


def write_png(root: Path, rel: str, colour: str) -> str:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), COLOURS[colour]).save(p)
    return rel


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


Q = "<|image_1|>\nRepresent the given image for classification"


def build_world(root: Path) -> Path:
    """A small eval world in the demo-world layout; returns the eval_tasks.yaml path.

    colours: MMEB expected hits (pessimistic) — see the comments per row.
    """
    img = {c: write_png(root, f"images/{c}.png", c) for c in ("red", "green", "blue", "yellow")}
    # -- MMEB: 'colour_cls' (IND classification) ---------------------------------------------------------
    write_jsonl(root / "eval/mmeb/colour_cls.jsonl", [
        {"id": "c0", "qry_text": Q, "qry_img_path": img["red"], "tgt_text": ["red", "green", "blue"],
         "tgt_img_path": ["", "", ""]},                                   # hit
        {"id": "c1", "qry_text": Q, "qry_img_path": img["green"], "tgt_text": ["green", "red", "blue"],
         "tgt_img_path": ["", "", ""]},                                   # hit
        {"id": "c2", "qry_text": Q, "qry_img_path": img["red"], "tgt_text": ["orange", "red", "blue"],
         "tgt_img_path": ["", "", ""]},                                   # miss: 'red' beats 'orange'
        {"id": "c3", "qry_text": Q, "qry_img_path": img["blue"], "tgt_text": ["blue", "blue blue", "red"],
         "tgt_img_path": ["", "", ""]},                                   # exact tie: miss / hit ('index')
    ])
    # -- MMEB: 'colour_ret' (OOD retrieval): text query → image candidates ----------------------------------
    write_jsonl(root / "eval/mmeb/colour_ret.jsonl", [
        {"qry_text": "find a yellow picture", "qry_img_path": "", "tgt_text": ["", "", ""],
         "tgt_img_path": [img["yellow"], img["red"], img["green"]]},      # hit (1.0 vs .707)
        {"qry_text": "find a red picture", "qry_img_path": "", "tgt_text": ["", ""],
         "tgt_img_path": [img["yellow"], img["red"]]},                    # miss
    ])
    # -- retrieval (see test_retrieval_both_directions for the arithmetic) --------------------------------
    write_jsonl(root / "eval/retrieval/colours.jsonl", [
        {"image": img["red"], "captions": ["red", "red red"]},
        {"image": img["green"], "captions": ["green", "yellow"]},
        {"image": img["blue"], "captions": ["blue"]},
        {"image": img["yellow"], "captions": ["orange"]},
    ])
    # -- compositional ------------------------------------------------------------------------------------
    write_jsonl(root / "eval/compositional/colours.jsonl", [
        {"id": "s0", "image": img["red"], "positive": "red", "negative": "blue", "category": "replace"},     # ok
        {"id": "s1", "image": img["blue"], "positive": "blue", "negative": "green", "category": "replace"},  # ok
        {"id": "s2", "image": img["red"], "positive": "orange", "negative": "red", "category": "swap"},     # wrong
        {"id": "s3", "image": img["green"], "positive": "green", "negative": "green green", "category": "add"},
    ])
    # -- qrels ----------------------------------------------------------------------------------------------
    write_jsonl(root / "eval/qrels/colours.jsonl", [
        {"id": "q0", "query": {"text": "red"},
         "candidates": [{"image": img["red"]}, {"image": img["yellow"]}, {"image": img["blue"]}],
         "relevance": [2, 1, 0]},
        {"id": "q1", "query": {"text": "yellow"},
         "candidates": [{"image": img["red"]}, {"image": img["yellow"]}, {"image": img["green"]}],
         "relevance": [0, 1, 2]},
        {"id": "q2", "query": {"text": "blue"}, "candidates": [{"image": img["red"]}], "relevance": [0]},
    ])
    cfg = {"tasks": [
        {"name": "colour_cls", "format": "mmeb", "path": "eval/mmeb/colour_cls.jsonl",
         "meta_task": "classification", "split": "IND"},
        {"name": "colour_ret", "format": "mmeb", "path": "eval/mmeb/colour_ret.jsonl", "meta_task": "retrieval",
         "split": "OOD"},
        {"name": "colours_retrieval", "format": "retrieval", "path": "eval/retrieval/colours.jsonl"},
        {"name": "colours_sugarcrepe", "format": "compositional", "path": "eval/compositional/colours.jsonl"},
        {"name": "colours_docs", "format": "qrels", "path": "eval/qrels/colours.jsonl"},
    ]}
    path = root / "eval_tasks.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def half_and_gone_tasks(root: Path) -> Path:
    """A task config of two MMEB tasks with missing query images: 'half' (4 rows, its line 3 bad) and 'gone' (6 rows,
    every one bad: the skip policy leaves no row). Returns the config's path."""
    img = {c: write_png(root, f"images/{c}.png", c) for c in ("red", "blue")}

    def row(query: str) -> dict:
        return {"qry_text": Q, "qry_img_path": query, "tgt_text": ["red", "blue"], "tgt_img_path": ["", ""]}

    write_jsonl(root / "half.jsonl", [row(img["red"]), row(img["blue"]), row("images/gone.png"), row(img["red"])])
    write_jsonl(root / "gone.jsonl", [row(f"images/gone{i}.png") for i in range(6)])
    path = root / "eval_tasks.yaml"
    path.write_text("tasks:\n  - {name: half, format: mmeb, path: half.jsonl, meta_task: classification}\n"
                    "  - {name: gone, format: mmeb, path: gone.jsonl, meta_task: classification}\n")
    return path


def run_suite(world: Path, embedder=None, *, cache_dir=None, ties="pessimistic", reranking=None, model_id="fake"):
    suite = load_task_config(world)
    embedder = embedder or FakeEmbedder()
    enc = RunEncoder(embedder, model_id, cache_dir=cache_dir)
    out = run_tasks(load_suite_data(suite), enc, opts=EvalOptions(ties=ties), reranking=reranking)
    return {r.name: r for r in out.results}, out, embedder


def raise_then_skip(argv: list[str], out_root: Path, capsys, *, kept: dict[str, int], skipped_rows: dict[str, int],
                    lost: list[str]) -> tuple[list[str], dict]:
    """Run a command that evaluates a task config with bad rows (`argv`, without --out: `unime eval`, `eval
    reference`, `reason eval`) twice. Under the default raise it exits 2 and writes nothing in its --out; under
    --on-error skip it scores the `kept` tasks ({task: queries}) and reports the rows left out ({task: rows}, the
    `lost` tasks' included) and the tasks `lost` (no good rows) as `unime eval` does: summary.json
    (`skipped_data_meta`) and results.md (`report.skip_lines`). Returns (the raise run's error lines, the skip run's
    summary); the skip run's stdout is left in `capsys`."""
    from unime.cli import main

    capsys.readouterr()
    assert main(argv + ["--out", str(out_root / "stop")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert not (out_root / "stop").exists()
    out = out_root / "skip"
    assert main(argv + ["--out", str(out), "--on-error", "skip"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["tasks"]) == set(kept) and {n: summary["task_counts"][n]["queries"] for n in kept} == kept
    meta = summary["meta"]
    assert {n: c["skipped_rows"] for n, c in summary["task_counts"].items() if c.get("skipped_rows")} == {
        n: k for n, k in skipped_rows.items() if n not in lost}
    assert meta["skipped_task_rows"] == {n: k for n, k in skipped_rows.items() if n in lost}
    assert meta["on_error"] == "skip" and meta["skipped_rows"] == sum(skipped_rows.values())
    assert meta["dropped_candidates"] == 0
    assert meta["skipped_tasks"] == lost and list(meta["skipped_task_reasons"]) == lost
    why = meta["skipped_task_reasons"]
    assert all(why[n].startswith("no good rows: ") for n in lost)
    md = (out / "results.md").read_text().splitlines()
    assert (f"- **skipped rows** (`--on-error skip`): {sum(skipped_rows.values())} ("
            + ", ".join(f"{n} {k}" for n, k in sorted(skipped_rows.items())) + "); the metrics leave them out") in md
    assert "- **skipped tasks** (`--on-error skip`): " + "; ".join(f"{n} ({why[n]})" for n in lost) in md
    return err, summary


def write_beir(folder: Path, corpus: list[dict], queries: list[dict], judgements: str, split: str = "test") -> Path:
    """A BEIR folder: corpus.jsonl, queries.jsonl and qrels/<split>.tsv (its header, then `judgements`: lines of
    ``query-id\\tcorpus-id\\tscore``)."""
    write_jsonl(folder / "corpus.jsonl", corpus)
    write_jsonl(folder / "queries.jsonl", queries)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + judgements)
    return folder
