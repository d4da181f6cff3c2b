"""`unime plan`: memory per device and tokens per step of a recipe (or of any command's options)."""

from __future__ import annotations

from unime.cli import add_config_option
from unime.errors import UsageError


def register(sub) -> None:
    p = sub.add_parser("plan", help="estimate memory per device and tokens per step of a run (no GPU needed)",
                       description="Resolves the options of the recipe's training or mining command (the same "
                                   "layering as that command: defaults < --recipe < --set), builds the model on the "
                                   "meta device for exact parameter counts, and prints the memory per device.")
    p.add_argument("--stage", choices=["embedder", "reranker", "judge"], default=None,
                   help="what to plan (default: the recipe's): train embedder, train reranker, or the mining judge")
    p.add_argument("--model", default=None,
                   help="a known release (e.g. Qwen/Qwen2-VL-2B-Instruct) or a local checkpoint folder "
                        "(default: the recipe's)")
    p.add_argument("--gpus", type=int, default=1, help="devices (data parallel)")
    p.add_argument("--gpu-memory", default=None, metavar="SIZE", help="memory per device, e.g. 80GB")
    p.add_argument("--text-tokens", type=int, default=64,
                   help="text + chat-template tokens per item (default 64)")
    p.add_argument("--images-per-item", type=float, default=1.0,
                   help="images per query / candidate on average (default 1: every item has an image)")
    p.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                   help="override one option of the planned command, e.g. --set chunk-size=4, or a flag: "
                        "--set gradient-checkpointing (repeatable)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    add_config_option(p)
    p.set_defaults(func=_plan)


def _command_options(command: str, recipe: str | None, sets: list[str]) -> dict:
    """The planned command's resolved options (its own parser: defaults < recipe < --set)."""
    from unime.cli import _apply_config, build_parser

    argv = [*command.split()]
    if recipe:
        argv += ["--recipe", recipe]
    for item in sets:
        key, sep, value = item.partition("=")
        argv.append(f"--{key.strip().replace('_', '-')}")  # OPTION alone: a flag (e.g. gradient-checkpointing)
        if sep:
            argv.append(value.strip())
    args = _apply_config(build_parser(), argv + ["--print-config"])
    return {k: v for k, v in vars(args).items() if not k.startswith("_")}


def _plan(args) -> int:
    import json

    from unime.train.memory_plan import PLANNERS, STAGE_COMMANDS, parse_memory
    from unime.cli.recipes import load_recipe

    recipe = load_recipe(args.recipe) if args.recipe else None
    stage = args.stage or (recipe.plan.get("stage") if recipe else None)
    if stage not in PLANNERS:
        raise UsageError("give --recipe NAME or --stage {embedder,reranker,judge}", command="plan")
    command = STAGE_COMMANDS[stage]
    options = _command_options(command, args.recipe if recipe and command in recipe.commands else None, args.set)
    model = args.model or (options.get("judge") if stage == "judge" else options.get("model")) or \
        (recipe.plan.get("model") if recipe else None)
    if not model:
        raise UsageError("give --model (a known release or a checkpoint folder)", command="plan")
    title = f"{recipe.name} ({command}) on {model}" if recipe else f"{command} on {model}"
    plan = PLANNERS[stage](model, options, gpus=args.gpus, gpu_memory_gb=parse_memory(args.gpu_memory),
                           text_tokens=args.text_tokens, images_per_item=args.images_per_item, title=title)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else plan.render())
    return 0
