"""Benchmark of `unime serve` (loopback only, bounded in count and time) and of exact vs approximate search.

    python bench/serve_load.py                                 # all parts, defaults below
    python bench/serve_load.py --seconds 30 --clients 1 8 32 128 --memory-requests 20000 --ray
    python bench/serve_load.py --skip-load --search-pool 1000000 --search-queries 10000

Parts:
1. load: one `unime serve` process per setting on a free 127.0.0.1 port with a tiny model
   (`unime models build-tiny`, default family), driven by N concurrent clients, each (a minimal keep-alive HTTP/1.1
   client on asyncio streams) sending single-text `POST /v1/embeddings` requests back to back for `--seconds`: requests/s,
   p50/p95/p99 latency, errors. Dynamic batching (`--max-batch-size 32`) and batch size 1 side by side.
2. memory: `--memory-requests` requests (at 8 clients) to the batching server: resident memory
   (VmRSS) after the first 1,000 and after the last.
3. ray (`--ray`): the same load against `unime serve --ray --replicas 1` and `--replicas 2`.
4. search: a pool of generated 1536-d unit vectors (clustered: a mixture of `--search-clusters`
   Gaussian clusters, as embeddings are, rather than uniform noise), `--search-queries` queries drawn
   the same way; exact (IndexFlatIP) vs IVF and HNSW: build time, search time, speed-up,
   recall@k against the exact top-k, memory of each index.
The client and the server share the machine's cores; the figures include that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SERVE_CODE = "import sys; from unime.cli import main; sys.exit(main(sys.argv[1:]))"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, extra: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SERVE_CODE, "--log-level", "WARNING", "serve", "--model", model,
                             "--model-name", "tiny", "--host", "127.0.0.1", "--port", str(port), "--no-auth",
                             "--device", "cpu", *extra], stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while time.time() - t0 < 300:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server not ready")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class RawClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: the load generator shares the machine
    with the server, and a full client library costs several ms of CPU per request at 32+ connections."""

    def __init__(self, base: str):
        host, port = base.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.reader = self.writer = None

    async def post_json(self, path: str, obj) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        body = json.dumps(obj).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(int(x.split(":", 1)[1]) for x in lines if x.lower().startswith("content-length:"))
        return status, await self.reader.readexactly(length)

    async def close(self):
        if self.writer is not None:
            self.writer.close()


