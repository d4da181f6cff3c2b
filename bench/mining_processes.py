"""`unime mine` as one process against a torchrun group: wall time, the judge stage's time, equal outputs.

    python bench/mining_processes.py --demo runs/demo                  # a demo run that reached its mining stage
    python bench/mining_processes.py --demo runs/demo --processes 2 --threads 2

Runs the demo's mining command (its records, retrieving embedder, judge, K, audit) twice into scratch folders, one
after the other on the same machine: as one process with `--threads` torch threads (default: the cores), and as
`torchrun --standalone --nproc-per-node N -m unime mine` (each process one thread, torchrun's default). Prints
each run's wall seconds and the stage times of its report (encode, judge, audit), their ratio, and whether the
mined records are byte-identical to a one-process run at the same threads (the group's processes run one thread
each: compare with `--threads 1` for the identity; at other threads the retrieval's float sums may round apart).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _stage_seconds(report: Path) -> dict[str, float]:
    rows = re.findall(r"^\| (\w+) \| ([0-9.]+) \|$", report.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {name: float(v) for name, v in rows if name in ("encode", "judge", "audit", "total")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", required=True, help="a demo output folder (train_records.jsonl, embedders/, models/)")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of the one-process run")
    args = ap.parse_args()
    demo = Path(args.demo)
    options = ["mine", "--records", str(demo / "train_records.jsonl"),
               "--embedder", str(demo / "embedders" / "baseline_s0" / "merged"),
               "--judge", str(demo / "models" / "judge-base"), "--data-root", str(demo / "world"), "--k", "50",
               "--count", "10", "--audit", "--world", str(demo / "world"), "--video-frames", "8", "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            f"one process, {args.threads} thread(s)": (
                [sys.executable, "-m", "unime", *options, "--out", f"{tmp}/one"],
                {**env, "OMP_NUM_THREADS": str(args.threads)}, Path(tmp) / "one"),
            f"torchrun, {args.processes} processes of 1 thread": (
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                 str(args.processes), "-m", "unime", *options, "--out", f"{tmp}/group"],
                {**env, "OMP_NUM_THREADS": "1"}, Path(tmp) / "group"),
        }
        figures = {}
        for name, (cmd, run_env, out) in runs.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, env=run_env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            figures[name] = {"wall": time.perf_counter() - t0, **_stage_seconds(out / "report.md")}
            print(f"{name}: " + ", ".join(f"{k} {v:.1f} s" for k, v in figures[name].items()), flush=True)
        (a, fa), (b, fb) = figures.items()
        print(f"ratio (one process / torchrun): wall {fa['wall'] / fb['wall']:.2f}, "
              f"judge stage {fa['judge'] / fb['judge']:.2f}")
        one, group = (Path(tmp) / name / "mined.parquet" for name in ("one", "group"))
        same = one.read_bytes() == group.read_bytes()
        print(f"mined.parquet byte-identical: {same}")


if __name__ == "__main__":
    main()
