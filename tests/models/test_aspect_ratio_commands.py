"""The aspect-ratio limit of the model's image processor (`tests/models/test_aspect_ratio.py`) in every command that
gives images to a model: a 2000x8 image (250:1, over the 200 every Qwen-VL processor takes) ended in transformers'
bare "absolute aspect ratio must be smaller than 200" traceback in `unime judge`, `unime train embedder`,
`unime mine` (skip policy ignored), `unime serve` (a 500) ... It is now a bad image: named (file, record, field),
or skipped and counted under --on-error skip; a request gets a 400 naming the input."""

from __future__ import annotations

import base64
import io
import json
import shutil

import pytest

from PIL import Image

from tests.embed_rl.helpers import embed_rl_commands, write_image_world
from unime.cli import main

WIDE = "image wide.png is 2000x8: its long side is 250 times its short side, over the 200 the model's image " \
       "processor accepts"


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _images(root):
    Image.new("RGB", (2000, 8), (200, 0, 0)).save(root / "wide.png")
    for name, colour in (("red", (220, 0, 0)), ("blue", (0, 0, 220)), ("green", (0, 200, 0)),
                         ("yellow", (220, 220, 0))):
        Image.new("RGB", (32, 32), colour).save(root / f"{name}.png")


def _records(root):
    """Four records, the second's positive the wide image (line 2)."""
    _images(root)
    rows = [{"id": f"r{i}", "query": {"text": f"a {c} picture"}, "positive": {"images": [f"{p}.png"]}}
            for i, (c, p) in enumerate([("red", "red"), ("wide", "wide"), ("blue", "blue"), ("green", "green"),
                                        ("yellow", "yellow")])]
    return _jsonl(root / "records.jsonl", rows)


def test_judge_names_the_image_or_skips_and_counts_it(tiny_model_dir, tmp_path, capsys):
    _images(tmp_path)
    pairs = _jsonl(tmp_path / "pairs.jsonl", [
        {"id": "p1", "query": {"text": "red"}, "candidate": {"images": ["red.png"]}},
        {"id": "p2", "query": {"text": "red"}, "candidate": {"images": ["wide.png"]}},
    ])
    model = tiny_model_dir("qwen2_vl")
    capsys.readouterr()
    run = ["judge", "--pairs", str(pairs), "--judge", model, "--device", "cpu"]
    assert main([*run, "--out", str(tmp_path / "a.jsonl")]) != 0
    assert capsys.readouterr().err.strip().splitlines() == [
        f"unime: error: {pairs}, record line 2 (id p2), field 'candidate.images[0]': {WIDE}"]
    assert main([*run, "--out", str(tmp_path / "b.jsonl"), "--on-error", "skip"]) == 0
    assert "skipped 1 record(s) (image: 1)" in capsys.readouterr().out
    assert [json.loads(x)["id"] for x in (tmp_path / "b.jsonl").read_text().splitlines()] == ["p1"]


def test_train_embedder_names_the_image_or_skips_and_counts_it(tiny_model_dir, tmp_path, capsys):
    records, model = _records(tmp_path), tiny_model_dir("qwen2_vl")
    capsys.readouterr()
    run = ["train", "embedder", "--model", model, "--records", str(records), "--full", "--steps", "1",
           "--batch-size", "2", "--device", "cpu"]
    assert main([*run, "--out", str(tmp_path / "a")]) != 0
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"unime: error: {records}, record line 2 (id r1), field 'positive.images[0]': {WIDE}")
    assert main([*run, "--out", str(tmp_path / "b"), "--on-error", "skip"]) == 0
    assert "| skipped_records | total: 1, image: 1 |" in (tmp_path / "b" / "README.md").read_text()


def test_mine_skips_and_counts_it(tiny_model_dir, tmp_path, capsys):
    records, model = _records(tmp_path), tiny_model_dir("qwen2_vl")
    capsys.readouterr()
    run = ["mine", "--records", str(records), "--embedder", model, "--judge", model, "--k", "3", "--count", "1",
           "--device", "cpu"]
    assert main([*run, "--out", str(tmp_path / "a")]) != 0
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"unime: error: {records}, record line 2 (id r1), field 'positive.images[0]': {WIDE}")
    assert main([*run, "--out", str(tmp_path / "b"), "--on-error", "skip"]) == 0
    skipped = json.loads((tmp_path / "b" / "stats.json").read_text())["skipped_records"]
    assert (skipped["total"], skipped["by_reason"]) == (1, {"image": 1})


