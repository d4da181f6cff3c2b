"""`unime train ...`: training stages. This module only parses options and calls the stage functions.

Actions register themselves with `register_train_action(name, add_parser)`; `add_parser(actions)`
receives the `train` group's sub-parsers and adds its parser with `set_defaults(func=...)`. The
embedder action is registered below; another CLI module adds its actions the same way and is
listed in `TRAIN_ACTION_MODULES` (imported when the parser is built).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from typing import Callable

from unime.cli import OPTION_LAYERS, add_config_option, origin_layer, refuse_ineffective_options
from unime.cli.dataclass_options import add_options, config_from_args
from unime.models.hf_arguments import TRAINER_ARGS_GROUP
from unime.models.image_budget import IMAGE_GROUP
from unime.models.lora import EMBEDDER_LORA_OPTIONS

# CLI modules that call `register_train_action` when imported (e.g. "unime.cli.train_reranker")
TRAIN_ACTION_MODULES: list[str] = ["unime.cli.train_reasoner", "unime.cli.train_reranker"]

_ACTIONS: dict[str, Callable[[argparse._SubParsersAction], None]] = {}


def register_train_action(name: str, add_parser: Callable[[argparse._SubParsersAction], None]) -> None:
    """Add `unime train NAME`. `add_parser(actions)` must call `actions.add_parser(NAME, ...)`."""
    _ACTIONS[name] = add_parser


def register(sub) -> None:
    for module in TRAIN_ACTION_MODULES:
        importlib.import_module(module)
    p = sub.add_parser("train", help="train embedders (and, with their modules, rerankers / judges)")
    actions = p.add_subparsers(dest="train_command", metavar="ACTION")
    for name in sorted(_ACTIONS):
        _ACTIONS[name](actions)


# -- unime train embedder ------------------------------------------------------------------------------
def _add_embedder_parser(actions) -> None:
    from unime.train.embedder_config import EmbedderTrainingConfig

    p = actions.add_parser(
        "embedder", help="train an embedder with soft semantic labels (UniME-V2 stage D)",
        description="Train a universal multimodal embedder on mined records (query, positive, hard negatives, "
                    "judge scores). Launch with torchrun for data parallelism.")
    add_options(p, EmbedderTrainingConfig, groups=TRAIN_GROUPS, default_group="parameters")
    add_config_option(p)
    p.set_defaults(func=_train_embedder, _derived_values=_embedder_batch_values, _config_warnings=warmup_warnings,
                   _before_claim=_check_embedder)


def warmup_warnings(values: dict) -> list[str]:
    """`--print-config` of a trainer with --warmup and --steps: the WARNING its run logs at the start when the warm-up
    covers the run (`unime.models.warmup.run_warmup_warning`), from the resolved values; none when the steps come
    from the epochs (they depend on the records)."""
    from unime.models.warmup import run_warmup_warning

    text = run_warmup_warning(values.get("warmup") or 0, values.get("steps"))
    return [text] if text else []


def lora_needs(lora_options: type, condition: str = "full", needed: bool = False) -> list[tuple[str, str, bool]]:
    """Rules for `refuse_ineffective_options`: every option of `lora_options` (`unime.models.lora.lora_options`)
    but `condition` itself acts only with an adapter on the model: without --full (the default), or where a rank of
    0 means full fine-tuning, with a --lora-r above 0 (`lora_needs(..., "lora_r", True)`: the reasoner)."""
    return [(f.name, condition, needed) for f in dataclasses.fields(lora_options) if f.name != condition]


def refuse_lora_options_on_an_adapter(args, command: str, lora_options: type, values=None, *,
                                      rank_chooses_lora: bool = False) -> None:
    """Every trainer's rule (`unime.models.lora.model_to_train`): a PEFT adapter as --model (an adapter folder, or a
    run folder holding only adapter/) is trained with its own LoRA, so every option of `lora_options` the user gave
    does nothing and is refused (`refuse_ineffective_options`), whatever its value — the adapter's own rank too.
    `rank_chooses_lora`: --lora-r 0 is full fine-tuning (the reasoner), refused on an adapter with its own message
    (merge it first: `unime.models.lora.refuse_full_fine_tuning_of_adapter`)."""
    from types import SimpleNamespace

    from unime.models.loading import peft_adapter_config

    own = peft_adapter_config(args.model) if getattr(args, "model", None) else None
    if own is None:
        return
    rank = getattr(values if values is not None else args, "lora_r", None)
    dests = [f.name for f in dataclasses.fields(lora_options)
             if not (f.name == "lora_r" and rank_chooses_lora and rank == 0)]
    refuse_ineffective_options(
        args, command, [(d, "model", False) for d in dests], values=SimpleNamespace(model=True),
        condition=f"with --model {args.model}, a PEFT adapter trained with its own LoRA (r {own.get('r')}; for a new "
                  f"adapter, give its base model {own.get('base_model_name_or_path')} as --model)")


# the embedder's options that act only with a flag's value (`refuse_ineffective_options`): --chunk-size with
# --gradcache, every LoRA option without --full
_EMBEDDER_NEEDS = [("chunk_size", "gradcache", True), *lora_needs(EMBEDDER_LORA_OPTIONS)]

# the option groups of the trainers' --help, in order
TRAIN_GROUPS = ("data", "loss", "parameters", IMAGE_GROUP, "video", "optimisation", "checkpoints",
                TRAINER_ARGS_GROUP)


def option_layer(args, dest: str) -> int:
    """The layer option `dest` came from: 0 a recipe, 1 a config file, 2 the command line; -1 its default."""
    layer = origin_layer(args, dest)
    return -1 if layer is None else OPTION_LAYERS.index(layer)


def global_batch_dropped(args, command: str = "train embedder") -> bool:
    """Does a `--batch-size` from a nearer layer (the command line over a config file or a recipe, a config file
    over a recipe) drop the `--global-batch` of a farther one? Both on one layer are refused (a UsageError of
    `command`: `unime plan` refuses them in its --set as the trainer does on its command line)."""
    from unime.errors import UsageError

    if not getattr(args, "global_batch", None) or "batch_size" not in getattr(args, "_origins", {}):
        return False
    if option_layer(args, "batch_size") == option_layer(args, "global_batch"):
        raise UsageError("give --batch-size (per device) or --global-batch (over all processes), not both",
                         command=command)
    return option_layer(args, "batch_size") > option_layer(args, "global_batch")  # the nearer wins (README)


def dropped_options(args, rules) -> dict[str, tuple[object, str]]:
    """{dest: (the value it takes, why)} of the options a nearer layer's other option drops: each rule is (the
    nearer option's dest, the dropped option's dest, the dropped option's unset value), e.g. ("epochs", "steps",
    None): an `--epochs` given on the command line drops a recipe's or a config file's `--steps`, as a nearer
    `--batch-size` drops a farther `--global-batch` (README: options win). Both on one layer are left to the
    command's own rule."""
    origins = getattr(args, "_origins", {})
    out: dict[str, tuple[object, str]] = {}
    for nearer, farther, unset in rules:
        if nearer in origins and farther in origins and getattr(args, farther) != unset \
                and option_layer(args, nearer) > option_layer(args, farther):
            out[farther] = (unset, dropped_reason(args, nearer, farther))
    return out


