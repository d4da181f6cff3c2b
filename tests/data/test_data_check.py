"""`unime data check` on the files it reads beside training records and MMEB rows: qrels rows and judge pairs, every
row parsed and every image opened, a bad one named by its line and field."""

from __future__ import annotations

import pytest

from unime.cli import main
from tests.eval.helpers import write_jsonl, write_png


def _img(name: str) -> dict:
    return {"text": "<|image_1|>", "image": f"images/{name}.png"}


def test_data_check_reads_qrels_rows_and_opens_their_images(tmp_path, capsys):
    """QA: `data check QRELS` stopped with "holds qrels rows ... not checked": it now reads every row (a bad grade, a
    candidate list without its grades) and opens every image, naming the line and the field."""
    for c in ("red", "blue"):
        write_png(tmp_path, f"images/{c}.png", c)
    f = tmp_path / "q.jsonl"
    write_jsonl(f, [
        {"id": "a", "query": {"text": "red"}, "candidates": [_img("red"), _img("blue")], "relevance": [2, 0]},
        {"id": "b", "query": {"text": "red"}, "candidates": [_img("red"), _img("gone")], "relevance": [1, 0]},
        {"id": "c", "query": {"text": "red"}, "candidates": [_img("red")], "relevance": [-1]},
        {"query": {"text": "blue"}, "candidates": [_img("blue"), _img("red")], "relevance": [1]},
    ])
    assert main(["data", "check", str(f)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{f}: qrels rows: 1 good, 2 bad rows, 1 with bad images (image paths resolved against {tmp_path})"
    assert out[1] == "skipped 3 record(s) (bad_score: 1, image: 1, schema: 1)"
    assert out[2].startswith(f"  - {f}, record line 3 (id c), field 'relevance[0]': relevance grade must be"), out
    assert out[3].startswith(f"  - {f}, record line 4, field 'relevance': expected a list of 2 grades"), out
    assert out[4] == f"  - {f}, record line 2 (id b), field 'candidates[1].images[0]': image file not found: " \
        f"'images/gone.png' (looked in '{tmp_path.resolve()}')", out
    assert main(["data", "check", str(f), "--no-images"]) == 1
    assert capsys.readouterr().out.startswith(f"{f}: qrels rows: 2 good, 2 bad rows, 0 with bad images\n")


def test_data_check_reads_judge_pairs_with_their_label_column_and_images(tmp_path, capsys):
    """QA: `data check PAIRS` stopped with "holds judge pairs ... not checked". The pairs are read as `unime judge`
    reads them (the one extra key of the first row is the label column), and every image opened."""
    write_png(tmp_path, "images/red.png", "red")
    f = tmp_path / "pairs.jsonl"
    write_jsonl(f, [
        {"query": {"text": "red"}, "candidate": _img("red"), "label": 1},
        {"query": {"text": "red"}, "candidate": _img("gone"), "label": 0},
        {"query": {"text": "red"}, "candidate": _img("red"), "label": "yes"},
        {"query": {"text": "red"}, "label": 1},
    ])
    assert main(["data", "check", str(f)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{f}: judge pairs (label column 'label'): 1 good, 2 bad rows, 1 with bad images (image paths " \
        f"resolved against {tmp_path})"
    assert out[1] == "skipped 3 record(s) (image: 1, schema: 2)"
    assert out[2] == f"  - {f}, record line 2, field 'candidate.images[0]': image file not found: 'images/gone.png' " \
        f"(looked in '{tmp_path.resolve()}')"
    assert out[3].startswith(f"  - {f}, record line 3, field 'label': expected a label >= 0"), out
    assert out[4] == f"  - {f}, record line 4, field 'candidate': missing", out
    unlabelled = tmp_path / "u.jsonl"
    write_jsonl(unlabelled, [{"id": "p1", "query": {"text": "red"}, "candidate": _img("red")}])
    assert main(["data", "check", str(unlabelled)]) == 0
    assert capsys.readouterr().out.startswith(f"{unlabelled}: judge pairs: 1 good, 0 bad rows, 0 with bad images")


def test_data_check_takes_the_label_column_its_hint_names(tmp_path, capsys):
    """QA: on a pairs file with two extra keys `data check` said "pass --label-column NAME", an option it did not
    have (the hint is `unime judge`'s, whose pairs reader it shares). It has it now: the label is read from that
    key, the other extra keys are ignored (they made every line "unknown keys ['note']": a file with two extra keys
    was unreadable), and a file without judge pairs refuses it."""
    write_png(tmp_path, "images/red.png", "red")
    f = tmp_path / "pairs.jsonl"
    write_jsonl(f, [
        {"query": {"text": "red"}, "candidate": _img("red"), "grade": 1, "note": "checked by hand"},
        {"query": {"text": "red"}, "candidate": _img("red"), "grade": 0},
        {"query": {"text": "red"}, "candidate": _img("red"), "grade": -1},
    ])
    assert main(["data", "check", str(f)]) == 2  # which key is the label: refused in one line (test below)
    assert f"{f}, record line 1: 2 keys beside id, query and candidate, ['grade', 'note']: which is the label? pass " \
        "--label-column KEY" in capsys.readouterr().err
    assert main(["data", "check", str(f), "--label-column", "grade"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{f}: judge pairs (label column 'grade'): 2 good, 1 bad rows, 0 with bad images (image paths " \
        f"resolved against {tmp_path})", out
    assert out[1:] == ["skipped 1 record(s) (schema: 1)",
                       f"  - {f}, record line 3, field 'grade': expected a label >= 0 (or true/false), got -1"], out
    records = tmp_path / "r.jsonl"
    write_jsonl(records, [{"query": {"text": "red"}, "positive": _img("red")}])
    assert main(["data", "check", str(records), "--label-column", "grade"]) == 2
    assert "--label-column names the label of judge pairs; this file holds no judge pairs" in capsys.readouterr().err


def test_data_check_refuses_judge_pairs_whose_label_column_is_ambiguous_in_one_line(tmp_path, capsys):
    """QA: a pairs file whose first row has one key beside id, query and candidate is read with that key as its
    label, but one with two or more was reported row by row, every row bad for the same reason ("0 good, 3 bad
    rows", the same "unknown keys" line repeated). Which key is the label is ambiguous then: `data check` refuses
    with one line naming the file, the line and the keys, and reads the file when --label-column names the label
    (the other keys ignored)."""
    write_png(tmp_path, "images/red.png", "red")
    f = tmp_path / "pairs.jsonl"
    rows = [{"id": f"p{i}", "query": {"text": "red"}, "candidate": _img("red"), "label": i % 2, "source": "coco",
             "score": 0.5, "note": "x"} for i in range(3)]
    write_jsonl(f, [{"id": "p0", "query": {"text": "red"}, "candidate": _img("red"), "label": 1, "source": "coco"},
                    *rows[1:]])
    assert main(["data", "check", str(f)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [
        f"unime: error: {f}, record line 1: 2 keys beside id, query and candidate, ['label', 'source']: which is the "
        "label? pass --label-column KEY (the other keys are then ignored)"], err
    assert main(["data", "check", str(f), "--label-column", "label"]) == 0
    assert capsys.readouterr().out == f"{f}: judge pairs (label column 'label'): 3 good, 0 bad rows, 0 with bad " \
        f"images (image paths resolved against {tmp_path})\n"
    # one extra key: still its label column
    write_jsonl(f, [{k: v for k, v in r.items() if k not in ("source", "score", "note")} for r in rows])
    assert main(["data", "check", str(f), "--no-images"]) == 0
    assert capsys.readouterr().out == f"{f}: judge pairs (label column 'label'): 3 good, 0 bad rows, 0 with bad " \
        "images\n"


def test_data_check_of_a_worlds_eval_file_says_which_data_root_to_pass(tiny_world_dir, tmp_path, capsys):
    """QA: `data check WORLD/eval/mmeb/t2i.jsonl` reported every image "not found" and nothing more: the world's
    eval files are relative to the world (its eval_tasks.yaml tells `unime eval`), which `unime eval --tasks FILE`
    does not look for either, so the root is not guessed: the report ends with the --data-root to pass, the nearest
    folder above that holds the first missing path. A given --data-root, or one recorded beside the file, is used
    without a hint."""
    world = tiny_world_dir(0)
    for f in (world / "eval/mmeb/t2i.jsonl", world / "eval/qrels/scene_search.jsonl"):
        assert main(["data", "check", str(f)]) == 1
        out = capsys.readouterr().out.splitlines()
        first, looked = out[2].split("image file not found: ")[1].split(" (looked in ")
        assert looked == f"'{f.parent.resolve()}')", out[2]
        assert out[-1] == (f"media paths not found under the file's folder {f.parent} (no --data-root given and no "
                           f"data root recorded beside the file); the first, {first}, is under {world.resolve()}: "
                           f"pass --data-root {world.resolve()}"), out[-1]
        assert main(["data", "check", str(f), "--data-root", str(world)]) == 0
        assert "--data-root" not in capsys.readouterr().out
    lone = tmp_path / "t2i.jsonl"  # no folder above holds its images
    lone.write_bytes((world / "eval/mmeb/t2i.jsonl").read_bytes())
    assert main(["data", "check", str(lone)]) == 1
    assert capsys.readouterr().out.splitlines()[-1].endswith("; pass --data-root with the folder they are relative to")
    assert main(["data", "check", str(world / "train/records.jsonl"), "--data-root", str(tmp_path)]) == 1
    assert "pass --data-root" not in capsys.readouterr().out  # a given root is not second-guessed


def test_data_check_reads_every_data_file_of_a_generated_world(tiny_world_dir, capsys):
    """QA: `data check` on a world's eval/retrieval and eval/compositional files reported every row bad ("missing
    key(s) ['positive', 'query']"): retrieval entries and compositional pairs are recognised by their keys too, and a
    bad row is named by its line or id and field."""
    world = tiny_world_dir(0)
    words = {"mmeb": "MMEB-eval rows", "qrels": "qrels rows", "retrieval": "retrieval entries",
             "compositional": "compositional pairs"}
    files = sorted((world / "eval").rglob("*.jsonl"))
    assert {f.parent.name for f in files} == set(words)
    for f in files:
        assert main(["data", "check", str(f), "--data-root", str(world)]) == 0, f
        n = len(f.read_text().splitlines())
        assert capsys.readouterr().out == f"{f}: {words[f.parent.name]}: {n} good, 0 bad rows, 0 with bad images " \
            f"(image paths resolved against {world})\n"
    assert main(["data", "check", str(world / "train/records.jsonl")]) == 0
    capsys.readouterr()


def test_data_check_names_a_bad_retrieval_entry_and_compositional_pair(tmp_path, capsys):
    write_png(tmp_path, "images/red.png", "red")
    ret, comp = tmp_path / "ret.jsonl", tmp_path / "comp.jsonl"
    write_jsonl(ret, [{"id": "r1", "image": "images/red.png", "captions": ["a red square"]},
                      {"id": "r2", "image": "images/red.png", "captions": "a red square"}])
    write_jsonl(comp, [{"image": "images/red.png", "positive": "red", "negative": "blue"},
                       {"id": "p2", "image": "images/gone.png", "positive": "red", "negative": "blue"}])
    assert main(["data", "check", str(ret)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{ret}: retrieval entries: 1 good, 1 bad rows, 0 with bad images"), out
    assert out[2].startswith(f"  - {ret}, record line 2 (id r2), field 'captions': "), out
    assert main(["data", "check", str(comp)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{comp}: compositional pairs: 1 good, 0 bad rows, 1 with bad images"), out
    assert out[2] == f"  - {comp}, record line 2 (id p2), field 'image': image file not found: 'images/gone.png' " \
        f"(looked in '{tmp_path.resolve()}')", out


def test_data_check_names_a_bad_image_of_an_eval_row_by_its_line(tmp_path, capsys):
    """QA: a bad image of an MMEB-eval row, retrieval entry or compositional pair was named by the row's id alone
    ("record p2"), and an id-less row by its position among the rows left after the bad ones; now by the file's
    line, with the id when there is one, as for training records and qrels rows."""
    write_png(tmp_path, "images/red.png", "red")
    mmeb, ret, comp = tmp_path / "m.jsonl", tmp_path / "ret.jsonl", tmp_path / "comp.jsonl"
    write_jsonl(mmeb, [{"id": "q1", "qry_text": "red", "qry_img_path": "", "tgt_text": ["", ""],
                        "tgt_img_path": ["images/red.png", "images/gone.png"]}, "a string",
                       {"qry_text": "red", "qry_img_path": "images/gone.png", "tgt_text": ["red"],
                        "tgt_img_path": [""]}])
    write_jsonl(ret, [{"image": "images/red.png", "captions": []}, {"image": "images/gone.png", "captions": ["a"]},
                      {"id": "r3", "image": "images/gone.png", "captions": ["b"]}])
    write_jsonl(comp, [{"image": "images/red.png", "positive": "red", "negative": " "},
                       {"image": "images/gone.png", "positive": "red", "negative": "blue"}])
    expected = {mmeb: ["line 2: a MMEB row must be ", "line 1 (id q1), field 'candidates[1].images[0]': image file not",
                       "line 3, field 'query.images[0]': image file not found"],
                ret: ["line 1, field 'captions'", "line 2, field 'image': image file not found",
                      "line 3 (id r3), field 'image': image file not found"],
                comp: ["line 1, field 'negative'", "line 2, field 'image': image file not found"]}
    for f, lines in expected.items():
        assert main(["data", "check", str(f)]) == 1
        out = capsys.readouterr().out.splitlines()
        assert [o.split(", record ", 1)[1][:len(want)] for o, want in zip(out[2:], lines)] == lines, out


def test_data_check_reads_a_beir_folder_as_eval_does(tmp_path, capsys):
    """QA: `data check` did not read the BEIR folders `unime eval` takes as qrels tasks (a folder: "record file not
    found"). It reads corpus.jsonl and queries.jsonl with eval's reader (`unime.data.beir`), opens their images, and
    reads every qrels/*.tsv line: a bad row, a repeated _id, a judgement naming an unknown (or bad) row, a bad score
    or a malformed line is named by file, line and field; a missing file is one error naming it."""
    write_png(tmp_path, "b/imgs/red.png", "red")
    d = tmp_path / "b"
    write_jsonl(d / "corpus.jsonl", [{"_id": "d1", "image": "imgs/red.png"}, {"_id": "d2", "image": "imgs/gone.png"},
                                     {"_id": "d3", "title": "green", "text": "grass"}, {"_id": "d3", "text": "again"},
                                     {"text": "no id"}])
    write_jsonl(d / "queries.jsonl", [{"_id": "q1", "text": "red"}, {"_id": "q2", "text": "blue"}])
    (d / "qrels").mkdir()
    (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq3\td1\t1\n"
                                          "q1\td3\tx\nq1 d3 1\n")
    (d / "qrels" / "dev.tsv").write_text("q2\td3\t2\n")
    assert main(["data", "check", str(d)]) == 1
    out = capsys.readouterr().out.splitlines()
    corpus, test = d / "corpus.jsonl", d / "qrels" / "test.tsv"
    assert out[:9] == [
        f"{d}: BEIR folder (2 corpus rows, 2 queries, 2 judgements in dev.tsv, test.tsv): 6 good, 6 bad rows, 1 with "
        f"bad images (image paths resolved against {d})",
        "skipped 7 record(s) (bad_score: 1, image: 1, schema: 5)",
        f"  - {corpus}, record line 5, field '_id': missing key(s) ['_id']",
        f"  - {corpus}, record line 2, field 'image': image file not found: 'imgs/gone.png' (looked in "
        f"'{d.resolve()}')",
        f"  - {corpus}, record line 4, field '_id': duplicate _id 'd3'",
        f"  - {test}, record line 3, field 'corpus-id': unknown corpus id 'd2'",
        f"  - {test}, record line 4, field 'query-id': unknown query id 'q3'",
        f"  - {test}, record line 5, field 'score': score 'x' is not a number",
        f"  - {test}, record line 6: expected 3 tab-separated columns"], out
    assert main(["data", "check", str(d), "--no-images"]) == 1
    assert capsys.readouterr().out.startswith(f"{d}: BEIR folder (3 corpus rows, 2 queries, 3 judgements in dev.tsv, "
                                              "test.tsv): 8 good, 5 bad rows, 0 with bad images\n")
    (d / "queries.jsonl").unlink()
    assert main(["data", "check", str(d)]) == 2
    assert f"{d}: BEIR folder without queries.jsonl" in capsys.readouterr().err
    assert main(["data", "check", str(tmp_path / "b" / "imgs")]) == 2
    assert "a folder that is not a BEIR folder (corpus.jsonl, queries.jsonl, qrels/*.tsv)" in capsys.readouterr().err


def test_data_check_counts_an_image_over_the_processors_aspect_ratio_as_bad(tmp_path, capsys):
    """QA: a 1000x4 banner (250:1) passed `data check` ("0 with bad images"), then every model command refused it
    (the Qwen-VL processors take 200:1 at most). It is a bad image now, with the models' reason and a last line
    saying what takes it (--image-size: a fixed resize is what the processor sees); 200:1 exactly is good."""
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.new("RGB", (1000, 4), (200, 0, 0)).save(tmp_path / "images/banner.png")
    Image.new("RGB", (4, 800), (200, 0, 0)).save(tmp_path / "images/pole.png")  # 200:1, taken
    f = tmp_path / "r.jsonl"
    write_jsonl(f, [{"query": {"text": "a banner"}, "positive": {"images": ["images/banner.png"]}},
                    {"query": {"text": "a pole"}, "positive": {"images": ["images/pole.png"]}}])
    assert main(["data", "check", str(f)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{f}: 1 good, 0 bad rows, 1 with bad images (image paths resolved against {tmp_path})",
        "skipped 1 record(s) (image: 1)",
        f"  - {f}, record line 1, field 'positive.images[0]': image images/banner.png is 1000x4: its long side is 250 "
        "times its short side, over the 200 the model's image processor accepts",
        "1 image(s) over the aspect ratio the models' image processors accept: every command that gives them to a "
        "model refuses them (or skips them under --on-error skip) unless it is given --image-size (a fixed resize, "
        "what the processor then sees); crop or pad them, or leave them out"], out
    assert main(["data", "check", str(f), "--no-images"]) == 0
    capsys.readouterr()


def test_data_check_reads_an_items_file_as_index_build_and_embed_do(tmp_path, capsys):
    """QA: `data check corpus.jsonl` (an items file for `unime index build --items` / `unime embed --items`) reported
    every line bad ("field 'positive': missing key(s) ['positive', 'query']"). An items file is recognised by its
    first line's keys (id, metadata, text, image(s), video; no query or positive) and read as those commands read it
    (`unime.data.corpus.read_corpus`): a bad line, a repeated id, a missing image named by the line, the id the line
    gives (QA: left out, where records and MMEB rows show it) and the field."""
    write_png(tmp_path, "images/red.png", "red")
    f = tmp_path / "corpus.jsonl"
    write_jsonl(f, [{"id": "a", "text": "red", "image": "images/red.png", "metadata": {"k": 1}},
                    {"id": "b", "text": "blue"},
                    {"id": "a", "text": "again"},
                    {"id": "c", "images": ["images/gone.png"]},
                    {"id": "d", "caption": "x"},
                    {"id": "e"},
                    {"text": "no id, its content key"}])
    assert main(["data", "check", str(f)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{f}: items (`unime index build --items`, `unime embed --items`): 4 good, 2 bad rows, 1 with bad images "
        f"(image paths resolved against {tmp_path})",
        "skipped 3 record(s) (empty_item: 1, image: 1, schema: 1)",
        f"  - {f}, record line 5 (id d): unknown keys ['caption'] (allowed: id, metadata, text, image, images, video)",
        f"  - {f}, record line 6 (id e): empty item (no text, image or video)",
        f"  - {f}, record line 4 (id c), field 'item.images[0]': image file not found: 'images/gone.png' (looked in "
        f"'{tmp_path.resolve()}')",
        # QA: no "pass --data-root" line: images/red.png was found under the file's folder, so the root is right and
        # images/gone.png is missing, as its own line says
        # QA: a repeated id was called a bad row, though `unime embed` reads it: named as what refuses it
        "repeated id 'a' (line 3, first on line 1): `unime index build` refuses it; `unime embed` reads it (one row "
        "per line, a repeated item encoded once)"], out
    assert main(["data", "check", str(f), "--no-images"]) == 1
    assert capsys.readouterr().out.startswith(f"{f}: items (`unime index build --items`, `unime embed --items`): 5 "
                                              "good, 2 bad rows, 0 with bad images\n")
    world = tmp_path / "items.jsonl"  # a generated world's items.jsonl: {"key", "item", "meta"}
    write_jsonl(world, [{"key": "k1", "item": {"text": "red", "image": "images/red.png"}, "meta": {"c": "red"}}])
    assert main(["data", "check", str(world)]) == 0
    assert capsys.readouterr().out == f"{world}: items (`unime index build --items`, `unime embed --items`): 1 " \
        f"good, 0 bad rows, 0 with bad images (image paths resolved against {tmp_path})\n"
    # its line's id is its key, unless it gives an id
    write_jsonl(world, [{"key": "k1", "item": {"video": "clips/gone.mp4"}, "meta": {}},
                        {"key": "k2", "id": "v2", "item": {"video": "clips/gone.mp4"}, "meta": {}}])
    assert main(["data", "check", str(world), "--data-root", str(tmp_path)]) == 1
    assert capsys.readouterr().out.splitlines()[2:] == [
        f"  - {world}, record line 1 (id k1), field 'item.video[0]': video file not found: 'clips/gone.mp4' (looked "
        f"in '{tmp_path.resolve()}')",
        f"  - {world}, record line 2 (id v2), field 'item.video[0]': video file not found: 'clips/gone.mp4' (looked "
        f"in '{tmp_path.resolve()}')"]


def test_data_check_help_names_every_format_it_reads(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["data", "check", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("records", "MMEB-eval or MMEB-V2 rows", "qrels rows", "retrieval entries", "compositional pairs",
                  "judge pairs", "items (a corpus: `unime index build --items`, `unime embed --items`)",
                  "BEIR folder"):
        assert words in text, words


def test_data_check_names_every_format_it_reads_for_a_file_of_another(tmp_path, capsys):
    f = tmp_path / "captions.csv"
    f.write_text("image,caption\na.png,a red square\n", encoding="utf-8")
    assert main(["data", "check", str(f)]) == 2
    err = capsys.readouterr().err
    assert "cannot tell the format of 'captions.csv'" in err
    for name in ("MMEB-V2 rows", "qrels rows", "retrieval entries", "compositional pairs", "judge pairs", "items",
                 "BEIR folders"):
        assert name in err, name


def test_data_check_samples_videos_as_the_run_given_its_video_options_does(tmp_path, capsys, monkeypatch):
    """QA: `data check` had no --video-* options: it checked a clip at the default 8 frames, then `train embedder
    --video-frames 64` failed on it (a clip damaged between the frames checked). It takes the options of the commands
    that read videos, and decodes the frames a run with them samples: of a 20-frame clip, 4 frames are 0, 6, 13 and 19
    (i * 19 / 3 rounded), at 2 frames per second of its 2 s, 4 again; unset, the default 8."""
    from tests.data.helpers import write_clip
    import unime.data.images
    from unime.data.video import FRAME_CACHE

    (tmp_path / "clips").mkdir()
    write_clip(tmp_path / "clips" / "a.mp4", n=20, fps=10)
    f = tmp_path / "items.jsonl"
    write_jsonl(f, [{"id": "a", "text": "a clip", "video": "clips/a.mp4"}])
    taken = []
    real = unime.data.images.load_video

    def spy(*args, **kwargs):
        video = real(*args, **kwargs)
        taken.append(video.frame_indices)
        return video

    monkeypatch.setattr(unime.data.images, "load_video", spy)
    for options, frames in [(["--video-frames", "4"], (0, 6, 13, 19)), (["--video-fps", "2"], (0, 6, 13, 19)),
                            ([], (0, 3, 5, 8, 11, 14, 16, 19))]:
        FRAME_CACHE.clear()
        taken.clear()
        assert main(["data", "check", str(f), *options]) == 0, capsys.readouterr()
        assert taken == [frames], options
        assert " 1 good, 0 bad rows, 0 with bad videos" in capsys.readouterr().out
    assert main(["data", "check", str(f), "--video-frames", "0"]) == 2
    assert "--video-frames must be >= 1, got 0" in capsys.readouterr().err


def test_data_check_speaks_of_the_media_the_file_has(tmp_path, capsys):
    """QA: on records whose only media are videos (frame lists) `data check` said "0 with bad images (image paths
    resolved against ...)"; now the videos, or both kinds when the file has both."""
    for c in ("red", "blue"):
        write_png(tmp_path, f"images/{c}.png", c)
    clip = {"text": "<|video_1|>", "video": ["images/red.png", "images/blue.png"]}
    video_row = {"id": "v", "query": {"text": "red"}, "positive": clip}
    image_row = {"id": "i", "query": {"text": "blue"}, "positive": _img("blue")}
    videos, both = tmp_path / "videos.jsonl", tmp_path / "both.jsonl"
    write_jsonl(videos, [video_row])
    write_jsonl(both, [video_row, image_row])
    assert main(["data", "check", str(videos)]) == 0
    assert capsys.readouterr().out == f"{videos}: 1 good, 0 bad rows, 0 with bad videos (video paths resolved " \
        f"against {tmp_path})\n"
    assert main(["data", "check", str(both)]) == 0
    assert capsys.readouterr().out == f"{both}: 2 good, 0 bad rows, 0 with bad images or videos (media paths " \
        f"resolved against {tmp_path})\n"


def test_data_check_refuses_a_file_with_no_rows(tmp_path, capsys):
    """QA (own data): `data check` on an empty records file (or one of blank lines) printed "0 good, 0 bad rows" and
    exited 0, while every command reading the file refuses it (`train embedder`: "no usable training records"). It is
    now one error line naming the file, exit 2."""
    for name, text in (("empty.jsonl", ""), ("blank.jsonl", "\n  \n")):
        f = tmp_path / name
        f.write_text(text)
        assert main(["data", "check", str(f)]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err == f"unime: error: {f}: no rows (the file is empty): every command reading it " \
            "refuses it; give the file that holds your records\n"
    write_png(tmp_path, "images/red.png", "red")
    one = tmp_path / "one.jsonl"
    write_jsonl(one, [{"query": {"text": "red"}, "positive": _img("red")}])
    assert main(["data", "check", str(one)]) == 0
    assert capsys.readouterr().out.startswith(f"{one}: 1 good, 0 bad rows")


def test_an_items_file_whose_only_fault_is_a_repeated_id_passes_data_check_as_embed_reads_it(tmp_path, capsys):
    """QA: `data check` called a repeated id a bad row for `unime embed --items` too, which reads it; it is a
    warning line naming `unime index build` (whose reader, `read_corpus`, still refuses it), and the check passes."""
    from unime.data.corpus import read_corpus
    from unime.errors import DataError

    f = tmp_path / "items.jsonl"
    write_jsonl(f, [{"id": "a", "text": "red"}, {"id": "b", "text": "blue"}, {"id": "a", "text": "red"}])
    assert main(["data", "check", str(f), "--no-images"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{f}: items (`unime index build --items`, `unime embed --items`): 3 good, 0 bad rows, 0 with bad images",
        "repeated id 'a' (line 3, first on line 1): `unime index build` refuses it; `unime embed` reads it (one row "
        "per line, a repeated item encoded once)"]
    with pytest.raises(DataError, match=r"line 3 \(id a\), field 'id': duplicate id 'a' \(first on line 1\)"):
        read_corpus(f)
