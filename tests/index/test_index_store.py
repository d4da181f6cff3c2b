"""`unime index build` / `unime search`: stored vectors, ids and metadata, append, resume, recall in the manifest."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.index.helpers import mapped_files, needs_proc_maps
from unime.data.items import Item
from unime.errors import DataError
from unime.index.ann import IndexConfig, measure_recall
from unime.outdir import FolderInUse, FolderNotOwned
from unime.index.store import CorpusIndex, IndexError_, build_corpus_index, read_corpus, search_items


class HashEmbedder:
    """Deterministic vectors from each item's text (independent of any model), counting encoded items."""

    def __init__(self, dim=16, fail_after=None):
        self.dim, self.calls, self.fail_after = dim, 0, fail_after

    def encode(self, items, **kw):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        return np.stack([self.vec(it.text) for it in items])

    def vec(self, text):
        seed = int(hashlib.sha1(text.encode()).hexdigest()[:8], 16)
        v = np.random.default_rng(seed).normal(size=self.dim).astype(np.float32)
        return v / np.linalg.norm(v)


def _corpus(path: Path, n: int, start: int = 0) -> Path:
    with open(path, "a") as fh:
        for i in range(start, start + n):
            fh.write(json.dumps({"id": f"doc{i}", "text": f"document number {i}", "metadata": {"n": i}}) + "\n")
    return path


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "fake_model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    return str(d)


def _build(tmp_path, model_dir, emb, **kw):
    return build_corpus_index(tmp_path / "corpus.jsonl", tmp_path / "idx", embedder=emb, model=model_dir,
                              cache_dir=tmp_path / "cache", model_settings={"fake": True}, **kw)


def test_append_and_resume_encode_only_new_items_and_search_is_exact(tmp_path, model_dir):
    _corpus(tmp_path / "corpus.jsonl", 10)
    emb = HashEmbedder(fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path, model_dir, emb, chunk_size=3)
    # two chunks (6 items) were committed before the interruption
    assert len(CorpusIndex(tmp_path / "idx", load_faiss=False)) == 6
    idx, stats = _build(tmp_path, model_dir, HashEmbedder(), chunk_size=3)
    assert (stats.already_indexed, stats.added, stats.encoded) == (6, 4, 4)
    _corpus(tmp_path / "corpus.jsonl", 5, start=10)
    idx, stats = _build(tmp_path, model_dir, HashEmbedder(), chunk_size=3)
    assert (stats.already_indexed, stats.added, stats.encoded) == (10, 5, 5)
    assert len(idx) == 15 and [e["id"] for e in idx.entries] == [f"doc{i}" for i in range(15)]
    assert idx.entries[12]["metadata"] == {"n": 12}
    ref = HashEmbedder()
    expected = np.stack([ref.vec(f"document number {i}") for i in range(15)])
    np.testing.assert_allclose(idx.vectors(), expected, atol=1e-6)
    q = ref.vec("a query")
    hits = search_items(idx, q[None], 5)[0]
    assert [h["id"] for h in hits] == [f"doc{i}" for i in np.argsort(-(expected @ q))[:5]]
    np.testing.assert_allclose([h["score"] for h in hits], np.sort(expected @ q)[::-1][:5], atol=1e-5)
    m = idx.manifest
    assert m["count"] == 15 and m["index"]["kind"] == "flat" and m["index"]["recall"]["exact"] is True
    # another model's vectors never mix into this index
    other = tmp_path / "other_model"
    other.mkdir()
    (other / "config.json").write_text('{"x": 1}')
    with pytest.raises(IndexError_, match="was built with model"):
        build_corpus_index(tmp_path / "corpus.jsonl", tmp_path / "idx", embedder=ref, model=str(other),
                           model_settings={"fake": True})


def test_a_search_for_no_hits_is_refused_not_answered_with_one(tmp_path, model_dir):
    """QA: k=0 (and `unime search --k 0`) gave one hit; k larger than the index still gives all of it."""
    _corpus(tmp_path / "corpus.jsonl", 3)
    idx, _ = _build(tmp_path, model_dir, HashEmbedder())
    q = HashEmbedder().vec("a query")[None]
    for k in (0, -2):
        with pytest.raises(ValueError, match=f"k must be >= 1, got {k}"):
            search_items(idx, q, k)
    assert len(search_items(idx, q, 1)[0]) == 1 and len(search_items(idx, q, 10)[0]) == 3


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e300])  # 1e300: inf once in float32
def test_a_search_with_a_non_finite_query_vector_is_refused_naming_its_row(tmp_path, model_dir, bad):
    """QA: a NaN query vector gave rows -1 and scores -3.4e38, silently."""
    _corpus(tmp_path / "corpus.jsonl", 3)
    idx, _ = _build(tmp_path, model_dir, HashEmbedder())
    q = np.stack([HashEmbedder().vec("a query"), HashEmbedder().vec("another")]).astype(np.float64)
    q[1, 5] = bad
    with pytest.raises(ValueError, match=r"^query vector 1 \(row 1 of the queries\) holds NaN or inf"):
        idx.search(q, 2)
    with pytest.raises(ValueError, match=r"^query vector 0 "):
        search_items(idx, q[1:], 2)
    scores = {f"doc{i}": float(q[0] @ HashEmbedder().vec(f"document number {i}")) for i in range(3)}
    assert [h["id"] for h in search_items(idx, q[:1], 3)[0]] == sorted(scores, key=scores.get, reverse=True)


def test_float16_vectors_and_approximate_index_recall_in_the_manifest(tmp_path, model_dir):
    _corpus(tmp_path / "corpus.jsonl", 2000)
    idx, _ = _build(tmp_path, model_dir, HashEmbedder(dim=16), vector_dtype="float16", index="hnsw",
                    index_config=IndexConfig(hnsw_m=4, ef_search=10), recall_k=10, recall_sample=100, chunk_size=500)
    assert np.load(sorted((tmp_path / "idx" / "chunks").glob("*.npy"))[0]).dtype == np.float16
    rec = idx.manifest["index"]["recall"]
    assert rec["exact"] is False and rec["k"] == 10 and rec["sample"] == 100
    # the same measurement repeated independently on the reopened index (same seed → same sample)
    again = measure_recall(idx.faiss, idx.vectors(), k=10, sample=100, seed=0)
    assert rec["recall"] == pytest.approx(again["recall"])
    assert 0.0 < rec["recall"] <= 1.0
    assert idx.manifest["index"]["memory_bytes"] > 2000 * 16 * 4


def test_a_deep_search_of_an_hnsw_index_does_not_widen_the_searches_after_it(tmp_path, model_dir):
    """A search for k hits widens efSearch to k; it stayed widened, so a later search's hits depended on the
    deepest search asked before it (`unime serve`). Now every search runs at max(--ef-search, k)."""
    _corpus(tmp_path / "corpus.jsonl", 2000)
    idx, _ = _build(tmp_path, model_dir, HashEmbedder(dim=16), index="hnsw",
                    index_config=IndexConfig(hnsw_m=4, ef_search=10), chunk_size=500)
    q = np.stack([HashEmbedder(dim=16).vec(f"query {i}") for i in range(50)])
    first = idx.search(q, 5)
    idx.search(q, 1500)
    assert idx.faiss.hnsw.efSearch == 10
    again = idx.search(q, 5)
    np.testing.assert_array_equal(again[1], first[1])
    idx.faiss.hnsw.efSearch = 1500  # the breadth the later search ran at before: other hits
    assert not np.array_equal(idx.search(q, 5)[1], first[1])


def test_corpus_errors_name_the_line(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n')
    with pytest.raises(DataError, match=r"line 2.*duplicate id 'a' \(first on line 1\)"):
        read_corpus(p)
    p.write_text('{"text": "x", "colour": "red"}\n')
    with pytest.raises(DataError, match=r"line 1.*unknown keys \['colour'\]"):
        read_corpus(p)


def test_refuses_to_write_into_a_foreign_folder(tmp_path, model_dir):
    _corpus(tmp_path / "corpus.jsonl", 2)
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "notes.txt").write_text("mine")
    with pytest.raises(FolderNotOwned, match="is not empty and was not written by unime"):
        _build(tmp_path, model_dir, HashEmbedder())
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["notes.txt"]
    assert (tmp_path / "idx" / "notes.txt").read_text() == "mine"
    idx, _ = _build(tmp_path, model_dir, HashEmbedder(), overwrite=True)  # taken under --overwrite, the file kept
    assert len(idx) == 2 and (tmp_path / "idx" / "notes.txt").read_text() == "mine"


