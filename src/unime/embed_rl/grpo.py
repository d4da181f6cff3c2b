"""EG-RL (SPEC §2.3): embedder-guided GRPO of the Reasoner on TRL's `GRPOTrainer`.

No home-made RL loop: TRL samples `num_generations` (n) completions per prompt, computes group-normalised
advantages, the clipped policy loss and the KL term (`beta`, 0.01) to the reference policy. What this
module adds is the data layout and the reward:

**Rows.** Each (query, positive) pair contributes two consecutive rows — the query's reasoning prompt,
then the positive's — with columns `prompt` (conversational, `{"type": "image"}` placeholders),
`images`, `pair_id`, `side` ("query" / "positive") and `item` (the item as JSON, for the embedder).
Pairs are shuffled as units (one permutation per epoch, seeded; an epoch holds whole batches, its pairs
left over sit it out) and TRL's own shuffling is off, so a batch is always whole, distinct pairs: TRL takes
consecutive prompts, each repeated n times, and a step generates and
rewards `2 · pairs_per_batch · n` completions per process (one generation per step), whose loss runs in micro-batches
of `--micro-batch` (TRL's `per_device_train_batch_size`) accumulated over TRL's `steps_per_generation`.
`embed_rl_grpo_config` derives and checks those numbers; the reward function re-checks every batch
from the `pair_id` / `side` columns it receives (`RolloutLayout.from_completion_keys`) and stops with
a clear error if a pair is split — it never assumes a completion order.

**Reward** (`EmbedRLReward`, one TRL reward function returning the weighted total):
format 0.05 · r_fmt + outcome 0.8 · r_out + process 0.2 · r_proc, all computed by
`unime.reasoning.rewards`. The frozen embedder (loaded once) embeds every rollout with its item and
evidence (`ReasonedEmbedder`, SPEC 2.1); S = cosine(query rollouts, positive rollouts) gives acc,
margin and r_out for both sides (the rollouts of pairs sharing a positive item, `Item.key` as the contrastive
trainer's `--mask-duplicates`, are not each other's negatives, in the outcome and the process rewards:
`mask_duplicates`, on by default); the process
judge (a generative checkpoint, `Reasoner.pick`) is shown each rollout's reasoning with its item's text and, in a
shuffled order, the other side's rollouts of the same pair and, of each of the `hard_negative_pairs` hardest negative
pairs, the rollout most similar to it (as the release: n + hard_negative_pairs candidates; the paper's 4 need
`pairs_per_batch` >= 5: a batch of B pairs has B - 1 negatives, and a larger value is refused). The per-step mean of
every component is logged to TRL's metrics, to
`reward_log.csv` and plotted to `reward_curves.png`.

**TRL adaptations.** The processor handed to TRL pads on the left (`prepare_policy_processor`; TRL
does this only for processors it loads itself). `EmbedRLGRPOTrainer`: TRL 1.16 returns `None` as the image list
of a text-only prompt, which its processor call then rejects when a batch mixes text-only and image prompts (a text
query with an image positive is the common case here). The subclass maps `None` to `[]` — the
processor accepts that — and, as TRL slices the vision inputs per chunk of its log-probability forwards (one
--micro-batch), gives a chunk without an image none instead of empty ones; it changes nothing else.

Defaults follow the paper: n = 4, beta = 0.01, lr 3e-6, temperature 1.0, loss "grpo" with group
scaling. Rollouts sample the full distribution at that temperature (TRL's top_k 0, top_p 1, no repetition penalty):
a policy checkpoint's generation_config chat defaults (Qwen2-VL-Instruct's top_k 1 would make a group's rollouts
one) are not taken. On CPU: fp32 (TRL's bf16 default fails or crawls there), no vLLM. Activation checkpointing only with
--gradient-checkpointing, on every device (TRL's default of on is not taken).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from unime.data.items import Item, Record
from unime.data.roots import resolve_data_root
from unime.embed_rl.stage_options import ReasonerStageOptions, warmup_check
from unime.errors import DataError, OptionError, require_extra
from unime.models.export import ExportOptions
from unime.models.hf_arguments import TrainerArgOptions, non_reentrant_checkpointing_callback
from unime.models.loading import DeviceOptions
from unime.models.lora import GENERATIVE_LORA_OPTIONS
from unime.options import lr_scheduler_option, option
from unime.outdir import is_main_process
from unime.reasoning.tcot import TCOT_LENGTH_HELP, TCOT_MAX_NEW_TOKENS

# TRL's GRPOConfig `loss_type` values ("Supported values are ..." of its help), copied: importing trl loads torch, which
# parsing a command line does not (tests/train/test_hf_arguments.py keeps the copy equal to the installed TRL's)
GRPO_LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")

log = logging.getLogger(__name__)

QUERY, POSITIVE = "query", "positive"
REWARD_LOG_COLUMNS = ["step", "completions", "format", "outcome", "process", "total", "acc", "margin",
                      "judge_parsed", "judge_picked_positive", "evidence_left_out"]
# the rest are means (floats, nan when not computed); evidence_left_out: the step's pieces of evidence the crop rules
# left out (empty in a log written before it was counted)
_INTEGER_COLUMNS = frozenset({"step", "completions", "evidence_left_out"})


# ---------------------------------------------------------------------------------------------------
# rows


def grpo_rows(records: Sequence[Record], loader, *, epochs: int = 1, seed: int = 0, pairs_per_step: int = 1,
              source: str | None = None, policy=None) -> list[dict[str, Any]]:
    """Dataset rows for EG-RL: for each epoch a seeded permutation of the pairs, each pair as its query row
    then its positive row. `loader` is an `ImageLoader` for the items' images.

    TRL's sampler (shuffling off) takes the rows in fixed runs of `pairs_per_step` pairs (--pairs-per-batch x the
    processes) and drops a last short run. So that no step holds the end of one epoch and the start of the next (the
    same pair twice, which the reward refuses), every epoch but the last keeps only the first whole steps' pairs of
    its permutation: the N mod `pairs_per_step` pairs left sit that epoch out (a different few each epoch), as TRL
    leaves out the last epoch's (and a one-epoch run's) short step. A run is then epochs x (N // pairs_per_step)
    steps, each of distinct pairs, each pair at most once an epoch; with N a multiple of `pairs_per_step`, or one
    epoch, the rows are those of every epoch's whole permutation."""
    from unime.reasoning.reasoner import conversational_prompt, reasoning_prompt_segments

    from unime.data.io import record_label
    from unime.errors import DataError

    seen: dict[str, int] = {}
    for i, rec in enumerate(records):
        pid = rec.id or str(i)
        if pid in seen:  # the reward pairs rollouts by this id
            first = record_label(records[seen[pid]], seen[pid])  # its line and id, as every message names it
            raise DataError(f"records {first} and {record_label(rec, i)} share the id {pid!r}; EG-RL pairs rollouts "
                            "by record id", source=source, record=record_label(rec, i), field="id")
        seen[pid] = i
    from unime.data.io import origin_of

    prompts: dict[tuple[int, str], tuple[list, list]] = {}
    kept: list[int] = []
    for i, rec in enumerate(records):
        rid = rec.id or str(i)
        where = origin_of(rec) or rid  # the record's line when it was read from a file
        try:
            for side, item in ((QUERY, rec.query), (POSITIVE, rec.positive)):
                for j, r in enumerate((*item.images, *item.video)):
                    if not isinstance(r, str):  # the reward reads the item back from JSON (QA: a bare message)
                        field = f"{side}.images[{j}]" if j < len(item.images) else f"{side}.video"
                        raise DataError("an inline image (e.g. a `reason materialize` output's evidence crops): GRPO "
                                        "takes (query, positive) records whose images are files, e.g. `reason "
                                        "split`'s rl.jsonl", source=source, record=where, field=field)
                images = [loader.load(r, source=source, record=where, field=f"{side}.images[{j}]")
                          for j, r in enumerate(item.images)]
                frames = loader.load_video(item.video, source=source, record=where, field=f"{side}.video") \
                    if item.video else []
                segs = reasoning_prompt_segments(item.text, images, frames, "query" if side == QUERY else "target",
                                                 record=rid)
                prompts[(i, side)] = conversational_prompt(segs)
        except DataError as e:
            if policy is None:
                raise
            e.reason = getattr(e, "reason", None) or "image"
            policy.handle(e)  # counted (skip) or raised
            continue
        kept.append(i)
    records = [records[i] for i in kept]
    prompts = {(n, side): prompts[(i, side)] for n, i in enumerate(kept) for side in (QUERY, POSITIVE)}
    rng = np.random.default_rng(seed)
    whole_steps = len(records) - len(records) % pairs_per_step  # the pairs of an epoch's whole steps
    rows = []
    for epoch in range(epochs):
        order = rng.permutation(len(records)).tolist()
        for i in order if epoch == epochs - 1 else order[:whole_steps]:
            rec = records[i]
            for side, item in ((QUERY, rec.query), (POSITIVE, rec.positive)):
                messages, images = prompts[(i, side)]
                rows.append({"prompt": messages, "images": images, "pair_id": rec.id or str(i), "side": side,
                             "item": json.dumps(item.to_dict(), ensure_ascii=False)})
    return rows


# ---------------------------------------------------------------------------------------------------
# the reward


class RewardLog:
    """Per-step means of the reward components, written to CSV (atomically) after every batch, plotted.
    Under data parallelism each process rewards its own batch (its pairs are its negatives); the CSV holds
    the main process's means, TRL's own log (`embed_rl/*` metrics) the means over processes."""

    def __init__(self, csv_path: str | os.PathLike | None = None, *, resume: bool = False):
        self.rows: list[dict[str, float]] = []
        self.csv_path = Path(csv_path) if csv_path else None
        if resume and self.csv_path is not None and self.csv_path.is_file():
            self.rows = read_reward_log(self.csv_path)

    def truncate(self, last_step: int) -> None:
        """Drop rows after `last_step` (resuming from a checkpoint re-runs the steps after it)."""
        self.rows = [r for r in self.rows if r["step"] <= last_step]

    def add(self, row: dict[str, float]) -> None:
        self.rows.append(row)
        if self.csv_path is not None and is_main_process():
            self.write_csv(self.csv_path)

    def write_csv(self, path: str | os.PathLike) -> None:
        from unime.data.atomic import atomic_open

        with atomic_open(path) as fh:
            w = csv.DictWriter(fh, fieldnames=REWARD_LOG_COLUMNS)
            w.writeheader()
            for r in self.rows:
                w.writerow({k: r.get(k) for k in REWARD_LOG_COLUMNS})

    def plot(self, path: str | os.PathLike, *, title: str = "EG-RL reward components (per-step mean)") -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from unime.data.atomic import atomic_path

        steps = [r["step"] for r in self.rows]
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        labels = {"format": "format (r_fmt)", "outcome": "outcome (r_out)", "process": "process (r_proc)",
                  "total": "total (weighted sum)"}
        for key in ("format", "outcome", "process", "total"):
            axes[0].plot(steps, [r[key] for r in self.rows], marker="o", ms=3, label=labels[key])
        axes[0].set_xlabel("step")
        axes[0].set_ylabel("mean reward")
        axes[0].set_title(title, fontsize=9)
        axes[0].legend(fontsize=8)
        for key in ("acc", "margin", "judge_picked_positive"):
            axes[1].plot(steps, [r[key] for r in self.rows], marker="o", ms=3, label=key)
        axes[1].set_xlabel("step")
        axes[1].set_title("outcome acc / margin, judge picks", fontsize=9)
        axes[1].legend(fontsize=8)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)


