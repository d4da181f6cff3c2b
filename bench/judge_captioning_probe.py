"""Does the tiny model read multi-object scenes at all, or only fail to say so as a Yes/No judge?

`bench/judge_task_learnability.py` shows the tiny judge cannot fit its own t2i records (captions of two or
three objects with size, colour and position). This probe asks the same model a generative question
instead: it fine-tunes it as a captioner (TRL's `SFTTrainer`, the reasoner SFT's trainer; prompt = the
scene image + "Describe the image.", completion = the scene's caption) on the task's captions of a corpus
world, then scores the task's judge records of ANOTHER world (other seed, same records as
`judge_task_learnability.py`: one positive, negatives from the task's other answers) in two ways:

- the model's judge score P(Yes) (SPEC 1.3, `JudgeScorer`), before captioning;
- the caption's mean token log-likelihood given each candidate image, before and after captioning;
- with `--joint-steps N`: P(Yes) of the given model trained N steps as a judge (answer-token loss +
  within-record softmax on l_Yes - l_No, one labelled record of the corpus task a step) jointly with the
  captioning loss (`--joint-captions` captions a step, weight 1): does the captioning signal reach the
  Yes/No answer when both are trained together? With `--perturbed N` each step also has a group of
  minimal pairs: the record's positive image against its own caption (Yes) and N copies of the caption
  with one colour, shape, size or position word changed (No), so that the answer is taught one attribute
  at a time. `--joint-captions 0` leaves the captioning loss out.

Printed: within-query AUC of each (the positive against the query's negatives), and the captioner's
held-out caption loss with the true image against a mismatched image (the gap is what it reads from the
image). The captioner is saved under OUT/captioner (an ordinary HF folder; give it to
`judge_task_learnability.py --model` to train a Yes/No judge from it).

    OMP_NUM_THREADS=2 python bench/judge_captioning_probe.py --model JUDGE_OR_BASE --out WORK \
        [--task t2i] [--corpus-scenes 3000 --corpus-per-task 1000] [--steps 1500 --batch-size 8 --lr 1e-3] \
        [--joint-steps 1500 [--joint-captions 4] [--perturbed 3]]

Measured figures: the closing note of issue #13.
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

from judge_task_learnability import task_records

from unime.demo.captioning import caption_prompt, caption_row


def caption_of(record) -> str:
    return record.query.text.split("caption: ", 1)[-1]


def perturb(caption: str, rng: random.Random) -> str:
    """`caption` with one colour, shape or size word, or one position phrase ("at the top"), replaced by
    another of its kind (whole phrases, so that the change leaves the world's grammar intact)."""
    import re

    from unime.data import vocab

    kinds = [tuple(vocab.COLOURS), vocab.SHAPES, vocab.SIZES, tuple(vocab.POSITION_PHRASES.values())]
    spots = [(m.start(), m.end(), kind) for kind in kinds for w in kind
             for m in re.finditer(rf"\b{re.escape(w)}\b", caption)]
    start, end, kind = rng.choice(spots)
    old = caption[start:end]
    return caption[:start] + rng.choice([x for x in kind if x != old]) + caption[end:]


def within_query_auc(rows: list[list[float]]) -> float:
    """Mean over queries of the share of negatives scored below the positive (row[0]); ties count half."""
    shares = [sum((r[0] > x) + 0.5 * (r[0] == x) for x in r[1:]) / (len(r) - 1) for r in rows]
    return sum(shares) / len(shares)


class CaptionScorer:
    """Mean log-likelihood of a caption's tokens (and the end of turn) given an image, through the family
    adapter's prompt and processor (the rows `SFTTrainer` trains on, token for token)."""

    def __init__(self, model, adapter):
        from unime.embed_rl.reasoner_sft import end_of_turn_text

        self.model, self.adapter = model.eval(), adapter
        self.eot = end_of_turn_text(adapter)

    def prompt(self, image) -> tuple[str, list]:
        return caption_prompt(image, self.adapter)

    def row(self, image, caption: str) -> dict:
        return caption_row(image, caption, self.adapter, self.eot)

    def caption_loss(self, pairs: list):
        """Mean next-token loss of the captions (and end of turn) given their images: `pairs` of (image, caption)."""
        prompts = [self.prompt(im) for im, _ in pairs]
        enc = self.adapter.processor_inputs([p + c + self.eot for (p, _), (_, c) in zip(prompts, pairs)],
                                            [s for _, s in prompts], padding_side="right")
        labels = enc["input_ids"].clone()
        labels[enc["attention_mask"] == 0] = -100
        for i, (p, segs) in enumerate(prompts):
            labels[i, : len(self.adapter.processor_inputs([p], [segs])["input_ids"][0])] = -100
        return self.model(**enc, labels=labels).loss

    def log_likelihoods(self, caption: str, images: list) -> list[float]:
        import torch

        prompts = [self.prompt(im) for im in images]
        enc = self.adapter.processor_inputs([p + caption + self.eot for p, _ in prompts], [s for _, s in prompts],
                                            padding_side="right")
        n_prompt = len(self.adapter.processor_inputs([prompts[0][0]], [prompts[0][1]])["input_ids"][0])
        with torch.no_grad():
            logits = self.model(**enc).logits.float()
        ids = enc["input_ids"][:, 1:]
        lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[..., None])[..., 0]
        mask = enc["attention_mask"][:, 1:].clone()
        mask[:, : n_prompt - 1] = 0
        return ((lp * mask).sum(1) / mask.sum(1)).tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="judge or base checkpoint (HF folder)")
    ap.add_argument("--out", required=True, help="work folder (created)")
    ap.add_argument("--task", default="t2i")
    ap.add_argument("--corpus-seed", type=int, default=2)
    ap.add_argument("--corpus-scenes", type=int, default=3000)
    ap.add_argument("--corpus-per-task", type=int, default=1000)
    ap.add_argument("--eval-seed", type=int, default=7, help="seed of the world whose judge records are scored")
    ap.add_argument("--queries", type=int, default=80, help="judge records scored")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--joint-steps", type=int, default=0, help="judge + captioning trained together (0: skip)")
    ap.add_argument("--joint-captions", type=int, default=4, help="captions per joint step (0: no captioning loss)")
    ap.add_argument("--perturbed", type=int, default=0, help="minimal-pair captions per joint step (0: none)")
    args = ap.parse_args()

    from unime.data.images import ImageLoader
    from unime.data.synth import World, WorldSizes, generate_world
    from unime.embed_rl.reasoner_sft import sft_trainer
    from unime.models.hf_arguments import hf_training_arguments
    from unime.models.judge import JudgeScorer
    from unime.models.loading import load_model
    from trl import SFTConfig

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=False)
    small = dict(eval_scenes=40, ood_scenes=30, eval_queries=6, candidates=6, retrieval_images=8,
                 compositional_pairs=6)
    corpus, eval_world = out / "corpus", out / "eval_world"
    generate_world(corpus, seed=args.corpus_seed, sizes=WorldSizes(
        train_scenes=args.corpus_scenes, train_per_task=args.corpus_per_task, **small))
    generate_world(eval_world, seed=args.eval_seed, sizes=WorldSizes(train_scenes=1200, train_per_task=300, **small))
    records = task_records(eval_world, args.task, 3, 0, False)
    random.Random(0).shuffle(records)
    records = records[: args.queries]
    eval_images = ImageLoader(eval_world)

    judge = JudgeScorer.from_pretrained(args.model, data_root=eval_world)
    judge_rows = [judge.score_candidates(r.query, [r.positive, *r.negatives]).tolist() for r in records]
    print(f"{args.task}: {len(records)} judge records of a world of seed {args.eval_seed}")
    print(f"  judge P(Yes), the given model: within-query AUC {within_query_auc(judge_rows):.3f}")

    def likelihood_auc(scorer) -> float:
        rows = [scorer.log_likelihoods(caption_of(r),
                                       [eval_images.load(i.images[0]) for i in (r.positive, *r.negatives)])
                for r in records]
        return within_query_auc(rows)

    loaded = load_model(args.model, trainable=True)
    scorer = CaptionScorer(loaded.model, loaded.adapter)
    print(f"  caption log-likelihood, the given model: within-query AUC {likelihood_auc(scorer):.3f}")

    world = World.load(corpus)
    corpus_images = ImageLoader(corpus)
    pairs = [(r.positive.images[0], caption_of(r)) for r in world.records if r.dataset == args.task]
    random.Random(0).shuffle(pairs)
    held, train = pairs[:64], pairs[64:]
    rows = [scorer.row(corpus_images.load(p), c) for p, c in train]
    sft_args = hf_training_arguments(
        SFTConfig, output_dir=str(out / "sft"), epochs=1.0, max_steps=args.steps, batch_size=args.batch_size,
        grad_accum=1, learning_rate=args.lr, warmup_steps=max(args.steps // 30, 1), weight_decay=0.0,
        logging_steps=max(args.steps // 10, 1), save_steps=10 * args.steps, save_total_limit=1, seed=0,
        use_cpu=True, bf16=False, fp16=False, show_progress=False, remove_unused_columns=True,
        completion_only_loss=True, max_length=None)
    loaded.model.train()
    trainer = sft_trainer(loaded.model, loaded.processor, rows, sft_args)
    result = trainer.train()
    trainer.save_model(str(out / "captioner"))
    loaded.processor.save_pretrained(str(out / "captioner"))
    print(f"  captioning: {len(train)} captions, {args.steps} steps of {args.batch_size}, "
          f"train loss {result.training_loss:.3f}, {result.metrics.get('train_runtime', 0):.0f} s")

    scorer = CaptionScorer(loaded.model, loaded.adapter)
    true = [scorer.log_likelihoods(c, [corpus_images.load(p)])[0] for p, c in held]
    mismatched = [scorer.log_likelihoods(c, [corpus_images.load(held[(i + 1) % len(held)][0])])[0]
                  for i, (_, c) in enumerate(held)]
    print(f"  held-out caption loss per token: true image {-sum(true) / len(true):.3f}, "
          f"mismatched image {-sum(mismatched) / len(mismatched):.3f}")
    print(f"  caption log-likelihood, the captioner: within-query AUC {likelihood_auc(scorer):.3f}")
    if args.joint_steps:
        joint(args, records, corpus, eval_world, [(corpus_images.load(p), c) for p, c in train])


def joint(args, eval_records: list, corpus: Path, eval_world: Path, captions: list) -> None:
    """The given model trained as a judge and a captioner at once; P(Yes) within-query AUC on `eval_records`."""
    import torch
    import torch.nn.functional as F

    from unime.data.images import ImageLoader
    from unime.data.items import Item
    from unime.models.judge import JudgeScorer
    from unime.models.loading import load_model

    torch.manual_seed(0)
    rnd = random.Random(0)
    loaded = load_model(args.model, trainable=True)
    model, adapter = loaded.model, loaded.adapter
    judge = JudgeScorer(model, loaded.processor, adapter, image_loader=ImageLoader(corpus))
    captioner = CaptionScorer(model, adapter)
    train = task_records(corpus, args.task, 3, 0, False)
    k = len(train[0].negatives) + 1
    chance = -(1 / k * math.log(1 / k) + (1 - 1 / k) * math.log(1 - 1 / k)) + math.log(k)

    def margins(rec):
        segs = [judge.prompt_segments(rec.query, c) for c in (rec.positive, *rec.negatives)]
        enc = adapter.processor_inputs([adapter.render_user_turn(s) for s in segs], segs, padding_side="left")
        logits = model(**enc).logits[:, -1].float()
        return logits[:, judge.yes_id] - logits[:, judge.no_id]

    def text_margins(rec):
        """The positive image judged against its caption and `args.perturbed` captions one word away."""
        caption = caption_of(rec)
        head = rec.query.text[: len(rec.query.text) - len(caption)]
        queries, seen = [rec.query], {caption}
        while len(queries) < 1 + args.perturbed:
            changed = perturb(caption, rnd)
            if changed not in seen:
                seen.add(changed)
                queries.append(Item(text=head + changed))
        segs = [judge.prompt_segments(q, rec.positive) for q in queries]
        enc = adapter.processor_inputs([adapter.render_user_turn(s) for s in segs], segs, padding_side="left")
        logits = model(**enc).logits[:, -1].float()
        return logits[:, judge.yes_id] - logits[:, judge.no_id]

    def held_auc() -> float:
        model.eval()
        scorer = JudgeScorer(model, loaded.processor, adapter, image_loader=ImageLoader(eval_world))
        rows = [scorer.score_candidates(r.query, [r.positive, *r.negatives]).tolist() for r in eval_records]
        model.train()
        return within_query_auc(rows)

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    warm = max(args.joint_steps // 30, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, 1 - s / args.joint_steps))
    labels, target = torch.tensor([1.0] + [0.0] * (k - 1)), torch.tensor([0])
    text_labels = torch.tensor([1.0] + [0.0] * args.perturbed)
    if args.perturbed:  # the minimal pairs' group adds its own chance level
        kt = args.perturbed + 1
        chance += -(1 / kt * math.log(1 / kt) + (1 - 1 / kt) * math.log(1 - 1 / kt)) + math.log(kt)
    model.train()
    judge_sum = caption_sum = 0.0
    every = max(args.joint_steps // 6, 1)
    for step in range(1, args.joint_steps + 1):
        rec = rnd.choice(train)
        m = margins(rec)
        judge_loss = F.binary_cross_entropy_with_logits(m, labels) + F.cross_entropy(m[None], target)
        if args.perturbed:
            mt = text_margins(rec)
            judge_loss = judge_loss + F.binary_cross_entropy_with_logits(mt, text_labels) + \
                F.cross_entropy(mt[None], target)
        caption_loss = captioner.caption_loss(rnd.sample(captions, args.joint_captions)) if args.joint_captions \
            else torch.zeros(())
        (judge_loss + caption_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        judge_sum, caption_sum = judge_sum + judge_loss.item(), caption_sum + caption_loss.item()
        if step % every == 0 or step == args.joint_steps:
            n = every if step % every == 0 else step % every
            print(f"  joint step {step}: judge loss {judge_sum / n:.3f} (chance {chance:.3f}), caption loss "
                  f"{caption_sum / n:.3f}, judge P(Yes) within-query AUC {held_auc():.3f}")
            judge_sum = caption_sum = 0.0


if __name__ == "__main__":
    main()
