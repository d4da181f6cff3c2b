"""The checks that keep useless labels out of training: judge metrics, mining label health, the loss
chosen for plain pairs, the fallback refusal, the oracle on a labels file, MMEB files as eval tasks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unime.data.items import Item, Record
from unime.errors import DataError


# -- judge metrics ---------------------------------------------------------------------------------------

def test_binary_metrics_against_hand_counts():
    from unime.mining.judge_check import binary_metrics

    labels = [1, 1, 0, 0, 0]
    scores = [0.9, 0.4, 0.6, 0.2, 0.4]
    m = binary_metrics(labels, scores, base_rate=0.4)
    # positive/negative pairs: (0.9 beats all 3), (0.4 beats 0.2, ties 0.4, loses to 0.6) → (3 + 1 + 0.5) / 6
    assert m["auc"] == pytest.approx(4.5 / 6)
    assert m["accuracy"] == pytest.approx(3 / 5)  # > 0.5: 0.9 ✓, 0.4 ✗, 0.6 ✗, 0.2 ✓, 0.4 ✓
    assert m["majority_accuracy"] == pytest.approx(0.6)
    assert m["score_mean_positive"] == pytest.approx(0.65) and m["score_mean_negative"] == pytest.approx(0.4)
    assert m["warnings"] == []
    assert "within_query_auc" not in m
    # within groups: g0 = (0.9, 0.4 | 0.6) → 0.9 > 0.6 ✓, 0.4 < 0.6 ✗; g1 = (— | 0.2, 0.4) has no positive
    g = binary_metrics(labels, scores, groups=["g0", "g0", "g0", "g1", "g1"])
    assert g["within_query_auc"] == pytest.approx(1 / 2) and g["auc"] == m["auc"]


def test_a_base_rate_judge_is_named():
    from unime.mining.judge_check import binary_metrics

    m = binary_metrics([1, 0, 0, 0], [0.251, 0.250, 0.2505, 0.2502], base_rate=0.25)
    assert len(m["warnings"]) == 1 and "base rate" in m["warnings"][0] and "0.250" in m["warnings"][0]
    weak = binary_metrics([1, 0, 1, 0], [0.4, 0.5, 0.6, 0.5])  # 0.4 beats no negative, 0.6 both: 2/4
    assert weak["auc"] == pytest.approx(0.5) and "AUC 0.500" in weak["warnings"][0]


def test_calibration_bins_and_plot(tmp_path):
    from unime.mining.judge_check import calibration_bins, plot_calibration

    bins = calibration_bins([1, 0, 1, 1], [0.05, 0.08, 0.95, 0.91])
    assert [b["count"] for b in bins] == [2, 2]
    assert bins[0]["positive_share"] == 0.5 and bins[1]["positive_share"] == 1.0
    plot_calibration([1, 0, 1, 1], [0.05, 0.08, 0.95, 0.91], tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_judge_holds_out_whole_queries():
    from unime.train.judge_eval import split_held_out
    from unime.train.reranker_trainer import judge_examples

    recs = [Record(Item(f"q{i}"), Item(f"p{i}"), negatives=[Item("n1"), Item("n2")], id=f"r{i}") for i in range(20)]
    # a second record for q0..q4 with another labelled positive (as the demo's judge data writes them)
    recs += [Record(Item(f"q{i}"), Item(f"p{i}b"), negatives=[Item("n1"), Item("n2")], id=f"r{i}b") for i in range(5)]
    groups = [[ex] for i, r in enumerate(recs) for ex in judge_examples(r, i)]
    train, held = split_held_out(groups, 0.1, seed=0)
    held_queries = {ex.query.key for ex in held}
    assert len(held_queries) == 2
    assert not held_queries & {g[0].query.key for g in train}  # no query on both sides
    n_records = sum(1 for r in recs if r.query.key in held_queries)
    assert len(held) == 3 * n_records and len(train) == 3 * len(recs) - len(held)
    assert split_held_out(groups[:27], 0.1, seed=0)[1] == []  # 9 distinct queries: too few to hold out


# -- mining label health ---------------------------------------------------------------------------------

def _rows(pos: list[float], cands: list[list[float]]):
    return [{"query_index": q, "positive_score": p, "judge_score": s} for q, (p, cs) in enumerate(zip(pos, cands))
            for s in cs]


def test_label_health_figures_and_warnings():
    from unime.mining.health import format_health, label_health

    sampling = {"counts": {"ok": 7, "repeated": 1, "fallback": 2, "dropped": 0},
                "candidates": {"a": 30, "b": 10}, "false_negatives": {"a": 6, "b": 2}}
    h = label_health(sampling, _rows([0.9, 0.8], [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]))
    assert h["fallback_share"] == pytest.approx(0.2) and h["filter_share"] == pytest.approx(0.2)
    assert h["separation"] == pytest.approx(0.85 - 0.35)
    assert h["score_p5"] == pytest.approx(np.percentile([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], 5))
    assert len(h["warnings"]) == 1 and "20.0 % of the queries" in h["warnings"][0]
    assert "fallback 2/10 queries (20.0 %)" in format_health(h)
    # a query with no candidate at all is dropped even under --fallback random: the line names both counts
    mixed = label_health({**sampling, "counts": {"ok": 7, "fallback": 2, "dropped": 1}}, [])
    assert "fallback or dropped 3/10 queries (30.0 %: fallback 2, dropped 1)" in format_health(mixed)
    flat = label_health({**sampling, "counts": {"ok": 10}}, _rows([0.2, 0.2], [[0.2, 0.2], [0.2, 0.21]]))
    assert len(flat["warnings"]) == 1 and "barely vary" in flat["warnings"][0]


# -- what an embedder trains on --------------------------------------------------------------------------

def test_choose_loss_for_pairs_scored_and_unscored_records():
    from unime.train.label_quality import choose_loss

    pairs = [Record(Item("q"), Item("p"))]
    assert (choose_loss(pairs).loss, choose_loss(pairs).hard_negatives) == ("infonce", 0)
    scored = [Record(Item("q"), Item("p"), [Item(f"n{i}") for i in range(10)], 0.9, [0.1] * 10)]
    assert (choose_loss(scored).loss, choose_loss(scored).hard_negatives) == ("symmetric_kl", 8)
    unscored = [Record(Item("q"), Item("p"), [Item("a"), Item("b"), Item("c")])]
    assert (choose_loss(unscored).loss, choose_loss(unscored).hard_negatives) == ("infonce", 3)


def test_fallback_share_from_records_and_from_stats(tmp_path):
    from unime.train.label_quality import fallback_share, is_fallback_record

    fb = Record(Item("q"), Item("p"), [Item("a"), Item("b")], 0.2, [1.0, 1.0])
    ok = Record(Item("q2"), Item("p"), [Item("a"), Item("b")], 0.9, [0.1, 1.0])
    assert is_fallback_record(fb) and not is_fallback_record(ok)
    assert fallback_share([fb, ok, ok, ok])[:2] == (0.25, 1)
    f = tmp_path / "mined.parquet"
    f.write_bytes(b"")
    (tmp_path / "stats.json").write_text(json.dumps({"sampling": {"counts": {"ok": 1, "fallback": 3,
                                                                            "repeated": 0, "dropped": 0}}}))
    share, n, where = fallback_share([fb, ok], f)
    assert (share, n) == (0.75, 3) and where.endswith("stats.json")


def test_soft_loss_refuses_fallback_records_unless_allowed():
    from unime.train.embedder_trainer import EmbedderTrainingConfig, build_loss_from_config, check_fallback_labels

    recs = [Record(Item(f"q{i}"), Item("p"), [Item("a")], 0.2, [1.0]) for i in range(3)]
    recs.append(Record(Item("q"), Item("p"), [Item("a")], 0.9, [0.1]))
    cfg = EmbedderTrainingConfig(model="m", out="o", records="r.parquet", hard_negatives=1)
    with pytest.raises(DataError, match=r"3 records \(75.0 %.*--allow-fallback-labels"):
        check_fallback_labels(cfg, recs, build_loss_from_config(cfg))
    allowed = EmbedderTrainingConfig(model="m", out="o", records="r.parquet", hard_negatives=1,
                                     allow_fallback_labels=True)
    check_fallback_labels(allowed, recs, build_loss_from_config(allowed))
    infonce = EmbedderTrainingConfig(model="m", out="o", records="r.parquet", hard_negatives=1, loss="infonce")
    check_fallback_labels(infonce, recs, build_loss_from_config(infonce))


def test_resolve_auto_options():
    from unime.train.embedder_trainer import EmbedderTrainingConfig, resolve_auto_options

    cfg = EmbedderTrainingConfig(model="m", out="o", records="r", loss="auto", hard_negatives=None)
    got = resolve_auto_options(cfg, [Record(Item("q"), Item("p"))])
    assert (got.loss, got.hard_negatives, got.infonce_in_batch) == ("infonce", 0, True)
    got.validate()
    explicit = EmbedderTrainingConfig(model="m", out="o", records="r", loss="infonce", hard_negatives=None)
    assert resolve_auto_options(explicit, [Record(Item("q"), Item("p"), [Item("a")] * 3)]).hard_negatives == 3


# -- oracle on a labels file -----------------------------------------------------------------------------

def test_oracle_backend_scores_a_labels_file(tmp_path):
    from unime.mining.backends import JudgeSpec, make_backend

    q, a, b, c = Item("q", ("x.png",)), Item("a"), Item("b"), Item("c")
    lines = [{"query": q.to_dict(), "candidates": [a.to_dict(), b.to_dict()], "relevance": [1.0, 0.5]},
             {"query": q.to_dict(), "candidate": c.to_dict(), "label": True}]
    path = tmp_path / "qrels.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    be = make_backend("oracle", JudgeSpec(path=str(path)))
    [scores] = be.score_groups([(q, [a, b, c, Item("unlisted")])])
    assert scores.tolist() == [1.0, 0.5, 1.0, 0.0]
    assert be.stats()["unlisted_pairs"] == 1
    path.write_text(json.dumps({"query": q.to_dict(), "candidate": a.to_dict(), "label": -1}) + "\n")
    with pytest.raises(DataError, match="line 1.*field 'label'"):
        make_backend("oracle", JudgeSpec(path=str(path)))


def test_oracle_backend_divides_graded_qrels_by_the_files_largest_grade(tmp_path):
    """QA: grades above 1 (qrels 0-3) became judge scores of 2 and 3, which training refuses (scores are in [0, 1]).
    A file with a grade above 1 has every grade divided by its largest; one within [0, 1] keeps its grades."""
    from unime.data.scores import parse_score
    from unime.mining.backends import JudgeSpec, make_backend

    q, a, b, c, d = Item("q"), Item("a"), Item("b"), Item("c"), Item("d")
    lines = [{"query": q.to_dict(), "candidates": [a.to_dict(), b.to_dict(), c.to_dict()], "relevance": [3, 2, 0]},
             {"query": q.to_dict(), "candidate": d.to_dict(), "label": 1}]
    path = tmp_path / "graded.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    be = make_backend("oracle", JudgeSpec(path=str(path)))
    [scores] = be.score_groups([(q, [a, b, c, d, Item("unlisted")])])
    assert scores.tolist() == pytest.approx([1.0, 2 / 3, 0.0, 1 / 3, 0.0])
    assert [parse_score(float(s), field="score") for s in scores] == scores.tolist()  # what training accepts
    assert be.stats()["grades"] == "divided by the file's largest, 3"
    path.write_text(json.dumps({"query": q.to_dict(), "candidate": a.to_dict(), "score": 0.5}) + "\n")
    be = make_backend("oracle", JudgeSpec(path=str(path)))
    assert be.score_groups([(q, [a])])[0].tolist() == [0.5] and "grades" not in be.stats()


def test_judge_pairs_reader_takes_a_label_column(tmp_path):
    from unime.mining.pairs import read_pairs

    p = tmp_path / "pairs.jsonl"
    p.write_text(json.dumps({"query": {"text": "q"}, "candidate": {"text": "c"}, "y": 1}) + "\n"
                 + json.dumps({"query": {"text": "q"}, "candidate": {"text": "d"}, "y": False}) + "\n")
    pairs, labels = read_pairs(str(p), label_column="y")
    assert [x[0] for x in pairs] == [1, 2] and labels == [1.0, 0.0]
    with pytest.raises(DataError, match="--label-column"):
        read_pairs(str(p))
    # with the label column named, the lines' other keys are ignored (two or more made them unreadable)
    p.write_text(json.dumps({"id": "a", "query": {"text": "q"}, "candidate": {"text": "c"}, "y": 1, "src": "coco",
                             "note": "x"}) + "\n")
    assert read_pairs(str(p), label_column="y") == ([("a", Item("q"), Item("c"))], [1.0])
    with pytest.raises(DataError, match=r"line 1 \(id a\): unknown keys \['note', 'src', 'y'\] \(a label column\? pass "
                                        "--label-column NAME; the other keys are then ignored"):
        read_pairs(str(p))


def test_judge_command_under_skip_shows_why_every_pair_was_skipped(tmp_path, capsys):
    """QA: `unime judge --on-error skip` on a pairs file with extra keys and no --label-column skipped every line
    and said only "pairs.jsonl: no pairs to score", the reasons lost with the run (`unime embed` and `unime data
    import` print them). It now prints what it skipped, each pair named by its line, before the error; with
    --label-column the same file (two extra keys beside the label) is scored."""
    from unime.cli import main

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": {"text": f"q{i}"}, "candidate": {"text": f"c{i}"}, "label": i % 2,
                                         "source": "coco", "note": "x"}) + "\n" for i in range(2)))
    oracle = tmp_path / "oracle.jsonl"
    oracle.write_text("".join(json.dumps({"query": {"text": f"q{i}"}, "candidate": {"text": f"c{i}"},
                                          "score": 0.25 + 0.5 * i}) + "\n" for i in range(2)))
    argv = ["judge", "--pairs", str(pairs), "--judge", str(oracle), "--backend", "oracle", "--on-error", "skip"]
    assert main([*argv, "--out", str(tmp_path / "s.jsonl")]) == 2
    out, err = capsys.readouterr()
    hint = "unknown keys ['label', 'note', 'source'] (a label column? pass --label-column NAME; the other keys are " \
        "then ignored)"
    assert out.splitlines() == ["skipped 2 record(s) (schema: 2)", f"  - {pairs}, record line 1: {hint}",
                                f"  - {pairs}, record line 2: {hint}"], out
    assert err.strip().splitlines()[-1] == f"unime: error: {pairs}: no pairs to score", err
    assert not (tmp_path / "s.jsonl").exists()
    assert main([*argv, "--out", str(tmp_path / "l.jsonl"), "--label-column", "label"]) == 0
    assert [json.loads(x) for x in (tmp_path / "l.jsonl").read_text().splitlines()] == [
        {"id": 1, "score": 0.25, "label": 0.0}, {"id": 2, "score": 0.75, "label": 1.0}]


def test_judge_pairs_reader_skips_bad_lines_keeping_labels_aligned(tmp_path):
    from unime.data.skips import SkipReport
    from unime.mining.pairs import read_pairs

    p = tmp_path / "pairs.jsonl"
    p.write_text(json.dumps({"query": {"text": "q"}, "candidate": {"text": "c"}, "y": 1}) + "\n"
                 + json.dumps({"query": {"text": "q"}, "candidate": {"text": "d"}, "y": -2}) + "\n"  # bad label
                 + json.dumps({"query": {"text": "q"}, "candidate": {"text": ""}, "y": 0}) + "\n"  # empty item
                 + json.dumps({"query": {"text": "q"}, "candidate": {"text": "e"}, "y": 0}) + "\n")
    with pytest.raises(DataError, match="line 2.*field 'y'"):
        read_pairs(str(p), label_column="y")
    skips = SkipReport()
    pairs, labels = read_pairs(str(p), label_column="y", on_error="skip", skips=skips)
    assert [x[0] for x in pairs] == [1, 4] and labels == [1.0, 0.0] and skips.total == 2


# -- MMEB files as eval tasks ----------------------------------------------------------------------------

def test_mmeb_files_and_folders_as_task_suites(tmp_path):
    from unime.data.roots import write_data_root
    from unime.eval.tasks import load_task_config

    folder = tmp_path / "mmeb"
    folder.mkdir()
    row = {"qry_text": "q", "qry_img_path": "", "tgt_text": ["a", "b"], "tgt_img_path": ["", ""]}
    for name in ("N24News", "pets_cls", "other"):
        (folder / f"{name}.jsonl").write_text(json.dumps(row) + "\n")
    suite = load_task_config(folder)
    assert [(t.name, t.meta_task, t.split) for t in suite.tasks] == [
        ("N24News", "classification", "IND"), ("other", None, None), ("pets_cls", "classification", None)]
    assert all(t.data_root == folder.resolve() for t in suite.tasks)
    write_data_root(folder, tmp_path)
    one = load_task_config(str(folder / "other.jsonl"))
    assert [t.name for t in one.tasks] == ["other"] and one.tasks[0].data_root == tmp_path.resolve()
    two = load_task_config([str(folder / "other.jsonl"), str(folder / "pets_cls.jsonl")], only=["pets_cls"])
    assert [t.name for t in two.tasks] == ["pets_cls"]
    with pytest.raises(DataError, match="all be MMEB files"):
        load_task_config([str(folder / "other.jsonl"), str(tmp_path)])


def test_mmeb_runner_reports_recall_chance_and_repeated_positives(caplog):
    from unime.eval.runners import EvalOptions, run_mmeb
    from unime.eval.tasks import ItemTable, MMEBData, TaskSpec

    table = ItemTable()
    items = [table.add(Item(t)) for t in ("q1", "q2", "p", "n1", "n2", "n3", "n4", "n5")]
    vectors = np.eye(8)
    # query 1 scores: p 0.2 < n1..n5 (rank 6 of 6); query 2: positive listed twice (index 0 and 2)
    vectors[0] = 0
    vectors[0, 2], vectors[0, 3:8] = 0.2, 0.5
    vectors[1] = 0
    vectors[1, 2], vectors[1, 3] = 0.9, 0.1
    q1 = np.array([items[2], items[3], items[4], items[5], items[6], items[7]])
    q2 = np.array([items[2], items[3], items[2]])
    data = MMEBData(table, np.array([items[0], items[1]]), [q1, q2], ["a", "b"])
    spec = TaskSpec("t", "mmeb", path=__import__("pathlib").Path("t.jsonl"), data_root=__import__("pathlib").Path("."))
    with caplog.at_level("WARNING"):
        res = run_mmeb(spec, data, lambda idx: vectors[idx] @ np.eye(8), EvalOptions())
    # q1: positive ranked 6th → miss at 1, 5; hit at 10. q2: tie with its own copy → pessimistic miss at 1, rank 2
    assert res.metrics["precision@1"] == 0.0
    assert res.metrics["recall@5"] == pytest.approx(0.5) and res.metrics["recall@10"] == pytest.approx(1.0)
    assert res.metrics["chance@1"] == pytest.approx((1 / 6 + 1 / 3) / 2)
    assert res.metrics["chance@5"] == pytest.approx((5 / 6 + 1) / 2)
    assert res.counts["repeated_positive_rows"] == 1 and res.counts["candidates_per_query_max"] == 6
    assert "rows 2 (id b)" in caplog.text


def test_check_records_names_a_file_s_record_by_its_line_and_one_given_in_memory_by_its_index(tmp_path):
    """QA: `check_records` named an id-less record read from a file by its position + 1 ("record 2"), not its line:
    in a file with blank lines the two differ. It names the record as its reader does, by its real line (and id);
    records given in memory by their index in the list, as Python indexes it (`records[1]`)."""
    from unime.data.io import read_records
    from unime.train.batching import check_records

    pair = {"query": {"text": "q"}, "positive": {"text": "p"}}
    path = tmp_path / "r.jsonl"
    # line 1 blank, line 2 a good record, lines 3-4 blank, line 5 an id-less pair, line 6 one with an id
    path.write_text("\n" + json.dumps({**pair, "negatives": [{"text": "n"}]}) + "\n\n\n" + json.dumps(pair) + "\n"
                    + json.dumps({**pair, "id": "q7"}) + "\n")
    records = read_records(path)
    with pytest.raises(DataError) as caught:
        check_records(records, num_negatives=1, needs_scores=False, source=str(path))
    assert str(caught.value).startswith(f"{path}, record line 5, field 'negatives': 0 hard negatives")
    with pytest.raises(DataError) as caught:
        check_records(records[2:], num_negatives=1, needs_scores=False, source=str(path))
    assert str(caught.value).startswith(f"{path}, record line 6 (id q7), field 'negatives': 0 hard negatives")
    in_memory = [Record(query=Item(text="q"), positive=Item(text="p"), negatives=[Item(text="n")]),
                 Record(query=Item(text="q"), positive=Item(text="p"))]
    with pytest.raises(DataError) as caught:
        check_records(in_memory, num_negatives=1, needs_scores=False)
    assert str(caught.value).startswith("record records[1], field 'negatives': 0 hard negatives")
