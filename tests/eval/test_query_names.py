"""Query names are unique per task: a task folder of several files names a row without an ``id`` by its file and
line, so the per-query results the paired bootstrap reads hold every query P@1 averages; an ``id`` given twice in a
task is refused, naming both places (the later row left out under the skip policy)."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.eval.helpers import Q, run_suite, write_jsonl, write_png
from unime.data.skips import SkipReport
from unime.errors import DataError
from unime.eval import report
from unime.eval.significance import per_query_hits
from unime.eval.tasks import load_task_config, load_task_data


def two_file_world(root, fmt="mmeb", ids=("", "")):
    """A task folder of two files with one row each: a.jsonl's a hit (red image, 'red' listed first), b.jsonl's a
    miss ('blue' first, 'red' second); `ids` their ``id``s ("" for none)."""
    red = write_png(root, "images/red.png", "red")
    rows = {"a": ["red", "blue"], "b": ["blue", "red"]}
    for (name, cands), rid in zip(rows.items(), ids):
        if fmt == "mmeb":
            row = {"qry_text": Q, "qry_img_path": red, "tgt_text": cands, "tgt_img_path": ["", ""]}
        else:
            row = {"query": {"image": red}, "candidates": [{"text": c} for c in cands], "relevance": [1, 0]}
        write_jsonl(root / "task" / f"{name}.jsonl", [{**row, "id": rid} if rid else row])
    cfg = {"tasks": [{"name": "two", "format": fmt, "path": "task", "meta_task": "classification", "split": "IND"}
                     if fmt == "mmeb" else {"name": "two", "format": fmt, "path": "task"}]}
    (root / "eval_tasks.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return root / "eval_tasks.yaml"


def test_rows_of_two_files_without_ids_are_two_queries_for_the_bootstrap(tmp_path):
    results, out, _ = run_suite(two_file_world(tmp_path))
    assert results["two"].metrics["precision@1"] == 0.5
    assert [q["id"] for q in results["two"].per_query] == ["a.jsonl line 1", "b.jsonl line 1"]
    report.write_run(tmp_path / "out", out, meta={})
    assert per_query_hits(tmp_path / "out") == {"two": {"a.jsonl line 1": 1.0, "b.jsonl line 1": 0.0}}


def test_a_single_file_task_keeps_its_line_names(tmp_path):
    world = two_file_world(tmp_path)
    (tmp_path / "task" / "b.jsonl").unlink()
    results, _, _ = run_suite(world)
    assert [q["id"] for q in results["two"].per_query] == ["line 1"]


@pytest.mark.parametrize("fmt", ["mmeb", "qrels"])
def test_an_id_given_twice_in_a_task_is_refused_naming_both_places(tmp_path, fmt):
    spec = load_task_config(two_file_world(tmp_path, fmt, ids=("x", "x"))).tasks[0]
    with pytest.raises(DataError) as e:
        load_task_data(spec)
    msg = str(e.value)
    assert "query id 'x' given twice" in msg and "a.jsonl, line 1 (id x)" in msg and "b.jsonl" in msg
    skips = SkipReport()
    data = load_task_data(spec, on_error="skip", skips=skips)
    assert data.ids == ["x"] and skips.total == 1
    # distinct ids, or an id and a file-and-line name, are two queries
    spec = load_task_config(two_file_world(tmp_path, fmt, ids=("x", ""))).tasks[0]
    assert load_task_data(spec).ids == ["x", "b.jsonl line 1"]


def test_per_query_hits_refuses_a_result_folder_with_an_id_twice(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "summary.json").write_text(json.dumps({"task_info": {"t": {"format": "mmeb"}}}))
    rows = [{"id": "line 1", "hit": True}, {"id": "line 1", "hit": False}]
    (tmp_path / "tasks" / "t.json").write_text(json.dumps({"per_query": rows}))
    with pytest.raises(DataError, match="1 of 2 per-query results share an id"):
        per_query_hits(tmp_path)