def test_a_second_build_on_an_index_being_built_is_refused_naming_the_holder(tmp_path, model_dir):
    """Two builds appending to one index numbered their chunks alike and lost rows (QA): a build holds the
    index folder's lock, and another build on it fails at once with the holder's pid, writing nothing."""
    import signal
    import subprocess
    import sys

    _corpus(tmp_path / "a.jsonl", 4)
    _corpus(tmp_path / "b.jsonl", 4, start=4)
    holder_script = (
        "import sys, time, numpy as np\n"
        "from unime.index.store import build_corpus_index\n"
        "class Stalled:\n"
        "    def encode(self, items, **kw):\n"
        "        print('encoding', flush=True); time.sleep(600)\n"
        "build_corpus_index(sys.argv[1], sys.argv[2], embedder=Stalled(), model=sys.argv[3], "
        "model_settings={'fake': True}, chunk_size=1)\n")
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), "PATH": "/usr/bin:/bin"}
    holder = subprocess.Popen([sys.executable, "-c", holder_script, str(tmp_path / "a.jsonl"), str(tmp_path / "idx"),
                               model_dir], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "encoding"
        with pytest.raises(FolderInUse, match=rf"output folder {re.escape(str(tmp_path / 'idx'))} is in use by "
                                              rf"another unime run \(pid {holder.pid}\)"):
            build_corpus_index(tmp_path / "b.jsonl", tmp_path / "idx", embedder=HashEmbedder(), model=model_dir,
                               model_settings={"fake": True}, chunk_size=1)
        assert list((tmp_path / "idx" / "chunks").iterdir()) == []
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    for items, ids in (("a.jsonl", range(4)), ("b.jsonl", range(8))):  # the lock died with its holder
        idx, _ = build_corpus_index(tmp_path / items, tmp_path / "idx", embedder=HashEmbedder(), model=model_dir,
                                    model_settings={"fake": True}, chunk_size=1)
        assert [e["id"] for e in idx.entries] == [f"doc{i}" for i in ids]


def test_an_index_built_before_index_folders_were_marked_still_takes_additions(tmp_path, model_dir):
    """An index folder written before `unime index build` claimed its folder has no ownership marker: it is
    recognised by its manifest and taken as the command's own (nothing in it pre-existing), not refused."""
    from unime.outdir import MARKER_NAME, read_marker

    _corpus(tmp_path / "corpus.jsonl", 3)
    _build(tmp_path, model_dir, HashEmbedder())
    (tmp_path / "idx" / MARKER_NAME).unlink()
    _corpus(tmp_path / "corpus.jsonl", 2, start=3)
    idx, stats = _build(tmp_path, model_dir, HashEmbedder())
    assert (stats.already_indexed, stats.added, len(idx)) == (3, 2, 5)
    assert read_marker(tmp_path / "idx")["preexisting"] == []


def test_the_cli_adds_to_an_unmarked_index_and_marks_it(tmp_path, tiny_model_dir, capsys):
    """`unime index build` claims its folder before the stage does: an index from before the marker is taken
    (not refused as a foreign folder), marked, and then named as the index's by another command's refusal."""
    from unime.cli import main
    from unime.outdir import MARKER_NAME, read_marker

    model, idx = tiny_model_dir("qwen2_vl"), tmp_path / "idx"
    build = ["index", "build", "--model", model, "--items", str(tmp_path / "corpus.jsonl"), "--out", str(idx),
             "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    _corpus(tmp_path / "corpus.jsonl", 2)
    assert main(build) == 0
    (idx / MARKER_NAME).unlink()
    assert main(["eval", "--model", model, "--tasks", "t.yaml", "--out", str(idx)]) == 2
    assert "is not empty and was not written by unime" in capsys.readouterr().err
    _corpus(tmp_path / "corpus.jsonl", 1, start=2)
    assert main(build) == 0
    assert "3 items (1 added, 2 already indexed" in capsys.readouterr().out
    assert read_marker(idx)["command"] == "index build" and read_marker(idx)["preexisting"] == []
    assert main(["eval", "--model", model, "--tasks", "t.yaml", "--out", str(idx)]) == 2
    assert "was written by `unime index build`, not `unime eval`" in capsys.readouterr().err


def test_refuses_a_mining_run_folder_naming_it_not_an_index(tmp_path, model_dir):
    # QA: `index build --out <mining folder>` said "was built with model None (fingerprint None)"
    _corpus(tmp_path / "corpus.jsonl", 2)
    (tmp_path / "idx").mkdir()
    mining = '{"config": {}, "config_hash": "x", "finished": true, "inputs": {}, "stages": {}, "version": 1}'
    (tmp_path / "idx" / "manifest.json").write_text(mining)
    for overwrite in (False, True):  # never taken, nothing written into it (the claim's marker neither)
        with pytest.raises(IndexError_, match=r"idx exists and is not a unime index \(its manifest.json is another "
                                              r"stage's\): refusing to write into it; use another --out$"):
            _build(tmp_path, model_dir, HashEmbedder(), overwrite=overwrite)
        assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["manifest.json"]
    assert (tmp_path / "idx" / "manifest.json").read_text() == mining


def test_cli_build_and_search_with_a_tiny_model(tmp_path, tiny_model_dir, capsys):
    from unime.cli import main
    from unime.models.embedder import Embedder

    (tmp_path / "img").mkdir()
    rows = []
    for i, rgb in enumerate([(220, 30, 30), (30, 200, 40), (30, 40, 220)]):
        Image.new("RGB", (40, 32), rgb).save(tmp_path / "img" / f"{i}.png")
        rows.append({"id": f"im{i}", "image": f"img/{i}.png", "metadata": {"rgb": list(rgb)}})
    rows += [{"id": "t0", "text": "a red square"}, {"id": "t1", "text": "a blue circle"}]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = tiny_model_dir("qwen2_vl")
    assert main(["index", "build", "--model", model, "--items", str(tmp_path / "corpus.jsonl"), "--out",
                 str(tmp_path / "idx"), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]) == 0
    idx = CorpusIndex(tmp_path / "idx")
    assert idx.entries[0]["thumbnail"].startswith("data:image/jpeg;base64,")
    emb = Embedder.from_pretrained(model, device="cpu", data_root=str(tmp_path))
    items = [Item(images=(f"img/{i}.png",)) for i in range(3)] + [Item(text="a red square"), Item(text="a blue circle")]
    np.testing.assert_allclose(idx.vectors(), emb.encode(items), atol=1e-5)
    capsys.readouterr()
    assert main(["search", "--index", str(tmp_path / "idx"), "--query", "red", "--k", "3", "--json",
                 "--device", "cpu"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = np.argsort(-(emb.encode([Item(text="red")])[0] @ emb.encode(items).T))[:3]
    assert [h["id"] for h in hits] == [rows[i]["id"] for i in expected]


def test_an_index_built_with_a_relative_model_path_is_searched_from_another_directory(tmp_path, tiny_model_dir,
                                                                                       capsys, monkeypatch):
    import shutil

    from unime.cli import main

    shutil.copytree(tiny_model_dir("qwen2_vl"), tmp_path / "tiny")
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n"
                                                   for i, t in enumerate(["a red star", "a blue circle"])))
    monkeypatch.chdir(tmp_path)
    assert main(["index", "build", "--model", "tiny", "--items", "corpus.jsonl", "--out", "idx",
                 "--device", "cpu"]) == 0
    assert CorpusIndex(tmp_path / "idx").manifest["model"] == str((tmp_path / "tiny").resolve())
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    capsys.readouterr()
    assert main(["search", "--index", "../idx", "--query", "a red star", "--k", "1", "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["id"] == "t0"


def test_an_index_built_with_the_python_api_is_searched_by_the_cli_whatever_the_dtype_spelling(tmp_path,
                                                                                               tiny_model_dir, capsys):
    from unime.cli import main
    from unime.models.embedder import Embedder

    model = tiny_model_dir("qwen2_vl")
    _corpus(tmp_path / "corpus.jsonl", 3)
    emb = Embedder.from_pretrained(model, device="cpu", data_root=str(tmp_path))   # dtype None: float32 on CPU
    idx, _ = build_corpus_index(tmp_path / "corpus.jsonl", tmp_path / "idx_py", embedder=emb, model=model)
    assert idx.manifest["model_settings"]["dtype"] == "fp32"
    assert main(["index", "build", "--model", model, "--items", str(tmp_path / "corpus.jsonl"), "--out",
                 str(tmp_path / "idx_cli"), "--device", "cpu"]) == 0
    assert CorpusIndex(tmp_path / "idx_cli").manifest["model_fingerprint"] == idx.manifest["model_fingerprint"]
    for dtype in ("auto", "fp32"):
        assert main(["search", "--index", str(tmp_path / "idx_py"), "--query", "document number 1", "--k", "1",
                     "--json", "--device", "cpu", "--dtype", dtype]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(tmp_path / "idx_py"), "--query", "x", "--device", "cpu",
                 "--dtype", "bf16"]) == 2
    assert "settings differ: dtype 'fp32' (index) vs 'bf16'" in capsys.readouterr().err


def test_an_index_that_recorded_the_dtype_option_as_given_is_still_searched(tmp_path, tiny_model_dir):
    from unime.index.store import check_model
    from unime.models.embedder import Embedder
    from unime.models.embedding_cache import embedding_settings, model_fingerprint

    model = tiny_model_dir("qwen2_vl")
    _corpus(tmp_path / "corpus.jsonl", 2)
    emb = Embedder.from_pretrained(model, device="cpu")
    old = {**embedding_settings(emb), "dtype": "auto"}   # what `unime index build` recorded before
    idx, _ = build_corpus_index(tmp_path / "corpus.jsonl", tmp_path / "idx", embedder=emb, model=model,
                                model_settings=old)
    assert idx.manifest["model_fingerprint"] == model_fingerprint(model, old)
    check_model(idx, model, embedding_settings(emb, "auto"), device="cpu")   # auto is fp32 on CPU
    build_corpus_index(_corpus(tmp_path / "corpus.jsonl", 1, start=2), tmp_path / "idx", embedder=emb, model=model)
    with pytest.raises(IndexError_, match="settings differ: dtype 'auto' \\(index\\) vs 'bf16'"):
        check_model(idx, model, {**embedding_settings(emb), "dtype": "bf16"}, device="cpu")


def test_reads_a_demo_world_items_file(tmp_path):
    p = tmp_path / "items.jsonl"
    p.write_text('{"key": "k1", "item": {"text": "", "images": ["images/a.png"]}, "meta": {"kind": "scene"}}\n'
                 '{"key": "k2", "item": {"text": "a red star"}, "meta": {}}\n')
    e = read_corpus(p)
    assert [(x.id, x.item.images, x.item.text, x.metadata) for x in e] == [
        ("k1", ("images/a.png",), "", {"kind": "scene"}), ("k2", (), "a red star", {})]


def test_a_damaged_or_unfinished_index_is_named_as_such_not_a_traceback_or_an_empty_result(tmp_path, model_dir):
    """QA: a missing or truncated faiss.index, a broken manifest, a truncated chunk ended in tracebacks; an index
    whose chunk files were gone answered every search with nothing; a build that failed left a folder whose search
    died with a TypeError."""
    import shutil

    _corpus(tmp_path / "corpus.jsonl", 12)
    _build(tmp_path, model_dir, HashEmbedder(), chunk_size=5)
    assert len(CorpusIndex(tmp_path / "idx")) == 12

    def damaged(name, harm):
        folder = tmp_path / name
        shutil.copytree(tmp_path / "idx", folder)
        harm(folder)
        with pytest.raises(IndexError_) as e:
            CorpusIndex(folder)
        return str(e.value)

    def chunk(folder, suffix):
        return sorted(folder.rglob(f"*{suffix}"))[0]

    assert "the index is damaged" in damaged("no_faiss", lambda f: (f / "faiss.index").unlink())
    assert "the index is damaged" in damaged("cut_faiss", lambda f: (f / "faiss.index").write_bytes(
        (f / "faiss.index").read_bytes()[:40]))
    assert "the index is damaged" in damaged("bad_manifest", lambda f: (f / "manifest.json").write_text("{"))
    assert "the index is damaged" in damaged("cut_chunk", lambda f: chunk(f, ".npy").write_bytes(b"\x93NUMPY"))
    gone = damaged("no_chunks", lambda f: [p.unlink() for p in f.rglob("*.jsonl") if p.parent != f])
    assert "the FAISS index covers 12 rows but 0 are stored" in gone

    def unfinished(f):
        m = json.loads((f / "manifest.json").read_text())
        m["index"] = {}
        (f / "manifest.json").write_text(json.dumps(m))
        for p in f.rglob("*.jsonl"):
            if p.parent != f:
                p.unlink()

    assert CorpusIndex(tmp_path / "idx").search(HashEmbedder().vec("document number 3")[None], 1)[1][0, 0] == 3
    unfinished_folder = tmp_path / "unfinished"
    shutil.copytree(tmp_path / "idx", unfinished_folder)
    unfinished(unfinished_folder)
    assert len(CorpusIndex(unfinished_folder)) == 0  # nothing committed, nothing claimed: an empty index, no crash


def test_an_addition_keeps_the_index_kind_and_root_and_refuses_new_content_under_an_indexed_id(tmp_path, model_dir):
    """QA: adding without --index turned an hnsw index flat; a new item under an indexed id was silently kept old."""
    _corpus(tmp_path / "corpus.jsonl", 6)
    _build(tmp_path, model_dir, HashEmbedder(), index="hnsw")
    assert json.loads((tmp_path / "idx" / "manifest.json").read_text())["index"]["kind"] == "hnsw"
    _corpus(tmp_path / "corpus.jsonl", 3, start=6)
    index, stats = _build(tmp_path, model_dir, HashEmbedder())  # no kind asked: the index keeps its own
    assert stats.added == 3 and index.manifest["index"]["kind"] == "hnsw" and len(index) == 9
    changed = tmp_path / "changed.jsonl"
    changed.write_text(json.dumps({"id": "doc2", "text": "another text"}) + "\n")
    with pytest.raises(IndexError_, match=r"changed.jsonl, line 1: id 'doc2' is indexed already with other content"):
        build_corpus_index(changed, tmp_path / "idx", embedder=HashEmbedder(), model=model_dir,
                           model_settings={"fake": True})
    with pytest.raises(IndexError_, match="holds items whose images are relative to"):
        build_corpus_index(changed, tmp_path / "idx", embedder=HashEmbedder(), model=model_dir,
                           model_settings={"fake": True}, data_root=tmp_path / "elsewhere")


def _faiss_file(idx: Path):
    import faiss

    return faiss.read_index(str(idx / "faiss.index"))


def test_another_index_kind_or_storage_asked_without_new_items_rebuilds_from_the_stored_vectors(tmp_path, model_dir):
    """QA: a re-run adding no item with --index hnsw --index-storage float16 said "0 added; index flat" and left
    the index as it was. Asked settings now rebuild the FAISS index from the stored vectors; settings not asked
    keep the stored ones."""
    _corpus(tmp_path / "corpus.jsonl", 6)
    _build(tmp_path, model_dir, HashEmbedder())
    assert type(_faiss_file(tmp_path / "idx")).__name__ == "IndexFlatIP"
    emb = HashEmbedder()
    index, stats = _build(tmp_path, model_dir, emb, index="hnsw", index_config=IndexConfig(storage="float16"))
    assert (stats.added, emb.calls) == (0, 0)  # nothing encoded: the stored vectors
    assert stats.rebuilt == "kind flat -> hnsw, storage float32 -> float16"
    assert (index.manifest["index"]["kind"], index.manifest["index"]["config"]["storage"]) == ("hnsw", "float16")
    built = _faiss_file(tmp_path / "idx")
    assert (type(built).__name__, built.ntotal) == ("IndexHNSWSQ", 6)
    vecs = np.stack([HashEmbedder().vec(f"document number {i}") for i in range(6)])
    np.testing.assert_allclose(index.search(vecs, 1)[0][:, 0], 1.0, atol=1e-3)  # each document finds itself
    before = (tmp_path / "idx" / "faiss.index").read_bytes()
    index, stats = _build(tmp_path, model_dir, HashEmbedder())  # nothing asked: kept as stored
    assert stats.rebuilt is None and index.manifest["index"]["config"]["storage"] == "float16"
    assert (tmp_path / "idx" / "faiss.index").read_bytes() == before
    index, stats = _build(tmp_path, model_dir, HashEmbedder(), index_settings={"hnsw_m": 8})  # one setting asked
    assert stats.rebuilt == "hnsw_m 32 -> 8"
    assert (index.manifest["index"]["kind"], index.manifest["index"]["config"]["storage"]) == ("hnsw", "float16")
    assert _faiss_file(tmp_path / "idx").hnsw.nb_neighbors(1) == 8


def test_the_cli_rebuilds_an_index_for_the_index_options_given_and_keeps_its_own_otherwise(tmp_path, tiny_model_dir,
                                                                                          capsys):
    from unime.cli import main

    build = ["index", "build", "--model", tiny_model_dir("qwen2_vl"), "--items", str(_corpus(tmp_path / "c.jsonl", 3)),
             "--out", str(tmp_path / "idx"), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    assert main(build) == 0
    assert "; index flat, recall@" in capsys.readouterr().out
    assert main(build + ["--index", "hnsw", "--index-storage", "float16"]) == 0
    assert ("3 items (0 added, 3 already indexed, 0 encoded, 0 from the embedding cache); index hnsw (rebuilt from "
            "the stored vectors: kind flat -> hnsw, storage float32 -> float16), recall@") in capsys.readouterr().out
    assert type(_faiss_file(tmp_path / "idx")).__name__ == "IndexHNSWSQ"
    assert main(build) == 0  # the options left at their defaults do not turn the index back
    assert "; index hnsw, recall@" in capsys.readouterr().out
    assert type(_faiss_file(tmp_path / "idx")).__name__ == "IndexHNSWSQ"


def _world_with_a_marked_items_file(tmp_path) -> tuple[Path, Path]:
    """WORLD/img/{0,1}.png and WORLD/train/c.jsonl whose image paths are relative to WORLD, as `unime data synth`
    records it beside its train/ files (unime_data.json)."""
    from unime.data.roots import write_data_root

    world = tmp_path / "world"
    (world / "img").mkdir(parents=True)
    for i, rgb in enumerate([(220, 30, 30), (30, 40, 220)]):
        Image.new("RGB", (40, 32), rgb).save(world / "img" / f"{i}.png")
    write_data_root(world / "train", world)
    items = world / "train" / "c.jsonl"
    items.write_text("".join(json.dumps({"id": f"im{i}", "text": f"picture {i}", "image": f"img/{i}.png"}) + "\n"
                             for i in range(2)) + json.dumps({"id": "t0", "text": "a red square"}) + "\n")
    return world, items


def test_build_corpus_index_reads_images_under_the_data_root_recorded_beside_the_items_file(tmp_path, model_dir):
    """QA: index build took the items file's own folder as the data root and ignored unime_data.json there (which
    `unime embed` reads): a world's train/ file failed with 'image file not found'."""
    world, items = _world_with_a_marked_items_file(tmp_path)
    index, _ = build_corpus_index(items, tmp_path / "world_idx", embedder=HashEmbedder(), model=model_dir,
                                  model_settings={"fake": True})
    assert index.manifest["data_root"] == str(world.resolve()) and len(index) == 3
    # an addition from the same folder resolves to the same root
    with open(items, "a") as fh:
        fh.write(json.dumps({"id": "im9", "image": "img/1.png", "text": "again"}) + "\n")
    index, stats = build_corpus_index(items, tmp_path / "world_idx", embedder=HashEmbedder(), model=model_dir,
                                      model_settings={"fake": True})
    assert stats.added == 1 and len(index) == 4
    # adding it to an index of another root is refused (its recorded root is not silently replaced by the index's)
    _corpus(tmp_path / "corpus.jsonl", 2)
    _build(tmp_path, model_dir, HashEmbedder())
    refusal = re.escape(f"holds items whose images are relative to {tmp_path.resolve()}, not ")
    with pytest.raises(IndexError_, match=refusal):
        build_corpus_index(items, tmp_path / "idx", embedder=HashEmbedder(), model=model_dir,
                           model_settings={"fake": True})


def test_cli_index_build_reads_images_under_the_data_root_recorded_beside_the_items_file(tmp_path, tiny_model_dir):
    """QA: `unime embed` found a world's train/ file's images through unime_data.json, `unime index build` failed on
    the same file with 'image file not found'."""
    from unime.cli import main
    from unime.models.embedder import Embedder

    world, items = _world_with_a_marked_items_file(tmp_path)
    model = tiny_model_dir("qwen2_vl")
    assert main(["index", "build", "--model", model, "--items", str(items), "--out", str(tmp_path / "idx"),
                 "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]) == 0
    idx = CorpusIndex(tmp_path / "idx")
    assert idx.manifest["data_root"] == str(world.resolve())
    expected = Embedder.from_pretrained(model, device="cpu", data_root=str(world)).encode(
        [Item("picture 0", ("img/0.png",)), Item("picture 1", ("img/1.png",)), Item("a red square")])
    np.testing.assert_allclose(idx.vectors(), expected, atol=1e-5)


def test_an_index_of_a_run_folder_keyed_before_its_weights_were_says_to_rebuild_it(tmp_path):
    """A run folder (RUN/merged/ ...) is now keyed by the weights loading reads (`model_fingerprint`); an index
    built on it before, keyed by RUN's top-level files only, is refused saying so and how to rebuild it, not as
    another model's files."""
    import hashlib
    import json

    from unime.index.store import model_mismatch

    run = tmp_path / "run"
    (run / "merged").mkdir(parents=True)
    (run / "merged" / "config.json").write_text('{"model_type": "qwen2_vl"}')
    readme = b"# a run\n"
    (run / "README.md").write_bytes(readme)
    settings = {"pooling": "last"}
    h = hashlib.sha256()  # the key before: README.md's content, then the settings
    h.update(f"README.md\0content\0{hashlib.sha1(readme).hexdigest()}\n".encode())
    h.update(json.dumps(settings).encode())
    manifest = {"model_fingerprint": h.hexdigest()[:24], "model_settings": settings}
    why = model_mismatch(manifest, str(run), settings)
    assert why is not None and "built before a run folder was keyed by the weights it loads" in why
    assert "index build --overwrite" in why
    other = {**manifest, "model_fingerprint": "0" * 24}
    assert model_mismatch(other, str(run), settings).startswith("the model's files differ")


def test_a_deep_hnsw_search_never_changes_the_indexs_breadth_even_while_it_runs(tmp_path, model_dir):
    """A search for k hits needs efSearch >= k. It used to widen the index's efSearch in place for the search and put
    it back after: the index shared by every search ran at the wide breadth meanwhile (a search beside it in another
    thread got other hits, and two overlapping ones could leave it widened). Now the breadth is the search's own
    (FAISS's per-search parameters): efSearch reads 10 during and after the search, whose hits are those of the
    index set to efSearch 1500 by hand."""
    _corpus(tmp_path / "corpus.jsonl", 2000)
    idx, _ = _build(tmp_path, model_dir, HashEmbedder(dim=16), index="hnsw",
                    index_config=IndexConfig(hnsw_m=4, ef_search=10), chunk_size=500)
    q = np.stack([HashEmbedder(dim=16).vec(f"query {i}") for i in range(50)])
    idx.faiss.hnsw.efSearch = 1500
    wide = idx.faiss.search(q, 1500)
    idx.faiss.hnsw.efSearch = 10
    search, during = idx.faiss.search, []

    def spy(*args, **kwargs):
        during.append(idx.faiss.hnsw.efSearch)
        return search(*args, **kwargs)

    idx.faiss.search = spy
    scores, rows = idx.search(q, 1500)
    assert during == [10] and idx.faiss.hnsw.efSearch == 10
    np.testing.assert_array_equal(rows, wide[1])
    np.testing.assert_array_equal(scores, wide[0])


@pytest.mark.parametrize("bad", ["malformed", "missing image", "indexed id"])
def test_a_corpus_refused_for_its_items_leaves_the_index_folder_as_it_was(tmp_path, model_dir, bad):
    """The corpus is read and its ids (and the first chunk's images) checked before the build writes its manifest
    and chunks/ into --out: a refused build leaves no new folder, and an index it was adding to unchanged. Before,
    the manifest and chunks/ were written first and a new --out was left half-made."""
    corpus = tmp_path / "corpus.jsonl"
    if bad == "indexed id":
        _corpus(corpus, 2)
        _build(tmp_path, model_dir, HashEmbedder())
        before = {p: p.read_bytes() for p in sorted((tmp_path / "idx").rglob("*")) if p.is_file()}
        corpus.write_text(json.dumps({"id": "doc0", "text": "other content"}) + "\n")
        with pytest.raises(IndexError_, match="id 'doc0' is indexed already"):
            _build(tmp_path, model_dir, HashEmbedder())
        assert {p: p.read_bytes() for p in sorted((tmp_path / "idx").rglob("*")) if p.is_file()} == before
        return
    _corpus(corpus, 2)
    with open(corpus, "a") as fh:
        fh.write('{"id": "doc9", "text": \n' if bad == "malformed" else
                 json.dumps({"id": "x", "image": "no.png"}) + "\n")
    with pytest.raises(DataError, match="line 3"):
        _build(tmp_path, model_dir, HashEmbedder())
    assert not (tmp_path / "idx").exists()


def _image_corpus(tmp_path: Path, n: int, last: dict) -> Path:
    """corpus.jsonl: `n` items of good images (img/0.png ...), then `last` (line n + 1)."""
    (tmp_path / "img").mkdir(exist_ok=True)
    for i in range(n):
        Image.new("RGB", (24, 20), (10 * i, 40, 200)).save(tmp_path / "img" / f"{i}.png")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"im{i}", "text": f"picture {i}", "image": f"img/{i}.png"}) + "\n"
                              for i in range(n)) + json.dumps({"id": "last", **last}) + "\n")
    return corpus


@pytest.mark.parametrize("last, field, message", [
    ({"image": "img/missing.png"}, "item.images[0]", "image file not found: 'img/missing.png'"),
    ({"image": "img"}, "item.images[0]", "image 'img' exists but is not a regular file: it is a directory"),
    ({"images": ["img/0.png", "img/gone.png"]}, "item.images[1]", "image file not found: 'img/gone.png'"),
    ({"video": "clips/missing.mp4"}, "item.video[0]", "video file not found: 'clips/missing.mp4'"),
    ({"video": ["img/0.png", "img/1.png", "img/no-frame.png"]}, "item.video[2]",
     "image file not found: 'img/no-frame.png'"),
    ({"image": "../outside.png"}, "item.images[0]", "escapes the data root"),
], ids=["missing image", "folder", "second image", "missing video", "missing frame", "outside the root"])
def test_a_missing_file_in_the_last_chunk_stops_the_build_before_any_chunk_is_written(tmp_path, model_dir, last,
                                                                                        field, message):
    """Every new item's files are looked up (a stat) before the first chunk is encoded: a missing image in the last
    chunk of a large corpus stopped the build only there, hours of chunks later. Now the build is refused naming
    the line and the field, no item encoded, and a new --out is not left behind (no chunk, no manifest)."""
    _image_corpus(tmp_path, 6, last)  # chunks of 2: the bad item (line 7) is alone in the fourth
    emb = HashEmbedder()
    with pytest.raises(DataError) as err:
        _build(tmp_path, model_dir, emb, chunk_size=2)
    assert str(err.value).startswith(f"{tmp_path / 'corpus.jsonl'}, record line 7 (id last), field '{field}': "), \
        err.value
    assert message in str(err.value) and err.value.reason == ("video" if "video" in last else "image")
    assert emb.calls == 0 and not (tmp_path / "idx").exists()


def test_an_addition_with_a_missing_image_leaves_the_index_as_it_was(tmp_path, model_dir):
    """Adding to an index: the new items' files are checked before anything is written, the index stays as it was."""
    corpus = _image_corpus(tmp_path, 4, {"text": "no image"})
    _build(tmp_path, model_dir, HashEmbedder(), chunk_size=2)
    before = {p: p.read_bytes() for p in sorted((tmp_path / "idx").rglob("*")) if p.is_file()}
    with open(corpus, "a") as fh:
        for i in range(5):
            fh.write(json.dumps({"id": f"new{i}", "image": "img/0.png" if i < 4 else "img/missing.png"}) + "\n")
    with pytest.raises(DataError,
                       match=re.escape("record line 10 (id new4), field 'item.images[0]': image file not found")):
        _build(tmp_path, model_dir, HashEmbedder(), chunk_size=2)
    assert {p: p.read_bytes() for p in sorted((tmp_path / "idx").rglob("*")) if p.is_file()} == before


def test_a_resumed_build_looks_only_at_the_files_of_the_items_not_yet_indexed(tmp_path, model_dir, monkeypatch):
    """A resumed build checks the files of the items it has still to encode, not those of the chunks already written:
    the first two chunks' images may even be gone since (they are never read again)."""
    from unime.data.images import ImageLoader

    _image_corpus(tmp_path, 6, {"image": "img/5.png"})
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path, model_dir, HashEmbedder(fail_after=2), chunk_size=2)
    assert len(CorpusIndex(tmp_path / "idx", load_faiss=False)) == 4  # im0..im3 written
    for i in range(4):
        (tmp_path / "img" / f"{i}.png").unlink()
    looked_up, opened = [], []
    file_path, read = ImageLoader.file_path, ImageLoader._read
    monkeypatch.setattr(ImageLoader, "file_path", lambda self, ref, **kw: looked_up.append(ref) or
                        file_path(self, ref, **kw))
    monkeypatch.setattr(ImageLoader, "_read", lambda self, ref, **kw: opened.append(ref) or read(self, ref, **kw))
    idx, stats = _build(tmp_path, model_dir, HashEmbedder(), chunk_size=2)
    assert (stats.already_indexed, stats.added, len(idx)) == (4, 3, 7)
    assert set(looked_up) == {"img/4.png", "img/5.png"} and set(opened) == {"img/4.png", "img/5.png"}


def _corpus_with_bad_lines(tmp_path: Path) -> Path:
    """corpus.jsonl: im0..im5 (good images), then line 7 a missing image, line 8 malformed, line 9 a second im0,
    line 10 an image that is no image (found only when decoded, in the last chunk of 2), line 11 a text."""
    corpus = _image_corpus(tmp_path, 6, {"image": "img/missing.png"})
    (tmp_path / "img" / "bad.png").write_bytes(b"not a png at all")
    with open(corpus, "a") as fh:
        fh.write('{"id": "broken", "text": \n')
        fh.write(json.dumps({"id": "im0", "text": "picture 0 again"}) + "\n")
        fh.write(json.dumps({"id": "bad", "image": "img/bad.png"}) + "\n")
        fh.write(json.dumps({"id": "words", "text": "only words"}) + "\n")
    return corpus


def test_under_on_error_skip_bad_items_are_left_out_counted_and_tried_again_by_a_re_run(tmp_path, model_dir, caplog):
    """`on_error="skip"` (`unime index build --on-error skip`, as `unime embed`): a bad line, a duplicate id, an item
    whose file is missing (found up front) or does not decode (found in its chunk) is left out of the index and counted
    under its reason, in the build's stats and the manifest; the good items are all indexed. The items left out are
    not indexed, so a re-run, their files fixed, adds them."""
    from unime.data.skips import SkipReport

    _corpus_with_bad_lines(tmp_path)
    skips = SkipReport()
    idx, stats = _build(tmp_path, model_dir, HashEmbedder(), chunk_size=2, on_error="skip", skips=skips)
    assert [e["id"] for e in idx.entries] == ["im0", "im1", "im2", "im3", "im4", "im5", "words"]
    assert (stats.added, stats.skipped) == (7, {"total": 4, "by_reason": {"image": 2, "malformed_json": 1,
                                                                          "schema": 1}})
    assert idx.manifest["last_build"]["skipped"] == stats.skipped
    assert sorted(e.record for e in skips.examples) == ["line 10 (id bad)", "line 7 (id last)", "line 8",
                                                        "line 9 (id im0)"]
    ref = HashEmbedder()
    np.testing.assert_allclose(idx.vectors()[-1], ref.vec("only words"), atol=1e-6)
    Image.new("RGB", (24, 20), (1, 2, 3)).save(tmp_path / "img" / "missing.png")
    Image.new("RGB", (24, 20), (4, 5, 6)).save(tmp_path / "img" / "bad.png")
    with caplog.at_level(logging.WARNING, logger="unime.data.skips"):  # no report given: the build logs its own
        idx, stats = _build(tmp_path, model_dir, HashEmbedder(), chunk_size=2, on_error="skip")
    assert (stats.already_indexed, stats.added) == (7, 2) and [e["id"] for e in idx.entries][-2:] == ["last", "bad"]
    assert stats.skipped == {"total": 2, "by_reason": {"malformed_json": 1, "schema": 1}}
    assert "skipped 2 record(s) (malformed_json: 1, schema: 1)" in caplog.text
    # the default stops at the first bad line, naming it, before anything is written
    with pytest.raises(DataError, match="line 8"):
        _build(tmp_path, model_dir, HashEmbedder(), chunk_size=2)


def test_under_on_error_skip_a_new_index_of_only_bad_items_is_refused_not_written_empty(tmp_path, model_dir):
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"id": "a", "image": "img/no.png"}) + "\n{oops\n")
    with pytest.raises(DataError, match="no items to index: every item was skipped"):
        _build(tmp_path, model_dir, HashEmbedder(), on_error="skip")
    assert not (tmp_path / "idx").exists()


