"""`unime train reasoner --stage sft|grpo`: cold-start SFT on T-CoTs, then EG-RL (GRPO on TRL).
This module only parses options and calls the stage functions."""

from __future__ import annotations

import json
from functools import partial

from unime.cli import add_config_option, refuse_ineffective_options
from unime.cli.dataclass_options import add_options, config_from_args
from unime.cli.train import (drop_farther_options, dropped_options, lora_needs, refuse_lora_options_on_an_adapter,
                              register_train_action)
from unime.errors import UsageError
from unime.models.hf_arguments import TRAINER_ARGS_GROUP
from unime.models.image_budget import IMAGE_GROUP
from unime.models.lora import GENERATIVE_LORA_OPTIONS

# the LoRA options act only with a rank above 0 (`refuse_ineffective_options`): --lora-r 0, GRPO's default, is full
# fine-tuning
_LORA_NEEDS = lora_needs(GENERATIVE_LORA_OPTIONS, "lora_r", True)
# a nearer --epochs (sft) / --grpo-epochs drops a farther --max-steps (-1: the stage's epochs;
# `unime.cli.train.dropped_options`)
_DROPS = [("epochs", "max_steps", -1), ("grpo_epochs", "max_steps", -1)]


def _stage_needs() -> list[tuple[str, str, str]]:
    """Rules for `refuse_ineffective_options`: an option of one stage's config only (e.g. --beta of grpo, --tcots of
    sft) acts only with that --stage."""
    from unime.cli.dataclass_options import dest_of, option_fields
    from unime.embed_rl.grpo import GRPOStageConfig
    from unime.embed_rl.reasoner_sft import ReasonerSFTConfig

    dests = {stage: {dest_of(f) for f, _, _ in option_fields(cls)}
             for stage, cls in (("sft", ReasonerSFTConfig), ("grpo", GRPOStageConfig))}
    return [(dest, "stage", stage) for stage, other in (("sft", "grpo"), ("grpo", "sft"))
            for dest in sorted(dests[stage] - dests[other])]


def _add_parser(actions) -> None:
    from unime.embed_rl.grpo import GRPOStageConfig
    from unime.embed_rl.reasoner_sft import ReasonerSFTConfig

    p = actions.add_parser(
        "reasoner", help="Embed-RL reasoner: --stage sft (cold start on T-CoTs) or grpo (EG-RL on TRL)",
        description="sft: next-token loss on the assistant T-CoT only, from a T-CoT JSONL (unime reason teacher / "
                    "generate). grpo: embedder-guided GRPO on TRL's GRPOTrainer with format / outcome / process "
                    "rewards against a frozen <emb> embedder.")
    p.add_argument("--stage", required=True, choices=["sft", "grpo"])
    add_options(p, ReasonerSFTConfig, GRPOStageConfig, groups=("sft", "grpo", IMAGE_GROUP, "video", TRAINER_ARGS_GROUP),
                labels=("sft", "grpo"))
    add_config_option(p)
    p.set_defaults(func=_run, _unset_values=_stage_defaults, _option_needs=_stage_needs,
                   _derived_values=partial(dropped_options, rules=_DROPS), _config_warnings=_warmup_warnings,
                   _before_claim=_check)


def _warmup_warnings(values: dict) -> list[str]:
    """`--print-config`: the warm-up WARNING the stage's run logs at its start (`warmup_check`), from the resolved
    `--trainer-arg warmup_steps=N` and --max-steps (none when the steps come from the epochs)."""
    from unime.embed_rl.stage_options import WARMUP_OPTIONS, trainer_arg_warmup
    from unime.models.warmup import run_warmup_warning

    text = run_warmup_warning(trainer_arg_warmup(values.get("trainer_arg")), values.get("max_steps"), *WARMUP_OPTIONS)
    return [text] if text else []


def _stage_defaults(args) -> dict:
    """`--print-config`: the options the two stages share with their own defaults, left unset, at the stage's
    value (`--lora-r` sft 16, grpo 0), not None; without --stage, each stage's value ({'sft': 16, 'grpo': 0});
    `--lora-r` with an adapter as --model, the adapter's own rank (`_adapter_rank`)."""
    from unime.cli.dataclass_options import unset_defaults
    from unime.embed_rl.grpo import GRPOStageConfig
    from unime.embed_rl.reasoner_sft import ReasonerSFTConfig

    stages = {"sft": ReasonerSFTConfig, "grpo": GRPOStageConfig}
    if args.stage in stages:
        values = unset_defaults(stages[args.stage], args, f"default (--stage {args.stage})")
    else:
        per_stage = {stage: unset_defaults(cls, args, "") for stage, cls in stages.items()}
        values = {dest: ({stage: per_stage[stage].get(dest, (None,))[0] for stage in stages},
                         "default of each --stage (none given)")
                  for dest in sorted(set().union(*per_stage.values()))}
    if rank := _adapter_rank(args):
        values["lora_r"] = (rank["lora_r"], "the own rank of the PEFT adapter given as --model")
    return values


