"""GradCache: peak memory and step time of one embedder training step, with and without caching.

    python bench/gradcache_memory.py                          # tiny Qwen2-VL built on the fly
    python bench/gradcache_memory.py --batches 8 32 64 --chunk-size 16 --hard-negatives 8

A step is the trainer's own `training_step` (compute_loss → GradCache or one plain forward, the
backward, the symmetric-KL loss) plus the optimizer step, on B queries of a generated demo world,
each with its positive and k hard negatives: B × (k + 2) items per step (k = 8: 80 items at B = 8,
640 at B = 64). LoRA r = 16 on the decoder, fp32, one torch thread.

Memory: the peak of live *tensor* bytes during the step, above what is resident before it (weights,
optimizer state, the collated batch), from the allocation events of torch's profiler
(`profile_memory=True`; the running sum of the `[memory]` events' signed sizes). Why this meter:
`tracemalloc` does not see torch's C++ allocator at all; process RSS (`ru_maxrss`) is dominated by
the ~1 GB of libraries, keeps allocator caches, and cannot be reset between configurations in one
process. The collated batch (pixel values, token ids) also grows with B; its size is printed
separately — GradCache does not (and cannot) shrink it.

Time: CPU time of this process (`time.process_time`) with one torch thread, median of `--repeats`
steps, the two modes alternated per repeat — so other jobs on a shared machine distort it little.

Targets (issue #4): with caching, peak memory at B = 64 ≤ 1.2 × the peak at B = 8; step-time
overhead of caching ≤ 1.4 ×.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def mined_world_records(world_dir: Path, k: int):
    """The demo world's training records with k hard negatives each (other positives, same dataset
    first) scored by the world's ground-truth relevance — what the mining stage hands to training."""
    from unime.data.synth import World

    world = World.load(world_dir)
    pools: dict[str, list] = {}
    for r in world.records:
        pool = pools.setdefault(r.dataset, [])
        if all(p.key != r.positive.key for p in pool):
            pool.append(r.positive)
    everything = [p for pool in pools.values() for p in pool]
    out = []
    for r in world.records:
        negs = list({p.key: p for p in pools[r.dataset] + everything if p.key != r.positive.key}.values())[:k]
        out.append(dataclasses.replace(r, negatives=negs, positive_score=world.relevance(r.query, r.positive),
                                       negative_scores=world.relevances(r.query, negs)))
    return out


def interleave_datasets(records):
    """Round-robin over the datasets, so a batch of any size has the same mix of tasks (text-only,
    image queries, image candidates) — batch 8 is not all one task while batch 64 is all of them."""
    by_ds: dict[str, list] = {}
    for r in records:
        by_ds.setdefault(r.dataset, []).append(r)
    queues = [list(v) for _, v in sorted(by_ds.items())]
    out = []
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


