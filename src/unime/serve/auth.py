"""API keys: read from a file (one per line, `#` comments) or an environment variable (comma-separated), once, when
the service starts (a changed file takes effect at the next start); checked in constant time against every key
(hmac.compare_digest, no early exit on the first match)."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from unime.errors import UsageError

ENV_VAR = "UNIME_API_KEYS"
MIN_KEY_CHARS = 16


def load_api_keys(file: str | os.PathLike | None = None, env: str = ENV_VAR) -> list[str]:
    """The keys of `file` and of the environment variable `env`. A key shorter than `MIN_KEY_CHARS` or a file that
    cannot be read is a `UsageError` naming where it is (the file and line, or the variable and position)."""
    keys: list[tuple[str, str]] = []  # (where, key)
    if file:
        try:
            text = Path(file).read_text(encoding="utf-8-sig")  # a byte order mark (Notepad) is not the key's
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--api-key-file {file}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append((f"--api-key-file {file}, line {n}", line))
    if os.environ.get(env):
        keys += [(f"{env}, key {i}", k.strip()) for i, k in enumerate(
            (k for k in os.environ[env].split(",") if k.strip()), 1)]
    short = [where for where, k in keys if len(k) < MIN_KEY_CHARS]
    if short:
        raise UsageError(f"API keys must have at least {MIN_KEY_CHARS} characters; too short: {', '.join(short)}")
    return [k for _, k in keys]


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
