"""Every task format checks its rows' images and videos when the task is read, before any model is loaded:
a bad one names the file, the line and the field, and `--on-error skip` leaves the row out and counts it.
Videos are checked from their headers only (the encoder decodes them later, once), except under the skip policy."""

from __future__ import annotations

import json

import pytest

from tests.data.helpers import build_fixture
from tests.eval.helpers import build_world, write_beir, write_jsonl, write_png
from unime.data.skips import SkipReport
from unime.errors import DataError
from unime.eval.tasks import load_task_config, load_task_data


def _spec(cfg, name):
    return next(t for t in load_task_config(cfg).tasks if t.name == name)


def _broken_v2_world(root):
    cfg, _ = build_fixture(root)
    (root / "clips/c2.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")  # a clip PyAV cannot open
    (root / "pages/d5.png").write_bytes(b"not a png")
    (root / "f1.png").unlink()  # a frame of vid_qa's frame-list video (row 2)
    return cfg


def test_mmeb_v2_bad_media_name_file_line_and_field(tmp_path):
    cfg = _broken_v2_world(tmp_path)
    with pytest.raises(DataError, match="clips/c2.mp4") as e:
        load_task_data(_spec(cfg, "vid_ret"))
    assert (e.value.source, e.value.record, e.value.field) == (str(tmp_path / "video/ret/rows.jsonl"), "line 3",
                                                               "cand[0].video[0]")
    with pytest.raises(DataError, match="f1.png") as e:
        load_task_data(_spec(cfg, "vid_qa"))
    assert (e.value.source, e.value.record, e.value.field) == (str(tmp_path / "video/qa/rows.jsonl"), "line 2",
                                                               "query.video[1]")
    with pytest.raises(DataError, match="pages/d5.png") as e:
        load_task_data(_spec(cfg, "docs"))  # the query file is read first: line 1 lists d5 among its candidates
    assert (e.value.source, e.value.record, e.value.field) == (str(tmp_path / "visdoc/docs/queries/q.jsonl"),
                                                               "line 1", "cand[1].images[0]")


def test_mmeb_v2_rows_with_bad_media_are_skipped_and_counted(tmp_path):
    cfg = _broken_v2_world(tmp_path)
    skips = SkipReport()
    ret = load_task_data(_spec(cfg, "vid_ret"), on_error="skip", skips=skips)
    assert len(ret.query) == 3 and ret.skipped == 1 and len(ret.candidates[0]) == 3  # c2 left the global pool
    assert ret.dropped_candidates == 1  # row 3 (its relevant clip c2 is bad) is skipped
    qa = load_task_data(_spec(cfg, "vid_qa"), on_error="skip", skips=skips)
    assert len(qa.query) == 1 and qa.skipped == 2  # row 2 (missing frame), row 3 (clip c2)
    # global with a corpus: d5 (listed by query line 1 and a corpus row) leaves the pool, counted once; line 1
    # keeps its other relevant page d0
    docs = load_task_data(_spec(cfg, "docs"), on_error="skip", skips=skips)
    assert len(docs.query) == 4 and docs.skipped == 0 and len(docs.candidates[0]) == 6
    assert docs.dropped_candidates == 1 and docs.grades[0].tolist() == [2, 0, 0, 0, 0, 0]
    assert skips.total == 3 and dict(skips.counts) == {"video": 3}  # a video counted as a video


def test_qrels_rows_with_bad_images_name_the_line_or_are_skipped(tmp_path):
    cfg = build_world(tmp_path)
    (tmp_path / "images/blue.png").write_bytes(b"junk")
    spec = _spec(cfg, "colours_docs")
    with pytest.raises(DataError, match="images/blue.png") as e:
        load_task_data(spec)
    assert (e.value.source, e.value.record, e.value.field) == (str(tmp_path / "eval/qrels/colours.jsonl"),
                                                               "line 1 (id q0)", "candidates[2].images[0]")
    data = load_task_data(spec, on_error="skip")  # blue (grade 0) leaves q0's candidates, not q0
    assert data.ids == ["q0", "q1", "q2"] and data.skipped == 0 and data.dropped_candidates == 1
    assert [data.table.items[c].images for c in data.candidates[0]] == [("images/red.png",), ("images/yellow.png",)]
    assert data.grades[0].tolist() == [2, 1]


