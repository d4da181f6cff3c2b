"""The memory of a served index: `CorpusIndex` opened with faiss.index read into memory (the default) and read
memory-mapped (`--mmap` of `unime search` / `unime serve`), for one load + one search and for a serve-style reload
(`unime.serve.index_reload`: the old state still served while the new one is opened, both held at once).

    python bench/index_memory.py [--rows 400000] [--dim 512] [--kind flat] [--folder DIR]

The index is built by unime's own API (`build_corpus_index`: a corpus of text items, an embedder giving random
unit vectors, no embedding cache) into DIR (default: a temporary folder, removed at the end). Each measurement runs
in a fresh process and prints, from /proc/self/status, the resident memory after the imports, after the load and
after one search: RssAnon (the process's own memory: what a machine must hold) and RssFile (pages of mapped files:
the kernel's page cache, shared, dropped under memory pressure and read again), and VmHWM (the peak of both
together). The reload opens the folder, searches, has a subprocess append 1,024 items (a build that rewrites
faiss.index by a rename), then opens the new state while holding the old and searches both. Warm page cache (the
files were just written); the first search of a cold mmapped index reads its pages from disk.

Measured (2026-12-06, 2 cores shared with other jobs, faiss 1.15.1), RssAnon / RssFile after the step, MiB:

    400,000 x 512 float32, flat (faiss.index 781 MiB)   read into memory      --mmap
      opened                                            839 / 26   2.1 s     58 / 26   0.4 s
      one search                                        839 / 26              58 / 808 (the file's pages)
      reload: the new state opened, the old held       1654 / 27             90 / 810
      both searched                                    1654 / 27             90 / 1595 (both files' pages)
      a search (100 queries, one each)                  120-157 ms            167-172 ms (tests ran beside)
    50,000 x 512 float32, hnsw (faiss.index 111 MiB)
      opened / one search                               140 / 27              30 / 138
      reload, both searched                             257 / 27              35 / 255
    20,000 x 512, hnsw: 4.3 ms a search either way.

Before the rows were parsed on demand (`unime.index.store.StoredRows`), the 400,000 rows' dicts held 324 MiB more
and took 8-9 s more to open (1,132 / 351 MiB opened, 2,238 / 674 MiB in a reload).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 2 ** 20


class RandomEmbedder:
    """Random L2-normalised vectors (a seeded generator per batch): the vectors' values do not matter here."""

    def __init__(self, dim: int):
        self.dim = dim

    def encode(self, items, **kw):
        import numpy as np

        seed = int(items[0].text.split()[-1]) if items else 0
        v = np.random.default_rng(seed).standard_normal((len(items), self.dim), dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def status() -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon, RssFile of this process in bytes (/proc/self/status)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def show(label: str, st: dict[str, int], extra: str = "") -> None:
    print(f"  {label:<34} RssAnon {st['RssAnon'] / MiB:8.1f} MiB  RssFile {st['RssFile'] / MiB:8.1f} MiB  "
          f"VmHWM {st['VmHWM'] / MiB:8.1f} MiB{extra}", flush=True)


def build(folder: Path, rows: int, start: int, dim: int, kind: str) -> None:
    """Append items start..start+rows-1 to the corpus beside `folder` and build (or extend) the index."""
    from unime.index.store import build_corpus_index

    corpus = folder.parent / "corpus.jsonl"
    model = folder.parent / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text("{}")
    with open(corpus, "a") as fh:
        for i in range(start, start + rows):
            fh.write(json.dumps({"id": f"d{i}", "text": f"item {i}"}) + "\n")
    build_corpus_index(corpus, folder, embedder=RandomEmbedder(dim), model=str(model), cache_dir=None,
                       model_settings={"bench": "random"}, index=kind)


def measure(folder: Path, mmap: bool, reload: bool, append_from: int) -> None:
    import importlib

    import numpy as np

    from unime.index.store import CorpusIndex

    importlib.import_module("faiss")  # imported before the first figure, as numpy and the store
    show("after the imports", status())
    t = time.perf_counter()
    idx = CorpusIndex(folder, mmap=mmap)
    load_s = time.perf_counter() - t
    show(f"opened ({len(idx):,} rows)", status(), f"  {load_s:6.2f} s")
    q = np.asarray(idx.rows()[0:1], dtype=np.float32)
    t = time.perf_counter()
    scores, rows = idx.search(q, 10)
    show("one search (k=10)", status(), f"  {time.perf_counter() - t:6.2f} s")
    many = np.asarray(idx.rows()[1:101], dtype=np.float32)
    t = time.perf_counter()
    for v in many:
        idx.search(v[None], 10)
    print(f"  then 100 searches of one query each: {(time.perf_counter() - t) * 10:.1f} ms a search; the first's top "
          f"hit row {rows[0, 0]} score {scores[0, 0]:.4f}", flush=True)
    if not reload:
        return
    cmd = [sys.executable, __file__, "--_append", str(folder), str(append_from), str(idx.dim),
           idx.manifest["index"]["kind"]]
    subprocess.run(cmd, check=True)
    t = time.perf_counter()
    new = CorpusIndex(folder, mmap=mmap)  # as IndexReloader._open does, the old one still held
    show(f"reloaded ({len(new):,} rows), old held", status(), f"  {time.perf_counter() - t:6.2f} s")
    s_old, r_old = idx.search(q, 10)
    s_new, r_new = new.search(q, 10)
    show("searched both", status())
    assert len(new) == len(idx) + 1024 and r_old[0, 0] == r_new[0, 0] == rows[0, 0], (r_old, r_new)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_append"]:
        folder, start, dim, kind, *rows = argv[1:]
        build(Path(folder), int(rows[0]) if rows else 1024, int(start), int(dim), kind)
        return 0
    if argv[:1] == ["--_measure"]:
        folder, mmap, reload, append_from = argv[1:]
        measure(Path(folder), mmap == "1", reload == "1", int(append_from))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--kind", default="flat", choices=["flat", "hnsw", "ivf"])
    ap.add_argument("--folder", help="work folder (default: a temporary one, removed at the end)")
    args = ap.parse_args(argv)
    work = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="unime-index-memory-"))
    folder = work / "idx"
    try:
        t = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--_append", str(folder), "0", str(args.dim), args.kind,
                        str(args.rows)], check=True)
        size = (folder / "faiss.index").stat().st_size
        print(f"{args.rows:,} x {args.dim} float32, {args.kind}: faiss.index {size / MiB:.0f} MiB, chunks "
              f"{sum(p.stat().st_size for p in (folder / 'chunks').glob('*.npy')) / MiB:.0f} MiB "
              f"(built in {time.perf_counter() - t:.0f} s)", flush=True)
        start = args.rows
        for reload in (False, True):
            for mmap in (False, True):
                print(f"{'reload' if reload else 'load + search'}, faiss.index "
                      f"{'memory-mapped (--mmap)' if mmap else 'read into memory (default)'}:", flush=True)
                subprocess.run([sys.executable, __file__, "--_measure", str(folder), str(int(mmap)), str(int(reload)),
                                str(start)], check=True)
                start += 1024 if reload else 0
    finally:
        if not args.folder:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
