"""Evaluation harness with a deterministic fake embedder: MMEB protocol, retrieval, compositional, qrels,
encode-once, the on-disk cache, the rerank seam, the report and the comparison.

The fake embedder maps an image to its mean RGB colour and a text to the sum of the RGB colours of the
colour words it contains, so every expected score below can be worked out by hand.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from tests.eval.helpers import (FakeEmbedder, Q, build_world, half_and_gone_tasks, run_suite, write_beir, write_jsonl,
                                write_png)
from unime.data.items import Item
from unime.errors import DataError, ModelError
from unime.eval import report
from unime.eval.runners import (EvalOptions, Reranking, load_reranker, load_suite_data, run_tasks,
                                scores_after_rerank)
from unime.eval.tasks import load_task_config, load_task_data, resolve_task_config
from unime.models.embedding_cache import EmbeddingStore, RunEncoder, model_fingerprint
from unime.models.reranker import RerankStats, rerank


# -- config --------------------------------------------------------------------------------------------------

def test_task_config_folder_resolution_and_validation(tmp_path):
    cfg = build_world(tmp_path)
    assert resolve_task_config(tmp_path) == cfg
    suite = load_task_config(tmp_path)
    assert [t.name for t in suite.tasks][:2] == ["colour_cls", "colour_ret"]
    assert suite.tasks[0].path == (tmp_path / "eval/mmeb/colour_cls.jsonl").resolve()
    assert suite.tasks[0].data_root == tmp_path.resolve()
    assert load_task_config(tmp_path, only=["colours_docs"]).tasks[0].format == "qrels"
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks:\n  - {name: a, format: mmeb, path: x.jsonl, meta_tsk: vqa}\n")
    with pytest.raises(DataError, match=r"bad.yaml.*record a.*meta_tsk"):
        load_task_config(bad)
    bad.write_text("tasks:\n  - {name: a, format: mmeb, path: x.jsonl, split: IID}\n")
    with pytest.raises(DataError, match="split"):
        load_task_config(bad)
    bad.write_text("tasks:\n  - {name: a, format: nope, path: x.jsonl}\n")
    with pytest.raises(DataError, match="format"):
        load_task_config(bad)


def test_shipped_mmeb_v1_config_has_36_datasets_with_paper_labels(tmp_path):
    suite = load_task_config("mmeb_v1", root=tmp_path)
    tasks = {t.name: t for t in suite.tasks}
    assert len(tasks) == 36
    count = lambda **kw: sum(all(getattr(t, k) == v for k, v in kw.items()) for t in suite.tasks)  # noqa: E731
    assert (count(meta_task="classification"), count(meta_task="vqa"), count(meta_task="retrieval"),
            count(meta_task="grounding")) == (10, 10, 12, 4)
    assert (count(split="IND"), count(split="OOD")) == (20, 16)
    # a few labels from the paper
    assert (tasks["ImageNet-1K"].split, tasks["Place365"].split, tasks["MSCOCO"].meta_task,
            tasks["MSCOCO"].split, tasks["ScienceQA"].split, tasks["WebQA"].split) == \
        ("IND", "OOD", "grounding", "IND", "OOD", "IND")
    assert tasks["OVEN"].path == tmp_path.resolve() / "OVEN"
    assert tasks["OVEN"].data_root == tmp_path.resolve() / "eval_images"


def test_mmeb_reader_reads_parquet_folders_and_names_bad_fields(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_png(tmp_path, "eval_images/DS/red.png", "red")
    (tmp_path / "DS").mkdir()
    pq.write_table(pa.Table.from_pylist([{"qry_text": Q, "qry_img_path": "DS/red.png", "tgt_text": ["red", "blue"],
                                          "tgt_img_path": ["", ""]}]), tmp_path / "DS" / "test-00000-of-00001.parquet")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data_root: eval_images\ntasks:\n"
                   "  - {name: DS, format: mmeb, path: DS, meta_task: cls, split: IND}\n")
    suite = load_task_config(cfg)
    assert suite.tasks[0].meta_task == "classification"
    data = load_task_data(suite.tasks[0])
    assert data.table.items[data.query[0]] == Item(text=Q, images=("DS/red.png",))
    assert [data.table.items[c].text for c in data.candidates[0]] == ["red", "blue"]
    results, out, _ = run_suite(cfg)
    assert results["DS"].metrics["precision@1"] == 1.0

    write_jsonl(tmp_path / "bad.jsonl", [{"qry_text": "q", "qry_img_path": "", "tgt_text": ["a", "b"],
                                          "tgt_img_path": [""]},
                                    {"id": "r2", "qry_text": "q", "qry_img_path": "", "tgt_text": ["a"],
                                     "tgt_img_path": [""]}])
    cfg.write_text("tasks:\n  - {name: bad, format: mmeb, path: bad.jsonl}\n")
    with pytest.raises(DataError, match=r"bad.jsonl.*record line 1.*tgt_img_path"):
        load_task_data(load_task_config(cfg).tasks[0])
    # under the skip policy the bad row is left out and counted
    from unime.data.skips import SkipReport

    skips = SkipReport()
    data = load_task_data(load_task_config(cfg).tasks[0], on_error="skip", skips=skips)
    assert data.ids == ["r2"] and data.skipped == 1 and skips.total == 1


# -- the runners -----------------------------------------------------------------------------------------------

def test_mmeb_precision_at_1_and_aggregates(tmp_path):
    world = build_world(tmp_path)
    results, out, _ = run_suite(world)
    cls = results["colour_cls"]
    assert cls.metrics["precision@1"] == pytest.approx(2 / 4)
    assert [q["hit"] for q in cls.per_query] == [True, True, False, False]
    assert cls.per_query[2]["top1"] == 1  # 'red' chosen over the (wrong) positive 'orange'
    assert results["colour_ret"].metrics["precision@1"] == pytest.approx(1 / 2)
    # VLM2Vec's argmax: the tie in row c3 goes to the positive
    results_idx, _, _ = run_suite(world, ties="index")
    assert results_idx["colour_cls"].metrics["precision@1"] == pytest.approx(3 / 4)
    summary = report.build_summary(out, meta={})
    aggs = summary["aggregates"]["mmeb"]
    assert aggs["scores"] == {"classification": 0.5, "retrieval": 0.5, "IND": 0.5, "OOD": 0.5, "overall": 0.5}
    assert aggs["datasets"] == {"classification": 1, "retrieval": 1, "IND": 1, "OOD": 1, "overall": 2}


def test_mmeb_aggregates_are_means_over_datasets():
    tasks = {"a": {"precision@1": 0.2}, "b": {"precision@1": 0.4}, "c": {"precision@1": 0.9},
             "r": {"text_to_image/recall@1": 1.0}}
    info = {"a": {"format": "mmeb", "meta_task": "classification", "split": "IND"},
            "b": {"format": "mmeb", "meta_task": "classification", "split": "OOD"},
            "c": {"format": "mmeb", "meta_task": "vqa", "split": "IND"},
            "r": {"format": "retrieval", "meta_task": None, "split": None}}
    aggs = report.mmeb_aggregates(tasks, info)["scores"]
    assert aggs["classification"] == pytest.approx(0.3)
    assert aggs["vqa"] == pytest.approx(0.9)
    assert aggs["IND"] == pytest.approx((0.2 + 0.9) / 2)
    assert aggs["OOD"] == pytest.approx(0.4)
    assert aggs["overall"] == pytest.approx((0.2 + 0.4 + 0.9) / 3)  # over datasets, not over meta-tasks


def test_retrieval_both_directions(tmp_path):
    results, _, _ = run_suite(build_world(tmp_path))
    m = results["colours_retrieval"].metrics
    # text→image, 6 captions. 'yellow' (0.707, 0.707, 0) is closest to the yellow image (1.0), then ties at
    # 0.707 between red (irrelevant) and green (its image) → pessimistic rank 3. All others rank 1
    # ('orange' → yellow image at 0.948 > red 0.894).
    assert m["text_to_image/recall@1"] == pytest.approx(5 / 6)
    assert m["text_to_image/recall@5"] == 1.0 and m["text_to_image/recall@10"] == 1.0
    # image→text, 4 images. The yellow image's best caption is 'yellow' (1.0, the green image's caption),
    # its own 'orange' (0.948) is second → miss at 1. The other images have an exact own caption.
    assert m["image_to_text/recall@1"] == pytest.approx(3 / 4)
    assert m["image_to_text/recall@5"] == 1.0
    assert results["colours_retrieval"].counts == {"images": 4, "captions": 6, "distinct_items": 10}


def test_compositional_accuracy_per_category(tmp_path):
    results, _, _ = run_suite(build_world(tmp_path))
    m = results["colours_sugarcrepe"].metrics
    assert m == {"accuracy": 0.5, "accuracy/add": 0.0, "accuracy/replace": 1.0, "accuracy/swap": 0.0}
    results_idx, _, _ = run_suite(build_world(tmp_path), ties="index")
    assert results_idx["colours_sugarcrepe"].metrics["accuracy/add"] == 1.0  # the exact tie goes to the positive


def test_qrels_ndcg_mrr_map(tmp_path):
    results, _, _ = run_suite(build_world(tmp_path))
    r = results["colours_docs"]
    # q0 'red': red 1.0 (grade 2), yellow 0.707 (1), blue 0 (0) → ideal order: NDCG 1, MRR 1, AP 1
    # q1 'yellow': yellow 1.0 (grade 1); red and green tie at 0.707 → red (grade 0) first → grades [1, 0, 2]
    #   DCG = 1 + 0 + 2/log2(4) = 2;  IDCG = 2 + 1/log2(3);  AP = (1/1 + 2/3) / 2;  MRR = 1
    # q2 has no relevant candidate: left out and counted
    ndcg_q1 = 2 / (2 + 1 / math.log2(3))
    assert r.metrics["ndcg@5"] == pytest.approx((1 + ndcg_q1) / 2)
    assert r.metrics["ndcg@10"] == pytest.approx((1 + ndcg_q1) / 2)
    assert r.metrics["mrr"] == 1.0
    assert r.metrics["map"] == pytest.approx((1 + (1 + 2 / 3) / 2) / 2)
    assert r.metrics["recall@5"] == 1.0
    assert r.counts["queries"] == 2 and r.counts["queries_without_relevant"] == 1


def test_beir_folder(tmp_path):
    d = tmp_path / "beir"
    write_png(d, "imgs/red.png", "red")  # a BEIR folder's image paths are relative to it
    write_png(d, "imgs/blue.png", "blue")
    write_beir(d, [{"_id": "d1", "image": "imgs/red.png"}, {"_id": "d2", "image": "imgs/blue.png"},
                   {"_id": "d3", "title": "green", "text": "grass"}],
               [{"_id": "q1", "text": "blue"}, {"_id": "q2", "text": "red"},
                {"_id": "q3", "text": "unjudged"}],
               "q1\td2\t1\nq2\td3\t1\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tasks:\n  - {name: b, format: qrels, path: beir, ks: [1]}\n")
    results, out, _ = run_suite(cfg)
    m = results["b"].metrics
    # q1 'blue' → blue image first (hit). q2 'red' → red image 1.0; 'green\ngrass' (0) ties with the blue
    # image (0) and the tie goes against the relevant one → rank 3 of 3
    assert m["ndcg@1"] == pytest.approx(0.5)
    assert m["mrr"] == pytest.approx((1 + 1 / 3) / 2)
    assert results["b"].counts["queries"] == 2
    assert out.encoding["items_seen"] == 2 + 3  # the shared corpus counts once


def test_a_beir_folders_images_are_relative_to_it_unless_a_data_root_is_given(tmp_path):
    """QA: `unime data check beir` resolved a BEIR folder's images against the folder, `unime eval` against the task
    config's folder ("image file not found: 'imgs/img000.png'"). Now both against the folder (or the root recorded
    for its corpus); an explicit data_root, the task's or the config's, still wins; a qrels JSONL file keeps the
    config's folder, and a missing image names the folder it was looked for in."""
    d = tmp_path / "beir"
    write_png(d, "imgs/red.png", "red")
    write_png(tmp_path / "elsewhere", "imgs/red.png", "red")
    write_beir(d, [{"_id": "d1", "image": "imgs/red.png"}, {"_id": "d2", "text": "blue"}],
               [{"_id": "q1", "text": "red"}],
               "q1\td1\t1\n")
    write_jsonl(tmp_path / "docs.jsonl", [{"query": {"text": "red"}, "candidates": [{"text": "blue"}],
                                           "relevance": [1]}])
    cfg = tmp_path / "tasks.yaml"
    cfg.write_text("tasks:\n  - {name: mybeir, format: qrels, path: beir}\n"
                   "  - {name: other, format: qrels, path: beir, data_root: elsewhere}\n"
                   "  - {name: docs, format: qrels, path: docs.jsonl}\n")
    roots = {t.name: t.data_root for t in load_task_config(cfg).tasks}
    assert roots == {"mybeir": d.resolve(), "other": (tmp_path / "elsewhere").resolve(), "docs": tmp_path.resolve()}
    assert load_task_data(load_task_config(cfg, only=["mybeir"]).tasks[0]).ids == ["q1"]
    cfg.write_text("data_root: elsewhere\ntasks:\n  - {name: mybeir, format: qrels, path: beir}\n")
    assert load_task_config(cfg).tasks[0].data_root == (tmp_path / "elsewhere").resolve()
    cfg.write_text("data_root: .\ntasks:\n  - {name: mybeir, format: qrels, path: beir}\n")
    with pytest.raises(DataError, match=rf"image file not found: 'imgs/red.png' \(looked in '{tmp_path.resolve()}'\)"):
        load_task_data(load_task_config(cfg).tasks[0])


