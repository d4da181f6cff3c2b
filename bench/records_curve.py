"""P@1 against training records per task, on one world's eval split: the learnability reference and, with
``--embedder``, the VLM baseline embedder (the demo's baseline recipe) from a given base.

    python bench/records_curve.py --out CURVE_DIR --sizes 50 150 400 1000 --seconds 300 \
        [--embedder ~/.cache/unime/pretrained/qwen2_vl-<key>/model --seeds 0 1]

One world is generated with ``--train-per-task max(sizes)`` (training scenes in the default world's
proportion) and every point trains on the first N records of each dataset of its training split, so the
points share one eval split and differ only in what they train on (`bench/reference_curve.py` generates a
world per size instead, whose eval splits differ). Per point: ``unime eval reference`` for ``--seconds``
of wall time at one thread (read its steps and training P@1: a point far from 100 is budget-bound), and
with ``--embedder`` the demo's baseline command (``unime train embedder --loss infonce --in-batch --full
--batch-size 32 --lr 5e-4 --tau 0.05``) for max(80, ``--epochs`` epochs) steps, then ``unime eval``.
Commands run as subprocesses at one thread (``OMP_NUM_THREADS=1``); finished points are reused. Prints a
markdown table (overall and per meta-task P@1 x100, compositional accuracy) and writes ``curve.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

META = ["classification", "vqa", "retrieval", "grounding", "overall"]


def run(cmd: list[str], log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(log, "w") as fh:
        subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT, env=env)


def subset(records: Path, n: int, dest: Path) -> int:
    """The first `n` records of each dataset of `records` (file order) into `dest`; returns the count."""
    seen: Counter = Counter()
    lines = []
    for line in records.read_text(encoding="utf-8").splitlines():
        ds = json.loads(line)["dataset"]
        if seen[ds] < n:
            seen[ds] += 1
            lines.append(line)
    dest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def scores(folder: Path) -> dict[str, float]:
    s = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    out = {g: 100 * v for g, v in s["aggregates"]["mmeb"]["scores"].items() if g in META}
    comp = [m["accuracy"] for name, m in s["tasks"].items() if s["task_info"][name]["format"] == "compositional"]
    out["compositional"] = 100 * sum(comp) / len(comp) if comp else float("nan")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for the world, the subsets, the runs and curve.md")
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 150, 400, 1000], help="training records per task")
    ap.add_argument("--seconds", type=float, default=300.0, help="the reference's training wall time per point")
    ap.add_argument("--embedder", help="a base checkpoint: also train and evaluate the VLM baseline per point")
    ap.add_argument("--epochs", type=float, default=2.0, help="the baseline's epochs per point (at least 80 steps)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--world-seed", type=int, default=0)
    args = ap.parse_args(argv)

    unime = str(Path(sys.executable).with_name("unime"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    world = out / "world"
    top = max(args.sizes)
    if not (world / "world.json").is_file():
        # the default world's proportion: 720 training scenes for 150 records per task
        run([unime, "data", "synth", "--out", str(world), "--size", "default", "--train-per-task", str(top),
             "--train-scenes", str(math.ceil(top * 720 / 150))], out / "world.log")
    rows = []
    for n in sorted(args.sizes):
        records = out / f"records_{n}.jsonl"
        count = subset(world / "train" / "records.jsonl", n, records)
        for seed in args.seeds:
            ref = out / f"reference_{n}_s{seed}"
            if not (ref / "summary.json").is_file():
                run([unime, "eval", "reference", "--tasks", str(world), "--records", str(records), "--data-root",
                     str(world), "--out", str(ref), "--seconds", str(args.seconds), "--seed", str(seed),
                     "--threads", "1"], out / f"reference_{n}_s{seed}.log")
            training = json.loads((ref / "summary.json").read_text(encoding="utf-8"))["meta"]["reference"]["training"]
            rows.append({"model": "reference", "n": n, "records": count, "seed": seed, "steps": training["steps"],
                         "train_p@1": 100 * training["train_p_at_1"], **scores(ref)})
            print(rows[-1], flush=True)
            if not args.embedder:
                continue
            steps = max(80, int(args.epochs * count / 32))
            emb, ev = out / f"baseline_{n}_s{seed}", out / f"eval_baseline_{n}_s{seed}"
            if not (ev / "summary.json").is_file():
                run([unime, "train", "embedder", "--model", args.embedder, "--records", str(records), "--data-root",
                     str(world), "--out", str(emb), "--loss", "infonce", "--in-batch", "--hard-negatives", "0",
                     "--tau", "0.05", "--full", "--batch-size", "32", "--steps", str(steps), "--lr", "0.0005",
                     "--warmup", "0.1", "--seed", str(seed), "--save-steps", str(steps), "--device", "cpu"],
                    out / f"baseline_{n}_s{seed}.log")
                run([unime, "eval", "--model", str(emb / "merged"), "--tasks", str(world), "--out", str(ev),
                     "--cache-dir", str(out / "cache"), "--device", "cpu"], out / f"eval_baseline_{n}_s{seed}.log")
            rows.append({"model": "baseline", "n": n, "records": count, "seed": seed, "steps": steps,
                         "train_p@1": None, **scores(ev)})
            print(rows[-1], flush=True)
    head = ["model", "records/task", "records", "seed", "steps", "train P@1", *META, "compositional"]
    table = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        cells = [r["model"], str(r["n"]), str(r["records"]), str(r["seed"]), str(r["steps"]),
                 "–" if r["train_p@1"] is None else f"{r['train_p@1']:.1f}"]
        cells += [f"{r[g]:.1f}" if g in r else "–" for g in [*META, "compositional"]]
        table.append("| " + " | ".join(cells) + " |")
    print("\n".join(table))
    (out / "curve.md").write_text(
        f"# P@1 against training records per task (one eval split; reference {args.seconds:g} s per point)\n\n"
        + "\n".join(table) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
