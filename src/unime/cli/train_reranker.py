"""`unime train reranker` and `unime train judge`: option parsing only; the work is in
`unime.train.reranker_trainer.train_reranker`."""

from __future__ import annotations

from functools import partial

from unime.cli import add_config_option, refuse_ineffective_options
from unime.cli.dataclass_options import add_options
from unime.cli.dataclass_options import config_from_args as build_config
from unime.cli.train import (drop_farther_options, dropped_options, lora_needs, refuse_lora_options_on_an_adapter,
                              register_train_action, warmup_warnings)
from unime.models.lora import GENERATIVE_LORA_OPTIONS

# each role's options that act only with a flag's value (`refuse_ineffective_options`): the LoRA options and the
# reranker's --merge / the judge's --save-adapter act only without --full (full fine-tuning puts no adapter on the
# model and writes OUT/merged only)
_ROLE_NEEDS = {"reranker": [*lora_needs(GENERATIVE_LORA_OPTIONS), ("merge", "full", False)],
               "judge": [*lora_needs(GENERATIVE_LORA_OPTIONS), ("save_adapter", "full", False)]}


def _add_parser(actions, role: str, **texts) -> None:
    from unime.cli.train import TRAIN_GROUPS
    from unime.models.hf_arguments import TRAINER_ARGS_GROUP
    from unime.train.reranker_trainer import RerankerTrainConfig

    p = actions.add_parser(role, **texts)
    # the role's own group before the pass-through one
    groups = (*(g for g in TRAIN_GROUPS if g != TRAINER_ARGS_GROUP), role, TRAINER_ARGS_GROUP)
    add_options(p, RerankerTrainConfig, groups=groups, default_group="parameters")
    add_config_option(p)
    p.set_defaults(func=_train, role=role, _derived_values=partial(dropped_options, rules=_DROPS),
                   _config_warnings=warmup_warnings, _before_claim=_check)


def _add_reranker_parser(actions) -> None:
    _add_parser(
        actions, "reranker", help="train a UniME-V2 reranker (pairwise + listwise) on mined records",
        description="Train a generative MLLM + LoRA as a reranker: L = L_pair (judge prompt, Yes for the positive, "
                    "No for the hardest surviving negative) + L_list (multi-candidate prompt, target 'Ans: (k)'); "
                    "records mined by the fallback (no surviving negative) are left out and counted. Writes "
                    "OUT/adapter (PEFT adapter) and OUT/unime_reranker.json (the trained number of candidates); "
                    "`unime eval --rerank OUT` loads it.")


def _add_judge_parser(actions) -> None:
    _add_parser(
        actions, "judge", help="train a Yes/No judge on labelled positives / negatives",
        description="Train a generative MLLM + LoRA on the judge prompt: (query, positive) -> Yes, (query, "
                    "negative) -> No for every listed negative. Writes OUT/merged, a plain HF folder for "
                    "`unime mine --judge OUT/merged`.")


# a nearer --epochs drops a farther --steps (-1: train by epochs; `unime.cli.train.dropped_options`)
_DROPS = [("epochs", "steps", -1)]


def config_from_args(args):
    from unime.train.reranker_trainer import PAIR, RerankerTrainConfig

    drop_farther_options(args, _DROPS)
    refuse_ineffective_options(args, f"train {args.role}", _ROLE_NEEDS[args.role])
    refuse_lora_options_on_an_adapter(args, f"train {args.role}", GENERATIVE_LORA_OPTIONS)
    # the judge trains the pairwise loss only; a reranker holds nothing out (judge options)
    return build_config(RerankerTrainConfig, args, role=args.role,
                        **({"losses": (PAIR,)} if args.role == "judge" else {"holdout": 0.0}))


def _check(args) -> None:
    """The reranker's (judge's) checks that need no model, before the output folder is claimed (`unime.cli.main`)."""
    from unime.train.reranker_trainer import check_reranker_options

    check_reranker_options(config_from_args(args))


def _train(args) -> int:
    from unime.train.reranker_trainer import train_reranker

    result = train_reranker(config_from_args(args))
    if result.first_loss is not None and result.last_loss is not None:
        print(f"{result.role}: {result.records} records, {result.examples} examples, {result.steps} steps, "
              f"loss {result.first_loss:.4f} -> {result.last_loss:.4f}")
    levels = result.loss_levels or {}
    if "loss" in levels.get("final", {}):
        from unime.train.judge_eval import loss_level_note

        print(f"training loss over the last 10 % of logged steps {levels['final']['loss']:.4f}, its base-rate level "
              f"{levels['base_rate']['total']:.4f} (what a judge predicting only the Yes share "
              f"{levels['base_rate']['yes_share']:.3f} reaches)"
              + loss_level_note(levels['final']['loss'], levels['base_rate']))
    if result.heldout:
        from unime.mining.judge_check import format_metrics

        print(f"held-out (step {result.heldout['step']}): {format_metrics(result.heldout)}")
        for w in result.heldout.get("warnings", []):
            print(f"WARNING: {w}")
    if result.skipped:
        print(f"skipped {result.skipped} bad record(s)")
    if result.fallback_records:
        print(f"left out {result.fallback_records} record(s) mined by the fallback (no surviving negative)")
    print(result.merged if args.role == "judge" else result.adapter or result.merged)
    return 0


register_train_action("reranker", _add_reranker_parser)
register_train_action("judge", _add_judge_parser)