def _stage_config(args):
    """The --stage's config (`ReasonerSFTConfig` or `GRPOStageConfig`) from the parsed options, the options that
    do nothing with it refused."""
    drop_farther_options(args, _DROPS)
    refuse_ineffective_options(args, "train reasoner", _stage_needs())
    # options the two stages share with their own defaults are None unless given (`add_options`)
    if args.stage == "sft":
        from unime.embed_rl.reasoner_sft import ReasonerSFTConfig

        if not args.tcots:
            raise UsageError("--stage sft needs --tcots", command="train reasoner")
        cfg = config_from_args(ReasonerSFTConfig, args, unset_is_none=True, **_adapter_rank(args),
                               overwrite=bool(getattr(args, "overwrite", False)))
        _refuse_lora_options(args, cfg)
        return cfg
    from unime.embed_rl.grpo import GRPOStageConfig

    if not args.records or not args.embedder:
        raise UsageError("--stage grpo needs --records and --embedder", command="train reasoner")
    try:
        weights = tuple(float(w) for w in args.weights.split(","))
    except ValueError:
        weights = ()
    if len(weights) != 3:
        raise UsageError(f"--weights takes three numbers: format,outcome,process (got {args.weights!r})",
                         command="train reasoner")
    cfg = config_from_args(GRPOStageConfig, args, unset_is_none=True, weights=weights, **_adapter_rank(args),
                           overwrite=bool(getattr(args, "overwrite", False)))
    _refuse_lora_options(args, cfg)
    return cfg


def _check(args) -> None:
    """The stage's checks that need no model, before the output folder is claimed (`unime.cli.main`)."""
    from unime.embed_rl.grpo import check_grpo_options
    from unime.embed_rl.reasoner_sft import check_sft_options

    (check_sft_options if args.stage == "sft" else check_grpo_options)(_stage_config(args))


def _run(args) -> int:
    cfg = _stage_config(args)
    if args.stage == "sft":
        from unime.embed_rl.reasoner_sft import train_reasoner_sft

        summary = train_reasoner_sft(cfg)
        first, last = (f"{v:.4f}" if isinstance(v, float) else v for v in (summary["first_loss"], summary["last_loss"]))
        print(f"SFT: {summary['examples']} examples, {summary['steps']} steps, loss {first} -> {last}; "
              f"saved {args.out}")  # 4 decimals, as the other trainers' lines (it printed 6.6841230392456055)
        _print_skips(summary)
        return 0
    from unime.embed_rl.grpo import train_reasoner_grpo

    summary = train_reasoner_grpo(cfg)
    _print_skips(summary)
    steps = summary["reward_steps"]
    print(json.dumps([{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in steps]))
    print(f"GRPO: {summary['steps']} steps; saved {args.out} (reward_log.csv, reward_curves.png, completions.jsonl)")
    left_out = summary.get("evidence_left_out") or {}  # (a summary from before they were counted has none)
    if left_out.get("total"):
        from unime.reasoning.evidence import left_out_line

        print(left_out_line(left_out["examples"], total=left_out["total"]))
    return 0


def _adapter_rank(args) -> dict[str, int]:
    """{"lora_r": r} for a PEFT adapter as --model with --lora-r left unset: the adapter is trained with its own LoRA
    (`unime.models.lora.model_to_train`), so the run's rank is its own — not the stage's default (GRPO's 0 is full
    fine-tuning, refused on an adapter); a --lora-r given with it is refused (`_refuse_lora_options`)."""
    from unime.models.loading import peft_adapter_config

    own = peft_adapter_config(args.model) if getattr(args, "model", None) and args.lora_r is None else None
    return {"lora_r": own["r"]} if own and own.get("r") else {}


def _refuse_lora_options(args, cfg) -> None:
    """The LoRA options that do nothing: with --lora-r 0 (full fine-tuning), or with an adapter as --model."""
    refuse_ineffective_options(args, "train reasoner", _LORA_NEEDS, values=cfg)
    refuse_lora_options_on_an_adapter(args, "train reasoner", GENERATIVE_LORA_OPTIONS, values=cfg,
                                      rank_chooses_lora=True)


def _print_skips(summary: dict) -> None:
    skipped = summary.get("skipped_records") or {}
    if skipped.get("total"):
        per = ", ".join(f"{r}: {n}" for r, n in skipped["by_reason"].items())
        print(f"skipped {skipped['total']} record(s) ({per})")


register_train_action("reasoner", _add_parser)