async def _load(base: str, clients: int, seconds: float | None, max_requests: int | None = None,
                on_count=None) -> dict:
    lat: list[float] = []
    errors = 0
    sent = 0
    stop_at = time.perf_counter() + seconds if seconds else None

    async def worker(w: int):
        nonlocal errors, sent
        client = RawClient(base)
        i = 0
        try:
            while True:
                if stop_at is not None and time.perf_counter() >= stop_at:
                    return
                if max_requests is not None and sent >= max_requests:
                    return
                sent += 1
                n = sent
                t = time.perf_counter()
                try:
                    status, _ = await client.post_json("/v1/embeddings",
                                                       {"model": "tiny", "input": f"client {w} request {i}"})
                    if status != 200:
                        errors += 1
                except (OSError, asyncio.IncompleteReadError, ValueError, StopIteration):
                    errors += 1
                    await client.close()
                    client = RawClient(base)
                lat.append(time.perf_counter() - t)
                i += 1
                if on_count is not None:
                    on_count(n)
        finally:
            await client.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(clients)))
    wall = time.perf_counter() - t0
    a = np.array(lat) * 1000
    return {"clients": clients, "requests": len(lat), "errors": errors, "seconds": round(wall, 2),
            "rps": round(len(lat) / wall, 2), "p50_ms": round(float(np.percentile(a, 50)), 1),
            "p95_ms": round(float(np.percentile(a, 95)), 1), "p99_ms": round(float(np.percentile(a, 99)), 1)}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_load(model: str, args, tmp: Path) -> dict:
    settings = {"batching": ["--max-batch-size", "32", "--max-wait-ms", str(args.max_wait_ms)],
                "batch_size_1": ["--max-batch-size", "1", "--max-wait-ms", "0"]}
    out: dict = {}
    for name, extra in settings.items():
        proc, base = start_server(model, extra + ["--threads", "1"], tmp / f"{name}.log")
        try:
            asyncio.run(_load(base, 4, 3))  # warm-up
            out[name] = []
            for c in args.clients:
                r = asyncio.run(_load(base, c, args.seconds))
                out[name].append(r)
                print(f"[load] {name:>12} clients {c:>3}: {r['rps']:>8.1f} req/s  p50 {r['p50_ms']:>7.1f} ms  "
                      f"p95 {r['p95_ms']:>7.1f}  p99 {r['p99_ms']:>7.1f}  errors {r['errors']}  ({r['requests']} requests)",
                      flush=True)
            if name == "batching" and args.memory_requests:
                marks = {}

                def mark(n):
                    if n in (1000, args.memory_requests):
                        marks[n] = rss_mb(proc.pid)

                r = asyncio.run(_load(base, 8, None, max_requests=args.memory_requests, on_count=mark))
                out["memory"] = {"requests": r["requests"], "errors": r["errors"], "rss_mb_after_1000": marks.get(1000),
                                 "rss_mb_after_last": rss_mb(proc.pid)}
                m = out["memory"]
                m["change_pct"] = round(100 * (m["rss_mb_after_last"] - m["rss_mb_after_1000"]) / m["rss_mb_after_1000"], 2)
                print(f"[memory] {r['requests']} requests ({r['errors']} errors): RSS {m['rss_mb_after_1000']:.1f} MB "
                      f"after 1,000, {m['rss_mb_after_last']:.1f} MB after the last ({m['change_pct']:+.2f} %)", flush=True)
        finally:
            stop_server(proc)
    for b, s in zip(out["batching"], out["batch_size_1"]):
        print(f"[load] clients {b['clients']:>3}: dynamic batching / batch size 1 = {b['rps'] / max(s['rps'], 1e-9):.2f}x req/s")
    return out


def bench_ray(model: str, args, tmp: Path) -> dict:
    out = {}
    for replicas in (1, 2):
        proc, base = start_server(model, ["--ray", "--replicas", str(replicas), "--max-batch-size", "32",
                                          "--threads", "1"], tmp / f"ray{replicas}.log")
        try:
            asyncio.run(_load(base, 4, 3))
            r = asyncio.run(_load(base, args.ray_clients, args.seconds))
            out[f"replicas_{replicas}"] = r
            print(f"[ray] {replicas} replica(s), {args.ray_clients} clients: {r['rps']:.1f} req/s  p50 {r['p50_ms']:.1f} ms "
                  f"p99 {r['p99_ms']:.1f} ms  errors {r['errors']}", flush=True)
        finally:
            stop_server(proc)
    if len(out) == 2:
        print(f"[ray] 2 replicas / 1 replica = {out['replicas_2']['rps'] / max(out['replicas_1']['rps'], 1e-9):.2f}x req/s")
    return out