def _bad_candidate_qrels(root):
    """A qrels task with a missing image among its rows' candidates (see the comment per row)."""
    for c in ("red", "yellow", "blue", "green"):
        write_png(root, f"images/{c}.png", c)
    img = lambda c: {"image": f"images/{c}.png"}  # noqa: E731
    write_jsonl(root / "q.jsonl", [
        {"id": "a", "query": {"text": "red"}, "candidates": [img("red"), img("gone"), img("blue")],
         "relevance": [2, 0, 0]},   # gone is not relevant: it leaves the row
        {"id": "b", "query": {"text": "yellow"}, "candidates": [img("red"), img("gone"), img("yellow")],
         "relevance": [1, 2, 0]},   # gone is relevant, red (relevant) and yellow remain: it leaves the row
        {"id": "c", "query": {"text": "blue"}, "candidates": [img("gone"), img("blue")],
         "relevance": [1, 0]},      # gone is the only relevant one: the row is skipped
        {"id": "d", "query": {"text": "green"}, "candidates": [img("green"), img("gone")],
         "relevance": [1, 0]},      # only one candidate would be left: the row is skipped
        {"id": "e", "query": img("gone"), "candidates": [img("red"), img("blue")],
         "relevance": [1, 0]},      # the query is bad: the row is skipped
    ])
    cfg = root / "c.yaml"
    cfg.write_text("tasks:\n  - {name: q, format: qrels, path: q.jsonl}\n")
    return cfg


def test_under_skip_a_bad_qrels_candidate_leaves_its_row_while_a_relevant_one_and_another_remain(tmp_path):
    spec = _spec(_bad_candidate_qrels(tmp_path), "q")
    with pytest.raises(DataError, match="images/gone.png") as e:  # the default policy: unchanged
        load_task_data(spec)
    assert (e.value.record, e.value.field) == ("line 1 (id a)", "candidates[1].images[0]")
    skips = SkipReport()
    data = load_task_data(spec, on_error="skip", skips=skips)
    assert data.ids == ["a", "b"] and data.skipped == 3 and data.dropped_candidates == 2
    assert [[data.table.items[c].images[0] for c in cands] for cands in data.candidates] == [
        ["images/red.png", "images/blue.png"], ["images/red.png", "images/yellow.png"]]
    assert [g.tolist() for g in data.grades] == [[2, 0], [1, 0]]
    assert [(x.record, x.field) for x in skips.examples] == [("line 3 (id c)", "candidates[0].images[0]"),
                                                             ("line 4 (id d)", "candidates[1].images[0]"),
                                                             ("line 5 (id e)", "query.images[0]")]