def read_reward_log(path: Path) -> list[dict[str, float]]:
    """The rows of a `RewardLog`'s CSV, each column a number (integer columns integers: a log of a resumed run from
    before that fix wrote step 1.0, and still reads). The trainer writes the file whole after every step (atomically),
    so one it cannot read was changed by hand (a line cut, garbage): a `DataError` naming the file, the line and the
    column, not a traceback; it cannot be rebuilt from the checkpoint (which keeps only TRL's means over processes),
    so the message says to restore it or delete it (the resumed run's log then holds only the steps redone)."""
    fix = ("this file is written whole after every step, so it was changed: restore it, or delete it to resume "
           "(the run's reward log then starts at the checkpoint's step)")
    rows = []
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in REWARD_LOG_COLUMNS if c != "evidence_left_out" and c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"not the reward log's header (no column {', '.join(missing)}); {fix}",
                                source=str(path), record="line 1")
            for r in reader:
                row = {}
                for k in REWARD_LOG_COLUMNS:
                    v = r.get(k)
                    if k == "evidence_left_out" and (v == "" or v is None and k not in reader.fieldnames):
                        continue  # a log written before it was counted (None: no such column; a line cut: "")
                    try:
                        row[k] = int(float(v)) if k in _INTEGER_COLUMNS else float(v)
                    except (TypeError, ValueError, OverflowError):
                        what = "missing (the line is cut short)" if v is None else f"not a number: {v!r}"
                        raise DataError(f"{what}; {fix}", source=str(path), record=f"line {reader.line_num}",
                                        field=k) from None
                if r.get(None):  # more values than columns
                    raise DataError(f"more values than the header's {len(reader.fieldnames)} columns; {fix}",
                                    source=str(path), record=f"line {reader.line_num}")
                rows.append(row)
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"not a readable CSV ({e}); {fix}", source=str(path)) from None
    return rows


COMPLETIONS_FILE = "completions.jsonl"


