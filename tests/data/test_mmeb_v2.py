"""MMEB-V2: the shipped 78-task config, VLM2Vec's V2 row formats (video rows; visual-document rows with qrels),
and a fixture of video and visdoc tasks scored with Hit@1 / NDCG@5 equal to an independent computation
from the same embeddings (a tiny real embedder, clips written with PyAV)."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest

from tests.data.helpers import IMG, QRY_V, TGT_D, TGT_V, VID, build_fixture, write_jsonl_rows
from unime.data.items import Item
from unime.data.mmeb_v2 import v2_row_from_dict
from unime.errors import DataError
from unime.eval.tasks import load_task_config, load_task_data


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
    ({"dataset_infos": {"cand_names": ["a", "b"], "label_name": "a", "rel_scores": [1, 2, 3]}},
     "dataset_infos.rel_scores"),
    ({"dataset_infos": {"cand_names": ["a", "b"], "label_name": ["b", "a"], "rel_scores": [1, 2]}},
     "dataset_infos.rel_scores"),
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
    write_jsonl_rows(bad, rows)
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
    write_jsonl_rows(qa, rows)
    spec = next(t for t in load_task_config(cfg).tasks if t.name == "vid_qa")
    assert list(load_task_data(spec).grades[0]) == [1.0, 1.0, 0.0]