def peak_tensor_bytes(fn) -> int:
    """Peak of live tensor bytes allocated while `fn()` runs, relative to its start (torch profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for _, nbytes in sorted(events):
        live += nbytes
        peak = max(peak, live)
    return peak


def batch_bytes(batch) -> int:
    import torch

    total = 0
    for chunk in batch["chunks"]:
        total += sum(v.numel() * v.element_size() for v in chunk.values() if isinstance(v, torch.Tensor))
    return total


def make_stepper(model_dir: str, world: Path, records, batch_size: int, *, gradcache: bool, chunk_size: int,
                 hard_negatives: int, out: Path):
    """(one training step, the collated batch) through the trainer's own training_step."""
    from unime.train.embedder_trainer import EmbedderTrainingConfig, prepare_embedder_training

    cfg = EmbedderTrainingConfig(model=model_dir, out=str(out), records="bench", data_root=str(world),
                                 hard_negatives=hard_negatives, batch_size=batch_size, steps=1, warmup=0,
                                 lora_r=16, lora_alpha=64, lora_dropout=0.1, gradcache=gradcache,
                                 chunk_size=chunk_size, device="cpu", save_steps=10_000, logging_steps=10_000)
    run = prepare_embedder_training(cfg, records=records)
    trainer = run.trainer
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1
    batch = trainer._prepare_inputs(trainer.data_collator(list(enumerate(records[:batch_size]))))
    model = trainer.model

    def step():
        trainer.training_step(model, batch)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    return step, batch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="embedder base (default: a tiny Qwen2-VL built on the fly)")
    p.add_argument("--batches", type=int, nargs="+", default=[8, 32, 64], help="queries per step")
    p.add_argument("--chunk-size", type=int, default=16, help="items per forward with GradCache")
    p.add_argument("--hard-negatives", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5, help="timed steps per configuration (median)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from unime.data.synth import generate_world
    from unime.models.tiny import build_tiny

    tmp = Path(tempfile.mkdtemp(prefix="unime-bench-gc-"))
    model_dir = args.model or str(build_tiny("qwen2_vl", tmp / "tiny"))
    sizes = "tiny" if max(args.batches) <= 72 else "default"
    generate_world(tmp / "world", sizes=sizes, seed=0)
    records = interleave_datasets(mined_world_records(tmp / "world", args.hard_negatives))
    if len(records) < max(args.batches):
        sys.exit(f"the {sizes} world has {len(records)} records, fewer than batch {max(args.batches)}")

    rows = {}
    for b in args.batches:
        steppers = {}
        for mode in ("plain", "gradcache"):
            step, batch = make_stepper(model_dir, tmp / "world", records, b, gradcache=mode == "gradcache",
                                       chunk_size=args.chunk_size, hard_negatives=args.hard_negatives,
                                       out=tmp / f"run-{b}-{mode}")
            step()  # warm-up: optimizer state, kernels
            steppers[mode] = step
            rows[(b, mode)] = {"peak": peak_tensor_bytes(step), "batch": batch_bytes(batch), "times": []}
        for _ in range(args.repeats):  # alternate the modes so load changes hit both
            for mode, step in steppers.items():
                t0 = time.process_time()
                step()
                rows[(b, mode)]["times"].append(time.process_time() - t0)
        items = b * (args.hard_negatives + 2)
        print(f"batch {b:3d} ({items} items): " + "  ".join(
            f"{m}: peak {rows[(b, m)]['peak'] / 2**20:7.1f} MiB, step {statistics.median(rows[(b, m)]['times']):6.2f} s"
            for m in ("plain", "gradcache")), flush=True)

    print()
    print(f"tiny Qwen2-VL, LoRA r=16, k={args.hard_negatives} hard negatives, GradCache chunk {args.chunk_size} "
          f"items, {args.threads} torch thread(s); memory = peak live tensor bytes during the step above the "
          "pre-step level (torch profiler); time = median CPU seconds")
    print(f"{'batch':>5} {'items':>6} {'inputs MiB':>10} {'plain MiB':>10} {'cached MiB':>11} "
          f"{'plain s':>8} {'cached s':>9} {'time x':>7}")
    for b in args.batches:
        plain, cached = rows[(b, "plain")], rows[(b, "gradcache")]
        tp, tc = statistics.median(plain["times"]), statistics.median(cached["times"])
        print(f"{b:5d} {b * (args.hard_negatives + 2):6d} {cached['batch'] / 2**20:10.1f} "
              f"{plain['peak'] / 2**20:10.1f} {cached['peak'] / 2**20:11.1f} {tp:8.2f} {tc:9.2f} {tc / tp:7.2f}")
    lo, hi = min(args.batches), max(args.batches)
    mem_ratio = rows[(hi, "gradcache")]["peak"] / rows[(lo, "gradcache")]["peak"]
    plain_ratio = rows[(hi, "plain")]["peak"] / rows[(lo, "plain")]["peak"]
    overheads = [statistics.median(rows[(b, "gradcache")]["times"]) / statistics.median(rows[(b, "plain")]["times"])
                 for b in args.batches]
    print()
    print(f"peak memory B={hi} / B={lo}: with GradCache {mem_ratio:.2f}x (target <= 1.2x), "
          f"without {plain_ratio:.2f}x")
    print(f"GradCache time overhead: {min(overheads):.2f}x .. {max(overheads):.2f}x (target <= 1.4x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