class CompletionLog:
    """Every rewarded completion, one JSON line each (`COMPLETIONS_FILE`): step, pair_id, side, rollout, the
    completion's text and its rewards (format, outcome with its acc and margin, process, total = the weighted sum TRL
    gets), appended after every batch by the main process, so that a step's rewards can be checked by hand. Resumed
    from a checkpoint of step N (`resume_from_step`), the lines of later steps (and a line cut by a kill) are dropped:
    those steps are redone; a run started over starts an empty file."""

    def __init__(self, path: str | os.PathLike | None = None, *, resume_from_step: int | None = None):
        self.path = Path(path) if path else None
        if self.path is None or not is_main_process():
            return
        kept = []
        if resume_from_step is not None and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:  # the last line, cut by a kill
                    continue
                if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= resume_from_step:
                    kept.append(line + "\n")
        from unime.data.atomic import atomic_open

        with atomic_open(self.path) as fh:
            fh.write("".join(kept))

    def add(self, rows: Sequence[dict[str, Any]]) -> None:
        if self.path is None or not is_main_process():
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


class EmbedRLReward:
    """TRL reward function: r = w_fmt·r_fmt + w_out·r_out + w_proc·r_proc per completion (SPEC 2.3).

    Needs the dataset columns `pair_id`, `side` and `item` (see `grpo_rows`). `judge` makes the process pick: a
    `Reasoner` (any generative checkpoint, asked for a number) or a `ScoredPick` (a Yes/No judge scoring each
    candidate); it may be None only if the process weight is 0. `hard_negative_pairs` (default 1, as the command
    line's) must be below the pairs of every batch it rewards (`check_hard_negative_pairs`: B pairs have B - 1);
    `pairs_per_batch`, the pairs of the batches it will get (the command line's --pairs-per-batch), checks it as the
    reward is built, before the first generation (without it, the first batch is checked when it arrives).
    """

    __name__ = "embed_rl"

    def __init__(self, embedder, judge=None, *, group_size: int, weights: tuple[float, float, float] = (0.05, 0.8, 0.2),
                 neg_temperature: float = 0.5, outcome_scale: float = 0.5, hard_negative_pairs: int = 1,
                 judge_max_new_tokens: int = 8, seed: int = 0, reward_log: RewardLog | None = None,
                 mask_duplicates: bool = True, pairs_per_batch: int | None = None,
                 completion_log: CompletionLog | None = None):
        check_reward_weights(weights)
        if judge is None and weights[2] != 0:
            raise ValueError("the process reward needs a judge (or set its weight to 0)")
        if pairs_per_batch is not None:
            check_hard_negative_pairs(hard_negative_pairs, pairs_per_batch)
        self.embedder = embedder  # a ReasonedEmbedder around the frozen embedder
        self.judge = judge
        self.group_size = group_size
        self.weights = tuple(weights)
        self.neg_temperature = neg_temperature
        self.outcome_scale = outcome_scale
        self.hard_negative_pairs = hard_negative_pairs
        self.mask_duplicates = mask_duplicates  # pairs sharing a positive item are not each other's negatives
        self.judge_max_new_tokens = judge_max_new_tokens
        self.seed = seed
        self.reward_log = reward_log if reward_log is not None else RewardLog()
        self.completion_log = completion_log  # every completion with its rewards (None: not written)
        self.calls = 0
        self.last: dict[str, Any] | None = None
        # the negative pairs the batches actually had: the outcome reward's (B - 1), the process judge's shown
        self.negative_pairs_seen: dict[str, set[int]] = {"outcome": set(), "process": set()}
        self.left_out_examples: list[str] = []  # the first pieces of evidence the embedder left out (the log's e.g.)
        self._warned_unparsed = False

    def negative_pairs(self) -> dict[str, list[int]]:
        """The negative pairs the rewarded batches had, for the summary: {"outcome": [...], "process": [...]}, each
        the distinct counts seen (one value when every batch had the same; process [] when no judge was asked)."""
        return {k: sorted(v) for k, v in self.negative_pairs_seen.items()}

    def layout(self, pair_id: Sequence[Any], side: Sequence[str]):
        from unime.reasoning.rewards import RolloutLayout

        try:
            return RolloutLayout.from_completion_keys(list(pair_id), list(side), self.group_size)
        except ValueError as e:
            raise ValueError(
                f"EG-RL batch does not hold whole (query, positive) pairs with {self.group_size} rollouts per side: "
                f"{e}. Each pair must contribute its query row and its positive row to the same batch; build the "
                "dataset with `grpo_rows` (pairs interleaved, each epoch in whole steps: its pairs_per_step, TRL "
                "shuffling off) and the config with "
                "`embed_rl_grpo_config` (a generation of 2 x pairs_per_batch x num_generations completions per "
                "process: per_device_train_batch_size x steps_per_generation). "
                f"Batch: {list(zip(pair_id, side))}") from None

    def __call__(self, prompts=None, completions=None, *, pair_id=None, side=None, item=None, trainer_state=None,
                 log_metric=None, **_: Any) -> list[float]:
        from unime.reasoning.rewards import completion_text

        if pair_id is None or side is None or item is None:
            raise ValueError("EmbedRLReward needs the dataset columns pair_id, side and item (see grpo_rows)")
        texts = [completion_text(c) for c in completions]
        layout = self.layout(pair_id, side)
        items = [Item.from_dict(json.loads(x), record=f"{p}/{s}") for x, p, s in zip(item, pair_id, side)]
        step = int(getattr(trainer_state, "global_step", self.calls) or 0)
        components = self.compute(texts, items, layout, step=step)
        self.last = components  # per-completion values of the latest batch (inspection, tests)
        components = dict(components)
        total = components.pop("total_per_completion")
        per = components.pop("per_completion")
        row = {"step": step + 1, "completions": len(texts), **components}
        self.reward_log.add(row)
        if self.completion_log is not None:
            self.completion_log.add([
                {"step": step + 1, "pair_id": p, "side": s, "rollout": layout.slot(f)[2], "completion": t,
                 **{k: float(per[k][f]) for k in ("format", "outcome", "acc", "margin", "process")},
                 "total": float(total[f])}
                for f, (p, s, t) in enumerate(zip(pair_id, side, texts))])
        if log_metric is not None:
            for k in ("format", "outcome", "process", "acc", "margin", "judge_parsed", "judge_picked_positive"):
                log_metric(f"embed_rl/{k}", row[k])
        self.calls += 1
        return total

    def compute(self, texts: Sequence[str], items: Sequence[Item], layout, *, step: int = 0) -> dict[str, Any]:
        """All components for one batch (flat completion order). Returns per-batch means and
        `total_per_completion`."""
        from unime.reasoning.rewards import combine_rewards, format_reward

        check_hard_negative_pairs(self.hard_negative_pairs, layout.batch_pairs)  # before any work on the batch
        fmt = np.asarray(format_reward(texts), dtype=np.float64)
        left_out = getattr(self.embedder, "left_out", None)  # a ReasonedEmbedder's: the evidence it left out
        before = len(left_out) if left_out is not None else 0
        E = self.embedder.encode(list(items), list(texts))
        dropped = left_out[before:] if left_out is not None else []
        self.left_out_examples.extend(dropped[:3 - len(self.left_out_examples)])
        dup = self.duplicate_pairs(items, layout)
        self.negative_pairs_seen["outcome"].update(layout.batch_pairs - 1 - len(d) for d in dup)
        oc = layout.outcome_rewards(E, neg_temperature=self.neg_temperature, scale=self.outcome_scale,
                                    positive_keys=self.positive_keys(items, layout))
        proc, parsed, picked_pos = self.process(texts, items, layout.similarity_matrix(E), layout, oc.margin,
                                                step=step)
        total = combine_rewards(fmt, oc.reward, proc, self.weights)
        return {"format": float(fmt.mean()), "outcome": float(oc.reward.mean()), "process": float(np.mean(proc)),
                "total": float(np.mean(total)), "acc": float(oc.acc.mean()), "margin": float(oc.margin.mean()),
                "judge_parsed": parsed, "judge_picked_positive": picked_pos, "evidence_left_out": len(dropped),
                "total_per_completion": total,
                "per_completion": {"format": fmt, "outcome": oc.reward, "process": proc, "margin": oc.margin,
                                   "acc": oc.acc}}

    def positive_keys(self, items: Sequence[Item], layout) -> list[str] | None:
        """Each pair's positive identity (`Item.key`: same text and images, the identity of the contrastive
        trainer's `--mask-duplicates`), or None with `mask_duplicates` off (every other pair is a negative)."""
        if not self.mask_duplicates:
            return None
        return [items[layout.flat_index(b, POSITIVE, 0)].key for b in range(layout.batch_pairs)]

    def duplicate_pairs(self, items: Sequence[Item], layout) -> list[list[int]]:
        """Per pair: the other pairs sharing its positive item (none with `mask_duplicates` off)."""
        keys = self.positive_keys(items, layout)
        return layout.duplicate_pairs(keys) if keys is not None else [[] for _ in range(layout.batch_pairs)]

    def process(self, texts: Sequence[str], items: Sequence[Item], S: np.ndarray, layout, margin: np.ndarray, *,
                step: int = 0):
        """r_proc per completion, the fraction of parsable judge answers, the fraction of positive picks.
        A `ScoredPick` judge sees each completion with its item (`tcot_judge_item`); a generative one the
        completion texts with their items' texts as the release shows them (`process_judge_text`, `Reasoner.pick`)."""
        from unime.embed_rl.tcot_embedder import tcot_judge_item
        from unime.reasoning.rewards import process_candidates, process_judge_text, process_reward

        n = len(texts)
        if self.judge is None or self.weights[2] == 0:
            return np.zeros(n), float("nan"), float("nan")
        rng = np.random.default_rng([self.seed, step])
        dup = self.duplicate_pairs(items, layout)
        cand_rows, masks = [], []
        for row in range(n):
            cands, mask = process_candidates(row, S, layout, n_hard=self.hard_negative_pairs, rng=rng,
                                             excluded_pairs=dup[layout.slot(row)[0]])
            cand_rows.append(cands)
            masks.append(mask)
            self.negative_pairs_seen["process"].add(int((~mask).sum()))  # one rollout per negative pair
        if isinstance(self.judge, ScoredPick):
            shown = [tcot_judge_item(item, text) for item, text in zip(items, texts)]
            picks = self.judge.pick(shown, [[shown[c] for c in cands] for cands in cand_rows])
        else:
            sides = [layout.slot(i)[1] for i in range(n)]
            shown = [process_judge_text(t, it.text, s) for t, it, s in zip(texts, items, sides)]
            as_cand = [process_judge_text(t, it.text, s, as_candidate=True) for t, it, s in zip(texts, items, sides)]
            picks = self.judge.pick(shown, [[as_cand[c] for c in cands] for cands in cand_rows],
                                    max_new_tokens=self.judge_max_new_tokens)
        proc = np.array([process_reward(p, m, margin[i]) for i, (p, m) in enumerate(zip(picks, masks))])
        parsed = [p for p in picks if p is not None]
        if n and not parsed and not self._warned_unparsed:
            self._warned_unparsed = True
            log.warning("none of the process judge's %d answers names a candidate: the process reward is 0 for every "
                        "completion (a Yes/No judge? --process-pick score lets it score the candidates)", n)
        picked_pos = [bool(masks[i][p]) for i, p in enumerate(picks) if p is not None]
        return proc, len(parsed) / n, (float(np.mean(picked_pos)) if picked_pos else 0.0)


