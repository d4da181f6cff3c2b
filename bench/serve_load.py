"""Benchmark of `unime serve` (loopback only, bounded in count and time) and of exact vs approximate search.

    python bench/serve_load.py                                 # all parts, defaults below
    python bench/serve_load.py --seconds 30 --clients 1 8 32 128 --memory-requests 20000 --ray
    python bench/serve_load.py --skip-load --search-pool 1000000 --search-queries 10000
    python bench/serve_load.py --skip-direct --skip-search --rerank --model M --reranker R --seconds 60

Parts:
1. load: one `unime serve` process per setting on a free 127.0.0.1 port with a tiny model
   (`unime models build-tiny`, default family), driven by N concurrent clients, each (a minimal keep-alive HTTP/1.1
   client on asyncio streams) sending single-text `POST /v1/embeddings` requests back to back for `--seconds`:
   requests/s, p50/p95/p99 latency, errors. Dynamic batching (`--max-batch-size 32`) and batch size 1 side by side.
2. memory: `--memory-requests` requests (at 8 clients) to the batching server: resident memory
   (VmRSS) after the first 1,000 and after the last.
3. ray (`--ray`): the same load against `unime serve --ray --replicas 1` and `--replicas 2`.
4. search: a pool of generated 1536-d unit vectors (clustered: a mixture of `--search-clusters`
   Gaussian clusters, as embeddings are, rather than uniform noise), `--search-queries` queries drawn
   the same way; exact (IndexFlatIP) vs IVF and HNSW: build time, search time, speed-up,
   recall@k against the exact top-k, memory of each index.
5. rerank (`--rerank`): listwise `POST /v1/rerank` requests at `--rerank-clients`, the server picking concurrent
   requests in shared generation batches (its default) and one at a time (`--rerank-batch 1`).
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


def embeddings_request(w: int, i: int, inputs: int = 1) -> tuple[str, dict]:
    """Client `w`'s request `i`: `inputs` distinct texts to embed."""
    text = f"client {w} request {i}"
    return "/v1/embeddings", {"model": "tiny", "input": text if inputs == 1 else [f"{text} text {j}"
                                                                                  for j in range(inputs)]}


def rerank_request(w: int, i: int, docs: int = 5) -> tuple[str, dict]:
    """Client `w`'s request `i`: a listwise pick among `docs` distinct texts."""
    return "/v1/rerank", {"query": f"client {w} request {i}: a red square", "mode": "listwise",
                          "documents": [f"a {c} shape number {i}" for c in
                                        ("red", "blue", "green", "yellow", "white", "black", "grey", "pink")[:docs]]}


async def _load(base: str, clients: int, seconds: float | None, max_requests: int | None = None,
                on_count=None, inputs: int = 1, request=None) -> dict:
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
                    path, body = request(w, i) if request else embeddings_request(w, i, inputs)
                    status, _ = await client.post_json(path, body)
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
                      f"p95 {r['p95_ms']:>7.1f}  p99 {r['p99_ms']:>7.1f}  errors {r['errors']}  "
                      f"({r['requests']} requests)", flush=True)
            if name == "batching" and args.memory_requests:
                marks = {}

                def mark(n):
                    if n in (1000, args.memory_requests):
                        marks[n] = rss_mb(proc.pid)

                r = asyncio.run(_load(base, 8, None, max_requests=args.memory_requests, on_count=mark))
                out["memory"] = {"requests": r["requests"], "errors": r["errors"], "rss_mb_after_1000": marks.get(1000),
                                 "rss_mb_after_last": rss_mb(proc.pid)}
                m = out["memory"]
                m["change_pct"] = round(100 * (m["rss_mb_after_last"] - m["rss_mb_after_1000"])
                                        / m["rss_mb_after_1000"], 2)
                print(f"[memory] {r['requests']} requests ({r['errors']} errors): RSS {m['rss_mb_after_1000']:.1f} MB "
                      f"after 1,000, {m['rss_mb_after_last']:.1f} MB after the last ({m['change_pct']:+.2f} %)",
                      flush=True)
        finally:
            stop_server(proc)
    for b, s in zip(out["batching"], out["batch_size_1"]):
        print(f"[load] clients {b['clients']:>3}: dynamic batching / batch size 1 = "
              f"{b['rps'] / max(s['rps'], 1e-9):.2f}x req/s")
    return out