def test_the_cli_skips_bad_items_under_on_error_skip_and_says_so(tmp_path, tiny_model_dir, capsys):
    from unime.cli import main

    corpus = _image_corpus(tmp_path, 2, {"image": "img/missing.png"})
    build = ["--log-level", "WARNING", "index", "build", "--model", tiny_model_dir("qwen2_vl"), "--items", str(corpus),
             "--out", str(tmp_path / "idx"), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    assert main(build) == 2
    assert "record line 3 (id last), field 'item.images[0]': image file not found: 'img/missing.png'" in \
        capsys.readouterr().err
    assert main(build + ["--skip-bad-records"]) == 0
    out = capsys.readouterr().out
    assert ": 2 items (2 added, 0 already indexed" in out and "; skipped 1 record(s) (image: 1)" in out, out
    assert "record line 3 (id last), field 'item.images[0]': image file not found" in out


class PixelEmbedder(HashEmbedder):
    """Vectors from each item's text and the bytes of its image files (under `root`), counting encoded items."""

    def __init__(self, root: Path, dim=16):
        super().__init__(dim)
        self.root, self.items = root, 0

    def encode(self, items, **kw):
        self.items += len(items)
        return super().encode([Item(text=self.key(it)) for it in items])

    def key(self, item):
        return item.text + "|" + "|".join(hashlib.sha1((self.root / r).read_bytes()).hexdigest() for r in item.images)


def test_a_rebuild_re_encodes_an_item_whose_image_changed_and_updates_edited_metadata(tmp_path, model_dir):
    """QA: an image replaced at the same path kept its old vector and an edited caption its old metadata: the
    rebuild said "0 added, 9 already indexed" and a search for the new image no longer found it. Now the item whose
    file changed is re-encoded (its vector, thumbnail and content digest replaced, in place), the edited metadata is
    rewritten without encoding anything, and an untouched file is not read again (known by size + mtime)."""
    corpus = _image_corpus(tmp_path, 4, {"text": "words only"})
    emb = PixelEmbedder(tmp_path)
    idx, stats = _build(tmp_path, model_dir, emb, chunk_size=2)
    assert (stats.added, emb.items) == (5, 5)
    old_thumb = idx.entries[1]["thumbnail"]
    Image.new("RGB", (30, 30), (255, 255, 0)).save(tmp_path / "img" / "1.png")  # replaced at the same path
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    rows[2]["metadata"] = {"caption": "edited"}
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    emb = PixelEmbedder(tmp_path)
    idx, stats = _build(tmp_path, model_dir, emb, chunk_size=2)
    assert (stats.added, stats.already_indexed, stats.reencoded, stats.metadata_updated) == (0, 5, 1, 1)
    assert (stats.encoded, emb.items) == (1, 1)  # only im1 went through the model
    assert [e["id"] for e in idx.entries] == ["im0", "im1", "im2", "im3", "last"]
    expected = np.stack([PixelEmbedder(tmp_path).vec(PixelEmbedder(tmp_path).key(Item.from_dict(e["item"])))
                         for e in idx.entries])
    np.testing.assert_allclose(idx.vectors(), expected, atol=1e-6)
    assert idx.entries[1]["thumbnail"] != old_thumb and idx.entries[2]["metadata"] == {"caption": "edited"}
    hits = search_items(idx, expected[1][None], 1)[0]
    assert hits[0]["id"] == "im1" and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    # nothing changed: nothing encoded, rewritten or read again
    before = {p: p.read_bytes() for p in sorted((tmp_path / "idx" / "chunks").rglob("*"))}
    from unime.data import image_digests

    reads = []
    sha1 = image_digests.file_sha1
    image_digests.file_sha1 = lambda p: reads.append(p) or sha1(p)
    try:
        idx, stats = _build(tmp_path, model_dir, PixelEmbedder(tmp_path), chunk_size=2)
    finally:
        image_digests.file_sha1 = sha1
    assert (stats.reencoded, stats.metadata_updated, stats.encoded, reads) == (0, 0, 0, [])
    assert {p: p.read_bytes() for p in sorted((tmp_path / "idx" / "chunks").rglob("*"))} == before


def test_the_cli_says_what_a_rebuild_re_encoded_and_updated_and_finds_the_new_image(tmp_path, tiny_model_dir, capsys):
    from unime.cli import main

    corpus = _image_corpus(tmp_path, 3, {"text": "words only"})
    rows = [{k: v for k, v in json.loads(line).items() if k != "text" or "image" not in line}
            for line in corpus.read_text().splitlines()]  # image-only items: the same image as a query scores 1
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    build = ["index", "build", "--model", tiny_model_dir("qwen2_vl"), "--items", str(corpus), "--out",
             str(tmp_path / "idx"), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    assert main(build) == 0
    Image.new("RGB", (48, 40), (250, 250, 250)).save(tmp_path / "img" / "0.png")
    (tmp_path / "img" / "0.png").rename(tmp_path / "new.png")
    Image.new("RGB", (48, 40), (250, 250, 250)).save(tmp_path / "img" / "0.png")
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    rows[1]["metadata"] = {"caption": "edited"}
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    capsys.readouterr()
    assert main(build) == 0
    out = capsys.readouterr().out
    assert ": 4 items (0 added, 4 already indexed, 1 re-encoded (content changed), 1 metadata updated, 1 encoded" \
        in out, out
    assert main(["search", "--index", str(tmp_path / "idx"), "--image", str(tmp_path / "new.png"), "--k", "1",
                 "--json", "--device", "cpu"]) == 0
    hit = json.loads(capsys.readouterr().out)
    assert hit["id"] == "im0" and hit["score"] == pytest.approx(1.0, abs=1e-4)
    assert CorpusIndex(tmp_path / "idx").entries[1]["metadata"] == {"caption": "edited"}


def test_rows_indexed_before_contents_were_recorded_get_their_digest_with_a_warning(tmp_path, model_dir, caplog):
    """An index built before rows recorded their files' digest: the digest is recorded (nothing encoded), and the
    build warns that a file changed before it cannot be seen; the next build compares against it."""
    _image_corpus(tmp_path, 2, {"text": "words only"})
    _build(tmp_path, model_dir, PixelEmbedder(tmp_path))
    keys = committed_chunks_of(tmp_path / "idx")
    rows = [json.loads(line) for line in keys.read_text().splitlines()]
    keys.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "content"}) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING, logger="unime.index.store"):
        idx, stats = _build(tmp_path, model_dir, PixelEmbedder(tmp_path))
    assert (stats.content_recorded, stats.reencoded, stats.encoded) == (2, 0, 0)
    assert "2 row(s) were indexed before their files' content was recorded" in caplog.text
    assert [e.get("content") for e in idx.entries] == [r.get("content") for r in rows]
    Image.new("RGB", (30, 30), (0, 0, 0)).save(tmp_path / "img" / "0.png")
    idx, stats = _build(tmp_path, model_dir, PixelEmbedder(tmp_path))
    assert (stats.content_recorded, stats.reencoded, stats.encoded) == (0, 1, 1)


