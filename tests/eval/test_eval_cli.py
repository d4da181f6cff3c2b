"""`unime eval` end to end on a real tiny model: outputs, encode-once, cache hit, comparison, rerank errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from tests.eval.helpers import build_world
from unime.cli import main
from unime.errors import ModelError
from unime.eval.tasks import load_task_config, load_task_data


def test_unime_eval_on_a_tiny_model(tiny_model_dir, tmp_path, monkeypatch):
    from unime.models.embedder import Embedder

    model = tiny_model_dir("qwen2_vl")
    world = tmp_path / "world"
    build_world(world)
    rows_forwarded = []
    original = Embedder.forward

    def counting_forward(self, inputs, **kw):
        rows_forwarded.append(int(inputs["input_ids"].shape[0]))
        return original(self, inputs, **kw)

    monkeypatch.setattr(Embedder, "forward", counting_forward)
    cache = tmp_path / "cache"
    argv = ["eval", "--model", model, "--tasks", str(world), "--cache-dir", str(cache), "--device", "cpu",
            "--batch-size", "8"]
    assert main(argv + ["--out", str(tmp_path / "run1")]) == 0
    run1 = tmp_path / "run1"
    summary = json.loads((run1 / "summary.json").read_text())
    suite = load_task_config(world)
    distinct = set()
    for spec in suite.tasks:
        distinct |= {(it.text, it.images) for it in load_task_data(spec).table.items}
    enc = summary["encoding"]
    assert enc["distinct_items"] == len(distinct) and enc["encoded"] == len(distinct) and enc["from_cache"] == 0
    assert sum(rows_forwarded) == len(distinct)  # every distinct item through the model exactly once
    assert set(summary["tasks"]) == {t.name for t in suite.tasks}
    for name, metrics in summary["tasks"].items():
        assert all(0.0 <= v <= 1.0 for v in metrics.values()), name
    assert set(summary["aggregates"]["mmeb"]["scores"]) == {"classification", "retrieval", "IND", "OOD", "overall"}
    for f in ("results.md", "per_task.png", "tasks/colours_retrieval.json"):
        assert (run1 / f).is_file()

    # second run, same model and cache: nothing encoded, same numbers
    rows_forwarded.clear()
    assert main(argv + ["--out", str(tmp_path / "run2")]) == 0
    summary2 = json.loads((tmp_path / "run2" / "summary.json").read_text())
    assert rows_forwarded == []
    assert summary2["encoding"]["encoded"] == 0 and summary2["encoding"]["from_cache"] == len(distinct)
    assert summary2["tasks"] == summary["tasks"]

    # the cached vectors are the model's vectors
    emb = Embedder.from_pretrained(model, device="cpu", data_root=str(world))
    spec = suite.tasks[0]
    data = load_task_data(spec)
    direct = emb.encode(data.table.items)
    from unime.models.embedding_cache import RunEncoder

    enc2 = RunEncoder(emb, json.loads((run1 / "summary.json").read_text())["meta"]["model_id"], cache_dir=cache)
    rows = enc2.add(data.table.items, spec.data_root)
    enc2.encode_pending()
    assert enc2.stats.encoded == 0
    np.testing.assert_allclose(enc2.vectors(rows), direct, atol=1e-5)

    # comparison without a model
    assert main(["eval", "--compare", str(run1), str(tmp_path / "run2"), "--out", str(tmp_path / "cmp")]) == 0
    cmp = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert cmp["columns"] == ["run1", "run2"]
    assert (tmp_path / "cmp" / "comparison.png").is_file()


def test_unime_eval_rerank_without_a_reranker_is_a_clear_error(tiny_model_dir, tmp_path, monkeypatch, capsys):
    world = tmp_path / "world"
    build_world(world)
    monkeypatch.setitem(sys.modules, "unime.models.reranker", None)
    argv = ["eval", "--model", tiny_model_dir("qwen2_vl"), "--tasks", str(world), "--out", str(tmp_path / "o"),
            "--no-cache", "--device", "cpu", "--rerank", "some/ckpt", "--topk", "3", "--mode", "resort"]
    assert main(argv) == 2  # the CLI's error contract: one line, exit code 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        "unime: error: cannot load the reranker 'some/ckpt'")
    from unime.eval.runners import load_reranker

    with pytest.raises(ModelError, match="reranker"):  # the error behind the line
        load_reranker("some/ckpt")


def test_unime_eval_skip_drops_a_bad_candidate_and_leaves_out_a_task_without_rows(tiny_model_dir, tmp_path):
    import yaml

    from tests.eval.helpers import write_jsonl

    world = tmp_path / "world"
    cfg = build_world(world)
    gone = "images/gone.png"  # no such file
    write_jsonl(world / "eval/mmeb/t2i.jsonl", [  # like an import's t2i task: every image is a candidate
        {"qry_text": "red", "qry_img_path": "", "tgt_text": ["", "", ""],
         "tgt_img_path": ["images/red.png", gone, "images/blue.png"]},
        {"qry_text": "blue", "qry_img_path": "", "tgt_text": ["", "", ""],
         "tgt_img_path": ["images/blue.png", "images/red.png", gone]}])
    write_jsonl(world / "eval/mmeb/lost.jsonl", [  # its one row's positive is missing: no good row
        {"qry_text": "grey", "qry_img_path": "", "tgt_text": ["", ""], "tgt_img_path": [gone, "images/red.png"]}])
    tasks = yaml.safe_load(cfg.read_text())
    tasks["tasks"] += [{"name": n, "format": "mmeb", "path": f"eval/mmeb/{n}.jsonl", "meta_task": "retrieval"}
                       for n in ("t2i", "lost")]
    cfg.write_text(yaml.safe_dump(tasks, sort_keys=False))
    out = tmp_path / "o"
    argv = ["eval", "--model", tiny_model_dir("qwen2_vl"), "--tasks", str(world), "--out", str(out), "--no-cache",
            "--device", "cpu"]
    assert main(argv + ["--on-error", "skip"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert "lost" not in summary["tasks"] and summary["meta"]["skipped_tasks"] == ["lost"]
    assert summary["meta"]["dropped_candidates"] == 2 and summary["meta"]["skipped_rows"] == 1  # lost's row
    t2i = json.loads((out / "tasks" / "t2i.json").read_text())
    assert t2i["counts"]["queries"] == 2 and t2i["counts"]["dropped_candidates"] == 2
    md = (out / "results.md").read_text()
    why = summary["meta"]["skipped_task_reasons"]
    assert list(why) == ["lost"] and why["lost"].startswith("no good rows: ") and "lost.jsonl" in why["lost"]
    assert f"- **skipped tasks** (`--on-error skip`): lost ({why['lost']})" in md
    assert "- **dropped candidates** (`--on-error skip`): 2 bad candidates" in md


def test_unime_eval_skip_counts_the_rows_of_a_task_left_without_rows(tiny_model_dir, tmp_path):
    """Under `--on-error skip` a task whose 6 rows were all bad was left out with `skipped_rows` counting only the
    other task's 1 bad row, and a reason naming no row. summary.json now counts 7 (per task: half 1, gone 6), and
    the reason (summary.json and results.md) keeps the first bad row's file, line, field and message."""
    from tests.eval.helpers import half_and_gone_tasks

    cfg = half_and_gone_tasks(tmp_path)
    out = tmp_path / "o"
    assert main(["eval", "--model", tiny_model_dir("qwen2_vl"), "--tasks", str(cfg), "--out", str(out), "--no-cache",
                 "--device", "cpu", "--on-error", "skip"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    meta = summary["meta"]
    assert list(summary["tasks"]) == ["half"] and summary["task_counts"]["half"]["queries"] == 3
    assert summary["task_counts"]["half"]["skipped_rows"] == 1
    assert meta["skipped_rows"] == 7 and meta["skipped_task_rows"] == {"gone": 6} and meta["skipped_tasks"] == ["gone"]
    why = meta["skipped_task_reasons"]["gone"]
    assert why.startswith("no good rows: ")
    assert f"; first bad row: {tmp_path / 'gone.jsonl'}, record line 1, field 'query.images[0]': " in why
    md = (out / "results.md").read_text().splitlines()
    assert "- **skipped rows** (`--on-error skip`): 7 (gone 6, half 1); the metrics leave them out" in md
    assert f"- **skipped tasks** (`--on-error skip`): gone ({why})" in md