def bench_rerank(model: str, reranker: str, args, tmp: Path) -> dict:
    """Listwise `POST /v1/rerank` (a pick among `--rerank-docs` texts) at each `--rerank-clients` count: concurrent
    requests picked in shared generation batches (`--rerank-batch`, default the reranker's 8) against one pick at
    a time (`--rerank-batch 1`), one server thread each."""
    settings = {"shared batches": [], "one at a time": ["--rerank-batch", "1"]}
    out: dict = {}
    for name, extra in settings.items():
        proc, base = start_server(model, ["--reranker", reranker, "--threads", "1", "--max-wait-ms",
                                          str(args.max_wait_ms), *extra], tmp / f"rerank{len(out)}.log")
        try:
            def request(w, i):
                return rerank_request(w, i, args.rerank_docs)

            asyncio.run(_load(base, 2, 3, request=request))  # warm-up
            out[name] = []
            for c in args.rerank_clients:
                r = asyncio.run(_load(base, c, args.seconds, request=request))
                out[name].append(r)
                print(f"[rerank] {name:>14} clients {c:>3}: {r['rps']:>7.2f} req/s  p50 {r['p50_ms']:>7.1f} ms  "
                      f"p95 {r['p95_ms']:>7.1f}  errors {r['errors']}  ({r['requests']} requests)", flush=True)
        finally:
            stop_server(proc)
    for b, s in zip(out["shared batches"], out["one at a time"]):
        print(f"[rerank] clients {b['clients']:>3}: shared batches / one at a time = "
              f"{b['rps'] / max(s['rps'], 1e-9):.2f}x req/s", flush=True)
    return out


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_table() -> dict[int, tuple[int, int, float, str]]:
    """pid -> (ppid, session id, CPU seconds so far, command line) of every process we can read."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        ppid, sid = int(fields[1]), int(fields[3])
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
        out[int(d.name)] = (ppid, sid, cpu, cmd or stat[stat.index("(") + 1:stat.rindex(")")])
    return out


def _role(cmd: str) -> str:
    for key, role in (("ServeReplica", "replica"), ("ProxyActor", "ray proxy"), ("ServeController", "ray controller"),
                      ("raylet", "ray raylet"), ("gcs_server", "ray gcs"), ("dashboard", "ray dashboard/agents"),
                      ("agent", "ray dashboard/agents"), ("log_monitor", "ray other"), ("monitor.py", "ray other"),
                      ("ray::", "ray other"), ("default_worker", "ray other")):
        if key in cmd:
            return role
    return "server process"


def server_cpu(root: int) -> dict[int, tuple[str, float]]:
    """CPU seconds so far of the server process and everything it started (its session and descendants)."""
    table = _proc_table()
    mine = {root} | {pid for pid, (_, sid, _, _) in table.items() if sid == root}
    grew = True
    while grew:
        new = {pid for pid, (ppid, _, _, _) in table.items() if ppid in mine} - mine
        mine |= new
        grew = bool(new)
    return {pid: (_role(table[pid][3]), table[pid][2]) for pid in mine if pid in table}


def measured_load(base: str, clients: int, seconds: float, server_pid: int, inputs: int = 1) -> dict:
    """`_load`, plus where the machine's CPU went meanwhile: cores used by the client (this process) and by
    each role of the server side (summed over processes), and the machine's total busy cores."""
    def busy():
        f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        v = [int(x) for x in f]
        return (sum(v) - v[3] - v[4]) / CLK_TCK  # all but idle and iowait

    before, c0, b0 = server_cpu(server_pid), time.process_time(), busy()
    r = asyncio.run(_load(base, clients, seconds, inputs=inputs))
    r["inputs_per_request"], r["inputs_per_s"] = inputs, round(r["rps"] * inputs, 1)
    after, c1, b1 = server_cpu(server_pid), time.process_time(), busy()
    wall = r["seconds"]
    roles: dict[str, float] = {}
    for pid, (role, cpu) in after.items():
        roles[role] = roles.get(role, 0.0) + cpu - before.get(pid, (role, 0.0))[1]
    ours = (c1 - c0 + sum(roles.values())) / wall
    r["cores"] = {"client": round((c1 - c0) / wall, 2),
                  **{k: round(v / wall, 2) for k, v in sorted(roles.items(), key=lambda kv: -kv[1])},
                  "other processes on the machine": round((b1 - b0) / wall - ours, 2),
                  "machine (all processes)": round((b1 - b0) / wall, 2)}
    n = max(r["requests"], 1)
    r["cpu_ms_per_request"] = {k: round(1000 * v / n, 2) for k, v in [("client", c1 - c0)] + list(roles.items())}
    r["replica_processes"] = sum(1 for role, _ in after.values() if role == "replica")
    return r