# ---------------------------------------------------------------------------------------------------
# TRL glue


def _trainer_class():
    from trl import GRPOTrainer

    from unime.models.run_state import ExactWeightsCheckpoints

    class EmbedRLGRPOTrainer(ExactWeightsCheckpoints, GRPOTrainer):
        """`GRPOTrainer` that accepts batches mixing text-only and image prompts (see the module docstring),
        with exact full fine-tuning checkpoints (`ExactWeightsCheckpoints`)."""

        def _generate(self, prompts):
            out = super()._generate(prompts)
            if not isinstance(out, tuple) or len(out) != 8:  # pragma: no cover - guards a TRL upgrade
                raise RuntimeError("unexpected return of GRPOTrainer._generate; this TRL version is not supported "
                                   "by EmbedRLGRPOTrainer (written for trl 1.16)")
            images = out[6]
            if images is not None:
                out = (*out[:6], [im if im else [] for im in images], out[7])
            return out

        def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                               batch_size=None, num_images=None, pixel_values=None,
                                               image_grid_thw=None, **kwargs):
            """TRL's, one chunk (`batch_size` rows, else all) at a time, a chunk without an image given no vision
            inputs: TRL slices them per chunk and hands an image-less chunk of a mixed batch (a --micro-batch of
            text queries) empty ones, which the model's vision tower fails on."""
            run = super()._get_per_token_logps_and_entropies
            if pixel_values is None or image_grid_thw is None or num_images is None:
                return run(model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                           num_images=num_images, pixel_values=pixel_values, image_grid_thw=image_grid_thw, **kwargs)
            import itertools

            import torch

            size, rows = batch_size or input_ids.size(0), input_ids.size(0)
            image_at = [0, *itertools.accumulate(num_images)]
            pixel_at = [0, *itertools.accumulate(image_grid_thw.prod(dim=-1).tolist())]
            parts = []
            for start in range(0, rows, size):
                end = min(start + size, rows)
                first, last = image_at[start], image_at[end]
                vision = {} if first == last else {
                    "num_images": list(num_images[start:end]), "image_grid_thw": image_grid_thw[first:last],
                    "pixel_values": pixel_values[pixel_at[first]:pixel_at[last]]}
                chunk = {k: v[start:end] if torch.is_tensor(v) else v for k, v in kwargs.items()}
                parts.append(run(model, input_ids[start:end], attention_mask[start:end], logits_to_keep, **vision,
                                 **chunk))
            logps, entropies, aux = zip(*parts)
            return (torch.cat(logps), None if entropies[0] is None else torch.cat(entropies),
                    None if aux[0] is None else torch.stack(aux).mean())

    return EmbedRLGRPOTrainer


