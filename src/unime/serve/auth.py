"""API keys: read from a file (one per line, `#` comments) or an environment variable (comma-separated);
checked in constant time against every key (hmac.compare_digest, no early exit on the first match)."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

ENV_VAR = "UNIME_API_KEYS"
MIN_KEY_CHARS = 16


def load_api_keys(file: str | os.PathLike | None = None, env: str = ENV_VAR) -> list[str]:
    keys: list[str] = []
    if file:
        for n, line in enumerate(Path(file).read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(line)
    if os.environ.get(env):
        keys += [k.strip() for k in os.environ[env].split(",") if k.strip()]
    short = [k for k in keys if len(k) < MIN_KEY_CHARS]
    if short:
        raise ValueError(f"{len(short)} API key(s) shorter than {MIN_KEY_CHARS} characters")
    return keys


def key_matches(given: str, keys: list[str]) -> bool:
    """Constant time in `given` for a fixed key set: every key is compared."""
    g = given.encode()
    ok = False
    for k in keys:
        ok |= hmac.compare_digest(g, k.encode())
    return ok


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
