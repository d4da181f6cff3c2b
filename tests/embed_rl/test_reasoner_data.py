"""T-CoT data around the embedder: the T-CoT-match split, reasoned records, <emb> checkpoints, T-CoT files,
the reasoner's prompts, and evaluation with reasoning through the eval harness."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from unime.data.items import Item, Record
from unime.errors import DataError
from unime.models.prompts import EMB_TOKEN
from unime.reasoning.reasoner import (TCoTRow, read_tcot_rows, reasoning_instruction, reasoning_prompt_segments,
                                      write_tcot_rows)
from unime.reasoning.tcot import render_tcot
from unime.embed_rl.tcot_embedder import ReasoningEncoder, reasoned_records, split_by_tcot_match

T = lambda kw: render_tcot({"text_keywords": [kw]}, f"About {kw}.", kw)  # noqa: E731


def _records():
    return [Record(query=Item(text=f"q{i}"), positive=Item(text=f"p{i}"), dataset="a" if i < 3 else "b", id=f"r{i}")
            for i in range(5)]


def _rows(records):
    return [TCoTRow(r.id, side, r.query if side == "query" else r.positive, T(f"{side}{r.id}"))
            for r in records for side in ("query", "target")]


class _StubJudge:
    def __init__(self, scores):
        self.scores, self.seen = scores, []

    def score_pairs(self, pairs):
        self.seen.extend(pairs)
        return np.array(self.scores)


def test_split_by_tcot_match_threshold_counts_and_judge_inputs():
    recs = _records()
    judge = _StubJudge([0.9, 0.5, 0.49, 0.1, 0.7])
    split = split_by_tcot_match(recs, _rows(recs), judge, threshold=0.5)
    assert [r.id for r in split.contrastive] == ["r0", "r1", "r4"] and [r.id for r in split.rl] == ["r2", "r3"]
    assert split.counts["contrastive_fraction"] == 0.6
    assert split.per_dataset == {"a": {"contrastive": 2, "rl": 1}, "b": {"contrastive": 1, "rl": 1}}
    q, p = judge.seen[0]
    assert q.text == "q0\n" + T("queryr0") and p.text == "p0\n" + T("targetr0")


def test_split_by_rl_fraction_sends_the_lowest_scores_to_rl():
    recs = _records()
    split = split_by_tcot_match(recs, _rows(recs), _StubJudge([0.56, 0.55, 0.57, 0.55, 0.60]), rl_fraction=0.4)
    # the two lowest (0.55 twice; ties by record order) go to RL
    assert [r.id for r in split.rl] == ["r1", "r3"] and split.threshold == 0.56
    assert len(split.contrastive) == 3


def test_split_refuses_a_threshold_beside_an_rl_fraction():
    """Before, a threshold given beside rl_fraction was ignored without a word: the split used the fraction."""
    recs = _records()
    with pytest.raises(ValueError, match="threshold.*rl_fraction|rl_fraction.*threshold"):
        split_by_tcot_match(recs, _rows(recs), _StubJudge([0.5] * 5), threshold=0.3, rl_fraction=0.2)
    # the threshold left unset is the paper's 0.5
    split = split_by_tcot_match(recs, _rows(recs), _StubJudge([0.9, 0.5, 0.49, 0.1, 0.7]))
    assert split.threshold == 0.5 and [r.id for r in split.rl] == ["r2", "r3"]


def test_missing_tcot_is_an_error_naming_the_record():
    recs = _records()
    rows = [r for r in _rows(recs) if not (r.record_id == "r3" and r.side == "target")]
    with pytest.raises(DataError, match="record r3.*target"):
        split_by_tcot_match(recs, rows, _StubJudge([0.5] * 5))


def test_reasoned_records_roundtrip_through_parquet(tmp_path):
    from unime.data.images import ImageLoader
    from unime.data.io import read_records, write_records

    Image.new("RGB", (100, 100), (200, 0, 0)).save(tmp_path / "a.png")
    rec = Record(query=Item(text="find red"), positive=Item(text="<|image_1|>\nRepresent the image.",
                                                           images=("a.png",)), id="x", dataset="d")
    rows = [TCoTRow("x", "query", rec.query, T("red")),
            TCoTRow("x", "target", rec.positive, render_tcot({"bbox_2d": [[0, 0, 500, 500]]}, "Red.", "red"))]
    (out,) = reasoned_records([rec], rows, ImageLoader(tmp_path))
    assert out.query.text == "find red" + T("red") + "Summarize the above content in one word:"
    assert out.positive.images[0] == "a.png" and isinstance(out.positive.images[1], bytes)
    assert "</thinking><|image_2|><rethink>" in out.positive.text
    write_records([out], tmp_path / "r.parquet")
    (back,) = read_records(tmp_path / "r.parquet")
    assert back.query.key == out.query.key and back.positive.key == out.positive.key
    # without T-CoTs (`--no-tcots`): each item with the summary prompt only, no evidence
    (plain,) = reasoned_records([rec], None, ImageLoader(tmp_path))
    assert plain.query.text == "find red" + "Summarize the above content in one word:"
    assert plain.positive.text == rec.positive.text + "Summarize the above content in one word:"
    assert plain.positive.images == ("a.png",)


def test_materialize_takes_tcots_or_no_tcots(tmp_path):
    from unime.data.io import read_records, write_records
    from unime.embed_rl.tcot_embedder import MaterializeConfig, materialize_records_file
    from unime.errors import UsageError

    write_records([Record(query=Item(text="q"), positive=Item(text="p"), id="x")], tmp_path / "r.jsonl")
    for tcots, no_tcots in ((None, False), ("t.jsonl", True)):
        with pytest.raises(UsageError, match="give --tcots FILE or --no-tcots"):
            materialize_records_file(MaterializeConfig(records=str(tmp_path / "r.jsonl"), tcots=tcots,
                                                       no_tcots=no_tcots, out=str(tmp_path / "o.jsonl")))
    assert materialize_records_file(MaterializeConfig(records=str(tmp_path / "r.jsonl"), no_tcots=True,
                                                      out=str(tmp_path / "o.jsonl"))) == 1
    (out,) = read_records(tmp_path / "o.jsonl")
    assert (out.query.text, out.positive.text) == ("qSummarize the above content in one word:",
                                                   "pSummarize the above content in one word:")


def test_tcot_files_roundtrip_and_errors(tmp_path):
    recs = _records()
    write_tcot_rows(_rows(recs), tmp_path / "t.jsonl")
    back = read_tcot_rows(tmp_path / "t.jsonl")
    assert [(r.record_id, r.side, r.tcot) for r in back] == [(r.record_id, r.side, r.tcot) for r in _rows(recs)]
    (tmp_path / "bad.jsonl").write_text('{"record_id": "a", "side": "left", "item": {"text": "x"}, "tcot": ""}\n')
    with pytest.raises(DataError, match="bad.jsonl.*record line 1, field .side."):
        read_tcot_rows(tmp_path / "bad.jsonl")
    (tmp_path / "bad2.jsonl").write_text('{"record_id": "a", "side": "query", "item": {"video": ["f.png"]}, '
                                         '"tcot": "", "video_sampling": {"frames": "eight"}}\n')
    with pytest.raises(DataError, match="bad2.jsonl, record line 1, field 'video_sampling': expected"):
        read_tcot_rows(tmp_path / "bad2.jsonl")


def test_tcot_key_frames_are_checked_by_the_frames_each_sampling_takes_of_the_clip(tmp_path):
    """`refuse_other_sampling` compares the frames of the row's clip that the recorded sampling and the command's
    take, not the options. Clips written with PyAV: 8 frames at 4 fps (2 s) and 4 frames at 4 fps (1 s).
    - `--video-fps 8` (16 frames for 2 s, at most the clip's 8: 0..7) read at `--video-frames 8` (0..7): read;
    - `--video-fps 2` (4 frames: uniform of 8 at steps of 7/3 = 0, 2, 5, 7) read at the default 8 frames: refused in
      one line naming the file, the record, the field and both frame lists;
    - `--video-fps 1` of the 1-s clip (1 frame, raised to the 2 frames minimum: 0, 3) read at `--video-max-frames 1`
      (1 frame, the middle one, padded to a temporal patch: 1, 1): refused. The check rebuilt the recorded sampling
      with the command's minimum (1 under --video-max-frames 1), found 1 frame (1, 1) for it too and let the T-CoT
      through, its key frame 2 (frame 3) then naming frame 1;
    - `--video-fps 1 --video-max-frames 1` (1 frame: 1, 1) read at `--video-frames 1` (1, 1): read."""
    pytest.importorskip("av")
    from tests.data.helpers import write_clip
    from unime.data.images import ImageLoader
    from unime.data.video import FRAME_CACHE, VideoSampling
    from unime.reasoning.reasoner import refuse_other_sampling

    write_clip(tmp_path / "clip.mp4", n=8, fps=4)
    write_clip(tmp_path / "seg.mp4", n=4, fps=4)
    FRAME_CACHE.clear()

    def check(clip, written, read):
        numbering = (VideoSampling.from_options(**written) or VideoSampling()).numbering()
        row = TCoTRow("r1", "query", Item(text="", video=(clip,)), render_tcot({"key_frames": [1, 2]}, "x.", "x"),
                      video_sampling=numbering)
        refuse_other_sampling(row, ImageLoader(tmp_path, video=VideoSampling.from_options(**read)), source="t.jsonl")

    check("clip.mp4", {"fps": 8.0}, {"frames": 8})
    check("seg.mp4", {"fps": 1.0, "max_frames": 1}, {"frames": 1})
    start = "t.jsonl, record r1/query, field 'video_sampling': the T-CoT's key frames are numbered among the frames of"
    for clip, written, read, message in (
            ("clip.mp4", {"fps": 2.0}, {}, f"{start} --video-fps 2 --video-max-frames 64, this command samples "
             "--video-frames 8: of video 'clip.mp4' they take frames [0, 2, 5, 7], this command frames "
             "[0, 1, 2, 3, 4, 5, 6, 7]: give it the --video-* options the T-CoT file was written with"),
            ("seg.mp4", {"fps": 1.0}, {"max_frames": 1}, f"{start} --video-fps 1 --video-max-frames 64, this command "
             "samples --video-frames 1: of video 'seg.mp4' they take frames [0, 3], this command frames [1, 1]: give "
             "it the --video-* options the T-CoT file was written with")):
        with pytest.raises(DataError) as e:
            check(clip, written, read)
        assert str(e.value) == message
    # a row read from a file is named by its line, record id and side (QA: by its line alone)
    from unime.data.io import with_origin

    row = with_origin(TCoTRow("r1", "query", Item(text="", video=("clip.mp4",)),
                              render_tcot({"key_frames": [1, 2]}, "x.", "x"),
                              video_sampling=VideoSampling.from_options(fps=2.0).numbering()), "line 3")
    with pytest.raises(DataError) as e:
        refuse_other_sampling(row, ImageLoader(tmp_path, video=VideoSampling()), source="t.jsonl")
    assert str(e.value).startswith("t.jsonl, record line 3 (id r1, side query), field 'video_sampling': the T-CoT's "
                                   "key frames are numbered among the frames of --video-fps 2")
    FRAME_CACHE.clear()


def test_prompts_are_modality_and_side_specific():
    img = Image.new("RGB", (32, 32))
    frames = [Image.new("RGB", (32, 32), (k, 0, 0)) for k in range(3)]
    instr = {(m, s): reasoning_instruction(m, s) for m in ("text", "image", "video") for s in ("query", "target")}
    assert len(set(instr.values())) == 6
    assert "text_keywords" in instr[("text", "query")] and "bbox_2d" in instr[("image", "target")]
    assert "key_frames" in instr[("video", "query")] and "first frame is 1" in instr[("video", "query")]
    segs = reasoning_prompt_segments("a clip", [], frames, "query")
    assert [s.kind for s in segs] == ["text", "image"] * 3 + ["text", "text"]
    assert [segs[i].value for i in (0, 2, 4)] == ["Frame 1:", "Frame 2:", "Frame 3:"]
    assert segs[-1].value.endswith(instr[("video", "query")])
    segs = reasoning_prompt_segments("<|image_1|>\nWhat colour?", [img], [], "target")
    assert [s.kind for s in segs] == ["image", "text", "text"] and segs[-1].value.endswith(instr[("image", "target")])


def test_prepare_emb_checkpoint(tiny_model_dir, tmp_path):
    from unime import Embedder
    from unime.embed_rl.tcot_embedder import AddEmbConfig, prepare_emb_checkpoint

    out = prepare_emb_checkpoint(AddEmbConfig(model=tiny_model_dir("qwen2_vl"), out=tmp_path / "e"))
    emb = Embedder.from_pretrained(out, device="cpu")
    assert emb.pooling == "emb"
    tok = emb.processor.tokenizer
    assert emb.model.get_input_embeddings().num_embeddings >= len(tok)
    assert EMB_TOKEN in tok.get_vocab()


class _Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, items, sides):
        self.calls.append(list(zip([it.text for it in items], sides)))
        return [T(it.text) for it in items]


def test_reasoning_encoder_sides_and_tcots(tiny_model_dir):
    from unime import Embedder
    from unime.reasoning.embed_inputs import ReasonedEmbedder

    remb = ReasonedEmbedder(Embedder.from_pretrained(tiny_model_dir("qwen2_vl", (EMB_TOKEN,)), device="cpu"))
    q, c = Item(text="which shape"), Item(text="circle")
    rec = _Recorder()
    enc = ReasoningEncoder(remb, rec, {q.key})
    vecs = enc.encode([q, c])
    assert rec.calls == [[("which shape", "query"), ("circle", "target")]]
    np.testing.assert_allclose(vecs, remb.encode([q, c], [T("which shape"), T("circle")]), atol=1e-6)
    assert enc.image_loader is remb.embedder.image_loader


def test_evaluate_with_reasoning_on_a_tiny_world(tiny_model_dir, tiny_world_dir, tmp_path):
    """The eval harness scores the MMEB tasks of a tiny world with oracle (teacher) T-CoTs and without."""
    from unime.embed_rl.tcot_embedder import ReasonEvalConfig, evaluate_with_reasoning

    root = tiny_world_dir(2)
    model = tiny_model_dir("qwen2_vl", (EMB_TOKEN,))
    only = ["shape_cls", "t2i"]
    res = {}
    for mode in ("none", "teacher"):
        cfg = ReasonEvalConfig(embedder_path=model, tasks=str(root / "eval_tasks.yaml"), out_dir=str(tmp_path / mode),
                               tcots=mode, world_root=str(root), only=",".join(only), device="cpu")
        s = evaluate_with_reasoning(cfg, show_progress=False)
        res[mode] = s
        assert set(s["tasks"]) == set(only)
        assert (tmp_path / mode / "results.md").is_file()
    rows = [json.loads(x) for x in (tmp_path / "teacher" / "tcots.jsonl").read_text().splitlines()]
    assert rows and all(r["tcot"].startswith("<thinking>") for r in rows)
    assert {r["side"] for r in rows} == {"query", "target"}
    none_rows = [json.loads(x) for x in (tmp_path / "none" / "tcots.jsonl").read_text().splitlines()]
    assert all(r["tcot"] is None for r in none_rows)


def test_reason_eval_evaluates_the_qrels_task_as_eval_loads_it(tiny_model_dir, tiny_world_dir, tmp_path):
    """`reason eval` refused qrels tasks (the world's `scene_search`, graded relevance) though their rows say which
    item is the query. It now reads them with `unime eval`'s loader (the same queries and candidates per task) and
    embeds each query with its T-CoT as a query, each candidate as a target."""
    from unime.cli import main

    root = tiny_world_dir(2)
    model = tiny_model_dir("qwen2_vl", (EMB_TOKEN,))
    tasks = str(root / "eval_tasks.yaml")
    rows = [json.loads(x) for x in (root / "eval" / "qrels" / "scene_search.jsonl").read_text().splitlines()]
    assert main(["eval", "--model", model, "--tasks", tasks, "--task", "scene_search", "--device", "cpu", "--no-cache",
                 "--out", str(tmp_path / "eval")]) == 0
    plain = json.loads((tmp_path / "eval" / "summary.json").read_text())
    out = tmp_path / "reason"
    assert main(["reason", "eval", "--embedder", model, "--tasks", tasks, "--only", "scene_search", "--tcots",
                 "teacher", "--world", str(root), "--device", "cpu", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["tasks"]) == {"scene_search"}
    assert summary["task_counts"] == plain["task_counts"]  # the same rows and candidates as `unime eval`'s
    written = [json.loads(x) for x in (out / "tcots.jsonl").read_text().splitlines()]
    queries = {r["query"]["text"][:200] for r in rows}
    assert {r["item"] for r in written if r["side"] == "query"} == queries
    candidates = {(c["text"], tuple(c.get("images", ()))) for r in rows for c in r["candidates"]}
    assert sum(r["side"] == "target" for r in written) == len(candidates)  # each distinct candidate once
    assert sum(r["side"] == "query" for r in written) == len(rows)
    assert all(r["tcot"].startswith("<thinking>") for r in written)


def test_reason_eval_refuses_a_candidate_that_is_also_a_query(tiny_model_dir, tmp_path, capsys):
    """A qrels row may list as a candidate the item another row asks with (a duplicate-question search): `reason
    eval` embeds each item once, and gave that candidate the query's T-CoT prompt. It is refused before the models
    load, one line naming the task, the file, the record and the field."""
    from unime.cli import main

    rows = [{"id": "a", "query": {"text": "red circle"}, "candidates": [{"text": "a red circle"}, {"text": "blue"}],
             "relevance": [1, 0]},
            {"id": "b", "query": {"text": "blue"}, "candidates": [{"text": "a blue square"}, {"text": "red circle"}],
             "relevance": [1, 0]}]
    (tmp_path / "dup.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "eval_tasks.yaml").write_text("tasks:\n  - {name: dup, format: qrels, path: dup.jsonl}\n")
    model = tiny_model_dir("qwen2_vl", (EMB_TOKEN,))
    assert main(["reason", "eval", "--embedder", model, "--tasks", str(tmp_path / "eval_tasks.yaml"), "--tcots",
                 "none", "--device", "cpu", "--out", str(tmp_path / "ev")]) != 0
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # (not the tiny model's build)
    assert err == [f"unime: error: {tmp_path / 'dup.jsonl'}, record line 1 (id a), field 'candidates[1]': task "
                   "'dup': a candidate is also a query ('blue'); `reason eval` embeds each item once, as a query or a "
                   "target, with that side's T-CoT"]
    assert not (tmp_path / "ev").exists()


def test_a_video_candidate_that_another_tasks_query_asks_with_is_named_by_its_video_and_that_task(tiny_model_dir,
                                                                                                  tmp_path, capsys):
    """QA (video): a text-to-video and a video-to-text qrels task of the same clips (the usual pair) were refused as
    "task 't2v': a candidate is also a query ('')": a video item named by its empty text, the other task unnamed.
    The refusal names the video, the task whose query it is, and the way out (one run per task, `--only`)."""
    from tests.data.helpers import write_clip
    from unime.cli import main

    (tmp_path / "clips").mkdir()
    for i in range(2):
        write_clip(tmp_path / "clips" / f"c{i}.mp4", n=8, fps=4, shift=100 * i)
    texts, clips = ["red", "blue"], [{"video": f"clips/c{i}.mp4"} for i in range(2)]
    t2v = [{"id": f"t{i}", "query": {"text": t}, "candidates": clips, "relevance": [int(i == j) for j in range(2)]}
           for i, t in enumerate(texts)]
    v2t = [{"id": f"v{i}", "query": c, "candidates": [{"text": t} for t in texts],
            "relevance": [int(i == j) for j in range(2)]} for i, c in enumerate(clips)]
    for name, rows in (("t2v", t2v), ("v2t", v2t)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "eval_tasks.yaml").write_text("tasks:\n  - {name: t2v, format: qrels, path: t2v.jsonl}\n"
                                              "  - {name: v2t, format: qrels, path: v2t.jsonl}\n")
    model = tiny_model_dir("qwen2_vl", (EMB_TOKEN,))
    argv = ["reason", "eval", "--embedder", model, "--tasks", str(tmp_path / "eval_tasks.yaml"), "--tcots", "none",
            "--device", "cpu", "--video-frames", "4"]
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "ev")]) != 0
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert err == [f"unime: error: {tmp_path / 't2v.jsonl'}, record line 1 (id t0), field 'candidates[0]': task "
                   "'t2v': a candidate is also a query of task 'v2t' (video 'clips/c0.mp4'); `reason eval` embeds each "
                   "item once, as a query or a target, with that side's T-CoT; evaluate the two tasks in separate "
                   "runs, each with its --out (--only t2v, --only v2t)"]
    assert not (tmp_path / "ev").exists()
    assert main([*argv, "--only", "t2v", "--out", str(tmp_path / "ev")]) == 0  # the way out it names
    # its figures on the console, as `unime eval` prints them: a qrels task has no MMEB aggregate, and the run
    # printed "{}" and nothing else
    m = json.loads((tmp_path / "ev" / "summary.json").read_text())["tasks"]["t2v"]
    assert set(m) == {"ndcg@5", "ndcg@10", "recall@5", "recall@10", "mrr", "map"}
    assert capsys.readouterr().out.splitlines() == [
        "t2v: " + ", ".join(f"{k} {100 * m[k]:.1f}" for k in ("ndcg@5", "ndcg@10", "recall@5", "recall@10", "mrr",
                                                               "map"))]


def test_reason_eval_on_error_skip_leaves_out_a_bad_image_row_and_a_task_without_rows(tiny_model_dir, tmp_path,
                                                                                    capsys):
    """`reason eval` had no `--on-error`: one bad task image (here 2000x8, over the Qwen-VL processors' 200:1 aspect
    limit) stopped the whole run. It takes `unime eval`'s option: raise (the default) stops with one line naming the
    file, the record and the field; skip leaves the row out (and a task left without rows), counted and named in
    summary.json and results.md as `unime eval` does."""
    from tests.eval.helpers import raise_then_skip

    for c, rgb in (("red", (220, 40, 40)), ("blue", (40, 80, 220))):
        Image.new("RGB", (224, 224), rgb).save(tmp_path / f"{c}.png")
    Image.new("RGB", (2000, 8), (0, 0, 0)).save(tmp_path / "wide.png")
    rows = [{"qry_text": f"a {c} square", "qry_img_path": "", "tgt_text": ["", ""],
             "tgt_img_path": [f"{c}.png", f"{o}.png"]} for c, o in (("red", "blue"), ("blue", "red"))]
    rows.append({"qry_text": "a wide strip", "qry_img_path": "wide.png", "tgt_text": ["", ""],
                 "tgt_img_path": ["red.png", "blue.png"]})
    (tmp_path / "pick.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "lost.jsonl").write_text(json.dumps(rows[-1]) + "\n")  # its one row is the bad one
    (tmp_path / "eval_tasks.yaml").write_text(
        "tasks:\n  - {name: pick, format: mmeb, path: pick.jsonl, meta_task: retrieval}\n"
        "  - {name: lost, format: mmeb, path: lost.jsonl, meta_task: retrieval}\n")
    argv = ["reason", "eval", "--embedder", tiny_model_dir("qwen2_vl", (EMB_TOKEN,)), "--tasks",
            str(tmp_path / "eval_tasks.yaml"), "--tcots", "none", "--device", "cpu"]
    err, summary = raise_then_skip(argv, tmp_path, capsys, kept={"pick": 2}, skipped_rows={"pick": 1, "lost": 1},
                                   lost=["lost"])
    assert err == [f"unime: error: {tmp_path / 'pick.jsonl'}, record line 3, field 'query.images[0]': image wide.png "
                   "is 2000x8: its long side is 250 times its short side, over the 200 the model's image processor "
                   "accepts"]
    meta, out = summary["meta"], tmp_path / "skip"
    printed = capsys.readouterr().out
    assert "skipped rows (`--on-error skip`): 2 (lost 1, pick 1); the metrics leave them out" in printed.splitlines()
    assert f"skipped tasks (`--on-error skip`): lost ({meta['skipped_task_reasons']['lost']})" in printed.splitlines()
    written = [json.loads(x) for x in (out / "tcots.jsonl").read_text().splitlines()]
    assert sum(r["side"] == "query" for r in written) == 2  # the bad row's query is not embedded


def test_reason_eval_counts_the_evidence_the_crop_rules_left_out(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """QA: `reason eval` dropped the evidence of its T-CoTs that could not be cropped without a word, where `reason
    materialize` and the SFT count it. It is now counted in summary.json's meta and said on the console. Hand
    count: 2 text queries and 2 image candidates (224 px), each embedded once, every T-CoT with a 4 px box and a
    134 px one: each candidate loses its 4 px box (2), each text query its boxes, one piece each (2). Total 4."""
    from unime.cli import main
    from unime.embed_rl import tcot_embedder
    from unime.reasoning import teacher

    for c, rgb in (("red", (220, 40, 40)), ("blue", (40, 80, 220))):
        Image.new("RGB", (224, 224), rgb).save(tmp_path / f"{c}.png")
    rows = [{"qry_text": f"a {c} square", "qry_img_path": "", "tgt_text": ["", ""],
             "tgt_img_path": [f"{c}.png", f"{o}.png"]} for c, o in (("red", "blue"), ("blue", "red"))]
    (tmp_path / "pick.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "eval_tasks.yaml").write_text("tasks:\n  - {name: pick, format: mmeb, path: pick.jsonl, "
                                              "meta_task: retrieval}\n")
    boxed = render_tcot({"bbox_2d": [[0, 0, 20, 20], [0, 0, 600, 600]]}, "a square", "square")
    monkeypatch.setattr(teacher, "AnnotationTeacher", lambda *a, **k: None)
    monkeypatch.setattr(tcot_embedder, "teacher_tcot_fn", lambda _: lambda items, sides: [boxed] * len(items))
    out = tmp_path / "ev"
    assert main(["reason", "eval", "--embedder", tiny_model_dir("qwen2_vl", (EMB_TOKEN,)), "--tasks",
                 str(tmp_path / "eval_tasks.yaml"), "--tcots", "teacher", "--world", str(tmp_path), "--device", "cpu",
                 "--out", str(out)]) == 0
    assert len((out / "tcots.jsonl").read_text().splitlines()) == 4  # each item embedded once
    left_out = json.loads((out / "summary.json").read_text())["meta"]["evidence_left_out"]
    assert left_out["total"] == 4 and len(left_out["examples"]) == 3
    assert "'a red square': 2 box(es) but no image" in left_out["examples"]
    printed = [line for line in capsys.readouterr().out.splitlines() if "evidence left out" in line]
    assert len(printed) == 1 and printed[0].startswith("4 piece(s) of evidence left out (")


def test_split_of_records_without_ids_keeps_the_key_of_their_tcots(tmp_path):
    """Records without an id are keyed by their line (0, 1, ...) in the T-CoT file; the split's files must keep that
    key. Before, contrastive.jsonl / rl.jsonl held id "" and `reason materialize` on them keyed each record by its
    line in the split file: rl.jsonl's first record (the original third, "q2") took the T-CoTs of the first ("q0")."""
    from unime.data.images import ImageLoader
    from unime.data.io import read_records, write_records

    recs = [Record(query=r.query, positive=r.positive, dataset=r.dataset) for r in _records()]
    rows = [TCoTRow(str(i), side, r.query if side == "query" else r.positive, T(f"{side}{i}"))
            for i, r in enumerate(recs) for side in ("query", "target")]
    split = split_by_tcot_match(recs, rows, _StubJudge([0.9, 0.5, 0.49, 0.1, 0.7]), threshold=0.5)
    write_records(split.rl, tmp_path / "rl.jsonl")
    rl = read_records(tmp_path / "rl.jsonl")
    assert [r.id for r in rl] == ["2", "3"]
    out = reasoned_records(rl, rows, ImageLoader(tmp_path))
    assert [r.query.text for r in out] == [f"q{i}" + T(f"query{i}") + "Summarize the above content in one word:"
                                           for i in (2, 3)]


def test_a_tcot_written_for_another_item_is_refused_naming_the_record_side_and_both_items(tmp_path):
    """The T-CoT file records each row's item: a row whose item is not the record's (a T-CoT file of other records,
    records reordered or filtered) is refused. Before, the T-CoT of "p2" was joined to record r1's positive "p1"
    without a word (its boxes would crop another image)."""
    from unime.data.images import ImageLoader

    recs = _records()
    rows = _rows(recs)
    rows[3] = TCoTRow("r1", "target", recs[2].positive, T("targetr1"))  # r1's target row, written for p2
    for run in (lambda: reasoned_records(recs, rows, ImageLoader(tmp_path)),
                lambda: split_by_tcot_match(recs, rows, _StubJudge([0.5] * 5))):
        with pytest.raises(DataError, match=r"record r1, field 'positive': the T-CoT r1/target was written for "
                                            r"another item \('p2'\) than the record's \('p1'\)"):
            run()


@pytest.mark.parametrize("scores,empty,bound", [([0.1, 0.3, 0.2, 0.05, 0.4], "contrastive.jsonl", "highest 0.4"),
                                                ([0.9, 0.6, 0.7, 0.95, 0.5], "rl.jsonl", "lowest 0.5")])
def test_split_warns_when_the_threshold_leaves_one_side_empty(scores, empty, bound, caplog):
    """QA: a zero-shot judge below 0.5 on every pair sent all 30 pairs to RL with only "0 contrastive (0.0%)"; the
    empty contrastive.jsonl then failed two commands later, in `train embedder`."""
    recs = _records()
    with caplog.at_level("WARNING", logger="unime.embed_rl.tcot_embedder"):
        split_by_tcot_match(recs, _rows(recs), _StubJudge(scores))
    (message,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert message.startswith(f"every pair's P(Yes) is on one side of the threshold 0.5 ({bound}): {empty} is "
                              "empty; --rl-fraction F sends the lowest-scoring share F of the pairs to RL instead")
    caplog.clear()
    with caplog.at_level("WARNING", logger="unime.embed_rl.tcot_embedder"):
        split_by_tcot_match(recs, _rows(recs), _StubJudge([0.9, 0.5, 0.49, 0.1, 0.7]))
        split_by_tcot_match(recs, _rows(recs), _StubJudge(scores), rl_fraction=0.2)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_a_reason_eval_stopped_while_writing_leaves_no_summary_of_it(tiny_model_dir, tiny_world_dir, tmp_path,
                                                                     monkeypatch):
    """QA: `reason eval` killed -9 as it wrote its outputs left summary.json (and results.md) without tcots.jsonl —
    under --overwrite beside the former run's tcots.jsonl. summary.json, the finished run's summary, is now written
    after the T-CoTs, and a run that writes again first removes the former one: a stop while writing the T-CoTs
    leaves no summary.json."""
    from unime.data import atomic
    from unime.embed_rl.tcot_embedder import ReasonEvalConfig, evaluate_with_reasoning

    root, out = tiny_world_dir(2), tmp_path / "ev"
    model = tiny_model_dir("qwen2_vl", (EMB_TOKEN,))

    def cfg(only):
        return ReasonEvalConfig(embedder_path=model, tasks=str(root / "eval_tasks.yaml"), out_dir=str(out),
                                tcots="teacher", world_root=str(root), only=only, device="cpu")

    evaluate_with_reasoning(cfg("shape_cls"), show_progress=False)
    assert (out / "summary.json").is_file() and (out / "tcots.jsonl").is_file()
    real = atomic.atomic_open

    def stopped(path, *a, **k):
        if str(path).endswith("tcots.jsonl"):
            raise KeyboardInterrupt  # stands for the kill
        return real(path, *a, **k)

    monkeypatch.setattr(atomic, "atomic_open", stopped)
    with pytest.raises(KeyboardInterrupt):
        evaluate_with_reasoning(cfg("t2i"), show_progress=False, overwrite=True)
    assert not (out / "summary.json").exists()
    monkeypatch.setattr(atomic, "atomic_open", real)
    s = evaluate_with_reasoning(cfg("t2i"), show_progress=False, overwrite=True)
    assert set(json.loads((out / "summary.json").read_text())["tasks"]) == set(s["tasks"]) == {"t2i"}
