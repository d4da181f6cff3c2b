"""The bad-input corpus (`tests/bad_inputs.py`) through every command that reads records, in strict and
skip mode. Strict: exit code 2 and ONE line naming the file, the line and the field, before any model
is loaded. Skip: the bad lines are counted under their reasons and the good ones used. Both: nothing
is written outside the data folder and `--out`."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from tests.bad_inputs import GOOD_IMAGE, IMAGE_CASES, READER_CASES, RECORD_CASES, Case, build_images, good_record, \
    tree, write_records_file
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
def test_skip_mode_through_mining_counts_every_case(corpus_root, tmp_path, tiny_model_dir, capsys):
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
    assert stats["skipped_records"]["summary"] in capsys.readouterr().out  # on the console too (QA)


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
        assert (f"- **skipped rows** (`--on-error skip`): {len(bad)} (t {len(bad)}); the metrics leave them out"
                in (out / "results.md").read_text())  # the report says so, not only the logs
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
    """`unime index build` (strict, its default; the model is loaded before the corpus is read): every line
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


# -- data import: the corpus as rows of a captions table (CSV, TSV, JSONL) and as COCO entries ---------------
# every case that has a form in these layouts; columns file (image), text (caption), category (label)
N_IMPORT_GOOD = 6
TABLE_FORMATS = ("csv", "tsv", "jsonl")
_CAPTION_IMAGE = "img/good.png"  # the caption cases' image (no good row names it)


@dataclass(frozen=True)
class ImportCase:
    name: str
    formats: tuple[str, ...]
    row: dict | Callable[[str], bytes]   # a row (rendered per format), or format -> the raw line
    reason: str
    field: dict                          # format -> the field the error names (None: the whole line)
    fragment: str


def _all(field):
    return {f: field for f in TABLE_FORMATS}


def _raw_not_utf8(fmt: str) -> bytes:
    if fmt == "jsonl":
        return b'{"file": "img/good.png", "text": "caf\xe9 au lait", "category": "circle"}'
    sep = b"\t" if fmt == "tsv" else b","
    return sep.join([b"img/good.png", b"caf\xe9 au lait", b"circle"])


def _image_cases() -> list[ImportCase]:
    cases = [ImportCase("image_empty_ref", TABLE_FORMATS, {"file": "", "text": "no picture", "category": "circle"},
                        "empty_item", _all("file"), "no image path")]
    for c in IMAGE_CASES:
        ref = IMAGE_REFS[c.name]["query"]["images"][0]
        if c.name == "image_parent_escape":
            ref = "../" + Path(corpus_outside_name()).name  # a file that exists, one level up
        cases.append(ImportCase(c.name, TABLE_FORMATS, {"file": ref, "text": f"case {c.name}", "category": "circle"},
                                "image", _all("file"), c.fragment))
    return cases


def corpus_outside_name() -> str:
    return "data-outside.png"  # `build_images` writes ROOT.parent / f"{ROOT.name}-outside.png" (ROOT = data)


IMPORT_CASES: list[ImportCase] = [
    ImportCase("not_utf8", TABLE_FORMATS, _raw_not_utf8, "not_utf8",
               {"csv": "text", "tsv": "text", "jsonl": None}, "not UTF-8 text at"),
    ImportCase("malformed_json", ("jsonl",), lambda f: b'{"file": "img/good.png", ', "malformed_json",
               {"jsonl": None}, "malformed JSON"),
    ImportCase("deep_json", ("jsonl",), lambda f: b"[" * 100_000 + b"]" * 100_000, "malformed_json",
               {"jsonl": None}, "nested too deeply"),
    ImportCase("not_an_object", ("jsonl",), lambda f: b"[1, 2]", "schema", {"jsonl": None}, "expected an object"),
    ImportCase("missing_caption", TABLE_FORMATS, {"file": _CAPTION_IMAGE}, "schema", _all("text"),
               "missing caption"),
    ImportCase("text_not_string", ("jsonl",), {"file": _CAPTION_IMAGE, "text": 5, "category": "circle"}, "schema",
               {"jsonl": "text"}, "expected a caption string, got int"),
    ImportCase("empty_caption", TABLE_FORMATS, {"file": _CAPTION_IMAGE, "text": "   ", "category": "circle"},
               "empty_item", _all("text"), "empty caption"),
    ImportCase("placeholder", TABLE_FORMATS, {"file": _CAPTION_IMAGE, "text": "<|image_1|> a picture",
                                             "category": "circle"}, "placeholder", _all("text"),
               "caption holds the image placeholder '<|image_1|>'"),
    ImportCase("label_not_scalar", ("jsonl",), {"file": _CAPTION_IMAGE, "text": "a picture", "category": [1]},
               "schema", {"jsonl": "category"}, "expected a label (string or integer), got list"),
    *_image_cases(),
]


def _render(row: dict, fmt: str) -> bytes:
    if fmt == "jsonl":
        return json.dumps(row).encode()
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf, delimiter="\t" if fmt == "tsv" else ",", lineterminator="").writerow(
        [row[k] for k in ("file", "text", "category") if k in row])
    return buf.getvalue().encode()


def _good_rows() -> list[dict]:
    return [{"file": f"img/g{i}.png", "text": f"good picture {i}", "category": "square" if i % 2 else "circle"}
            for i in range(N_IMPORT_GOOD)]