def prepare_policy_processor(processor):
    """TRL left-pads the prompt ids it trains on and rebuilds the vision inputs (`pixel_values`,
    `mm_token_type_ids`) with a separate `processor(images=..., text=..., padding=True)` call; that call must
    pad on the left too, or the image-token types land beside the image tokens (wrong M-RoPE positions, or a
    shape error in `get_rope_index` once the shift reaches the padding). TRL sets this itself only when it
    loads the processor; we pass ours, so we set it."""
    processor.tokenizer.padding_side = "left"
    if hasattr(processor, "padding_side"):
        processor.padding_side = "left"
    return processor


def padding_sides(processor) -> tuple[str, str | None]:
    """The processor's padding sides (its tokenizer's, its own), to put back with `restore_padding_sides` before
    the policy is exported: the left padding `prepare_policy_processor` sets is TRL's training need, not the model's
    (QA: the GRPO output saved `padding_side: left`, every other stage's output the base's own)."""
    return processor.tokenizer.padding_side, getattr(processor, "padding_side", None)


def restore_padding_sides(processor, sides: tuple[str, str | None]) -> None:
    processor.tokenizer.padding_side = sides[0]
    if hasattr(processor, "padding_side"):
        processor.padding_side = sides[1]


REWARD_WEIGHTS = (0.05, 0.8, 0.2)  # format, outcome, process
PROCESS_PICKS = ("generate", "score")


class ScoredPick:
    """The process judge as a Yes/No scorer (`--process-pick score`): for each query rollout, P(Yes) of every
    (query, candidate) pair (`JudgeScorer.score_pairs`, the query's prefix shared), the pick the highest (the first
    of equal scores; the candidates come in a random order, `process_candidates`)."""

    def __init__(self, scorer):
        self.scorer = scorer  # a JudgeScorer

    def pick(self, queries: Sequence[Item], candidate_lists: Sequence[Sequence[Item]]) -> list[int]:
        pairs = [(q, c) for q, cands in zip(queries, candidate_lists) for c in cands]
        scores = np.asarray(self.scorer.score_pairs(pairs), dtype=np.float64) if pairs else np.zeros(0)
        out, at = [], 0
        for cands in candidate_lists:
            out.append(int(np.argmax(scores[at:at + len(cands)])))
            at += len(cands)
        return out


@dataclass(kw_only=True)
class GRPOStageConfig(TrainerArgOptions, GENERATIVE_LORA_OPTIONS, ExportOptions, DeviceOptions,
                      ReasonerStageOptions):
    """Options of `unime train reasoner --stage grpo` (`unime.options`)."""

    stage: str = option("grpo", cli=False)  # recorded: an SFT folder is refused naming it (`ReasonerStageOptions`)
    learning_rate: float = option(3e-6, "learning rate", dest="lr", at_least=0)
    lr_scheduler: str = lr_scheduler_option("linear", "learning-rate schedule (transformers' lr_scheduler_type: "
                                            "linear, constant, cosine, ...; the Embed-RL release's GRPO: constant)",
                                            group="grpo")
    lora_r: int = option(0, "LoRA rank; 0 = full fine-tuning", at_least=0)  # of the policy
    save_steps: int = option(100, at_least=1)
    records: str = option(help="(query, positive) records for RL (grpo), e.g. the split's rl.jsonl", cli_default=None,
                          group="grpo", input_file=True)
    embedder: str = option(help="frozen <emb> embedder (the reward model)", cli_default=None, group="grpo")
    process_judge: str | None = option(None, "checkpoint for the process reward's pick (default: a frozen copy of "
                                       "--model)", group="grpo")
    process_pick: str = option("generate", "how the process judge picks: generate (the paper's: it is asked for the "
                               "number of the most relevant candidate; each reasoning shown with its item's text "
                               "as the release does) or score (a Yes/No judge, e.g. the T-CoT "
                               "match judge of `unime train judge`: P(Yes) of each (query, candidate) pair, each "
                               "item followed by its T-CoT as `unime reason split` shows them; the highest is the "
                               "pick)", choices=list(PROCESS_PICKS), group="grpo")
    # >= 2: GRPO normalises advantages within the group
    num_generations: int = option(4, "group size n (default %(default)s)", group="grpo", at_least=2)
    # >= 2: the outcome reward needs other pairs as negatives
    pairs_per_batch: int = option(2, "(query, positive) pairs per step (>= 2)", group="grpo", at_least=2)
    # TRL's per_device_train_batch_size; the step's one generation is split into micro-batches (`embed_rl_grpo_config`)
    micro_batch: int | None = option(None, "completions per forward and backward of the policy (default: all of a "
                                     "step's, 2 x --pairs-per-batch x --num-generations, in one); a divisor of them, "
                                     "the rest accumulated into the same optimizer step from the step's one "
                                     "generation", group="grpo", at_least=1)
    epochs: int = option(1, "passes over the pairs, each reshuffled, in steps of --pairs-per-batch distinct pairs: "
                         "pairs // --pairs-per-batch steps a pass on one process (on P, pairs // (P x "
                         "--pairs-per-batch)); the pairs left over sit that pass out", dest="grpo_epochs", group="grpo",
                         at_least=1)
    beta: float = option(0.01, "KL coefficient (default %(default)s)", group="grpo", at_least=0)
    # TRL states the rollouts' whole decoding (its GRPOConfig top_k 0, repetition_penalty 1.0): an Instruct policy's
    # generation_config chat defaults (top_k 1 ...) do not apply (tests/embed_rl/test_grpo.py)
    temperature: float = option(1.0, "rollout temperature (default %(default)s, the paper's; rollouts sample the full "
                                "distribution, not the policy checkpoint's generation_config settings)", group="grpo",
                                above=0)
    top_p: float = option(1.0, cli=False, above=0, at_most=1)
    max_completion_length: int = option(TCOT_MAX_NEW_TOKENS, TCOT_LENGTH_HELP, group="grpo", at_least=1)
    loss_type: str = option("grpo", "TRL's GRPOConfig loss_type (default %(default)s)", choices=list(GRPO_LOSS_TYPES),
                            metavar="NAME", group="grpo")
    scale_rewards: str = option("group", cli=False)
    weights: tuple[float, float, float] = option(REWARD_WEIGHTS, "format,outcome,process reward weights",
                                                 cli_default=",".join(map(str, REWARD_WEIGHTS)), group="grpo")
    neg_temperature: float = option(0.5, "outcome reward: hardness temperature", group="grpo", above=0)
    # a batch of B pairs has B - 1 negative pairs: at most --pairs-per-batch - 1 (`validate`)
    mask_duplicates: bool = option(True, "outcome and process rewards: the rollouts of other pairs in the batch whose "
                                   "positive is the same item (same text and images) are not negatives (default on, "
                                   "as `train embedder`; --no-mask-duplicates counts them)", group="grpo",
                                   action=argparse.BooleanOptionalAction)
    hard_negative_pairs: int = option(1, "process reward: the hardest other pairs of the batch, each by its rollout "
                                      "most similar to the one judged, shown to the judge beside the own pair's "
                                      "rollouts (< --pairs-per-batch; the paper's 4 needs --pairs-per-batch >= 5)",
                                      group="grpo", at_least=0)

    def validate(self) -> None:
        """`ReasonerStageOptions.validate`, and an OptionError for more hard negative pairs than a batch has: a batch
        of --pairs-per-batch B pairs has B - 1 (QA: 4 with B = 2 silently showed the judge one)."""
        super().validate()
        check_reward_weights(self.weights, config=self)
        check_hard_negative_pairs(self.hard_negative_pairs, self.pairs_per_batch, config=self)
        completions = self.completions_per_step
        if self.micro_batch is not None and completions % self.micro_batch:
            raise OptionError(self, "{micro_batch} {micro} does not divide a step's {completions} completions (2 x "
                              "{pairs_per_batch} {pairs} x {num_generations} {n}): give a divisor of {completions}",
                              micro=self.micro_batch, completions=completions, pairs=self.pairs_per_batch,
                              n=self.num_generations)

    @property
    def completions_per_step(self) -> int:
        """The completions each process generates and rewards per optimizer step: 2 x pairs x generations."""
        return 2 * self.pairs_per_batch * self.num_generations