def test_a_beir_folder_given_as_tasks_is_one_qrels_task_named_after_it(tmp_path):
    """QA: `unime eval --tasks beir/` read the folder as MMEB-eval files ("missing key(s) ['qry_img_path', ...]").
    Now it is a qrels task named after the folder, scored as a task config listing it scores it."""
    d = tmp_path / "mybeir"
    write_png(d, "imgs/red.png", "red")
    write_beir(d, [{"_id": "d1", "image": "imgs/red.png"}, {"_id": "d2", "text": "blue"}],
               [{"_id": "q1", "text": "red"}, {"_id": "q2", "text": "blue"}],
               "q1\td2\t1\nq2\td2\t1\n", split="dev")
    (tmp_path / "c.yaml").write_text("tasks:\n  - {name: mybeir, format: qrels, path: mybeir, qrels_split: dev}\n")
    [spec] = load_task_config(str(d) + "/").tasks
    assert (spec.name, spec.format, spec.path, spec.data_root, spec.options) == \
        ("mybeir", "qrels", d.resolve(), d.resolve(), {"qrels_split": "dev"})
    direct, _, _ = run_suite(d)
    listed, _, _ = run_suite(tmp_path / "c.yaml")
    # q1 'red': the red image 1.0, 'blue' 0 → the relevant d2 at rank 2; q2 'blue': d2 first
    assert direct["mybeir"].metrics == listed["mybeir"].metrics and direct["mybeir"].metrics["mrr"] == 0.75
    (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    assert load_task_config(d).tasks[0].options == {}  # test.tsv, the default split, when there is one
    (d / "queries.jsonl").unlink()
    with pytest.raises(DataError, match="BEIR folder without queries.jsonl"):
        load_task_config(d)


def test_save_run_writes_each_qrels_querys_top_k_as_the_metrics_ranked_them(tmp_path):
    """`unime eval --save-run N`: per qrels task a TREC run (query_id Q0 doc_id rank score unime) of each query's top N
    by the embedder, in the order the metrics ranked them (ties against the relevant candidate), BEIR corpus ids as
    doc ids, a qrels row's candidates by their index."""
    d = tmp_path / "beir"
    write_png(d, "imgs/red.png", "red")
    write_beir(d, [{"_id": "d1", "image": "imgs/red.png"}, {"_id": "d2", "text": "blue"},
                   {"_id": "d3", "text": "green"}],
               [{"_id": "q1", "text": "red"}, {"_id": "q2", "text": "blue"}],
               "q1\td2\t1\nq2\td2\t1\n")
    write_jsonl(tmp_path / "rows.jsonl", [{"query": {"text": "green"}, "candidates": [
        {"text": "red"}, {"text": "green"}, {"text": "blue"}], "relevance": [0, 1, 0]}])
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tasks:\n  - {name: b, format: qrels, path: beir}\n"
                   "  - {name: rows, format: qrels, path: rows.jsonl}\n")
    out = run_tasks(load_suite_data(load_task_config(cfg)), RunEncoder(FakeEmbedder(), "fake"),
                    opts=EvalOptions(run_depth=3))
    res = {r.name: r for r in out.results}
    # q1 'red': d1 (the red image) 1.0, then d2 'blue' and d3 'green' tie at 0 and the tie goes against the relevant
    # d2 → rank 3 (MRR 1/3); q2 'blue': d2 1.0, then d1 and d3 at 0 in corpus order
    assert res["b"].run == [("q1", [("d1", 1.0), ("d3", 0.0), ("d2", 0.0)]),
                            ("q2", [("d2", 1.0), ("d1", 0.0), ("d3", 0.0)])]
    assert [e["mrr"] for e in res["b"].per_query] == [pytest.approx(1 / 3), 1.0]
    assert res["rows"].run == [("line 1", [("1", 1.0), ("0", 0.0), ("2", 0.0)])]
    report.write_trec_run(tmp_path / "b.trec", res["b"].run)
    report.write_trec_run(tmp_path / "rows.trec", res["rows"].run)
    assert (tmp_path / "b.trec").read_text().splitlines() == [
        "q1 Q0 d1 1 1.000000 unime", "q1 Q0 d3 2 0.000000 unime", "q1 Q0 d2 3 0.000000 unime",
        "q2 Q0 d2 1 1.000000 unime", "q2 Q0 d1 2 0.000000 unime", "q2 Q0 d3 3 0.000000 unime"]
    assert (tmp_path / "rows.trec").read_text().splitlines()[0] == "line_1 Q0 1 1 1.000000 unime"
    assert run_tasks(load_suite_data(load_task_config(cfg)), RunEncoder(FakeEmbedder(), "fake")).results[0].run is None


