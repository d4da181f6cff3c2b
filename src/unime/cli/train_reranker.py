"""`unime train reranker` and `unime train judge`: option parsing only; the work is in
`unime.train.reranker_trainer.train_reranker`."""

from __future__ import annotations

import argparse

from unime.cli import add_config_option
from unime.cli.train import register_train_action


def _common_options(p: argparse.ArgumentParser, *, role: str) -> None:
    from unime.models.lora import GENERATIVE_LORA

    g = p.add_argument_group("data")
    g.add_argument("--model", required=True, help="base generative checkpoint: HF folder or hub id")
    g.add_argument("--records", required=True, action="append",
                   help="record file (unime JSONL / Parquet, or released UniME-V2 JSON); repeatable")
    g.add_argument("--data-root", default=None, help="folder image paths are relative to (default: the records' folder)")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--skip-bad-records", dest="on_error", action="store_const", const="skip", default="raise",
                   help="skip bad records and images (counted and reported) instead of failing")

    g = p.add_argument_group("parameters")
    g.add_argument("--full", action="store_true",
                   help="full fine-tuning (every parameter, fp32 master weights) instead of LoRA; writes OUT/merged "
                        "only (no adapter). For a base model without the needed skills, e.g. a freshly built tiny one")
    g.add_argument("--lora-r", type=int, default=GENERATIVE_LORA.r,
                   help="LoRA rank (default %(default)s; the paper's reranker: 128)")
    g.add_argument("--lora-alpha", type=int, default=GENERATIVE_LORA.alpha)
    g.add_argument("--lora-dropout", type=float, default=GENERATIVE_LORA.dropout)
    g.add_argument("--lora-targets", default=",".join(GENERATIVE_LORA.targets),
                   help="comma-separated module names (decoder only unless --lora-vision), or all-linear")
    g.add_argument("--lora-vision", action="store_true", help="also adapt the vision tower's matching layers")
    g.add_argument("--dora", action="store_true", help="DoRA instead of plain LoRA")
    g.add_argument("--train-module", dest="train_modules", action="append", default=[],
                   help="module trained in full beside LoRA (PEFT modules_to_save), e.g. lm_head; repeatable")
    g.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="weights dtype (auto: bf16 on GPU, fp32 on CPU)")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    g.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for activation memory")

    from unime.cli.video_options import add_image_options

    g.add_argument("--train-turn-end", action="store_true",
                   help="also train the end-of-turn token after the answer (default: answer tokens only, as the paper)")
    add_image_options(p)
    from unime.cli.video_options import add_video_options

    add_video_options(p)
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=4,
                   help="records per device step" if role == "reranker" else "labelled pairs per device step")
    g.add_argument("--grad-accum", type=int, default=1)
    g.add_argument("--epochs", type=float, default=1.0)
    g.add_argument("--steps", type=int, default=-1, help="optimizer steps (overrides --epochs when > 0)")
    g.add_argument("--lr", type=float, default=1e-4)
    g.add_argument("--warmup", type=int, default=0, help="warm-up steps (linear schedule)")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=0)

    g = p.add_argument_group("checkpoints")
    g.add_argument("--logging-steps", type=int, default=10)
    g.add_argument("--save-steps", type=int, default=500, help="resumable checkpoints under OUT/checkpoints")
    g.add_argument("--keep-checkpoints", action="store_true", help="keep OUT/checkpoints after success")
    g.add_argument("--overwrite", action="store_true", help="retrain even if OUT holds a finished result")
    add_config_option(p)


def _add_reranker_parser(actions) -> None:
    p = actions.add_parser(
        "reranker", help="train a UniME-V2 reranker (pairwise + listwise) on mined records",
        description="Train a generative MLLM + LoRA as a reranker: L = L_pair (judge prompt, Yes for the positive, "
                    "No for the hardest negative) + L_list (multi-candidate prompt, target 'Ans: (k)'). Writes "
                    "OUT/adapter (PEFT adapter) and OUT/unime_reranker.json (the trained number of candidates); "
                    "`unime eval --rerank OUT` loads it.")
    _common_options(p, role="reranker")
    g = p.add_argument_group("reranker")
    g.add_argument("--negatives", type=int, default=4,
                   help="negatives per listwise prompt; the positive is added at a random position (default 4)")
    g.add_argument("--losses", default="pair,list", help="pair, list or pair,list (default both)")
    g.add_argument("--merge", action="store_true", help="also write the merged plain checkpoint OUT/merged")
    p.set_defaults(func=_train, role="reranker")