def _cores_line(r: dict) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in r["cores"].items())


def ray_ceiling(one: dict, cores: int) -> float | None:
    """2 replicas / 1 replica that the CPU cost per request measured with 1 replica allows on an otherwise idle
    machine of `cores` cores: a replica runs its model on one thread (floor of its 1 CPU) and cannot use more
    than ~1 core; every request also costs the client, Ray's proxy and daemons CPU. N replicas serve at most
    min(N / replica_ms, cores / total_ms) requests per ms."""
    ms = one["cpu_ms_per_request"]
    replica = ms.get("replica")
    total = sum(ms.values())
    if not replica or not total:
        return None
    return min(2 / replica, cores / total) / min(1 / replica, cores / total)


def bench_ray(model: str, args, tmp: Path) -> dict:
    """Side by side in one run, same clients and seconds: the plain uvicorn server (no Ray), then Ray Serve
    with 1 and 2 replicas; for each, the CPU cores every part used (client, proxy, replicas, Ray daemons,
    other processes on the machine) and the CPU milliseconds each part spent per request. `--ray-inputs`:
    texts per request (1 = the single-text load; more amortise the proxy's per-request cost)."""
    out: dict = {}
    threads = ["--threads", str(args.ray_threads)] if args.ray_threads else []
    settings = [("uvicorn (no Ray)", ["--max-batch-size", "32", *threads])]
    settings += [(f"ray {n} replica(s)", ["--ray", "--replicas", str(n), "--max-batch-size", "32",
                                          "--ray-cpus-per-replica", str(args.ray_cpus_per_replica), *threads])
                 for n in (1, 2)]
    for name, extra in settings:
        proc, base = start_server(model, extra, tmp / f"{name.split()[0]}{len(out)}.log")
        try:
            asyncio.run(_load(base, 4, 3))
            for inputs in args.ray_inputs:
                r = measured_load(base, args.ray_clients, args.seconds, proc.pid, inputs=inputs)
                out[f"{name}, {inputs} input(s)/request"] = r
                print(f"[ray] {name:>18}, {args.ray_clients} clients x {inputs:>2} input(s)/request: {r['rps']:7.1f} "
                      f"req/s ({r['inputs_per_s']:.0f} inputs/s)  p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  "
                      f"errors {r['errors']}  replica processes {r['replica_processes']}", flush=True)
                print(f"[ray] {'':>18}  CPU cores used: {_cores_line(r)}", flush=True)
                print(f"[ray] {'':>18}  CPU ms per request: "
                      + ", ".join(f"{k} {v:.2f}" for k, v in r["cpu_ms_per_request"].items() if v >= 0.01), flush=True)
        finally:
            stop_server(proc)
    for inputs in args.ray_inputs:
        one = out.get(f"ray 1 replica(s), {inputs} input(s)/request")
        two = out.get(f"ray 2 replica(s), {inputs} input(s)/request")
        direct = out.get(f"uvicorn (no Ray), {inputs} input(s)/request")
        if one and two:
            ceiling = ray_ceiling(one, os.cpu_count() or 1)
            out[f"ratio, {inputs} input(s)/request"] = {"two_over_one": round(two["rps"] / max(one["rps"], 1e-9), 3),
                                                       "idle_machine_ceiling": ceiling and round(ceiling, 3)}
            print(f"[ray] {inputs} input(s)/request: 2 replicas / 1 replica = "
                  f"{two['rps'] / max(one['rps'], 1e-9):.2f}x req/s (uvicorn without Ray: {direct['rps']:.1f} req/s); "
                  f"ceiling estimated from the CPU ms per request measured with 1 replica, on an idle "
                  f"{os.cpu_count()}-core machine: {ceiling:.2f}x", flush=True)
    return out


