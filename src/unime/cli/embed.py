"""`unime embed`: encode items from a JSONL file into a .npy array (options: `unime.models.embed_file.EmbedConfig`)."""

from __future__ import annotations

from unime.cli import add_config_option
from unime.cli.dataclass_options import add_options, config_from_args
from unime.models.image_budget import IMAGE_GROUP


def register(sub) -> None:
    from unime.models.embed_file import EmbedConfig

    p = sub.add_parser("embed", help="encode items (JSONL of {text, image|images|video}) to a .npy array")
    add_options(p, EmbedConfig, groups=("video", IMAGE_GROUP), own_first=True)
    add_config_option(p)
    p.set_defaults(func=_embed)


def _embed(args) -> int:
    from unime.data.skips import SkipReport, shown_on_failure
    from unime.models.embed_file import EmbedConfig, encode_items_file

    with shown_on_failure(SkipReport()) as skips:  # every item skipped: the reasons before "no items to encode"
        out, n, dim, skips = encode_items_file(config_from_args(EmbedConfig, args), skips=skips,
                                              overwrite=bool(getattr(args, "overwrite", False)))
    print(f"{out}: {n} x {dim}" + (f"; {skips.summary()}" if skips.total else ""))
    return 0