def committed_chunks_of(idx: Path) -> Path:
    (keys,) = sorted((idx / "chunks").glob("chunk-*.jsonl"))
    return keys


def test_search_names_a_bad_query_image_before_loading_the_model(tmp_path, monkeypatch, capsys):
    """QA: `unime search --image photos/corrupt.png` loaded the model, then said "corrupt or unreadable image
    <inline bytes>". Now the file is checked first, named, and nothing is loaded (the index folder is not even
    opened: here it does not exist)."""
    from unime.cli import main
    from unime.models import embedder

    monkeypatch.setattr(embedder.Embedder, "from_pretrained", lambda *a, **kw: pytest.fail("the model was loaded"))
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "corrupt.png").write_bytes(b"not a png at all")
    monkeypatch.chdir(tmp_path)
    assert main(["search", "--index", "no-index", "--image", "photos/corrupt.png"]) == 2
    err = capsys.readouterr().err
    assert "corrupt or unreadable image photos/corrupt.png: not in an image format PIL can read" in err, err
    assert "--image" in err and "<inline bytes>" not in err
    assert main(["search", "--index", "no-index", "--image", "photos/gone.png"]) == 2
    err = capsys.readouterr().err
    assert "image file not found: 'photos/gone.png'" in err and "--image" in err, err


