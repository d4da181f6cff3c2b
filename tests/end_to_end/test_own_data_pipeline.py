"""A user's own captioned folder, end to end, with only the command line: `data import` → `train embedder`
(plain pairs, no loss flags) → `train judge` (held-out check) → `mine` (label health) → `train embedder
--loss symmetric_kl` (refused on fallback labels unless allowed) → `train reranker` → `eval --rerank`.
No file is written by hand and no command after the import is given --data-root. Tiny budgets: this checks
the plumbing and the reports, not the quality of the models."""

from __future__ import annotations

import json

import pytest

from tests.captioned_folder import make_captioned_folder
from unime.cli import main

pytestmark = pytest.mark.slow


def test_captioned_folder_through_the_whole_pipeline(tiny_model_dir, tmp_path, capsys):
    base = tiny_model_dir("qwen2_vl")
    photos, captions = make_captioned_folder(tmp_path / "mine")
    data, run = tmp_path / "imported", tmp_path / "runs"
    cpu = ["--device", "cpu"]

    assert main(["data", "import", "--captions", str(captions), "--images", str(photos), "--out", str(data),
                 "--eval-candidates", "8"]) == 0
    records = data / "train" / "records.jsonl"

    # plain pairs: in-batch InfoNCE chosen without any loss flag
    assert main(["train", "embedder", "--model", base, "--records", str(records), "--out", str(run / "emb"),
                 "--full", "--lr", "5e-4", "--steps", "12", "--batch-size", "8", "--save-steps", "100", *cpu]) == 0
    cfg = json.loads((run / "emb" / "train_config.json").read_text())
    assert (cfg["loss"], cfg["hard_negatives"], cfg["data_root"]) == ("infonce", 0, None)

    # the judge proves itself on held-out records
    assert main(["train", "judge", "--model", base, "--records", str(data / "train" / "judge.jsonl"),
                 "--out", str(run / "judge"), "--full", "--lr", "2e-3", "--steps", "12", "--batch-size", "8",
                 "--holdout", "0.2", "--eval-steps", "6", *cpu]) == 0
    evals = [json.loads(x) for x in (run / "judge" / "judge_eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [6, 12]
    final = evals[-1]
    # whole queries are held out (round(0.2 × distinct queries)), with all pairs (1 Yes + 3 No) of their records
    from collections import Counter

    from unime.data.io import read_records

    per_query = Counter(r.query.key for r in read_records(data / "train" / "judge.jsonl"))
    n_held = round(0.2 * len(per_query))
    assert final["pairs"] % 4 == 0 and 4 * n_held <= final["pairs"] <= 4 * n_held * max(per_query.values())
    assert 0.0 <= final["auc"] <= 1.0
    meta = json.loads((run / "judge" / "unime_reranker.json").read_text())
    assert meta["heldout"]["auc"] == final["auc"]
    out = capsys.readouterr().out
    assert "held-out (step 12):" in out and f"AUC {final['auc']:.3f}" in out

    # any judge can be checked on the held-out labelled pairs the import wrote
    scores = run / "judge_scores.jsonl"
    assert main(["judge", "--pairs", str(data / "eval" / "judge_pairs.jsonl"), "--judge", str(run / "judge" / "merged"),
                 "--out", str(scores), "--label-column", "label", *cpu]) == 0
    check = json.loads((run / "judge_scores.metrics.json").read_text())
    assert check["pairs"] == 5 * 2 * 4 and (run / "judge_scores.calibration.png").is_file()
    assert f"AUC {check['auc']:.3f}" in capsys.readouterr().out

    # mining reports label health; the embedder-facing output finds its images by itself
    assert main(["mine", "--records", str(records), "--embedder", str(run / "emb" / "merged"), "--judge",
                 str(run / "judge" / "merged"), "--out", str(run / "mined"), "--k", "8", "--count", "4", *cpu]) == 0
    stats = json.loads((run / "mined" / "stats.json").read_text())
    health = stats["label_health"]
    out = capsys.readouterr().out
    from unime.mining.health import format_health

    assert f"label health: {format_health(health)}" in out
    assert f"{health['fallback_queries']}/{health['queries']}" in out
    assert ("WARNING" in out) == bool(health["warnings"])
    mined = run / "mined" / "mined.parquet"

    soft = ["train", "embedder", "--model", base, "--records", str(mined), "--loss", "symmetric_kl",
            "--hard-negatives", "4", "--out", str(run / "soft"), "--full", "--lr", "5e-4", "--steps", "4",
            "--batch-size", "4", "--save-steps", "100", *cpu]
    if health["fallback_share"] > 0.5:
        capsys.readouterr()
        assert main(soft) == 2  # the one-line error contract
        assert "--allow-fallback-labels" in capsys.readouterr().err
        soft.append("--allow-fallback-labels")
    assert main(soft) == 0

    # the ground-truth diagnostic on the import's own labels
    assert main(["mine", "--records", str(records), "--embedder", str(run / "emb" / "merged"), "--judge",
                 str(data / "train" / "qrels.jsonl"), "--backend", "oracle", "--out", str(run / "mined_oracle"),
                 "--k", "8", "--count", "4", *cpu]) == 0
    oracle = json.loads((run / "mined_oracle" / "stats.json").read_text())["label_health"]
    assert oracle["separation"] > 0.9 and oracle["fallback_share"] < 0.2

    reranker = ["train", "reranker", "--model", base, "--records", str(mined), "--out", str(run / "reranker"),
                "--full", "--lr", "2e-3", "--steps", "4", "--batch-size", "2", "--negatives", "2", *cpu]
    if health["fallback_share"] == 1.0:
        # no surviving negative anywhere: the reranker refuses, naming the count, and trains on the oracle's records
        capsys.readouterr()
        assert main(reranker) == 2
        assert f"all {health['queries']} records mined by the fallback" in capsys.readouterr().err
        reranker[reranker.index(str(mined))] = str(run / "mined_oracle" / "mined.parquet")
    assert main(reranker) == 0
    capsys.readouterr()
    assert main(["eval", "--model", str(run / "soft" / "merged"), "--tasks", str(data), "--out", str(run / "eval"),
                 "--rerank", str(run / "reranker"), "--topk", "3", "--no-cache", *cpu]) == 0
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert set(summary["tasks"]) == {"photos_i2t", "photos_t2i", "photos_cls"}
    for name, m in summary["tasks"].items():
        assert {"precision@1", "recall@5", "recall@10", "chance@1"} <= set(m)
        assert summary["reranked"]["tasks"][name]["precision@1"] is not None
    assert summary["task_counts"]["photos_cls"]["candidates_per_query_max"] == 3
    print("\n" + (run / "eval" / "results.md").read_text())
    print(json.dumps({"judge_heldout": final, "mining": health, "oracle_mining": oracle}, indent=1))
