"""The bad-input corpus (`tests/bad_inputs.py`) through every command that reads records, in strict and
skip mode. Strict: exit code 2 and ONE line naming the file, the line and the field, before any model
is loaded. Skip: the bad lines are counted under their reasons and the good ones used. Both: nothing
is written outside the data folder and `--out`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from bad_inputs import GOOD_IMAGE, IMAGE_CASES, READER_CASES, RECORD_CASES, Case, build_images, good_record, tree, \
    write_records_file
from unime.cli import main

N_GOOD = 4
BAD_LINE = N_GOOD + 1


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus") / "data"
    build_images(root)
    return root


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith("unime: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _expect_line(line: str, path: Path, case: Case) -> None:
    assert line.startswith(f"unime: error: {path}, record line {BAD_LINE}"), line
    if case.field is not None:
        assert f"field '{case.field}'" in line, line
    assert case.fragment in line, line


STRICT_COMMANDS = {
    "mine": lambda rec, root, out: ["mine", "--records", str(rec), "--data-root", str(root), "--embedder", "no/model",
                                    "--judge", "no/judge", "--out", str(out)],
    "train embedder": lambda rec, root, out: ["train", "embedder", "--model", "no/model", "--records", str(rec),
                                              "--data-root", str(root), "--hard-negatives", "1", "--out", str(out)],
    "train reranker": lambda rec, root, out: ["train", "reranker", "--model", "no/model", "--records", str(rec),
                                              "--data-root", str(root), "--negatives", "1", "--out", str(out)],
    "train judge": lambda rec, root, out: ["train", "judge", "--model", "no/model", "--records", str(rec),
                                           "--data-root", str(root), "--out", str(out)],
    "data convert": lambda rec, root, out: ["data", "convert", str(rec), str(out / "converted.parquet")],
}


@pytest.mark.parametrize("case", RECORD_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("command", list(STRICT_COMMANDS))
def test_strict_mode_stops_with_one_line_naming_file_line_and_field(corpus_root, tmp_path, case, command, capsys):
    if command == "data convert" and case.reason == "image":
        pytest.skip("data convert does not open images")
    path = write_records_file(corpus_root, [case], n_good=N_GOOD, name=f"{case.name}-{command.replace(' ', '_')}.jsonl")
    before = tree(corpus_root)
    out = tmp_path / "out"
    out.mkdir()
    assert main(STRICT_COMMANDS[command](path, corpus_root, out)) == 2
    _expect_line(_one_error_line(capsys), path, case)
    assert tree(corpus_root) == before  # nothing written beside the data
    assert not (out / "converted.parquet").exists() and not (out / "merged").exists()


def test_data_check_lists_every_bad_line_under_its_reason(corpus_root, capsys):
    path = write_records_file(corpus_root, RECORD_CASES, n_good=N_GOOD, name="all-check.jsonl")
    assert main(["data", "check", str(path)]) == 1
    out = capsys.readouterr().out
    counts = Counter(c.reason for c in RECORD_CASES)
    per = ", ".join(f"{r}: {n}" for r, n in sorted(counts.items()))
    assert f"skipped {len(RECORD_CASES)} record(s) ({per})" in out


def test_skip_mode_counts_every_case_and_keeps_the_good_records(corpus_root, tmp_path, capsys):
    from unime.data.io import read_records

    path = write_records_file(corpus_root, READER_CASES, n_good=N_GOOD, name="all-convert.jsonl")
    before = tree(corpus_root)
    out = tmp_path / "converted.jsonl"
    assert main(["data", "convert", str(path), str(out), "--on-error", "skip"]) == 0
    assert [r.id for r in read_records(out)] == [f"r{i}" for i in range(N_GOOD)]
    assert tree(corpus_root) == before


def _skip_counts(stats_skips: dict) -> Counter:
    return Counter({k: int(v) for k, v in stats_skips.items() if v})


EXPECTED_SKIPS = Counter(c.reason for c in RECORD_CASES)


@pytest.mark.slow
def test_skip_mode_through_mining_counts_every_case(corpus_root, tmp_path, tiny_model_dir):
    path = write_records_file(corpus_root, RECORD_CASES, n_good=N_GOOD, name="all-mine.jsonl")
    before = tree(corpus_root)
    out = tmp_path / "mined"
    assert main(["--log-level", "WARNING", "mine", "--records", str(path), "--data-root", str(corpus_root),
                 "--embedder", tiny_model_dir("qwen2_vl"), "--judge", tiny_model_dir("qwen2_vl"), "--out", str(out),
                 "--k", "2", "--count", "1", "--device", "cpu", "--on-error", "skip"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["records"] == N_GOOD
    assert _skip_counts(stats["skipped_records"]["by_reason"]) == EXPECTED_SKIPS
    assert tree(corpus_root) == before


@pytest.mark.slow
def test_skip_mode_through_embedder_and_reranker_training(corpus_root, tmp_path, tiny_model_dir):
    path = write_records_file(corpus_root, RECORD_CASES, n_good=N_GOOD, name="all-train.jsonl")
    before = tree(corpus_root)
    model = tiny_model_dir("qwen2_vl")
    emb = tmp_path / "emb"
    assert main(["--log-level", "WARNING", "train", "embedder", "--model", model, "--records", str(path),
                 "--data-root", str(corpus_root), "--hard-negatives", "1", "--batch-size", "2", "--steps", "1",
                 "--device", "cpu", "--skip-bad-records", "--out", str(emb)]) == 0
    card = (emb / "README.md").read_text()
    assert f"| num_records | {N_GOOD} |" in card
    assert f"skipped_records | total: {len(RECORD_CASES)}" in card
    rr = tmp_path / "rr"
    assert main(["--log-level", "WARNING", "train", "reranker", "--model", model, "--records", str(path),
                 "--data-root", str(corpus_root), "--negatives", "1", "--steps", "1", "--device", "cpu",
                 "--skip-bad-records", "--out", str(rr)]) == 0
    meta = json.loads((rr / "unime_reranker.json").read_text())
    assert meta["records"] == N_GOOD and meta["skipped"] == len(RECORD_CASES)
    assert tree(corpus_root) == before


# -- eval rows, judge pairs, embed items: the same hostile lines in their formats ---------------------------
def _mmeb_row(ref: str) -> dict:
    return {"qry_text": "<|image_1|>\nwhat is shown?", "qry_img_path": ref, "tgt_text": ["grey", "red"],
            "tgt_img_path": ["", ""]}


def _pair(ref: str) -> dict:
    return {"query": {"text": "<|image_1|>\nq", "images": [ref]}, "candidate": {"text": "c"}}


def _item(ref: str) -> dict:
    return {"text": "<|image_1|>\nan image", "images": [ref]}


IMAGE_REFS = {c.name: json.loads(c.line(Path("."))) for c in IMAGE_CASES}
FORMATS = {
    "eval": (_mmeb_row, "query.images[0]"),
    "judge": (_pair, "query.images[0]"),
    "embed": (_item, "item.images[0]"),
}
LINE_CASES = [c for c in READER_CASES if c.field is None and c.name != "not_an_object"]  # format-free lines


def _write_lines(root: Path, name: str, build, bad: list[bytes]) -> Path:
    lines = [json.dumps(build("img/good.png")).encode() for _ in range(N_GOOD)] + bad
    p = root / name
    p.write_bytes(b"\n".join(lines) + b"\n")
    return p


def _format_argv(command: str, path: Path, root: Path, out: Path, model: str) -> list[str]:
    if command == "eval":
        cfg = root / f"{path.stem}.yaml"
        cfg.write_text(json.dumps({"tasks": [{"name": "t", "format": "mmeb", "path": path.name}]}))
        return ["eval", "--model", model, "--tasks", str(cfg), "--out", str(out), "--no-cache", "--device", "cpu"]
    if command == "judge":
        return ["judge", "--pairs", str(path), "--judge", model, "--out", str(out / "scores.jsonl"), "--device", "cpu"]
    return ["embed", "--model", model, "--items", str(path), "--out", str(out / "vectors.npy"), "--device", "cpu"]


def _bad_lines(command: str) -> list[tuple[Case, bytes, str | None]]:
    build, field = FORMATS[command]
    out = [(c, c.line(Path(".")), None) for c in LINE_CASES]
    for c in IMAGE_CASES:
        ref = IMAGE_REFS[c.name]["query"]["images"][0]
        out.append((c, json.dumps(build(ref)).encode(), field))
    return out


@pytest.mark.parametrize("command", list(FORMATS))
def test_eval_judge_and_embed_name_the_file_line_and_field_of_every_case(corpus_root, tmp_path, command, capsys):
    before = None
    for i, (case, line, field) in enumerate(_bad_lines(command)):
        path = _write_lines(corpus_root, f"{command}-{case.name}.jsonl", FORMATS[command][0], [line])
        if before is None:
            before = {k: v for k, v in tree(corpus_root).items() if not k.startswith(command)}
        out = tmp_path / f"out{i}"
        out.mkdir()
        assert main(_format_argv(command, path, corpus_root, out, "no/model")) == 2, case.name
        msg = _one_error_line(capsys)
        assert f"{path}, record line {BAD_LINE}" in msg, msg
        if field is not None:
            assert f"field '{field}'" in msg, msg
        assert case.fragment in msg, msg
        assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".unime")) == [], case.name
    assert {k: v for k, v in tree(corpus_root).items() if not k.startswith(command) and not k.endswith(".yaml")} \
        == {k: v for k, v in before.items() if not k.endswith(".yaml")}


@pytest.mark.slow
@pytest.mark.parametrize("command", list(FORMATS))
def test_eval_judge_and_embed_skip_and_count_every_case(corpus_root, tmp_path, command, tiny_model_dir, capsys):
    bad = _bad_lines(command)
    path = _write_lines(corpus_root, f"{command}-all.jsonl", FORMATS[command][0], [line for _, line, _ in bad])
    out = tmp_path / "out"
    argv = _format_argv(command, path, corpus_root, out, tiny_model_dir("qwen2_vl")) + ["--on-error", "skip"]
    assert main(["--log-level", "WARNING", *argv]) == 0
    printed = capsys.readouterr().out
    expected = Counter(c.reason for c, _, _ in bad)
    per = ", ".join(f"{r}: {n}" for r, n in sorted(expected.items()))
    if command == "eval":
        summary = json.loads((out / "summary.json").read_text())
        assert summary["meta"]["skipped_rows"] == len(bad)
        task = json.loads((out / "tasks" / "t.json").read_text())
        assert task["counts"]["queries"] == N_GOOD and task["counts"]["skipped_rows"] == len(bad)
    elif command == "judge":
        assert f"{N_GOOD} scores; skipped {len(bad)} record(s) ({per})" in printed
        assert len((out / "scores.jsonl").read_text().splitlines()) == N_GOOD
    else:
        import numpy as np

        assert f"{N_GOOD} x " in printed and f"skipped {len(bad)} record(s) ({per})" in printed
        assert np.load(out / "vectors.npy").shape[0] == N_GOOD
        assert json.loads((out / "vectors.npy.lines.json").read_text())["lines"] == list(range(1, N_GOOD + 1))


# -- the commands without a skip policy: strict mode only (the reader cases; their images are opened by
#    the model's loader after it is loaded) ------------------------------------------------------------------
def _tasks_yaml(root: Path) -> Path:
    rows = root / "ref-task.jsonl"
    rows.write_text(json.dumps({"qry_text": "<|image_1|>\nwhat is shown?", "qry_img_path": GOOD_IMAGE,
                                "tgt_text": ["grey", "red"], "tgt_img_path": ["", ""]}) + "\n")
    cfg = root / "ref-tasks.yaml"
    cfg.write_text(json.dumps({"tasks": [{"name": "t", "format": "mmeb", "path": rows.name}]}))
    return cfg


STRICT_ONLY_COMMANDS = {
    "reason generate": lambda rec, root, out: ["reason", "generate", "--model", "no/model", "--records", str(rec),
                                               "--out", str(out / "tcots.jsonl")],
    "reason materialize": lambda rec, root, out: ["reason", "materialize", "--records", str(rec), "--tcots",
                                                  str(rec), "--out", str(out / "reasoned.parquet")],
    "reason split": lambda rec, root, out: ["reason", "split", "--records", str(rec), "--tcots", str(rec),
                                            "--judge", "no/judge", "--out-dir", str(out / "split")],
    "eval reference": lambda rec, root, out: ["eval", "reference", "--tasks", str(_tasks_yaml(root)), "--records",
                                              str(rec), "--data-root", str(root), "--out", str(out / "ref"),
                                              "--max-steps", "1"],
}


@pytest.mark.parametrize("case", READER_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("command", list(STRICT_ONLY_COMMANDS))
def test_commands_without_a_skip_policy_stop_with_the_one_line(corpus_root, tmp_path, case, command, capsys):
    path = write_records_file(corpus_root, [case], n_good=N_GOOD, name=f"{case.name}-{command.replace(' ', '_')}.jsonl")
    before = {k: v for k, v in tree(corpus_root).items() if not k.startswith("ref-")}
    out = tmp_path / "out"
    out.mkdir()
    assert main(STRICT_ONLY_COMMANDS[command](path, corpus_root, out)) == 2
    _expect_line(_one_error_line(capsys), path, case)
    assert {k: v for k, v in tree(corpus_root).items() if not k.startswith("ref-")} == before
    assert sorted(p.name for p in out.rglob("*") if not p.name.startswith(".unime")) in ([], ["ref"], ["split"])


@pytest.mark.slow
def test_index_build_names_the_file_line_and_field_of_every_case(corpus_root, tmp_path, tiny_model_dir, capsys,
                                                                 monkeypatch):
    """`unime index build` (no skip policy; the model is loaded before the corpus is read): every line
    case and every image case of the corpus, as corpus items, stops with the one line."""
    from unime.models.embedder import Embedder

    model = tiny_model_dir("qwen2_vl")
    loaded = Embedder.from_pretrained(model, device="cpu", data_root=str(corpus_root))
    monkeypatch.setattr(Embedder, "from_pretrained", classmethod(lambda cls, *a, **k: loaded))  # loaded once
    for i, (case, line, field) in enumerate(_bad_lines("embed")):
        path = corpus_root / f"index-{case.name}.jsonl"  # good items with distinct ids, then the case
        path.write_bytes(b"\n".join([json.dumps({"id": f"g{k}", **_item(GOOD_IMAGE)}).encode() for k in range(N_GOOD)]
                                    + [line]) + b"\n")
        out = tmp_path / f"idx{i}"
        assert main(["--log-level", "WARNING", "index", "build", "--model", model, "--items", str(path),
                     "--data-root", str(corpus_root), "--out", str(out), "--device", "cpu", "--no-thumbnails",
                     "--cache-dir", str(tmp_path / "cache")]) == 2, case.name
        msg = _one_error_line(capsys)
        assert f"{path}, record line {BAD_LINE}" in msg, msg
        if field is not None:
            assert f"field '{field}'" in msg, msg
        assert case.fragment in msg, msg