def write_captions(folder: Path, fmt: str, cases: list[ImportCase], name: str) -> tuple[Path, dict[str, int]]:
    """The good rows, then each case's row. Returns the file and the 1-based line of each case."""
    lines = [] if fmt == "jsonl" else [("\t" if fmt == "tsv" else ",").join(("file", "text", "category")).encode()]
    lines += [_render(r, fmt) for r in _good_rows()]
    where = {}
    for c in cases:
        lines.append(c.row(fmt) if callable(c.row) else _render(c.row, fmt))
        where[c.name] = len(lines)
    path = folder / f"{name}.{fmt}"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, where


@pytest.fixture(scope="module")
def import_root(corpus_root) -> Path:
    """The corpus folder with the good rows' images (distinct pictures) added."""
    for i in range(N_IMPORT_GOOD):
        if not (corpus_root / f"img/g{i}.png").exists():
            Image.fromarray(np.full((16, 16, 3), 20 * i, np.uint8)).save(corpus_root / f"img/g{i}.png")
    return corpus_root


def _import_argv(captions: Path, root: Path, out: Path, *extra: str) -> list[str]:
    return ["data", "import", "--captions", str(captions), "--images", str(root), "--out", str(out),
            "--eval-candidates", "3", *extra]


@pytest.mark.parametrize("fmt", TABLE_FORMATS)
def test_data_import_strict_names_the_file_line_and_field_of_every_case(import_root, tmp_path, fmt, capsys):
    before = tree(import_root)
    tried = 0
    for case in [c for c in IMPORT_CASES if fmt in c.formats]:
        captions, where = write_captions(tmp_path, fmt, [case], f"{case.name}")
        out = tmp_path / f"out-{case.name}"
        assert main(_import_argv(captions, import_root, out)) == 2, case.name
        line = _one_error_line(capsys)
        assert line.startswith(f"unime: error: {captions}, record line {where[case.name]}"), line
        field = case.field[fmt]
        if field is not None:
            assert f"field '{field}'" in line, line
        else:
            assert "field '" not in line, line
        assert case.fragment in line, line
        assert not (out / "import.json").exists()
        tried += 1
    assert tree(import_root) == before  # nothing written beside the data
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("out-")) == \
        sorted(f"{c.name}.{fmt}" for c in IMPORT_CASES if fmt in c.formats)  # nor beside the captions
    assert tried == len([c for c in IMPORT_CASES if fmt in c.formats])


@pytest.mark.parametrize("fmt", TABLE_FORMATS)
def test_data_import_skip_counts_every_case_on_the_console_and_in_import_json(import_root, tmp_path, fmt, capsys):
    cases = [c for c in IMPORT_CASES if fmt in c.formats]
    captions, _ = write_captions(tmp_path, fmt, cases, "all")
    before = tree(import_root)
    out = tmp_path / "out"
    assert main(_import_argv(captions, import_root, out, "--on-error", "skip")) == 0
    printed = capsys.readouterr().out
    expected = Counter(c.reason for c in cases)
    per = ", ".join(f"{r}: {n}" for r, n in sorted(expected.items()))
    assert f"skipped {len(cases)} record(s) ({per})" in printed
    manifest = json.loads((out / "import.json").read_text())
    assert manifest["skipped"]["total"] == len(cases)
    assert manifest["skipped"]["by_reason"] == dict(sorted(expected.items()))
    assert manifest["images"] == N_IMPORT_GOOD
    assert sorted(p.name for p in (out / "images" / "img").iterdir()) == [f"g{i}.png" for i in range(N_IMPORT_GOOD)]
    assert tree(import_root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"all.{fmt}", "out"]


def _coco(images: list, annotations: list) -> bytes:
    return json.dumps({"images": images, "annotations": annotations}).encode()


def _coco_good() -> tuple[list, list]:
    imgs = [{"id": i, "file_name": f"img/g{i}.png"} for i in range(N_IMPORT_GOOD)]
    anns = [{"image_id": i, "caption": f"good picture {i}"} for i in range(N_IMPORT_GOOD)]
    return imgs, anns


# (name, images added, annotations added, reason, record, field, fragment); records count from 1
COCO_ENTRY_CASES = [
    *[(c.name, [{"id": 100 + k, "file_name": c.row["file"]}], [{"image_id": 100 + k, "caption": "a caption"},
                                                                 {"image_id": 100 + k, "caption": "another"}],
       c.reason if c.name != "image_empty_ref" else "image", f"image {N_IMPORT_GOOD + 1}", "file_name",
       c.fragment if c.name != "image_empty_ref" else "image file not found: ''")
      for k, c in enumerate(_image_cases())],
    ("annotation_not_an_object", [], [[1, 2]], "schema", f"annotation {N_IMPORT_GOOD + 1}", None, "expected an object"),
    ("caption_not_string", [], [{"image_id": 0, "caption": 5}], "schema", f"annotation {N_IMPORT_GOOD + 1}",
     "caption", "expected a caption string, got int"),
    ("empty_caption", [], [{"image_id": 0, "caption": " "}], "empty_item", f"annotation {N_IMPORT_GOOD + 1}",
     "caption", "empty caption"),
    ("placeholder", [], [{"image_id": 0, "caption": "<image> here"}], "placeholder", f"annotation {N_IMPORT_GOOD + 1}",
     "caption", "caption holds the image placeholder '<image>'"),
    ("unknown_image_id", [], [{"image_id": 999, "caption": "lost"}], "schema", f"annotation {N_IMPORT_GOOD + 1}",
     "image_id", "image_id 999 is not in 'images'"),
    ("image_entry_not_an_object", [[1]], [], "schema", f"image {N_IMPORT_GOOD + 1}", "file_name",
     "expected {id, file_name}"),
]
COCO_FILE_CASES = [  # the whole file is one record: stops in both modes
    ("not_utf8", b'{"images": [], "annotations": [],\n "info": "caf\xe9"}', "line 2",
     "not UTF-8 text at column 14"),
    ("malformed_json", b'{"images": [], "annotations": [\n', "line 2", "malformed JSON"),
    ("deep_json", b"[" * 100_000 + b"]" * 100_000, None, "nested too deeply"),
]


