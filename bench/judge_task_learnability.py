"""Can the judge learn one task of the generated world? Trains a judge (`unime train judge`, full
fine-tuning, answer-token loss + within-record softmax) on the labelled records of ONE task of a freshly
generated corpus world (`unime.demo.judge_data`, negatives from that task's own answers) and prints its
held-out AUC / within-query AUC at each evaluation and the training loss against its chance level: a judge
that cannot fit a task's training records is not limited by the mining pipeline.

    OMP_NUM_THREADS=2 python bench/judge_task_learnability.py --model JUDGE_OR_BASE --out WORK \
        [--task t2i] [--train-scenes 1200 --per-task 300] [--steps 600 --batch-size 4 --lr 1e-3] [--image-first]

`--image-first` (t2i only) turns each record round: the scene image is the query and its caption the
candidate (the i2t prompt order) with the same captions, to separate the caption's content from its place
in the prompt. Measured figures: the closing note of issue #13 and README ("judge check").
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def task_records(world_dir: Path, task: str, negatives: int, seed: int, image_first: bool) -> list:
    from unime.data.items import Item, Record
    from unime.data.synth import World
    from unime.demo.judge_data import judge_training_records

    world = World.load(world_dir)
    own = [r for r in world.records if r.dataset == task]
    records = judge_training_records(world.with_records(own), negatives_per_query=negatives, seed=seed)
    if not image_first:
        return records
    if task != "t2i":
        raise SystemExit("--image-first turns t2i records round; give --task t2i")
    caption = {r.positive.images[0]: r.query.text.split("caption: ", 1)[-1] for r in own}
    turned = []
    for r in records:
        image = r.positive.images[0]
        others = [caption[n.images[0]] for n in r.negatives if caption[n.images[0]] != caption[image]]
        if len(others) == negatives:
            turned.append(Record(query=Item(text="<|image_1|>\nFind a caption describing the given image.",
                                            images=[image]), positive=Item(text=caption[image]),
                                 negatives=[Item(text=t) for t in others], dataset="t2i_image_first",
                                 id=f"{r.id}-image-first"))
    return turned


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="judge or base checkpoint (HF folder)")
    ap.add_argument("--out", required=True, help="work folder (created)")
    ap.add_argument("--task", default="t2i")
    ap.add_argument("--train-scenes", type=int, default=1200)
    ap.add_argument("--per-task", type=int, default=300)
    ap.add_argument("--world-seed", type=int, default=1)
    ap.add_argument("--negatives", type=int, default=3)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--image-first", action="store_true")
    args = ap.parse_args()

    from unime.data.io import write_records
    from unime.data.synth import WorldSizes, generate_world
    from unime.train.reranker_trainer import RerankerTrainConfig, train_reranker

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=False)
    world = out / "world"
    generate_world(world, seed=args.world_seed, sizes=WorldSizes(
        train_scenes=args.train_scenes, train_per_task=args.per_task, eval_scenes=40, ood_scenes=30, eval_queries=6,
        candidates=6, retrieval_images=8, compositional_pairs=6))
    records = task_records(world, args.task, args.negatives, 0, args.image_first)
    write_records(records, out / "records.jsonl")
    result = train_reranker(RerankerTrainConfig(
        model=args.model, records=[str(out / "records.jsonl")], out=str(out / "judge"), role="judge",
        losses=("pair",), data_root=str(world), judge_negatives=args.negatives, full=True, learning_rate=args.lr,
        max_steps=args.steps, batch_size=args.batch_size, warmup_steps=max(args.steps // 20, 1), seed=0,
        device="cpu", logging_steps=max(args.steps // 12, 1), save_steps=10 * args.steps, holdout=args.holdout,
        eval_steps=max(args.steps // 6, 1), group_weight=1.0))
    k = args.negatives + 1
    base = 1 / k
    chance = -(base * math.log(base) + (1 - base) * math.log(1 - base)) + math.log(k)  # pair CE + group CE
    print(f"task {args.task}{' (image first)' if args.image_first else ''}: {len(records)} labelled records, "
          f"{args.steps} steps of {args.batch_size}; loss {result.first_loss:.3f} -> {result.last_loss:.3f} "
          f"(chance level of answer + group loss: {chance:.3f})")
    for line in (out / "judge" / "judge_eval.jsonl").read_text().splitlines():
        row = json.loads(line)
        print(f"  step {row['step']:>5}: held-out AUC {row['auc']:.3f}, within-query AUC {row['within_query_auc']:.3f}")


if __name__ == "__main__":
    main()
