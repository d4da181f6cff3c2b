"""Is a model let go before the next one loads? (`unime mine`: the embedder before the judge; `unime eval
--rerank`: the embedder before the reranker.)"""

from __future__ import annotations

import weakref


def alive_when_loading(monkeypatch, first: type, then: type) -> list[list[bool]]:
    """Patch `first.from_pretrained` to keep a weak reference to the model of each object it loads, and
    `then.from_pretrained` to note, at each call, which of those models are still alive. Returns the notes, one
    list per call of `then.from_pretrained` (filled as the code under test runs): ``[[False]]`` = one `first`
    loaded, gone when the one `then` loads."""
    load_first, load_then = first.from_pretrained.__func__, then.from_pretrained.__func__
    models, notes = [], []

    def loading_first(cls, *args, **kwargs):
        obj = load_first(cls, *args, **kwargs)
        models.append(weakref.ref(obj.model))
        return obj

    def loading_then(cls, *args, **kwargs):
        notes.append([m() is not None for m in models])
        return load_then(cls, *args, **kwargs)

    monkeypatch.setattr(first, "from_pretrained", classmethod(loading_first))
    monkeypatch.setattr(then, "from_pretrained", classmethod(loading_then))
    return notes