def test_data_import_coco_strict_and_skip_for_every_case(import_root, tmp_path, capsys):
    before = tree(import_root)
    good_imgs, good_anns = _coco_good()
    for name, imgs, anns, reason, record, field, fragment in COCO_ENTRY_CASES:
        path = tmp_path / f"coco-{name}.json"
        path.write_bytes(_coco(good_imgs + imgs, good_anns + anns))
        assert main(["data", "import", "--coco", str(path), "--images", str(import_root), "--out",
                     str(tmp_path / f"out-{name}"), "--eval-candidates", "3"]) == 2, name
        line = _one_error_line(capsys)
        assert line.startswith(f"unime: error: {path}, record {record}"), line
        assert (f"field '{field}'" in line) if field else ("field '" not in line), line
        assert fragment in line, line
    for name, content, record, fragment in COCO_FILE_CASES:
        path = tmp_path / f"coco-{name}.json"
        path.write_bytes(content)
        for mode in ("raise", "skip"):
            assert main(["data", "import", "--coco", str(path), "--images", str(import_root), "--out",
                         str(tmp_path / f"out-{name}"), "--on-error", mode]) == 2, name
            line = _one_error_line(capsys)
            assert line.startswith(f"unime: error: {path}" + (f", record {record}" if record else ":")), line
            assert fragment in line, line
    # skip mode: every entry case in one file, each counted once (an image's two captions go with it)
    path = tmp_path / "coco-all.json"
    path.write_bytes(_coco(good_imgs + [i for c in COCO_ENTRY_CASES for i in c[1]],
                           good_anns + [a for c in COCO_ENTRY_CASES for a in c[2]]))
    out = tmp_path / "out-all"
    assert main(["data", "import", "--coco", str(path), "--images", str(import_root), "--out", str(out),
                 "--eval-candidates", "3", "--on-error", "skip"]) == 0
    expected = Counter(c[3] for c in COCO_ENTRY_CASES)
    per = ", ".join(f"{r}: {n}" for r, n in sorted(expected.items()))
    assert f"skipped {len(COCO_ENTRY_CASES)} record(s) ({per})" in capsys.readouterr().out
    manifest = json.loads((out / "import.json").read_text())
    assert manifest["skipped"]["by_reason"] == dict(sorted(expected.items())) and manifest["images"] == N_IMPORT_GOOD
    assert tree(import_root) == before


# -- train reasoner (--stage sft: T-CoT lines; --stage grpo: records) and reason teacher ---------------------
def _tcot_row(i: int, item: dict | None = None) -> dict:
    return {"record_id": f"r{i}", "side": "query", "item": item or _item(GOOD_IMAGE),
            "tcot": "<thinking>{}</thinking><rethink>r</rethink><answer>a</answer>"}


def _tcot_case_lines() -> list[tuple[str, bytes, str, str | None, str]]:
    """(name, line, reason, field, fragment) of every corpus case that has a form in a T-CoT line."""
    out = [(c.name, c.line(Path(".")), c.reason, None, c.fragment) for c in LINE_CASES]
    out.append(("not_an_object", b"[1, 2]", "schema", None, "expected a JSON object"))
    out.append(("missing_tcot", json.dumps({k: v for k, v in _tcot_row(99).items() if k != "tcot"}).encode(),
                "schema", "tcot", "missing key 'tcot'"))
    out.append(("bad_side", json.dumps({**_tcot_row(99), "side": "left"}).encode(), "schema", "side",
                "side must be one of"))
    out.append(("tcot_not_string", json.dumps({**_tcot_row(99), "tcot": 5}).encode(), "schema", "tcot",
                "tcot must be a string"))
    out.append(("text_not_string", json.dumps(_tcot_row(99, {"text": 5})).encode(), "schema", "item.text",
                "must be a string"))
    out.append(("empty_item", json.dumps(_tcot_row(99, {"text": ""})).encode(), "empty_item", "item", "empty item"))
    out.append(("placeholder", json.dumps(_tcot_row(99, {"text": "<|image_1|> no image"})).encode(), "placeholder",
                "item.text", "placeholder"))
    out.append(("image_empty_ref", json.dumps(_tcot_row(99, _item(""))).encode(), "schema", "item.images",
                "non-empty"))
    for c in IMAGE_CASES:
        ref = IMAGE_REFS[c.name]["query"]["images"][0]
        out.append((c.name, json.dumps(_tcot_row(99, _item(ref))).encode(), "image", "item.images[0]", c.fragment))
    return out


