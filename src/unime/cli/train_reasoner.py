"""`unime train reasoner --stage sft|grpo`: cold-start SFT on T-CoTs, then EG-RL (GRPO on TRL).
This module only parses options and calls the stage functions."""

from __future__ import annotations

import json

from unime.cli import add_config_option
from unime.cli.train import register_train_action
from unime.errors import UsageError


def _add_parser(actions) -> None:
    from unime.embed_rl.grpo import GRPOStageConfig
    from unime.embed_rl.reasoner_sft import ReasonerSFTConfig
    from unime.models.lora import GENERATIVE_LORA

    p = actions.add_parser(
        "reasoner", help="Embed-RL reasoner: --stage sft (cold start on T-CoTs) or grpo (EG-RL on TRL)",
        description="sft: next-token loss on the assistant T-CoT only, from a T-CoT JSONL (unime reason teacher / "
                    "generate). grpo: embedder-guided GRPO on TRL's GRPOTrainer with format / outcome / process "
                    "rewards against a frozen <emb> embedder.")
    p.add_argument("--stage", required=True, choices=["sft", "grpo"])
    p.add_argument("--model", required=True,
                   help="reasoner checkpoint to train (grpo: the SFT output folder or its merged/)")
    p.add_argument("--out", required=True,
                   help="output folder (merged/: an HF folder; adapter/ for LoRA; README.md, checkpoints/, logs)")
    p.add_argument("--data-root", default=None, help="folder image paths are relative to")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lora-r", type=int, default=None, help="LoRA rank; 0 = full fine-tuning "
                                                           f"(default: sft {ReasonerSFTConfig.lora_r}, "
                                                           f"grpo {GRPOStageConfig.lora_r})")
    p.add_argument("--lora-alpha", type=int, default=GENERATIVE_LORA.alpha)
    p.add_argument("--lora-dropout", type=float, default=GENERATIVE_LORA.dropout)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: sft 1e-4, grpo 3e-6)")
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--save-steps", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="accepted for compatibility: re-running the same command continues an interrupted run anyway")
    p.add_argument("--on-error", default="raise", choices=["raise", "skip"],
                   help="skip bad lines of --tcots / --records and rows whose images do not open (counted and "
                        "reported) instead of stopping at the first")

    g = p.add_argument_group("sft")
    g.add_argument("--tcots", default=None, help="T-CoT JSONL (sft)")
    g.add_argument("--epochs", type=float, default=ReasonerSFTConfig.epochs)
    g.add_argument("--batch-size", type=int, default=ReasonerSFTConfig.batch_size)
    g.add_argument("--grad-accum", type=int, default=ReasonerSFTConfig.grad_accum)
    g.add_argument("--skip-invalid", action="store_true", help="drop T-CoTs that do not parse (counted)")
    g.add_argument("--logging-steps", type=int, default=ReasonerSFTConfig.logging_steps)

    g = p.add_argument_group("grpo")
    g.add_argument("--records", default=None, help="(query, positive) records for RL (grpo), e.g. the split's rl.jsonl")
    g.add_argument("--embedder", default=None, help="frozen <emb> embedder (the reward model)")
    g.add_argument("--process-judge", default=None, help="generative checkpoint for the process reward's pick "
                                                           "(default: a frozen copy of --model)")
    g.add_argument("--num-generations", type=int, default=GRPOStageConfig.num_generations,
                   help="group size n (default %(default)s)")
    g.add_argument("--pairs-per-batch", type=int, default=GRPOStageConfig.pairs_per_batch, help="(query, positive) pairs per step (>= 2)")
    g.add_argument("--grpo-epochs", type=int, default=GRPOStageConfig.epochs, help="passes over the pairs (each reshuffled)")
    g.add_argument("--beta", type=float, default=GRPOStageConfig.beta, help="KL coefficient (default %(default)s)")
    g.add_argument("--temperature", type=float, default=GRPOStageConfig.temperature)
    g.add_argument("--max-completion-length", type=int, default=GRPOStageConfig.max_completion_length)
    g.add_argument("--loss-type", default=GRPOStageConfig.loss_type, help="TRL loss_type (default %(default)s)")
    g.add_argument("--weights", default=",".join(map(str, GRPOStageConfig.weights)), help="format,outcome,process reward weights")
    g.add_argument("--neg-temperature", type=float, default=GRPOStageConfig.neg_temperature, help="outcome reward: hardness temperature")
    g.add_argument("--hard-negative-pairs", type=int, default=GRPOStageConfig.hard_negative_pairs, help="process reward: negative pairs shown")
    add_config_option(p)
    p.set_defaults(func=_run)


