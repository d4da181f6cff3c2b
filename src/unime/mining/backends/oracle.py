"""`oracle`: the generated world's ground-truth relevance in place of an MLLM judge — a diagnostic.

Each (query, candidate) pair gets `World.relevance` (graded, in [0, 1]; 1.0 = fully satisfies the
query), so the rest of the pipeline (false-negative filter, cyclical sampling, soft labels) runs on a
perfect judge. It answers one question on a world made by `unime data synth`: how far does the method
get when the judge is right? Comparing its rows with the real judge's separates the judge's quality
from the training recipe. `JudgeSpec.path` is the world folder; items not in that world raise the
world's `DataError`, naming the item.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from unime.mining.backends.base import JudgeBackend, JudgeSpec, QueryGroup


class WorldOracleBackend(JudgeBackend):
    name = "oracle"

    def __init__(self, spec: JudgeSpec):
        from unime.data.synth import World

        self.world = World.load(spec.path)
        self.pairs = 0

    def score_groups(self, groups: Sequence[QueryGroup]) -> list[np.ndarray]:
        out = [np.asarray(self.world.relevances(q, cands), dtype=np.float64) for q, cands in groups]
        self.pairs += sum(len(s) for s in out)
        return out

    def stats(self) -> dict[str, Any]:
        return {"oracle": "ground-truth relevance of the generated world", "world": str(self.world.root),
                "pairs": self.pairs}