def _data_uri(size):
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 0, 0)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_serve_answers_400_naming_the_input(tiny_model_dir):
    from fastapi.testclient import TestClient

    from unime.serve.app import create_app
    from unime.serve.config import ServeConfig
    from unime.serve.engine import Engine

    model = tiny_model_dir("qwen2_vl")
    engine = Engine.load(ServeConfig(model=model, reranker=model, device="cpu", no_auth=True))
    app = create_app(engine, ServeConfig(model=model, no_auth=True))
    try:
        with TestClient(app) as c:
            name = c.get("/health").json()["model"]
            r = c.post("/v1/embeddings", json={"model": name, "input": ["x", {"image": _data_uri((2000, 8))}]})
            rr = c.post("/v1/rerank", json={"query": "red", "documents": ["a", {"image": _data_uri((8, 2000))}]})
            ok = c.post("/v1/embeddings", json={"model": name, "input": [{"image": _data_uri((1600, 8))}]})
    finally:
        engine.close()
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"] == ("field 'input[1].image': image <inline bytes> is 2000x8: its long side is "
                                            "250 times its short side, over the 200 the model's image processor "
                                            "accepts")
    assert rr.status_code == 400, rr.text
    assert rr.json()["error"]["message"].startswith("field 'documents[1].image': image <inline bytes> is 8x2000")
    assert ok.status_code == 200, ok.text  # 200: the processor takes it


def test_train_judge_names_the_image_or_skips_and_counts_it(tiny_model_dir, tmp_path, capsys):
    _images(tmp_path)
    rows = [{"id": f"r{i}", "query": {"text": f"a {c} picture"}, "positive": {"images": [f"{c}.png"]},
             "negatives": [{"images": [n]}]}
            for i, (c, n) in enumerate([("red", "blue.png"), ("green", "wide.png"), ("yellow", "red.png")])]
    records, model = _jsonl(tmp_path / "records.jsonl", rows), tiny_model_dir("qwen2_vl")
    capsys.readouterr()
    run = ["train", "judge", "--model", model, "--records", str(records), "--full", "--steps", "1", "--batch-size", "2",
           "--device", "cpu"]
    assert main([*run, "--out", str(tmp_path / "a")]) != 0
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"unime: error: {records}, record line 2 (id r1), field 'negatives[0].images[0]': {WIDE}")
    assert main([*run, "--out", str(tmp_path / "b"), "--on-error", "skip"]) == 0


def test_index_build_names_the_image(tiny_model_dir, tmp_path, capsys):
    _images(tmp_path)
    items = _jsonl(tmp_path / "items.jsonl", [{"id": "a", "text": "hi"}, {"id": "b", "images": ["wide.png"]}])
    capsys.readouterr()
    assert main(["index", "build", "--model", tiny_model_dir("qwen2_vl"), "--items", str(items),
                 "--out", str(tmp_path / "idx"), "--device", "cpu"]) != 0
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"unime: error: {items}, record line 2 (id b), field 'item.images[0]': {WIDE}")


@pytest.fixture(scope="module")
def image_world(tmp_path_factory):
    return write_image_world(tmp_path_factory.mktemp("image_world"))


@pytest.mark.slow
@pytest.mark.parametrize("command, where", [
    ("train reasoner sft", "tcots.jsonl, record line 4 (id r1, side target), field 'item.images[0]'"),
    ("train reasoner grpo", "records.jsonl, record line 2 (id r1), field 'positive.images[0]'"),
    ("reason eval", "task.jsonl, record line 1, field 'candidates[1].images[0]'")])
def test_embed_rl_commands_name_the_image(command, where, image_world, tiny_model_dir, tmp_path, capsys):
    """The Embed-RL commands (`write_image_world`, its blue image made 2000x8)."""
    root = tmp_path / "world"
    shutil.copytree(image_world, root)
    Image.new("RGB", (2000, 8), (40, 80, 220)).save(root / "blue.png")
    commands = embed_rl_commands(root, tiny_model_dir)
    argv = [a.replace("{out}", str(tmp_path / "out")) for a in commands[command]]
    capsys.readouterr()
    assert main(argv) != 0
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"unime: error: {root}/{where}: {WIDE.replace('wide.png', 'blue.png')}")