def dropped_reason(args, nearer: str, farther: str) -> str:
    """`--print-config`'s origin of option `farther`, dropped by the nearer `nearer`."""
    origins = getattr(args, "_origins", {})
    return f"dropped: --{nearer.replace('_', '-')} ({origins[nearer]}) wins over {getattr(args, farther)} " \
           f"({origins[farther]})"


def drop_farther_options(args, rules) -> None:
    """Set each option a nearer layer's other option drops (`dropped_options`) to its unset value."""
    for dest, (unset, _) in dropped_options(args, rules).items():
        setattr(args, dest, unset)


# --steps and --epochs: the nearer one wins (both None unless given)
_EMBEDDER_DROPS = [("epochs", "steps", None), ("steps", "epochs", None)]


def embedder_config_from_args(args):
    """The embedder's config from the parsed options. `--global-batch` sets the per-device batch, unless a nearer
    `--batch-size` drops it (`global_batch_dropped`)."""
    from unime.train.embedder_config import EmbedderTrainingConfig

    if global_batch_dropped(args):
        args.global_batch = None
    drop_farther_options(args, _EMBEDDER_DROPS)
    refuse_ineffective_options(args, "train embedder", _EMBEDDER_NEEDS)
    refuse_lora_options_on_an_adapter(args, "train embedder", EMBEDDER_LORA_OPTIONS)
    return config_from_args(EmbedderTrainingConfig, args)


def _embedder_batch_values(args) -> dict[str, tuple[object, str]]:
    """`--print-config`: the batch options as the run uses them (value, origin): a `--global-batch` a nearer
    `--batch-size` drops is None; a kept one sets the per-device `--batch-size` for this launch's processes."""
    import os

    from unime.errors import UnimeError
    from unime.train.embedder_config import per_device_batch

    dropped = dropped_options(args, _EMBEDDER_DROPS)
    if not getattr(args, "global_batch", None):
        return dropped
    if global_batch_dropped(args):
        return {**dropped, "global_batch": (None, dropped_reason(args, "batch_size", "global_batch"))}
    world = int(os.environ.get("WORLD_SIZE", "1"))
    derived = (f"derived from --global-batch {args.global_batch} / ({world} process(es) of this launch x --grad-accum "
               f"{args.grad_accum})")
    try:
        return {**dropped, "batch_size": (per_device_batch(args.global_batch, args.grad_accum), derived)}
    except UnimeError as e:
        return {**dropped, "batch_size": (None, str(e))}


def _check_embedder(args) -> None:
    """The embedder's checks that need no model, before the output folder is claimed (`unime.cli.main`)."""
    from unime.train.embedder_trainer import check_embedder_options

    check_embedder_options(embedder_config_from_args(args))


def _train_embedder(args) -> int:
    from unime.train.embedder_trainer import train_embedder

    result = train_embedder(embedder_config_from_args(args))
    m = result.metrics  # printed by the first process only under torchrun (`unime.cli.main_process_stdout`)
    if "final_loss" in m:
        print(f"loss {m['initial_loss']:.4f} -> {m['final_loss']:.4f} over {m.get('steps')} steps")
    print(result.merged)
    return 0


register_train_action("embedder", _add_embedder_parser)
