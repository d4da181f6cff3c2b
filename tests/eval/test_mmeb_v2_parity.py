"""MMEB-V2 evaluation as VLM2Vec-V2 does it (eval.py, base_eval_dataset.py): the default ranking, the pool of a
global task, the rows its parsers write. Text-only rows scored with fixed vectors, figures computed by hand."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from unime.errors import DataError
from unime.eval.runners import EvalOptions, run_mmeb_v2
from unime.eval.tasks import load_task_config, load_task_data


def _row(query: str, cands: list[str], label, **infos) -> dict:
    return {"query_text": [query], "query_image": [None], "cand_text": cands, "cand_image": [None] * len(cands),
            "dataset_infos": {"cand_names": cands, "label_name": label, **infos}}


def _write(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _task(tmp_path, line: str, on_error: str = "raise"):
    cfg = tmp_path / "tasks.yaml"
    cfg.write_text("tasks:\n  - " + line + "\n", encoding="utf-8")
    spec = load_task_config(cfg).tasks[0]
    return spec, load_task_data(spec, on_error=on_error)


def _metrics(spec, data, vectors: dict[str, list[float]], ties: str = "pessimistic") -> dict[str, float]:
    """The task's metrics with each item's vector looked up by its text (normalised: cosine = dot)."""
    def vecs(idx):
        v = np.asarray([vectors[data.table.items[i].text] for i in idx], dtype=np.float64)
        return v / np.linalg.norm(v, axis=1, keepdims=True)
    return run_mmeb_v2(spec, data, vecs, EvalOptions(ties=ties)).metrics


def _hit1(spec, data, vectors: dict[str, list[float]], ties: str = "pessimistic") -> float:
    return _metrics(spec, data, vectors, ties)["hit@1"]


# -- 1. eval_type defaults to global ----------------------------------------------------------------------

def test_a_task_without_eval_type_ranks_the_global_pool_like_vlm2vec(tmp_path):
    # two rows, one candidate each: ranked locally both score a hit (100); VLM2Vec's default pools {a, b}
    _write(tmp_path / "rows.jsonl", [_row("qa", ["a"], "a"), _row("qb", ["b"], "b")])
    spec, data = _task(tmp_path, "{name: t, format: mmeb_v2, path: rows.jsonl}")
    assert data.shared_corpus and [len(c) for c in data.candidates] == [2, 2]
    # qa is closer to b than to a: a miss; qb is closest to b: a hit → 0.5
    vectors = {"qa": [0.2, 1.0], "qb": [0.0, 1.0], "a": [1.0, 0.0], "b": [0.0, 1.0]}
    assert _hit1(spec, data, vectors) == 0.5


def test_a_corpus_is_read_by_a_task_without_eval_type(tmp_path):
    _write(tmp_path / "rows.jsonl", [_row("qa", ["a"], "a")])
    _write(tmp_path / "corpus.jsonl", [{"cand_text": ["c"], "cand_image": [None],
                                        "dataset_infos": {"cand_names": ["c"]}}])
    spec, data = _task(tmp_path, "{name: t, format: mmeb_v2, path: rows.jsonl, corpus: corpus.jsonl}")
    assert sorted(data.table.items[i].text for i in data.candidates[0]) == ["a", "c"]
    assert _hit1(spec, data, {"qa": [0.0, 1.0], "a": [1.0, 0.0], "c": [0.0, 1.0]}) == 0.0


def test_a_corpus_with_local_ranking_is_refused_naming_the_task(tmp_path):
    _write(tmp_path / "rows.jsonl", [_row("qa", ["a", "b"], "a")])
    with pytest.raises(DataError, match="a corpus joins the pool of a global task") as e:
        _task(tmp_path, "{name: loc1, format: mmeb_v2, path: rows.jsonl, eval_type: local, corpus: rows.jsonl}")
    assert "loc1" in str(e.value) and e.value.field == "corpus"


def test_local_rows_with_a_single_candidate_are_warned_about_once_per_task(tmp_path, caplog):
    _write(tmp_path / "rows.jsonl", [_row("qa", ["a"], "a"), _row("qb", ["b"], "b"), _row("qc", ["c", "d"], "c")])
    with caplog.at_level(logging.WARNING, logger="unime.eval.tasks"):
        _task(tmp_path, "{name: loc1, format: mmeb_v2, path: rows.jsonl, eval_type: local}")
    warned = [r.getMessage() for r in caplog.records if "single candidate" in r.getMessage()]
    assert len(warned) == 1 and "loc1" in warned[0] and "2 of 3 rows" in warned[0]


# -- 2. video classification: the pool is every label of the dataset ------------------------------------

def _label_corpus(path, labels: list[str]) -> None:
    _write(path, [{"cand_text": [x], "cand_image": [None], "dataset_infos": {"cand_names": [x]}} for x in labels])


def test_the_shipped_video_cls_tasks_rank_a_label_corpus_outside_their_rows_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("MMEB_V2_ROOT", str(tmp_path))
    by_name = {t.name: t for t in load_task_config("mmeb_v2").tasks}
    for name in ("K700", "HMDB51", "UCF101", "Breakfast"):
        spec = by_name[name]
        assert spec.option("eval_type") == "global"
        assert spec.option("corpus") == str(tmp_path / "video" / "labels" / f"{name}.jsonl")
        assert not spec.option("corpus").startswith(str(spec.path) + "/")  # not read as query rows
    assert by_name["SmthSmthV2"].option("corpus") is None


def test_a_label_missing_from_the_rows_still_competes_through_the_label_corpus(tmp_path, caplog):
    # rows label only "run" and "jump"; the dataset also has "walk", which the first query is closest to
    _write(tmp_path / "rows.jsonl", [_row("q1", ["run"], "run"), _row("q2", ["jump"], "jump")])
    _label_corpus(tmp_path / "labels.jsonl", ["jump", "run", "walk"])
    vectors = {"q1": [0.2, 0.0, 1.0], "q2": [0.0, 1.0, 0.0], "run": [1.0, 0.0, 0.0], "jump": [0.0, 1.0, 0.0],
               "walk": [0.0, 0.0, 1.0]}
    with caplog.at_level(logging.WARNING, logger="unime.eval.tasks"):
        spec, data = _task(tmp_path, "{name: cls, format: mmeb_v2, path: rows.jsonl, meta_task: classification}")
    assert _hit1(spec, data, vectors) == 1.0  # q1: run (0.2) vs jump (0.0) → run: only the rows' labels
    assert any("cls" in r.getMessage() and "without `corpus`" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="unime.eval.tasks"):
        spec, data = _task(tmp_path, "{name: cls, format: mmeb_v2, path: rows.jsonl, corpus: labels.jsonl, "
                                     "meta_task: classification}")
    assert _hit1(spec, data, vectors) == 0.5  # q1 → walk, a miss
    assert not any("without `corpus`" in r.getMessage() for r in caplog.records)


# -- 3. the pool of a global task: the rows' candidates first, then the corpus (VLM2Vec) -------------------

def test_the_global_pool_lists_the_rows_candidates_before_the_corpus(tmp_path):
    # "copy" (corpus) has the vector of the label "a": an exact tie with the positive
    _write(tmp_path / "rows.jsonl", [_row("q", ["a", "b"], "a")])
    _label_corpus(tmp_path / "corpus.jsonl", ["copy", "a"])  # "a" again: the pool keeps it once, at its first place
    spec, data = _task(tmp_path, "{name: g, format: mmeb_v2, path: rows.jsonl, corpus: corpus.jsonl}")
    assert [data.table.items[i].text for i in data.candidates[0]] == ["a", "b", "copy"]
    vectors = {"q": [1.0, 0.0], "a": [1.0, 0.0], "copy": [1.0, 0.0], "b": [0.0, 1.0]}
    assert _hit1(spec, data, vectors, ties="index") == 1.0        # like VLM2Vec's argsort: "a" is listed first
    assert _hit1(spec, data, vectors, ties="pessimistic") == 0.0  # order-free: a tie counts against the positive


# -- 4. rows as VLM2Vec's parsers write them ---------------------------------------------------------------

def test_extra_columns_of_vlm2vec_rows_are_ignored_and_named_once_per_file(tmp_path, caplog):
    extra = {"global_dataset_name": "Video-MME", "question_id": "001-1", "duration": "short"}
    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / "rows").mkdir(exist_ok=True)
        _write(tmp_path / "rows" / name, [{**_row("q1", ["x", "y"], "x"), **extra},
                                          {**_row("q2", ["x", "y"], "y"), **extra}])
    with caplog.at_level(logging.WARNING, logger="unime.data.mmeb_v2"):
        spec, data = _task(tmp_path, "{name: vmme, format: mmeb_v2, path: rows, eval_type: local}")
    assert len(data.query) == 4 and [g.tolist() for g in data.grades] == [[1.0, 0.0], [0.0, 1.0]] * 2
    logged = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert len(logged) == 2 and all("['duration', 'global_dataset_name', 'question_id']" in m for m in logged)
    assert {m.split(":")[0] for m in logged} == {str(tmp_path / "rows" / "a.jsonl"), str(tmp_path / "rows" / "b.jsonl")}


def _frames(folder, n: int = 2) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        Image.new("RGB", (8, 8), (40 * k, 0, 0)).save(folder / f"f{k}.png")
    return [str(folder / f"f{k}.png") for k in range(n)]


def test_absolute_frame_paths_inside_the_data_root_are_read_outside_refused(tmp_path):
    inside = _frames(tmp_path / "frames")  # as VLM2Vec's parsers write them: absolute frame paths
    row = {**_row("", ["x", "y"], "x"), "query_image": [{"paths": inside}]}
    _write(tmp_path / "rows.jsonl", [row])
    spec, data = _task(tmp_path, "{name: vid, format: mmeb_v2, path: rows.jsonl, eval_type: local}")
    assert data.table.items[data.query[0]].video == tuple(inside)
    outside = _frames(tmp_path.parent / f"{tmp_path.name}-elsewhere")
    _write(tmp_path / "rows.jsonl", [{**row, "query_image": [{"paths": outside}]}])
    with pytest.raises(DataError, match="absolute image path .* not allowed outside the data root") as e:
        _task(tmp_path, "{name: vid, format: mmeb_v2, path: rows.jsonl, eval_type: local}")
    assert e.value.record == "line 1" and e.value.field.startswith("query")


# -- 5. rel_scores: one per label_name (VLM2Vec's alignment) or one per candidate --------------------------

def test_rel_scores_aligned_with_label_name_grade_the_labels(tmp_path):
    # VLM2Vec: rel_scores pairs with label_name; here 2 labels among 4 candidates
    row = {**_row("q", ["a", "b", "c", "d"], ["c", "a"]), "id": "r1"}
    row["dataset_infos"]["rel_scores"] = [2, 1]
    _write(tmp_path / "rows.jsonl", [row])
    spec, data = _task(tmp_path, "{name: d, format: mmeb_v2, path: rows.jsonl, metric: ndcg@5}")
    assert data.grades[0].tolist() == [1.0, 0.0, 2.0, 0.0]  # pool a, b, c, d
    # ranked d, c, a, b: DCG = 2/log2(3) + 1/log2(4); ideal = 2 + 1/log2(3)
    vectors = {"q": [1.0, 0.0], "d": [1.0, 0.0], "c": [0.9, 0.1], "a": [0.5, 0.5], "b": [0.0, 1.0]}
    got = _metrics(spec, data, vectors)["ndcg@5"]
    assert got == pytest.approx((2 / np.log2(3) + 1 / np.log2(4)) / (2 + 1 / np.log2(3)))


def test_rel_scores_of_another_length_are_refused_naming_the_row(tmp_path):
    row = _row("q", ["a", "b", "c"], ["a"])
    row["dataset_infos"]["rel_scores"] = [1, 1]
    _write(tmp_path / "rows.jsonl", [row])
    with pytest.raises(DataError, match="1 rel_scores .* or 3 .*got 2") as e:
        _task(tmp_path, "{name: d, format: mmeb_v2, path: rows.jsonl}")
    assert e.value.record == "line 1" and e.value.field == "dataset_infos.rel_scores"


# -- 6. a partial copy of MMEB-V2 -------------------------------------------------------------------------

def _partial_copy(tmp_path):
    (tmp_path / "video").mkdir()
    _write(tmp_path / "video" / "have.jsonl", [_row("q", ["a", "b"], "a")])
    cfg = tmp_path / "tasks.yaml"
    cfg.write_text("tasks:\n"
                   "  - {name: ImageNet-1K, format: mmeb, path: image/ImageNet-1K}\n"
                   "  - {name: have, format: mmeb_v2, path: video/have.jsonl, eval_type: local}\n"
                   "  - {name: K700, format: mmeb_v2, path: video/have.jsonl, corpus: video/labels/K700.jsonl}\n",
                   encoding="utf-8")
    return load_task_config(cfg)


def test_a_partial_copy_stops_naming_the_way_to_evaluate_what_you_have(tmp_path):
    from unime.eval.runners import load_suite_data

    with pytest.raises(DataError, match=r"task 'ImageNet-1K': data file not found; evaluate the tasks you have with "
                                        r"--task NAME \(repeatable\), or .* --on-error skip") as e:
        load_suite_data(_partial_copy(tmp_path))
    assert e.value.source == str(tmp_path / "image" / "ImageNet-1K")


def test_under_skip_tasks_without_their_data_are_left_out_and_named(tmp_path, caplog):
    from unime.eval.runners import load_suite_data, skipped_task_names

    suite = _partial_copy(tmp_path)
    with caplog.at_level(logging.WARNING, logger="unime.eval.runners"):
        data = load_suite_data(suite, on_error="skip")
    assert [spec.name for spec, _ in data] == ["have"]
    assert skipped_task_names(suite, data) == ["ImageNet-1K", "K700"]  # K700: its label corpus is missing
    left_out = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(left_out) == 2 and "ImageNet-1K" in left_out[0] and "K700.jsonl" in left_out[1]


def test_unime_eval_reads_frames_outside_the_data_root_with_allow_outside_root(tiny_model_dir, tmp_path, capsys):
    from unime.cli import main

    elsewhere = _frames(tmp_path / "elsewhere")  # another disk's frames, say
    (tmp_path / "bench").mkdir()
    row = {**_row("", ["x", "y"], "x"), "query_image": [{"paths": elsewhere}]}
    _write(tmp_path / "bench" / "rows.jsonl", [row, {**row, "dataset_infos": {"cand_names": ["x", "y"],
                                                                              "label_name": "y"}}])
    (tmp_path / "bench" / "eval_tasks.yaml").write_text(
        "tasks:\n  - {name: vid, format: mmeb_v2, path: rows.jsonl, eval_type: local}\n", encoding="utf-8")
    argv = ["eval", "--model", tiny_model_dir("qwen2_vl"), "--tasks", str(tmp_path / "bench"), "--no-cache",
            "--device", "cpu"]
    assert main(argv + ["--out", str(tmp_path / "refused")]) == 2  # outside the data root: refused, named
    err = capsys.readouterr().err
    assert "rows.jsonl, record line 1" in err and "not allowed outside the data root" in err
    assert "--allow-outside-root" in err
    assert main(argv + ["--out", str(tmp_path / "o"), "--allow-outside-root"]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    # both queries are the same clip and rank the same two labels: one of the two is a hit, whatever the model
    assert summary["tasks"]["vid"]["hit@1"] == 0.5
