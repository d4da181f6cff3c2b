"""The demo's video rows (`unime.demo.video_rows`): the world stage's video options, one `unime eval` per trained
embedder on the world's MMEB-V2 video tasks, and the report table — whose Hit@1 cells equal Hit@1 computed
here from an embedder's vectors, and whose chance row equals 1 / candidates counted by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("av")


def _hit_at_1(scores: np.ndarray, label: int) -> float:
    """1 when the label scores above every other candidate (a tie counts against it)."""
    others = np.delete(scores, label)
    return float(scores[label] > others.max())


def test_demo_video_rows_equal_hit_at_1_computed_here(tmp_path, tiny_model_dir):
    from unime.cli import main
    from unime.data.mmeb_v2 import v2_row_from_dict
    from unime.data.video import FRAME_CACHE
    from unime.demo.pipeline import Demo
    from unime.demo.run import DemoSettings
    from unime.demo.video_rows import COLUMNS, run_video_evals, video_section, world_args
    from unime.models.embedder import Embedder

    settings = DemoSettings.preset("quick")
    assert settings.video_clips == 4 and DemoSettings().video_clips == 24
    messages: list[str] = []
    demo = Demo(tmp_path / "demo", settings, progress=messages.append, timings=tmp_path / "t.json")
    world = demo.world
    # the world stage's command with its video options
    assert main(["data", "synth", "--out", str(world), "--size", "tiny",
                 *(str(a) for item in world_args(demo).items() for a in item)]) == 0
    model = tiny_model_dir("qwen2_vl")
    for outs in demo.embedder_runs().values():  # every row "trained": the same tiny model
        for out in outs:
            out.mkdir(parents=True)
            (out / "merged").symlink_to(model, target_is_directory=True)
    demo.p("models").mkdir(parents=True)
    demo.p("models", "embedder-base").symlink_to(model, target_is_directory=True)  # the embedders' start: the same
    FRAME_CACHE.clear()
    commands: list[str] = []
    run_video_evals(demo, commands)
    assert len(commands) == 4 and all("eval_tasks_video.yaml" in c and "--video-frames 8" in c for c in commands)
    from unime.demo.report import ROW_TITLES, _fmt

    md = video_section(demo, ROW_TITLES, _fmt)
    table = [line for line in md if line.startswith("| ")]
    assert table[0].startswith("| Model | Video | CLS | QA | RET | MRET")

    # Hit@1 per task, computed here from the embedder's vectors
    emb = Embedder.from_pretrained(model, device="cpu", dtype="fp32", data_root=world)
    want: dict[str, float] = {}
    chance: dict[str, float] = {}
    for task in ("clip_cls", "clip_qa", "clip_ret", "clip_moment"):
        raw = [json.loads(line) for line in (world / "eval" / "video" / f"{task}.jsonl").read_text().splitlines()]
        rows = [v2_row_from_dict(r) for r in raw]
        hits, rand = [], []
        if task == "clip_ret":  # global: every query ranks the pool of all rows' candidates
            pool = {c.name: c.item for r in rows for c in r.candidates}
            names = sorted(pool)
            pv = emb.encode([pool[n] for n in names])
            for r in rows:
                s = pv @ emb.encode([r.query])[0]
                hits.append(_hit_at_1(s, names.index(r.labels[0])))
                rand.append(1 / len(names))
        else:
            for r in rows:
                cv = emb.encode([c.item for c in r.candidates])
                s = cv @ emb.encode([r.query])[0]
                hits.append(_hit_at_1(s, [c.name for c in r.candidates].index(r.labels[0])))
                rand.append(1 / len(r.candidates))
        want[task], chance[task] = float(np.mean(hits)), float(np.mean(rand))
    meta = {"classification": "clip_cls", "vqa": "clip_qa", "retrieval": "clip_ret", "moment_retrieval": "clip_moment"}
    assert len(table) == 6  # header, start, baseline, hn, soft, chance
    for line in table[1:5]:  # start, baseline, hn, soft: the same model, the same numbers
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] == f"{100 * np.mean(list(want.values())):.1f}", line
        assert cells[2:] == [f"{100 * want[meta[g]]:.1f}" for g, _ in COLUMNS], line
    chance_cells = [c.strip() for c in table[5].strip("|").split("|")]
    assert chance_cells[0] == "Chance (random ranking)"
    assert chance_cells[2:] == [f"{100 * chance[meta[g]]:.1f}" for g, _ in COLUMNS]
    # by hand: 4 motions; the pool of 4 eval clips; a clip's 2 halves + halves of the 3 other clips
    assert (chance["clip_cls"], chance["clip_ret"], chance["clip_moment"]) == (0.25, 0.25, 0.2)
    assert any("video eval run(s) took" in line for line in md)
    # a second call finds every summary and runs nothing
    again: list[str] = []
    run_video_evals(demo, again)
    assert again == []
    # the learnability reference, trained on image + video records, evaluated on the video tasks too (--also):
    # its row shows the scores of its own video summary
    from unime.demo.video_rows import training_records, video_eval_dir

    ref_video = video_eval_dir(demo, "reference", 0)
    assert main(["eval", "reference", "--tasks", str(world), "--records", str(training_records(demo)),
                 "--data-root", str(world), "--out", str(tmp_path / "ref"), "--max-steps", "3", "--image-size", "32",
                 "--also", str(world / "eval_tasks_video.yaml"), str(ref_video)]) == 0
    summary = json.loads((ref_video / "summary.json").read_text())
    plain = json.loads((tmp_path / "ref" / "summary.json").read_text())
    assert summary["meta"]["model_id"] == plain["meta"]["model_id"]
    video = summary["aggregates"]["mmeb_v2"]["modalities"]["video"]
    row = next(line for line in video_section(demo, ROW_TITLES, _fmt) if "Learnability reference" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:] == [f"{100 * video['score']:.1f}"] + [f"{100 * video['meta_tasks'][g]['score']:.1f}"
                                                            for g, _ in COLUMNS]
    FRAME_CACHE.clear()


def test_demo_without_video_has_no_video_rows(tmp_path):
    from unime.demo.pipeline import Demo
    from unime.demo.run import DemoSettings
    from unime.demo.video_rows import video_eval_done, video_section, world_args

    settings = DemoSettings.preset("quick")
    settings.video_clips = 0
    demo = Demo(tmp_path / "demo", settings, progress=lambda m: None, timings=tmp_path / "t.json")
    assert world_args(demo) == {} and video_eval_done(demo) == [] and video_section(demo, {}, str) == []


def test_demo_trains_and_mines_on_image_and_video_records(tmp_path):
    """`training_records`: the world's image records followed by its video records, byte for byte, written once
    (a second call leaves the file alone); the embedder and mining commands get the eval's frame sampling; with
    `video_train` off, or no video in the world, the image records file itself."""
    from unime.cli import main
    from unime.data.io import read_records
    from unime.demo.pipeline import Demo
    from unime.demo.run import DemoSettings
    from unime.demo.video_rows import training_records, video_options, world_args

    settings = DemoSettings.preset("quick")
    assert settings.video_train and DemoSettings().video_train
    demo = Demo(tmp_path / "demo", settings, progress=lambda m: None, timings=tmp_path / "t.json")
    world = demo.world
    assert main(["data", "synth", "--out", str(world), "--size", "tiny",
                 *(str(a) for item in world_args(demo).items() for a in item)]) == 0
    images, video = world / "train" / "records.jsonl", world / "train" / "video_records.jsonl"
    path = training_records(demo)
    assert path == demo.p("train_records.jsonl")
    assert path.read_bytes() == images.read_bytes() + video.read_bytes()
    recs = read_records(path)
    n_images = len(read_records(images))
    assert len(recs) == n_images + len(read_records(video)) and n_images > 0
    def has_video(r):
        return bool(r.query.video or r.positive.video)

    assert all(map(has_video, recs[n_images:])) and not any(map(has_video, recs[:n_images]))
    stamp = path.stat().st_mtime_ns
    assert training_records(demo) == path and path.stat().st_mtime_ns == stamp  # unchanged content: not rewritten
    assert video_options(demo) == {"--video-frames": 8}

    settings.video_train = False
    assert training_records(demo) == images and video_options(demo) == {}
    settings.video_train, settings.video_clips = True, 0
    assert training_records(demo) == images and video_options(demo) == {}
