"""`unime embed`: encode items from a JSONL file into a .npy array."""

from __future__ import annotations

from unime.cli import add_config_option
from unime.cli.video_options import add_video_options, video_sampling_from_args


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
    add_config_option(p)
    p.set_defaults(func=_embed)


def _embed(args) -> int:
    import os

    import numpy as np

    from unime.data.items import Item
    from unime.data.jsonl import iter_jsonl
    from unime.models.embedder import Embedder

    from unime.data.roots import resolve_data_root

    root = resolve_data_root(args.items, args.data_root)
    items = [Item.from_dict(obj, source=args.items, record=f"line {n}") for n, obj in iter_jsonl(args.items)]
    emb = Embedder.from_pretrained(args.model, device=args.device, dtype=args.dtype, data_root=root,
                                   batch_size=args.batch_size, video_sampling=video_sampling_from_args(args))
    vecs = emb.encode(items, show_progress=True)
    np.save(args.out, vecs)
    print(f"{args.out}: {vecs.shape[0]} x {vecs.shape[1]}")
    return 0