def test_under_skip_a_qrels_task_is_scored_without_its_bad_candidates_and_one_without_a_relevant_query_is_left_out(
        tmp_path, caplog):
    import math

    from tests.eval.helpers import FakeEmbedder
    from unime.eval.runners import EvalOptions, load_suite_data, run_tasks, skipped_task_names
    from unime.models.embedding_cache import RunEncoder

    cfg = _bad_candidate_qrels(tmp_path)
    write_jsonl(tmp_path / "none.jsonl", [  # its one good row has no relevant candidate: nothing to score
        {"query": {"text": "red"}, "candidates": [{"image": "images/gone.png"}, {"image": "images/red.png"}],
         "relevance": [1, 0]},
        {"query": {"text": "blue"}, "candidates": [{"image": "images/red.png"}, {"image": "images/blue.png"}],
         "relevance": [0, 0]}])
    cfg.write_text(cfg.read_text() + "  - {name: none, format: qrels, path: none.jsonl}\n")
    suite = load_task_config(cfg)
    with caplog.at_level("WARNING"):
        data = load_suite_data(suite, on_error="skip")
    assert [spec.name for spec, _ in data] == ["q"] and skipped_task_names(suite, data) == ["none"]
    assert "task 'none': no query has a relevant candidate; the task is left out" in caplog.text
    res = run_tasks(data, RunEncoder(FakeEmbedder(), "fake"), opts=EvalOptions()).results[0]
    # a 'red': red 1.0 (grade 2), blue 0 (0) → ideal order: NDCG, MRR, AP 1
    # b 'yellow': the yellow image 1.0 (grade 0), red .707 (1) → grades [0, 1]: NDCG 1/log2(3), MRR, AP 1/2
    assert res.metrics["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert res.metrics["mrr"] == pytest.approx(0.75) and res.metrics["map"] == pytest.approx(0.75)
    assert res.counts["queries"] == 2 and res.counts["skipped_rows"] == 3 and res.counts["dropped_candidates"] == 2


def test_beir_rows_with_bad_images_name_the_line_or_are_skipped(tmp_path):
    d = tmp_path / "beir"
    write_png(d, "imgs/red.png", "red")
    write_beir(d, [{"_id": "d1", "image": "imgs/red.png"}, {"_id": "d2", "image": "imgs/gone.png"},
                   {"_id": "d3", "text": "grass"}],
               [{"_id": "q1", "text": "red"}, {"_id": "q2", "text": "blue"}],
               "q1\td1\t1\nq2\td2\t1\nq2\td3\t1\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tasks:\n  - {name: b, format: qrels, path: beir}\n")
    spec = _spec(cfg, "b")
    with pytest.raises(DataError, match=f"image file not found: 'imgs/gone.png' \\(looked in '{d.resolve()}'\\)") as e:
        load_task_data(spec)
    assert (e.value.source, e.value.record, e.value.field) == (str(d / "corpus.jsonl"), "line 2", "image")
    skips = SkipReport()
    data = load_task_data(spec, on_error="skip", skips=skips)
    # d2's corpus line, then its judgement (an unknown corpus id now): both skipped; q2 keeps d3
    assert data.ids == ["q1", "q2"] and len(data.candidates[0]) == 2 and data.skipped == 2
    assert dict(skips.counts) == {"image": 1, "schema": 1}


def test_reading_a_video_task_decodes_no_frame(tmp_path, monkeypatch):
    import unime.data.video as video

    cfg, _ = build_fixture(tmp_path)
    decoded = []
    monkeypatch.setattr(video, "_decode_frames", lambda *a, **k: decoded.append(1) or ([], 0))
    for name in ("vid_ret", "vid_qa", "vid_mret"):
        load_task_data(_spec(cfg, name))
    assert decoded == []


def test_under_skip_a_bad_mmeb_candidate_leaves_its_row_not_the_whole_row(tmp_path):
    red, blue = write_png(tmp_path, "images/red.png", "red"), write_png(tmp_path, "images/blue.png", "blue")
    gone = "images/gone.png"
    write_jsonl(tmp_path / "t2i.jsonl", [
        {"id": "r1", "qry_text": "red", "qry_img_path": "", "tgt_text": ["", "", ""],
         "tgt_img_path": [red, gone, blue]},   # keeps its positive and blue: gone is dropped from the row
        {"id": "r2", "qry_text": "red", "qry_img_path": "", "tgt_text": ["", ""],
         "tgt_img_path": [red, gone]},         # only the positive would be left: the row is skipped
        {"id": "r3", "qry_text": "red", "qry_img_path": "", "tgt_text": ["", "", ""],
         "tgt_img_path": [gone, red, blue]},   # the positive is bad: the row is skipped
        {"id": "r4", "qry_text": "", "qry_img_path": gone, "tgt_text": ["red", "blue"],
         "tgt_img_path": ["", ""]},            # the query is bad: the row is skipped
    ])
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tasks:\n  - {name: t2i, format: mmeb, path: t2i.jsonl}\n")
    spec = _spec(cfg, "t2i")
    with pytest.raises(DataError, match="images/gone.png") as e:  # the default policy: unchanged
        load_task_data(spec)
    assert (e.value.record, e.value.field) == ("line 1 (id r1)", "candidates[1].images[0]")
    skips = SkipReport()
    data = load_task_data(spec, on_error="skip", skips=skips)
    assert data.ids == ["r1"] and data.skipped == 3 and data.dropped_candidates == 1
    assert [data.table.items[c].images for c in data.candidates[0]] == [(red,), (blue,)]
    assert [(x.record, x.field) for x in skips.examples] == [("line 2 (id r2)", "candidates[1].images[0]"),
                                                             ("line 3 (id r3)", "candidates[0].images[0]"),
                                                             ("line 4 (id r4)", "query.images[0]")]


def _bad_candidate_v2(root):
    """Two MMEB-V2 tasks with a missing image (images/gone.png, named g) among their candidates: 'loc' (local: each
    row ranks its own candidates) and 'glob' (global: one pool from a corpus file and the rows); see the comments."""
    for c in ("red", "yellow", "blue", "green"):
        write_png(root, f"images/{c}.png", c)

    def row(query, cands, labels):  # cands: (name, colour) with colour None for the missing image
        out = {"cand_text": ["<|image_pad|>"] * len(cands),
               "cand_image": [{"paths": [f"images/{c or 'gone'}.png"]} for _, c in cands],
               "dataset_infos": {"cand_names": [n for n, _ in cands]}}
        if query is not None:
            out.update(query_text=[query if query != "gone" else "<|image_pad|>"],
                       query_image=[{"paths": ["images/gone.png"]} if query == "gone" else None])
            out["dataset_infos"]["label_name"] = labels
        return out

    r, y, b, gr, g = ("r", "red"), ("y", "yellow"), ("b", "blue"), ("gr", "green"), ("g", None)
    write_jsonl(root / "loc/rows.jsonl", [
        row("red", [r, g, b], "r"),          # g is not relevant: it leaves the row → [r, b]
        row("yellow", [r, g, y], ["r", "g"]),  # g is relevant, r (relevant) and y remain: it leaves the row
        row("blue", [g, b], "g"),            # g is the only relevant one: the row is skipped
        row("green", [gr, g], "gr"),         # only one candidate would be left: the row is skipped
        row("gone", [r, b], "r"),            # the query is bad: the row is skipped
    ])
    write_jsonl(root / "glob/corpus.jsonl", [row(None, [y], None), row(None, [g], None)])
    write_jsonl(root / "glob/rows/rows.jsonl", [
        row("red", [r], "r"),
        row("blue", [b, g], "b"),    # g leaves the pool (once for the task, listed three times)
        row("yellow", [g], "g"),     # its relevant candidate left the pool: the row is skipped
        row("green", [gr, g], "gr"),
    ])
    cfg = root / "c.yaml"
    cfg.write_text("tasks:\n  - {name: loc, format: mmeb_v2, path: loc, eval_type: local}\n"
                   "  - {name: glob, format: mmeb_v2, path: glob/rows, eval_type: global, corpus: glob/corpus.jsonl}\n")
    return cfg


def test_under_skip_a_bad_mmeb_v2_candidate_leaves_its_row_or_the_global_pool_not_the_whole_row(tmp_path):
    cfg = _bad_candidate_v2(tmp_path)
    loc, glob = _spec(cfg, "loc"), _spec(cfg, "glob")
    with pytest.raises(DataError, match="images/gone.png") as e:  # the default policy: unchanged
        load_task_data(loc)
    assert (e.value.record, e.value.field) == ("line 1", "cand[1].images[0]")
    with pytest.raises(DataError, match="images/gone.png") as e:
        load_task_data(glob)
    assert (e.value.source, e.value.record, e.value.field) == (str(tmp_path / "glob/rows/rows.jsonl"), "line 2",
                                                               "cand[1].images[0]")
    skips = SkipReport()
    data = load_task_data(loc, on_error="skip", skips=skips)
    assert data.ids == ["line 1", "line 2"] and data.skipped == 3 and data.dropped_candidates == 2
    assert [[data.table.items[c].images[0] for c in cands] for cands in data.candidates] == [
        ["images/red.png", "images/blue.png"], ["images/red.png", "images/yellow.png"]]
    assert [g.tolist() for g in data.grades] == [[1, 0], [1, 0]]
    assert [(x.record, x.field) for x in skips.examples] == [("line 3", "cand[0].images[0]"),
                                                             ("line 4", "cand[1].images[0]"),
                                                             ("line 5", "query.images[0]")]
    skips = SkipReport()
    data = load_task_data(glob, on_error="skip", skips=skips)
    assert data.ids == ["line 1", "line 2", "line 4"] and data.skipped == 1 and data.dropped_candidates == 1
    pool = ["images/red.png", "images/blue.png", "images/green.png", "images/yellow.png"]  # rows first, then corpus
    assert all([data.table.items[c].images[0] for c in cands] == pool for cands in data.candidates)
    assert [g.tolist() for g in data.grades] == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]
    assert [(x.source, x.record, x.field) for x in skips.examples] == [
        (str(tmp_path / "glob/rows/rows.jsonl"), "line 3", "dataset_infos.label_name")]
    assert "its relevant candidate 'g' is bad: image file not found: 'images/gone.png'" in skips.examples[0].message


