"""Options of the service: models, batching, limits, auth. One dataclass, filled by `unime serve`."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from unime.data.video import VideoOptions
from unime.errors import OptionError
from unime.models.item_format import ItemFormatOptions
from unime.models.loading import attn_implementation_option, dtype_option
from unime.options import RangeChecked, index_mmap_option, option


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Limits(RangeChecked):
    max_body_bytes: int = option(16 * 1024 * 1024, "bytes of a whole request body (default %(default)s)", at_least=1)
    max_items: int = option(256, "inputs of an embeddings request, documents of a rerank request (default "
                            "%(default)s)", at_least=1)
    max_text_chars: int = option(8192, "characters per text: query, document, input, instruction (default "
                                 "%(default)s)", at_least=1)
    # a text of few characters can be many tokens (an emoji: 4); 2048 holds the 8192 characters of English text
    max_text_tokens: int = option(2048, "tokens per text (an input's, with its instruction), by the tokenizer of the "
                                  "model that reads it (a rerank request's: the reranker's); at most the served "
                                  "models' max_position_embeddings (default %(default)s)", at_least=1)
    max_image_bytes: int = option(8 * 1024 * 1024, "bytes per inline image (its data URI's decoded payload; "
                                  "default %(default)s)", at_least=1)
    # a query clip: its frames are decoded in memory (`unime.serve.inputs.decode_video_uri`), never from a file
    max_video_bytes: int = option(64 * 1024 * 1024, "bytes per inline video (its data URI's decoded payload; "
                                  "the request, its base64 4/3 of that, must also fit --max-body-bytes; default "
                                  "%(default)s)", at_least=1)
    max_image_pixels: int = option(16_000_000, "pixels per image, read from its header before decoding (default "
                                   "%(default)s)", at_least=1)
    max_top_k: int = option(1000, "search results (top_k, rerank_top_k) per request (default %(default)s)",
                            at_least=1)
    request_timeout_s: float = option(60.0, "seconds a request may run; then it is answered 503 and its items still "
                                      "queued are dropped (default %(default)s)", dest="request_timeout", above=0,
                                      finite=True)
    # the served models' image processors' limit (`Engine.max_aspect_ratio`, set by `create_app`): an image beyond
    # it is a 400 naming the input, not a 500 from the processor
    max_aspect_ratio: float | None = option(None, cli=False, at_least=1)


@dataclass
class ServeConfig(ItemFormatOptions, VideoOptions):
    """Options of `unime serve`: each field declares its option (`unime.options`). The `--video-*` options sample
    a request's inline video as `unime embed` samples a video file (unset: the index's sampling, with --index)."""

    model: str = option(help="embedder checkpoint")
    reranker: str | None = option(None, "reranker checkpoint or `unime train reranker` folder")
    index: str | None = option(None, "index folder from `unime index build` (enables /v1/search and /)")
    mmap: bool = index_mmap_option()
    model_name: str | None = option(None, "the model name clients send (default: the folder's name)")
    reranker_name: str | None = option(None, "the reranker name clients send (default: the folder's name)")
    host: str = option("127.0.0.1", "address to listen on (default %(default)s; another than loopback needs API keys)")
    # no 0 (any free port): the server would log port 0 as where it listens, and the port it got would be told nowhere
    port: int = option(8000, "default %(default)s", at_least=1, at_most=65535)
    device: str | None = option(None, "cpu, cuda, cuda:1 ... (default: cuda if present)")
    attn_implementation: str | None = attn_implementation_option()
    dtype: str = dtype_option()
    max_batch_size: int = option(32, "dynamic batching: items per encoder batch", at_least=1)
    max_wait_ms: float = option(5.0, "dynamic batching: wait for more items (ms)", at_least=0, finite=True)
    max_batch_tokens: int = option(16384, "dynamic batching: padded text tokens per encoder call (its longest text's "
                                   "tokens x its items); a batch's items are run by length in calls of at most this",
                                   at_least=1)
    rerank_batch: int | None = option(None, "dynamic batching: listwise rerank requests generated together "
                                           "(default: the reranker's)", at_least=1)
    api_keys: list[str] = option(factory=list, cli=False)  # --api-key-file (`unime.serve.auth.load_api_keys`)
    no_auth: bool = option(False, "no API keys (only when binding to loopback)")
    cors_origins: list[str] = option(help="allow this browser origin (CORS off by default)", factory=list,
                                     dest="cors_origin", action="append", cli_default=[])  # empty = CORS off
    limits: Limits = option(factory=Limits, cli=False)
    graceful_timeout_s: float = option(30.0, "seconds SIGTERM waits for in-flight requests (default %(default)s)",
                                       dest="graceful_timeout", at_least=0, finite=True)
    rerank_data_root: str | None = option(None, "folder of the indexed images (default: the index's)")
    index_check_s: float = option(2.0, "seconds between looks at the --index folder for a newer build, loaded and "
                                  "swapped in when complete (0: never)", dest="index_check_interval", at_least=0,
                                  finite=True)
    # torch CPU threads per worker (each Ray replica too)
    threads: int | None = option(None, "torch CPU threads (with --ray: per replica, default "
                                 "floor(--ray-cpus-per-replica))", at_least=1)

    def check(self) -> None:
        """Refuse unsafe combinations: no keys is only allowed on loopback with `no_auth`. (An option, its own or
        one of its `limits`, not of its type (a bool, a string; a float where an integer is expected) or outside its
        range was refused as the config was made, `RangeChecked`: an OptionError naming it, `max_text_tokens` here,
        `--max-text-tokens` on the command line, whose parser refuses the same values.)"""
        if self.no_auth and not is_loopback(self.host):
            raise ValueError(f"--no-auth is only allowed when binding to loopback (127.0.0.1, ::1, localhost), "
                             f"not {self.host}")
        if not self.no_auth and not self.api_keys:
            raise ValueError("no API keys: give --api-key-file FILE or set UNIME_API_KEYS "
                             "(or --no-auth when binding to loopback)")


@dataclass(kw_only=True)
class RayOptions(RangeChecked):
    """`unime serve --ray`: the Ray Serve deployment (`unime.serve.runner.run_ray`'s keywords but `ray`)."""

    ray: bool = option(False, "run as a Ray Serve deployment")
    replicas: int = option(1, "ray: replicas (each loads the models)", at_least=1)
    min_replicas: int | None = option(None, "ray: autoscaling lower bound", at_least=1)
    max_replicas: int | None = option(None, "ray: autoscaling upper bound", at_least=1)
    address: str | None = option(None, "ray: the address of a running cluster to serve on (default: the cluster "
                                 "that RAY_ADDRESS or a local `ray start` names, else a new local one)",
                                 dest="ray_address")
    num_cpus: float = option(1.0, "ray: CPUs reserved per replica (ray_actor_options num_cpus; also its torch threads)",
                             dest="ray_cpus_per_replica", at_least=0)
    num_gpus: float = option(0.0, "ray: GPUs reserved per replica (num_gpus; > 0 runs each replica on its own GPU(s), "
                             "0 on CPU)", dest="ray_gpus_per_replica", at_least=0)

    def check_together(self) -> None:
        """Autoscaling's lower bound above its upper one is refused naming both, as the config is made (before Ray
        starts), or either is assigned."""
        super().check_together()
        low, high = self.min_replicas, self.max_replicas
        if low is not None and high is not None and low > high:
            raise OptionError(self, "{min_replicas} must be <= {max_replicas} ({max}), got {min}", max=high, min=low)