def check_reward_weights(weights: Sequence[float], *, config=None) -> None:
    """An OptionError for reward weights that reward nothing (all 0: every completion's reward is 0, so every group's
    advantages are 0) or the opposite of a reward (a negative weight). The one check of the command line
    (`GRPOStageConfig.validate`) and of the Python API (`EmbedRLReward`), as `check_hard_negative_pairs`."""
    got = tuple(float(w) for w in weights)
    if any(w < 0 for w in got):
        raise OptionError(config or GRPOStageConfig, "{weights} must be >= 0 each (a negative weight rewards the "
                          "opposite), got {got}", got=got)
    if not any(got):
        raise OptionError(config or GRPOStageConfig, "{weights} must not all be 0 (every completion's reward would be "
                          "0: GRPO learns nothing), got {got}", got=got)


def check_hard_negative_pairs(hard_negative_pairs: int, pairs_per_batch: int, *, config=None) -> None:
    """An OptionError unless `hard_negative_pairs` < `pairs_per_batch`: a batch of B pairs has B - 1 negative pairs,
    and `process_candidates` would silently show the judge fewer than asked. The one check of the command line
    (`GRPOStageConfig.validate`, before any work) and of the Python API (`EmbedRLReward`: as it is built with
    `pairs_per_batch`, and on every batch it gets); the message names the options as `config`'s fields (its
    command-line options on the command line)."""
    if hard_negative_pairs >= pairs_per_batch:
        raise OptionError(config or GRPOStageConfig,
                          "{hard_negative_pairs} {hard} needs more pairs per batch: a batch of "
                          "{pairs_per_batch} {pairs} pairs has {negatives} negative pair(s); give "
                          "{pairs_per_batch} >= {least} or {hard_negative_pairs} <= {negatives}",
                          hard=hard_negative_pairs, pairs=pairs_per_batch, negatives=pairs_per_batch - 1,
                          least=hard_negative_pairs + 1)


# options that may change between a run and its continuation without changing what is trained
_RESUME_FREE_OPTIONS = {"resume", "overwrite", "save_steps"}
SUMMARY_FILE = "grpo_summary.json"


def embed_rl_grpo_config(cfg: GRPOStageConfig, *, output_dir: str, use_cpu: bool, bf16: bool, fp16: bool,
                         num_processes: int = 1, check_only: bool = False):
    """TRL `GRPOConfig` for EG-RL with the batch geometry that keeps pairs whole: per process and optimizer step one
    generation of `completions_per_step` completions (2 x pairs x n, rewarded together), whose policy loss runs in
    micro-batches of --micro-batch (TRL's per_device_train_batch_size), accumulated: TRL's steps_per_generation =
    gradient_accumulation_steps = completions / micro-batch, so the step stays on-policy (no old log-probabilities).
    With `check_only`, its --trainer-arg strings checked and nothing built (None)."""
    from trl import GRPOConfig

    from unime.models.hf_arguments import hf_training_arguments

    completions = cfg.completions_per_step
    per_device = cfg.micro_batch or completions
    accum = completions // per_device
    gcfg = hf_training_arguments(
        GRPOConfig, output_dir=output_dir, batch_size=per_device, grad_accum=accum, epochs=1, max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate, lr_scheduler=cfg.lr_scheduler, logging_steps=1, save_steps=cfg.save_steps,
        save_total_limit=2, seed=cfg.seed, use_cpu=use_cpu, bf16=bf16, fp16=fp16,
        steps_per_generation=accum, num_generations=cfg.num_generations, num_iterations=1,
        max_completion_length=cfg.max_completion_length, beta=cfg.beta, temperature=cfg.temperature,
        top_p=cfg.top_p, loss_type=cfg.loss_type, scale_rewards=cfg.scale_rewards, shuffle_dataset=False,
        use_vllm=False, disable_dropout=True, log_completions=False, trainer_arg=cfg.trainer_arg,
        activation_checkpointing=cfg.gradient_checkpointing, config=cfg,
        # TRL's reward_weights weigh the reward functions, and unime gives TRL one, its rewards already weighted
        # by --weights: another weight would scale that sum (or, three of them, fail once the models are loaded)
        option_keys={"lr_scheduler_type": "--lr-scheduler", "reward_weights": "--weights"}, check_only=check_only)
    if check_only:
        return None
    # the geometry that keeps pairs whole (see the module docstring)
    local = gcfg.per_device_train_batch_size * gcfg.steps_per_generation
    if local % (2 * cfg.num_generations) or gcfg.generation_batch_size % (2 * cfg.num_generations * num_processes):
        raise ValueError(f"batch geometry splits pairs: local generation batch {local} completions, "
                         f"generation batch {gcfg.generation_batch_size}, num_generations {cfg.num_generations}")
    return gcfg