def test_the_search_table_shows_each_hits_metadata_truncated(tmp_path, model_dir, monkeypatch, capsys):
    """QA: only --json showed a hit's metadata. The table has a metadata column (its JSON cut to 60 characters, after
    the labels padded to one width) when any hit has metadata, and none otherwise."""
    from unime.cli import main
    from unime.index import store

    hits = [{"rank": 1, "score": 0.9, "id": "a", "item": {"text": "first"},
             "metadata": {"caption": "x" * 100}},
            {"rank": 2, "score": 0.5, "id": "b", "item": {"images": ["img/1.png"]}, "metadata": {}}]
    monkeypatch.setattr(store, "search_index_folder", lambda cfg, query: [dict(h) for h in hits])
    assert main(["search", "--index", "idx", "--query", "q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    meta = json.dumps({"caption": "x" * 100}, ensure_ascii=False)
    assert lines == [f"  1  0.9000  a  {'first':<9}  {meta[:59]}…", "  2  0.5000  b  img/1.png"], lines
    hits[0]["metadata"] = {}
    assert main(["search", "--index", "idx", "--query", "q"]) == 0
    assert capsys.readouterr().out.splitlines() == ["  1  0.9000  a  first", "  2  0.5000  b  img/1.png"]


def test_the_search_table_keeps_a_hit_whose_text_has_a_newline_on_one_line(monkeypatch, capsys):
    """QA: a hit whose text held a newline (or a tab) broke `unime search`'s table across lines; now each hit is one
    line, its line breaks and control characters escaped as in a Python string."""
    from unime.cli import main
    from unime.index import store

    hits = [{"rank": 1, "score": 0.9, "id": "a", "item": {"text": "title\nbody\twith\r\nbreaks"}},
            {"rank": 2, "score": 0.5, "id": "b\nc", "item": {"text": "fine"}, "metadata": {"k": "v"}}]
    monkeypatch.setattr(store, "search_index_folder", lambda cfg, query: [dict(h) for h in hits])
    assert main(["search", "--index", "idx", "--query", "q"]) == 0
    label = r"title\nbody\twith\r\nbreaks"
    assert capsys.readouterr().out.splitlines() == [f"  1  0.9000  a  {label}",
                                                    f"  2  0.5000  b\\nc  {'fine':<{len(label)}}  {{\"k\": \"v\"}}"]


def test_a_build_interrupted_before_its_faiss_index_says_to_finish_it_not_covers_none(tmp_path, model_dir):
    """Before, an index whose build was killed after its chunks were committed but before faiss.index was written
    was refused with "the FAISS index covers None rows but 10 are stored"; now it says there is no FAISS index yet
    and to re-run the build with the same arguments, which finishes it."""
    _corpus(tmp_path / "corpus.jsonl", 12)
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path, model_dir, HashEmbedder(fail_after=2), chunk_size=5)
    folder = tmp_path / "idx"
    assert not (folder / "faiss.index").exists()
    with pytest.raises(IndexError_) as e:
        CorpusIndex(folder)
    message = str(e.value)
    assert "None" not in message, message
    assert message == (f"{folder}: the index has no FAISS index yet (its build was interrupted after 10 rows were "
                       "stored); re-run `unime index build` with the same arguments to finish it")
    _build(tmp_path, model_dir, HashEmbedder(), chunk_size=5)  # as the message says: the build is finished
    assert len(CorpusIndex(folder)) == 12


def test_index_build_samples_videos_by_its_video_options_and_search_takes_a_video_query_alike(tmp_path,
                                                                                               tiny_model_dir, capsys):
    """QA: `index build --video-frames 4` was "unrecognized arguments" (an index could not be built with the frames
    the embedder was trained with), and `unime search --image clip.mp4` said the MP4 is "not in an image format PIL
    can read". The build takes the --video-* options; the sampling is one of the index's model settings (an addition
    with another sampling is refused, as with another dtype); `search --video FILE` encodes its clip sampled as the
    index's videos."""
    from tests.data.helpers import write_clip
    from tests.eval.helpers import write_jsonl
    from unime.cli import main
    from unime.data.video import VideoSampling
    from unime.models.embedder import Embedder

    (tmp_path / "clips").mkdir()
    for i in range(2):
        write_clip(tmp_path / "clips" / f"c{i}.mp4", n=16, fps=8, shift=100 * i)
    rows = [{"id": f"c{i}", "video": f"clips/c{i}.mp4"} for i in range(2)] + [{"id": "t0", "text": "a red square"}]
    corpus = tmp_path / "corpus.jsonl"
    write_jsonl(corpus, rows)
    model = tiny_model_dir("qwen2_vl")
    build = ["index", "build", "--model", model, "--items", str(corpus), "--out", str(tmp_path / "idx"),
             "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    assert main(build + ["--video-frames", "4"]) == 0, capsys.readouterr()
    idx = CorpusIndex(tmp_path / "idx")
    assert idx.manifest["model_settings"]["video_sampling"]["num_frames"] == 4
    items = [Item(video=(f"clips/c{i}.mp4",)) for i in range(2)] + [Item(text="a red square")]
    four = Embedder.from_pretrained(model, device="cpu", data_root=str(tmp_path),
                                    video_sampling=VideoSampling(num_frames=4)).encode(items)
    eight = Embedder.from_pretrained(model, device="cpu", data_root=str(tmp_path)).encode(items)
    np.testing.assert_allclose(idx.vectors(), four, atol=1e-5)
    assert not np.allclose(four[:2], eight[:2], atol=1e-3)  # the sampling changes the clips' vectors
    capsys.readouterr()
    # an addition sampled otherwise is refused, naming the setting; with the same options it is the index's own
    assert main(build) == 2
    err = capsys.readouterr().err
    assert "settings differ: video_sampling" in err and "use another --out" in err, err
    assert ": the index's videos were sampled by --video-frames 4, these by the defaults (no --video-* option);" \
        in err, err
    assert main(build + ["--video-frames", "4"]) == 0
    assert "3 items (0 added, 3 already indexed" in capsys.readouterr().out
    # a video query, sampled as the index's videos (4 frames): the clip itself first, at its own vector's score
    assert main(["search", "--index", str(tmp_path / "idx"), "--video", str(tmp_path / "clips" / "c1.mp4"),
                 "--json", "--device", "cpu"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = four @ four[1]
    assert [h["id"] for h in hits] == [rows[i]["id"] for i in np.argsort(-expected)]
    np.testing.assert_allclose([h["score"] for h in hits], np.sort(expected)[::-1], atol=1e-4)
    assert main(["search", "--index", str(tmp_path / "idx"), "--video", str(tmp_path / "clips" / "c1.mp4"),
                 "--device", "cpu"]) == 0
    assert "clips/c1.mp4" in capsys.readouterr().out.splitlines()[0]  # a video hit is labelled by its file
    # a video given as --image: told to give it as --video, before the model loads
    assert main(["search", "--index", str(tmp_path / "idx"), "--image", str(tmp_path / "clips" / "c1.mp4")]) == 2
    assert capsys.readouterr().err.strip() == (f"unime: error: search: --image {tmp_path / 'clips' / 'c1.mp4'} is a "
                                               "video file: give it as --video")
    (tmp_path / "broken.mp4").write_bytes(b"no video at all")
    assert main(["search", "--index", str(tmp_path / "idx"), "--video", str(tmp_path / "broken.mp4")]) != 0
    assert "field '--video'" in capsys.readouterr().err


def test_a_refusal_for_another_video_sampling_names_the_video_options_of_each(model_dir):
    """The sampling recorded with an index's model settings, and the one asked for, said as the --video-* options
    that give them (a frame rate with its bound; a pixel budget other than the default)."""
    from dataclasses import asdict

    from unime.data.video import VideoSampling
    from unime.index.store import model_mismatch

    built = {"video_sampling": asdict(VideoSampling(num_frames=None, fps=2.0, max_frames=16))}
    asked = {"video_sampling": asdict(VideoSampling(num_frames=4, max_video_pixels=50_000))}
    why = model_mismatch({"model_fingerprint": "other", "model_settings": built}, model_dir, asked)
    assert why.endswith(": the index's videos were sampled by --video-fps 2 --video-max-frames 16, these by "
                        "--video-frames 4 --video-max-pixels 50000"), why
    why = model_mismatch({"model_fingerprint": "other", "model_settings": {**built, "dtype": "fp32"}}, model_dir,
                         {"dtype": "bf16", **built})
    assert why == "settings differ: dtype 'fp32' (index) vs 'bf16'"  # the same sampling: not said


def test_a_manifest_dim_that_disagrees_with_the_vectors_is_refused_when_the_index_opens(tmp_path, model_dir, capsys):
    """QA: a manifest edited by hand to `"dim": 32` for 16-d vectors opened, then every search failed ('query vectors
    have dimension 16, the index 32'; a 500 from the service). Now the index is refused when it opens, naming the
    chunk, its shape and the manifest's field: by `unime search` (before any model loads) and `unime serve` alike."""
    import shutil

    from unime.cli import main

    _corpus(tmp_path / "corpus.jsonl", 12)
    _build(tmp_path, model_dir, HashEmbedder(dim=16), chunk_size=5)

    def with_dim(name, dim):
        folder = tmp_path / name
        shutil.copytree(tmp_path / "idx", folder)
        m = json.loads((folder / "manifest.json").read_text())
        m["dim"] = dim
        (folder / "manifest.json").write_text(json.dumps(m))
        return folder

    wrong = with_dim("dim32", 32)
    with pytest.raises(IndexError_) as e:
        CorpusIndex(wrong)
    chunk = wrong / "chunks" / "chunk-00000.npy"
    assert str(e.value).startswith(f"{chunk}: vectors of shape (5, 16), but the field 'dim' of "
                                   f"{wrong / 'manifest.json'} is 32")
    with pytest.raises(IndexError_, match="field 'dim' is 'x', not a positive integer"):
        CorpusIndex(with_dim("dim_text", "x"))
    assert main(["search", "--index", str(wrong), "--query", "document", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"unime: error: {chunk}: vectors of shape (5, 16)") and err.count("\n") == 1, err
    # the index as built opens and searches
    assert CorpusIndex(tmp_path / "idx").search(HashEmbedder(dim=16).vec("document number 7")[None], 1)[1][0, 0] == 7


def test_a_build_stopped_before_the_manifest_recorded_its_first_chunk_is_finished_by_a_re_run(tmp_path, model_dir):
    """Stopped after its first chunk was committed, before the manifest recording it (`dim` still null): a re-run
    found nothing to add and died on `int(None)`; it takes the vectors' dim from the stored chunk."""
    import shutil

    _corpus(tmp_path / "corpus.jsonl", 4)
    _build(tmp_path, model_dir, HashEmbedder(dim=16))
    m = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    m["dim"], m["index"], m["count"] = None, {}, None
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(m))
    stopped = shutil.copytree(tmp_path / "idx", tmp_path / "stopped")
    idx, stats = _build(tmp_path, model_dir, HashEmbedder(dim=16))
    assert (len(idx), stats.added, idx.dim) == (4, 0, 16)
    assert idx.search(HashEmbedder(dim=16).vec("document number 2")[None], 1)[1][0, 0] == 2
    with pytest.raises(IndexError_, match="records no 'dim' for the stored vectors .* re-run `unime index build`"):
        CorpusIndex(stopped, load_faiss=False)


def test_the_manifest_digest_changes_only_when_a_build_finishes(tmp_path, model_dir):
    """What `unime serve` reloads on (`manifest_digest`): while a build appends chunk after chunk to an index, its
    manifest keeps its content (a service does not try each half-built state); the build's last write changes it."""
    from unime.index.store import manifest_digest

    _corpus(tmp_path / "corpus.jsonl", 6)
    first, _ = _build(tmp_path, model_dir, HashEmbedder())
    assert first.manifest_digest == manifest_digest(tmp_path / "idx")
    seen = []

    class Watching(HashEmbedder):
        def encode(self, items, **kw):
            seen.append(manifest_digest(tmp_path / "idx"))
            return super().encode(items, **kw)

    _corpus(tmp_path / "corpus.jsonl", 6, start=6)
    second, stats = _build(tmp_path, model_dir, Watching(), chunk_size=2)
    assert stats.chunks_written == 3 and len(seen) == 3
    assert seen == [first.manifest_digest] * 3  # mid-build: what was served
    assert second.manifest_digest == manifest_digest(tmp_path / "idx") != first.manifest_digest
    assert manifest_digest(tmp_path / "nothing") is None


def test_search_refuses_a_query_image_beyond_the_models_aspect_ratio_before_loading_it(tmp_path, tiny_model_dir,
                                                                                       monkeypatch, capsys):
    """QA: `unime search --image` of a 201:1 image loaded the model, then refused the image. The limit is the
    model's image budget's (recorded with the checkpoint, `checkpoint_image_loader`), known before it loads: the
    image is refused first, named by --image, and the model is not loaded. 200:1 is searched."""
    from unime.cli import main
    from unime.models import embedder
    from unime.models.image_budget import PROCESSOR_MAX_ASPECT_RATIO

    (tmp_path / "corpus.jsonl").write_text(json.dumps({"id": "t0", "text": "a red square"}) + "\n")
    model = tiny_model_dir("qwen2_vl")
    assert main(["index", "build", "--model", model, "--items", str(tmp_path / "corpus.jsonl"), "--out",
                 str(tmp_path / "idx"), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]) == 0
    assert PROCESSOR_MAX_ASPECT_RATIO == 200
    Image.new("RGB", (402, 2), (220, 30, 30)).save(tmp_path / "wide.png")  # 201:1
    Image.new("RGB", (400, 2), (220, 30, 30)).save(tmp_path / "edge.png")  # 200:1
    capsys.readouterr()
    real = embedder.Embedder.from_pretrained
    loaded = []
    monkeypatch.setattr(embedder.Embedder, "from_pretrained",
                        classmethod(lambda cls, *a, **kw: loaded.append(a) or real(*a, **kw)))
    search = ["search", "--index", str(tmp_path / "idx"), "--k", "1", "--json", "--device", "cpu", "--image"]
    assert main(search + [str(tmp_path / "wide.png")]) == 2
    err = capsys.readouterr().err
    assert loaded == []
    assert err == (f"unime: error: field '--image': image {tmp_path / 'wide.png'} is 402x2: its long side is 201 times "
                   "its short side, over the 200 the model's image processor accepts\n")
    assert main(search + [str(tmp_path / "edge.png")]) == 0
    assert len(loaded) == 1 and json.loads(capsys.readouterr().out)["id"] == "t0"


@needs_proc_maps
@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
@pytest.mark.parametrize("storage", ["float32", "float16"])
def test_a_memory_mapped_index_gives_the_same_hits_read_in_place_from_its_file(tmp_path, model_dir, kind, storage):
    """`CorpusIndex(mmap=True)` (`--mmap` of search and serve) reads faiss.index memory-mapped, for every kind and
    storage an index is built with: the same top-k ids and scores as the index read into memory, the file mapped by
    the process (listed in /proc/self/maps, where the in-memory read leaves it out). A build writing a new
    faiss.index (by a rename) leaves a mapped index searching the file it opened, now listed as deleted."""
    import faiss

    _corpus(tmp_path / "corpus.jsonl", 300)
    emb = HashEmbedder(dim=32)
    _build(tmp_path, model_dir, emb, index=kind, index_settings={"storage": storage, "nlist": 4, "nprobe": 2},
           recall_sample=10)
    path = str((tmp_path / "idx" / "faiss.index").resolve())
    in_memory = CorpusIndex(tmp_path / "idx")
    assert path not in mapped_files()
    mapped = CorpusIndex(tmp_path / "idx", mmap=True)
    assert mapped.mmap and path in mapped_files()
    assert type(faiss.downcast_index(mapped.faiss)) is type(faiss.downcast_index(in_memory.faiss))
    queries = np.stack([emb.vec(f"document number {i}") for i in range(0, 300, 7)] + [emb.vec("something else")])
    scores, rows = in_memory.search(queries, 12)
    mm_scores, mm_rows = mapped.search(queries, 12)
    np.testing.assert_array_equal(mm_rows, rows)
    np.testing.assert_array_equal(mm_scores, scores)
    assert (rows[:-1, 0] == np.arange(0, 300, 7)).all()  # (each text's own row first: a search that finds)
    _corpus(tmp_path / "corpus.jsonl", 10, start=300)
    _build(tmp_path, model_dir, emb, recall_sample=10)  # writes a new faiss.index over the old by a rename
    assert f"{path} (deleted)" in mapped_files() and path not in mapped_files()
    np.testing.assert_array_equal(mapped.search(queries, 12)[1], rows)
    new = CorpusIndex(tmp_path / "idx", mmap=True)
    assert len(new) == 310 and path in mapped_files()
    assert new.search(emb.vec("document number 305")[None], 1)[1][0, 0] == 305


def test_a_faiss_without_memory_mapped_reads_is_named_when_mmap_is_asked(tmp_path, model_dir, monkeypatch):
    """FAISS before 1.11 has no IO_FLAG_MMAP_IFC: `--mmap` is refused naming the option and the installed version
    (not an AttributeError), while the default read still works."""
    import faiss

    _corpus(tmp_path / "corpus.jsonl", 5)
    _build(tmp_path, model_dir, HashEmbedder())
    monkeypatch.delattr(faiss, "IO_FLAG_MMAP_IFC")
    with pytest.raises(IndexError_, match=r"memory-mapped \(--mmap\) needs a FAISS with IO_FLAG_MMAP_IFC \(1\.11 or "
                       rf"later\); the installed one is {re.escape(faiss.__version__)}"):
        CorpusIndex(tmp_path / "idx", mmap=True)
    assert len(CorpusIndex(tmp_path / "idx")) == 5


@needs_proc_maps
def test_the_cli_searches_a_memory_mapped_index_under_mmap_with_the_same_hits(tmp_path, tiny_model_dir, capsys,
                                                                              monkeypatch):
    """`unime search --mmap` opens the index memory-mapped (its faiss.index mapped while it searches) and prints
    the hits of the default read."""
    from unime.cli import main
    from unime.index import store

    model = tiny_model_dir("qwen2_vl")
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in
                                                   enumerate(["a red star", "a blue circle", "a green tree"])))
    assert main(["index", "build", "--model", model, "--items", str(tmp_path / "corpus.jsonl"), "--out",
                 str(tmp_path / "idx"), "--device", "cpu"]) == 0
    opened = []

    class Spy(store.CorpusIndex):
        def search(self, queries, k):
            opened.append((self.mmap, str((self.folder / "faiss.index").resolve()) in mapped_files()))
            return super().search(queries, k)

    monkeypatch.setattr(store, "CorpusIndex", Spy)
    out = {}
    for flags in ([], ["--mmap"]):
        capsys.readouterr()
        assert main(["search", "--index", str(tmp_path / "idx"), "--query", "a blue circle", "--k", "3", "--json",
                     "--device", "cpu", *flags]) == 0
        out[bool(flags)] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert opened == [(False, False), (True, True)]
    assert out[True] == out[False] and out[True][0]["id"] == "t1"


def test_a_text_holding_a_unicode_line_separator_is_indexed_as_one_row(tmp_path, model_dir):
    """A row's JSON line keeps U+2028, U+2029 and U+0085 (NEL) as they are (json.dumps(ensure_ascii=False) escapes
    only the ASCII controls), and the rows were read back split by str.splitlines, which splits at those too: a
    corpus with such a text (pasted from a web page or a PDF) built its chunk, then could not open it ("the index is
    damaged (JSONDecodeError ...)"). A row is one line split at "\\n" only: indexed, searched, added to, and its
    metadata edited by a re-run."""
    texts = ["first\u2028line", "a\u0085next line", "para\u2029graph", "plain"]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"t{i}", "text": t, "metadata": {"n": i}}) + "\n"
                              for i, t in enumerate(texts)))
    emb = HashEmbedder()
    idx, _ = _build(tmp_path, model_dir, emb)
    assert [e["item"]["text"] for e in idx.entries] == texts
    assert idx.search(emb.vec("para\u2029graph")[None], 1)[1][0, 0] == 2
    with open(corpus, "a") as fh:
        fh.write(json.dumps({"id": "t4", "text": "more"}) + "\n")
    idx, stats = _build(tmp_path, model_dir, emb)
    assert (stats.already_indexed, stats.added) == (4, 1) and len(idx) == 5
    corpus.write_text(corpus.read_text().replace('{"n": 0}', '{"n": "edited"}'))
    idx, stats = _build(tmp_path, model_dir, emb)
    assert stats.metadata_updated == 1 and idx.entries[0]["metadata"] == {"n": "edited"}
    assert [e["item"]["text"] for e in CorpusIndex(tmp_path / "idx").entries] == texts + ["more"]