# -- encode once, cache ----------------------------------------------------------------------------------------

def test_every_distinct_item_is_encoded_once_across_tasks(tmp_path):
    world = build_world(tmp_path)
    results, out, fake = run_suite(world)
    encoded = fake.encoded
    keys = [(it.text, it.images) for it in encoded]
    assert len(keys) == len(set(keys))  # nothing twice
    # 'red' is a candidate in colour_cls and a caption in retrieval and a positive in compositional: once
    assert keys.count(("red", ())) == 1
    suite = load_task_config(world)
    distinct = set()
    seen = 0
    for spec, data in load_suite_data(suite):
        distinct |= {(it.text, it.images) for it in data.table.items}
        seen += data.references
    assert set(keys) == distinct
    assert out.encoding["encoded"] == out.encoding["distinct_items"] == len(distinct)
    assert out.encoding["items_seen"] == seen == (4 * 4 + 2 + 3 + 2) + (4 + 6) + 4 * 3 + (1 + 3) * 2 + 2
    assert out.encoding["from_cache"] == 0


def test_second_run_with_the_same_model_encodes_nothing(tmp_path):
    world = build_world(tmp_path / "w")
    cache = tmp_path / "cache"
    r1, out1, fake1 = run_suite(world, cache_dir=cache)
    assert out1.encoding["encoded"] == out1.encoding["distinct_items"] > 0
    r2, out2, fake2 = run_suite(world, cache_dir=cache)
    assert fake2.calls == []
    assert out2.encoding["encoded"] == 0 and out2.encoding["from_cache"] == out1.encoding["distinct_items"]
    for name in r1:
        assert r2[name].metrics == r1[name].metrics
    # another model identity does not hit
    _, out3, _ = run_suite(world, cache_dir=cache, model_id="other")
    assert out3.encoding["encoded"] == out1.encoding["distinct_items"]
    # a regenerated image at the same path is encoded again (keys hold image content, not just the path)
    write_png(tmp_path / "w", "images/blue.png", "yellow")
    _, out4, fake4 = run_suite(world, cache_dir=cache)
    re_encoded = {it.images for it in fake4.encoded}
    assert re_encoded == {("images/blue.png",)}


