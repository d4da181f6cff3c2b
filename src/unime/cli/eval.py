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
    r.set_defaults(func=_reference, _before_claim=_check_also_folders)


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
        print(task_line(name, m))
    rr = summary.get("reranked")
    if rr is not None:  # the reranked figures and the reranker's own line (its warning), as in results.md
        for name, m in rr["tasks"].items():
            print(task_line(f"{name} [{reranked_label(rr)}]", m))
        print(reranker_line(rr.get("stats") or {}))
    enc = summary["encoding"]
    attempts, last = (summary.get("run") or {}).get("attempts") or 1, enc.get("last_attempt")
    resumed = (f"; over {attempts} attempts, the last one: encoded {last.get('encoded')}, from cache "
               f"{last.get('from_cache')}") if attempts > 1 and isinstance(last, dict) else ""
    print(f"{args.out}/results.md  (items seen {enc['items_seen']}, distinct {enc['distinct_items']}, "
          f"from cache {enc['from_cache']}, encoded {enc['encoded']}{resumed}; "
          f"wall {summary['timing']['wall_seconds']:.1f} s)")
    return 0


def task_line(name: str, metrics: dict) -> str:
    """A task's console line ("t2v: ndcg@5 23.5, ..."), as `unime eval` and `unime reason eval` print it."""
    shown = [f"{k} {100 * v:.1f}" for k, v in metrics.items() if not k.startswith("chance@")][:6]
    chance = f" (chance P@1 {100 * metrics['chance@1']:.1f})" if "chance@1" in metrics else ""
    return f"{name}: {', '.join(shown)}{chance}"


def _check_also_folders(args) -> None:
    """Each --also result folder may be written by `eval reference` (`unime.outdir.check_claim`), asked before --out
    is claimed (`unime.cli.main`): another command's folder is refused (without --overwrite) before anything runs."""
    from unime.outdir import check_claim

    for _, folder in args.also or ():
        check_claim(folder, "eval reference", overwrite=bool(getattr(args, "overwrite", False)),
                    adopts=_earlier_also_folder, option="also")


def _earlier_also_folder(folder) -> bool:
    """An unmarked --also result folder of `eval reference` from before it claimed them (its summary.json names the
    reference and the folder it was trained for): taken as the command's own (`unime.outdir.claim`'s `adopts`)."""
    import json
    from pathlib import Path

    from unime.eval.reference import REFERENCE_MODEL_NAME

    try:
        meta = json.loads((Path(folder) / "summary.json").read_text(encoding="utf-8"))["meta"]
        return meta["model"] == REFERENCE_MODEL_NAME and "trained_for" in meta["reference"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _reference(args) -> int:
    import contextlib

    from unime.eval.reference import run_reference
    from unime.eval.reference_config import ReferenceConfig, ReferenceRunOptions
    from unime.outdir import claim

    cfg = config_from_args(ReferenceConfig, args, unset_is_none=True)  # --video-frames unset: the config's own
    opts = config_from_args(ReferenceRunOptions, args)
    with contextlib.ExitStack() as stack:  # each --also folder claimed like --out (left as found by a failed run)
        for tasks, folder in opts.also or ():
            stack.enter_context(claim(folder, "eval reference", {"tasks": tasks, "trained_for": opts.out},
                                      overwrite=bool(getattr(args, "overwrite", False)),
                                      adopts=_earlier_also_folder, option="also"))
        summary = run_reference(opts, cfg)
    training = summary["meta"]["reference"]["training"]
    overall = summary["aggregates"].get("mmeb", {}).get("scores", {}).get("overall")
    print(f"{args.out}/results.md  ({training['steps']} steps in {training['seconds']:.0f} s, stopped by "
          f"{training['stopped_by']}; in-batch train P@1 {100 * training['train_p_at_1']:.1f}; overall P@1 "
          f"{'–' if overall is None else f'{100 * overall:.1f}'})")
    return 0
