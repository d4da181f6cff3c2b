"""`unime train ...`: training stages. This module only parses options and calls the stage functions.

Actions register themselves with `register_train_action(name, add_parser)`; `add_parser(actions)`
receives the `train` group's sub-parsers and adds its parser with `set_defaults(func=...)`. The
embedder action is registered below; another CLI module adds its actions the same way and is
listed in `TRAIN_ACTION_MODULES` (imported when the parser is built).
"""

from __future__ import annotations

import argparse
import importlib
import os
from typing import Callable

from unime.cli import add_config_option

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
    from unime.models.image_budget import add_image_options
    from unime.models.lora import EMBEDDER_LORA
    from unime.train.loss_defaults import DEFAULT_KL_EPS, DEFAULT_TEMPERATURE

    p = actions.add_parser(
        "embedder", help="train an embedder with soft semantic labels (UniME-V2 stage D)",
        description="Train a universal multimodal embedder on mined records (query, positive, hard negatives, "
                    "judge scores). Launch with torchrun for data parallelism.")
    g = p.add_argument_group("data")
    g.add_argument("--model", required=True,
                   help="base checkpoint: HF folder or hub id (or a PEFT adapter to continue training)")
    g.add_argument("--records", required=True,
                   help="training records: unime JSONL / Parquet, or the released UniME-V2 JSON")
    g.add_argument("--data-root", default=None,
                   help="folder image paths are relative to (default: the records' folder)")
    g.add_argument("--out", required=True, help="output folder (checkpoints/, adapter/, merged/, README.md, curves)")
    g.add_argument("--skip-bad-records", dest="on_error", action="store_const", const="skip", default="raise",
                   help="skip malformed records (counted and reported) instead of failing")
    g.add_argument("--homogeneous-batches", action="store_true",
                   help="every per-device batch from one dataset (Record.dataset)")
    g.add_argument("--workers", type=int, default=0, help="data-loader worker processes")

    g = p.add_argument_group("loss")
    g.add_argument("--loss", default="auto", choices=["auto", "symmetric_kl", "js", "infonce"],
                   help="auto (default): plain pairs → in-batch infonce; judge-scored records → symmetric_kl; "
                        "negatives without scores → infonce with them. symmetric_kl (released UniME-V2), js (true "
                        "Jensen-Shannon), infonce")
    g.add_argument("--hard-negatives", type=int, default=None, metavar="K",
                   help="use the first K stored negatives of each record (default: the records' count, at most 8; "
                        "0 for plain pairs)")
    g.add_argument("--allow-fallback-labels", action="store_true",
                   help="train a soft-label loss on records mined mostly by the fallback (random negatives scored "
                        "1.0; refused by default)")
    g.add_argument("--in-batch", action=argparse.BooleanOptionalAction, default=None,
                   help="infonce: in-batch negatives (default on)")
    g.add_argument("--tau", type=float, default=DEFAULT_TEMPERATURE, help="temperature (default %(default)s)")
    g.add_argument("--label-tau", type=float, default=None,
                   help="temperature of the judge-score softmax (default: --tau)")
    g.add_argument("--kl-eps", type=float, default=DEFAULT_KL_EPS, help="symmetric_kl: log(p + eps) as released; 0 = exact "
                   "(measured: no faster with 1/0 labels, docs/SOFT_LABELS.md)")
    g.add_argument("--symmetric", action="store_true", help="infonce: add the target-to-query direction")
    g.add_argument("--mask-duplicates", action=argparse.BooleanOptionalAction, default=True,
                   help="in-batch infonce: other copies of a query's positive in the batch (same text and "
                        "images) are masked, not negatives (default on; --no-mask-duplicates keeps them)")

    g = p.add_argument_group("parameters")
    g.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    g.add_argument("--lora-r", type=int, default=EMBEDDER_LORA.r)
    g.add_argument("--lora-alpha", type=int, default=EMBEDDER_LORA.alpha)
    g.add_argument("--lora-dropout", type=float, default=EMBEDDER_LORA.dropout)
    g.add_argument("--lora-targets", default=",".join(EMBEDDER_LORA.targets),
                   help="comma-separated module names (decoder only unless --lora-vision), or all-linear")
    g.add_argument("--lora-vision", action="store_true",
                   help="also adapt the vision tower's layers named in --lora-targets (vision block names: "
                        "Qwen2-VL qkv,proj,fc1,fc2; Qwen2.5-VL qkv,proj,gate_proj,up_proj,down_proj; "
                        "Qwen3-VL qkv,proj,linear_fc1,linear_fc2)")
    g.add_argument("--dora", action=argparse.BooleanOptionalAction, default=False,
                   help="DoRA instead of plain LoRA (the UniME-V2 release uses DoRA)")
    g.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 autocast on GPU, fp32 on CPU")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    g.add_argument("--pooling", default="auto", choices=["auto", "last", "emb"])
    add_image_options(p)
    from unime.cli.video_options import add_video_options

    add_video_options(p)

    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=8, help="queries per device per micro-batch")
    g.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    g.add_argument("--global-batch", type=int, default=None, metavar="N",
                   help="queries per optimizer step over all processes (sets --batch-size = N / (processes x "
                        "--grad-accum); UniME-V2: 1024 with --gradcache)")
    g.add_argument("--steps", type=int, default=None, help="optimizer steps (default: --epochs 1)")
    g.add_argument("--epochs", type=float, default=None)
    g.add_argument("--lr", type=float, default=1e-4)
    g.add_argument("--warmup", type=float, default=0.1, help="warm-up: fraction of the steps if < 1, else steps")
    g.add_argument("--lr-scheduler", default="linear")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0 = off)")
    g.add_argument("--optim", default="adamw_torch", help="a transformers optimizer name (adamw_torch, sgd, ...)")
    g.add_argument("--gradcache", action="store_true", help="GradCache: large batches in the memory of one chunk")
    g.add_argument("--chunk-size", type=int, default=2, help="items per forward pass with --gradcache (default 2)")
    g.add_argument("--seed", type=int, default=0)

    g = p.add_argument_group("checkpoints")
    g.add_argument("--save-steps", type=int, default=500)
    g.add_argument("--save-total-limit", type=int, default=None, help="keep at most this many checkpoints")
    g.add_argument("--logging-steps", type=int, default=10)
    g.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue from the given checkpoint (re-running the same command continues from the "
                        "latest complete one anyway; a finished run does nothing)")
    g.add_argument("--overwrite", action="store_true",
                   help="start over (discard OUT's checkpoints), also with changed options; and write into an OUT "
                        "this command did not create (replacing only what it writes there)")
    add_config_option(p)
    p.set_defaults(func=_train_embedder)