def test_same_relative_path_under_two_roots_is_two_items(tmp_path):
    for sub, colour in (("a", "red"), ("b", "blue")):
        write_png(tmp_path / sub, "img.png", colour)
        write_jsonl(tmp_path / sub / "t.jsonl", [{"qry_text": Q, "qry_img_path": "img.png",
                                                  "tgt_text": [colour, "green"], "tgt_img_path": ["", ""]}])
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tasks:\n"
                   "  - {name: a, format: mmeb, path: a/t.jsonl, data_root: a}\n"
                   "  - {name: b, format: mmeb, path: b/t.jsonl, data_root: b}\n")
    results, out, fake = run_suite(cfg)
    assert results["a"].metrics["precision@1"] == 1.0 and results["b"].metrics["precision@1"] == 1.0
    assert out.encoding["distinct_items"] == 2 + 3  # two images; 'red', 'blue', 'green'


def test_embedding_store_atomic_shards(tmp_path):
    store = EmbeddingStore(tmp_path / "m", model_info={"model": "x"})
    store.add(["k1", "k2"], np.array([[1, 0], [0, 1]], dtype=np.float32))
    # a crash between the .npy and the .keys leaves an unindexed .npy: ignored on reload
    np.save(tmp_path / "m" / "shard-99999999999999999999-dead.npy", np.ones((1, 2), np.float32))
    again = EmbeddingStore(tmp_path / "m")
    assert len(again) == 2 and "k1" in again
    np.testing.assert_array_equal(again.get("k2"), [0, 1])
    assert json.loads((tmp_path / "m" / "model.json").read_text())["model"] == "x"
    assert not list((tmp_path / "m").glob("*.tmp-*"))


