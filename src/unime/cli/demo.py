"""`unime demo`: the whole method end to end on the embedded default (tiny models + generated world)."""

from __future__ import annotations

from unime.cli import add_config_option


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the whole method end to end on the embedded default and write a report")
    p.add_argument("--out", default="runs/demo", help="output folder (stages already done there are skipped)")
    p.add_argument("--quick", action="store_true", help="smoke-test sizes (CI): a tiny world and a few steps")
    p.add_argument("--fresh", action="store_true", help="delete what earlier demo runs wrote in OUT and re-run every stage (other files stay)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per embedder row (default: preset's)")
    p.add_argument("--family", default=None, choices=["qwen2_vl", "qwen2_5_vl", "qwen3_vl"],
                   help="model family of the tiny models (default qwen2_vl)")
    p.add_argument("--embed-rl", action="store_true",
                   help="also run the Embed-RL stages (T-CoTs, match judge, <emb> embedders, reasoner SFT + GRPO)")
    p.add_argument("--oracle-judge", action="store_true",
                   help="diagnostic: also mine with the world's ground truth as the judge and train the HN and "
                        "HN + soft rows on it (separates the judge's quality from the training recipe)")
    p.add_argument("--allow-weak-judge", action="store_true",
                   help="continue after mining even when the judge's scores do not vary within a query (median "
                        "spread < beta) or too many queries fell back to random negatives (default: stop there)")
    p.add_argument("--video-clips", type=int, default=None, metavar="N",
                   help="eval clips of the world's video tasks, whose rows the report shows (default: preset's, "
                        "24; 0 = no video)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--jobs", type=int, default=0, metavar="N",
                   help="run N of a stage's independent commands (one per seed) side by side in worker processes, "
                        "the CPU cores shared out among them (default 0 = auto: one per core on the CPU, at most one "
                        "per seed; 1 on a GPU)")
    add_config_option(p)
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from unime.demo.pipeline import Demo, DemoSettings, fresh
    from unime.errors import DemoStopped

    settings = DemoSettings.preset("quick" if args.quick else "default")
    if args.seeds:
        settings.seeds = tuple(range(args.seeds))
    if args.family:
        settings.family = args.family
    if args.allow_weak_judge:
        settings.stop_on_weak_judge = False
    if args.video_clips is not None:
        settings.video_clips = max(0, args.video_clips)
    if args.fresh:
        fresh(args.out, overwrite=bool(getattr(args, "overwrite", False)))
    try:
        report = Demo(args.out, settings, device=args.device, embed_rl=args.embed_rl,
                      oracle_judge=args.oracle_judge, jobs=max(0, args.jobs)).run()
    except DemoStopped as e:
        print(f"[demo] stopped: {e}")
        return 3
    print(f"report: {report} (and {report.with_suffix('.html')})")
    return 0
