"""What every judge backend shares: the picklable `JudgeSpec` it is built from, the `JudgeBackend` interface
and the query-group type (see the package docstring)."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from unime.data.items import Item
from unime.errors import require_extra
from unime.models.prefix_scoring import IMAGE_CACHE_BYTES

QueryGroup = tuple[Item, Sequence[Item]]


# the pip extra and the modules of each backend that needs one
BACKEND_EXTRAS = {"ray": ("ray", "ray", "ray.data"), "vllm": ("vllm", "vllm")}


def require_backend(name: str) -> None:
    """`MissingExtra` (`unime.errors.require_extra`) when the backend `name` needs an extra that is not installed:
    checked before mining starts (`unime mine`) and by the backend itself."""
    if name in BACKEND_EXTRAS:
        extra, *modules = BACKEND_EXTRAS[name]
        require_extra(extra, f"the {name} backend (--backend {name})", *modules)


@dataclass(frozen=True)
class JudgeSpec:
    """How to load the judge: checkpoint, device/dtype, the data root its image paths are relative to,
    the fast path's chunk size (continuations per forward) and its candidate-image feature cache's bounds (items,
    bytes)."""

    path: str
    device: str | None = None
    dtype: str | None = None
    data_root: str | None = None
    allow_outside_root: bool = False
    adapter_path: str | None = None
    chunk_size: int = 16
    image_cache_size: int = 1024
    image_cache_bytes: int = IMAGE_CACHE_BYTES
    image_budget: tuple = ()  # explicit resolution options as sorted (field, value) pairs (ImageBudget)
    video_sampling: tuple = ()  # video options given, as sorted (name, value) pairs (VideoSampling.from_options)
    attn_implementation: str | None = None  # --attn-implementation (transformers' default when None)

    @property
    def sampling(self):
        from unime.data.video import VideoSampling

        return VideoSampling.from_options(**dict(self.video_sampling))

    @property
    def budget(self):
        from unime.models.image_budget import ImageBudget

        return ImageBudget.from_dict(dict(self.image_budget))

    def load(self, *, load_weights: bool = True):
        from unime.models.judge import JudgeScorer
        from unime.models.loading import loading_as

        with loading_as("--judge"):  # (mining's judge, `unime mine --judge`)
            return JudgeScorer.from_pretrained(
                self.path, device=self.device, dtype=self.dtype, data_root=self.data_root,
                allow_outside_root=self.allow_outside_root, adapter_path=self.adapter_path, chunk_size=self.chunk_size,
                image_cache_size=self.image_cache_size, image_cache_bytes=self.image_cache_bytes,
                load_weights=load_weights, image_budget=self.budget, video_sampling=self.sampling,
                attn_implementation=self.attn_implementation)

    def with_absolute_paths(self) -> "JudgeSpec":
        """This spec with its local paths (checkpoint, adapter, data root) made absolute, for workers that run in
        another working directory (a Ray cluster's); a hub model id stays as it is."""
        def absolute(p: str | None) -> str | None:
            return os.path.abspath(p) if p is not None and os.path.exists(p) else p

        return replace(self, path=absolute(self.path), adapter_path=absolute(self.adapter_path),
                       data_root=None if self.data_root is None else os.path.abspath(self.data_root))


class JudgeBackend(ABC):
    name: str = ""

    @abstractmethod
    def score_groups(self, groups: Sequence[QueryGroup]) -> list[np.ndarray]:
        """One float64 array of judge scores per group, candidates in the given order."""

    def score_shards(self, shards: Iterable[tuple[int, Sequence[QueryGroup]]]
                     ) -> Iterator[tuple[int, list[np.ndarray]]]:
        """Score several shards, yielding `(shard id, scores per group)` as each shard completes (possibly
        out of order). The default scores them one after the other; distributed backends stream them."""
        for sid, groups in shards:
            yield sid, self.score_groups(groups)

    def stats(self) -> dict[str, Any]:
        """Counters for the report (backend-specific)."""
        return {}

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
