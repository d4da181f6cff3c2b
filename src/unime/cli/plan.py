"""`unime plan`: memory per device and tokens per step of a recipe (or of any command's options)."""

from __future__ import annotations

from unime.cli import add_config_option
from unime.cli.dataclass_options import add_options, config_from_args
from unime.errors import UsageError


def register(sub) -> None:
    from unime.train.memory_plan import PlanOptions

    p = sub.add_parser("plan", help="estimate memory per device and tokens per step of a run (no GPU needed)",
                       description="Resolves the options of the recipe's training or mining command (the same "
                                   "layering as that command: defaults < --recipe < --set), builds the model on the "
                                   "meta device for exact parameter counts, and prints the memory per device.")
    add_options(p, PlanOptions)
    add_config_option(p)
    p.set_defaults(func=_plan)


def set_values(sets: list[str]) -> dict:
    """`--set` items as {option: value}: OPTION=VALUE, or OPTION alone for a flag turned on; an option set several
    times gets the list of its values (a repeatable option, e.g. train-module)."""
    values: dict = {}
    for item in sets:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip() if sep else True
        values[key] = [*(values[key] if isinstance(values[key], list) else [values[key]]), value] \
            if key in values else value
    return values


def _command_options(command: str, recipe: str | None, sets: list[str]) -> dict:
    """The planned command's resolved options (`_command_args`) as {option: value}."""
    return _options_of(_command_args(command, recipe, sets))


def _options_of(args) -> dict:
    return {k: v for k, v in vars(args).items() if not k.startswith("_")}


def _command_args(command: str, recipe: str | None, sets: list[str], stage_args: tuple[str, ...] = ()):
    """The planned command's parsed arguments (its own parser: defaults < recipe < --set), with where each option
    came from (`_origins`: a --set value is the user's, as on the command line). The --set values go
    through the option's own rules, as a config file's keys do (`options_file.apply_options`): a flag takes
    true / false (a recipe's flag can be turned off), a number its type, a repeatable option each value. A --set
    per-device batch-size drops a recipe's global-batch, as the embedder's command line does (`global_batch_dropped`:
    it was planned at the recipe's global batch). `stage_args`: the command's own arguments naming the planned stage
    (`train reasoner --stage grpo`)."""
    from unime.cli import _apply_config, _command_path, build_parser
    from unime.cli.options_file import apply_options
    from unime.cli.train import global_batch_dropped

    parser = build_parser()
    argv = [*command.split(), *stage_args, *(["--recipe", recipe] if recipe else []), "--print-config"]
    args = _apply_config(parser, argv)
    subparser = _command_path(parser, argv)[1]
    for dest in apply_options(subparser, set_values(sets), source="--set").values():
        setattr(args, dest, subparser.get_default(dest))  # above the recipe, as the command line would be
        args._origins[dest] = "command line (--set)"
    if global_batch_dropped(args, command="plan"):
        args.global_batch = None
    return args


def _refuse_lora_options_on_an_adapter(stage: str, args, model: str) -> None:
    """A trainer's rule (`unime.cli.train.refuse_lora_options_on_an_adapter`): with a PEFT adapter as --model, a
    --set LoRA option does nothing (training refuses it), so the plan refuses it too rather than planning the
    adapter's own LoRA quietly."""
    from unime.cli.train import refuse_lora_options_on_an_adapter
    from unime.models.lora import EMBEDDER_LORA_OPTIONS, GENERATIVE_LORA_OPTIONS

    lora_options = {"embedder": EMBEDDER_LORA_OPTIONS, "reranker": GENERATIVE_LORA_OPTIONS}.get(stage)
    if lora_options is not None:
        args.model = model
        refuse_lora_options_on_an_adapter(args, "plan", lora_options)


def _refuse_options_that_do_nothing(stage: str, args) -> None:
    """A trainer's rule (`unime.cli.refuse_ineffective_options`): a --set option that does nothing with the planned
    run's other options (--chunk-size without --gradcache, a LoRA option with --full, an option of the other
    reasoner stage) is refused, as the trainer refuses it, rather than planned quietly without it."""
    from unime.cli import refuse_ineffective_options

    if stage == "embedder":
        from unime.cli.train import _EMBEDDER_NEEDS as rules
    elif stage == "reranker":
        from unime.cli.train_reranker import _ROLE_NEEDS

        rules = _ROLE_NEEDS["reranker"]
    elif stage in ("reasoner-sft", "reasoner-grpo"):
        from unime.cli.train_reasoner import _stage_needs

        rules = _stage_needs()
    else:
        return
    refuse_ineffective_options(args, "plan", rules)


def _stage_defaults(command_args, model: str, options: dict) -> dict:
    """The planned command's options left unset whose default depends on its stage (`_unset_values`, as its
    `--print-config` shows them: `train reasoner`'s --lora-r, sft 16 / grpo 0, or an adapter's own rank)."""
    unset = getattr(command_args, "_unset_values", None)
    if not callable(unset):
        return {}
    command_args.model = model
    return {dest: value for dest, (value, _) in unset(command_args).items() if options.get(dest) is None}


def _plan(args) -> int:
    import json

    from unime.cli.recipes import load_recipe
    from unime.train.memory_plan import PLANNERS, STAGE_ARGS, STAGE_COMMANDS, PlanOptions

    opts = config_from_args(PlanOptions, args)
    recipe = load_recipe(args.recipe) if args.recipe else None
    stage = args.stage or (recipe.plan.get("stage") if recipe else None)
    if stage not in PLANNERS:
        raise UsageError(f"give --recipe NAME or --stage {{{','.join(PLANNERS)}}}", command="plan")
    command = STAGE_COMMANDS[stage]
    command_args = _command_args(command, args.recipe if recipe and command in recipe.commands else None,
                                 opts.overrides, STAGE_ARGS.get(stage, ()))
    _refuse_options_that_do_nothing(stage, command_args)
    options = _options_of(command_args)
    # a recipe's plan names the model of its plan stage; its reasoner (`plan: {reasoner: ...}`) for the reasoner's
    plan_model = (recipe.plan.get("reasoner") if stage in STAGE_ARGS else recipe.plan.get("model")) if recipe else None
    model = args.model or (options.get("judge") if stage == "judge" else options.get("model")) or plan_model
    if not model:
        raise UsageError("give --model (a known release or a checkpoint folder)", command="plan")
    _refuse_lora_options_on_an_adapter(stage, command_args, model)
    options = {**options, **_stage_defaults(command_args, model, options)}
    if stage == "reasoner-grpo" and not options.get("embedder") and recipe:
        options["embedder"] = recipe.plan.get("model")  # an Embed-RL recipe's embedder: GRPO's reward model
    title = f"{recipe.name} ({command}) on {model}" if recipe else f"{command} on {model}"
    plan = opts.plan(stage, model, options, title)
    print(json.dumps(plan.to_dict(), indent=2) if opts.json else plan.render())
    return 0
