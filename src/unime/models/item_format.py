"""How an embedder's items are written out as model input text (`--item-format`), recorded with checkpoints.

- `chat` (unime's default): the family's chat template — a user turn holding the item's images, video and
  text, then the assistant's opening (`FamilyAdapter.render_user_turn`).
- `vlm2vec`: the raw text VLM2Vec (TIGER-AI-Lab/VLM2Vec) feeds its Qwen2-VL / Qwen2.5-VL backbones, no chat
  template (`FamilyAdapter.vlm2vec_text`): a checkpoint trained by VLM2Vec (TIGER-Lab/VLM2Vec-Qwen2VL-2B,
  UniME-V2's Stage A retrieval embedder) gives its own vectors only when its items are written its way.

Pooling is the same in both (the last token, L2-normalised; SPEC §1.1). A model must be encoded the way it was
trained: a training run records a non-default format in `unime_item_format.json` beside its image budget
(OUT, adapter/ and merged/), and every command that loads an embedder reads it back (`resolve_item_format`);
`--item-format` given explicitly wins (a hub checkpoint carries no record).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from unime.options import option

ITEM_FORMATS = ("chat", "vlm2vec")
DEFAULT_ITEM_FORMAT = "chat"
FORMAT_FILE = "unime_item_format.json"
# the revision of each non-default format's rendering, part of the embedding-cache key: bumped when the rendering
# changes, so vectors cached under an earlier one are computed again (vlm2vec 2: images under 28 px enlarged, an
# MMEB row's text not given a second newline; its video frames are keyed by their own rule)
RENDERING_REVISIONS = {"vlm2vec": 2}


def check_item_format(value: str) -> str:
    if value not in ITEM_FORMATS:
        raise ValueError(f"item format must be one of {ITEM_FORMATS}, got {value!r}")
    return value


def recorded_item_format(path: str | os.PathLike | None) -> str | None:
    """The item format recorded with a checkpoint (`FORMAT_FILE` in PATH or its run folder, found as the image
    budget is: `unime.models.image_budget.record_folders`), or None if none is recorded."""
    from unime.models.image_budget import record_folders

    for folder in record_folders(path):
        f = folder / FORMAT_FILE
        if f.is_file():
            try:
                return check_item_format(json.loads(f.read_text(encoding="utf-8"))["item_format"])
            except (ValueError, KeyError, TypeError) as e:
                from unime.errors import ModelError

                raise ModelError(f"{f}: bad item format record: {e}") from None
    return None


def resolve_item_format(path: str | os.PathLike | None, explicit: str | None) -> str:
    """`explicit` if given, else the format recorded with the checkpoint at `path`, else `chat`."""
    if explicit is not None:
        return check_item_format(explicit)
    return recorded_item_format(path) or DEFAULT_ITEM_FORMAT


def item_format_record(item_format: str) -> dict[str, str]:
    """{file name: content} recording `item_format` in a checkpoint folder; nothing for the default (a
    checkpoint without a record is read as `chat`)."""
    if check_item_format(item_format) == DEFAULT_ITEM_FORMAT:
        return {}
    return {FORMAT_FILE: json.dumps({"item_format": item_format}, indent=2) + "\n"}


def save_item_format(folder: str | os.PathLike, item_format: str) -> Path | None:
    """Write the record of a non-default `item_format` into `folder` (atomically; a record this command did not
    write is not replaced: `unime.outdir.require_replaceable`); None for `chat`."""
    from unime.data.atomic import atomic_open
    from unime.outdir import require_replaceable

    for name, text in item_format_record(item_format).items():
        require_replaceable(folder, name)
        path = Path(folder) / name
        with atomic_open(path) as fh:
            fh.write(text)
        return path
    return None


@dataclass(kw_only=True)
class ItemFormatOptions:
    """`--item-format` (every command that encodes with an embedder, and `train embedder`)."""

    item_format: str | None = option(
        None, "how items are written as the embedder's input: chat (the family's chat template, unime's "
        "default) or vlm2vec (VLM2Vec's raw Qwen2-VL text: '<|image_pad|>' then the text, no chat template; "
        "for a VLM2Vec-trained checkpoint). Default: the format recorded with the checkpoint, else chat",
        choices=list(ITEM_FORMATS))
