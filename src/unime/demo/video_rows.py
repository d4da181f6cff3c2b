"""The demo's video rows: every embedder the demo trains, evaluated on the world's MMEB-V2 video tasks
(`unime eval --tasks WORLD/eval_tasks_video.yaml`), and the report section that lays them out like the
MMEB-V2 leaderboard's video columns (Video overall, CLS, QA, RET, MRET; Hit@1).

With `DemoSettings.video_train` (the default) the embedders are trained, and mining (retrieval, judge, audit)
runs, on the world's image records plus its video training records (train/video_records.jsonl, clips disjoint
from the eval clips): `training_records` writes the two into one file in the demo folder, and the learnability
reference trains on the same file and is evaluated on the video tasks too (its row in the video table). Without it
they see images only and the video rows show what image training gives on clips. Switched by
`DemoSettings.video_clips` (0 = a world without video and no video rows).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from unime.demo.run import DemoRun

VIDEO_TASKS_FILE = "eval_tasks_video.yaml"
COLUMNS = (("classification", "CLS"), ("vqa", "QA"), ("retrieval", "RET"), ("moment_retrieval", "MRET"))


def world_args(demo: "DemoRun") -> dict:
    """`unime data synth` options of the video part (none when video is off)."""
    s = demo.s
    return {"--video-clips": s.video_clips, "--video-frames": s.video_frames} if s.video_clips > 0 else {}


def trains_on_video(demo: "DemoRun") -> bool:
    return demo.s.video_clips > 0 and demo.s.video_train


def training_records(demo: "DemoRun") -> Path:
    """The records the demo's embedders are trained and mined on: the world's image records, followed by its video
    training records when `trains_on_video` (one JSONL in the demo folder, rewritten only when its content would
    change, atomically)."""
    images = demo.world / "train" / "records.jsonl"
    video = demo.world / "train" / "video_records.jsonl"
    if not trains_on_video(demo) or not video.is_file():
        return images
    head = images.read_bytes()
    content = head + (b"" if not head or head.endswith(b"\n") else b"\n") + video.read_bytes()
    out = demo.p("train_records.jsonl")
    if not out.is_file() or out.read_bytes() != content:
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_bytes(content)
        os.replace(tmp, out)
    return out


def video_options(demo: "DemoRun") -> dict:
    """The frame sampling of mining and of the Embed-RL stages (`unime.demo.embed_rl`: the teacher's key frames are
    numbered among the frames its readers take), the same as the video evals'; the demo's embedder trainers use the
    default, 8 frames, which `DemoSettings.video_frames` equals."""
    return {"--video-frames": demo.s.video_frames} if trains_on_video(demo) else {}


def video_eval_dir(demo: "DemoRun", row: str, seed: int) -> Path:
    return demo.p("eval", "video", f"{row}_s{seed}")


def video_eval_done(demo: "DemoRun") -> list[Path]:
    """The summaries the eval stage must have written when video is on (for its resume check)."""
    if demo.s.video_clips <= 0:
        return []
    return [video_eval_dir(demo, row, seed) / "summary.json" for row, seed, _ in demo.evaluated_models()]


def run_video_evals(demo: "DemoRun", commands: list[str]) -> None:
    """`unime eval` of every trained embedder on the video tasks (part of the demo's eval stage)."""
    from unime.demo.run import write_json

    tasks = demo.world / VIDEO_TASKS_FILE
    if demo.s.video_clips <= 0:
        return
    if not tasks.is_file():
        demo.say(f"[demo] no video rows: {tasks} is missing (the world was generated without video; "
                 "re-run with --fresh to regenerate it)")
        return
    t0 = time.perf_counter()
    calls = [("eval", {"--model": model, "--tasks": tasks, "--out": video_eval_dir(demo, row, seed),
                       "--cache-dir": demo.p("cache", "eval"), "--video-frames": demo.s.video_frames,
                       "--device": demo.device})
             for row, seed, model in demo.evaluated_models()
             if not demo.evaluated(video_eval_dir(demo, row, seed))]
    demo.run_commands(calls, commands)
    ran = len(calls)
    if ran:
        timing = demo.p("eval", "video", "timing.json")
        demo.claim_outputs([timing])
        # atomic: the report reads it, and a resumed eval stage whose video evals are all done does not rewrite it
        write_json(timing, {"runs": ran, "seconds": round(time.perf_counter() - t0, 1)})


def chance_hit_at_1(world: Path) -> dict[str, float]:
    """Hit@1 of a random ranking per video meta-task, from the rows: mean over queries of labels / candidates
    (global tasks: over the pool of all rows' distinct candidates)."""
    import yaml

    cfg = yaml.safe_load((world / VIDEO_TASKS_FILE).read_text())
    out: dict[str, list[float]] = {}
    for t in cfg["tasks"]:
        rows = [json.loads(line) for line in (world / t["path"]).read_text().splitlines() if line.strip()]
        pool = {n for r in rows for n in r["dataset_infos"]["cand_names"]}
        vals = []
        for r in rows:
            labels = r["dataset_infos"]["label_name"]
            k = len(labels) if isinstance(labels, list) else 1
            n = len(pool) if t.get("eval_type") == "global" else len(r["dataset_infos"]["cand_names"])
            vals.append(k / n)
        out.setdefault(t["meta_task"], []).append(float(np.mean(vals)))
    return {m: float(np.mean(v)) for m, v in out.items()}


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def video_section(demo: "DemoRun", titles: dict[str, str], fmt: Callable[[list[float]], str]) -> list[str]:
    """The report's video rows (empty when the demo ran without video): one row per trained embedder (`titles`:
    row name → title), cells formatted by `fmt` (the report's mean ± interval over seeds)."""
    if demo.s.video_clips <= 0:
        return []
    rows = []
    reference = "reference"  # the learnability reference's video evals (when it trained on the video records too)
    for row in [*dict.fromkeys(row for row, _, _ in demo.evaluated_models()), reference]:
        per_seed = []
        for seed in demo.s.seeds:
            summ = _load(video_eval_dir(demo, row, seed) / "summary.json")
            video = ((summ or {}).get("aggregates", {}).get("mmeb_v2") or {}).get("modalities", {}).get("video")
            if video:
                per_seed.append({"video": video["score"],
                                 **{g: v["score"] for g, v in video["meta_tasks"].items()}})
        if per_seed:
            rows.append((titles.get(row, "Learnability reference (CNN+GRU dual encoder, same wall budget)"
                                    if row == reference else row), per_seed))
    if not rows:
        return []
    world = demo.world
    manifest = json.loads((world / "world.json").read_text())
    counts = manifest["counts"].get("video", {})
    md = ["## Video (layout of the MMEB-V2 leaderboard's video columns)", "",
          f"Hit@1 ×100 on the world's generated clips ({counts.get('clips', {}).get('eval', '?')} eval clips, "
          f"{manifest.get('video', {}).get('frames', '?')} frames of {manifest.get('video', {}).get('size', '?')} px "
          "each; one query per clip and task): classification of the first motion (CLS), questions about the "
          "clip (QA), text → clip over all eval clips (RET), and which part of a clip a sentence describes among "
          "both parts and parts of other clips (MRET). " + (
              "The embedders were trained, and the hard negatives mined, on the image and the video training "
              "records (other clips)." if trains_on_video(demo) else
              "The embedders were trained on the image records only."), "",
          "| Model | Video | " + " | ".join(t for _, t in COLUMNS) + " |", "|---|" + "---:|" * (1 + len(COLUMNS))]
    for title, per_seed in rows:
        cells = [fmt([r["video"] for r in per_seed])] + [fmt([r[g] for r in per_seed if g in r]) for g, _ in COLUMNS]
        md.append(f"| {title} | " + " | ".join(cells) + " |")
    chance = chance_hit_at_1(world)
    md.append("| Chance (random ranking) | " + f"{100 * float(np.mean(list(chance.values()))):.1f} | "
              + " | ".join(f"{100 * chance[g]:.1f}" if g in chance else "–" for g, _ in COLUMNS) + " |")
    timing = _load(demo.p("eval", "video", "timing.json"))
    md += ["", f"Video cost in this run: {counts.get('files', '?')} .mp4 files written with the world; "
           + (f"{timing['runs']} video eval run(s) took {timing['seconds']:.0f} s." if timing else
              "the video evals were done before.") + " Every clip is real MPEG-4 decoded with PyAV "
           "(`unime.data.video`).", ""]
    return md
