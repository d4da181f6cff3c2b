"""Video end to end on the tiny models: records with .mp4 clips → unime mine (retrieval + judge fast path)
→ train embedder on the mined set → evaluate an MMEB-V2 video task (slow tier)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from tests.data.helpers import write_clip
from unime.data.io import read_records, write_records
from unime.data.items import Item, Record

CAPTIONS = ["a black square", "a dark red square", "a red square", "a bright red square", "a pink square",
            "a white square"]


@pytest.mark.slow
def test_video_through_mine_train_eval(tmp_path, tiny_model_dir):
    from unime.eval.runners import EvalConfig, evaluate_checkpoint
    from unime.mining.config import MineConfig
    from unime.mining.pipeline import run_mining
    from unime.train.embedder_trainer import EmbedderTrainingConfig, train_embedder

    data = tmp_path / "data"
    (data / "clips").mkdir(parents=True)
    records = []
    for i, cap in enumerate(CAPTIONS):
        write_clip(data / f"clips/v{i}.mp4", n=10 + 2 * i, fps=5 + i, shift=40 * i)
        clip = Item(text="Understand the content of the provided video.", video=(f"clips/v{i}.mp4",))
        records.append(Record(query=Item(text=f"Find a video that contains the following visual content: {cap}"),
                              positive=clip, dataset="t2v", id=f"t2v-{i}"))
        records.append(Record(query=clip, positive=Item(text=cap), dataset="v2t", id=f"v2t-{i}"))
    write_records(records, data / "records.jsonl")

    mined = run_mining(MineConfig(records=str(data / "records.jsonl"), embedder=tiny_model_dir("qwen2_vl"),
                                  judge=tiny_model_dir("qwen2_5_vl"), out=str(tmp_path / "mined"), k=4, count=3,
                                  interval=2, shard_size=4, device="cpu", judge_chunk_size=4))
    out = tmp_path / "mined"
    stats = json.loads((out / "stats.json").read_text())
    mined_records = read_records(out / "mined.parquet")
    # a query is dropped only when retrieval left it no candidate (the δ rule); every other one is mined
    assert len(mined_records) == len(records) - stats["sampling"]["counts"]["dropped"] >= len(records) // 2
    # every judged pair went through the fast path (no per-pair fallback for video), videos on both sides
    judge = stats["judge"]
    assert judge["pairs_scored_fast"] == judge["pairs_requested"] > 0 and judge["pairs_scored_reference"] == 0
    t2v = [r for r in mined_records if r.dataset == "t2v"]
    assert t2v and all(n.video and n.video[0].startswith("clips/") for r in t2v for n in r.negatives)
    assert all(0 <= s <= 1 for r in mined_records for s in [r.positive_score, *r.negative_scores])
    assert not (out / "mined.json").exists()  # the released JSON format holds no video
    assert mined is not None

    trained = train_embedder(EmbedderTrainingConfig(
        model=tiny_model_dir("qwen2_vl"), out=str(tmp_path / "emb"), records=str(out / "mined.parquet"),
        data_root=str(data), hard_negatives=3, batch_size=4, steps=3, lr=2e-3, warmup=0, lora_r=8, lora_alpha=16,
        lora_dropout=0.0, logging_steps=1, save_steps=1000, device="cpu", seed=0,
        allow_fallback_labels=True))  # the untrained tiny judge sends queries to the fallback: plumbing only
    losses = [row["loss"] for row in trained.log_history if "loss" in row]
    assert len(losses) == 3 and all(np.isfinite(losses))  # three optimiser steps on video batches
    model = trained.merged
    assert (model / "config.json").is_file()

    rows = [{"query_text": [f"Find a video that contains the following visual content: {cap}"], "query_image": [None],
             "cand_text": ["<|vision_start|><|video_pad|><|vision_end|> Understand the content of the provided video."],
             "cand_image": [{"paths": [f"clips/v{i}.mp4"]}],
             "dataset_infos": {"cand_names": [f"v{i}"], "label_name": f"v{i}"}} for i, cap in enumerate(CAPTIONS)]
    (data / "eval").mkdir()
    (data / "eval/t2v.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"tasks": [{"name": "clips_ret", "format": "mmeb_v2", "path": "eval/t2v.jsonl", "modality": "video",
                      "meta_task": "retrieval", "eval_type": "global"}]}
    (data / "eval_tasks.yaml").write_text(yaml.safe_dump(cfg))
    summary = evaluate_checkpoint(EvalConfig(model=str(model), tasks=str(data / "eval_tasks.yaml"),
                                             out=str(tmp_path / "eval"), device="cpu", dtype="float32",
                                             cache_dir=str(tmp_path / "cache")), show_progress=False)
    hit = summary["tasks"]["clips_ret"]["hit@1"]
    assert 0.0 <= hit <= 1.0 and summary["aggregates"]["mmeb_v2"]["modalities"]["video"]["datasets"] == 1
    assert summary["encoding"]["distinct_items"] == 2 * len(CAPTIONS)


def test_unime_mine_and_judge_sample_video_with_the_video_options(tmp_path, tiny_model_dir):
    """`unime mine --video-frames 4 --video-max-pixels …` on video records: the retrieval similarities and the
    judge scores it writes equal an embedder and a per-pair judge loaded here with the same `VideoSampling`
    (and differ from the 8-frame default, so the options reached both); `unime judge` takes them too."""
    import pyarrow.parquet as pq

    from unime.cli import main
    from unime.data.video import FRAME_CACHE, VideoSampling
    from unime.models.embedder import Embedder
    from unime.models.judge import JudgeScorer

    data = tmp_path / "data"
    (data / "clips").mkdir(parents=True)
    records = []
    for i, cap in enumerate(CAPTIONS[:4]):
        write_clip(data / f"clips/v{i}.mp4", n=12 + 2 * i, fps=6, shift=50 * i)
        records.append(Record(query=Item(text=f"Find a video that contains the following visual content: {cap}"),
                              positive=Item(text="Understand the content of the provided video.",
                                            video=(f"clips/v{i}.mp4",)), dataset="t2v", id=f"t2v-{i}"))
    write_records(records, data / "records.jsonl")
    embedder, judge = tiny_model_dir("qwen2_vl"), tiny_model_dir("qwen2_5_vl")
    FRAME_CACHE.clear()
    out = tmp_path / "mined"
    assert main(["mine", "--records", str(data / "records.jsonl"), "--embedder", embedder, "--judge", judge,
                 "--out", str(out), "--k", "3", "--count", "2", "--interval", "1", "--device", "cpu",
                 "--video-frames", "4", "--video-max-pixels", str(4 * 64 * 48)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["config"]["video_frames"], manifest["config"]["video_max_pixels"]) == (4, 4 * 64 * 48)
    audit = pq.read_table(out / "audit.parquet").to_pylist()
    assert len(audit) >= 4  # the δ rule leaves out candidates too close to the positive; the rest are checked

    sampling = VideoSampling(num_frames=4, max_video_pixels=4 * 64 * 48)
    pool = [r.positive for r in records]  # the default pool: the positives, all distinct, in order
    emb = Embedder.from_pretrained(embedder, device="cpu", dtype="fp32", data_root=data, video_sampling=sampling)
    q = emb.encode([r.query for r in records])
    p = emb.encode(pool)
    ref = JudgeScorer.from_pretrained(judge, device="cpu", data_root=data, video_sampling=sampling)
    for row in audit:
        i, j = row["query_index"], row["pool_index"]
        assert row["similarity"] == pytest.approx(float(q[i] @ p[j]), abs=1e-4)
        assert row["judge_score"] == pytest.approx(ref.score_pair(records[i].query, pool[j]), abs=1e-4)
        assert row["positive_score"] == pytest.approx(ref.score_pair(records[i].query, records[i].positive), abs=1e-4)
    eight = Embedder.from_pretrained(embedder, device="cpu", dtype="fp32", data_root=data).encode(pool)
    assert not np.allclose(eight, p, atol=1e-4)  # the default 8 frames would have given other similarities

    pairs = data / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"id": f"p{i}", "query": records[i].query.to_dict(),
                                         "candidate": pool[(i + 1) % 4].to_dict()}) + "\n" for i in range(2)))
    assert main(["judge", "--pairs", str(pairs), "--judge", judge, "--out", str(tmp_path / "scores.jsonl"),
                 "--device", "cpu", "--video-frames", "4", "--video-max-pixels", str(4 * 64 * 48)]) == 0
    got = [json.loads(line)["score"] for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert got == pytest.approx([ref.score_pair(records[i].query, pool[(i + 1) % 4]) for i in range(2)], abs=1e-4)
    FRAME_CACHE.clear()


@pytest.mark.slow
def test_mining_audit_on_the_demo_world_video_records(tmp_path, tiny_model_dir, capsys):
    """`unime mine --audit --world` on the generated world's video records: the audit rows carry the world's
    ground-truth relevance of each retrieved clip / segment / answer (recomputed here), every positive is fully
    relevant, and the audit summary covers the four video datasets."""
    import pyarrow.parquet as pq

    from unime.cli import main
    from unime.data.synth import VideoSizes, World, generate_world
    from unime.data.video import FRAME_CACHE

    world_dir = tmp_path / "world"
    generate_world(world_dir, sizes="tiny", video=VideoSizes(eval_clips=2, train_clips=4))
    world = World.load(world_dir)
    records_path = world_dir / "train" / "video_records.jsonl"
    records = read_records(records_path)
    assert len(records) == 16
    FRAME_CACHE.clear()
    out = tmp_path / "mined"
    assert main(["mine", "--records", str(records_path), "--embedder", tiny_model_dir("qwen2_vl"),
                 "--judge", tiny_model_dir("qwen2_5_vl"), "--out", str(out), "--world", str(world_dir), "--audit",
                 "--k", "4", "--count", "2", "--interval", "1", "--device", "cpu", "--video-frames", "4"]) == 0
    audit = pq.read_table(out / "audit.parquet").to_pylist()
    pool = []
    for r in records:  # the default pool: the distinct positives in order
        if all(p.key != r.positive.key for p in pool):
            pool.append(r.positive)
    assert audit and {r["dataset"] for r in audit} == {"clip_cls", "clip_qa", "clip_ret", "clip_moment"}
    for row in audit:
        rec = records[row["query_index"]]
        assert row["relevance"] == world.relevance(rec.query, pool[row["pool_index"]])
        assert row["positive_relevance"] == 1.0
    summary = json.loads((out / "audit.json").read_text())
    assert set(summary["by_dataset"]) == {"clip_cls", "clip_qa", "clip_ret", "clip_moment"}
    audit_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("judge audit:"))
    figure = (lambda x: f"{x:.3f}" if isinstance(x, float) else str(x))  # three decimals, as printed
    assert audit_line == (f"judge audit: ROC-AUC {figure(summary['auc_judge_score'])}, at beta={summary['beta']}: "
                          f"precision {figure(summary['at_beta']['precision'])}, recall "
                          f"{figure(summary['at_beta']['recall'])}")
    FRAME_CACHE.clear()


@pytest.mark.parametrize("command", ["embedder", "judge"])
def test_train_commands_sample_video_with_the_video_options(tmp_path, tiny_model_dir, monkeypatch, command):
    """`unime train embedder|judge --video-frames 4`: every clip the trainer loads (input check and batches) is
    sampled to 4 frames; without the option, to the 8-frame default; the options are in train_config.json."""
    from unime.cli import main
    from unime.data.images import ImageLoader
    from unime.data.video import FRAME_CACHE

    data = tmp_path / "data"
    (data / "clips").mkdir(parents=True)
    records = []
    for i, cap in enumerate(CAPTIONS[:4]):
        write_clip(data / f"clips/v{i}.mp4", n=16, fps=8, shift=50 * i)
        clip = Item(text="Understand the content of the provided video.", video=(f"clips/v{i}.mp4",))
        negatives = (Item(text=CAPTIONS[(i + 1) % 4]),)
        records.append(Record(query=clip, positive=Item(text=cap), negatives=negatives, dataset="v2t", id=f"v{i}"))
    write_records(records, data / "records.jsonl")
    frames_seen: list[int] = []
    real = ImageLoader.load_video

    def spy(self, refs, **kw):
        video = real(self, refs, **kw)
        frames_seen.append(len(video.frames))
        return video

    monkeypatch.setattr(ImageLoader, "load_video", spy)
    common = ["--records", str(data / "records.jsonl"), "--data-root", str(data), "--steps", "1",
              "--batch-size", "2", "--device", "cpu", "--seed", "0"]
    if command == "embedder":
        common += ["--model", tiny_model_dir("qwen2_vl"), "--lora-r", "4", "--hard-negatives", "1"]
    else:
        common += ["--model", tiny_model_dir("qwen2_5_vl"), "--lora-r", "4", "--holdout", "0"]
    for out, extra, want in (("four", ["--video-frames", "4"], 4), ("default", [], 8)):
        FRAME_CACHE.clear()
        frames_seen.clear()
        assert main(["train", command, *common, "--out", str(tmp_path / out), *extra]) == 0
        assert frames_seen and set(frames_seen) == {want}, (out, frames_seen)
        saved = json.loads((tmp_path / out / "train_config.json").read_text())
        assert saved["video_frames"] == (4 if extra else None)
    FRAME_CACHE.clear()