def test_the_rows_are_parsed_when_asked_for_not_held_as_dicts(tmp_path, model_dir):
    """An opened index held a dict per row, every row's JSON parsed when it opened (about 800 bytes of Python objects
    for a row of a short text: 320 MiB of 400,000 rows, `bench/index_memory.py`). Its rows are now parsed when asked
    for, from the chunks' bytes: the same rows as the files' lines (read here by `json.loads` of each line), by
    index, negative index and slice, at a fraction of the memory; a chunk cut short in its last row is refused as
    damaged when the index opens, as before."""
    import tracemalloc

    from unime.index.store import committed_chunks

    _corpus(tmp_path / "corpus.jsonl", 3000)
    _build(tmp_path, model_dir, HashEmbedder(), chunk_size=700)
    lines = [json.loads(line) for keys in committed_chunks(tmp_path / "idx")
             for line in keys.read_text(encoding="utf-8").split("\n") if line]

    def traced(make):
        tracemalloc.start()
        try:
            return make(), tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()

    idx, held = traced(lambda: CorpusIndex(tmp_path / "idx", load_faiss=False))
    as_dicts, dicts = traced(lambda: [json.loads(json.dumps(r)) for r in lines])  # what the index held before
    assert len(as_dicts) == len(idx.entries) == 3000 and list(idx.entries) == lines
    assert idx.entries[-1] == lines[-1] and idx.entries[699:702] == lines[699:702] and idx.entries[2100]["id"] == \
        "doc2100"
    assert held < dicts / 4, (held, dicts)
    with pytest.raises(IndexError):
        idx.entries[3000]
    last = committed_chunks(tmp_path / "idx")[-1]
    last.write_bytes(last.read_bytes()[:-30])
    with pytest.raises(IndexError_, match="the index is damaged"):
        CorpusIndex(tmp_path / "idx")


