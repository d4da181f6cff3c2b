"""A judge must prove itself while it trains: `unime train judge` holds out a share of its records and, every
`eval_steps` optimizer steps and at the end, scores the held-out (query, candidate) pairs with the model
being trained — P(Yes) = sigmoid(l_Yes − l_No) at the answer position of the judge prompt, exactly what
`JudgeScorer` computes when mining — and logs AUC, accuracy and the spread of P(Yes)
(`unime.mining.judge_check`), warning when the judge predicts its training pairs' Yes rate for every pair.

Every evaluation is added to `OUT/judge_eval.jsonl` (rewritten atomically); a resumed run first drops the
rows of steps after its checkpoint, which it evaluates again. The last one goes into `unime_reranker.json`
(``heldout``) and the command's output.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any, Sequence

from transformers import TrainerCallback

from unime.mining.judge_check import binary_metrics, format_metrics
from unime.models.prompts import NO, YES

log = logging.getLogger(__name__)

EVAL_FILE = "judge_eval.jsonl"
EVALUATIONS = 5  # evaluations over a run when eval_steps is not given (plus the final one)


def split_held_out(groups: list[list[Any]], fraction: float, seed: int) -> tuple[list[list[Any]], list[Any]]:
    """(training groups, held-out examples): whole queries are held out, a seeded `fraction` of the distinct
    queries (at least 2; none when fewer than 10), with every pair of every record that asks them. Holding
    out by record would leak: records that share a query (e.g. one per labelled positive) share negatives."""
    queries = list(dict.fromkeys(g[0].query.key for g in groups))
    if fraction <= 0 or len(queries) < 10:
        if fraction > 0:
            log.warning("judge: %d distinct queries are too few to hold some out; training on all, no held-out "
                        "check", len(queries))
        return groups, []
    rng = random.Random(seed)
    held = set(rng.sample(queries, max(2, round(fraction * len(queries)))))
    train = [g for g in groups if g[0].query.key not in held]
    examples = [ex for g in groups if g[0].query.key in held for ex in g]
    return train, examples


def score_pairs(model, collator, examples: Sequence[Any], *, batch_size: int = 8) -> list[float]:
    """P(Yes) of each pair example under `model` (the judge prompt, the answer position)."""
    import torch

    adapter = collator.adapter
    yes, no = adapter.single_token_id(YES), adapter.single_token_id(NO)
    param = next(p for p in model.parameters())
    was_training = model.training
    model.eval()
    out: list[float] = []
    try:
        with torch.no_grad():
            for s in range(0, len(examples), batch_size):
                batch = examples[s:s + batch_size]
                inputs = dict(collator.encode([collator.prompt_segments(e) for e in batch], [YES] * len(batch)))
                labels = inputs.pop("labels")
                n_answer = int((labels != -100).sum(dim=1).max())
                inputs = {k: (v.to(param.device, dtype=param.dtype) if torch.is_floating_point(v)
                              else v.to(param.device))
                          if hasattr(v, "to") else v for k, v in inputs.items()}
                logits = model(**inputs, use_cache=False, logits_to_keep=n_answer + 1).logits[:, 0, :].float()
                out += torch.sigmoid(logits[:, yes] - logits[:, no]).tolist()
    finally:
        model.train(was_training)
    return out


def training_loss_levels(groups: Sequence[Sequence[Any]], *, answer_tokens: int = 1,
                         group_weight: float = 0.0) -> dict[str, float | None]:
    """The judge's training losses at its base-rate level: what a model that predicts every pair's Yes/No
    from the label prior alone reaches, to read the logged losses against (`final_losses`).

    `pair`: the answer-token cross-entropy, H(b) at the training pairs' Yes share b, divided by the labelled
    tokens per row (`answer_tokens`: 1, or 1 + the end-of-turn tokens when they are trained — a prior-only
    model predicts those perfectly). `group` (the within-query softmax, `group_softmax_loss`): at equal
    margins a positive among n negatives costs ln(1 + n), averaged over the positives of groups that have
    negatives. `total` = pair + group_weight × group, the logged `loss`; `even_odds`: the same with the pair term of
    a judge answering Yes or No at even odds, ln 2 per labelled token (`loss_level_note`)."""
    import math

    answers = [ex.answer for g in groups for ex in g]
    b = answers.count(YES) / len(answers) if answers else 0.0
    pair = (-(b * math.log(b) + (1 - b) * math.log(1 - b)) if 0 < b < 1 else 0.0) / answer_tokens
    terms = []
    for g in groups:
        n_neg = sum(ex.answer == NO for ex in g)
        if n_neg:
            terms += [math.log(1 + n_neg)] * sum(ex.answer == YES for ex in g)
    group = sum(terms) / len(terms) if terms else None
    group_part = group_weight * group if group_weight > 0 and group is not None else 0.0
    return {"yes_share": b, "pair": pair, "group": group if group_weight > 0 else None, "total": pair + group_part,
            "even_odds": math.log(2) / answer_tokens + group_part}


def loss_level_note(final_loss: float, levels: dict) -> str:
    """"" or a note for a final loss above `even_odds`, what a judge answering Yes or No at even odds reaches: the
    loss is a cross-entropy over the whole vocabulary, so above that level the judge does not yet put its mass on the
    two answers, which the base-rate level assumes (QA: a 152k-token vocabulary after 4 steps read 12.2 against a
    base-rate level of 0.64, as if the judge were 20 times worse than a prior)."""
    if final_loss <= levels.get("even_odds", float("inf")):
        return ""
    return (f"; above {levels['even_odds']:.4f}, the level of even odds on Yes / No: the loss is over the whole "
            "vocabulary, and the judge does not yet put its mass on the two answers")


def final_losses(history: Sequence[dict[str, Any]], *, share: float = 0.1) -> dict[str, float]:
    """The mean of each logged loss (`loss`, `loss_pair`, `loss_group`) over the last `share` of the
    logged steps (at least one row): the level a run ended at, less noisy than its last log."""
    rows = [r for r in history if "loss" in r]
    tail = rows[-max(1, round(share * len(rows))):] if rows else []
    out = {}
    for key in ("loss", "loss_pair", "loss_group"):
        vals = [float(r[key]) for r in tail if key in r]
        if vals:
            out[key] = sum(vals) / len(vals)
    return out


class JudgeHeldOutCallback(TrainerCallback):
    """Scores the held-out pairs every `every` steps (0: about `EVALUATIONS` times a run) and at the end."""

    def __init__(self, examples: Sequence[Any], collator, out: str | Path, *, base_rate: float, every: int = 0,
                 batch_size: int = 8):
        self.examples = list(examples)
        self.labels = [1.0 if ex.answer == YES else 0.0 for ex in self.examples]
        self.collator, self.base_rate, self.every, self.batch_size = collator, base_rate, every, batch_size
        self.path = Path(out) / EVAL_FILE
        self.history: list[dict[str, Any]] = []
        self._last_step = -1

    def evaluate(self, model, step: int) -> dict[str, Any]:
        scores = score_pairs(model, self.collator, self.examples, batch_size=self.batch_size)
        groups = [f"{getattr(ex, 'source', None)}: {ex.record}" for ex in self.examples]  # a record: file and line
        m = {"step": step, **binary_metrics(self.labels, scores, base_rate=self.base_rate, groups=groups)}
        self.history.append(m)
        self._last_step = step
        log.info("judge held-out, step %d: %s", step, format_metrics(m))
        for w in m["warnings"]:
            log.warning("judge held-out, step %d: %s", step, w)
        self._write()
        return m

    def _write(self) -> None:
        from unime.data.atomic import atomic_open

        with atomic_open(self.path) as fh:  # a kill mid-write leaves the previous log, never half a row
            fh.writelines(json.dumps(m) + "\n" for m in self.history)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.every <= 0:
            self.every = max(1, state.max_steps // EVALUATIONS)
        if not state.is_world_process_zero or not self.path.is_file():
            return
        from unime.outdir import require_replaceable

        require_replaceable(self.path.parent, self.path.name)  # never a file this command did not write
        if state.global_step == 0:  # a fresh run (not a resumption): a fresh log
            self.path.unlink()
            return
        # a resumption from the checkpoint at global_step: the rows after it were written by the killed run
        # past its last save and are evaluated again (QA: they appeared twice)
        rows = [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
        self.history = [r for r in rows if r["step"] <= state.global_step]
        self._last_step = self.history[-1]["step"] if self.history else -1
        self._write()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 and state.is_world_process_zero:
            self.evaluate(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.global_step != self._last_step and state.is_world_process_zero:
            self.evaluate(model, state.global_step)

    @property
    def final(self) -> dict[str, Any] | None:
        return self.history[-1] if self.history else None