def test_model_fingerprint_follows_files_and_settings(tmp_path):
    m = tmp_path / "model"
    m.mkdir()
    (m / "config.json").write_text('{"a": 1}')
    (m / "model.safetensors").write_bytes(b"\0" * 100)
    f1 = model_fingerprint(m, {"pooling": "last"})
    assert f1 == model_fingerprint(m, {"pooling": "last"})
    assert f1 != model_fingerprint(m, {"pooling": "emb"})
    (m / "config.json").write_text('{"a": 2}')
    assert model_fingerprint(m, {"pooling": "last"}) != f1


# -- rerank seam ------------------------------------------------------------------------------------------------

class ScriptedReranker:
    def __init__(self, pick=None, scores=None):
        self._pick, self._scores = pick, scores
        self.seen = []

    def pick(self, query, candidates):
        self.seen.append(list(candidates))
        return self._pick

    def score_pairs(self, query, candidates):
        self.seen.append(list(candidates))
        return np.asarray(self._scores[:len(candidates)])


def test_rerank_top1_and_resort():
    cands = [Item(text=str(i)) for i in range(5)]
    q = Item(text="q")
    r = ScriptedReranker(pick=2)
    # shown: candidates 3, 1, 0 (the top 3); the pick (position 2 → candidate 0) moves to rank 1
    assert rerank([3, 1, 0, 2, 4], r, q, cands, 3, "top1").tolist() == [0, 3, 1, 2, 4]
    assert [c.text for c in r.seen[0]] == ["3", "1", "0"]
    # resort by pairwise score; equal scores keep the embedder's order
    r = ScriptedReranker(scores=[0.1, 0.9, 0.1])
    assert rerank([3, 1, 0, 2, 4], r, q, cands, 3, "resort").tolist() == [1, 3, 0, 2, 4]
    stats = RerankStats()
    assert rerank([3, 1, 0], ScriptedReranker(pick=None), q, cands, 2, "top1", stats=stats).tolist() == [3, 1, 0]
    assert stats.to_dict() == {"queries": 1, "fallbacks": 1}
    with pytest.raises(ModelError):
        rerank([3, 1, 0], ScriptedReranker(pick=7), q, cands, 2, "top1")
    with pytest.raises(ValueError):
        rerank([3, 1, 0], r, q, cands, 2, "listwise")
    s = scores_after_rerank(np.array([0.9, 0.8, 0.1]), np.array([0, 1]), np.array([0.0, 1.0]))  # 1 picked
    assert np.argsort(-s).tolist() == [1, 0, 2] and s[2] == 0.1