def clustered(rng, n: int, centers: np.ndarray, spread: float) -> np.ndarray:
    out = np.empty((n, centers.shape[1]), dtype=np.float32)
    for s in range(0, n, 50_000):
        m = min(50_000, n - s)
        block = centers[rng.integers(0, len(centers), m)] + spread * rng.standard_normal((m, centers.shape[1]),
                                                                                          dtype=np.float32)
        out[s:s + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def bench_search(args) -> dict:
    import faiss

    from unime.index.ann import IndexConfig, build_index, index_memory_bytes

    rng = np.random.default_rng(0)
    d = args.search_dim
    centers = rng.standard_normal((args.search_clusters, d), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    pool = clustered(rng, args.search_pool, centers, args.search_spread)
    queries = clustered(rng, args.search_queries, centers, args.search_spread)
    k = args.search_k
    print(f"[search] pool {len(pool):,} x {d} ({pool.nbytes / 1e9:.2f} GB), {len(queries):,} queries, top-{k}, "
          f"FAISS threads {faiss.omp_get_max_threads()}", flush=True)
    results: dict = {}
    exact_ids = None
    configs = [("flat", IndexConfig(kind="flat")),
               ("ivf", IndexConfig(kind="ivf", nlist=args.ivf_nlist)),
               ("hnsw", IndexConfig(kind="hnsw", hnsw_m=args.hnsw_m, ef_construction=args.hnsw_ef_construction))]
    for name, cfg in configs:
        if name not in args.search_kinds:
            continue
        t0 = time.perf_counter()
        if name == "ivf":  # train on a sample (as one does at scale), then add everything
            nlist = cfg.nlist or int(4 * np.sqrt(len(pool)))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(pool[rng.choice(len(pool), size=min(len(pool), 64 * nlist), replace=False)])
            index.add(pool)
        else:
            index = build_index(pool, cfg)
        build = time.perf_counter() - t0
        memory = round(index_memory_bytes(index) / 1e6, 1)
        # one built index, searched at each breadth (IVF lists probed / HNSW efSearch)
        breadths = {"flat": [None], "ivf": args.ivf_nprobe, "hnsw": args.hnsw_ef}[name]
        for b in breadths:
            label = name if b is None else f"{name}({'nprobe' if name == 'ivf' else 'ef'}={b})"
            if name == "ivf":
                index.nprobe = b
            elif name == "hnsw":
                index.hnsw.efSearch = max(b, k)
            t0 = time.perf_counter()
            _, ids = index.search(queries, k)
            secs = time.perf_counter() - t0
            if name == "flat":
                exact_ids = ids
            recall = float(np.mean([len(set(a.tolist()) & set(e.tolist())) / k for a, e in zip(ids, exact_ids)])) \
                if exact_ids is not None else float("nan")
            sp = 1.0 if name == "flat" else (results["flat"]["search_s"] / secs if "flat" in results else float("nan"))
            results[label] = {"build_s": round(build, 2), "search_s": round(secs, 3),
                              "per_query_ms": round(1000 * secs / len(queries), 4), "recall_at_k": recall,
                              "memory_mb": memory, "speedup": round(sp, 2)}
            print(f"[search] {label:>14}: build {build:7.1f} s, search {secs:8.3f} s "
                  f"({results[label]['per_query_ms']:.3f} ms/query), speed-up vs exact {sp:6.1f}x, "
                  f"recall@{k} {recall:.4f}, index memory {memory:.0f} MB", flush=True)
        del index
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="embedder (default: a tiny model built in a temporary folder)")
    ap.add_argument("--seconds", type=float, default=30.0, help="per client count and setting")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--memory-requests", type=int, default=20_000, help="0 = skip the memory part")
    ap.add_argument("--ray", action="store_true", help="also 1 vs 2 Ray Serve replicas")
    ap.add_argument("--ray-clients", type=int, default=32)
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--search-pool", type=int, default=1_000_000)
    ap.add_argument("--search-dim", type=int, default=1536)
    ap.add_argument("--search-queries", type=int, default=10_000)
    ap.add_argument("--search-k", type=int, default=50)
    ap.add_argument("--search-clusters", type=int, default=2000)
    ap.add_argument("--search-spread", type=float, default=0.02, help="per-coordinate noise around a cluster centre")
    ap.add_argument("--search-kinds", nargs="+", default=["flat", "ivf", "hnsw"])
    ap.add_argument("--ivf-nlist", type=int, default=0, help="0 = 4*sqrt(pool)")
    ap.add_argument("--ivf-nprobe", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--hnsw-ef", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--hnsw-ef-construction", type=int, default=40)
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    figures: dict = {"machine": {"cpus": os.cpu_count()}}
    with tempfile.TemporaryDirectory(prefix="unime_serve_bench_") as tmp:
        tmp = Path(tmp)
        model = args.model
        if not args.skip_load and model is None:
            from unime.models.tiny import build_tiny

            model = str(build_tiny("qwen2_vl", tmp / "tiny"))
        if not args.skip_load:
            figures["load"] = bench_load(model, args, tmp)
            if args.ray:
                figures["ray"] = bench_ray(model, args, tmp)
    if not args.skip_search:
        figures["search"] = bench_search(args)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