def _open_files() -> int:
    import os

    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_an_opened_index_holds_no_open_file_per_chunk_and_its_rows_still_read(tmp_path, model_dir):
    # a memory map keeps its file open: an index opened with every chunk mapped held one open file per chunk, and
    # the common limit of 1,024 open files was reached near a million rows (1,024 rows a chunk)
    _corpus(tmp_path / "corpus.jsonl", 60)
    _build(tmp_path, model_dir, HashEmbedder(), chunk_size=2)
    before = _open_files()
    idx = CorpusIndex(tmp_path / "idx")
    assert _open_files() - before < 5  # the FAISS index and the like, not the 30 chunks
    emb = HashEmbedder()
    expected = np.stack([emb.vec(f"document number {i}") for i in range(60)])
    np.testing.assert_allclose(idx.vectors(), expected, atol=1e-6)
    np.testing.assert_allclose(idx.rows()[np.array([59, 0, 31])], expected[[59, 0, 31]], atol=1e-6)
    assert _open_files() - before < 5  # reading rows opens a chunk while it reads it


def test_rows_read_from_an_index_whose_chunks_were_rewritten_since_it_opened_are_refused(tmp_path, model_dir):
    _corpus(tmp_path / "corpus.jsonl", 6)
    _build(tmp_path, model_dir, HashEmbedder(), chunk_size=3)
    idx = CorpusIndex(tmp_path / "idx")
    chunk = sorted((tmp_path / "idx" / "chunks").glob("*.npy"))[0]
    new = chunk.with_name("replacement.npy")
    np.save(new, np.zeros((3, 16), dtype=np.float32))
    new.replace(chunk)  # as a build rewrites a chunk: another file under the same name
    with pytest.raises(IndexError_, match=r"changed since the index was opened.*open it again"):
        idx.vectors()


