"""Wall time of `unime --help` and `unime train embedder --help` in a fresh interpreter, and which model
libraries building the parser imports (none is the design: only the chosen stage function imports torch,
transformers, peft, TRL or FAISS). Pass the `src` folder of another tree to compare two trees in one run.

    python bench/cli_startup.py [SRC ...]       # default: this tree's src/
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HEAVY = ("torch", "transformers", "peft", "trl", "faiss")
PROBE = ("import sys; from unime.cli import build_parser; build_parser(); "
         f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")


def timed(argv: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(srcs: list[str], repeats: int = 3) -> None:
    for src in srcs:
        env = {**os.environ, "PYTHONPATH": str(Path(src).resolve()), "HF_HUB_OFFLINE": "1"}
        heavy = subprocess.run([sys.executable, "-c", PROBE], env=env, check=True, capture_output=True,
                               text=True).stdout.strip() or "none"
        print(f"{src}: model libraries imported by the parser: {heavy}")
        for words in ([], ["train", "embedder"]):
            argv = [sys.executable, "-c", "import sys; from unime.cli import main; sys.exit(main(sys.argv[1:]))",
                    *words, "--help"]
            runs = [timed(argv, env) for _ in range(repeats)]
            print(f"  unime {' '.join(words + ['--help'])}: median {statistics.median(runs):.2f} s "
                  f"(min {min(runs):.2f}, {repeats} runs)")


if __name__ == "__main__":
    main(sys.argv[1:] or [str(Path(__file__).resolve().parents[1] / "src")])
