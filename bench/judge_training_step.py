"""The judge's training step (the demo's judge pretraining, `unime train judge --full`): where its time goes, what a
larger batch gives per record, and what sharing each record's query prefix between its pairs would give.

    python bench/judge_training_step.py --demo runs/demo                 # a demo run past its judge-data stage
    python bench/judge_training_step.py --demo runs/demo --threads 1 --batches 4,8

A step is what the trainer runs for a judge with a group loss (`unime.train.reranker_trainer`): B records, each
a query with its positive and 3 negatives (4 pairs), one padded batch of 4B prompts → the answer-token loss and the
within-record group loss on l_Yes − l_No, then the backward. The records are the demo's own judge records
(`judge/records.jsonl`, the world's training queries, labelled from its ground truth); the model is the demo's
judge start (`models/judge-base`), trained in full as the pretraining does.

Prints, per batch size: milliseconds per step (median over `--repeats` steps, wall time, after one warm-up step)
for building the inputs (images loaded, processor), the forward and the backward, and per record.

`--prefix`: the same records scored the other way too, each record's prefix (instruction + query, its image
included) run once with a KV cache and its 4 candidates run on it (`unime.models.prefix_scoring.PrefixEngine`,
the mining judge's fast path, here with gradients), the two alternated on the same batches: the loss of both
(equal up to float rounding) and the time per step. This is a measurement of an idea, not a path of the trainer.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", required=True,
                    help="a demo output folder (models/judge-base, judge/records.jsonl, world/)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="4,8,16", help="records per step, comma-separated")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--prefix", action="store_true", help="also time the shared-prefix forward (batch 4)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from unime.data.images import ImageLoader
    from unime.models.loading import load_model
    from unime.train.reranker_trainer import (PromptAnswerCollator, RerankerTrainConfig, answer_token_loss,
                                              build_examples, group_softmax_loss)

    torch.set_num_threads(args.threads)
    demo = Path(args.demo)
    model_dir = str(demo / "models" / "judge-base")
    cfg = RerankerTrainConfig(model=model_dir, records=[str(demo / "judge" / "records.jsonl")], out=str(demo / "x"),
                              role="judge", losses=("pair",), data_root=str(demo / "world"), judge_negatives=3,
                              full=True, group_weight=1.0)
    groups, _, root = build_examples(cfg)
    loaded = load_model(model_dir, device="cpu", dtype=torch.float32, trainable=True)
    model = loaded.model.requires_grad_(True)
    adapter = loaded.adapter
    collator = PromptAnswerCollator(adapter, ImageLoader(root), group_ids=True)
    yes, no = adapter.single_token_id("Yes"), adapter.single_token_id("No")
    rng = random.Random(args.seed)
    tokens: list[int] = []  # language-model tokens (unpadded) of each full step
    print(f"{len(groups)} judge records of {demo}; {args.threads} torch thread(s); {args.repeats} steps per figure")

    def full_step(batch):
        t0 = time.perf_counter()
        inputs = dict(collator(batch)["pair"])
        t1 = time.perf_counter()
        tokens.append(int(inputs["attention_mask"].sum()))
        group = inputs.pop("group")
        labels = inputs["labels"]
        loss, first = answer_token_loss(model, inputs, with_answer_logits=True)
        is_yes = labels[:, -1] == yes
        loss = loss + group_softmax_loss(first[:, yes] - first[:, no], group, is_yes)
        t2 = time.perf_counter()
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss.item(), (t1 - t0, t2 - t1, time.perf_counter() - t2)

    for size in [int(b) for b in args.batches.split(",")]:
        batches = [[groups[rng.randrange(len(groups))] for _ in range(size)] for _ in range(args.repeats + 1)]
        times = [full_step(b)[1] for b in batches][1:]
        inp, fwd, bwd = (statistics.median(t[i] for t in times) * 1000 for i in range(3))
        total = inp + fwd + bwd
        print(f"batch {size:3d} records ({4 * size} prompts): inputs {inp:.0f} ms, forward {fwd:.0f}, backward "
              f"{bwd:.0f}; {total:.0f} ms per step, {total / size:.1f} ms per record")

    if args.prefix:
        _compare_prefix(args, groups, model, adapter, collator, yes, no, full_step, rng, tokens)


def _compare_prefix(args, groups, model, adapter, collator, yes, no, full_step, rng, tokens) -> None:
    import torch
    import torch.nn.functional as F

    from unime.models.judge import JudgeStats
    from unime.models.judge_prompt import judge_candidate_segments, judge_prefix_segments
    from unime.models.prefix_scoring import PrefixEngine
    from unime.train.reranker_trainer import group_softmax_loss

    engine = PrefixEngine(model, adapter, device="cpu", chunk_size=64, image_cache_size=0, stats=JudgeStats())

    def prefix_step(batch):
        t0 = time.perf_counter()
        losses, margins, owners, positives = [], [], [], []
        for g, record in enumerate(batch):
            query = collator.content(record[0].query, record=record[0].record, field="query")
            prefix_segments = judge_prefix_segments(query)
            prefix = engine.split(prefix_segments)
            texts, candidates = [], []
            for ex in record:
                cont = engine.continuation_text(prefix, collator.prompt_segments(ex))
                if cont is None:
                    raise SystemExit(f"record {ex.record}: the prompt does not split at the candidate")
                texts.append(cont[0])
                candidates.append(judge_candidate_segments(
                    collator.content(ex.candidates[0], record=ex.record, field="candidates[0]")))
            engine.run_prefix(prefix, prefix_segments)
            logits = model.lm_head(engine.run_continuations(prefix, texts, candidates))
            target = torch.tensor([yes if ex.answer.startswith("Yes") else no for ex in record])
            losses.append(F.cross_entropy(logits.float(), target, reduction="none"))
            margins.append(logits[:, yes] - logits[:, no])
            owners += [g] * len(record)
            positives.append(target == yes)
        loss = torch.cat(losses).mean() + group_softmax_loss(torch.cat(margins), torch.tensor(owners),
                                                             torch.cat(positives))
        t1 = time.perf_counter()
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss.item(), time.perf_counter() - t0, t1 - t0

    batches = [[groups[rng.randrange(len(groups))] for _ in range(4)] for _ in range(args.repeats + 1)]
    full_t, prefix_t, gaps = [], [], []
    tokens.clear()
    for i, b in enumerate(batches):  # alternated on the same batch
        full_loss, parts = full_step(b)
        prefix_loss, seconds, _ = prefix_step(b)
        if i:
            full_t.append(sum(parts))
            prefix_t.append(seconds)
        gaps.append(abs(full_loss - prefix_loss) / max(abs(full_loss), 1e-12))
    f, p = statistics.median(full_t) * 1000, statistics.median(prefix_t) * 1000
    shared = engine.stats.prefix_tokens + engine.stats.continuation_tokens
    print(f"language-model tokens per step: {sum(tokens) / len(tokens):.0f} in the padded batch's rows, "
          f"{shared / len(batches):.0f} with the prefixes shared")
    print(f"batch 4, one padded forward: {f:.0f} ms per step; each record's query prefix shared: {p:.0f} ms "
          f"({f / p:.2f}x); largest relative loss difference {max(gaps):.1e}")


if __name__ == "__main__":
    main()
