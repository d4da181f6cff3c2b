"""`unime eval`: evaluate an embedder on a task config, or compare result folders."""

from __future__ import annotations

from unime.cli import add_config_option
from unime.cli.dataclass_options import add_options, config_from_args
from unime.errors import UsageError
from unime.models.image_budget import IMAGE_GROUP


def register(sub) -> None:
    from unime.eval.reference_config import ReferenceConfig, ReferenceRunOptions
    from unime.eval.runners import EvalConfig

    p = sub.add_parser(
        "eval", help="evaluate an embedder (MMEB protocol, retrieval, compositional, qrels); compare result folders",
        description="With --model: evaluate the checkpoint on --tasks and write JSON results, results.md and "
                    "plots into --out. Without --model: compare the result folders given by --compare. "
                    "`unime eval reference`: train and evaluate the learnability reference (see its --help).")
    add_options(p, EvalConfig, groups=("video", IMAGE_GROUP), own_first=True)
    add_config_option(p)
    p.set_defaults(func=_eval)
    actions = p.add_subparsers(dest="eval_command", metavar="[reference]")
    r = actions.add_parser(
        "reference", help="train a small independent dual encoder (CNN + GRU, InfoNCE, from scratch) on the "
                          "training records and evaluate it like any checkpoint: how learnable is the world?",
        description="Train the learnability reference on --records for --seconds of wall time or --max-steps "
                    "steps (whichever first), then evaluate it on --tasks with the same runner as `unime eval`; "
                    "--out gets summary.json, results.md, tasks/, training.json (loss and in-batch train P@1) "
                    "and the weights (reference.pt, reference.json).")
    add_options(r, ReferenceRunOptions, ReferenceConfig)
    add_config_option(r)
    r.set_defaults(func=_reference)


def _eval(args) -> int:
    from unime.eval.report import compare_runs, reranked_label, reranker_line
    from unime.eval.runners import EvalConfig, evaluate_checkpoint

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
    for flag, value in (("--rerank-batch", args.rerank_batch), ("--topk", args.topk)):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}", command="eval")
    summary = evaluate_checkpoint(config_from_args(EvalConfig, args, overwrite=bool(getattr(args, "overwrite", False))))
    if summary.get("finished_before"):
        print(f"{args.out}: this evaluation finished earlier with the same options and inputs; nothing to do "
              "(pass --overwrite to run it again)")
    for name, m in summary["tasks"].items():
        print(_task_line(name, m))
    rr = summary.get("reranked")
    if rr is not None:  # the reranked figures and the reranker's own line (its warning), as in results.md
        for name, m in rr["tasks"].items():
            print(_task_line(f"{name} [{reranked_label(rr)}]", m))
        print(reranker_line(rr.get("stats") or {}))
    enc = summary["encoding"]
    print(f"{args.out}/results.md  (items seen {enc['items_seen']}, distinct {enc['distinct_items']}, "
          f"from cache {enc['from_cache']}, encoded {enc['encoded']}; wall {summary['timing']['wall_seconds']:.1f} s)")
    return 0


def _task_line(name: str, metrics: dict) -> str:
    shown = [f"{k} {100 * v:.1f}" for k, v in metrics.items() if not k.startswith("chance@")][:6]
    chance = f" (chance P@1 {100 * metrics['chance@1']:.1f})" if "chance@1" in metrics else ""
    return f"{name}: {', '.join(shown)}{chance}"


def _reference(args) -> int:
    from unime.eval.reference import run_reference
    from unime.eval.reference_config import ReferenceConfig, ReferenceRunOptions

    cfg = config_from_args(ReferenceConfig, args, unset_is_none=True)  # --video-frames unset: the config's own
    summary = run_reference(config_from_args(ReferenceRunOptions, args), cfg)
    training = summary["meta"]["reference"]["training"]
    overall = summary["aggregates"].get("mmeb", {}).get("scores", {}).get("overall")
    print(f"{args.out}/results.md  ({training['steps']} steps in {training['seconds']:.0f} s, stopped by "
          f"{training['stopped_by']}; in-batch train P@1 {100 * training['train_p_at_1']:.1f}; overall P@1 "
          f"{'–' if overall is None else f'{100 * overall:.1f}'})")
    return 0
