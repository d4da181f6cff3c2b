"""The models behind the endpoints: an embedder, optionally a reranker and a corpus index.

All model calls run on one worker thread (`executor`): one copy of each model per process."""

from __future__ import annotations

import concurrent.futures
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from unime.data.items import Item
from unime.serve.config import ServeConfig
from unime.serve.inputs import InlineOnlyLoader

log = logging.getLogger(__name__)


def default_name(path: str) -> str:
    p = Path(path)
    if p.name in ("merged", "adapter") and p.parent.name:
        return p.parent.name
    return p.name or str(path)


@dataclass
class Engine:
    embedder: Any
    model_name: str
    reranker: Any = None
    reranker_name: str | None = None
    index: Any = None

    def __post_init__(self):
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="unime-model")

    @classmethod
    def load(cls, config: ServeConfig) -> "Engine":
        from unime.models.embedder import Embedder

        emb = Embedder.from_pretrained(config.model, device=config.device, dtype=config.dtype)
        emb.image_loader = InlineOnlyLoader()  # requests carry decoded images only
        index = reranker = None
        if config.index:
            from unime.index.store import CorpusIndex, check_model
            from unime.models.embedding_cache import embedding_settings

            index = CorpusIndex(config.index)
            check_model(index, config.model, embedding_settings(emb, config.dtype))
        if config.reranker:
            from unime.models.reranker import Reranker

            # indexed items' images are read from the index's data root (never from a request)
            root = config.rerank_data_root or (index.data_root if index is not None else None)
            reranker = Reranker.from_pretrained(config.reranker, device=config.device, dtype=config.dtype,
                                                data_root=root)
            if root is None:
                reranker.image_loader.__class__ = InlineOnlyLoader
        return cls(emb, config.model_name or default_name(config.model), reranker,
                   config.reranker_name or (default_name(config.reranker) if config.reranker else None), index)

    @property
    def dim(self) -> int:
        return int(self.embedder.hidden_size)

    def encode(self, items: Sequence[Item]) -> np.ndarray:
        return self.embedder.encode(list(items), batch_size=max(1, len(items)))

    def count_tokens(self, texts: Sequence[str]) -> int:
        tok = getattr(getattr(self.embedder, "adapter", None), "tokenizer", None)
        if tok is None:
            return 0
        return int(sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts if t))

    def rerank(self, query: Item, docs: Sequence[Item], mode: str) -> tuple[list[int], list[float]]:
        """(order, score per document): pairwise = P(Yes) per document, sorted (stable); listwise = the
        picked document first (score 1.0), the rest in the given order (score 0.0)."""
        if mode == "pairwise":
            scores = np.asarray(self.reranker.score_pairs(query, list(docs)), dtype=np.float64)
            order = np.argsort(-scores, kind="stable").tolist()
            return order, scores.tolist()
        picked = self.reranker.pick(query, list(docs))
        order = [picked] + [i for i in range(len(docs)) if i != picked]
        return order, [1.0 if i == picked else 0.0 for i in range(len(docs))]

    def close(self) -> None:
        self.executor.shutdown(wait=True)
