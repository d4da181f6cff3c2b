"""The models behind the endpoints: an embedder, optionally a reranker and a corpus index.

All model calls run on one worker thread (`executor`): one copy of each model per process."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import numpy as np

from unime.data.items import Item
from unime.serve.config import ServeConfig
from unime.serve.inputs import InlineOnlyLoader

if TYPE_CHECKING:
    from unime.models.reranker import ListwisePick

log = logging.getLogger(__name__)


def default_name(path: str) -> str:
    p = Path(path)
    if p.name in ("merged", "adapter") and p.parent.name:
        return p.parent.name
    return p.name or str(path)


class Encoded(NamedTuple):
    """One item's embedding and the tokens the model read for it (the usage an OpenAI client is told)."""

    vector: np.ndarray
    tokens: int


@dataclass
class Engine:
    embedder: Any
    model_name: str
    reranker: Any = None
    reranker_name: str | None = None
    index: Any = None
    max_batch_tokens: int | None = None  # `encode`'s padded tokens per model call (None: one call)

    def __post_init__(self):
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="unime-model")
        self._counters: dict[str, Any] = {}  # `count_tokens`' tokenizers, by model

    @classmethod
    def load(cls, config: ServeConfig) -> "Engine":
        from unime.models.embedder import Embedder

        from unime.data.video import VideoOptions, VideoSampling

        if config.reranker and config.rerank_data_root is not None and not Path(config.rerank_data_root).is_dir():
            from unime.errors import OptionError  # else every reranked search of an image item failed

            raise OptionError(config, "{rerank_data_root} {root!r}: no such folder (the folder of the indexed images "
                              "the reranker reads)", root=str(config.rerank_data_root))
        index = reranker = None
        # the --video-* options, as `unime embed` takes them; unset, the index's (QA: --video-frames 4 was refused);
        # given and other than the index's, refused by `check_model` below, naming both samplings. Given at its
        # default (--video-frames 8: `from_fields` gives None, the default sampling) an option is given all the
        # same: the default sampling, refused over an index of another one (it was the index's, silently)
        sampling = VideoSampling.from_fields(config)
        given = any(getattr(config, f.name) is not None for f in dataclasses.fields(VideoOptions))
        if config.index:
            from unime.index.store import CorpusIndex, index_video_sampling

            index = CorpusIndex(config.index, mmap=config.mmap).require_items()
            if not given:
                sampling = index_video_sampling(index.manifest)
        emb = Embedder.from_pretrained(config.model, device=config.device, dtype=config.dtype,
                                       item_format=config.item_format, attn_implementation=config.attn_implementation,
                                       video_sampling=sampling)
        # requests carry decoded images only (held to the model's processor's limits); the video sampling stays the
        # embedder's (the index's; --item-format vlm2vec's frame rule), as does the index's record of it
        emb.image_loader = InlineOnlyLoader(max_aspect_ratio=emb.image_loader.max_aspect_ratio,
                                            video=emb.image_loader.video_sampling)
        if index is not None:
            from unime.index.store import check_model
            from unime.models.embedding_cache import embedding_settings

            check_model(index, config.model, embedding_settings(emb, config.dtype), device=emb.device)
        if config.reranker:
            from unime.models.reranker import Reranker

            # indexed items' images are read from the index's data root (never from a request)
            root = config.rerank_data_root or (index.data_root if index is not None else None)
            batch = {"batch_size": config.rerank_batch} if config.rerank_batch else {}
            from unime.models.loading import loading_as

            with loading_as("--reranker"):
                reranker = Reranker.from_pretrained(config.reranker, device=config.device, dtype=config.dtype,
                                                    data_root=root, attn_implementation=config.attn_implementation,
                                                    **batch)
            if root is None:
                reranker.image_loader.__class__ = InlineOnlyLoader
        return cls(emb, config.model_name or default_name(config.model), reranker,
                   config.reranker_name or (default_name(config.reranker) if config.reranker else None), index,
                   config.max_batch_tokens)

    @property
    def max_aspect_ratio(self) -> float | None:
        """The strictest aspect-ratio limit of the served models' image processors (their loaders'), which
        request images are decoded under (`unime.serve.inputs.decode_image`); None: no limit."""
        limits = [m.image_loader.max_aspect_ratio for m in (self.embedder, self.reranker)
                  if getattr(getattr(m, "image_loader", None), "max_aspect_ratio", None) is not None]
        return min(limits, default=None)

    @property
    def context_tokens(self) -> int | None:
        """The smallest `max_position_embeddings` of the served models (their text model's): the longest input they
        are built for, which caps the service's token limit per text (`unime.serve.app`); None: not known."""
        from unime.models.context import context_tokens

        return context_tokens((self.embedder, self.reranker))

    def count_tokens(self, text: str, model: str = "embedder") -> int:
        """The tokens of `text` alone (no chat template, no special tokens) by the tokenizer of `model` ("embedder"
        or "reranker": the one that reads the text), on the request's thread: a copy of its Rust tokenizer, never
        padded or truncated, since the model thread's processor sets padding on the original and a fast tokenizer
        used by two threads at once fails ("Already borrowed")."""
        counter = self._counters.get(model)
        if counter is None:
            from unime.models.context import token_counter

            counter = self._counters[model] = token_counter(getattr(self, model).adapter.tokenizer)
        return counter(text)

    @property
    def dim(self) -> int:
        return int(self.embedder.hidden_size)

    def encode(self, items: Sequence[Item]) -> list[Encoded]:
        """Each item's embedding and token count: its processor input_ids (chat template and image/video
        placeholder tokens included), taken from the batch the model ran. The items (a dynamic batch) are run in
        `token_batches` of `max_batch_tokens`: one long text does not pad a model call of short ones."""
        from unime.models.embedder import padding_shape

        items = list(items)
        batches = [list(range(len(items)))] if self.max_batch_tokens is None else token_batches(
            [self.count_tokens(it.text) for it in items], [padding_shape(it) for it in items], self.max_batch_tokens)
        out: list[Encoded] = [None] * len(items)  # type: ignore[list-item]
        for batch in batches:
            # NaN or inf is answered per request (a 500 naming its input, `unime.serve.app`), not refused for the
            # whole batch, other requests' inputs included
            vecs, tokens = self.embedder.encode([items[i] for i in batch], batch_size=len(batch),
                                                return_token_counts=True, check_finite=False)
            for i, v, n in zip(batch, vecs, tokens):
                out[i] = Encoded(v, int(n))
        return out

    def rerank_pairwise(self, query: Item, docs: Sequence[Item]) -> tuple[list[int], list[float], int]:
        """(order, score per document, tokens the model read): P(Yes) per document, sorted (stable: ties keep the
        given order)."""
        scores, tokens = self.reranker.score_pairs(query, list(docs), return_token_counts=True)
        scores = np.asarray(scores, dtype=np.float64)
        return np.argsort(-scores, kind="stable").tolist(), scores.tolist(), int(tokens)

    def pick_many(self, requests: Sequence[tuple[Item, Sequence[Item]]]) -> list[ListwisePick]:
        """The listwise pick of each (query, documents) request and its source ("answer", or "fallback" to the
        pairwise scores' argmax), from one `Reranker.listwise_picks` call: concurrent requests share the
        reranker's batched generation (`DynamicBatcher` in `unime.serve.app`)."""
        if any(not docs for _, docs in requests):
            raise ValueError("a listwise rerank request without documents")
        return self.reranker.listwise_picks([q for q, _ in requests], [list(d) for _, d in requests])

    def close(self) -> None:
        self.executor.shutdown(wait=True)


def token_batches(lengths: Sequence[int], shapes: Sequence[Any], max_tokens: int) -> list[list[int]]:
    """Positions of items cut into batches of at most `max_tokens` padded tokens (a batch's longest `lengths` times
    its size; an item longer than that alone): ordered by (`shapes`, length), so that items of one shape (the
    embedder's `padding_shape`: video, image count) and alike lengths stand together, a new batch begun at each
    new shape and where the next item would take the batch past `max_tokens`."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: (shapes[i], lengths[i])):
        last = batches[-1] if batches else None
        if last and shapes[last[-1]] == shapes[i] and (len(last) + 1) * max(lengths[i], 1) <= max_tokens:
            last.append(i)
        else:
            batches.append([i])
    return batches


def listwise_order(picked: int, n: int) -> tuple[list[int], list[float]]:
    """(order, score per document) of a listwise pick: the picked document first (score 1.0), the rest in the
    given order (score 0.0)."""
    return [picked] + [i for i in range(n) if i != picked], [1.0 if i == picked else 0.0 for i in range(n)]