class PickCounter:
    def __init__(self):
        self.picks = 0

    def as_dict(self):
        return {"picks": self.picks}

    def reset(self):
        self.picks = 0


class OracleReranker:
    """Picks the true answer if it is shown (a stand-in for a perfect listwise reranker); `answers`: a set of
    them, or {query: set of its answers}."""

    def __init__(self, answers):
        self.answers = answers
        self.stats = PickCounter()

    def _answers(self, query):
        return self.answers.get(query, set()) if isinstance(self.answers, dict) else self.answers

    def pick(self, query, candidates):
        self.stats.picks += 1
        for i, c in enumerate(candidates):
            if c in self._answers(query):
                return i
        return None

    def score_pairs(self, query, candidates):
        return np.array([1.0 if c in self._answers(query) else 0.0 for c in candidates])


def test_run_reports_with_and_without_reranking(tmp_path):
    world = build_world(tmp_path)
    # per query (c0 and c2 share their query: their answer is c2's, 'orange'); a set of every answer for every
    # query picked 'blue' for c0, shown (red, blue) as blue and green tie for the second place
    image_query = lambda colour: Item(text=Q, images=(f"images/{colour}.png",))  # noqa: E731
    yellow = {Item(images=("images/yellow.png",))}
    answers = {image_query("red"): {Item(text="orange")}, image_query("blue"): {Item(text="blue")},
               Item(text="find a yellow picture"): yellow, Item(text="find a red picture"): yellow}
    rr = Reranking(OracleReranker(answers), topk=2, mode="top1")
    results, out, _ = run_suite(world, reranking=rr)
    cls = results["colour_cls"]
    assert cls.metrics["precision@1"] == 0.5
    # c2: top 2 = red, orange → the oracle picks 'orange' → hit. c3: the tie is shown the higher index first
    # (blue blue, blue) → picks 'blue' → hit. c0, c1: the oracle knows no answer → fallback, still hits.
    assert cls.reranked["precision@1"] == 1.0
    # the harness's counts, and the reranker's own counters (reported per task, then reset)
    assert cls.rerank_stats == {"queries": 4, "fallbacks": 2, "reranker": {"picks": 4}}
    assert results["colour_ret"].rerank_stats["reranker"] == {"picks": 2}
    # colour_ret row 2 ('find a red picture', positive: the yellow image): the embedder ranks red first,
    # yellow second → the oracle picks yellow → hit
    assert results["colour_ret"].reranked["precision@1"] == 1.0
    summary = report.build_summary(out, meta={})
    assert summary["reranked"]["aggregates"]["mmeb"]["scores"]["overall"] == 1.0
    md = "\n".join(report.results_markdown(summary))
    assert "| embedder + reranker (top1, top-2) |" in md
    assert "| embedder |" in md