def _write_tcots(root: Path, name: str, bad: list[bytes]) -> Path:
    path = root / name
    path.write_bytes(b"\n".join([json.dumps(_tcot_row(i)).encode() for i in range(N_GOOD)] + bad) + b"\n")
    return path


def test_train_reasoner_sft_names_the_file_line_and_field_of_every_case(corpus_root, tmp_path, capsys):
    cases = _tcot_case_lines()
    before = None
    for name, line, _, field, fragment in cases:
        path = _write_tcots(corpus_root, f"sft-{name}.jsonl", [line])
        before = before or {k: v for k, v in tree(corpus_root).items() if not k.startswith("sft-")}
        out = tmp_path / f"out-{name}"
        assert main(["train", "reasoner", "--stage", "sft", "--model", "no/model", "--tcots", str(path), "--out",
                     str(out), "--data-root", str(corpus_root)]) == 2, name
        msg = _one_error_line(capsys)
        assert msg.startswith(f"unime: error: {path}, record line {BAD_LINE}"), msg
        assert (f"field '{field}'" in msg) if field else ("field '" not in msg), msg
        assert fragment in msg, msg
        assert not (out / "sft_summary.json").exists() and not (out / "config.json").exists()
    assert {k: v for k, v in tree(corpus_root).items() if not k.startswith("sft-")} == before
    assert len(cases) == len(LINE_CASES) + 8 + len(IMAGE_CASES)


def test_train_reasoner_grpo_names_the_file_line_and_field_of_every_case(corpus_root, tmp_path, capsys):
    for case in RECORD_CASES:
        path = write_records_file(corpus_root, [case], n_good=N_GOOD, name=f"grpo-{case.name}.jsonl")
        before = {k: v for k, v in tree(corpus_root).items() if not k.startswith("grpo-")}
        out = tmp_path / f"out-{case.name}"
        assert main(["train", "reasoner", "--stage", "grpo", "--model", "no/model", "--embedder", "no/embedder",
                     "--records", str(path), "--data-root", str(corpus_root), "--out", str(out)]) == 2, case.name
        _expect_line(_one_error_line(capsys), path, case)
        assert {k: v for k, v in tree(corpus_root).items() if not k.startswith("grpo-")} == before
        assert not (out / "config.json").exists()


@pytest.fixture(scope="module")
def teacher_world(tiny_world_dir) -> Path:
    return tiny_world_dir(0)  # the session's seed-0 tiny world, read only


def _world_lines(world: Path, n: int) -> list[bytes]:
    return (world / "train" / "records.jsonl").read_bytes().splitlines()[:n]


TEACHER_CASES = [*READER_CASES,
                 Case("not_a_world_record", lambda r: json.dumps(good_record(99)).encode(), "schema", "query",
                      "is not an item of this world")]


def test_reason_teacher_strict_and_skip_for_every_case(teacher_world, tmp_path, capsys):
    world_before = tree(teacher_world)
    for case in TEACHER_CASES:
        path = tmp_path / f"teacher-{case.name}.jsonl"
        path.write_bytes(b"\n".join(_world_lines(teacher_world, N_GOOD) + [case.line(tmp_path)]) + b"\n")
        out = tmp_path / f"tcots-{case.name}.jsonl"
        assert main(["reason", "teacher", "--world", str(teacher_world), "--records", str(path), "--out",
                     str(out)]) == 2, case.name
        _expect_line(_one_error_line(capsys), path, case)
        assert not out.exists()
    path = tmp_path / "teacher-all.jsonl"
    path.write_bytes(b"\n".join(_world_lines(teacher_world, N_GOOD) + [c.line(tmp_path) for c in TEACHER_CASES])
                     + b"\n")
    out = tmp_path / "tcots-all.jsonl"
    assert main(["reason", "teacher", "--world", str(teacher_world), "--records", str(path), "--out", str(out),
                 "--on-error", "skip"]) == 0
    printed = capsys.readouterr().out
    expected = Counter(c.reason for c in TEACHER_CASES)
    per = ", ".join(f"{r}: {n}" for r, n in sorted(expected.items()))
    assert f"{out}: {2 * N_GOOD} T-CoTs from the annotation teacher ({N_GOOD + 1} records read; skipped " \
           f"{len(TEACHER_CASES)})" in printed
    assert f"skipped {len(TEACHER_CASES)} record(s) ({per})" in printed
    assert len(out.read_text().splitlines()) == 2 * N_GOOD
    assert tree(teacher_world) == world_before
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("teacher-")) == \
        [".tcots-all.jsonl.unime-output.json", "tcots-all.jsonl", "tcots-all.jsonl.unime_data.json"]  # its own root:
        # the folder holds the inputs too, so the world is recorded beside the output only (unime.data.roots)