def _run(args) -> int:
    if args.stage == "sft":
        from unime.embed_rl.reasoner_sft import ReasonerSFTConfig, train_reasoner_sft

        if not args.tcots:
            raise UsageError("--stage sft needs --tcots", command="train reasoner")
        cfg = ReasonerSFTConfig(model=args.model, data=args.tcots, out=args.out, data_root=args.data_root,
                                epochs=args.epochs, max_steps=args.max_steps,
                                learning_rate=ReasonerSFTConfig.learning_rate if args.lr is None else args.lr, batch_size=args.batch_size,
                                grad_accum=args.grad_accum, lora_r=ReasonerSFTConfig.lora_r if args.lora_r is None else args.lora_r,
                                lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                                skip_invalid=args.skip_invalid, on_error=args.on_error, device=args.device, dtype=args.dtype,
                                seed=args.seed, logging_steps=args.logging_steps,
                                save_steps=args.save_steps or ReasonerSFTConfig.save_steps,
                                resume=args.resume, overwrite=bool(getattr(args, "overwrite", False)))
        summary = train_reasoner_sft(cfg)
        print(f"SFT: {summary['examples']} examples, {summary['steps']} steps, loss {summary['first_loss']} -> "
              f"{summary['last_loss']}; saved {args.out}")
        _print_skips(summary)
        return 0
    from unime.embed_rl.grpo import GRPOStageConfig, train_reasoner_grpo

    if not args.records or not args.embedder:
        raise UsageError("--stage grpo needs --records and --embedder", command="train reasoner")
    try:
        weights = tuple(float(w) for w in args.weights.split(","))
    except ValueError:
        weights = ()
    if len(weights) != 3:
        raise UsageError(f"--weights takes three numbers: format,outcome,process (got {args.weights!r})",
                         command="train reasoner")
    cfg = GRPOStageConfig(model=args.model, embedder=args.embedder, records=args.records, out=args.out,
                          process_judge=args.process_judge, data_root=args.data_root,
                          num_generations=args.num_generations, pairs_per_batch=args.pairs_per_batch,
                          epochs=args.grpo_epochs, max_steps=args.max_steps,
                          learning_rate=GRPOStageConfig.learning_rate if args.lr is None else args.lr, beta=args.beta,
                          temperature=args.temperature, max_completion_length=args.max_completion_length,
                          loss_type=args.loss_type, weights=weights, neg_temperature=args.neg_temperature,
                          hard_negative_pairs=args.hard_negative_pairs, lora_r=GRPOStageConfig.lora_r if args.lora_r is None else args.lora_r,
                          lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, device=args.device,
                          dtype=args.dtype, seed=args.seed, save_steps=args.save_steps or GRPOStageConfig.save_steps, resume=args.resume,
                          overwrite=bool(getattr(args, "overwrite", False)), on_error=args.on_error)
    summary = train_reasoner_grpo(cfg)
    _print_skips(summary)
    steps = summary["reward_steps"]
    print(json.dumps([{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in steps]))
    print(f"GRPO: {summary['steps']} steps; saved {args.out} (reward_log.csv, reward_curves.png)")
    return 0


def _print_skips(summary: dict) -> None:
    skipped = summary.get("skipped_records") or {}
    if skipped.get("total"):
        per = ", ".join(f"{r}: {n}" for r, n in skipped["by_reason"].items())
        print(f"skipped {skipped['total']} record(s) ({per})")


register_train_action("reasoner", _add_parser)
