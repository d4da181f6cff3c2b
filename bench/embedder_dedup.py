"""Embedder training step with and without encoding each distinct item of a batch once (the collator's `dedup`).

    python bench/embedder_dedup.py --demo runs/demo                 # a demo run that reached its mining stage
    python bench/embedder_dedup.py --demo runs/demo --batch-size 32 --hard-negatives 8 --repeats 6

A step is the trainer's `compute_loss` (the demo's hard-negative row: full fine-tuning of the demo's base,
InfoNCE with in-batch and k mined hard negatives, τ 0.05) and its backward, on B records drawn from the
demo's `mined/mined.parquet`: B queries + B × (1 + k) candidates in batch order. With dedup an item whose
content stands earlier in the batch is encoded once; the loss reads its row back (the same loss and
gradients up to float summation order: tests/train/test_train_embedder.py).

Time: CPU time of this process (`time.process_time`) with one torch thread, median over `--repeats` batches,
the two modes run on the same batch one after the other, so other jobs on a shared machine distort the
ratio little. Also printed: the items each mode encodes per batch.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", required=True, help="a demo output folder (models/embedder-base, mined/, world/)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--hard-negatives", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from unime.data.io import read_records
    from unime.train.batching import EmbedderCollator
    from unime.train.embedder_config import EmbedderTrainingConfig
    from unime.train.embedder_trainer import prepare_embedder_training

    torch.set_num_threads(1)
    demo = Path(args.demo)
    records = read_records(demo / "mined" / "mined.parquet")
    with tempfile.TemporaryDirectory() as tmp:
        config = EmbedderTrainingConfig(
            model=str(demo / "models" / "embedder-base"), records=str(demo / "mined" / "mined.parquet"),
            data_root=str(demo / "world"), out=str(Path(tmp) / "run"), loss="infonce", in_batch=True,
            hard_negatives=args.hard_negatives, tau=0.05, full=True, batch_size=args.batch_size, steps=1,
            device="cpu", seed=args.seed)
        trainer = prepare_embedder_training(config, records=records).trainer
        model = trainer.model
        collators = {dedup: EmbedderCollator(trainer.data_collator.builder, num_negatives=args.hard_negatives,
                                             with_scores=False, dedup=dedup) for dedup in (False, True)}
        rng = random.Random(args.seed)
        times: dict[bool, list[float]] = {False: [], True: []}
        rows: dict[bool, list[int]] = {False: [], True: []}
        for _ in range(args.repeats):
            batch_records = rng.sample(list(enumerate(records)), args.batch_size)
            for dedup in (False, True):
                t0 = time.process_time()
                batch = collators[dedup](batch_records)
                model.zero_grad(set_to_none=True)
                trainer.compute_loss(model, batch).backward()
                times[dedup].append(time.process_time() - t0)
                rows[dedup].append(sum(int(c["input_ids"].shape[0]) for c in batch["chunks"]))
    full, dedup = statistics.median(times[False]), statistics.median(times[True])
    print(f"B = {args.batch_size}, k = {args.hard_negatives}, {args.repeats} batches of {demo / 'mined'}")
    print(f"items encoded per batch: every place {statistics.mean(rows[False]):.0f}, "
          f"distinct {statistics.mean(rows[True]):.1f}")
    print(f"CPU seconds per step (median): every place {full:.2f}, distinct once {dedup:.2f}; "
          f"ratio {dedup / full:.2f}")


if __name__ == "__main__":
    main()
