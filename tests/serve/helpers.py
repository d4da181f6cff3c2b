"""Helpers for the service tests: a real `unime serve` process on a free loopback port."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

import unime

SRC = str(Path(unime.__file__).resolve().parents[1])  # this tree's src/, for the subprocess
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def write_corpus(root: Path) -> Path:
    """4 coloured images and 4 texts."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for name, rgb in COLOURS.items():
        Image.new("RGB", (48, 40), rgb).save(root / "img" / f"{name}.png")
        rows.append({"id": f"img-{name}", "image": f"img/{name}.png", "metadata": {"colour": name}})
        rows.append({"id": f"txt-{name}", "text": f"a {name} square", "metadata": {"colour": name}})
    path = root / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class Server:
    def __init__(self, args: list[str], *, log_path: Path, env: dict[str, str] | None = None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
        code = "import sys; from unime.cli import main; sys.exit(main(sys.argv[1:]))"
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-c", code, "--log-level", "WARNING", "serve", "--host",
                                      "127.0.0.1", "--port", str(self.port), "--device", "cpu", *args],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.log_path = log_path

    def wait_ready(self, timeout: float = 180.0) -> "Server":
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.base + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError("server did not become ready:\n" + self.log_path.read_text()[-3000:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
