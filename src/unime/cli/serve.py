"""`unime serve`: the retrieval service (unime.serve) on uvicorn, or on Ray Serve with --ray."""

from __future__ import annotations

from unime.cli import add_config_option
from unime.errors import UsageError


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve an embedder (+ reranker, + index): OpenAI embeddings, rerank, search, page")
    p.add_argument("--model", required=True, help="embedder checkpoint")
    p.add_argument("--reranker", default=None, help="reranker checkpoint or `unime train reranker` folder")
    p.add_argument("--index", default=None, help="index folder from `unime index build` (enables /v1/search and /)")
    p.add_argument("--model-name", default=None, help="the model name clients send (default: the folder's name)")
    p.add_argument("--reranker-name", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    p.add_argument("--dtype", default="auto", help="auto, fp32, bf16, fp16")
    p.add_argument("--max-batch-size", type=int, default=32, help="dynamic batching: items per encoder batch")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="dynamic batching: wait for more items (ms)")
    p.add_argument("--api-key-file", default=None, help="file of API keys, one per line (also: env UNIME_API_KEYS)")
    p.add_argument("--no-auth", action="store_true", help="no API keys (only when binding to loopback)")
    p.add_argument("--cors-origin", action="append", default=[], help="allow this browser origin (CORS off by default)")
    p.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024)
    p.add_argument("--max-items", type=int, default=256, help="inputs / documents per request")
    p.add_argument("--max-text-chars", type=int, default=8192)
    p.add_argument("--max-image-bytes", type=int, default=8 * 1024 * 1024)
    p.add_argument("--max-image-pixels", type=int, default=16_000_000)
    p.add_argument("--max-top-k", type=int, default=1000)
    p.add_argument("--request-timeout", type=float, default=60.0, help="seconds")
    p.add_argument("--graceful-timeout", type=float, default=30.0, help="seconds SIGTERM waits for in-flight requests")
    p.add_argument("--rerank-data-root", default=None, help="folder of the indexed images (default: the index's)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (with --ray: per replica, default floor(--ray-cpus-per-replica))")
    p.add_argument("--ray", action="store_true", help="run as a Ray Serve deployment")
    p.add_argument("--replicas", type=int, default=1, help="ray: replicas (each loads the models)")
    p.add_argument("--min-replicas", type=int, default=None, help="ray: autoscaling lower bound")
    p.add_argument("--max-replicas", type=int, default=None, help="ray: autoscaling upper bound")
    p.add_argument("--ray-address", default=None, help="ray: cluster address (default: start a local one)")
    p.add_argument("--ray-cpus-per-replica", type=float, default=1.0,
                   help="ray: CPUs reserved per replica (ray_actor_options num_cpus; also its torch threads)")
    p.add_argument("--ray-gpus-per-replica", type=float, default=0.0,
                   help="ray: GPUs reserved per replica (num_gpus; > 0 runs each replica on its own GPU(s), 0 on CPU)")
    add_config_option(p)
    p.set_defaults(func=_serve)


def config_from_args(args):
    from unime.serve.auth import load_api_keys
    from unime.serve.config import Limits, ServeConfig

    limits = Limits(max_body_bytes=args.max_body_bytes, max_items=args.max_items, max_text_chars=args.max_text_chars,
                    max_image_bytes=args.max_image_bytes, max_image_pixels=args.max_image_pixels,
                    max_top_k=args.max_top_k, request_timeout_s=args.request_timeout)
    return ServeConfig(model=args.model, reranker=args.reranker, index=args.index, model_name=args.model_name,
                       reranker_name=args.reranker_name, host=args.host, port=args.port, device=args.device,
                       dtype=args.dtype, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                       api_keys=[] if args.no_auth else load_api_keys(args.api_key_file), no_auth=args.no_auth,
                       cors_origins=list(args.cors_origin), limits=limits, graceful_timeout_s=args.graceful_timeout,
                       rerank_data_root=args.rerank_data_root, threads=args.threads)


def _serve(args) -> int:
    config = config_from_args(args)
    try:
        config.check()
    except ValueError as e:
        raise UsageError(str(e), command="serve") from None
    if args.ray:
        from unime.serve.runner import replica_placement, run_ray

        try:
            replica_placement(config, num_cpus=args.ray_cpus_per_replica, num_gpus=args.ray_gpus_per_replica)
        except ValueError as e:
            raise UsageError(str(e), command="serve") from None
        run_ray(config, replicas=args.replicas, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                address=args.ray_address, num_cpus=args.ray_cpus_per_replica, num_gpus=args.ray_gpus_per_replica)
    else:
        from unime.serve.runner import run_uvicorn

        run_uvicorn(config, log_level=args.log_level)
    return 0