def lora_model(model, cfg: GRPOStageConfig):
    """The policy as GRPO trains it (`unime.models.lora.model_to_train`, the reasoner SFT's rule): with its LoRA
    adapter (`cfg.lora_r > 0`), else every parameter; an adapter loaded (--model an adapter folder) is trained on.
    TRL is handed the PEFT model, no `peft_config`: its reference policy is then a frozen copy of the adapter as
    the run starts (TRL's "ref" adapter), which for a new LoRA is the base model."""
    from unime.models.lora import LoraSettings, model_to_train

    return model_to_train(model, LoraSettings.from_options(cfg) if cfg.lora_r > 0 else None, source=cfg.model,
                          full_option="--lora-r 0", task_type="CAUSAL_LM")


def train_reasoner_grpo(cfg: GRPOStageConfig) -> dict[str, Any]:
    """Run EG-RL. Writes `cfg.out`: the trained reasoner (`merged/`, an HF folder + processor; `adapter/` for
    LoRA; `README.md`: `unime.embed_rl.export`), `reward_log.csv`, `reward_curves.png`, `completions.jsonl`
    (`CompletionLog`: every rollout with its rewards), `curves.csv` (TRL's
    per-step metrics), `train_config.json`, `checkpoints/` and, last, `grpo_summary.json`. A re-run follows
    `unime.models.run_state`. The folder is owned and locked by the main process (`unime.outdir`), which alone
    writes into it under torchrun."""
    from unime.outdir import claim_on_main_process
    from unime.models import run_state
    from unime.models.run_state import CHECKPOINTS_DIR

    check_grpo_options(cfg)
    out = Path(cfg.out)
    options = json.loads(json.dumps(asdict(cfg), default=str))
    with claim_on_main_process(out, "train reasoner", options, overwrite=cfg.overwrite):
        work = out / CHECKPOINTS_DIR
        # the refusals for the options, then the records read and checked: all before anything is written in `out`
        if run_state.check_run(out, options, free=_RESUME_FREE_OPTIONS, overwrite=cfg.overwrite,
                               finished_file=SUMMARY_FILE, config=cfg):
            log.info("%s: this GRPO run is finished; nothing to do (--overwrite starts it over)", out)
            return json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8"))
        data = _grpo_data(cfg)
        plan = run_state.plan_run(out, options, free=_RESUME_FREE_OPTIONS, overwrite=cfg.overwrite,
                                  finished_file=SUMMARY_FILE, config=cfg)  # not finished: `check_run` said so
        # a resumed run's reward log, read before the models load: one changed by hand is named (`read_reward_log`)
        reward_log = RewardLog(work / "reward_log.csv", resume=plan.checkpoint is not None)
        if is_main_process():
            run_state.write_config(out, options)
            work.mkdir(parents=True, exist_ok=True)
        return _train_grpo(cfg, out, work, plan, options, data, reward_log)


def check_grpo_options(cfg: GRPOStageConfig) -> GRPOStageConfig:
    """The checks of `cfg` that need no model weights and no records — the options, the extra packages, the
    --trainer-arg keys, the <emb> token of the embedder's tokenizer — and, last, the hub asked about a hub id
    --model or --process-judge (`refuse_unreachable_hub_model`; the embedder's tokenizer read asks it about
    --embedder) run before the output folder is claimed (by the trainer, and by the command line:
    `unime.cli.train_reasoner`), so that a refused run writes nothing. Returns `cfg`."""
    from unime.models.embedder import check_emb_pooling
    from unime.models.loading import refuse_unreachable_hub_model
    from unime.models.run_state import CHECKPOINTS_DIR

    cfg.validate()
    require_extra("rl", "train reasoner", "trl", "datasets")
    check_emb_pooling(cfg.embedder, "--embedder")  # the frozen embedder pools at <emb>: its tokenizer only
    embed_rl_grpo_config(cfg, output_dir=str(Path(cfg.out) / CHECKPOINTS_DIR), use_cpu=True, bf16=False, fp16=False,
                         check_only=True)
    for model in (cfg.model, cfg.process_judge):  # no hub, or no such model there: before --out is claimed
        if model:
            refuse_unreachable_hub_model(model)
    return cfg


@dataclass
class _GRPOData:
    """The run's rows, read and checked before anything is written into its output folder (`_grpo_data`)."""

    rows: list
    n_pairs: int
    skips: Any
    data_root: str
    sampling: Any
    budget: Any


def _grpo_data(cfg: GRPOStageConfig) -> _GRPOData:
    """Read the records, load and check their images (the rows GRPO trains on), and refuse too few pairs: the input
    checks, which a run makes before it writes its config, input fingerprints or checkpoints into --out, so that a
    refused run leaves nothing of it there."""
    from unime.data.io import read_records
    from unime.data.skips import ErrorPolicy, SkipReport
    from unime.data.video import VideoSampling
    from unime.models.image_budget import ImageBudget
    from unime.models.loading import checkpoint_image_loader

    data_root = resolve_data_root(cfg.records, cfg.data_root)
    skips = SkipReport(max_examples=10)
    records = read_records(cfg.records, on_error=cfg.on_error, skips=skips)
    sampling, budget = VideoSampling.from_fields(cfg), ImageBudget.from_args(cfg)
    # the images the policy, the embedder and the process judge see: within all their processors' limits
    loader = checkpoint_image_loader([cfg.model, cfg.embedder, *([cfg.process_judge] if cfg.process_judge else [])],
                                     budget, data_root, video=sampling)
    # a step's pairs over the processes (torchrun's WORLD_SIZE): each takes --pairs-per-batch consecutive ones
    processes = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rows = grpo_rows(records, loader, epochs=cfg.epochs, seed=cfg.seed, source=cfg.records,
                     pairs_per_step=cfg.pairs_per_batch * processes,
                     policy=ErrorPolicy(cfg.on_error, skips, "GRPO") if cfg.on_error == "skip" else None)
    n_pairs = len({r["pair_id"] for r in rows})
    if n_pairs < cfg.pairs_per_batch * processes:  # not one step's pairs: a run of no step
        from unime.data.skips import shown_on_failure
        from unime.errors import DataError

        step = (f"--pairs-per-batch {cfg.pairs_per_batch}" if processes == 1 else
                f"a step's {cfg.pairs_per_batch * processes} (--pairs-per-batch {cfg.pairs_per_batch} x {processes} "
                "processes)")
        with shown_on_failure(skips):  # the records skipped, before the error
            raise DataError(f"{n_pairs} pairs, fewer than {step}"
                            + (f" ({skips.total} record(s) skipped)" if skips.total else ""), source=cfg.records)
    if skips.total:
        log.warning("GRPO: %s", skips.summary())
    return _GRPOData(rows, n_pairs, skips, data_root, sampling, budget)


@contextlib.contextmanager
def _reference_dtype_given(gcfg):
    """TRL's GRPOTrainer built with `gcfg`: its `model_init_kwargs` (set by `_train_grpo` only for the reference
    policy's dtype) are used for the reference policy it loads, but it warns, as it is handed a model instance, that
    they "will be ignored"; that warning is left out."""
    from unime.models.loading import without_log_message

    with without_log_message("trl.trainer.grpo_trainer", "model_init_kwargs"):
        yield


