"""Shared fixtures: tiny models of every family, built once per test session (offline)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# pytest-xdist runs one worker per core: one torch thread each (and in the subprocesses tests start),
# since oversubscribed OpenMP threads on a 2-core machine slow tiny-model work down by 10x or more.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Factory: `tiny_model_dir(family)` → path of a tiny model folder (built once per session)."""
    from unime.models.tiny import build_tiny

    cache: dict[str, str] = {}

    def get(family: str = "qwen2_vl", extra_tokens: tuple[str, ...] = ()) -> str:
        key = family + "|" + ",".join(extra_tokens)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"tiny_{family}")
            cache[key] = str(build_tiny(family, out / "model", extra_tokens=list(extra_tokens)))
        return cache[key]

    return get
