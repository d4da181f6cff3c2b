"""`oracle`: ground-truth relevance in place of an MLLM judge — a diagnostic.

`JudgeSpec.path` is either
- a world folder made by `unime data synth`: each (query, candidate) pair gets `World.relevance`
  (graded, in [0, 1]; items not in that world raise the world's `DataError`), or
- a labels file (JSONL), e.g. the `train/qrels.jsonl` that `unime data import` writes: lines
  ``{"query": item, "candidates": [item, ..], "relevance": [grade, ..]}`` (the eval qrels format) and / or
  ``{"query": item, "candidate": item, "label": grade}`` (``relevance`` / ``score`` also accepted as the
  grade's key). A pair the file does not list scores 0 (not relevant).

  A judge score is a probability in [0, 1]: grades within it are scores as they are; a file with a grade above
  1 (graded qrels, e.g. TREC's 0-3) has every grade divided by its largest, so its top grade scores 1 and the
  others keep their ratios to it (0-3: 0, 1/3, 2/3, 1); `stats()` says so.

The rest of the pipeline (false-negative filter, cyclical sampling, soft labels) then runs on a perfect
judge. Comparing its rows with the real judge's separates the judge's quality from the training recipe.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from unime.mining.backends.base import JudgeBackend, JudgeSpec, QueryGroup

LABEL_KEYS = ("label", "relevance", "score")


def read_labels(path: str) -> dict[tuple[str, str], float]:
    """(query key, candidate key) → grade, from a labels / qrels JSONL file (see the module doc)."""
    from unime.data.items import Item
    from unime.data.jsonl import iter_jsonl
    from unime.errors import DataError

    def grade(value: Any, *, record: str, field: str) -> float:
        if isinstance(value, bool):
            return float(value)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise DataError(f"expected a grade >= 0, got {value!r}", source=path, record=record, field=field)
        return float(value)

    labels: dict[tuple[str, str], float] = {}
    for n, obj in iter_jsonl(path):
        rec = f"line {n}"
        if not isinstance(obj, dict) or "query" not in obj:
            raise DataError("expected an object with a 'query'", source=path, record=rec, field="query")
        q = Item.from_dict(obj["query"], source=path, record=rec, field_name="query")
        if "candidates" in obj:
            cands, grades = obj["candidates"], obj.get("relevance")
            if not isinstance(cands, list) or not isinstance(grades, list) or len(cands) != len(grades):
                raise DataError("'candidates' and 'relevance' must be lists of one length", source=path, record=rec,
                                field="relevance")
            for i, (c, g) in enumerate(zip(cands, grades)):
                item = Item.from_dict(c, source=path, record=rec, field_name=f"candidates[{i}]")
                labels[(q.key, item.key)] = grade(g, record=rec, field=f"relevance[{i}]")
        elif "candidate" in obj:
            key = next((k for k in LABEL_KEYS if k in obj), None)
            if key is None:
                raise DataError(f"missing the grade (one of {list(LABEL_KEYS)})", source=path, record=rec,
                                field="label")
            item = Item.from_dict(obj["candidate"], source=path, record=rec, field_name="candidate")
            labels[(q.key, item.key)] = grade(obj[key], record=rec, field=key)
        else:
            raise DataError("expected 'candidates' + 'relevance' or 'candidate' + 'label'", source=path, record=rec)
    if not labels:
        raise DataError("no labelled pairs", source=path)
    return labels


class WorldOracleBackend(JudgeBackend):
    name = "oracle"

    def __init__(self, spec: JudgeSpec):
        self.path = spec.path
        self.pairs = 0
        self.unlisted = 0
        self.top_grade = None  # a labels file's largest grade, where it is above 1 and so scales every grade
        if Path(spec.path).is_file():
            self.world = None
            self.labels = read_labels(spec.path)
            top = max(self.labels.values())
            if top > 1:
                self.top_grade = top
                self.labels = {pair: g / top for pair, g in self.labels.items()}
        else:
            from unime.data.synth import World

            self.world = World.load(spec.path)

    def score_groups(self, groups: Sequence[QueryGroup]) -> list[np.ndarray]:
        if self.world is not None:
            out = [np.asarray(self.world.relevances(q, cands), dtype=np.float64) for q, cands in groups]
        else:
            out = []
            for q, cands in groups:
                scores = [self.labels.get((q.key, c.key)) for c in cands]
                self.unlisted += sum(s is None for s in scores)
                out.append(np.asarray([0.0 if s is None else s for s in scores], dtype=np.float64))
        self.pairs += sum(len(s) for s in out)
        return out

    def stats(self) -> dict[str, Any]:
        if self.world is not None:
            return {"oracle": "ground-truth relevance of the generated world", "world": str(self.world.root),
                    "pairs": self.pairs}
        scaled = {} if self.top_grade is None else {"grades": f"divided by the file's largest, {self.top_grade:g}"}
        return {"oracle": "labels file (unlisted pairs score 0)", "labels": str(self.path), **scaled,
                "pairs": self.pairs, "unlisted_pairs": self.unlisted}