def embedder_config_from_args(args):
    from unime.train.embedder_trainer import EmbedderTrainingConfig

    targets = args.lora_targets
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    return EmbedderTrainingConfig(
        model=args.model, out=args.out, records=args.records, data_root=args.data_root, loss=args.loss,
        hard_negatives=args.hard_negatives, in_batch=args.in_batch, tau=args.tau, label_tau=args.label_tau,
        kl_eps=args.kl_eps, symmetric=args.symmetric, mask_duplicates=args.mask_duplicates, full=args.full,
        lora_r=args.lora_r, lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout, lora_targets=tuple(targets), lora_vision=args.lora_vision, dora=args.dora,
        dtype=args.dtype, device=args.device, pooling=args.pooling, min_pixels=args.min_pixels,
        max_pixels=args.max_pixels, image_size=args.image_size, video_frames=args.video_frames,
        video_fps=args.video_fps, video_max_frames=args.video_max_frames, video_max_pixels=args.video_max_pixels,
        batch_size=args.batch_size,
        global_batch=args.global_batch,
        grad_accum=args.grad_accum, steps=args.steps, epochs=args.epochs, lr=args.lr, warmup=args.warmup,
        lr_scheduler=args.lr_scheduler, weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
        optim=args.optim, gradcache=args.gradcache, chunk_size=args.chunk_size,
        homogeneous_batches=args.homogeneous_batches, workers=args.workers, seed=args.seed,
        save_steps=args.save_steps, save_total_limit=args.save_total_limit, logging_steps=args.logging_steps,
        resume=args.resume, on_error=args.on_error, overwrite=bool(getattr(args, "overwrite", False)),
        allow_fallback_labels=args.allow_fallback_labels)


def _train_embedder(args) -> int:
    from unime.train.embedder_trainer import train_embedder

    result = train_embedder(embedder_config_from_args(args))
    if int(os.environ.get("RANK", "0")) == 0:  # one report under torchrun
        m = result.metrics
        if "final_loss" in m:
            print(f"loss {m['initial_loss']:.4f} -> {m['final_loss']:.4f} over {m.get('steps')} steps")
        print(result.merged)
    return 0


register_train_action("embedder", _add_embedder_parser)
