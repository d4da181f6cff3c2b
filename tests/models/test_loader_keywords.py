"""The keywords of the public loaders (`Embedder`, `Reranker`, `JudgeScorer.from_pretrained`) checked before anything
loads: a wrong type or value (QA: `Reranker.from_pretrained(..., num_candidates="3")` loaded, then failed deep inside
a pick, or not at all) is a TypeError (a wrong type) or ValueError (out of range) naming the loader, the keyword
and the value. The model path does not exist: a check made after the load would end in its ModelError instead."""

from __future__ import annotations

import pytest


def _loader(name):
    from unime.models.embedder import Embedder
    from unime.models.judge import JudgeScorer
    from unime.models.reranker import Reranker

    return {"Embedder": Embedder, "Reranker": Reranker, "JudgeScorer": JudgeScorer}[name]


CASES = [
    # (loader, keyword, value, error, message after "LOADER.from_pretrained(): ")
    ("Reranker", "num_candidates", "3", TypeError, "num_candidates must be an integer >= 1 or None, got '3'"),
    ("Reranker", "num_candidates", 0, ValueError, "num_candidates must be >= 1, got 0"),
    ("Reranker", "num_candidates", 2.0, TypeError, "num_candidates must be an integer >= 1 or None, got 2.0"),
    ("Reranker", "batch_size", True, TypeError, "batch_size must be an integer >= 1, got True"),
    ("Reranker", "max_new_tokens", 0, ValueError, "max_new_tokens must be >= 1, got 0"),
    ("Reranker", "chunk_size", "16", TypeError, "chunk_size must be an integer >= 1, got '16'"),
    ("Reranker", "allow_outside_root", "no", TypeError, "allow_outside_root must be True or False, got 'no'"),
    ("Reranker", "data_root", 3, TypeError, "data_root must be a path (str or os.PathLike) or None, got 3"),
    ("Reranker", "attn_implementation", 2, TypeError, "attn_implementation must be a string or None, got 2"),
    ("Reranker", "video_sampling", 8, TypeError, "video_sampling must be a VideoSampling or None, got 8"),
    ("Embedder", "pooling", "mean", ValueError, "pooling must be one of auto, last, emb, got 'mean'"),
    ("Embedder", "batch_size", "2", TypeError, "batch_size must be an integer >= 1, got '2'"),
    ("Embedder", "batch_size", -1, ValueError, "batch_size must be >= 1, got -1"),
    ("Embedder", "trainable", 1, TypeError, "trainable must be True or False, got 1"),
    ("Embedder", "item_format", "raw", ValueError, "item_format must be one of chat, vlm2vec or None, got 'raw'"),
    ("Embedder", "instruction_suffix", None, TypeError, "instruction_suffix must be a string, got None"),
    ("Embedder", "adapter_path", ["a"], TypeError,
     "adapter_path must be a path (str or os.PathLike) or None, got ['a']"),
    ("Embedder", "image_budget", {"max_pixels": 4}, TypeError,
     "image_budget must be an ImageBudget or None, got {'max_pixels': 4}"),
    ("JudgeScorer", "image_cache_size", -1, ValueError, "image_cache_size must be >= 0, got -1"),
    ("JudgeScorer", "image_cache_bytes", 1.5, TypeError, "image_cache_bytes must be an integer >= 0, got 1.5"),
    ("JudgeScorer", "load_weights", "yes", TypeError, "load_weights must be True or False, got 'yes'"),
    ("JudgeScorer", "chunk_size", 0, ValueError, "chunk_size must be >= 1, got 0"),
]


@pytest.mark.parametrize("loader,keyword,value,error,message", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]!r}" for c in CASES])
def test_a_wrong_keyword_value_is_refused_before_anything_loads(tmp_path, loader, keyword, value, error, message):
    with pytest.raises(error) as refused:
        _loader(loader).from_pretrained(tmp_path / "no-model", device="cpu", **{keyword: value})
    assert str(refused.value) == f"{loader}.from_pretrained(): {message}"


def test_the_defaults_and_right_values_pass_the_checks():
    """Every value the library's own callers give is taken (the check refuses nothing a caller relies on)."""
    from pathlib import Path

    from unime.data.video import VideoSampling
    from unime.models.image_budget import ImageBudget
    from unime.models.loader_keywords import check_loader_keywords

    check_loader_keywords("Embedder", dict(pooling="auto", batch_size=16, trainable=False, item_format=None,
                                           data_root=Path("d"), adapter_path=None, image_budget=ImageBudget(),
                                           video_sampling=VideoSampling(), attn_implementation=None,
                                           instruction_suffix="", allow_outside_root=False))
    check_loader_keywords("Reranker", dict(num_candidates=None, batch_size=1, max_new_tokens=8, chunk_size=16,
                                           data_root="d"))
    check_loader_keywords("JudgeScorer", dict(image_cache_size=0, image_cache_bytes=0, load_weights=False,
                                              chunk_size=1))
