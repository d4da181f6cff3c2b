"""`unime.index.ann` index parameters: float16 storage, IVF training sample, memory-mapped and chunked input,
memory measured without a copy; the same options on `unime index build` and `unime mine`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unime.index.ann import (ADD_BLOCK_ROWS, IndexConfig, build_index, exact_topk, index_memory_bytes, ivf_nlist,
                             ivf_train_rows, measure_recall)
from unime.index.store import ChunkedRows


def unit(rng, n, d=24):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_float16_storage_scores_are_float32_scores_within_fp16_rounding(kind):
    import faiss

    rng = np.random.default_rng(0)
    x, q = unit(rng, 600), unit(rng, 20)
    cfg = IndexConfig(kind=kind, storage="float16", nlist=4, nprobe=4, hnsw_m=8, ef_search=64)
    index = build_index(x, cfg)
    expected_type = {"flat": faiss.IndexScalarQuantizer, "hnsw": faiss.IndexHNSWSQ,
                     "ivf": faiss.IndexIVFScalarQuantizer}[kind]
    assert isinstance(index, expected_type) and index.ntotal == 600
    scores, ids = index.search(q, 5)
    # each returned score is the inner product with the stored (fp16-rounded) vector
    rounded = x.astype(np.float16).astype(np.float32)
    by_hand = np.einsum("qd,qkd->qk", q, rounded[ids])
    np.testing.assert_allclose(scores, by_hand, atol=1e-4)
    if kind != "hnsw":  # flat, and ivf probing every list, are exhaustive: the exact top-5 of the rounded vectors
        np.testing.assert_array_equal(ids, exact_topk(rounded, q, 5))


def test_float16_storage_halves_the_index_memory_and_memory_is_what_faiss_writes():
    import faiss

    rng = np.random.default_rng(1)
    x = unit(rng, 1000, 32)
    f32, f16 = build_index(x, IndexConfig()), build_index(x, IndexConfig(storage="float16"))
    for index in (f32, f16, build_index(x, IndexConfig(kind="hnsw", hnsw_m=4))):
        assert index_memory_bytes(index) == faiss.serialize_index(index).nbytes
    # vectors: n·d·4 bytes vs n·d·2 bytes, plus a header of under 1 kB
    assert 0 <= index_memory_bytes(f32) - 1000 * 32 * 4 < 1024
    assert 0 <= index_memory_bytes(f16) - 1000 * 32 * 2 < 1024


def test_ivf_training_sample_size_seed_and_bounds():
    cfg = IndexConfig(kind="ivf", train_sample=300, seed=3)
    rows = ivf_train_rows(1000, 10, cfg)
    assert len(rows) == 300 and len(set(rows.tolist())) == 300 and (np.diff(rows) > 0).all()
    np.testing.assert_array_equal(rows, ivf_train_rows(1000, 10, cfg))  # the seed fixes the sample
    assert not np.array_equal(rows, ivf_train_rows(1000, 10, IndexConfig(kind="ivf", train_sample=300, seed=4)))
    assert len(ivf_train_rows(100_000, 10, IndexConfig(kind="ivf"))) == 2560      # default: 256 per list
    np.testing.assert_array_equal(ivf_train_rows(1000, 10, IndexConfig(kind="ivf")), np.arange(1000))  # all
    assert len(ivf_train_rows(1000, 50, IndexConfig(kind="ivf", train_sample=20))) == 50  # >= one per list
    assert ivf_nlist(1000, IndexConfig(kind="ivf", nlist=7)) == 7


def test_ivf_lists_are_trained_on_exactly_the_sampled_rows():
    import faiss

    rng = np.random.default_rng(2)
    x = unit(rng, 2000, 16)
    cfg = IndexConfig(kind="ivf", nlist=8, train_sample=400, seed=5)
    index = build_index(x, cfg)
    # an independent IVF trained by hand on those 400 rows has the same centroids (FAISS k-means is seeded)
    ref = faiss.IndexIVFFlat(faiss.IndexFlatIP(16), 16, 8, faiss.METRIC_INNER_PRODUCT)
    ref.train(x[ivf_train_rows(2000, 8, cfg)])
    np.testing.assert_allclose(index.quantizer.reconstruct_n(0, 8), ref.quantizer.reconstruct_n(0, 8), atol=1e-6)
    # ... and not those of a training on every row
    full = faiss.IndexIVFFlat(faiss.IndexFlatIP(16), 16, 8, faiss.METRIC_INNER_PRODUCT)
    full.train(x)
    assert not np.allclose(index.quantizer.reconstruct_n(0, 8), full.quantizer.reconstruct_n(0, 8), atol=1e-3)
    assert index.ntotal == 2000


def test_built_from_a_memory_mapped_float16_file_block_by_block(tmp_path, monkeypatch):
    import unime.index.ann as ann

    monkeypatch.setattr(ann, "ADD_BLOCK_ROWS", 64)  # several blocks, the last one short
    rng = np.random.default_rng(3)
    x = unit(rng, 300).astype(np.float16)
    np.save(tmp_path / "v.npy", x)
    mm = np.load(tmp_path / "v.npy", mmap_mode="r")
    index = build_index(mm, IndexConfig())
    assert index.ntotal == 300
    q = unit(rng, 5)
    np.testing.assert_array_equal(index.search(q, 7)[1], exact_topk(x.astype(np.float32), q, 7))
    assert ADD_BLOCK_ROWS == 65536  # the module's own value is untouched outside this test


def test_chunked_rows_slice_and_gather_like_the_concatenated_matrix():
    rng = np.random.default_rng(4)
    chunks = [rng.standard_normal((n, 3)).astype(np.float16) for n in (5, 1, 7, 4)]
    whole = np.concatenate(chunks)
    m = ChunkedRows(chunks, 3)
    assert m.shape == (17, 3) and len(m) == 17 and m.dtype == np.float16
    for sl in (slice(0, 17), slice(3, 9), slice(5, 6), slice(12, 40), slice(8, 8), slice(0, 17, 3)):
        np.testing.assert_array_equal(m[sl], whole[sl])
    rows = np.array([16, 0, 5, 5, 6, 11, 2])
    np.testing.assert_array_equal(m[rows], whole[rows])
    with pytest.raises(IndexError):
        m[np.array([17])]
    # recall measured on the chunked view equals the one on the matrix
    x = unit(rng, 400)
    cm = ChunkedRows([x[:150], x[150:151], x[151:]], x.shape[1])
    idx = build_index(cm, IndexConfig(kind="hnsw", hnsw_m=4, ef_search=8))
    assert measure_recall(idx, cm, k=10, sample=50) == measure_recall(idx, x, k=10, sample=50)


@pytest.mark.parametrize("bad, message", [(dict(storage="bf16"), "storage"), (dict(nprobe=0), "nprobe"),
                                          (dict(hnsw_m=0), "hnsw_m"), (dict(train_sample=-1), "train_sample")])
def test_bad_parameters_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        IndexConfig(kind="ivf", **bad)


def test_index_build_options_reach_the_manifest(tmp_path, monkeypatch, capsys):
    from unime.cli import main
    from unime.index import store

    rows = [{"id": f"d{i}", "text": f"document {i}"} for i in range(400)]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    class FakeEmbedder:  # deterministic vectors from the text, no model
        hidden_size = 16

        @classmethod
        def from_pretrained(cls, *a, **k):
            return cls()

        def encode(self, items, **kw):
            return unit(np.random.default_rng(len(items)), len(items), 16)

    import unime.models.embedder as embedder_module

    monkeypatch.setattr(embedder_module, "Embedder", FakeEmbedder)
    monkeypatch.setattr("unime.models.embedding_cache.embedding_settings", lambda *a, **k: {"fake": True})
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert main(["index", "build", "--model", str(tmp_path / "m"), "--items", str(tmp_path / "corpus.jsonl"),
                 "--out", str(tmp_path / "idx"), "--cache-dir", str(tmp_path / "cache"), "--index", "ivf",
                 "--nlist", "6", "--nprobe", "3", "--train-sample", "120", "--index-storage", "float16",
                 "--recall-k", "5", "--recall-sample", "40", "--no-thumbnails"]) == 0
    info = json.loads((tmp_path / "idx" / "manifest.json").read_text())["index"]
    assert info["kind"] == "ivf"
    assert {k: info["config"][k] for k in ("nlist", "nprobe", "train_sample", "storage")} == \
        {"nlist": 6, "nprobe": 3, "train_sample": 120, "storage": "float16"}
    idx = store.CorpusIndex(tmp_path / "idx")
    assert type(idx.faiss).__name__ == "IndexIVFScalarQuantizer" and idx.faiss.nlist == 6 and idx.faiss.nprobe == 3
    assert info["recall"]["k"] == 5 and info["recall"]["sample"] == 40
    assert info["memory_bytes"] == index_memory_bytes(idx.faiss)
    capsys.readouterr()
    assert main(["index", "build", "--model", "m", "--items", "c.jsonl", "--out", str(tmp_path / "x"),
                 "--ef-search", "0"]) == 2
    assert capsys.readouterr().err.splitlines() == ["unime: error: index build: --ef-search must be >= 1, got 0"]
    assert not (tmp_path / "x").exists()


def test_mine_index_options_reach_the_index_and_the_stage_hash(monkeypatch, tmp_path, capsys):
    import unime.mining.pipeline as pipeline
    from unime.cli import main
    from unime.mining.config import MineConfig

    base = dict(records="r.jsonl", embedder="e", judge="j", out="o")
    # defaults: the stage key is what it was before these options existed (existing runs stay reused)
    assert MineConfig(**base).index_key() == ["flat", 16, 128]
    assert MineConfig(**base, index="hnsw", seed=9).index_key() == ["hnsw", 16, 128]
    c = MineConfig(**base, index="ivf", nlist=64, train_sample=5000, index_storage="float16", seed=2)
    assert c.index_key() == ["ivf", 16, 128, {"nlist": 64, "train_sample": 5000, "storage": "float16", "seed": 2}]
    assert c.index_config() == IndexConfig(kind="ivf", nlist=64, train_sample=5000, storage="float16", seed=2)
    seen = []
    monkeypatch.setattr(pipeline, "run_mining", lambda cfg, **kw: seen.append(cfg) or (_ for _ in ()).throw(
        SystemExit("stop")))
    with pytest.raises(SystemExit, match="stop"):
        main(["mine", "--records", "r", "--embedder", "e", "--judge", "j", "--out", str(tmp_path / "o"),
              "--index", "hnsw", "--hnsw-m", "12", "--ef-construction", "80", "--ef-search", "200",
              "--index-storage", "float16"])
    assert seen[0].index_config() == IndexConfig(kind="hnsw", hnsw_m=12, ef_construction=80, ef_search=200,
                                                 storage="float16")
    capsys.readouterr()
    assert main(["mine", "--records", "r", "--embedder", "e", "--judge", "j", "--out", str(tmp_path / "o2"),
                 "--nprobe", "0"]) == 2
    assert capsys.readouterr().err.splitlines() == ["unime: error: mine: --nprobe must be >= 1, got 0"]
    assert seen[1:] == []  # refused before mining started
