"""`unime mine` (judge-guided hard-negative mining, UniME-V2 stages A–C) and `unime judge` (scoring alone)."""

from __future__ import annotations

import json

from unime.cli import add_config_option
from unime.cli.index import add_ann_options, ann_config
from unime.errors import UsageError


def _add_model_options(p) -> None:
    from unime.cli.video_options import add_video_options
    from unime.cli.video_options import add_image_options

    add_image_options(p)
    add_video_options(p)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    p.add_argument("--dtype", default=None, help="auto, fp32, bf16, fp16 (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--allow-outside-root", action="store_true", help="permit absolute paths and '..' in image paths")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is often fastest on a busy machine)")


def _add_backend_options(p) -> None:
    from unime.mining.backends import BACKENDS

    p.add_argument("--backend", default="local", choices=list(BACKENDS),
                   help="where the judge runs; `oracle` = diagnostic: --judge is a generated world or a labels / "
                        "qrels JSONL file (e.g. `data import`'s train/qrels.jsonl) whose ground truth replaces the "
                        "judge's scores (unlisted pairs: 0)")
    p.add_argument("--ray-workers", type=int, default=2, help="ray: number of judge actors")
    p.add_argument("--ray-address", default=None, help="ray: cluster address (default: start a local cluster)")
    p.add_argument("--ray-gpus-per-worker", type=float, default=0.0)
    p.add_argument("--vllm-logprobs", type=int, default=20, help="vllm: top-K logprobs returned per request")
    p.add_argument("--vllm-missing", default="bound", choices=["bound", "error"],
                   help="vllm: Yes/No missing from the top-K (see unime.mining.backends.vllm)")
    p.add_argument("--vllm-engine-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="vllm: an argument of vllm.LLM (value read as YAML), e.g. tensor_parallel_size=8, "
                        "distributed_executor_backend=ray, gpu_memory_utilization=0.9 (repeatable)")
    p.add_argument("--chunk-size", type=int, default=16, help="candidate continuations per judge forward")
    p.add_argument("--image-cache", type=int, default=1024,
                   help="candidate images whose vision-encoder outputs the judge keeps (0 = off)")


def _backend_options(args) -> dict:
    if args.backend == "ray":
        return {"num_workers": args.ray_workers, "address": args.ray_address,
                "num_gpus_per_worker": args.ray_gpus_per_worker}
    if args.backend == "vllm":
        return {"logprobs": args.vllm_logprobs, "missing": args.vllm_missing,
                "engine_kwargs": vllm_engine_kwargs(args.vllm_engine_arg)}
    return {}


def vllm_engine_kwargs(pairs: list[str]) -> dict:
    """`KEY=VALUE` strings → keyword arguments of `vllm.LLM` (values parsed as YAML: 8 → int, true → bool)."""
    import yaml

    out = {}
    for item in pairs or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--vllm-engine-arg expects KEY=VALUE, got {item!r}", command="mine")
        out[key.strip()] = yaml.safe_load(value)
    return out


def register(sub) -> None:
    from unime.mining.sampling import DEFAULT_BETA

    p = sub.add_parser("mine", help="mine judge-scored hard negatives (retrieval → judge → filter + sample)")
    p.add_argument("--records", required=True, help="training records (.jsonl, .parquet, UniME-V2 .json)")
    p.add_argument("--embedder", required=True, help="embedder checkpoint for the global retrieval")
    p.add_argument("--judge", required=True,
                   help="judge checkpoint (a generative MLLM answering Yes/No); with --backend oracle, the world folder")
    p.add_argument("--out", required=True, help="output folder (resumable: re-run the same command to resume)")
    p.add_argument("--pool", default=None,
                   help="JSONL of candidate items (default: the de-duplicated union of all positives)")
    p.add_argument("--data-root", default=None,
                   help="folder image paths are relative to (default: --world if given, else the records' folder)")
    p.add_argument("--k", type=int, default=50, help="candidates retrieved per query")
    p.add_argument("--beta", type=float, default=DEFAULT_BETA, help="false negative: s(q,c) > s(q,c_t) - beta")
    p.add_argument("--interval", type=int, default=5, help="cyclical sampling interval")
    p.add_argument("--count", type=int, default=10, help="negatives stored per query")
    p.add_argument("--fallback", default="random", choices=["random", "drop"],
                   help="no survivor: draw at random from the K with score 1.0 (paper), or drop the query")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--index", default="flat", choices=["flat", "hnsw", "ivf"], help="FAISS index (flat = exact)")
    add_ann_options(p)
    p.add_argument("--shard-size", type=int, default=64, help="queries per judge shard (unit of resumption)")
    p.add_argument("--embed-batch-size", type=int, default=16)
    p.add_argument("--cache-dir", default=None,
                   help="embedding cache, shared format with `unime eval --cache-dir` (default: OUT/cache/embeddings)")
    p.add_argument("--on-error", default="raise", choices=["raise", "skip"],
                   help="skip bad records (counted and reported) instead of stopping at the first")
    p.add_argument("--audit", action="store_true", help="audit the judge against the demo world (needs --world)")
    p.add_argument("--world", default=None, help="demo world folder (for --audit)")
    p.add_argument("--audit-threshold", type=float, default=1.0,
                   help="audit: relevance at or above which a retrieved candidate is a false negative")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    _add_model_options(p)
    _add_backend_options(p)
    add_config_option(p)
    p.set_defaults(func=_mine)

    j = sub.add_parser("judge", help="score (query, candidate) pairs with a Yes/No judge")
    j.add_argument("--pairs", required=True, help='JSONL of {"id"?, "query": item, "candidate": item}')
    j.add_argument("--judge", required=True, help="judge checkpoint")
    j.add_argument("--out", required=True, help='output JSONL of {"id", "score"}, in input order')
    j.add_argument("--data-root", default=None, help="folder image paths are relative to (default: the pairs' folder)")
    j.add_argument("--on-error", default="raise", choices=["raise", "skip"],
                   help="skip bad pairs and pairs with a bad image (counted and reported; their ids are missing "
                        "from the output) instead of stopping at the first")
    j.add_argument("--label-column", default=None, metavar="KEY",
                   help="the pairs carry a relevance label under KEY (> 0 = relevant): evaluate the judge — AUC, "
                        "accuracy, score spread printed and in OUT.metrics.json, calibration plot OUT.calibration.png")

    _add_model_options(j)
    _add_backend_options(j)
    add_config_option(j)
    j.set_defaults(func=_judge)


