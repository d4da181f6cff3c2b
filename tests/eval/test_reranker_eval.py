"""`unime eval --rerank`: every task reported with and without the reranker, and the reranked ranks equal
an independent re-computation (embedder cosine top-k, then the Reranker's pick / pairwise scores)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 220, 20),
           "purple": (150, 20, 160)}


@pytest.fixture(scope="module")
def eval_setup(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("rr_eval")
    (root / "images").mkdir()
    for name, rgb in COLOURS.items():
        Image.new("RGB", (56, 56), rgb).save(root / "images" / f"{name}.png")
    names = list(COLOURS)
    rows = []
    for i, name in enumerate(names[:4]):
        others = [n for n in names if n != name][:4]
        cands = [name] + others  # positive at index 0 (MMEB-eval)
        rows.append({"id": f"q{i}", "qry_text": "<|image_1|>\nWhat colour is the square?",
                     "qry_img_path": f"images/{name}.png", "tgt_text": [f"a {c} square" for c in cands],
                     "tgt_img_path": [f"images/{c}.png" if j % 2 else "" for j, c in enumerate(cands)]})
    (root / "colours.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "eval_tasks.yaml").write_text(
        "data_root: .\ntasks:\n"
        "  - {name: colours, format: mmeb, path: colours.jsonl, meta_task: classification, split: IND}\n")
    # a plain checkpoint used as the reranker, marked as trained with 3 candidates
    rr_dir = root / "reranker"
    shutil.copytree(tiny_model_dir("qwen2_vl"), rr_dir)
    (rr_dir / "unime_reranker.json").write_text(json.dumps({"role": "reranker", "num_candidates": 3}))
    return root, rr_dir


def _independent(root, model_dir, rr_dir, k, mode):
    """Embedder top-k by cosine, then the reranker on those k: (embedder top1s, reranked top1s)."""
    from unime.data.eval_formats import read_mmeb
    from unime.models.embedder import Embedder
    from unime.models.reranker import Reranker

    rows = read_mmeb(root / "colours.jsonl")
    emb = Embedder.from_pretrained(model_dir, device="cpu", data_root=str(root))
    rr = Reranker.from_pretrained(rr_dir, device="cpu", data_root=str(root))
    plain, reranked = [], []
    for row in rows:
        q = emb.encode([row.query])[0]
        c = emb.encode(list(row.candidates))
        order = sorted(range(len(row.candidates)), key=lambda j: (-float(c[j] @ q), j))
        head = order[:k]
        shown = [row.candidates[j] for j in head]
        if mode == "top1":
            best = head[rr.pick(row.query, shown)]
        else:
            s = rr.score_pairs(row.query, shown)
            best = head[int(np.argmax(s))]
        plain.append(order[0])
        reranked.append(best)
    return plain, reranked


@pytest.mark.parametrize("mode", ["top1", "resort"])
def test_eval_reports_both_rows_and_matches_an_independent_rerank(eval_setup, tiny_model_dir, tmp_path, mode,
                                                                   capsys):
    from unime.cli import main

    root, rr_dir = eval_setup
    model_dir = tiny_model_dir("qwen2_vl")
    out = tmp_path / "eval"
    assert main(["eval", "--model", model_dir, "--tasks", str(root), "--out", str(out), "--rerank", str(rr_dir),
                 "--topk", "3", "--mode", mode, "--no-cache", "--device", "cpu", "--ties", "index"]) == 0
    task = json.loads((out / "tasks" / "colours.json").read_text())
    assert "precision@1" in task["metrics"] and "precision@1" in task["metrics_reranked"]
    plain, reranked = _independent(root, model_dir, rr_dir, 3, mode)
    assert [q["top1"] for q in task["per_query"]] == plain
    assert [q["top1_reranked"] for q in task["per_query"]] == reranked
    assert task["metrics"]["precision@1"] == pytest.approx(np.mean([t == 0 for t in plain]))
    assert task["metrics_reranked"]["precision@1"] == pytest.approx(np.mean([t == 0 for t in reranked]))
    stats = task["rerank_stats"]
    assert stats["queries"] == 4
    if mode == "top1":
        own = stats["reranker"]
        assert own["picks"] == 4 and own["parsed"] + own["fallbacks"] == 4 and own["count_mismatches"] == 0
    md = (out / "results.md").read_text()
    assert "| embedder |" in md and f"embedder + reranker ({mode}, top-3)" in md
    if mode == "top1":  # the report's line counts what the reranker's own stats count
        assert (f"{own['parsed']} of 4 listwise answers named a candidate, {own['fallbacks']} fell back to the "
                "reranker's pairwise scores") in md
    # the console shows the reranked figures and the reranker's line (with its warning, if any) too
    printed = capsys.readouterr().out.splitlines()
    assert f"colours: precision@1 {100 * task['metrics']['precision@1']:.1f}" in "\n".join(printed)
    assert any(line.startswith(f"colours [embedder + reranker ({mode}, top-3)]: precision@1 "
                               f"{100 * task['metrics_reranked']['precision@1']:.1f}") for line in printed), printed
    assert [line for line in md.splitlines() if line.startswith("Reranker: ")][0] in printed


def test_the_embedder_is_released_before_the_reranker_loads(eval_setup, tiny_model_dir, tmp_path, monkeypatch):
    """QA: `eval --rerank` held the embedder and the reranker together (real size: 9.3 GB against 4.9 GB for `eval`
    alone). Every item is encoded first; the reranker loads once the embedder is gone."""
    from tests.model_release import alive_when_loading
    from unime.cli import main
    from unime.models.embedder import Embedder
    from unime.models.reranker import Reranker

    alive_when_the_reranker_loads = alive_when_loading(monkeypatch, Embedder, Reranker)
    root, rr_dir = eval_setup
    out = tmp_path / "eval"
    assert main(["eval", "--model", tiny_model_dir("qwen2_vl"), "--tasks", str(root), "--out", str(out),
                 "--rerank", str(rr_dir), "--topk", "3", "--no-cache", "--device", "cpu"]) == 0
    assert alive_when_the_reranker_loads == [[False]]  # one embedder loaded, gone when the one reranker loads
    task = json.loads((out / "tasks" / "colours.json").read_text())
    assert task["rerank_stats"]["queries"] == 4 and "precision@1" in task["metrics_reranked"]


def test_the_report_line_counts_both_fallbacks_and_warns_when_no_answer_parsed():
    """QA: the line summed only `rerank()`'s fallbacks (0 with a `Reranker`, which falls back to its pairwise
    scores itself) and said 0 fallbacks where every listwise answer was unparsable."""
    from unime.eval.report import reranker_line

    def task(queries, picks, parsed, fallbacks, kept=0):
        return {"queries": queries, "fallbacks": kept,
                "reranker": {"picks": picks, "parsed": parsed, "fallbacks": fallbacks}}

    none_parsed = reranker_line({"a": task(8, 8, 0, 8), "b": task(16, 16, 0, 16)})
    assert none_parsed == ("Reranker: 24 reranked queries; 0 of 24 listwise answers named a candidate, 24 fell back "
                           "to the reranker's pairwise scores (unparsable or out of range); 0 kept the embedder's "
                           "order (no pick). WARNING: no listwise answer could be read: every pick is the pairwise "
                           "scores' argmax.")
    some = reranker_line({"a": task(8, 8, 6, 2), "b": {"queries": 3, "fallbacks": 1}})  # b: a reranker without stats
    assert some == ("Reranker: 11 reranked queries; 6 of 8 listwise answers named a candidate, 2 fell back to the "
                    "reranker's pairwise scores (unparsable or out of range); 1 kept the embedder's order (no pick).")
    assert reranker_line({"a": {"queries": 5, "fallbacks": 0}}) == \
        "Reranker: 5 reranked queries; 0 kept the embedder's order (no pick)."


@pytest.mark.parametrize("bad", ["missing_parent/reranker", "{root}/rerankerr", "{root}/images"])
def test_a_reranker_path_that_names_no_model_is_refused_before_any_encoding(eval_setup, tiny_model_dir, tmp_path,
                                                                           monkeypatch, capsys, bad):
    """The reranker loads after every item is encoded (the embedder let go first): a typo in --rerank was found
    only then, the encoding spent. A local path that is missing, or a folder holding no model, is refused first;
    a hub-like id (`org/name`, nothing local by its first part) is left to the load."""
    from unime.cli import main
    from unime.models.embedder import Embedder

    root, _ = eval_setup
    monkeypatch.chdir(tmp_path)
    (tmp_path / "missing_parent").mkdir()

    def no_encoding(*a, **k):
        raise AssertionError("the embedder was loaded before the reranker path was checked")

    monkeypatch.setattr(Embedder, "from_pretrained", no_encoding)
    path = bad.format(root=root)
    assert main(["eval", "--model", tiny_model_dir("qwen2_vl"), "--tasks", str(root), "--out", str(tmp_path / "e"),
                 "--rerank", path, "--no-cache", "--device", "cpu"]) != 0
    err = capsys.readouterr().err
    said = ("no such folder", "no such local folder", "holds no model")
    assert f"--rerank {path!r}" in err and any(w in err for w in said)


def test_a_hub_like_reranker_id_is_left_to_the_load():
    from unime.models.loading import refuse_missing_local_model

    refuse_missing_local_model("Qwen/Qwen2-VL-2B-Instruct", "--rerank")  # no local folder 'Qwen': may be a hub id


class TiedScoresReranker:
    """pick: query q takes shown candidate q mod the count, none for q = 3 mod 4 (the embedder's order kept);
    score_pairs: candidate c scores c mod 3 (many equal scores: resort keeps the embedder's order among them)."""

    def pick(self, query, candidates):
        return None if query % 4 == 3 else query % len(candidates)

    def score_pairs(self, query, candidates):
        return np.array([c % 3 for c in candidates], dtype=float)


def reference_rerank_ranks(rows, rr, queries, candidate_lists, ties):
    """Each row's reranked ranking as dense ranks (0: the last), worked out apart from `_rerank_scores`: the row
    sorted whole (equal scores: the lower index first under "index" ties, the higher under "pessimistic"), its top
    k reranked (`rerank_many`'s verdicts), and each candidate given a key compared as a tuple: (2, verdict, score)
    for a shown one or a copy of a shown item that scores as much as the k-th (the item's best verdict); another
    candidate scoring as much as the k-th takes the lowest of those keys when that key has its score, else
    (0, 0, score), as every other candidate does."""
    from unime.models.reranker import rerank_many

    orders = []
    for s in rows:
        idx = np.arange(len(s))
        orders.append(np.lexsort((-idx if ties == "pessimistic" else idx, -np.asarray(s, dtype=np.float64))))
    _, verdicts = rerank_many(orders, rr.reranker, queries, candidate_lists, rr.topk, rr.mode, return_keys=True)
    out = []
    for s, order, v, items in zip(rows, orders, verdicts, candidate_lists):
        s = [float(x) for x in s]
        head = {int(j) for j in order[:len(v)]}
        kth = min(s[j] for j in head)
        best: dict = {}
        for j, x in zip(order[:len(v)], v):
            best[items[j]] = max(float(x), best.get(items[j], float(x)))
        keys = {j: (2, best[items[j]], s[j]) for j in range(len(s))
                if j in head or (s[j] == kth and items[j] in best)}
        last = min(keys.values())
        for j in range(len(s)):
            if j not in keys:
                keys[j] = last if s[j] == kth and last[2] == kth else (0, 0.0, s[j])
        rank = {key: i for i, key in enumerate(sorted(set(keys.values())))}
        out.append([rank[keys[j]] for j in range(len(s))])
    return out


def dense_ranks(rows):
    return [np.unique(np.asarray(r), return_inverse=True)[1].reshape(-1).tolist() for r in rows]


@pytest.mark.parametrize("ties", ["pessimistic", "index"])
@pytest.mark.parametrize("mode", ["top1", "resort"])
def test_reranked_rows_equal_the_full_sort_reference_with_ties(mode, ties):
    from tests.eval.ranking_reference import random_tied_rows
    from unime.eval.runners import Reranking, _rerank_scores

    rng = np.random.default_rng(21)
    for levels in (2, 5, 100_000):
        chunk = random_tied_rows(rng, 12, 40, levels, np.float32)  # a global task's chunk: one matrix
        rows = [r[:n] for r, n in zip(chunk, rng.integers(1, 41, len(chunk)))]  # MMEB / qrels: rows of any length
        queries = list(range(len(chunk)))
        for k in (1, 2, 5, 40, 60):
            for scores in (chunk, rows):
                for lists in ([list(range(len(s))) for s in scores],  # every candidate a distinct item
                              [[j % 7 for j in range(len(s))] for s in scores]):  # items listed several times
                    want = reference_rerank_ranks(scores, Reranking(TiedScoresReranker(), k, mode), queries, lists,
                                                  ties)
                    got = _rerank_scores(scores, Reranking(TiedScoresReranker(), k, mode), queries, lists, ties=ties)
                    assert dense_ranks(got) == want


@pytest.mark.parametrize("mode", ["top1", "resort"])
def test_reranking_a_pool_sorts_only_each_rows_top_k(mode, monkeypatch):
    from tests.eval.ranking_reference import forbid_pool_sized_sort
    from unime.eval.runners import Reranking, _rerank_scores

    chunk = np.random.default_rng(4).standard_normal((8, 3000)).astype(np.float32)
    queries, lists = list(range(8)), [list(range(3000))] * 8
    want = reference_rerank_ranks(chunk, Reranking(TiedScoresReranker(), 5, mode), queries, lists, "pessimistic")
    forbid_pool_sized_sort(monkeypatch)  # the reference above sorted each row of 3,000
    got = _rerank_scores(chunk, Reranking(TiedScoresReranker(), 5, mode), queries, lists, ties="pessimistic")
    assert dense_ranks(got) == want
    rows = _rerank_scores(list(chunk), Reranking(TiedScoresReranker(), 5, mode), queries, lists, ties="pessimistic")
    assert dense_ranks(rows) == want
