"""The longest text a model is built for, and a text's tokens by its tokenizer: `unime serve`'s token limit per text
(`unime.serve.engine.Engine`) and the same limit in `unime embed`, `unime index build` and `unime search`.

The model runs a longer text without a word (no truncation: rotary positions past `max_position_embeddings` are
computed as any other, positions it was never trained on), so each command refuses it before it is encoded.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from unime.data.skips import data_error
from unime.errors import DataError


def context_tokens(models: Iterable[Any]) -> int | None:
    """The smallest `max_position_embeddings` of `models` (each an `Embedder`, `Reranker` ... holding `.model`;
    None entries ignored), read from their text model's config: the longest input they are built for; None: not
    known."""
    sizes = []
    for m in models:
        config = getattr(getattr(m, "model", None), "config", None)
        n = getattr(getattr(config, "text_config", config), "max_position_embeddings", None)
        if isinstance(n, int):
            sizes.append(n)
    return min(sizes, default=None)


def token_counter(tokenizer) -> Callable[[str], int]:
    """A function giving the tokens of a text alone (no chat template, no special tokens) by `tokenizer` (a fast
    tokenizer): on a copy of its Rust tokenizer, never padded or truncated, so that it may be used on another thread
    than the model's (a fast tokenizer used by two threads at once fails: "Already borrowed") and whatever padding
    the model's processor sets."""
    from tokenizers import Tokenizer

    counter = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    counter.no_padding()
    counter.no_truncation()
    return lambda text: len(counter.encode(text, add_special_tokens=False).ids)


def too_long_error(tokens: int, limit: int, *, source=None, record=None, field: str = "item.text") -> DataError:
    """The `DataError` (skip reason "too_long") of a text of `tokens` tokens over the model's `limit`."""
    return data_error("too_long", f"text of {tokens} tokens is over the limit of {limit} (the model's "
                      "max_position_embeddings, the longest text it is built for)", source=source, record=record,
                      field=field)


def check_text_tokens(emb) -> Callable[..., None]:
    """A check of an item's text against the context of the embedder `emb` (`context_tokens`, `token_counter`):
    called with (item, source=, record=, field=), it raises `too_long_error` for a text over the limit; a model whose
    context is not known checks nothing."""
    limit = context_tokens([emb])
    count = token_counter(emb.adapter.tokenizer) if limit is not None else None

    def check(item, *, source=None, record=None, field: str = "item.text") -> None:
        if count is not None and item.text:
            n = count(item.text)
            if n > limit:
                raise too_long_error(n, limit, source=source, record=record, field=field)

    return check