def test_under_skip_mmeb_v2_tasks_are_scored_without_their_bad_candidates_and_one_left_empty_is_left_out(tmp_path):
    from tests.eval.helpers import FakeEmbedder
    from unime.eval.runners import EvalOptions, load_suite_data, run_tasks, skipped_task_names
    from unime.models.embedding_cache import RunEncoder

    cfg = _bad_candidate_v2(tmp_path)
    write_jsonl(tmp_path / "one/rows.jsonl", [  # the pool keeps one candidate: no row is left to score
        {"query_text": ["red"], "query_image": [None], "cand_text": ["<|image_pad|>"] * 2,
         "cand_image": [{"paths": ["images/red.png"]}, {"paths": ["images/gone.png"]}],
         "dataset_infos": {"cand_names": ["r", "g"], "label_name": "r"}}])
    cfg.write_text(cfg.read_text() + "  - {name: one, format: mmeb_v2, path: one, eval_type: global}\n")
    suite = load_task_config(cfg)
    data = load_suite_data(suite, on_error="skip")
    assert [spec.name for spec, _ in data] == ["loc", "glob"] and skipped_task_names(suite, data) == ["one"]
    loc, glob = run_tasks(data, RunEncoder(FakeEmbedder(tmp_path), "fake"), opts=EvalOptions()).results
    # loc: 'red' ranks [red, blue]: a hit; 'yellow' ranks [red (relevant), yellow]: yellow first, a miss
    assert loc.metrics["hit@1"] == pytest.approx(0.5)
    assert (loc.counts["queries"], loc.counts["candidates_per_query"], loc.counts["skipped_rows"],
            loc.counts["dropped_candidates"]) == (2, 2, 3, 2)
    # glob: red, blue and green each find their own colour among the pool of 4
    assert glob.metrics["hit@1"] == pytest.approx(1.0)
    assert (glob.counts["queries"], glob.counts["candidates_per_query"], glob.counts["skipped_rows"],
            glob.counts["dropped_candidates"]) == (3, 4, 1, 1)