def test_load_reranker_gives_a_clear_error_when_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "unime.models.reranker", None)
    with pytest.raises(ModelError, match="reranker"):
        load_reranker("some/ckpt")


def test_load_reranker_calls_the_factory(monkeypatch):
    import types

    made = {}

    class Reranker(OracleReranker):
        @classmethod
        def from_pretrained(cls, path, **kw):
            made.update(path=path, **kw)
            return cls(set())

    monkeypatch.setitem(sys.modules, "unime.models.reranker", types.SimpleNamespace(Reranker=Reranker))
    r = load_reranker("ckpt", device="cpu")
    assert isinstance(r, Reranker) and made == {"path": "ckpt", "device": "cpu", "dtype": None}


# -- report --------------------------------------------------------------------------------------------------

def test_report_files_and_comparison(tmp_path):
    world = build_world(tmp_path / "w")
    _, out, _ = run_suite(world)
    s1 = report.write_run(tmp_path / "run1", out, meta={"model": "fake"})
    _, out_idx, _ = run_suite(world, ties="index")
    report.write_run(tmp_path / "run2", out_idx, meta={"model": "fake"}, compare=[str(tmp_path / "run1")])
    run1 = tmp_path / "run1"
    for f in ("summary.json", "results.md", "per_task.png", "tasks/colour_cls.json", "tasks/colours_docs.json"):
        assert (run1 / f).is_file(), f
    summary = json.loads((run1 / "summary.json").read_text())
    assert summary == json.loads(json.dumps(s1))
    assert summary["tasks"]["colour_cls"]["precision@1"] == 0.5
    assert summary["tasks"]["colours_retrieval"]["image_to_text/recall@1"] == 0.75
    task = json.loads((run1 / "tasks" / "colour_cls.json").read_text())
    assert task["meta_task"] == "classification" and task["split"] == "IND" and len(task["per_query"]) == 4
    md = (run1 / "results.md").read_text()
    # the paper's layout: meta-task columns with dataset counts, then IND, OOD, Overall
    assert "| Model | Classification (1) | VQA | Retrieval (1) | Grounding | IND (1) | OOD (1) | Overall (2) |" in md
    assert "| embedder | 50.0 | – | 50.0 | – | 50.0 | 50.0 | 50.0 |" in md
    assert "| colours_retrieval | embedder | 83.3 | 100.0 | 100.0 | 75.0 | 100.0 | 100.0 |" in md
    assert "- distinct items: " in md
    with open(run1 / "per_task.png", "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    cmp_md = (tmp_path / "run2" / "comparison.md").read_text()
    assert "| colour_cls | precision@1 | 75.0 | 50.0 |" in cmp_md  # run2 (ties=index) vs run1
    assert (tmp_path / "run2" / "comparison.png").is_file()
    cmp = report.compare_runs([run1, tmp_path / "run2"], tmp_path / "cmp")
    assert cmp["tasks"]["colour_cls · precision@1"] == {"run1": 0.5, "run2": 0.75}
    with pytest.raises(DataError, match="summary.json"):
        report.compare_runs([tmp_path / "w"], tmp_path / "cmp2")


def test_under_skip_a_task_left_without_rows_is_reported_and_the_others_are_read(tmp_path, caplog):
    world = build_world(tmp_path)
    (tmp_path / "images/yellow.png").unlink()  # the positive of both colour_ret rows
    suite = load_task_config(world)
    with pytest.raises(DataError, match="images/yellow.png"):
        load_suite_data(suite)
    with caplog.at_level("WARNING"):
        data = load_suite_data(suite, on_error="skip")
    names = [spec.name for spec, _ in data]
    assert names == ["colour_cls", "colours_retrieval", "colours_sugarcrepe", "colours_docs"]
    assert "task 'colour_ret' has no (good) rows; the task is left out" in caplog.text
    from unime.eval.runners import skipped_task_names

    assert skipped_task_names(suite, data) == ["colour_ret"]
    for name in ("red", "green", "blue"):
        (tmp_path / f"images/{name}.png").unlink()
    with pytest.raises(DataError, match="no task has \\(good\\) rows"):
        load_suite_data(suite, on_error="skip")


def test_under_skip_each_task_left_out_is_reported_with_why(tmp_path):
    """QA: summary.json and results.md named the tasks left out on one line, "no data file, or no good rows",
    not which of the two each was; now each task's reason is recorded (`meta.skipped_task_reasons`) and shown."""
    import yaml

    cfg = build_world(tmp_path)
    tasks = yaml.safe_load(cfg.read_text())
    tasks["tasks"].append({"name": "absent", "format": "mmeb", "path": "eval/mmeb/absent.jsonl",
                           "meta_task": "retrieval"})
    cfg.write_text(yaml.safe_dump(tasks, sort_keys=False))
    (tmp_path / "images/yellow.png").unlink()  # the positive of both colour_ret rows: no good row
    suite = load_task_config(cfg)
    data = load_suite_data(suite, on_error="skip")
    why = data.skipped_tasks
    assert sorted(why) == ["absent", "colour_ret"]
    assert why["absent"].startswith("no data file: ") and "absent.jsonl" in why["absent"]
    assert "data file not found" in why["absent"]
    assert why["colour_ret"].startswith("no good rows: ") and "has no (good) rows" in why["colour_ret"]
    summary = {"meta": {"skipped_tasks": ["colour_ret", "absent"], "skipped_task_reasons": why},
               "task_info": {}, "tasks": {}, "aggregates": {}}
    line = [x for x in report.results_markdown(summary) if "skipped tasks" in x]
    assert line == [f"- **skipped tasks** (`--on-error skip`): colour_ret ({why['colour_ret']}); "
                    f"absent ({why['absent']})"]
    # a summary written before the reasons were recorded: the names alone
    del summary["meta"]["skipped_task_reasons"]
    assert "- **skipped tasks** (`--on-error skip`): colour_ret; absent" in report.results_markdown(summary)


def test_skip_meta_counts_the_rows_of_a_task_left_without_rows_and_names_its_first_bad_row(tmp_path):
    """`skipped_data_meta` (shared by `unime eval`, `eval reference`, `reason eval`) counted only the rows skipped in
    the tasks that were scored: a task whose 6 rows were all bad added 0 to `skipped_rows`, and its reason said only
    that it had no good rows. Now its rows are counted (per task in `skipped_task_rows`) and its reason keeps the
    first bad row's error, as the raise policy reports it (file, record line, field)."""
    from unime.eval.runners import skipped_data_meta

    suite = load_task_config(half_and_gone_tasks(tmp_path))
    gone = next(t for t in suite.tasks if t.name == "gone")
    with pytest.raises(DataError) as raised:  # the first bad row, as the default policy names it
        load_task_data(gone)
    assert "record line 1, field 'query.images[0]'" in str(raised.value)
    data = load_suite_data(suite, on_error="skip")
    meta = skipped_data_meta(suite, data, "skip")
    assert meta["skipped_rows"] == 1 + 6 and meta["skipped_task_rows"] == {"gone": 6}
    assert meta["skipped_tasks"] == ["gone"]
    assert meta["skipped_task_reasons"]["gone"] == (f"no good rows: {tmp_path / 'gone.jsonl'}: task 'gone' has no "
                                                    f"(good) rows; first bad row: {raised.value}")
    lines = report.skip_lines({"meta": meta, "task_counts": {"half": {"skipped_rows": 1}}})
    assert lines[0] == "- **skipped rows** (`--on-error skip`): 7 (gone 6, half 1); the metrics leave them out"

