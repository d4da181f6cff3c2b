"""Shared fixtures, built once per test session (per xdist worker): tiny models of every family and
generated tiny worlds; and the one-thread torch setting every test runs under (offline)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# pytest-xdist runs one worker per core: one torch thread each (and in the subprocesses tests start),
# since oversubscribed OpenMP threads on a 2-core machine slow tiny-model work down by 10x or more.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test starts with one torch thread (tiny models are far faster single-threaded on a shared
    2-core machine, and in-process runs then match the subprocess runs started with OMP_NUM_THREADS=1),
    also after a test whose code changed it (`unime mine --threads`, the demo's thread setting)."""
    torch.set_num_threads(1)
    yield
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


@pytest.fixture(scope="session")
def tiny_world_dir(tmp_path_factory):
    """Factory: `tiny_world_dir(seed)` → folder of the generated tiny world of that seed (built once per
    session). Shared by the tests that use it: they read it, and write their outputs in their own folders
    (`mined_world` adds only its own `train/mined.jsonl`)."""
    from unime.data.synth import generate_world

    cache: dict[int, Path] = {}

    def get(seed: int = 0) -> Path:
        if seed not in cache:
            root = tmp_path_factory.mktemp(f"world_seed{seed}") / "world"
            generate_world(root, seed=seed, sizes="tiny")
            cache[seed] = root
        return cache[seed]

    return get


HARD_NEGATIVES = 3  # hard negatives per query of the `mined_world` records


def mined_world_records(world_dir: str | Path, k: int = HARD_NEGATIVES) -> list:
    """The demo world's training records as the mining stage would leave them: k hard negatives per
    query (other records' positives of the same dataset first) scored by the world's ground-truth
    relevance in place of a judge."""
    from unime.data.synth import World

    world = World.load(world_dir)
    records = world.records
    pools: dict[str, list] = {}
    for r in records:
        pool = pools.setdefault(r.dataset, [])
        if all(p.key != r.positive.key for p in pool):
            pool.append(r.positive)
    everything = [p for pool in pools.values() for p in pool]
    out = []
    for r in records:
        negs = [p for p in pools[r.dataset] + everything if p.key != r.positive.key]
        negs = list({p.key: p for p in negs}.values())[:k]
        out.append(dataclasses.replace(r, negatives=negs, positive_score=world.relevance(r.query, r.positive),
                                       negative_scores=world.relevances(r.query, negs)))
    return out


@pytest.fixture(scope="session")
def mined_world(tiny_world_dir):
    """(world folder, records file) of the seed-0 tiny world (`tiny_world_dir(0)`) with its mined records
    (`mined_world_records`) written once per session to its `train/mined.jsonl` — the only file it adds."""
    from unime.data.io import write_records

    root = tiny_world_dir(0)
    path = root / "train" / "mined.jsonl"
    write_records(mined_world_records(root), path)
    return root, path


@pytest.fixture(scope="session", autouse=True)
def _private_unime_cache(tmp_path_factory):
    """unime's per-machine caches (pretrained bases, embeddings) go to a session folder, not the home."""
    if "UNIME_CACHE_DIR" not in os.environ:
        os.environ["UNIME_CACHE_DIR"] = str(tmp_path_factory.mktemp("unime_cache"))
    yield


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")


@pytest.fixture
def image_sha1_reads(monkeypatch):
    """The image files whose sha1 is computed (`unime.data.image_digests.file_sha1`, the digests of a run's key), in
    order; not a model's files (its fingerprint, by a module that may have taken `file_sha1` before this patch)."""
    from unime.data import image_digests

    reads, real = [], image_digests.file_sha1

    def counted(path):
        if str(path).lower().endswith(IMAGE_SUFFIXES):
            reads.append(str(path))
        return real(path)

    monkeypatch.setattr(image_digests, "file_sha1", counted)
    return reads


@pytest.fixture
def image_opens(monkeypatch):
    """The image files PIL opens (`PIL.Image.open`, by the file's name), in order: the up-front checks' and the
    models' reads."""
    from PIL import Image

    opened, real = [], Image.open

    def counted(fp, *args, **kw):
        opened.append(str(getattr(fp, "name", fp)))
        return real(fp, *args, **kw)

    monkeypatch.setattr(Image, "open", counted)
    return opened
