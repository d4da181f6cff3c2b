"""`unime eval`: evaluate an embedder on a task config, or compare result folders."""

from __future__ import annotations

from unime.cli import add_config_option
from unime.cli.video_options import add_video_options, video_sampling_from_args
from unime.errors import UsageError
from unime.cli.video_options import add_image_options


def register(sub) -> None:
    p = sub.add_parser(
        "eval", help="evaluate an embedder (MMEB protocol, retrieval, compositional, qrels); compare result folders",
        description="With --model: evaluate the checkpoint on --tasks and write JSON results, results.md and "
                    "plots into --out. Without --model: compare the result folders given by --compare. "
                    "`unime eval reference`: train and evaluate the learnability reference (see its --help).")
    p.add_argument("--model", help="embedder checkpoint (HF folder, hub id, or PEFT adapter folder)")
    p.add_argument("--tasks", nargs="+", default=None, metavar="TASKS",
                   help="task config YAML, a folder holding eval_tasks.yaml (e.g. the demo world or a `data import` "
                        "folder), the name of a shipped config (mmeb_v1), or MMEB-eval files (.jsonl / .parquet, "
                        "one task each) / folders of them")
    p.add_argument("--tasks-root", default=None,
                   help="folder the task paths are relative to (overrides the config's root; e.g. your MMEB-eval "
                        "folder for --tasks mmeb_v1)")
    p.add_argument("--task", action="append", default=None, metavar="NAME",
                   help="evaluate only this task (repeatable)")
    p.add_argument("--out", help="output folder (required)")
    p.add_argument("--compare", nargs="+", default=[], metavar="DIR",
                   help="result folders to put side by side (with this run, if --model is given)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    p.add_argument("--dtype", default="auto", help="auto, fp32, bf16, fp16")
    p.add_argument("--pooling", default="auto", choices=["auto", "last", "emb"],
                   help="auto: <emb> token if the tokenizer has it, else the last token")
    p.add_argument("--cache-dir", default=None,
                   help="embedding cache folder (default: $UNIME_CACHE_DIR/embeddings or ~/.cache/unime/embeddings)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    p.add_argument("--ties", default="pessimistic", choices=["pessimistic", "index"],
                   help="exact score ties: pessimistic = a tie with a relevant item counts against it (default); "
                        "index = lower candidate index wins (VLM2Vec's argmax)")
    p.add_argument("--on-error", default="raise", choices=["raise", "skip"],
                   help="a bad data row stops the run (raise, default) or is left out and counted (skip)")
    p.add_argument("--rerank", default=None, metavar="CKPT", help="reranker checkpoint: report every task with "
                                                                   "and without reranking")
    p.add_argument("--topk", type=int, default=5, help="candidates the reranker sees (default 5, the paper's)")
    p.add_argument("--mode", default="top1", choices=["top1", "resort"],
                   help="top1: the reranker's pick moves to rank 1; resort: sort the top k by pairwise score")
    p.add_argument("--compositional-mode", default="pairwise", choices=["pairwise", "run"],
                   help="reranking of compositional (SugarCrepe) tasks: pairwise = the reranker's P(Yes) of each "
                        "caption, the higher wins (the paper's); run = the run-wide --mode")
    add_video_options(p)
    add_image_options(p)
    add_config_option(p)
    p.set_defaults(func=_eval)
    actions = p.add_subparsers(dest="eval_command", metavar="ACTION")
    r = actions.add_parser(
        "reference", help="train a small independent dual encoder (CNN + GRU, InfoNCE, from scratch) on the "
                          "training records and evaluate it like any checkpoint: how learnable is the world?",
        description="Train the learnability reference on --records for --seconds of wall time or --max-steps "
                    "steps (whichever first), then evaluate it on --tasks with the same runner as `unime eval`; "
                    "--out gets summary.json, results.md, tasks/, training.json (loss and in-batch train P@1) "
                    "and the weights (reference.pt, reference.json).")
    r.add_argument("--tasks", required=True, help="task config YAML or a folder holding eval_tasks.yaml")
    r.add_argument("--tasks-root", default=None, help="folder the task paths are relative to")
    r.add_argument("--task", action="append", default=None, metavar="NAME", help="evaluate only this task")
    r.add_argument("--records", required=True, help="training records (.jsonl, .parquet, .json)")
    r.add_argument("--data-root", default=None,
                   help="folder the records' image paths are relative to (default: the records file's folder)")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--seconds", type=float, default=120.0, help="wall-clock training budget (default 120)")
    r.add_argument("--max-steps", type=int, default=100_000, help="step limit (default 100000)")
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--lr", type=float, default=2e-3)
    r.add_argument("--image-size", type=int, default=64, help="images are resized to this square size")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--threads", type=int, default=1, help="torch threads (1 = bit-reproducible; default 1)")
    r.add_argument("--video-frames", type=int, default=None, metavar="N",
                   help="frames sampled uniformly from each video (default: ReferenceConfig.video_frames, 8)")
    r.add_argument("--also", nargs=2, action="append", default=None, metavar=("TASKS", "OUT"),
                   help="also evaluate the trained reference on TASKS, writing the result folder OUT like `unime "
                        "eval` (repeatable; e.g. a world's eval_tasks_video.yaml)")
    r.add_argument("--ties", default="pessimistic", choices=["pessimistic", "index"])
    r.add_argument("--on-error", default="raise", choices=["raise", "skip"],
                   help="a bad eval data row stops the run (raise) or is left out and counted (skip)")
    add_config_option(r)
    r.set_defaults(func=_reference)


def _eval(args) -> int:
    from unime.eval.report import compare_runs
    from unime.eval.runners import evaluate_checkpoint
    from unime.models.image_budget import ImageBudget

    if not args.out:
        raise UsageError("--out is required", command="eval")
    if args.model is None:
        if not args.compare:
            raise UsageError("give --model and --tasks to evaluate, or --compare DIR ... to compare", command="eval")
        if args.rerank or args.tasks:
            raise UsageError("--tasks / --rerank need --model", command="eval")
        compare_runs(args.compare, args.out)
        print(f"{args.out}/comparison.md")
        return 0
    if not args.tasks:
        raise UsageError("--model needs --tasks", command="eval")
    tasks = [args.tasks] if isinstance(args.tasks, str) else list(args.tasks)  # a --config value may be one string
    summary = evaluate_checkpoint(
        args.model, tasks if len(tasks) > 1 else tasks[0], args.out, tasks_root=args.tasks_root, only=args.task, batch_size=args.batch_size,
        device=args.device, dtype=args.dtype, pooling=args.pooling, cache_dir=args.cache_dir,
        use_cache=not args.no_cache, ties=args.ties, on_error=args.on_error, rerank_path=args.rerank, rerank_topk=args.topk,
        rerank_mode=args.mode, rerank_compositional=args.compositional_mode, compare=args.compare,
        video_sampling=video_sampling_from_args(args), image_budget=ImageBudget.from_args(args),
        overwrite=bool(getattr(args, "overwrite", False)))
    if summary.get("finished_before"):
        print(f"{args.out}: this evaluation finished earlier with the same options and inputs; nothing to do "
              "(pass --overwrite to run it again)")
    for name, m in summary["tasks"].items():
        shown = [f"{k} {100 * v:.1f}" for k, v in m.items() if not k.startswith("chance@")][:6]
        chance = f" (chance P@1 {100 * m['chance@1']:.1f})" if "chance@1" in m else ""
        print(f"{name}: {', '.join(shown)}{chance}")
    enc = summary["encoding"]
    print(f"{args.out}/results.md  (items seen {enc['items_seen']}, distinct {enc['distinct_items']}, "
          f"from cache {enc['from_cache']}, encoded {enc['encoded']}; wall {summary['timing']['wall_seconds']:.1f} s)")
    return 0


def _reference(args) -> int:
    from unime.eval.reference import ReferenceConfig, evaluate_reference

    cfg = ReferenceConfig(seconds=args.seconds, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                          image_size=args.image_size, seed=args.seed, threads=args.threads,
                          **({"video_frames": args.video_frames} if args.video_frames else {}))
    summary = evaluate_reference(args.tasks, args.records, args.out, data_root=args.data_root, cfg=cfg,
                                 tasks_root=args.tasks_root, only=args.task, ties=args.ties, on_error=args.on_error,
                                 also=tuple(tuple(pair) for pair in args.also or ()))
    training = summary["meta"]["reference"]["training"]
    overall = summary["aggregates"].get("mmeb", {}).get("scores", {}).get("overall")
    print(f"{args.out}/results.md  ({training['steps']} steps in {training['seconds']:.0f} s, stopped by "
          f"{training['stopped_by']}; in-batch train P@1 {100 * training['train_p_at_1']:.1f}; overall P@1 "
          f"{'–' if overall is None else f'{100 * overall:.1f}'})")
    return 0
