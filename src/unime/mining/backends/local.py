"""The default judge backend: the fast `JudgeScorer` path in this process."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from unime.mining.backends.base import JudgeBackend, JudgeSpec, QueryGroup


class LocalBackend(JudgeBackend):
    name = "local"

    def __init__(self, spec: JudgeSpec | None = None, *, judge=None, show_progress: bool = False):
        if spec is None and judge is None:
            raise ValueError("LocalBackend needs a JudgeSpec or a loaded JudgeScorer")
        self.spec = spec
        self._judge = judge
        self.show_progress = show_progress

    @property
    def judge(self):
        if self._judge is None:
            self._judge = self.spec.load()
        return self._judge

    def score_groups(self, groups: Sequence[QueryGroup]) -> list[np.ndarray]:
        it = groups
        if self.show_progress:
            from tqdm.auto import tqdm

            it = tqdm(groups, desc="judge", unit="query", leave=False)
        return [self.judge.score_candidates(q, list(cands)) for q, cands in it]

    def stats(self) -> dict[str, Any]:
        return self._judge.stats.as_dict() if self._judge is not None else {}
