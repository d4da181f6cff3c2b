"""What video adds to the default demo (`DemoSettings.video_clips`), measured in its two places:

1. the world stage: `unime data synth` with the demo's default sizes, without and with the video options
   (clips rendered and written as .mp4, rows, records);
2. the eval stage: one `unime eval` of an embedder of the default pretrained base's shape on the world's
   video tasks (the weights do not change the cost; fresh embedding cache, cold frame cache), times the
   demo's embedder evals (3 rows x 2 seeds by default, 5 x 2 with --oracle-judge).

    python bench/demo_video_cost.py                  # default demo settings
    python bench/demo_video_cost.py --clips 48       # another clip count

CPU seconds of this process (robust to other load on a shared machine; with one torch thread they are close
to wall seconds on an idle core), the world stage as the best of `--rounds` alternated runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=None, help="eval clips (default: DemoSettings().video_clips)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2, help="world generations timed per variant (best kept)")
    ap.add_argument("--evals", type=int, default=None, help="embedder evals in the demo (default: rows x seeds)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
    import torch

    torch.set_num_threads(args.threads)
    from unime.cli import main as cli
    from unime.demo.pipeline import Demo
    from unime.demo.run import DemoSettings
    from unime.demo.pretrain import PretrainRecipe
    from unime.demo.video_rows import world_args
    from unime.models.tiny import TinySize, build_tiny

    s = DemoSettings()
    if args.clips is not None:
        s.video_clips = args.clips
    with tempfile.TemporaryDirectory() as tmp:
        demo = Demo(os.path.join(tmp, "demo"), s, progress=lambda m: None, timings=os.path.join(tmp, "t.json"))
        n_evals = args.evals or sum(len(v) for v in demo.embedder_runs().values())
        base = ["data", "synth", "--size", s.world_size, "--train-scenes", str(s.world_train_scenes),
                "--train-per-task", str(s.world_train_per_task)]
        seconds: dict[str, float] = {}
        for _ in range(args.rounds):
            for name, extra in (("without video", []), ("with video", [str(a) for a in world_args(demo)])):
                out = os.path.join(tmp, name.replace(" ", "_"))
                t = time.process_time()
                assert cli([*base, "--out", out, *extra, "--overwrite"]) == 0
                seconds[name] = min(seconds.get(name, float("inf")), time.process_time() - t)
        world = os.path.join(tmp, "with_video")
        r = PretrainRecipe.preset(s.pretrain)
        model = build_tiny(s.family, os.path.join(tmp, "model"), size=TinySize(
            hidden=r.hidden, layers=r.layers, vision_depth=r.vision_depth, vision_hidden=r.vision_hidden,
            vision_heads=r.vision_heads, intermediate=2 * r.hidden, init_std=r.init_std))
        t, wall = time.process_time(), time.perf_counter()
        assert cli(["eval", "--model", str(model), "--tasks", os.path.join(world, "eval_tasks_video.yaml"),
                    "--out", os.path.join(tmp, "eval"), "--cache-dir", os.path.join(tmp, "cache"),
                    "--video-frames", str(s.video_frames), "--device", "cpu"]) == 0
        one_eval, one_wall = time.process_time() - t, time.perf_counter() - wall
    world_delta = seconds["with video"] - seconds["without video"]
    print(f"\nvideo in the default demo ({s.video_clips} eval clips, {4 * s.video_clips} train clips, "
          f"{s.video_frames} frames each; {args.threads} torch thread(s)):")
    print(f"  world stage (CPU s, best of {args.rounds}): {seconds['without video']:.1f} s without video, "
          f"{seconds['with video']:.1f} s with → +{world_delta:.1f} s")
    print(f"  one video eval (default base shape): {one_eval:.1f} CPU s ({one_wall:.1f} s wall)  x {n_evals} "
          f"embedder evals = {n_evals * one_eval:.1f} s")
    print(f"  added to the demo: ≈ {world_delta + n_evals * one_eval:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
