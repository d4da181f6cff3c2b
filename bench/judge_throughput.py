"""Judge throughput: per-pair full forwards vs the shared-prefix fast path, and FAISS retrieval time.

    python bench/judge_throughput.py                       # tiny Qwen2-VL judge built on the fly
    python bench/judge_throughput.py --judge PATH --queries 3 --k 50 --faiss-pool 200000

Token mix (what a 2B judge sees): a query of >= 256 image tokens (a 448 px image; the processor's
pixel bound is raised for this run) plus its instruction, with K = 50 candidates that are either
~16-token captions or images (224 px → 64 tokens on Qwen2-VL); the image mix is timed with the judge's
candidate-image feature cache cold (no image seen before) and warm (each pool image already encoded for
an earlier query, as happens in mining where pool images recur). For each mix it prints pairs/second
for (a) one full forward per (query, candidate) prompt and (b) `JudgeScorer.score_candidates` (CPU time
of this process with one torch thread, the two paths alternated, so that other jobs on a shared machine
distort it little), their measured ratio, the theoretical LM-token ratio sum(P + C_i) / (P + sum C_i), and the largest
score difference between the two paths.

FAISS: exact inner-product search (IndexFlatIP) of `--faiss-queries` queries against a pool of random
unit vectors of dimension 1536 (Qwen2-VL-2B's hidden size). A flat search is linear in the pool, so
when `--faiss-pool` is below 1M the 1M figure is extrapolated linearly, and the output says so.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np


def _caption(rng, words, n_tokens, tokenizer):
    text = ""
    while True:
        nxt = (text + " " + rng.choice(words)).strip()
        if len(tokenizer.encode(nxt, add_special_tokens=False)) > n_tokens:
            return text or nxt
        text = nxt


def _image(rng, size):
    from PIL import Image

    base = rng.integers(0, 255, 3)
    arr = np.clip(base + rng.integers(-40, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def bench_judge(judge, queries, candidate_sets, label: str, rounds: int = 2, warm_cache: bool = False) -> dict:
    """Time both paths over every (query, candidates) set, alternating them `rounds` times (so that a
    load change on a shared machine hits both alike); CPU time of this process is the clock."""
    from unime.models.judge import JudgeStats

    # warm-up (allocator, kernels)
    judge.margin_pair(queries[0], candidate_sets[0][0])
    judge.margin_candidates(queries[0], candidate_sets[0][:2])

    t_ref, t_fast, n_pairs, max_diff, ratios = 0.0, 0.0, 0, 0.0, []
    sig = lambda m: 1 / (1 + np.exp(-m))  # noqa: E731
    for _ in range(rounds):
        for q, cands in zip(queries, candidate_sets):
            t0 = time.process_time()
            ref = np.array([judge.margin_pair(q, c) for c in cands])
            t_ref += time.process_time() - t0
            judge.clear_image_cache()  # cold: no candidate image seen before (the conservative case)
            if warm_cache:  # warm: every candidate image already encoded for an earlier query
                judge.margin_candidates(queries[0] if q is not queries[0] else queries[-1], cands)
            judge.stats = JudgeStats()
            t1 = time.process_time()
            fast = judge.margin_candidates(q, cands)
            t2 = time.process_time()
            t_fast += t2 - t1
            n_pairs += len(cands)
            max_diff = max(max_diff, float(np.abs(sig(ref) - sig(fast)).max()))
            st = judge.stats
            # theoretical LM-token ratio: sum(P + C_i) / (P + sum C_i)
            prefix_tokens, total_cont = st.prefix_tokens, st.continuation_tokens
            ratios.append((len(cands) * prefix_tokens + total_cont) / (prefix_tokens + total_cont))
            mean_cont = total_cont / len(cands)
    ref_pps, fast_pps = n_pairs / t_ref, n_pairs / t_fast
    theo = float(np.mean(ratios))
    out = {"mix": label, "pairs": n_pairs, "prefix_tokens": prefix_tokens, "mean_continuation_tokens": mean_cont,
           "reference_pairs_per_s": ref_pps, "fast_pairs_per_s": fast_pps, "measured_ratio": fast_pps / ref_pps,
           "theoretical_token_ratio": theo, "fraction_of_theoretical": (fast_pps / ref_pps) / theo,
           "max_score_diff": max_diff}
    print(f"[{label}] prefix {prefix_tokens} tokens, continuation {mean_cont:.1f} tokens/candidate, "
          f"{n_pairs} pairs timed")
    print(f"  per-pair full forward : {ref_pps:8.2f} pairs/s (CPU time)")
    print(f"  fast (shared prefix)  : {fast_pps:8.2f} pairs/s (CPU time)")
    print(f"  measured ratio {out['measured_ratio']:.2f}x  vs theoretical token ratio {theo:.2f}x  "
          f"→ {100 * out['fraction_of_theoretical']:.0f}% of theoretical; max |score diff| {max_diff:.1e}")
    return out


def bench_faiss(pool_size: int, dim: int, n_queries: int, k: int, seed: int = 0, threads: int | None = None) -> dict:
    import faiss

    faiss.omp_set_num_threads(threads or os.cpu_count() or 1)

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    pool = np.empty((pool_size, dim), dtype=np.float32)
    step = 50_000
    for s in range(0, pool_size, step):
        block = rng.standard_normal((min(step, pool_size - s), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        pool[s:s + len(block)] = block
    q = rng.standard_normal((n_queries, dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    t1 = time.perf_counter()
    index = faiss.IndexFlatIP(dim)
    index.add(pool)
    t2 = time.perf_counter()
    index.search(q[:8], k)  # warm-up
    t3 = time.perf_counter()
    index.search(q, k)
    t4 = time.perf_counter()
    per_query = (t4 - t3) / n_queries
    scale = 1_000_000 / pool_size
    out = {"pool": pool_size, "dim": dim, "queries": n_queries, "k": k, "threads": faiss.omp_get_max_threads(),
           "generate_s": t1 - t0, "add_s": t2 - t1, "search_s": t4 - t3, "per_query_ms": 1000 * per_query,
           "per_query_ms_at_1M": 1000 * per_query * scale, "extrapolated": pool_size != 1_000_000,
           "pool_gb": pool.nbytes / 1e9}
    note = "" if pool_size == 1_000_000 else f" (measured at {pool_size:,}; 1M extrapolated linearly)"
    print(f"[faiss flat IP] pool {pool_size:,} x {dim} ({out['pool_gb']:.2f} GB), {n_queries} queries, top-{k}, "
          f"{out['threads']} threads: add {out['add_s']:.2f} s, search {out['search_s']:.2f} s = "
          f"{out['per_query_ms']:.1f} ms/query")
    print(f"  at 1M x {dim}: {out['per_query_ms_at_1M']:.1f} ms/query{note}; a 1M-query training set would take "
          f"~{out['per_query_ms_at_1M'] * 1e6 / 1000 / 3600:.1f} h on this machine")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--judge", default=None, help="judge checkpoint (default: build a tiny Qwen2-VL)")
    ap.add_argument("--family", default="qwen2_vl", help="family of the tiny judge built when --judge is not given")
    ap.add_argument("--queries", type=int, default=2)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--query-px", type=int, default=448)
    ap.add_argument("--candidate-px", type=int, default=224)
    ap.add_argument("--caption-tokens", type=int, default=16)
    ap.add_argument("--chunk-size", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time is a fair clock)")
    ap.add_argument("--rounds", type=int, default=2, help="alternations of the two paths per query")
    ap.add_argument("--faiss-pool", type=int, default=200_000)
    ap.add_argument("--faiss-dim", type=int, default=1536)
    ap.add_argument("--faiss-queries", type=int, default=256)
    ap.add_argument("--faiss-threads", type=int, default=None, help="FAISS OpenMP threads (default: all cores)")
    ap.add_argument("--skip-faiss", action="store_true")
    ap.add_argument("--skip-judge", action="store_true")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from unime.data import vocab
    from unime.data.items import Item
    from unime.models.judge import JudgeScorer

    results = {}
    if not args.skip_judge:
        path = args.judge
        if path is None:
            from unime.models.tiny import build_tiny

            path = str(build_tiny(args.family, os.path.join(tempfile.mkdtemp(prefix="unime-bench-"), "judge")))
        judge = JudgeScorer.from_pretrained(path, device="cpu", dtype="fp32", chunk_size=args.chunk_size)
        ip = judge.processor.image_processor
        patch = ip.patch_size * ip.merge_size
        # raise the pixel bound so that the query image keeps its size (>= 256 merged tokens at 448 px)
        longest = max(args.query_px, args.candidate_px) ** 2
        ip.size = {"shortest_edge": ip.size["shortest_edge"], "longest_edge": longest}
        n_query_tokens = (args.query_px // patch) ** 2
        print(f"judge {path} ({judge.model.config.model_type}), torch threads {torch.get_num_threads()}; "
              f"query image {args.query_px}px → {n_query_tokens} image tokens, K = {args.k}")
        rng = np.random.default_rng(0)
        words = list(vocab.SHAPES) + list(vocab.COLOURS) + list(vocab.SIZES) + list(vocab.POSITIONS)
        queries = [Item(text="<|image_1|>\nRepresent the given image with the following question: which objects "
                              "are on the left of the large shape, and what colour are they?",
                        images=(_image(rng, args.query_px),)) for _ in range(args.queries)]
        text_sets = [[Item(text=_caption(rng, words, args.caption_tokens, judge.tokenizer)) for _ in range(args.k)]
                     for _ in queries]
        image_sets = [[Item(text="<|image_1|>\nRepresent the given image.", images=(_image(rng, args.candidate_px),))
                       for _ in range(args.k)] for _ in queries]
        results["text"] = bench_judge(judge, queries, text_sets, "text candidates", args.rounds)
        results["image"] = bench_judge(judge, queries, image_sets, f"image candidates ({args.candidate_px}px)",
                                       args.rounds)
        results["image_warm"] = bench_judge(judge, queries, image_sets,
                                            f"image candidates ({args.candidate_px}px), image features cached",
                                            args.rounds, warm_cache=True)
    if not args.skip_faiss:
        results["faiss"] = bench_faiss(args.faiss_pool, args.faiss_dim, args.faiss_queries, args.k,
                                       threads=args.faiss_threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