def _add_judge_parser(actions) -> None:
    p = actions.add_parser(
        "judge", help="train a Yes/No judge on labelled positives / negatives",
        description="Train a generative MLLM + LoRA on the judge prompt: (query, positive) -> Yes, (query, "
                    "negative) -> No for every listed negative. Writes OUT/merged, a plain HF folder for "
                    "`unime mine --judge OUT/merged`.")
    _common_options(p, role="judge")
    g = p.add_argument_group("judge")
    g.add_argument("--judge-negatives", type=int, default=None, help="negatives per record used (default: all)")
    g.add_argument("--save-adapter", action="store_true", help="also keep the adapter in OUT/adapter")
    g.add_argument("--holdout", type=float, default=0.1,
                   help="share of the records held out: their pairs are scored while training (AUC, accuracy, P(Yes) "
                        "spread; OUT/judge_eval.jsonl). 0 = off (default 0.1)")
    g.add_argument("--eval-steps", type=int, default=0, help="steps between held-out evaluations (default: ~5 per run)")
    g.add_argument("--group-weight", type=float, default=0.0,
                   help="weight of a within-record softmax loss over the pairs' judge margins (l_Yes - l_No): "
                        "trains each query's positive above its own negatives, the ordering the false-negative "
                        "filter uses; > 0 makes --batch-size count records, not pairs (default 0: pointwise only)")
    p.set_defaults(func=_train, role="judge")


def config_from_args(args):
    from unime.train.reranker_trainer import RerankerTrainConfig

    losses = ("pair",) if args.role == "judge" else tuple(x.strip() for x in str(args.losses).split(",") if x.strip())
    return RerankerTrainConfig(
        model=args.model, records=list(args.records), out=args.out, role=args.role, data_root=args.data_root,
        losses=losses, num_negatives=getattr(args, "negatives", 4),
        judge_negatives=getattr(args, "judge_negatives", None), full=args.full, lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout, lora_targets=_names(args.lora_targets), lora_vision=args.lora_vision,
        dora=args.dora, train_modules=tuple(args.train_modules),
        learning_rate=args.lr, epochs=args.epochs, max_steps=args.steps, batch_size=args.batch_size,
        grad_accum=args.grad_accum, warmup_steps=args.warmup, weight_decay=args.weight_decay, seed=args.seed,
        device=args.device, dtype=None if args.dtype == "auto" else args.dtype,
        gradient_checkpointing=args.gradient_checkpointing, logging_steps=args.logging_steps,
        save_steps=args.save_steps, merge=getattr(args, "merge", False),
        save_adapter=getattr(args, "save_adapter", False), on_error=args.on_error, overwrite=args.overwrite,
        keep_checkpoints=args.keep_checkpoints, min_pixels=args.min_pixels, max_pixels=args.max_pixels,
        image_size=args.image_size, video_frames=args.video_frames, video_fps=args.video_fps,
        video_max_frames=args.video_max_frames, video_max_pixels=args.video_max_pixels,
        train_turn_end=args.train_turn_end, holdout=getattr(args, "holdout", 0.0),
        eval_steps=getattr(args, "eval_steps", 0), group_weight=getattr(args, "group_weight", 0.0))


def _names(value) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(t.strip() for t in value.split(",") if t.strip())
    return tuple(value)


def _train(args) -> int:
    from unime.train.reranker_trainer import train_reranker

    result = train_reranker(config_from_args(args))
    if result.first_loss is not None and result.last_loss is not None:
        print(f"{result.role}: {result.records} records, {result.examples} examples, {result.steps} steps, "
              f"loss {result.first_loss:.4f} -> {result.last_loss:.4f}")
    if result.heldout:
        from unime.mining.judge_check import format_metrics

        print(f"held-out (step {result.heldout['step']}): {format_metrics(result.heldout)}")
        for w in result.heldout.get("warnings", []):
            print(f"WARNING: {w}")
    if result.skipped:
        print(f"skipped {result.skipped} bad record(s)")
    print(result.merged if args.role == "judge" else result.adapter or result.merged)
    return 0


register_train_action("reranker", _add_reranker_parser)
register_train_action("judge", _add_judge_parser)
