"""Options of the service: models, batching, limits, auth. One dataclass, filled by `unime serve`."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Limits:
    max_body_bytes: int = 16 * 1024 * 1024      # whole request body
    max_items: int = 256                        # inputs per embeddings request, documents per rerank request
    max_text_chars: int = 8192                  # per text (query, document, input, instruction)
    max_image_bytes: int = 8 * 1024 * 1024      # per decoded inline image
    max_image_pixels: int = 16_000_000          # per image, checked on the header before decoding
    max_top_k: int = 1000                       # search results
    request_timeout_s: float = 60.0             # a request still running after this gets 503


@dataclass
class ServeConfig:
    model: str
    reranker: str | None = None
    index: str | None = None
    model_name: str | None = None               # the `model` value clients send; default: the folder's name
    reranker_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    device: str | None = None
    dtype: str = "auto"
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    api_keys: list[str] = field(default_factory=list)
    no_auth: bool = False
    cors_origins: list[str] = field(default_factory=list)  # empty = CORS off
    limits: Limits = field(default_factory=Limits)
    graceful_timeout_s: float = 30.0
    threads: int | None = None                  # torch CPU threads per worker (each Ray replica too)
    rerank_data_root: str | None = None         # where indexed items' images are (default: the index manifest's)

    def check(self) -> None:
        """Refuse unsafe combinations: no keys is only allowed on loopback with `no_auth`."""
        if self.max_batch_size < 1 or self.max_wait_ms < 0:
            raise ValueError("max_batch_size must be >= 1 and max_wait_ms >= 0")
        if self.no_auth and not is_loopback(self.host):
            raise ValueError(f"--no-auth is only allowed when binding to loopback (127.0.0.1, ::1, localhost), "
                             f"not {self.host}")
        if not self.no_auth and not self.api_keys:
            raise ValueError("no API keys: give --api-key-file FILE or set UNIME_API_KEYS "
                             "(or --no-auth when binding to loopback)")
