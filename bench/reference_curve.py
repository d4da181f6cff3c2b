"""Learning curve of the learnability reference: overall / per-meta-task P@1 against training records per task.

    python bench/reference_curve.py --out CURVE_DIR --sizes 50 150 400 --seconds 60

For each size N a demo world is generated with ``--train-per-task N`` and ``--train-scenes`` grown in
proportion (the default world's 240 scenes per 50 records, unless ``--scenes-per-record``), the
reference is trained for ``--seconds`` of wall time (or ``--max-steps``) at one thread and evaluated on
that world's eval tasks by `unime.eval.runners.run_tasks`. Prints one line per point as it finishes and
a markdown table at the end (chance level in brackets); writes ``curve.json`` and ``curve.md`` into
``--out``. Worlds (``world-N``) are reused when present; result folders are ``reference-N``.

Read the steps / epochs columns first: at a fixed wall budget a bigger world is seen fewer times, so
a point that is budget-bound (few epochs, training P@1 far from 100) says nothing about saturation in
records; raise ``--seconds`` until the smallest world's training P@1 is near 100.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for worlds, result folders, curve.json, curve.md")
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 150, 400], help="training records per task")
    ap.add_argument("--seconds", type=float, default=60.0, help="training wall-clock budget per point")
    ap.add_argument("--max-steps", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument("--scenes-per-record", type=float, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    logging.basicConfig(level=logging.WARNING)

    from unime.data.atomic import atomic_open
    from unime.eval.reference import ReferenceConfig, curve_table, reference_curve

    cfg = ReferenceConfig(seconds=args.seconds, max_steps=args.max_steps, seed=args.seed, threads=args.threads)

    def show(row: dict) -> None:
        s, c = row["scores"], row["chance"]
        print(f"N={row['train_per_task']:>5}  records={row['train_records']:>6}  steps={row['steps']:>5}  "
              f"epochs={row['epochs']:.1f}  train P@1={100 * row['train_p@1']:.1f}  "
              f"overall P@1={100 * s['overall']:.1f} "
              f"(chance {100 * c['overall']:.1f})", flush=True)

    rows = reference_curve(args.sizes, args.out, cfg=cfg, world_seed=args.world_seed,
                           scenes_per_record=args.scenes_per_record, on_point=show)
    table = curve_table(rows)
    print("\n".join(table))
    out = Path(args.out)
    with atomic_open(out / "curve.json") as fh:
        json.dump({"config": vars(args), "rows": rows}, fh, indent=2)
    with atomic_open(out / "curve.md") as fh:
        fh.write("# Learnability reference: P@1 (%) against training records per task\n\n"
                 f"{args.seconds:g} s of training per point, seed {args.seed}, {args.threads} thread(s); "
                 "chance level in brackets.\n\n" + "\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