def _set_threads(args) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def _mine(args) -> int:
    from unime.mining.pipeline import MineConfig, run_mining

    _set_threads(args)
    ann_config(args, args.index)  # bad index parameters are refused before anything loads
    if args.audit and not args.world:
        raise UsageError("--audit needs --world", command="mine")
    cfg = MineConfig(records=args.records, embedder=args.embedder, judge=args.judge, out=args.out, pool=args.pool,
                     data_root=args.data_root or args.world, k=args.k, beta=args.beta, interval=args.interval,
                     count=args.count, fallback=args.fallback, seed=args.seed, index=args.index, nprobe=args.nprobe,
                     ef_search=args.ef_search, nlist=args.nlist, train_sample=args.train_sample, hnsw_m=args.hnsw_m,
                     ef_construction=args.ef_construction, index_storage=args.index_storage,
                     shard_size=args.shard_size, backend=args.backend,
                     backend_options=_backend_options(args), device=args.device, dtype=args.dtype,
                     embed_batch_size=args.embed_batch_size, judge_chunk_size=args.chunk_size,
                     judge_image_cache=args.image_cache,
                     cache_dir=args.cache_dir, on_error=args.on_error, allow_outside_root=args.allow_outside_root,
                     audit=args.audit, world=args.world, audit_threshold=args.audit_threshold,
                     show_progress=args.progress, min_pixels=args.min_pixels, max_pixels=args.max_pixels,
                     image_size=args.image_size, video_frames=args.video_frames, video_fps=args.video_fps,
                     video_max_frames=args.video_max_frames, video_max_pixels=args.video_max_pixels,
                     overwrite=bool(getattr(args, "overwrite", False)))
    result = run_mining(cfg)
    s = result.stats
    if result.finished_before:
        print(f"{result.out}: finished earlier with the same options and inputs; nothing to do "
              f"(pass --overwrite to redo it)")
    print(f"{result.out}: {result.n_mined} of {result.n_records} records mined; report: {result.out / 'report.md'}")
    print(s["sampling_table"])
    from unime.mining.health import format_health

    print("label health: " + format_health(s["label_health"]))
    for w in s["label_health"]["warnings"]:
        print(f"WARNING: {w}")
    if args.audit:
        a = json.loads((result.out / "audit.json").read_text())
        print(f"judge audit: ROC-AUC {a['auc_judge_score']}, at beta={a['beta']}: precision "
              f"{a['at_beta']['precision']}, recall {a['at_beta']['recall']}")
    return 0


def _judge(args) -> int:
    import os

    from unime.cli.video_options import video_options_from_args
    from unime.mining.backends import JudgeSpec
    from unime.mining.pipeline import score_pairs_file
    from unime.models.image_budget import ImageBudget

    _set_threads(args)
    from unime.data.roots import resolve_data_root

    root = resolve_data_root(args.pairs, args.data_root)
    spec = JudgeSpec(path=args.judge, device=args.device, dtype=args.dtype, data_root=root,
                     allow_outside_root=args.allow_outside_root, chunk_size=args.chunk_size,
                     image_cache_size=args.image_cache,
                     image_budget=ImageBudget.from_args(args).as_items(),
                     video_sampling=tuple(sorted((k, v) for k, v in video_options_from_args(args).items()
                                                 if v is not None)))
    from unime.data.skips import SkipReport

    skips = SkipReport()
    res = score_pairs_file(args.pairs, args.out, spec, backend=args.backend, backend_options=_backend_options(args),
                           on_error=args.on_error, skips=skips, label_column=args.label_column)
    skipped = f"; {skips.summary()}" if skips.total else ""
    if not args.label_column:
        print(f"{args.out}: {res} scores{skipped}")
        return 0
    from pathlib import Path

    from unime.mining.judge_check import format_metrics

    stem = Path(args.out).with_suffix("")
    print(f"{args.out}: {res['pairs']} scores{skipped}; {stem}.metrics.json, {stem}.calibration.png")
    print("judge on labelled pairs: " + format_metrics(res))
    for w in res["warnings"]:
        print(f"WARNING: {w}")
    return 0
