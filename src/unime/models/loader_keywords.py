"""The checks of the keywords of the public loaders (`Embedder`, `Reranker`, `JudgeScorer.from_pretrained`), made
before anything loads: a value of the wrong type is a TypeError, one out of range or not among the choices a
ValueError, each naming the loader, the keyword and the value (QA: `Reranker.from_pretrained(..., num_candidates="3")`
loaded the model, then failed deep inside a pick, or never). `device` and `dtype` are checked by their resolvers
(`unime.models.loading.resolve_device`, `resolve_dtype`), `item_format`'s record and the attention kernel's fit with
the model as the model loads."""

from __future__ import annotations

import numbers
import os
from typing import Any, Callable

# a rule: the value -> None if taken, else (error class, what the keyword must be)
Rule = Callable[[Any], "tuple[type[Exception], str] | None"]


def _integer(minimum: int, *, optional: bool = False) -> Rule:
    def check(value):
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            return TypeError, f"an integer >= {minimum}" + (" or None" if optional else "")
        return (ValueError, f">= {minimum}") if value < minimum else None
    return check


def _flag(value):
    return None if isinstance(value, bool) else (TypeError, "True or False")


def _text(*, optional: bool = False) -> Rule:
    def check(value):
        ok = isinstance(value, str) or (optional and value is None)
        return None if ok else (TypeError, "a string" + (" or None" if optional else ""))
    return check


def _path(value):
    ok = value is None or isinstance(value, (str, os.PathLike))
    return None if ok else (TypeError, "a path (str or os.PathLike) or None")


def _one_of(choices: tuple[str, ...], *, optional: bool = False) -> Rule:
    def check(value):
        if (value is None and optional) or (isinstance(value, str) and value in choices):
            return None
        return ValueError, f"one of {', '.join(choices)}" + (" or None" if optional else "")
    return check


def _instance(module: str, name: str) -> Rule:
    def check(value):
        import importlib

        cls = getattr(importlib.import_module(module), name)
        article = "an" if name[0] in "AEIOU" else "a"
        return None if value is None or isinstance(value, cls) else (TypeError, f"{article} {name} or None")
    return check


def _rules(loader: str) -> dict[str, Rule]:
    from unime.models.item_format import ITEM_FORMATS
    from unime.models.prompts import POOLINGS

    common = {"data_root": _path, "allow_outside_root": _flag, "attn_implementation": _text(optional=True),
              "video_sampling": _instance("unime.data.video", "VideoSampling"),
              "image_budget": _instance("unime.models.image_budget", "ImageBudget")}
    judge = {"chunk_size": _integer(1), "image_cache_size": _integer(0), "image_cache_bytes": _integer(0)}
    return {
        "Embedder": {**common, "pooling": _one_of(("auto", *POOLINGS)), "adapter_path": _path, "trainable": _flag,
                     "item_format": _one_of(ITEM_FORMATS, optional=True), "batch_size": _integer(1),
                     "instruction_suffix": _text()},
        "Reranker": {**common, "num_candidates": _integer(1, optional=True), "batch_size": _integer(1),
                     "max_new_tokens": _integer(1), "chunk_size": _integer(1)},
        "JudgeScorer": {**common, **judge, "adapter_path": _path, "load_weights": _flag},
    }[loader]


def check_loader_keywords(loader: str, values: dict[str, Any]) -> None:
    """Refuse the first of `values` (keyword -> value given to `LOADER.from_pretrained`) its rule does not take."""
    rules = _rules(loader)
    for name, value in values.items():
        problem = rules[name](value) if name in rules else None
        if problem is not None:
            error, expected = problem
            raise error(f"{loader}.from_pretrained(): {name} must be {expected}, got {value!r}")
