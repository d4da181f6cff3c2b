"""`unime embed`: encode items from a JSONL file into a .npy array."""

from __future__ import annotations

from unime.cli import add_config_option
from unime.cli.video_options import add_video_options, video_sampling_from_args
from unime.cli.video_options import add_image_options


def register(sub) -> None:
    p = sub.add_parser("embed", help="encode items (JSONL of {text, image|images|video}) to a .npy array")
    p.add_argument("--model", required=True, help="embedder checkpoint (HF folder, hub id, or PEFT adapter)")
    p.add_argument("--items", required=True, help="JSONL, one item per line")
    p.add_argument("--data-root", default=None, help="folder that image paths are relative to (default: the items file's folder)")
    p.add_argument("--out", required=True, help="output .npy (float32, L2-normalised)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    p.add_argument("--dtype", default="auto", help="auto, fp32, bf16, fp16")
    add_video_options(p)
    p.add_argument("--on-error", default="raise", choices=["raise", "skip"],
                   help="skip bad lines and items with a bad image (counted and reported; OUT.lines.json then "
                        "lists the line each row of the array came from) instead of stopping at the first")
    add_image_options(p)
    add_config_option(p)
    p.set_defaults(func=_embed)


def _embed(args) -> int:
    from unime.models.embed_file import encode_items_file
    from unime.models.image_budget import ImageBudget

    out, n, dim, skips = encode_items_file(args.items, args.out, model=args.model, data_root=args.data_root,
                                           device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                                           on_error=args.on_error, video_sampling=video_sampling_from_args(args),
                                           image_budget=ImageBudget.from_args(args))
    print(f"{out}: {n} x {dim}" + (f"; {skips.summary()}" if skips.total else ""))
    return 0