def test_a_search_video_damaged_past_its_header_is_named_as_the_option_before_the_model_loads(tmp_path,
                                                                                               tiny_model_dir, capsys,
                                                                                               monkeypatch):
    """QA (video): `search --video clip.mp4` of a clip whose header reads but whose frames do not decode failed
    after the embedder loaded, naming the encoder's "field 'items[0].video'", which the user never wrote. It is
    decoded (sampled as the index's videos) before the model loads, and named as --video."""
    from tests.data.helpers import write_clip
    from tests.eval.helpers import write_jsonl
    from unime.cli import main
    from unime.models import embedder as embedder_module

    (tmp_path / "clips").mkdir()
    write_clip(tmp_path / "clips" / "c0.mp4", n=16, fps=8, codec="libx264")
    write_jsonl(tmp_path / "corpus.jsonl", [{"id": "c0", "video": "clips/c0.mp4"}, {"id": "t0", "text": "red"}])
    assert main(["index", "build", "--model", tiny_model_dir("qwen2_vl"), "--items", str(tmp_path / "corpus.jsonl"),
                 "--out", str(tmp_path / "idx"), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu",
                 "--video-frames", "4"]) == 0
    bad = write_clip(tmp_path / "garbled.mp4", n=16, fps=8, codec="libx264", shift=90)
    data = bytearray(bad.read_bytes())
    start, end = data.find(b"mdat") + 4, data.find(b"moov") - 4  # the frames, not the index (`moov`, at the end)
    data[start:end] = b"\xff" * (end - start)
    bad.write_bytes(bytes(data))
    capsys.readouterr()

    def no_model(*args, **kwargs):
        raise AssertionError("the embedder was loaded")

    monkeypatch.setattr(embedder_module.Embedder, "from_pretrained", no_model)
    assert main(["search", "--index", str(tmp_path / "idx"), "--video", str(bad), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    # its 16 frames' bytes overwritten: none of its packets decodes (`unime.data.video._frameless`)
    assert err.startswith(f"unime: error: field '--video': corrupt video {bad}: none of its 16 packet(s) decode"), err
    assert "\n" not in err, err


def test_index_build_and_search_refuse_a_text_over_the_models_context_as_serve_does(tmp_path, tiny_model_dir, capsys):
    """QA: `unime index build` and `unime search` encoded a text of 5,000 tokens with a model built for 4,096 (its
    max_position_embeddings) without a word, while `unime serve` refuses it. The same limit and count now
    (`unime.models.context`): the build names the line, id, tokens and limit, or under --on-error skip leaves the item
    out and counts it; a search's query over it is named as --query."""
    from transformers import AutoTokenizer

    from tests.models.helpers import with_context
    from unime.cli import main

    model = with_context(tiny_model_dir("qwen2_vl"), tmp_path / "m", 24)
    long = " ".join(["red circle"] * 20)
    tokens = len(AutoTokenizer.from_pretrained(model)(long, add_special_tokens=False)["input_ids"])
    assert tokens > 24
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in [("a", "a red circle"),
                                                                                   ("big", long)]), encoding="utf-8")
    build = ["--log-level", "WARNING", "index", "build", "--model", str(model), "--items", str(corpus),
             "--out", str(tmp_path / "idx"), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    limit = f"text of {tokens} tokens is over the limit of 24 (the model's max_position_embeddings"
    assert main(build) == 2
    assert f"{corpus}, record line 2 (id big), field 'item.text': {limit}" in capsys.readouterr().err
    assert main(build + ["--on-error", "skip"]) == 0
    out = capsys.readouterr().out
    assert ": 1 items (1 added" in out and "; skipped 1 record(s) (too_long: 1)" in out, out
    assert main(["search", "--index", str(tmp_path / "idx"), "--query", long, "--device", "cpu"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"unime: error: field '--query': {limit}, the longest text it " \
        "is built for)"
    assert main(["search", "--index", str(tmp_path / "idx"), "--query", "a red circle", "--device", "cpu"]) == 0


def test_the_build_counts_an_item_repeated_within_a_chunk_so_its_line_adds_up(tmp_path, model_dir, monkeypatch,
                                                                             capsys):
    """QA: 10,000 items were reported "8,397 encoded, 1,150 from the embedding cache": the 453 repeating the content of
    an item of their chunk (another id, same text) were counted nowhere. They are `BuildStats.repeats`, and the line
    says them: encoded + from the cache + repeats = the items added. Chunks of 2: [a, b=a] [c, d=a] [e=c, f]."""
    import unime.index.store as store
    from unime.cli import main

    texts = {"a": "a red circle", "b": "a red circle", "c": "a cat", "d": "a red circle", "e": "a cat", "f": "a dog"}
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in texts.items()),
                                           encoding="utf-8")
    _, stats = _build(tmp_path, model_dir, HashEmbedder(), chunk_size=2)
    # a, c, f through the model; d (a, in chunk 1) and e (c, in chunk 2) from the cache; b (a's chunk) a repeat
    assert (stats.added, stats.encoded, stats.from_cache, stats.repeats) == (6, 3, 2, 1)
    # the CLI's line, from a build of its own (the model replaced by the fake embedder)
    monkeypatch.setattr(store, "build_index_folder", lambda cfg, given=None, skips=None: build_corpus_index(
        cfg.items, cfg.out, embedder=HashEmbedder(), model=model_dir, cache_dir=tmp_path / "cache2",
        model_settings={"fake": True}, chunk_size=2))
    assert main(["index", "build", "--model", model_dir, "--items", str(tmp_path / "corpus.jsonl"), "--out",
                 str(tmp_path / "idx2")]) == 0
    assert "(6 added, 0 already indexed, 3 encoded, 2 from the embedding cache, 1 repeating an item above)" in \
        capsys.readouterr().out
