"""`unime.eval.rerun.begin`: a finished evaluation is recognised whatever the spelling of its paths."""

from __future__ import annotations

import json

from unime.eval import rerun


def test_a_finished_run_is_finished_with_its_task_files_spelled_otherwise(tmp_path, monkeypatch):
    """The task files are recorded by the path they were read from (`input_identity`): `world/eval/t.jsonl`,
    `./world/eval/t.jsonl` and the absolute path are the same input; other bytes are not."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "world").mkdir()
    (tmp_path / "world" / "t.jsonl").write_text("{}\n")
    out = tmp_path / "ev"
    out.mkdir()
    options = {"model": "m", "tasks": ["world"]}
    inputs = {"model": "fp", "task_files": {"t": [["world/t.jsonl", "aa"]]}}
    assert rerun.begin(out, options, inputs, overwrite=False) is None
    record = rerun.read_run(out)
    rerun.write_run(out, {**record, "finished": True})
    (out / "summary.json").write_text(json.dumps({"tasks": 1}))
    spelled = {"model": "fp", "task_files": {"t": [[str(tmp_path / "world" / "t.jsonl"), "aa"]]}}
    assert rerun.begin(out, {**options, "tasks": ["./world/"]}, spelled, overwrite=False) == {"tasks": 1}
    changed = {"model": "fp", "task_files": {"t": [["world/t.jsonl", "bb"]]}}
    assert rerun.begin(out, options, changed, overwrite=False) is None  # evaluated again
