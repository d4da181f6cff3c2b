"""Embedder training step: how the batch's items are encoded (every place / each distinct item once; one padded
forward / forwards of similar-length rows).

    python bench/embedder_batch_encoding.py --demo runs/demo        # a demo run that reached its mining stage
    python bench/embedder_batch_encoding.py --demo runs/demo --batch-size 32 --hard-negatives 8 --repeats 6

A step is the trainer's loss (the demo's hard-negative row: full fine-tuning of the demo's base, InfoNCE with
in-batch and k mined hard negatives, τ 0.05) and its backward, on B records drawn from the demo's
`mined/mined.parquet`: B queries + B × (1 + k) candidates. Three ways to encode them:
- every place: each of the B + B(1 + k) items, one padded forward in batch order;
- distinct, one forward: each distinct item once (`Item.key`), in order of first appearance, one padded forward;
- distinct, padding order: what the trainer's collator does, each distinct item once in `padding_order` (padding
  shape — text only, n images, video —, then pixels, then text length), a forward per shape of at most
  `FORWARD_ROWS` rows, so short text rows are not padded to a long caption's or a video's length.
All three give the same loss and gradients up to float summation order (tests/train/test_train_embedder.py).

Time: CPU time of this process (`time.process_time`) with one torch thread, median over `--repeats` batches,
the modes run on the same batch one after the other, so other jobs on a shared machine distort the ratios
little. Also printed: the rows encoded and the language-model tokens (padded and real) per batch.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

MODES = ("every place", "distinct, one forward", "distinct, padding order")


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
    from unime.train.embedder_config import EmbedderTrainingConfig
    from unime.train.embedder_trainer import prepare_embedder_training

    torch.set_num_threads(1)
    demo = Path(args.demo)
    k = args.hard_negatives
    records = read_records(demo / "mined" / "mined.parquet")
    stats: dict[str, dict[str, list[float]]] = {m: {"seconds": [], "rows": [], "padded": [], "real": []} for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        config = EmbedderTrainingConfig(
            model=str(demo / "models" / "embedder-base"), records=str(demo / "mined" / "mined.parquet"),
            data_root=str(demo / "world"), out=str(Path(tmp) / "run"), loss="infonce", in_batch=True,
            hard_negatives=k, tau=0.05, full=True, batch_size=args.batch_size, steps=1, device="cpu", seed=args.seed)
        trainer = prepare_embedder_training(config, records=records).trainer
        model, builder, collate = trainer.model, trainer.data_collator.builder, trainer.data_collator

        def one_forward(batch_records, items):
            """Items encoded in one padded forward; the loss reads each place's row."""
            places = [r.query for _, r in batch_records] + [
                it for _, r in batch_records for it in [r.positive] + list(r.negatives[:k])]
            row = {}
            for it in items:
                row.setdefault(it.key, len(row))
            inputs = builder.build_inputs(items)
            reps = model(**inputs)[torch.tensor([row[it.key] for it in places])]
            b = len(batch_records)
            return trainer.loss_module(reps[:b], reps[b:].reshape(b, 1 + k, -1), None), [inputs]

        rng = random.Random(args.seed)
        for _ in range(args.repeats):
            batch_records = rng.sample(list(enumerate(records)), args.batch_size)
            places = [r.query for _, r in batch_records] + [
                it for _, r in batch_records for it in [r.positive] + list(r.negatives[:k])]
            distinct = list({it.key: it for it in places}.values())
            for mode in MODES:
                t0 = time.process_time()
                model.zero_grad(set_to_none=True)
                if mode == "distinct, padding order":
                    batch = collate(batch_records)
                    loss, chunks = trainer.compute_loss(model, batch), batch["chunks"]
                else:
                    loss, chunks = one_forward(batch_records, places if mode == "every place" else distinct)
                loss.backward()
                s = stats[mode]
                s["seconds"].append(time.process_time() - t0)
                s["rows"].append(sum(int(c["input_ids"].shape[0]) for c in chunks))
                s["padded"].append(sum(int(c["attention_mask"].numel()) for c in chunks))
                s["real"].append(sum(int(c["attention_mask"].sum()) for c in chunks))
    print(f"B = {args.batch_size}, k = {k}, {args.repeats} batches of {demo / 'mined'}, one torch thread")
    base = statistics.median(stats[MODES[0]]["seconds"])
    for mode in MODES:
        s = stats[mode]
        sec = statistics.median(s["seconds"])
        print(f"{mode:>23}: rows {statistics.mean(s['rows']):6.1f}, "
              f"LM tokens padded {statistics.mean(s['padded']):7.0f} / real {statistics.mean(s['real']):6.0f}, "
              f"CPU s per step (median) {sec:5.2f}, "
              f"ratio to every place {sec / base:.2f}")


if __name__ == "__main__":
    main()
