"""Time and composition of the demo's judge-training records (`unime.demo.judge_data`) on a demo world.

    python bench/judge_data.py --world WORLD [--negatives 3] [--global-sample 96] [--task-sample 64]

Generate a world first (e.g. ``unime data synth --out WORLD --train-per-task 340 --train-scenes 1600``
for ~3,000 training records). Prints the wall time (one thread), the records made, and where the
negatives come from (same-task hard / global-pool hard / global random, and how many are answers of
another task), plus the share of the global pool that is the query's own task's answers: the share of
same-task items among mining's retrieved candidates is about that when the embedder is near chance.
"""

from __future__ import annotations

import argparse
import json
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", required=True)
    ap.add_argument("--negatives", type=int, default=3)
    ap.add_argument("--global-sample", type=int, default=96)
    ap.add_argument("--task-sample", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from unime.data.synth import World
    from unime.demo.judge_data import judge_training_records
    from unime.mining.retrieval import build_pool

    world = World.load(args.world)
    records = world.records
    pool = build_pool(records)
    t0 = time.perf_counter()
    stats: dict = {}
    recs = judge_training_records(world, negatives_per_query=args.negatives, global_sample=args.global_sample,
                                  task_sample=args.task_sample, seed=args.seed, stats=stats)
    seconds = time.perf_counter() - t0
    task_of = {}
    for r in records:
        task_of.setdefault(r.positive.key, set()).add(r.dataset)
    own_share = sum(sum(r.dataset in task_of[it.key] for it in pool) for r in records) / (len(records) * len(pool))
    print(f"{len(records)} training records, pool {len(pool)} items: {len(recs)} judge records in {seconds:.1f} s")
    print(f"negatives: {json.dumps({k: stats.get(k, 0) for k in ('task_hard', 'global_hard', 'global_random')})}; "
          f"from other tasks {stats.get('other_task', 0)} of {stats.get('negatives', 0)} "
          f"({100 * stats.get('other_task', 0) / max(stats.get('negatives', 1), 1):.0f} %); "
          f"extra Yes {stats.get('extra_yes', 0)}")
    print(f"the query's own task's answers are {100 * own_share:.1f} % of the global pool")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