def _train_grpo(cfg, out: Path, work: Path, plan, options: dict, data: _GRPOData, reward_log: RewardLog) -> dict:
    import torch
    from datasets import Dataset

    from unime.models.curves import write_curves
    from unime.models.embedder import Embedder
    from unime.models.hf_arguments import process_device
    from unime.models.loading import load_model, resolve_dtype, trainer_device, training_load_dtype
    from unime.reasoning.embed_inputs import ReasonedEmbedder
    from unime.reasoning.reasoner import Reasoner
    from unime.models import run_state

    rows, n_pairs, skips = data.rows, data.n_pairs, data.skips
    data_root, sampling, budget = data.data_root, data.sampling, data.budget
    # the arguments first: every model of this process (the policy, the frozen reward models) goes on its device
    device = trainer_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    gcfg = embed_rl_grpo_config(cfg, output_dir=str(work), use_cpu=device == "cpu",
                                bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16)
    device = process_device(gcfg)
    attn = cfg.attn_implementation  # every model of the run: the policy, the frozen embedder, the process judge
    # LoRA: the frozen base in the run's dtype; full fine-tuning (--lora-r 0): fp32 master weights, computed in the
    # run's dtype under TRL's autocast (`gcfg.bf16` / `fp16`); its frozen reference policy stays in the run's dtype
    full = cfg.lora_r == 0
    policy = load_model(cfg.model, device=device, dtype=training_load_dtype(dtype, full=full), trainable=True,
                        image_budget=budget, attn_implementation=attn)
    if full and cfg.beta > 0:
        gcfg.model_init_kwargs = {"dtype": dtype, **(gcfg.model_init_kwargs or {})}
    for row in rows:  # the policy's fixed resize (if any) on the rows' images; its processor applies the bounds
        row["images"] = [policy.adapter.image_budget.prepare(im) for im in row["images"]]
    dataset = Dataset.from_list(rows)
    from transformers import set_seed

    set_seed(cfg.seed)  # LoRA initialisation, as the other trainers
    policy.model = lora_model(policy.model, cfg)
    # the frozen reward model, loaded once
    from unime.models.loading import loading_as

    with loading_as("--embedder"):
        embedder = ReasonedEmbedder(Embedder.from_pretrained(cfg.embedder, device=device, dtype=dtype,
                                                             pooling="emb", data_root=data_root, image_budget=budget,
                                                             video_sampling=sampling, attn_implementation=attn))
    for p in embedder.embedder.model.parameters():
        p.requires_grad_(False)
    judge = None
    if cfg.weights[2] != 0 and cfg.process_pick == "score":
        from unime.models.judge import JudgeScorer

        with loading_as("--process-judge" if cfg.process_judge else "--model"):
            scorer = JudgeScorer.from_pretrained(cfg.process_judge or cfg.model, device=device, dtype=dtype,
                                                 data_root=data_root, image_budget=budget, video_sampling=sampling,
                                                 attn_implementation=attn)
        for p in scorer.model.parameters():
            p.requires_grad_(False)
        judge = ScoredPick(scorer)
    elif cfg.weights[2] != 0:
        with loading_as("--process-judge" if cfg.process_judge else "--model"):
            judge = Reasoner.from_pretrained(cfg.process_judge or cfg.model, device=device, dtype=dtype,
                                             data_root=data_root, image_budget=budget, video_sampling=sampling,
                                             attn_implementation=attn)
        for p in judge.model.parameters():
            p.requires_grad_(False)
    resume = plan.checkpoint is not None
    if resume:  # the reward rows of steps after the checkpoint are redone
        reward_log.truncate(int(plan.checkpoint.name.split("-")[-1]))
    completion_log = CompletionLog(work / COMPLETIONS_FILE,
                                   resume_from_step=int(plan.checkpoint.name.split("-")[-1]) if resume else None)
    reward = EmbedRLReward(embedder, judge, group_size=cfg.num_generations, weights=tuple(cfg.weights),
                           neg_temperature=cfg.neg_temperature, hard_negative_pairs=cfg.hard_negative_pairs,
                           mask_duplicates=cfg.mask_duplicates, pairs_per_batch=cfg.pairs_per_batch,
                           seed=cfg.seed, reward_log=reward_log, completion_log=completion_log)
    own_sides = padding_sides(policy.processor)
    with _reference_dtype_given(gcfg):
        trainer = _trainer_class()(model=policy.model, reward_funcs=[reward], args=gcfg, train_dataset=dataset,
                                   processing_class=prepare_policy_processor(policy.processor))
    trainer.add_callback(warmup_check())
    trainer.add_callback(non_reentrant_checkpointing_callback())
    run_state.train_or_finish(trainer, plan.checkpoint)
    restore_padding_sides(policy.processor, own_sides)  # exported as the model came

    history = [h for h in trainer.state.log_history if "reward" in h]
    summary = {"steps": trainer.state.global_step, "pairs": n_pairs, "rows": len(rows),
               "skipped_records": {"total": skips.total, "by_reason": dict(sorted(skips.counts.items()))},
               "negative_pairs": reward.negative_pairs(),
               # the evidence of the rollouts the crop rules left out, over the steps of the reward log (this
               # process's), counted as `reason materialize` counts its own
               "evidence_left_out": {"total": sum(int(r.get("evidence_left_out") or 0) for r in reward_log.rows),
                                     "examples": reward.left_out_examples},
               "reward_steps": reward_log.rows, "config": options}
    if summary["evidence_left_out"]["total"]:
        from unime.reasoning.evidence import left_out_line

        log.warning("GRPO rollouts: %s", left_out_line(reward.left_out_examples,
                                                       total=summary["evidence_left_out"]["total"]))
    from unime.embed_rl.export import export_reasoner
    from unime.models.export import write_json_atomic

    trainer.accelerator.wait_for_everyone()
    summary.update(policy.origin())  # what the weights start from (the card's base_model)
    if trainer.is_world_process_zero():
        reward_log.write_csv(out / "reward_log.csv")
        shutil.copyfile(work / COMPLETIONS_FILE, out / COMPLETIONS_FILE)
        if reward_log.rows:
            reward_log.plot(out / "reward_curves.png")
        write_curves(history, out, plot=False)  # TRL's per-step metrics; the rewards plot is reward_curves.png
        export_reasoner(trainer.model, policy.processor, out, stage="grpo", options=options,
                        results={k: summary[k] for k in ("steps", "pairs", "rows", "skipped_records")},
                        origin=policy.origin(), image_budget=policy.image_budget, dtype=dtype)
        write_json_atomic(out / SUMMARY_FILE, summary)  # last: the run is finished
    trainer.accelerator.wait_for_everyone()
    return summary
