"""`unime serve`: the retrieval service (unime.serve) on uvicorn, or on Ray Serve with --ray."""

from __future__ import annotations

from unime.cli import add_config_option
from unime.cli.dataclass_options import add_options
from unime.cli.dataclass_options import config_from_args as build_config
from unime.errors import UsageError


def register(sub) -> None:
    from unime.serve.config import Limits, RayOptions, ServeConfig

    p = sub.add_parser("serve", help="serve an embedder (+ reranker, + index): OpenAI embeddings, rerank, search, page")
    add_options(p, ServeConfig, groups=("video",))  # inline videos sampled as `unime embed` samples files
    p.add_argument("--api-key-file", default=None, help="file of API keys, one per line, each of at least 16 "
                   "characters (also: env UNIME_API_KEYS, comma-separated)")
    add_options(p, Limits)
    add_options(p, RayOptions)
    add_config_option(p)
    p.set_defaults(func=_serve)


def config_from_args(args):
    from unime.serve.auth import load_api_keys
    from unime.serve.config import Limits, ServeConfig

    return build_config(ServeConfig, args, limits=build_config(Limits, args),
                        api_keys=[] if args.no_auth else load_api_keys(args.api_key_file))


def _serve(args) -> int:
    from dataclasses import asdict

    from unime.serve.config import RayOptions

    config = config_from_args(args)
    try:
        config.check()
    except ValueError as e:
        raise UsageError(str(e), command="serve") from None
    ray = asdict(build_config(RayOptions, args))
    if ray.pop("ray"):
        from unime.serve.runner import replica_placement, run_ray

        try:
            replica_placement(config, num_cpus=ray["num_cpus"], num_gpus=ray["num_gpus"])
        except ValueError as e:
            raise UsageError(str(e), command="serve") from None
        run_ray(config, **ray)
    else:
        from unime.serve.runner import run_uvicorn

        run_uvicorn(config, log_level=args.log_level or "INFO")
    return 0