def clustered(rng, n: int, centers: np.ndarray, spread: float, out: np.ndarray | None = None) -> np.ndarray:
    """`n` unit vectors around random cluster centres, written block by block into `out` (any dtype, e.g. a
    float16 memory-mapped file) so that the float32 pool never exists in memory at once."""
    out = np.empty((n, centers.shape[1]), dtype=np.float32) if out is None else out
    for s in range(0, n, 50_000):
        m = min(50_000, n - s)
        block = centers[rng.integers(0, len(centers), m)] + spread * rng.standard_normal((m, centers.shape[1]),
                                                                                          dtype=np.float32)
        out[s:s + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def rss_now_mb() -> float:
    return rss_mb(os.getpid())


def bench_search(args, tmp: Path) -> dict:
    """Exact vs IVF vs HNSW through `unime.index.ann` (the module `unime index build` and `unime mine` use)."""
    import faiss

    from unime.index.ann import IndexConfig, build_index, index_memory_bytes

    rng = np.random.default_rng(0)
    d, k = args.search_dim, args.search_k
    centers = rng.standard_normal((args.search_clusters, d), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    t0 = time.perf_counter()
    # the pool is stored as float16 in a memory-mapped .npy (as `unime index build --vector-dtype float16`
    # stores vectors): 1M x 1536 is 3.1 GB on disk instead of 6.1 GB of float32 in memory
    pool = np.lib.format.open_memmap(tmp / "pool.npy", mode="w+", dtype=np.float16, shape=(args.search_pool, d))
    clustered(rng, args.search_pool, centers, args.search_spread, out=pool)
    pool.flush()
    pool = np.load(tmp / "pool.npy", mmap_mode="r")
    queries = clustered(rng, args.search_queries, centers, args.search_spread)
    nq, ne = len(queries), min(args.exact_queries or len(queries), len(queries))
    print(f"[search] pool {len(pool):,} x {d} float16 memory-mapped ({pool.nbytes / 1e9:.2f} GB, generated in "
          f"{time.perf_counter() - t0:.0f} s), {nq:,} queries, top-{k}, FAISS threads {faiss.omp_get_max_threads()}",
          flush=True)
    if ne < nq:
        print(f"[search] exact search is timed on the first {ne:,} queries and its time extrapolated x{nq / ne:g} to "
              f"{nq:,} (exact search is linear in the number of queries); recall@{k} of IVF/HNSW is measured against "
              f"the exact top-{k} of those {ne:,} queries; IVF/HNSW are timed on all {nq:,}", flush=True)
    configs = [("flat", IndexConfig(kind="flat")),
               ("ivf", IndexConfig(kind="ivf", nlist=args.ivf_nlist, train_sample=args.ivf_train_sample,
                                   storage=args.ann_storage)),
               ("hnsw", IndexConfig(kind="hnsw", hnsw_m=args.hnsw_m, ef_construction=args.hnsw_ef_construction,
                                    storage=args.ann_storage))]
    results: dict = {"pool": len(pool), "dim": d, "queries": nq, "exact_queries_timed": ne, "k": k}
    exact_ids, exact_s10k, exact_cpu10k = None, None, None
    for name, cfg in configs:
        if name not in args.search_kinds:
            continue
        rss0, t0 = rss_now_mb(), time.perf_counter()
        index = build_index(pool, cfg)
        build = time.perf_counter() - t0
        memory = index_memory_bytes(index) / 1e6
        rss_growth = rss_now_mb() - rss0
        breadths = {"flat": [None], "ivf": args.ivf_nprobe, "hnsw": args.hnsw_ef}[name]
        for b in breadths:
            if name == "ivf":
                index.nprobe = b
                label = f"ivf(nlist={index.nlist},nprobe={b},{cfg.storage})"
            elif name == "hnsw":
                index.hnsw.efSearch = max(b, k)
                label = f"hnsw(M={cfg.hnsw_m},ef={max(b, k)},{cfg.storage})"
            else:
                label = "flat(exact,float32)"
            n_timed = ne if name == "flat" else nq
            t0, c0 = time.perf_counter(), time.process_time()
            _, ids = index.search(queries[:n_timed], k)
            secs, cpu = time.perf_counter() - t0, time.process_time() - c0
            per_query = secs / n_timed
            if name == "flat":
                exact_ids, exact_s10k, exact_cpu10k = ids, per_query * nq, cpu / n_timed * nq
            secs_all = per_query * nq
            recall = float(np.mean([len(set(a.tolist()) & set(e.tolist())) / k
                                    for a, e in zip(ids[:ne], exact_ids)])) if exact_ids is not None else float("nan")
            speedup = exact_s10k / secs_all if exact_s10k else float("nan")
            # CPU seconds (all FAISS threads of this process): the same ratio, unmoved by what else the shared
            # machine runs meanwhile (wall-clock time is, when other processes take the cores)
            cpu_all = cpu / n_timed * nq
            cpu_speedup = exact_cpu10k / cpu_all if exact_cpu10k and cpu_all > 0 else float("nan")
            results[label] = {"kind": name, "config": cfg.to_dict(), "breadth": b, "build_s": round(build, 1),
                              "searched_queries": n_timed, "search_s": round(secs, 2),
                              f"search_s_{nq}": round(secs_all, 2), "per_query_ms": round(1000 * per_query, 3),
                              "recall_at_k": round(recall, 4), "speedup_vs_exact": round(speedup, 1),
                              f"search_cpu_s_{nq}": round(cpu_all, 2), "cpu_speedup_vs_exact": round(cpu_speedup, 1),
                              "index_memory_mb": round(memory, 1), "rss_growth_mb": round(rss_growth, 1)}
            extrap = f" (timed on {n_timed:,}, extrapolated)" if n_timed < nq else ""
            results[label]["load_average_1min"] = round(os.getloadavg()[0], 1)
            print(f"[search] {label:>32}: build {build:7.1f} s, {nq:,} queries {secs_all:8.1f} s{extrap} "
                  f"({1000 * per_query:.3f} ms/query), speed-up vs exact {speedup:6.1f}x (CPU time {cpu_all:.1f} s: "
                  f"{cpu_speedup:.1f}x), recall@{k} {recall:.4f}, "
                  f"index memory {memory:,.0f} MB (process RSS +{rss_growth:,.0f} MB), "
                  f"load average {os.getloadavg()[0]:.1f}", flush=True)
        del index
    best = [(r["speedup_vs_exact"], lbl, r["recall_at_k"], r["cpu_speedup_vs_exact"]) for lbl, r in results.items()
            if isinstance(r, dict) and r.get("kind") != "flat" and r.get("recall_at_k", 0) >= 0.95]
    if best:
        sp, lbl, rc, cpu_sp = max(best)
        print(f"[search] fastest at recall@{k} >= 0.95: {lbl}: {sp:.1f}x faster than exact in wall-clock time, "
              f"{cpu_sp:.1f}x in CPU time (recall@{k} {rc:.4f})", flush=True)
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
    ap.add_argument("--ray-cpus-per-replica", type=float, default=1.0)
    ap.add_argument("--ray-inputs", type=int, nargs="+", default=[1, 16],
                    help="texts per request in the Ray part (each value measured on every server)")
    ap.add_argument("--ray-threads", type=int, default=0,
                    help="--threads for the servers of the Ray part (0 = the server's default)")
    ap.add_argument("--rerank", action="store_true", help="also listwise rerank requests (part 5)")
    ap.add_argument("--reranker", default=None, help="reranker for --rerank (default: the embedder's model)")
    ap.add_argument("--rerank-clients", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rerank-docs", type=int, default=5, choices=range(1, 9), metavar="1..8")
    ap.add_argument("--skip-direct", action="store_true",
                    help="skip part 1-2 (direct load and memory) but still run --ray")
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--search-pool", type=int, default=1_000_000)
    ap.add_argument("--search-dim", type=int, default=1536)
    ap.add_argument("--search-queries", type=int, default=10_000)
    ap.add_argument("--search-k", type=int, default=50)
    ap.add_argument("--search-clusters", type=int, default=2000)
    ap.add_argument("--search-spread", type=float, default=0.02, help="per-coordinate noise around a cluster centre")
    ap.add_argument("--search-kinds", nargs="+", default=["flat", "ivf", "hnsw"])
    ap.add_argument("--exact-queries", type=int, default=1000,
                    help="time exact search on this many queries and extrapolate (0 = all)")
    ap.add_argument("--ann-storage", default="float16", choices=["float32", "float16"],
                    help="vector precision inside the IVF/HNSW indexes")
    ap.add_argument("--ivf-nlist", type=int, default=1024, help="0 = 4*sqrt(pool)")
    ap.add_argument("--ivf-train-sample", type=int, default=65536, help="vectors the IVF lists are trained on")
    ap.add_argument("--ivf-nprobe", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--hnsw-ef", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--hnsw-ef-construction", type=int, default=40)
    ap.add_argument("--search-tmp", default=None, help="folder for the memory-mapped pool (default: the system's temp)")
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
            if not args.skip_direct:
                figures["load"] = bench_load(model, args, tmp)
            if args.ray:
                figures["ray"] = bench_ray(model, args, tmp)
            if args.rerank:
                figures["rerank"] = bench_rerank(model, args.reranker or model, args, tmp)
    if not args.skip_search:
        with tempfile.TemporaryDirectory(prefix="unime_search_bench_", dir=args.search_tmp) as tmp:
            figures["search"] = bench_search(args, Path(tmp))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