def test_reason_teacher_opens_the_images_of_the_sides_it_writes_and_skips_their_records(teacher_world, tmp_path,
                                                                                       capsys):
    """QA: `reason teacher --world W`, one of W's training images truncated, wrote T-CoTs for its records from the
    annotations (they never open an image), though the README lists it among the commands that check every image
    they reference. It opens the query's and positive's images first (`check_images`, as `reason split` does): the
    one error line naming the records file, line, record and field, no output; under skip the records that
    reference it are left out and counted as `image`, the others written."""
    import shutil

    world = tmp_path / "world"
    shutil.copytree(teacher_world, world)
    records = [json.loads(x) for x in (world / "train" / "records.jsonl").read_text().splitlines()]
    ref = records[1]["query"]["images"][0]
    using = [n for n, r in enumerate(records, 1) if ref in r["query"].get("images", []) + r["positive"].get(
        "images", [])]
    full = (world / ref).read_bytes()
    (world / ref).write_bytes(full[: len(full) // 2])
    out = tmp_path / "tcots.jsonl"
    assert main(["reason", "teacher", "--world", str(world), "--out", str(out)]) == 2
    side = "query" if ref in records[using[0] - 1]["query"].get("images", []) else "positive"
    line = _one_error_line(capsys)
    assert line.startswith(f"unime: error: {world / 'train' / 'records.jsonl'}, record line {using[0]} (id "
                           f"{records[using[0] - 1]['id']}), field '{side}.images[0]': corrupt image {ref}"), line
    assert not out.exists()
    assert main(["reason", "teacher", "--world", str(world), "--out", str(out), "--on-error", "skip"]) == 0
    printed = capsys.readouterr().out
    assert f"({len(records)} records read; skipped {len(using)})" in printed
    assert f"skipped {len(using)} record(s) (image: {len(using)})" in printed
    written = [json.loads(x)["record_id"] for x in out.read_text().splitlines()]
    assert sorted(set(written)) == sorted(r["id"] for n, r in enumerate(records, 1) if n not in using)
    assert len(written) == 2 * (len(records) - len(using))


@pytest.mark.slow
def test_train_reasoner_sft_skips_and_counts_every_case(corpus_root, tmp_path, tiny_model_dir, capsys):
    from unime.reasoning.tcot import render_tcot

    tcot = render_tcot({"text_keywords": ["grey"]}, "The image is grey.", "grey")
    cases = _tcot_case_lines()
    path = corpus_root / "sft-all.jsonl"
    good = [json.dumps({**_tcot_row(i), "tcot": tcot}).encode() for i in range(N_GOOD)]
    path.write_bytes(b"\n".join(good + [line for _, line, _, _, _ in cases]) + b"\n")
    before = tree(corpus_root)
    out = tmp_path / "sft"
    assert main(["--log-level", "WARNING", "train", "reasoner", "--stage", "sft", "--model",
                 tiny_model_dir("qwen2_vl"), "--tcots", str(path), "--data-root", str(corpus_root), "--out", str(out),
                 "--max-steps", "1", "--batch-size", "2", "--device", "cpu", "--on-error", "skip"]) == 0
    expected = Counter(reason for _, _, reason, _, _ in cases)
    per = ", ".join(f"{r}: {n}" for r, n in sorted(expected.items()))
    assert f"skipped {len(cases)} record(s) ({per})" in capsys.readouterr().out
    summary = json.loads((out / "sft_summary.json").read_text())
    assert summary["examples"] == N_GOOD and summary["skipped_records"] == {
        "total": len(cases), "by_reason": dict(sorted(expected.items()))}
    assert tree(corpus_root) == before


# -- data import: a `datasets` folder (--hf-dataset) and WebDataset shards (--webdataset) ---------------------
@pytest.fixture
def hf():
    """The `datasets` library (the `data` extra, which the Makefile installs) for --hf-dataset."""
    return pytest.importorskip("datasets")


def _png(value: int) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


_CORRUPT = b"\x89PNG\r\n\x1a\n" + b"not a picture" * 4
_TRUNCATED = _png(77)[:60]
_CUT = "corrupt or unreadable image"


@dataclass(frozen=True)
class SourceCase:
    name: str
    value: object     # what the bad record holds (per source, see the writers)
    reason: str
    field: str | None
    fragment: str


# a save_to_disk dataset with columns image (Image feature: bytes), caption, label
HF_BYTES_CASES = [
    SourceCase("image_corrupt", {"image": {"bytes": _CORRUPT, "path": "bad.png"}}, "image", "image", _CUT),
    SourceCase("image_truncated", {"image": {"bytes": _TRUNCATED, "path": "cut.png"}}, "image", "image",
               "image file is truncated"),
    SourceCase("image_missing", {"image": None}, "image", "image", "no image (neither bytes nor an existing file)"),
    SourceCase("caption_missing", {"caption": None}, "schema", "caption", "missing caption"),
    SourceCase("caption_empty", {"caption": "  "}, "empty_item", "caption", "empty caption"),
    SourceCase("placeholder", {"caption": "<|image_1|> a picture"}, "placeholder", "caption",
               "caption holds the image placeholder '<|image_1|>'"),
]
# a save_to_disk dataset whose image column holds paths (relative to the dataset folder); caption bytes: a
# dataset's form of text that is not UTF-8 (Arrow strings are UTF-8)
HF_PATH_CASES = [
    SourceCase("image_file_missing", {"image": "img/missing.png"}, "image", "image",
               "image file not found: 'img/missing.png'"),
    SourceCase("image_parent_escape", {"image": "../outside.png"}, "image", "image",
               "image path '../outside.png' leads out of the dataset folder"),
    SourceCase("image_absolute", {"image": "<outside>"}, "image", "image", "leads out of the dataset folder"),
    SourceCase("image_symlink_out", {"image": "img/link.png"}, "image", "image",
               "image path 'img/link.png' leads out of the dataset folder"),
    SourceCase("image_nul_byte", {"image": "img/a\x00.png"}, "image", "image", "holds a NUL byte"),
    SourceCase("image_corrupt_file", {"image": "img/corrupt.png"}, "image", "image", _CUT),
]


def _hf_bytes_dataset(folder: Path, cases: list[SourceCase]) -> Path:
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    rows = [{"image": {"bytes": _png(20 * i), "path": f"g{i}.png"}, "caption": f"good picture {i}", "label": "circle"}
            for i in range(N_IMPORT_GOOD)]
    rows += [{"image": {"bytes": _png(150 + k), "path": f"{c.name}.png"}, "caption": f"case {c.name}",
              "label": "circle", **c.value} for k, c in enumerate(cases)]
    ds = Dataset.from_list(rows, features=Features({"image": ImageFeature(), "caption": Value("string"),
                                                     "label": Value("string")}))
    ds.save_to_disk(str(folder))
    return folder


def _hf_path_dataset(folder: Path, cases: list[SourceCase], outside: Path, caption_type: str = "string",
                     bad_caption: bytes | None = None) -> Path:
    from datasets import Dataset, Features, Value

    rows = [{"image": f"img/g{i}.png", "caption": f"good picture {i}"} for i in range(N_IMPORT_GOOD)]
    for c in cases:
        ref = str(outside) if c.value["image"] == "<outside>" else c.value["image"]
        rows.append({"image": ref, "caption": f"case {c.name}"})
    if caption_type == "binary":
        rows = [{**r, "caption": r["caption"].encode()} for r in rows] \
            + [{"image": "img/g0.png", "caption": bad_caption}]
    Dataset.from_list(rows, features=Features({"image": Value("string"), "caption": Value(caption_type)})) \
        .save_to_disk(str(folder))
    (folder / "img").mkdir()
    for i in range(N_IMPORT_GOOD):
        (folder / "img" / f"g{i}.png").write_bytes(_png(20 * i))
    (folder / "img" / "corrupt.png").write_bytes(_CORRUPT)
    (folder / "img" / "link.png").symlink_to(outside)
    return folder


@pytest.fixture
def no_writes_elsewhere(tmp_path, monkeypatch):
    """The library's cache and the temporary folder pointed at empty folders, checked empty afterwards."""
    import tempfile

    cache, temp = tmp_path / "hf-cache", tmp_path / "tmp"
    cache.mkdir()
    temp.mkdir()
    try:
        import datasets
    except ImportError:  # WebDataset shards are read without it
        datasets = None
    if datasets is not None:
        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    yield
    assert list(cache.iterdir()) == [] and list(temp.iterdir()) == []


def _check_strict(argv: list[str], source: Path, record: str, case: SourceCase, capsys) -> None:
    assert main(argv) == 2, case.name
    line = _one_error_line(capsys)
    assert line.startswith(f"unime: error: {source}, record {record}"), line
    assert (f"field '{case.field}'" in line) if case.field else ("field '" not in line), line
    assert case.fragment in line, line


def _check_skip(argv: list[str], out: Path, cases: list[SourceCase], capsys) -> dict:
    assert main(argv) == 0
    expected = Counter(c.reason for c in cases)
    per = ", ".join(f"{r}: {n}" for r, n in sorted(expected.items()))
    assert f"skipped {len(cases)} record(s) ({per})" in capsys.readouterr().out
    manifest = json.loads((out / "import.json").read_text())
    assert manifest["skipped"]["total"] == len(cases)
    assert manifest["skipped"]["by_reason"] == dict(sorted(expected.items()))
    assert manifest["images"] == N_IMPORT_GOOD
    return manifest


def _hf_argv(folder: Path, out: Path, *extra: str) -> list[str]:
    return ["data", "import", "--hf-dataset", str(folder), "--out", str(out), "--eval-candidates", "3", *extra]


def test_data_import_hf_dataset_strict_and_skip_for_every_case(hf, import_root, tmp_path, capsys, no_writes_elsewhere):
    outside = import_root.parent / corpus_outside_name()
    before_outside = outside.read_bytes()
    for kind, cases in (("bytes", HF_BYTES_CASES), ("paths", HF_PATH_CASES)):
        for case in cases:  # strict: each case alone, after the good rows
            folder = tmp_path / f"{kind}-{case.name}"
            if kind == "bytes":
                _hf_bytes_dataset(folder, [case])
            else:
                _hf_path_dataset(folder, [case], outside)
            before = tree(folder)
            _check_strict(_hf_argv(folder, tmp_path / f"out-{case.name}"), folder, f"row {N_IMPORT_GOOD + 1}", case,
                          capsys)
            assert tree(folder) == before
        folder = tmp_path / f"{kind}-all"  # skip: every case in one dataset, each counted once
        (_hf_bytes_dataset(folder, cases) if kind == "bytes" else _hf_path_dataset(folder, cases, outside))
        before = tree(folder)
        out = tmp_path / f"out-{kind}-all"
        _check_skip(_hf_argv(folder, out, "--on-error", "skip"), out, cases, capsys)
        assert sorted(p.name for p in (out / "images").iterdir()) == [f"g{i}.png" for i in range(N_IMPORT_GOOD)]
        assert tree(folder) == before
    # --allow-outside-root lets the two paths out of the folder in (and only those)
    folder = tmp_path / "paths-allowed"
    _hf_path_dataset(folder, [c for c in HF_PATH_CASES if c.name in ("image_parent_escape", "image_absolute")],
                     outside)
    (folder.parent / "outside.png").write_bytes(_png(99))
    out = tmp_path / "out-allowed"
    assert main(_hf_argv(folder, out, "--allow-outside-root")) == 0
    assert json.loads((out / "import.json").read_text())["images"] == N_IMPORT_GOOD + 2
    assert outside.read_bytes() == before_outside


def test_data_import_hf_dataset_text_that_is_not_utf8(hf, import_root, tmp_path, capsys, no_writes_elsewhere):
    """A caption column of bytes (Arrow's strings are UTF-8, so undecodable text arrives as bytes)."""
    folder = _hf_path_dataset(tmp_path / "binary", [], import_root.parent / corpus_outside_name(),
                              caption_type="binary", bad_caption=b"caf\xe9 au lait")
    case = SourceCase("caption_bytes", None, "schema", "caption", "expected a caption string, got bytes")
    _check_strict(_hf_argv(folder, tmp_path / "o1"), folder, "row 1", case, capsys)  # every row is bytes
    assert main(_hf_argv(folder, tmp_path / "o2", "--on-error", "skip")) == 2  # nothing left to import
    assert _one_error_line(capsys) == f"unime: error: {json.dumps({'hf_dataset': str(folder)})}: the source holds " \
                                      "no captioned image"


# the whole dataset is at fault: stops in both modes (record None: the line names the folder only)
def _imagefolder(folder: Path, metadata: bytes) -> Path:
    folder.mkdir()
    for i in range(N_IMPORT_GOOD):
        (folder / f"g{i}.png").write_bytes(_png(20 * i))
    (folder / "metadata.csv").write_bytes(metadata)
    return folder


def _good_metadata() -> bytes:
    return b"file_name,text\n" + b"".join(f"g{i}.png,good picture {i}\n".encode() for i in range(N_IMPORT_GOOD))


HF_FOLDER_CASES = [
    ("no_image_column", lambda f: _hf_renamed(f, {"image": "picture"}), (), None, None,
     "no image column (looked for ['image', 'file_name', 'filename', 'file', 'path', 'img']; the columns are "
     "['picture', 'caption', 'label']); name it with --image-column"),
    ("caption_column_absent", lambda f: _hf_bytes_dataset(f, []), ("--caption-column", "words"), None, "words",
     "no caption column 'words'; the columns are ['image', 'caption', 'label']"),
    ("state_json_corrupt", lambda f: _hf_corrupt_state(f), (), None, None, "not a readable datasets folder"),
    ("imagefolder_escape", lambda f: _imagefolder(f, _good_metadata() + b"../data-outside.png,escape\n"), (),
     f"row {N_IMPORT_GOOD + 1}", None, "Invalid metadata file_name '../data-outside.png'"),
    ("imagefolder_not_utf8", lambda f: _imagefolder(f, _good_metadata() + b"g0.png,caf\xe9\n"), (), None, None,
     "not a readable datasets folder (UnicodeDecodeError"),
]


def _hf_renamed(folder: Path, names: dict) -> Path:
    _hf_bytes_dataset(folder.with_name(folder.name + "-src"), [])
    import datasets

    datasets.load_from_disk(str(folder.with_name(folder.name + "-src"))).rename_columns(names).save_to_disk(str(folder))
    return folder


def _hf_corrupt_state(folder: Path) -> Path:
    _hf_bytes_dataset(folder, [])
    (folder / "state.json").write_bytes(b'{"_data_files": [')
    return folder


def test_data_import_hf_dataset_folder_faults_stop_in_both_modes(hf, import_root, tmp_path, capsys,
                                                                 no_writes_elsewhere):
    for name, build, extra, record, field, fragment in HF_FOLDER_CASES:
        folder = build(tmp_path / name)
        for mode in ("raise", "skip"):
            out = tmp_path / f"out-{name}-{mode}"
            assert main(_hf_argv(folder, out, "--on-error", mode, *extra)) == 2, name
            line = _one_error_line(capsys)
            assert line.startswith(f"unime: error: {folder}" + (f", record {record}" if record else "")), line
            assert (f"field '{field}'" in line) if field else ("field '" not in line), line
            assert fragment in line, line
            assert not (out / "import.json").exists()
    assert not (import_root.parent / "images").exists()


# WebDataset shards: good samples g0..g5 (png + txt + cls), then each case's sample
WDS_CASES = [
    SourceCase("image_corrupt", [("png", _CORRUPT), ("txt", b"a picture")], "image", "png", _CUT),
    SourceCase("image_truncated", [("png", _TRUNCATED), ("txt", b"a picture")], "image", "png",
               "image file is truncated"),
    SourceCase("no_image_member", [("txt", b"a picture")], "image", "image", "no image member (looked for "
               "['jpg', 'jpeg', 'png', 'webp']; the sample has ['txt'])"),
    SourceCase("no_caption_member", [("png", "good")], "schema", "txt", "no caption member"),
    SourceCase("caption_not_utf8", [("png", "good"), ("txt", b"caf\xe9 au lait")], "not_utf8", "txt",
               "not UTF-8 text at byte 4 (b'\\xe9')"),
    SourceCase("caption_empty", [("png", "good"), ("txt", b"  ")], "empty_item", "txt", "empty caption"),
    SourceCase("placeholder", [("png", "good"), ("txt", b"<image> a picture")], "placeholder", "txt",
               "caption holds the image placeholder '<image>'"),
    SourceCase("json_malformed", [("png", "good"), ("json", b'{"caption": ')], "malformed_json", "json",
               "malformed JSON"),
    SourceCase("label_not_utf8", [("png", "good"), ("txt", b"a picture"), ("cls", b"\xff")], "not_utf8", "cls",
               "not UTF-8 text at byte 1"),
    SourceCase("member_parent_escape", [("png", "good"), ("txt", b"a picture")], "schema", "png",
               "leads out of the archive"),
    SourceCase("member_absolute", [("png", "good"), ("txt", b"a picture")], "schema", "png",
               "leads out of the archive"),
    SourceCase("member_symlink", [("png", "symlink"), ("txt", b"a picture")], "schema", "png", "is a symlink"),
    SourceCase("member_twice", [("png", "good"), ("png", "good"), ("txt", b"a picture")], "schema", "png",
               "two members"),
]


def _wds_key(case: SourceCase) -> str:
    return {"member_parent_escape": "../escape", "member_absolute": "/abs/escape"}.get(case.name, case.name)


def _write_shard(path: Path, cases: list[SourceCase], outside: Path) -> Path:
    import io
    import tarfile

    def add(tar, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(N_IMPORT_GOOD):
            add(tar, f"g{i}.png", _png(20 * i))
            add(tar, f"g{i}.txt", f"good picture {i}".encode())
            add(tar, f"g{i}.cls", b"circle" if i % 2 else b"square")
        for k, c in enumerate(cases):
            for ext, data in c.value:
                name = f"{_wds_key(c)}.{ext}"
                if data == "symlink":
                    info = tarfile.TarInfo(name)
                    info.type, info.linkname = tarfile.SYMTYPE, str(outside)
                    tar.addfile(info)
                else:
                    add(tar, name, _png(150 + k) if data == "good" else data)
    return path


def _wds_argv(shard: Path, out: Path, *extra: str) -> list[str]:
    return ["data", "import", "--webdataset", str(shard), "--out", str(out), "--eval-candidates", "3", *extra]


def test_data_import_webdataset_strict_and_skip_for_every_case(import_root, tmp_path, capsys, no_writes_elsewhere):
    outside = import_root.parent / corpus_outside_name()
    before_outside = outside.read_bytes()
    shards = tmp_path / "shards"
    shards.mkdir()
    for case in WDS_CASES:
        shard = _write_shard(shards / f"{case.name}.tar", [case], outside)
        _check_strict(_wds_argv(shard, tmp_path / f"out-{case.name}"), shard,
                      f"sample {N_IMPORT_GOOD + 1} ({_wds_key(case)!r})", case, capsys)
        assert not (tmp_path / f"out-{case.name}" / "import.json").exists()
    shard = _write_shard(shards / "all.tar", WDS_CASES, outside)
    before = tree(shards)
    out = tmp_path / "out-all"
    manifest = _check_skip(_wds_argv(shard, out, "--on-error", "skip"), out, WDS_CASES, capsys)
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"g{i}.png" for i in range(N_IMPORT_GOOD)]
    assert manifest["labels"] == ["circle", "square"]
    assert tree(shards) == before and outside.read_bytes() == before_outside
    assert not (tmp_path / "escape.png").exists() and not Path("/abs/escape.png").exists()
    # a strict run that stopped while reading left no output folder; one that stopped at an image (found
    # while placing the images) keeps what it placed, inside its --out
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["shards", "out-all", "hf-cache", "tmp", *[f"out-{c.name}" for c in WDS_CASES if c.reason == "image" and
                                                   c.name != "no_image_member"]])


def test_data_import_webdataset_shard_faults(import_root, tmp_path, capsys, no_writes_elsewhere):
    """Not a tar: stops in both modes. Cut short after the good samples: strict stops naming the sample
    being read; skip counts it and keeps the samples before it."""
    outside = import_root.parent / corpus_outside_name()
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is no tar archive\n" * 40)
    for mode in ("raise", "skip"):
        assert main(_wds_argv(junk, tmp_path / f"out-junk-{mode}", "--on-error", mode)) == 2
        line = _one_error_line(capsys)
        assert line.startswith(f"unime: error: {junk}: not a tar archive"), line
    import tarfile

    tail = SourceCase("tail", [("png", "good"), ("txt", b"the last picture")], "", None, "")
    full = _write_shard(tmp_path / "full.tar", [tail], outside)
    with tarfile.open(full) as tar:
        png = tar.getmember("tail.png")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(full.read_bytes()[:png.offset_data + 20])  # the archive ends inside the last sample's image
    assert main(_wds_argv(cut, tmp_path / "out-cut")) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"unime: error: {cut}, record sample {N_IMPORT_GOOD + 1}"), line
    assert "the archive is cut short or corrupt here" in line, line
    out = tmp_path / "out-cut-skip"
    assert main(_wds_argv(cut, out, "--on-error", "skip")) == 0
    assert "skipped 1 record(s) (schema: 1)" in capsys.readouterr().out
    manifest = json.loads((out / "import.json").read_text())
    assert manifest["skipped"]["total"] == 1 and manifest["images"] == N_IMPORT_GOOD
