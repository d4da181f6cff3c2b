"""The role a unime trainer wrote a checkpoint folder for, read from the files it leaves in the folder (its run folder,
adapter/ and merged/ alike): a reranker or judge (`unime train reranker` / `train judge`: unime_reranker.json and
its `role`), an embedder (`unime train embedder`: its model card's `pipeline_tag`). A loader (`Embedder`,
`Reranker`, `JudgeScorer`) refuses a folder of another role (`refuse_other_role`) before any weights load:
`Embedder.from_pretrained` of a judge loaded without a word, and embedded with a model never trained to (QA). A
checkpoint without such a mark (a hub model, another tool's folder) is of no known role and loads as asked."""

from __future__ import annotations

import json
import os
from pathlib import Path

METADATA_FILE = "unime_reranker.json"  # a reranker's or judge's record, written by unime.train.reranker_trainer
# how each role is loaded: (Python, where the command line takes it)
_LOADERS = {"embedder": ("unime.Embedder", "--model or --embedder"),
            "reranker": ("unime.models.reranker.Reranker", "--rerank"),
            "judge": ("unime.models.judge.JudgeScorer", "--judge")}


def trained_role(path: str | os.PathLike | None) -> tuple[str, str] | None:
    """(role, the file telling it) of the local folder `path` a unime trainer wrote, else None (a hub id, a file,
    a folder without a mark)."""
    from unime.models.export import EMBEDDER_PIPELINE_TAG
    from unime.models.run_state import CARD_FILE

    if path is None or not Path(path).is_dir():
        return None
    folder = Path(path)
    try:
        role = json.loads((folder / METADATA_FILE).read_text(encoding="utf-8")).get("role")
    except (OSError, ValueError, AttributeError):
        role = None
    if role in ("reranker", "judge"):
        return role, METADATA_FILE
    try:
        card = (folder / CARD_FILE).read_text(encoding="utf-8")
    except (OSError, ValueError):
        return None
    front = card.split("\n---\n", 1)[0].splitlines() if card.startswith("---\n") else []
    if f"pipeline_tag: {EMBEDDER_PIPELINE_TAG}" in front and "- unime" in front:
        return "embedder", CARD_FILE
    return None


def refuse_other_role(role: str, *paths: str | os.PathLike | None, takes: tuple[str, ...] = ()) -> None:
    """UsageError for the first of `paths` that a unime trainer wrote for another role than `role` or the roles the
    loader `takes` too (`trained_role`), naming the folder, what it is and what loads it."""
    from unime.errors import UsageError

    for path in paths:
        found = trained_role(path)
        if found is None or found[0] in (role, *takes):
            continue
        other, evidence = found
        python, option = _LOADERS[other]
        article = "an" if other[0] in "aeiou" else "a"
        raise UsageError(f"'{path}' is {article} {other} (its {evidence}: `unime train {other}` wrote it), not "
                         f"{'an' if role[0] in 'aeiou' else 'a'} {role}: load it with {python} (on the command "
                         f"line, as {option})")
