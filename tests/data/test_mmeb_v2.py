"""MMEB-V2: the shipped 78-task config, VLM2Vec's V2 row formats (video rows; visual-document rows with qrels),
and a fixture of video and visdoc tasks scored with Hit@1 / NDCG@5 equal to an independent computation
from the same embeddings (a tiny real embedder, clips written with PyAV)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.data.helpers import write_clip
from unime.data.items import Item
from unime.data.mmeb_v2 import v2_row_from_dict
from unime.errors import DataError
from unime.eval.tasks import load_task_config, load_task_data

VID = "<|vision_start|><|video_pad|><|vision_end|>"
IMG = "<|vision_start|><|image_pad|><|vision_end|>"
QRY_V = "Find a video that contains the following visual content:"
TGT_V = "Understand the content of the provided video."
QRY_D = "Find a document image that matches the given query:"
TGT_D = "Understand the content of the provided document image."


def test_shipped_config_lists_the_78_datasets_in_the_leaderboard_groups(monkeypatch, tmp_path):
    monkeypatch.setenv("MMEB_V2_ROOT", str(tmp_path))
    suite = load_task_config("mmeb_v2")
    assert len(suite.tasks) == 78 and len({t.name for t in suite.tasks}) == 78
    groups = Counter((t.modality, t.meta_task) for t in suite.tasks)
    assert groups == {("image", "classification"): 10, ("image", "vqa"): 10, ("image", "retrieval"): 12,
                      ("image", "grounding"): 4, ("video", "classification"): 5, ("video", "vqa"): 5,
                      ("video", "retrieval"): 5, ("video", "moment_retrieval"): 3, ("visdoc", "vidore_v1"): 10,
                      ("visdoc", "vidore_v2"): 4, ("visdoc", "visrag"): 6, ("visdoc", "visdoc_ood"): 4}
    by_name = {t.name: t for t in suite.tasks}
    assert by_name["MSR-VTT"].option("eval_type") == "global" and by_name["Video-MME"].option("eval_type") == "local"
    assert by_name["ViDoRe_esg_reports_human_labeled_v2"].option("metric") == "ndcg@5"
    assert by_name["ImageNet-1K"].format == "mmeb" and by_name["QVHighlight"].meta_task == "moment_retrieval"
    v1 = {t.name for t in load_task_config("mmeb_v1", root=tmp_path).tasks}
    assert {t.name for t in suite.tasks if t.modality == "image"} == v1


def test_v2_rows_map_vision_tokens_and_visuals():
    row = v2_row_from_dict({
        "query_text": [f"{QRY_V} a red square"], "query_image": [None],
        "cand_text": [f"{VID} {TGT_V}", f"{IMG} {TGT_D}", f"{VID} {TGT_V}"],
        "cand_image": [{"paths": ["f/0.png", "f/1.png"], "bytes": [None, None], "resolutions": [None, None]},
                       {"paths": ["page.png"]}, {"paths": ["clips/a.mp4"]}],
        "dataset_infos": {"cand_names": ["v0", "p0", "v1"], "label_name": "v0"}})
    assert row.query == Item(text=f"{QRY_V} a red square")
    assert [c.item for c in row.candidates] == [Item(text=TGT_V, video=("f/0.png", "f/1.png")),
                                                Item(text=f"<|image_1|> {TGT_D}", images=("page.png",)),
                                                Item(text=TGT_V, video=("clips/a.mp4",))]
    assert row.labels == ["v0"] and row.rel_scores == {}


@pytest.mark.parametrize("patch, field", [
    ({"cand_image": [None]}, "cand_image"),
    ({"dataset_infos": {"cand_names": ["a", "b"], "label_name": "a", "rel_scores": [1]}}, "dataset_infos.rel_scores"),
    ({"dataset_infos": {"cand_names": ["a", "b"], "label_name": "a", "rel_scores": [1, -2]}},
     "dataset_infos.rel_scores[1]"),
    ({"dataset_infos": {"cand_names": ["a"], "label_name": "a"}}, "dataset_infos.cand_names"),
    ({"query_image": [{"paths": [""]}]}, "query.paths[0]"),
    ({"query_text": [f"{IMG} what?"]}, "query.text"),
])
def test_bad_v2_rows_name_the_field(patch, field):
    row = {"query_text": ["q"], "query_image": [None], "cand_text": ["a", "b"], "cand_image": [None, None],
           "dataset_infos": {"cand_names": ["a", "b"], "label_name": "a"}, **patch}
    with pytest.raises(DataError) as e:
        v2_row_from_dict(row, source="rows.jsonl", record=3)
    assert e.value.field == field and e.value.record == 3 and e.value.source == "rows.jsonl"


# -- the fixture ------------------------------------------------------------------------------------------

def _jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _page(root: Path, name: str, colour) -> str:
    p = root / "pages" / f"{name}.png"
    p.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (56, 72), (250, 250, 250))
    img.paste(Image.new("RGB", (30, 20), colour), (10, 10 + 5 * len(name)))
    img.save(p)
    return f"pages/{name}.png"


def build_fixture(root: Path) -> tuple[Path, dict]:
    """Several video and visdoc tasks in V2 rows, one image task in V1 rows. Returns the config path and,
    per task, the expected items by hand: [(query, [candidates], [grades])]."""
    clips = {}
    (root / "clips").mkdir()
    for i, (n, fps, shift) in enumerate([(20, 10, 0), (16, 8, 60), (24, 12, 120), (12, 6, 180)]):
        clips[i] = f"clips/c{i}.mp4"
        write_clip(root / clips[i], n=n, fps=fps, shift=shift)
    frames = []
    for j in range(4):
        Image.new("RGB", (40, 32), (30 * j, 90, 0)).save(root / f"f{j}.png")
        frames.append(f"f{j}.png")
    expect: dict[str, list] = {}

    # video retrieval, global: each caption finds its clip in the pool of all rows' clips
    caps = ["a dark square", "a dim square", "a red square", "a bright red square"]
    _jsonl(root / "video/ret/rows.jsonl", [
        {"query_text": [f"{QRY_V} {caps[i]}"], "query_image": [None], "cand_text": [f"{VID} {TGT_V}"],
         "cand_image": [{"paths": [clips[i]]}], "dataset_infos": {"cand_names": [f"c{i}"], "label_name": f"c{i}"}}
        for i in range(4)])
    pool = [Item(text=TGT_V, video=(clips[i],)) for i in range(4)]
    expect["vid_ret"] = [(Item(text=f"{QRY_V} {caps[i]}"), pool, [float(j == i) for j in range(4)]) for i in range(4)]

    # video QA, local: a clip (file or frame list) and its own answer options
    qa = [(clips[0], ["red", "blue", "green"], "red"), (frames, ["moving", "still"], "still"),
          (clips[2], ["one", "two", "three", "four"], "three")]
    rows = []
    expect["vid_qa"] = []
    for k, (vis, opts, ans) in enumerate(qa):
        paths = vis if isinstance(vis, list) else [vis]
        rows.append({"query_text": [f"{VID} Given the video, answer: what is it? "], "query_image": [{"paths": paths}],
                     "cand_text": opts, "cand_image": [None] * len(opts),
                     "dataset_infos": {"cand_names": opts, "label_name": ans}})
        expect["vid_qa"].append((Item(text="Given the video, answer: what is it?", video=tuple(paths)),
                                 [Item(text=o) for o in opts], [float(o == ans) for o in opts]))
    _jsonl(root / "video/qa/rows.jsonl", rows)

    # moment retrieval, local: the query clip's moments are frame lists
    moments = [[frames[0], frames[1]], [frames[2], frames[3]], [frames[1], frames[2]]]
    _jsonl(root / "video/mret/rows.jsonl", [
        {"query_text": [f"{VID} Find the moment: the square turns green"], "query_image": [{"paths": [clips[1]]}],
         "cand_text": [f"{VID} {TGT_V}"] * 3, "cand_image": [{"paths": m} for m in moments],
         "dataset_infos": {"cand_names": ["m0", "m1", "m2"], "label_name": "m1"}}])
    expect["vid_mret"] = [(Item(text="Find the moment: the square turns green", video=(clips[1],)),
                           [Item(text=TGT_V, video=tuple(m)) for m in moments], [0.0, 1.0, 0.0])]

    # visual documents, global with a corpus and graded qrels (rel_scores), NDCG@5
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (0, 200, 200), (200, 0, 200), (90, 90, 90)]
    pages = {f"d{k}": _page(root, f"d{k}", c) for k, c in enumerate(colours)}
    _jsonl(root / "visdoc/docs/corpus/corpus.jsonl", [
        {"cand_text": [f"{IMG} {TGT_D}"], "cand_image": [{"paths": [p]}], "dataset_infos": {"cand_names": [n]}}
        for n, p in pages.items()])
    judged = [("the red chart", {"d0": 2, "d5": 1}), ("green table", {"d1": 1}),
              ("blue and cyan pages", {"d2": 2, "d4": 2, "d6": 1}), ("yellow", {"d3": 1})]
    _jsonl(root / "visdoc/docs/queries/q.jsonl", [
        {"query_text": [f"{QRY_D} {q}"], "query_image": [None],
         "cand_text": [f"{IMG} {TGT_D}"] * len(rel), "cand_image": [{"paths": [pages[n]]} for n in rel],
         "dataset_infos": {"cand_names": list(rel), "label_name": list(rel), "rel_scores": list(rel.values())}}
        for q, rel in judged])
    corpus = [Item(text=f"<|image_1|> {TGT_D}", images=(p,)) for p in pages.values()]
    expect["docs"] = [(Item(text=f"{QRY_D} {q}"), corpus, [float(rel.get(n, 0)) for n in pages]) for q, rel in judged]

    # a second visdoc task without a corpus file: the pool is the rows' candidates
    _jsonl(root / "visdoc/small/q.jsonl", [
        {"query_text": [f"{QRY_D} red"], "query_image": [None], "cand_text": [f"{IMG} {TGT_D}"] * 2,
         "cand_image": [{"paths": [pages["d0"]]}, {"paths": [pages["d1"]]}],
         "dataset_infos": {"cand_names": ["d0", "d1"], "label_name": ["d0", "d1"], "rel_scores": [3, 1]}},
        {"query_text": [f"{QRY_D} violet"], "query_image": [None], "cand_text": [f"{IMG} {TGT_D}"],
         "cand_image": [{"paths": [pages["d5"]]}],
         "dataset_infos": {"cand_names": ["d5"], "label_name": ["d5"], "rel_scores": [1]}}])
    small = [Item(text=f"<|image_1|> {TGT_D}", images=(pages[n],)) for n in ("d0", "d1", "d5")]
    expect["docs_small"] = [(Item(text=f"{QRY_D} red"), small, [3.0, 1.0, 0.0]),
                            (Item(text=f"{QRY_D} violet"), small, [0.0, 0.0, 1.0])]

    # an image task in MMEB-V1 rows
    labels = [["red", "green", "blue"][k:] + ["red", "green", "blue"][:k] for k in range(3)]  # positive first
    _jsonl(root / "image/cls/rows.jsonl", [
        {"qry_text": "<|image_1|>\nRepresent the given image for classification", "qry_img_path": pages[f"d{k}"],
         "tgt_text": labels[k], "tgt_img_path": ["", "", ""]} for k in range(3)])
    expect["img_cls"] = []
    for k in range(3):
        expect["img_cls"].append((Item(text="<|image_1|>\nRepresent the given image for classification",
                                       images=(pages[f"d{k}"],)), [Item(text=t) for t in labels[k]], [1.0, 0.0, 0.0]))

    cfg = {"data_root": ".", "tasks": [
        {"name": "vid_ret", "format": "mmeb_v2", "path": "video/ret", "modality": "video", "meta_task": "retrieval",
         "eval_type": "global"},
        {"name": "vid_qa", "format": "mmeb_v2", "path": "video/qa", "modality": "video", "meta_task": "vqa"},
        {"name": "vid_mret", "format": "mmeb_v2", "path": "video/mret", "modality": "video", "meta_task": "mret"},
        {"name": "docs", "format": "mmeb_v2", "path": "visdoc/docs/queries", "corpus": "visdoc/docs/corpus",
         "modality": "visdoc", "meta_task": "vidore_v1", "eval_type": "global"},
        {"name": "docs_small", "format": "mmeb_v2", "path": "visdoc/small", "modality": "visdoc",
         "meta_task": "visrag", "eval_type": "global"},
        {"name": "img_cls", "format": "mmeb", "path": "image/cls", "modality": "image", "meta_task": "classification"},
    ]}
    path = root / "eval_tasks.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path, expect


def test_v2_readers_give_the_hand_built_items(tmp_path):
    cfg, expect = build_fixture(tmp_path)
    for spec in load_task_config(cfg).tasks:
        data = load_task_data(spec)
        items = data.table.items
        grades = getattr(data, "grades", None) or [None] * len(data.query)  # V1 rows: positive first
        got = [(items[q], [items[c] for c in cands], g) for q, cands, g in zip(data.query, data.candidates, grades)]
        for (gq, gc, gg), (eq, ec, eg) in zip(got, expect[spec.name], strict=True):
            assert gq == eq and gc == ec, spec.name
            assert gg is None or list(gg) == eg, spec.name


def test_label_outside_the_pool_is_a_named_error(tmp_path):
    cfg, _ = build_fixture(tmp_path)
    bad = tmp_path / "video/ret/rows.jsonl"
    rows = [json.loads(x) for x in bad.read_text().splitlines()]
    rows[2]["dataset_infos"]["label_name"] = "nowhere"
    _jsonl(bad, rows)
    spec = next(t for t in load_task_config(cfg).tasks if t.name == "vid_ret")
    with pytest.raises(DataError, match="label 'nowhere'") as e:
        load_task_data(spec)
    assert e.value.field == "dataset_infos.label_name" and e.value.record == "line 3"
    from unime.data.skips import SkipReport

    skips = SkipReport()
    data = load_task_data(spec, on_error="skip", skips=skips)
    assert len(data.query) == 3 and data.skipped == 1


def _hit1(scores, grades) -> float:
    return float(grades[int(np.argmax(scores))] > 0)


def _ndcg5(scores, grades) -> float:
    order = np.argsort(-np.asarray(scores), kind="stable")[:5]
    dcg = sum(grades[j] / math.log2(r + 2) for r, j in enumerate(order))
    ideal = sorted(grades, reverse=True)[:5]
    idcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
    return dcg / idcg


@pytest.mark.slow
def test_fixture_scores_equal_an_independent_computation(tmp_path, tiny_model_dir):
    from unime.eval.runners import EvalConfig, evaluate_checkpoint
    from unime.models.embedder import Embedder

    root = tmp_path / "bench"
    root.mkdir()
    cfg, expect = build_fixture(root)
    model = tiny_model_dir("qwen2_5_vl")
    summary = evaluate_checkpoint(EvalConfig(model=model, tasks=str(cfg), out=str(tmp_path / "out"), device="cpu",
                                             dtype="float32", cache_dir=str(tmp_path / "cache"), batch_size=4),
                                  show_progress=False)
    emb = Embedder.from_pretrained(model, device="cpu", dtype="float32", data_root=root)
    want: dict[str, float] = {}
    for name, rows in expect.items():
        metric = {"docs": _ndcg5, "docs_small": _ndcg5}.get(name, _hit1)
        per_query = []
        for q, cands, grades in rows:
            vecs = emb.encode([q, *cands], batch_size=1)
            scores = vecs[1:] @ vecs[0]
            assert len(set(np.round(scores, 6))) == len(scores)  # no near-ties: ranks are well defined
            per_query.append(metric(scores, grades))
        want[name] = float(np.mean(per_query))
    got = {n: summary["tasks"][n]["precision@1" if n == "img_cls" else ("ndcg@5" if n.startswith("docs") else "hit@1")]
           for n in want}
    assert got == pytest.approx(want, abs=1e-9)
    assert list(summary["tasks"]["docs"])[0] == "ndcg@5" and list(summary["tasks"]["vid_ret"])[0] == "hit@1"
    agg = summary["aggregates"]["mmeb_v2"]
    assert agg["overall"] == {"score": pytest.approx(np.mean(list(want.values()))), "datasets": 6}
    video = agg["modalities"]["video"]
    assert video["score"] == pytest.approx(np.mean([want["vid_ret"], want["vid_qa"], want["vid_mret"]]))
    assert list(video["meta_tasks"]) == ["vqa", "retrieval", "moment_retrieval"]  # the leaderboard's order
    assert agg["modalities"]["visdoc"]["meta_tasks"]["vidore_v1"]["score"] == pytest.approx(want["docs"])
    assert agg["modalities"]["image"]["score"] == pytest.approx(want["img_cls"])
    md = (tmp_path / "out" / "results.md").read_text()
    assert "## MMEB-V2" in md and "Video MRET (1)" in md and "VisDoc ViDoRe-V1 (1)" in md
    # encode once: a second run takes every vector from the cache
    again = evaluate_checkpoint(EvalConfig(model=model, tasks=str(cfg), out=str(tmp_path / "out2"), device="cpu",
                                           dtype="float32", cache_dir=str(tmp_path / "cache"), batch_size=4),
                                show_progress=False)
    assert again["encoding"]["encoded"] == 0 and again["tasks"] == summary["tasks"]


def test_a_label_listed_twice_among_a_rows_candidates_is_relevant_at_both_places(tmp_path):
    """QA: a local row whose candidate names repeat its label ("up", "up", "down") marked only the last copy
    relevant, so the first copy ranked first scored Hit@1 0 under either ties policy."""
    cfg, _ = build_fixture(tmp_path)
    qa = tmp_path / "video/qa/rows.jsonl"
    rows = [json.loads(x) for x in qa.read_text().splitlines()]
    rows[0]["cand_text"] = ["red", "red", "blue"]
    rows[0]["cand_image"] = [None] * 3
    rows[0]["dataset_infos"] = {"cand_names": ["red", "red", "blue"], "label_name": "red"}
    _jsonl(qa, rows)
    spec = next(t for t in load_task_config(cfg).tasks if t.name == "vid_qa")
    assert list(load_task_data(spec).grades[0]) == [1.0, 1.0, 0.0]