def test_data_check_reads_mmeb_v2_rows_and_checks_their_media(tmp_path, capsys):
    """QA: `unime data check` on MMEB-V2 rows (the demo world's eval/video/*.jsonl) reported every row "missing
    key(s) ['positive', 'query']"; they are recognised by their keys, and their videos, frames and pages checked."""
    from unime.cli import main

    _broken_v2_world(tmp_path)
    root = ["--data-root", str(tmp_path)]
    mret = tmp_path / "video/mret/rows.jsonl"  # its frame lists miss f1.png: 1 row, its candidates m0 and m2 bad
    assert main(["data", "check", str(tmp_path / "video/ret/rows.jsonl"), *root]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{tmp_path / 'video/ret/rows.jsonl'}: MMEB-V2 rows: 3 good, 0 bad rows, 1 with bad "
                             "videos (")
    assert out[1] == "skipped 1 record(s) (video: 1)" and "line 3, field 'cand[0].video[0]'" in out[2]
    assert main(["data", "check", str(mret), *root]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{mret}: MMEB-V2 rows: 0 good, 0 bad rows, 1 with bad videos (") and "f1.png" in out[2]
    corpus = tmp_path / "visdoc/docs/corpus/corpus.jsonl"  # candidates only: d5's page is not a PNG
    assert main(["data", "check", str(corpus), *root]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{corpus}: MMEB-V2 corpus rows: 6 good, 0 bad rows, 1 with bad images (") and \
        "d5.png" in out[2]
    assert main(["data", "check", str(tmp_path / "video/qa/rows.jsonl"), *root, "--no-images"]) == 0
    assert "MMEB-V2 rows: 3 good, 0 bad rows" in capsys.readouterr().out


def test_data_check_counts_bad_images_and_bad_videos_apart(tmp_path, capsys):
    """QA: `data check` summed every row left out for its media as "with bad images", a missing video too. A file
    with one bad clip and one bad image counts them as bad media of each kind; the examples name each file."""
    from unime.cli import main

    _broken_v2_world(tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "video/ret/rows.jsonl").read_text().splitlines()]
    rows[0]["query_image"] = ["gone.png"]  # line 1: a missing image; line 3 keeps its clip PyAV cannot open
    (tmp_path / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["data", "check", str(tmp_path / "mixed.jsonl"), "--data-root", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{tmp_path / 'mixed.jsonl'}: MMEB-V2 rows: 2 good, 0 bad rows, 2 with bad media "
                             "(1 images, 1 videos) ("), out
    assert out[1] == "skipped 2 record(s) (image: 1, video: 1)"
    assert "line 1" in out[2] and "gone.png" in out[2] and "line 3" in out[3] and "clips/c2.mp4" in out[3], out


# -- media that fails only when decoded (the up-front check reads video headers only) --------------------------

def _late_failure_world(root):
    """A video QA task (MMEB-V2 rows, local): line 1 a good clip, line 2 an H.264 clip whose headers are fine but
    whose frame data is overwritten (it fails when decoded), line 3 a frame list whose second frame is a PNG
    cut short past its header. Returns the task config."""
    from PIL import Image

    from tests.data.helpers import QRY_V, TGT_V, VID, write_clip, write_jsonl_rows

    (root / "clips").mkdir()
    write_clip(root / "clips/good.mp4", codec="libx264")
    bad = write_clip(root / "clips/garbled.mp4", codec="libx264", shift=90)
    data = bytearray(bad.read_bytes())
    start, end = data.find(b"mdat") + 4, data.find(b"moov") - 4  # the frames, not the index (`moov`, at the end)
    data[start:end] = b"\xff" * (end - start)
    bad.write_bytes(bytes(data))
    for j, colour in enumerate([(200, 0, 0), (0, 200, 0)]):
        Image.new("RGB", (40, 32), colour).save(root / f"f{j}.png")
    png = (root / "f1.png").read_bytes()
    (root / "f1.png").write_bytes(png[:len(png) // 2])
    rows = [{"query_text": [f"{VID} {QRY_V}"], "query_image": [{"paths": paths}], "cand_text": [f"a {TGT_V}", "b"],
             "cand_image": [None, None], "dataset_infos": {"cand_names": ["a", "b"], "label_name": "a"}}
            for paths in (["clips/good.mp4"], ["clips/garbled.mp4"], ["f0.png", "f1.png"])]
    write_jsonl_rows(root / "qa.jsonl", rows)
    cfg = root / "tasks.yaml"
    cfg.write_text("tasks:\n  - {name: qa, format: mmeb_v2, path: qa.jsonl, modality: video, eval_type: local}\n")
    return cfg


def _eval(cfg, out, model, **kw):
    from unime.eval.runners import EvalConfig, evaluate_checkpoint

    return evaluate_checkpoint(EvalConfig(model=model, tasks=str(cfg), out=str(out), device="cpu", dtype="float32",
                                          no_cache=True, batch_size=4, **kw), show_progress=False)


@pytest.mark.slow
def test_a_video_that_fails_when_encoded_names_the_task_file_line_and_field(tmp_path, tiny_model_dir):
    """QA: a clip whose headers pass the up-front check but whose frames do not decode stopped `unime eval` with
    "field 'video': corrupt video clips/garbled.mp4 ...", naming no task file or line."""
    import unime.data.video as video

    cfg = _late_failure_world(tmp_path)
    load_task_data(_spec(cfg, "qa"))  # the headers are fine: the task reads
    model = tiny_model_dir("qwen2_5_vl")
    video.FRAME_CACHE.clear()
    with pytest.raises(DataError, match="corrupt video clips/garbled.mp4") as e:
        _eval(cfg, tmp_path / "out", model)
    assert (e.value.source, e.value.record, e.value.field) == (str(tmp_path / "qa.jsonl"), "line 2", "query.video")
    (tmp_path / "clips/garbled.mp4").write_bytes((tmp_path / "clips/good.mp4").read_bytes())
    with pytest.raises(DataError, match="f1.png") as e:  # a frame list's frame cut short past its header
        _eval(cfg, tmp_path / "out2", model)
    assert (e.value.source, e.value.record, e.value.field) == (str(tmp_path / "qa.jsonl"), "line 3",
                                                               "query.video[1]")


@pytest.mark.slow
def test_under_skip_a_video_damaged_past_its_header_leaves_its_row_out(tmp_path, tiny_model_dir):
    """QA: under `--on-error skip` such a clip (or frame) still aborted the whole run when it was encoded. Under
    skip the task's videos are decoded when it is read: the rows are left out and counted like a bad header, the
    others scored, and the encoder takes the decoded frames from the frame cache (each clip decoded once)."""
    import unime.data.video as video

    cfg = _late_failure_world(tmp_path)
    skips = SkipReport()
    data = load_task_data(_spec(cfg, "qa"), on_error="skip", skips=skips)
    assert data.ids == ["line 1"] and data.skipped == 2 and dict(skips.counts) == {"video": 2}
    assert [(x.record, x.field) for x in skips.examples] == [("line 2", "query.video[0]"),
                                                             ("line 3", "query.video[1]")]
    video.FRAME_CACHE.clear()
    decoded = []
    real = video.decode_video
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(video, "decode_video", lambda data, *a, **k: decoded.append(k["name"]) or real(data, *a, **k))
        summary = _eval(cfg, tmp_path / "out", tiny_model_dir("qwen2_5_vl"), on_error="skip")
    assert len(decoded) == 2  # good.mp4 and garbled.mp4, each once: the encoder found good.mp4's frames cached
    assert summary["meta"]["skipped_rows"] == 2
    task = json.loads((tmp_path / "out" / "tasks" / "qa.json").read_text())
    assert task["counts"]["queries"] == 1 and task["counts"]["skipped_rows"] == 2
