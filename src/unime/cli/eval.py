"""`unime eval`: evaluate an embedder on a task config, or compare result folders."""

from __future__ import annotations

from unime.cli import add_config_option
from unime.cli.video_options import add_video_options, video_sampling_from_args


def register(sub) -> None:
    p = sub.add_parser(
        "eval", help="evaluate an embedder (MMEB protocol, retrieval, compositional, qrels); compare result folders",
        description="With --model: evaluate the checkpoint on --tasks and write JSON results, results.md and "
                    "plots into --out. Without --model: compare the result folders given by --compare.")
    p.add_argument("--model", help="embedder checkpoint (HF folder, hub id, or PEFT adapter folder)")
    p.add_argument("--tasks", help="task config YAML, a folder holding eval_tasks.yaml (e.g. the demo world), "
                                   "or the name of a shipped config (mmeb_v1)")
    p.add_argument("--tasks-root", default=None,
                   help="folder the task paths are relative to (overrides the config's root; e.g. your MMEB-eval "
                        "folder for --tasks mmeb_v1)")
    p.add_argument("--task", action="append", default=None, metavar="NAME",
                   help="evaluate only this task (repeatable)")
    p.add_argument("--out", required=True, help="output folder")
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
    add_video_options(p)
    add_config_option(p)
    p.set_defaults(func=_eval)


def _eval(args) -> int:
    from unime.eval.report import compare_runs
    from unime.eval.runners import evaluate_checkpoint

    if args.model is None:
        if not args.compare:
            raise SystemExit("unime eval: give --model and --tasks to evaluate, or --compare DIR ... to compare")
        if args.rerank or args.tasks:
            raise SystemExit("unime eval: --tasks / --rerank need --model")
        compare_runs(args.compare, args.out)
        print(f"{args.out}/comparison.md")
        return 0
    if not args.tasks:
        raise SystemExit("unime eval: --model needs --tasks")
    summary = evaluate_checkpoint(
        args.model, args.tasks, args.out, tasks_root=args.tasks_root, only=args.task, batch_size=args.batch_size,
        device=args.device, dtype=args.dtype, pooling=args.pooling, cache_dir=args.cache_dir,
        use_cache=not args.no_cache, ties=args.ties, on_error=args.on_error, rerank_path=args.rerank, rerank_topk=args.topk,
        rerank_mode=args.mode, compare=args.compare, video_sampling=video_sampling_from_args(args))
    enc = summary["encoding"]
    print(f"{args.out}/results.md  (items seen {enc['items_seen']}, distinct {enc['distinct_items']}, "
          f"from cache {enc['from_cache']}, encoded {enc['encoded']}; wall {summary['timing']['wall_seconds']:.1f} s)")
    return 0
