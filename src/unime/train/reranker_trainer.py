"""Training the UniME-V2 reranker (SPEC §1.6) and, with labels instead of mined data, a Yes/No judge.

A generative MLLM + LoRA (or, with `full`, every parameter: full fine-tuning, fp32 master weights) learns,
by next-token cross-entropy on the answer tokens only:

- **pairwise** (the judge prompt of SPEC 1.3): `Yes` for (q, c_t) and `No` for (q, c_h), c_h the
  hardest surviving negative of the record (highest judge score; the first negative when the record
  has no scores). The release takes `hard_negatives[0]`, the first cyclical pick, instead;
- **listwise**: the multi-candidate prompt with `num_negatives` negatives (the record's first ones, in
  their stored order, repeated cyclically when it has fewer) and the positive at a uniformly random
  position (seeded per record), target `Ans: (k)`.

A record mined by the fallback (no candidate survived the false-negative filter: random candidates scored
1.0, `unime.train.label_quality.is_fallback_record`) has no surviving negative: its negatives are
candidates the judge took for likely positives, so the reranker trains on neither of its examples; the
records left out are counted (log, `unime_reranker.json`: `fallback_records`). Records without judge
scores (written by hand) are used as they are.

L = L_pair + L_list, each the mean cross-entropy over its batch's answer tokens. The answer tokens are
the answer and the chat template's end-of-turn token (so that generation stops); system, user and the
assistant header are masked with -100.

`unime train judge` uses the same code, pairwise only, on labelled records: (q, positive) → `Yes`,
(q, negative) → `No` for each listed negative.

Output folder `out` (the layout of every trainer, `unime.models.export`):

    out/adapter/    PEFT adapter + processor + README.md + unime_reranker.json   (reranker; judge: --save-adapter)
    out/merged/     the adapter merged in: a plain HF folder, same extras           (judge; reranker: --merge)
                    (full fine-tuning: the trained model itself, and no adapter/)
    out/README.md, out/curves.csv, out/curves.png, out/checkpoints/ (resumable; kept)
    out/unime_reranker.json   written last: its presence means the stage is done

`unime_reranker.json` records the role, the number of listwise candidates the reranker was trained with
(inference defaults to it), the training configuration, and the model the weights start from: `base_model`, the
full model the exported adapter loads on, and `started_from_adapter`. `--model` may be a trainer's output folder:
its merged/ is then the base; without one (a LoRA reranker's folder, or an adapter folder) its adapter is trained
on, on the adapter's own base, and named in `started_from_adapter`. Re-runs follow `unime.models.run_state`.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from unime.data.images import ImageLoader
from unime.data.io import record_label
from unime.data.items import Item, Record
from unime.data.video import VideoOptions, VideoSampling
from unime.errors import DataError, ModelError, OptionError
from unime.models.adapters import FamilyAdapter, Segment
from unime.models.hf_arguments import (TrainerArgOptions, gradient_checkpointing_option,
                                     non_reentrant_checkpointing_callback)
from unime.models.image_budget import ImageBudget, ImageOptions, adapter_image_loader
from unime.models.loading import (DeviceOptions, checkpoint_image_loader, dtype_option,
                                  refuse_unreachable_hub_model, trainer_device)
from unime.models.lora import (GENERATIVE_LORA_OPTIONS, LoraSettings, model_to_train,
                               refuse_full_fine_tuning_of_adapter, refuse_lora_vision_without_vision_targets)
from unime.options import lr_scheduler_option, on_error_option, option, option_name
from unime.models.rerank_prompts import (answer_format, item_content, judge_answer, judge_prompt, listwise_answer,
                                         listwise_prompt)
from unime.models.export import ADAPTER_DIR, MERGED_DIR, ExportOptions, ModelCard
from unime.models.run_state import CHECKPOINTS_DIR

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
PAIR, LIST = "pair", "list"
LOSSES = (PAIR, LIST)
ROLES = ("reranker", "judge")
METADATA_FILE = "unime_reranker.json"


# ------------------------------------------------------------------------------------------------
# examples

@dataclass(frozen=True)
class PromptExample:
    """One supervised example: a prompt over a query and its candidate(s), and the answer text.

    kind `pair`: one candidate, the judge prompt, answer `Yes`/`No`; kind `list`: the listwise prompt,
    answer `Ans: (k)`."""

    kind: str
    query: Item
    candidates: tuple[Item, ...]
    answer: str
    record: str = ""
    source: str | None = None  # the file the record was read from


def _no_negatives(rec: Record, index: int, source: str | None) -> DataError:
    """A record without negatives, named as every message names it (`record_label`: its line and id, in `source`)."""
    return DataError("the record has no negatives", source=source, record=record_label(rec, index), field="negatives")


def hardest_negative_index(rec: Record, *, index: int = 0, source: str | None = None) -> int:
    """The negative with the highest judge score (first one on ties); the first negative without scores. `index`,
    `source`: the record's among those given and the file it was read from, which a refusal names (`record_label`)."""
    if not rec.negatives:
        raise _no_negatives(rec, index, source)
    if rec.negative_scores:
        scores = list(rec.negative_scores)
        return max(range(len(scores)), key=lambda i: (scores[i], -i))
    return 0


def listwise_candidates(rec: Record, num_negatives: int, position: int, *, index: int = 0,
                        source: str | None = None) -> tuple[list[Item], int]:
    """`num_negatives` negatives (stored order, cyclic) with the positive inserted at `position` (0-based); `index`,
    `source`: as `hardest_negative_index`."""
    if not rec.negatives:
        raise _no_negatives(rec, index, source)
    if not 0 <= position <= num_negatives:
        raise ValueError(f"position {position} out of range 0..{num_negatives}")
    negs = [rec.negatives[i % len(rec.negatives)] for i in range(num_negatives)]
    return negs[:position] + [rec.positive] + negs[position:], position


def listwise_position(seed: int, index: int, num_negatives: int) -> int:
    """Uniformly random position of the positive among num_negatives + 1 slots, fixed by (seed, record)."""
    return random.Random(f"{seed}:{index}").randrange(num_negatives + 1)


def reranker_examples(rec: Record, index: int, *, num_negatives: int = 4, seed: int = 0,
                      losses: Sequence[str] = LOSSES, source: str | None = None) -> list[PromptExample]:
    """The examples of one mined record: the two pairwise ones (positive → Yes, hardest negative → No)
    and the listwise one; none for a record mined by the fallback (it has no surviving negative). `index`: the
    record's among those used (its positive's listwise position); `source`: the file it was read from (the examples
    name it, `record_label`)."""
    from unime.train.label_quality import is_fallback_record

    if is_fallback_record(rec):
        return []
    label = record_label(rec, index)
    out: list[PromptExample] = []
    if PAIR in losses:
        hard = rec.negatives[hardest_negative_index(rec, index=index, source=source)]
        out.append(PromptExample(PAIR, rec.query, (rec.positive,), judge_answer(True), label, source))
        out.append(PromptExample(PAIR, rec.query, (hard,), judge_answer(False), label, source))
    if LIST in losses:
        pos = listwise_position(seed, index, num_negatives)
        cands, pos = listwise_candidates(rec, num_negatives, pos, index=index, source=source)
        out.append(PromptExample(LIST, rec.query, tuple(cands), listwise_answer(pos + 1), label, source))
    return out


def judge_examples(rec: Record, index: int, *, max_negatives: int | None = None,
                   source: str | None = None) -> list[PromptExample]:
    """Labelled pairs of one record: (q, positive) → Yes, (q, negative) → No for each negative (the first
    `max_negatives` of them when given); `source`, `record_label`: as `reranker_examples`."""
    label = record_label(rec, index)
    negs = rec.negatives if max_negatives is None else rec.negatives[:max_negatives]
    return ([PromptExample(PAIR, rec.query, (rec.positive,), judge_answer(True), label, source)]
            + [PromptExample(PAIR, rec.query, (n,), judge_answer(False), label, source) for n in negs])


# ------------------------------------------------------------------------------------------------
# tokenisation with the answer mask

class PromptAnswerCollator:
    """Turns `PromptExample`s into model inputs with labels on the answer tokens only.

    Each row is `render(prompt) + answer`, left-padded so that every answer ends at the last position
    (the loss then needs the logits of the last few positions only). UniME-V2 trains both losses on the
    answer tokens only (SPEC 1.6); `train_turn_end=True` appends the end-of-turn token and trains it too
    (this class's earlier behaviour). Causal attention makes the answer tokens' loss the same either way.
    `__call__` takes a list of example lists (one per dataset item) and returns
    `{"pair": inputs, "list": inputs}` (kinds with no example are left out). With `group_ids=True` the pair
    inputs also carry `group`: the index, within the batch, of the dataset item each row came from."""

    def __init__(self, adapter: FamilyAdapter, image_loader: ImageLoader | None = None, *,
                 source: str | None = None, train_turn_end: bool = False, group_ids: bool = False):
        self.adapter = adapter
        self.group_ids = group_ids
        self.image_loader = adapter_image_loader(adapter, image_loader)
        self.source = source
        self.format = answer_format(adapter)
        self.train_turn_end = train_turn_end

    def content(self, item: Item, *, record: str, field: str, source: str | None = None) -> list[Segment]:
        load = self.image_loader.load
        source = source or self.source
        images = [load(r, source=source, record=record, field=f"{field}.images[{i}]")
                  for i, r in enumerate(item.images)]
        frames = self.image_loader.load_video(item.video, source=source, record=record,
                                              field=f"{field}.video") if item.video else []
        return item_content(item.text, images, frames)

    def prompt_segments(self, ex: PromptExample) -> list[Segment]:
        q = self.content(ex.query, record=ex.record, field="query", source=ex.source)
        cands = [self.content(c, record=ex.record, field=f"candidates[{i}]", source=ex.source)
                 for i, c in enumerate(ex.candidates)]
        if ex.kind == PAIR:
            return judge_prompt(q, cands[0])
        if ex.kind == LIST:
            return listwise_prompt(q, cands)
        raise ValueError(f"unknown example kind {ex.kind!r}")

    def render_prompt(self, segments: Sequence[Segment]) -> str:
        """The prompt text up to where the answer starts (what generation is conditioned on)."""
        return self.adapter.render_user_turn(segments, assistant_prefix=self.format.prefix)

    def encode(self, prompts: Sequence[Sequence[Segment]], answers: Sequence[str]):
        """Processor inputs for `prompt + answer` rows (`+ turn_end` with `train_turn_end`), with `labels`
        (-100 except the answer tokens, and the turn-end ones when trained)."""
        import torch

        completions = [a + self.format.turn_end if self.train_turn_end else a for a in answers]
        texts = [self.render_prompt(p) + c for p, c in zip(prompts, completions)]
        inputs = self.adapter.processor_inputs(texts, list(prompts), padding_side="left")
        ids = inputs["input_ids"]
        labels = torch.full_like(ids, IGNORE_INDEX)
        tok = self.adapter.tokenizer
        for row, completion in enumerate(completions):
            answer_ids = tok(completion, add_special_tokens=False)["input_ids"]
            n = len(answer_ids)
            if ids[row, -n:].tolist() != answer_ids:
                raise ModelError(f"the answer {completion!r} does not tokenize the same after the prompt as alone; "
                                 "cannot mask the prompt exactly")
            labels[row, -n:] = ids[row, -n:]
        inputs["labels"] = labels
        return inputs

    def __call__(self, features: Sequence[Sequence[PromptExample]]) -> dict[str, Any]:
        import torch

        by_kind: dict[str, list[PromptExample]] = {}
        owner: dict[str, list[int]] = {}
        for g, group in enumerate(features):
            for ex in group:
                by_kind.setdefault(ex.kind, []).append(ex)
                owner.setdefault(ex.kind, []).append(g)
        out = {kind: dict(self.encode([self.prompt_segments(e) for e in exs], [e.answer for e in exs]))
               for kind, exs in by_kind.items()}
        if self.group_ids and PAIR in out:
            out[PAIR]["group"] = torch.tensor(owner[PAIR], dtype=torch.long)
        return out


def answer_token_loss(model, inputs: dict[str, Any], *, with_answer_logits: bool = False):
    """Mean next-token cross-entropy over the labelled (answer) tokens of a left-padded batch.

    Only the logits of the last `max answer length + 1` positions are computed (`logits_to_keep`), so
    the full-vocabulary logits of long multi-image prompts are never materialised. With
    `with_answer_logits` also returns each row's logits at the generation position (the ones that predict
    its first answer token: where the judge reads l_Yes and l_No)."""
    import torch
    import torch.nn.functional as F

    inputs = dict(inputs)
    labels = inputs.pop("labels")
    labelled = labels != IGNORE_INDEX
    n_answer = int(labelled.sum(dim=1).max())
    if n_answer == 0:
        raise ValueError("a batch without answer tokens")
    if bool(labelled[:, :-n_answer].any()):
        raise ValueError("answer tokens must sit at the end of every row (left padding)")
    out = model(**inputs, use_cache=False, logits_to_keep=n_answer + 1)
    logits = out.logits[:, :-1, :]  # position t predicts token t + 1
    target = labels[:, -n_answer:]
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                           ignore_index=IGNORE_INDEX)
    if not with_answer_logits:
        return loss
    first = (target != IGNORE_INDEX).int().argmax(dim=1)  # each row's first answer token
    return loss, logits[torch.arange(len(first), device=first.device), first].float()


def group_softmax_loss(margins, groups, is_positive):
    """Within-group contrastive loss on judge scores: for each positive row p of a group, the cross-entropy
    of picking p among {p} ∪ the group's negatives under softmax(margin), margin = l_Yes − l_No (the logit
    of the judge's score P(Yes)); averaged over the positives of groups that have negatives. Trains the
    ordering of a query's candidates, which the false-negative filter relies on, where the pointwise loss
    alone can rest at the labels' base rate (a "localized contrastive estimation" loss, Gao et al. 2021).
    Zero (with a gradient path) when no group has both classes."""
    import torch

    terms = []
    for g in torch.unique(groups):
        in_group = groups == g
        negatives = margins[in_group & ~is_positive]
        if negatives.numel() == 0:
            continue
        for p in margins[in_group & is_positive]:
            terms.append(torch.logsumexp(torch.cat([p.reshape(1), negatives]), dim=0) - p)
    return torch.stack(terms).mean() if terms else margins.sum() * 0.0


# ------------------------------------------------------------------------------------------------
# trainer

def _trainer_class():
    from transformers import Trainer

    from unime.models.run_state import ExactWeightsCheckpoints

    class RerankerTrainer(ExactWeightsCheckpoints, Trainer):
        """`Trainer` whose loss is the sum of the answer-token cross-entropies of the pairwise and listwise
        batches (L = L_pair + L_list; + group_weight × L_group for a judge). Each part is logged as
        `loss_pair` / `loss_list` / `loss_group`. Full fine-tuning checkpoints are exact
        (`ExactWeightsCheckpoints`)."""

        loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean: divide by the GA steps

        def __init__(self, *args, group_weight: float = 0.0, answer_ids: tuple[int, int] | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.group_weight, self.answer_ids = group_weight, answer_ids  # answer_ids: (Yes, No) token ids
            self._part_sums: dict[str, float] = {}
            self._part_counts: dict[str, int] = {}

        def _add_part(self, name: str, value) -> None:
            self._part_sums[name] = self._part_sums.get(name, 0.0) + float(value.detach())
            self._part_counts[name] = self._part_counts.get(name, 0) + 1

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            total = None
            for kind in LOSSES:
                if kind not in inputs:
                    continue
                batch = dict(inputs[kind])
                groups = batch.pop("group", None)
                if kind == PAIR and self.group_weight > 0 and groups is not None:
                    part, first = answer_token_loss(model, batch, with_answer_logits=True)
                    yes, no = self.answer_ids
                    labels = batch["labels"]
                    first_label = labels.gather(1, (labels != IGNORE_INDEX).int().argmax(dim=1, keepdim=True))[:, 0]
                    grouped = group_softmax_loss(first[:, yes] - first[:, no], groups.to(first.device),
                                                 first_label == yes)
                    self._add_part("group", grouped)
                    self._add_part(kind, part)
                    part = part + self.group_weight * grouped
                else:
                    part = answer_token_loss(model, batch)
                    self._add_part(kind, part)
                total = part if total is None else total + part
            if total is None:
                raise ValueError(f"a batch with none of the losses {LOSSES}")
            return (total, None) if return_outputs else total

        def log(self, logs, *args, **kwargs):
            if "loss" in logs:
                # under torchrun each process saw its share of the batches: the parts are the mean over all
                # processes' batches, as the Trainer's own `loss` is (every process logs at the same steps)
                from unime.train.distributed import sum_over_processes

                kinds = (*LOSSES, "group")
                totals = sum_over_processes([self._part_sums.get(k, 0.0) for k in kinds]
                                            + [float(self._part_counts.get(k, 0)) for k in kinds])
                for kind, s, n in zip(kinds, totals, totals[len(kinds):]):
                    if n:
                        logs[f"loss_{kind}"] = round(s / n, 6)
                self._part_sums, self._part_counts = {}, {}
            super().log(logs, *args, **kwargs)

    return RerankerTrainer


class ExampleDataset:
    """A list of example groups (one group per dataset item: a record's examples, or one judge pair)."""

    def __init__(self, groups: list[list[PromptExample]]):
        self.groups = groups

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> list[PromptExample]:
        return self.groups[i]


@dataclass(kw_only=True)
class RerankerTrainConfig(TrainerArgOptions, ImageOptions, VideoOptions, DeviceOptions, GENERATIVE_LORA_OPTIONS,
                          ExportOptions):
    """Options of `unime train reranker` / `unime train judge`: each field declares its option (`unime.options`)."""

    # data
    model: str = option(help="base generative checkpoint: HF folder, hub id, or a trainer's output folder (its "
                        "merged/, else its adapter/, which is trained on)", group="data")
    records: list[str] = option(help="record file (unime JSONL / Parquet, or released UniME-V2 JSON); repeatable",
                                action="append", group="data", input_file=True)
    data_root: str | None = option(None, "folder image paths are relative to (default: the records' folder)",
                                   group="data")  # default: each record file's folder
    out: str = option(help="output folder", group="data")
    on_error: str = on_error_option("a bad record or image: raise (stop, naming it) or skip (counted and reported)",
                                    group="data")
    role: str = option("reranker", cli=False)  # reranker | judge (the command)
    # parameters (LoRA, device: the mixins)
    full: bool = option(False, "full fine-tuning (every parameter, fp32 master weights) instead of LoRA; writes "
                        "OUT/merged only (no adapter). For a base model without the needed skills, e.g. a freshly "
                        "built tiny one")
    train_modules: tuple[str, ...] = option((), "module trained in full beside LoRA (PEFT modules_to_save), e.g. "
                                            "lm_head; repeatable", flag="--train-module", action="append",
                                            cli_default=[])
    dtype: str | None = dtype_option(before="weights dtype: ")
    gradient_checkpointing: bool = gradient_checkpointing_option()
    train_turn_end: bool = option(False, "also train the end-of-turn token after the answer (default: answer tokens "
                                  "only, as the paper)")
    # optimisation
    batch_size: int = option(4, "records per device step (judge: labelled pairs; records with --group-weight > 0)",
                             group="optimisation", at_least=1)
    grad_accum: int = option(1, group="optimisation", at_least=1)
    epochs: float = option(1.0, group="optimisation", above=0)
    max_steps: int = option(-1, "optimizer steps (overrides --epochs when > 0)", dest="steps", group="optimisation",
                            at_least=1)  # -1, the default: train `epochs` epochs
    learning_rate: float = option(1e-4, dest="lr", group="optimisation", at_least=0)
    warmup_steps: float = option(0, "warm-up: fraction of the steps if < 1, else steps", dest="warmup",
                                 group="optimisation", at_least=0)
    lr_scheduler: str = lr_scheduler_option("linear", "learning-rate schedule (transformers' lr_scheduler_type: "
                                            "linear, constant, cosine, ...)", group="optimisation")
    weight_decay: float = option(0.0, group="optimisation", at_least=0)  # torch's optimizers refuse a negative one
    seed: int = option(0, group="optimisation")
    # checkpoints
    logging_steps: int = option(10, group="checkpoints", at_least=1)  # transformers refuses 0
    save_steps: int = option(500, "resumable checkpoints under OUT/checkpoints", group="checkpoints", at_least=1)
    keep_checkpoints: bool = option(False, "accepted; OUT/checkpoints is always kept (a run deletes none of its "
                                    "checkpoints)", group="checkpoints")  # `unime.models.run_state`
    overwrite: bool = option(False, "retrain even if OUT holds a finished result", group="checkpoints")
    # reranker
    num_negatives: int = option(4, "negatives per listwise prompt; the positive is added at a random position "
                                "(default %(default)s)", dest="negatives", group="reranker", at_least=1)
    losses: tuple[str, ...] = option(LOSSES, "pair, list or pair,list (default both)", cli_default=",".join(LOSSES),
                                     group="reranker")  # the judge: pair
    merge: bool = option(False, "also write the merged plain checkpoint OUT/merged", group="reranker")
    # judge
    judge_negatives: int | None = option(None, "negatives per record used (default: all)", group="judge", at_least=1)
    save_adapter: bool = option(False, "also keep the adapter in OUT/adapter", group="judge")
    holdout: float = option(0.1, "share of the records held out: their pairs are scored while training (AUC, "
                            "accuracy, P(Yes) spread; OUT/judge_eval.jsonl). 0 = off (default %(default)s)",
                            group="judge", at_least=0, below=1)  # 1: every query held out, none trained on
    eval_steps: int = option(0, "steps between held-out evaluations (default: ~5 per run)", group="judge",
                             at_least=0)  # 0: the default
    # the within-record softmax over the pairs' margins l_Yes − l_No (`group_softmax_loss`)
    group_weight: float = option(0.0, "weight of a within-record softmax loss over the pairs' judge margins (l_Yes - "
                                 "l_No): trains each query's positive above its own negatives, the ordering the "
                                 "false-negative filter uses; > 0 makes --batch-size count records, not pairs "
                                 "(default 0: pointwise only)", group="judge", at_least=0)

    def __post_init__(self) -> None:
        if isinstance(self.losses, str):  # as typed: comma-separated (before the checks: a tuple)
            self.losses = tuple(x.strip() for x in self.losses.split(",") if x.strip())
        super().__post_init__()
        self.train_modules = tuple(self.train_modules)
        if self.dtype == "auto":  # recorded as runs before recorded it (`resolve_dtype`: the device's dtype)
            self.dtype = None

    def validate(self) -> "RerankerTrainConfig":
        """Self, or an OptionError naming the options at fault (as fields; the CLI shows its flags)."""
        if self.role not in ROLES:
            raise OptionError(self, "{role} must be one of {roles}, got {got!r}", roles=ROLES, got=self.role)
        self.losses = tuple(self.losses)
        bad = [x for x in self.losses if x not in LOSSES]
        if bad or not self.losses:
            raise OptionError(self, "{losses} must be a non-empty subset of {all}, got {got}", all=LOSSES,
                              got=self.losses)
        if self.role == "judge" and self.losses != (PAIR,):
            raise OptionError(self, "a judge trains the pairwise loss only ({losses} pair)")
        if self.group_weight > 0 and self.role != "judge":
            raise OptionError(self, "{group_weight} is a judge option (the reranker's listwise loss ranks candidates "
                              "already)")
        if self.full and self.train_modules:
            raise OptionError(self, "full fine-tuning ({full}) trains every module; {train_modules} {got} is a LoRA "
                              "option: drop one of them", got=",".join(self.train_modules))
        if not self.records:
            raise OptionError(self, "no record files given ({records})")
        if self.merged_dtype != "auto" and not (self.full or self.role == "judge" or self.merge):
            raise OptionError(self, "{merged_dtype} sets the dtype of OUT/merged, which a LoRA reranker writes only "
                              "with {merge}")
        trainer_device(self.device)  # before the run claims its folder, as every check here
        if self.full:
            refuse_full_fine_tuning_of_adapter(self.model)
        else:
            refuse_lora_vision_without_vision_targets(self.model, LoraSettings.from_options(self))
        return self


@dataclass
class TrainResult:
    out: str
    role: str
    examples: int
    records: int
    skipped: int
    steps: int
    num_candidates: int | None
    first_loss: float | None
    last_loss: float | None
    log_history: list[dict] = field(default_factory=list)
    heldout: dict | None = None            # judge: the last held-out evaluation (`judge_eval`)
    loss_levels: dict | None = None        # judge: final losses against their base-rate levels (`judge_eval`)
    fallback_records: int = 0              # reranker: records left out, mined by the fallback (`build_examples`)

    @property
    def adapter(self) -> Path | None:
        p = Path(self.out) / ADAPTER_DIR
        return p if p.is_dir() else None

    @property
    def merged(self) -> Path | None:
        p = Path(self.out) / MERGED_DIR
        return p if p.is_dir() else None


class Examples(NamedTuple):
    """What `build_examples` read: the example groups (one per dataset item), the records used, the data root, and
    the reranker's records left out as mined by the fallback (`reranker_examples`)."""

    groups: list[list[PromptExample]]
    records: int
    data_root: str
    fallback: int = 0


def build_examples(cfg: RerankerTrainConfig, *, skips=None) -> Examples:
    """Read the record files and build the example groups. A reranker leaves out the records mined by the fallback
    (counted, logged) and refuses records that are all such. A file holding no row at all (empty, blank lines) is
    refused saying so."""
    from unime.data.io import check_images, read_records
    from unime.data.roots import resolve_data_root
    from unime.data.skips import ErrorPolicy, data_error, empty_file_error
    from unime.train.label_quality import FALLBACK_WARN_SHARE, is_fallback_record

    groups: list[list[PromptExample]] = []
    n_records = n_fallback = 0
    root = cfg.data_root
    for path in cfg.records:
        policy = ErrorPolicy(cfg.on_error, skips, str(path))  # the file's skips, logged at its end without `skips`
        recs = read_records(path, on_error=cfg.on_error, skips=policy.skips)
        if not recs and not policy.skipped:
            raise empty_file_error("no training examples", path)
        file_root = root if root is not None else resolve_data_root(path)
        # within the model's processor's limits: an image it would refuse is a bad record here
        loader = checkpoint_image_loader(cfg.model, ImageBudget.from_args(cfg), file_root,
                                         video=VideoSampling.from_fields(cfg))
        recs = check_images(recs, loader, on_error=cfg.on_error, skips=policy.skips, source=str(path))
        for i, rec in enumerate(recs):
            if cfg.role == "reranker" and not rec.negatives:
                policy.handle(data_error("schema", "a reranker record needs at least one negative", source=str(path),
                                         record=record_label(rec, i), field="negatives"))
                continue
            if cfg.role == "judge":
                pairs = judge_examples(rec, n_records, max_negatives=cfg.judge_negatives, source=str(path))
                groups.extend([pairs] if cfg.group_weight > 0 else ([ex] for ex in pairs))
            elif is_fallback_record(rec):
                n_fallback += 1
                continue
            else:
                groups.append(reranker_examples(rec, n_records, num_negatives=cfg.num_negatives, seed=cfg.seed,
                                                losses=cfg.losses, source=str(path)))
            n_records += 1
        policy.finish()
        if root is None:
            root = file_root
        elif cfg.data_root is None and file_root != root:
            raise DataError("record files in different folders need an explicit data_root", source=str(path))
    sources = ", ".join(map(str, cfg.records))
    if n_fallback:
        what = ("records mined by the fallback: no candidate survived the judge's false-negative filter, so their "
                "negatives are random candidates the judge took for likely positives (scored 1.0), and there is no "
                "surviving negative to answer No to or to rank below the positive")
        if not groups:
            raise DataError(f"all {n_fallback} {what}; a reranker has nothing to train on. Check the judge (`unime "
                            "judge --pairs` with a label column reports its AUC) or mine again", source=sources,
                            field="negative_scores")
        share = n_fallback / (n_fallback + n_records)
        (log.warning if share > FALLBACK_WARN_SHARE else log.info)(
            "reranker: %d of %d records (%.1f %%) left out, %s", n_fallback, n_fallback + n_records, 100 * share,
            what)
    if not groups:
        raise DataError("no training examples", source=sources)
    if cfg.role == "judge" and not any(ex.answer == judge_answer(False) for g in groups for ex in g):
        raise DataError("no negatives in the records: a judge needs labelled negatives (the records' `negatives`) "
                        "or it learns to answer Yes to everything", source=sources, field="negatives")
    return Examples(groups, n_records, root, n_fallback)


def train_reranker(cfg: RerankerTrainConfig, *, finished_hint: str = "--overwrite starts it over") -> TrainResult:
    """Train a reranker (or, with role='judge', a judge) and write it to `cfg.out` (see the module doc), in
    an output folder the run owns and holds locked (`unime.outdir`). Re-running continues from the last
    complete checkpoint, reports a finished run without training, and refuses changed options
    (`unime.models.run_state`); `overwrite` starts over. `finished_hint`: what the report of a finished run says
    starts it over, for the command that runs the training (`unime models pretrain-judge`: not its --overwrite)."""
    from unime.outdir import claim_on_main_process

    check_reranker_options(cfg)
    with claim_on_main_process(cfg.out, f"train {cfg.role}", _run_options(cfg), overwrite=cfg.overwrite):
        return _train_reranker(cfg, finished_hint)


def check_reranker_options(cfg: RerankerTrainConfig) -> RerankerTrainConfig:
    """The checks of `cfg` that need no model and no records — the options, the --device, the --trainer-arg keys —
    and, last, a hub id --model asked of the hub (`refuse_unreachable_hub_model`) run before the output folder is
    claimed (by the trainer, and by the command line: `unime.cli.train_reranker`), so that a refused run writes
    nothing. Returns `cfg`."""
    cfg.validate()
    _training_arguments(cfg, Path(cfg.out) / CHECKPOINTS_DIR, check_only=True)
    refuse_unreachable_hub_model(cfg.model)  # no hub, or no such model there: before --out is claimed
    return cfg


def _training_arguments(cfg: RerankerTrainConfig, ckpt_dir: Path, check_only: bool = False):
    """transformers' `TrainingArguments` of the run (`unime.models.hf_arguments.hf_training_arguments`); with
    `check_only`, its --trainer-arg strings checked and nothing built (None)."""
    import torch
    from transformers import TrainingArguments

    from unime.models.hf_arguments import hf_training_arguments
    from unime.models.loading import resolve_dtype

    device = trainer_device(cfg.device)
    compute_dtype = resolve_dtype(cfg.dtype, device)
    return hf_training_arguments(
        TrainingArguments, output_dir=ckpt_dir, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
        learning_rate=cfg.learning_rate, lr_scheduler=cfg.lr_scheduler, epochs=cfg.epochs, max_steps=cfg.max_steps,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay, logging_steps=cfg.logging_steps, save_steps=cfg.save_steps,
        save_total_limit=1, seed=cfg.seed, data_seed=cfg.seed, use_cpu=device == "cpu",
        bf16=compute_dtype == torch.bfloat16, fp16=compute_dtype == torch.float16,
        activation_checkpointing=cfg.gradient_checkpointing, show_progress=log.isEnabledFor(logging.INFO),
        # LoRA on the decoder (and modules_to_save): every trainable parameter takes part in each forward;
        # the two forwards per step (pair, list) then meet one backward, as in dual-encoder DDP training.
        # Full fine-tuning: a text-only batch leaves the vision tower unused.
        ddp_find_unused_parameters=cfg.full, trainer_arg=cfg.trainer_arg, check_only=check_only, config=cfg,
        option_keys={"warmup_steps": "--warmup", "lr_scheduler_type": "--lr-scheduler",
                     "weight_decay": "--weight-decay"})


# options that may change between a run and its continuation without changing what is trained
# ("processes": the number of processes the run was launched on, recorded beside them, not an option)
_RESUME_FREE_OPTIONS = {"overwrite", "keep_checkpoints", "logging_steps", "save_steps", "processes"}


def _run_options(cfg: RerankerTrainConfig) -> dict:
    return json.loads(json.dumps(asdict(cfg), default=str))


def lora_model(model, cfg: RerankerTrainConfig):
    """`model` as the reranker / judge trains it (`unime.models.lora.model_to_train`): with its LoRA adapter,
    `cfg.train_modules` trained in full beside it; every parameter with --full; an adapter loaded, trained on."""
    return model_to_train(model, None if cfg.full else LoraSettings.from_options(cfg), source=cfg.model,
                          full_option="--full", modules_to_save=cfg.train_modules, task_type="CAUSAL_LM")


def _train_reranker(cfg: RerankerTrainConfig, finished_hint: str) -> TrainResult:
    import torch

    from unime.data.skips import SkipReport, shown_on_failure
    from unime.models.hf_arguments import process_device
    from unime.models.loading import load_model, peft_adapter_config, resolve_dtype, training_load_dtype
    from unime.models import run_state
    from unime.models.curves import CurvesCallback
    from unime.models.warmup import WarmupCheck
    from unime.outdir import is_main_process
    from unime.train.global_batch import batch_that_runs, warn_short_batch

    out = Path(cfg.out)
    ckpt_dir = out / CHECKPOINTS_DIR
    plan_options = dict(free=_RESUME_FREE_OPTIONS, overwrite=cfg.overwrite, finished_file=METADATA_FILE, config=cfg)
    # the refusals for the options, then the records read and checked: all before anything is written in `out`
    # (`run_state.plan_run`, below, records the inputs and, under --overwrite, removes the earlier checkpoints)
    if run_state.check_run(out, _run_options(cfg), **plan_options):
        meta = json.loads((out / METADATA_FILE).read_text())
        log.info("%s: this %s run is finished (%s steps); nothing to do (%s)", out, meta.get("role"),
                 meta.get("steps"), finished_hint)
        return TrainResult(out=str(out), role=meta.get("role", cfg.role), examples=meta.get("examples", 0),
                           records=meta.get("records", 0), skipped=meta.get("skipped", 0), steps=meta.get("steps", 0),
                           num_candidates=meta.get("num_candidates"), first_loss=meta.get("first_loss"),
                           last_loss=meta.get("last_loss"), heldout=meta.get("heldout"),
                           loss_levels=meta.get("loss_levels"), fallback_records=meta.get("fallback_records", 0))
    with shown_on_failure(SkipReport()) as skips:  # every record skipped: the reasons before "no training examples"
        groups, n_records, data_root, n_fallback = build_examples(cfg, skips=skips)
    if skips.total:
        log.warning("%s", skips.summary())
    held_out: list[PromptExample] = []
    if cfg.role == "judge":
        from unime.train.judge_eval import split_held_out

        groups, held_out = split_held_out(groups, cfg.holdout, cfg.seed)
    n_examples = sum(len(g) for g in groups)
    log.info("%s training: %d records, %d examples (%s)", cfg.role, n_records, n_examples, "+".join(cfg.losses))

    compute_dtype = resolve_dtype(cfg.dtype, trainer_device(cfg.device))
    args = _training_arguments(cfg, ckpt_dir)
    batch_unit = "labelled pairs" if cfg.role == "judge" and cfg.group_weight == 0 else "records"  # a dataset item
    batch = dict(batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, processes=args.world_size)
    warn_short_batch(", ".join(map(str, cfg.records)), len(groups), unit=batch_unit, **batch, config=cfg)
    plan = run_state.plan_run(out, _run_options(cfg), **plan_options)  # not finished: `check_run` said so
    if plan.checkpoint is not None:  # the global batch of a continuation (per device x processes x accumulation)
        run_state.warn_other_global_batch(out, **batch, config=cfg)
    if is_main_process():
        run_state.write_config(out, {**_run_options(cfg), run_state.PROCESSES_KEY: args.world_size})
    # LoRA: frozen base in the compute dtype; full fine-tuning keeps fp32 master weights (mixed precision)
    # a PEFT adapter (an adapter folder, a run folder without merged/, a hub id) is trained on, not wrapped in a
    # second one
    from_adapter = peft_adapter_config(cfg.model) is not None
    loaded = load_model(cfg.model, device=process_device(args), dtype=training_load_dtype(compute_dtype, full=cfg.full),
                        trainable=cfg.full or from_adapter,
                        image_budget=ImageBudget.from_args(cfg), attn_implementation=cfg.attn_implementation)
    torch.manual_seed(cfg.seed)  # LoRA initialisation
    model = lora_model(loaded.model, cfg)
    collator = PromptAnswerCollator(loaded.adapter,
                                    loaded.image_budget.image_loader(data_root, video=VideoSampling.from_fields(cfg)),
                                    source=", ".join(cfg.records),
                                    train_turn_end=cfg.train_turn_end, group_ids=cfg.group_weight > 0)
    title = f"{cfg.role} — {Path(str(cfg.model)).name}"
    callbacks = [non_reentrant_checkpointing_callback(), CurvesCallback(out, title=title),
                 WarmupCheck(option_name(cfg, "warmup_steps"), option_name(cfg, "max_steps"))]
    judge_check = None
    if held_out:
        from unime.train.judge_eval import JudgeHeldOutCallback

        train_answers = [ex.answer for g in groups for ex in g]
        judge_check = JudgeHeldOutCallback(held_out, collator, out, every=cfg.eval_steps, batch_size=cfg.batch_size,
                                           base_rate=train_answers.count(judge_answer(True)) / len(train_answers))
        callbacks.append(judge_check)
        log.info("judge: %d held-out pairs (%d records) scored every %s steps", len(held_out),
                 len({f"{ex.source}: {ex.record}" for ex in held_out}), cfg.eval_steps or "~1/5 of the")
    answer_ids = (loaded.adapter.single_token_id(judge_answer(True)),
                  loaded.adapter.single_token_id(judge_answer(False)))
    trainer = _trainer_class()(model=model, args=args, train_dataset=ExampleDataset(groups), data_collator=collator,
                               callbacks=callbacks, group_weight=cfg.group_weight, answer_ids=answer_ids)
    run_state.train_or_finish(trainer, plan.checkpoint)

    history = run_state.step_log(trainer.state.log_history)
    num_candidates = cfg.num_negatives + 1 if cfg.role == "reranker" and LIST in cfg.losses else None
    loss_levels = None
    if cfg.role == "judge":
        from unime.train.judge_eval import final_losses, loss_level_note, training_loss_levels

        answer_tokens = (len(loaded.adapter.tokenizer(judge_answer(True) + collator.format.turn_end,
                                                      add_special_tokens=False)["input_ids"])
                         if cfg.train_turn_end else 1)
        loss_levels = {"final": final_losses(history),
                       "base_rate": training_loss_levels(groups, answer_tokens=answer_tokens,
                                                         group_weight=cfg.group_weight)}
        if "loss" in loss_levels["final"]:
            log.info("judge: final training loss %.4f against its base-rate level %.4f (a prior-only judge)%s",
                     loss_levels["final"]["loss"], loss_levels["base_rate"]["total"],
                     loss_level_note(loss_levels["final"]["loss"], loss_levels["base_rate"]))
    per_device, per_step, configured = batch_that_runs(len(groups), **batch)  # the batch that ran
    meta = {
        "role": cfg.role, "num_candidates": num_candidates, "losses": list(cfg.losses),
        "batch": {"unit": batch_unit, "per_device": per_device, "processes": args.world_size,
                  "gradient_accumulation": cfg.grad_accum, "global": per_step,
                  **({"global_configured": configured} if per_step < configured else {})},
        # the full model the weights start from (a run folder's merged/, an adapter's base), and the adapter
        # trained on: the adapter written here loads on `base_model` (QA: it named --model's run folder)
        **loaded.origin(), "model_type": model.config.model_type,
        "answer_prefix": collator.format.prefix, "records": n_records, "examples": n_examples,
        "skipped": skips.total, "fallback_records": n_fallback, "steps": trainer.state.global_step,
        "first_loss": history[0]["loss"] if history else None, "last_loss": history[-1]["loss"] if history else None,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("records", "out")},
        "image_budget": loaded.image_budget.to_dict(),
        "heldout": judge_check.final if judge_check else None, "loss_levels": loss_levels,
    }
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        export_reranker(trainer.model, loaded.processor, out, meta=meta,
                        adapter=not cfg.full and (cfg.role == "reranker" or cfg.save_adapter),
                        merged=cfg.full or cfg.role == "judge" or cfg.merge, image_budget=loaded.image_budget,
                        merged_dtype=cfg.merged_dtype)
    trainer.accelerator.wait_for_everyone()
    return TrainResult(out=str(out), role=cfg.role, examples=n_examples, records=n_records, skipped=skips.total,
                       steps=trainer.state.global_step, num_candidates=num_candidates,
                       first_loss=meta["first_loss"], last_loss=meta["last_loss"], log_history=history,
                       heldout=meta["heldout"], loss_levels=loss_levels, fallback_records=n_fallback)


def model_card(meta: dict, adapter_lora: LoraSettings | None = None) -> ModelCard:
    """README.md of a reranker / judge folder. `adapter_lora`: the LoRA settings of the adapter a run continued
    (`meta["started_from_adapter"]`), which it trained with, not its options'."""
    cfg = meta.get("config", {})
    lora = adapter_lora or LoraSettings(r=cfg.get("lora_r"), alpha=cfg.get("lora_alpha"),
                                        dropout=cfg.get("lora_dropout"), dora=bool(cfg.get("dora")))
    role = meta["role"]
    if role == "judge":
        title = "Yes/No judge (unime, UniME-V2 §1.3 prompt)"
        summary = ("Trained with `unime train judge` on labelled (query, positive) → Yes / (query, negative) → No "
                   "pairs. Score = sigmoid(l_Yes − l_No) at the answer position:")
        usage = ('from unime.models.judge import JudgeScorer\njudge = JudgeScorer.from_pretrained("merged")\n'
                 "scores = judge.score_candidates(query, candidates)")
    else:
        title = "Multimodal reranker (unime, UniME-V2 §1.6)"
        summary = (f"Trained with `unime train reranker`: L = {' + '.join('L_' + x for x in meta['losses'])}, "
                   f"{meta['num_candidates'] or '-'} candidates per listwise prompt.")
        usage = ('from unime.models.reranker import Reranker\nrr = Reranker.from_pretrained("adapter")\n'
                 "best = rr.pick(query, candidates)        # listwise\n"
                 "p_yes = rr.score_pairs(query, candidates) # pairwise")
    rows = {"records": meta["records"], "examples": meta["examples"], "skipped records": meta["skipped"],
            **({"records left out (mined by the fallback)": meta["fallback_records"]}
               if meta.get("fallback_records") else {}),
            "steps": meta["steps"], "first loss": meta["first_loss"], "last loss": meta["last_loss"],
            "fine-tuning": "full (every parameter)" if cfg.get("full") else
                           f"LoRA r={lora.r} alpha={lora.alpha} dropout={lora.dropout}" + (" DoRA" if lora.dora else "")
                           + (f", continuing the adapter {meta['started_from_adapter']}"
                              if meta.get("started_from_adapter") else ""),
            "modules trained in full": "all" if cfg.get("full") else ", ".join(cfg.get("train_modules") or []) or "-",
            "learning rate": cfg.get("learning_rate"),
            **({"learning-rate schedule": cfg["lr_scheduler"]} if "lr_scheduler" in cfg else {}),
            **_batch_rows(meta), "seed": cfg.get("seed")}
    return ModelCard(title=title, base_model=meta["base_model"], summary=summary, usage=usage,
                     sections={"Training": rows}, tags=[role, "multimodal"],
                     notes=[f"Curves: curves.csv, curves.png; configuration: {METADATA_FILE}."])


def _batch_rows(meta: dict) -> dict:
    """The card's batch rows: the batch that ran (`meta["batch"]`), with the configured global batch beside it when
    the records could not fill it (`unime.train.global_batch`)."""
    batch = meta["batch"]
    unit = batch["unit"]
    rows = {f"batch size ({unit} per device)": batch["per_device"], "processes": batch["processes"],
            "gradient accumulation": batch["gradient_accumulation"], f"global batch ({unit} per step)": batch["global"]}
    if "global_configured" in batch:
        rows["global batch configured"] = batch["global_configured"]
    return rows


def export_reranker(model, processor, out: Path, *, meta: dict, adapter: bool, merged: bool,
                    image_budget=None, merged_dtype: str = "auto") -> dict[str, Path]:
    """The stage's final folders (`unime.models.export.export_final`, with unime_reranker.json in each),
    then, last, out/unime_reranker.json. Merging modifies `model` in place (done last)."""
    from unime.models.export import export_final, write_json_atomic
    from unime.outdir import require_replaceable

    require_replaceable(out, METADATA_FILE)  # never replace what this run's command did not write
    own = LoraSettings.of_peft_model(model) if meta.get("started_from_adapter") else None  # trained with its LoRA
    written = export_final(model, processor, out, card=model_card(meta, own), adapter=adapter, merged=merged,
                           image_budget=image_budget, folder_files={METADATA_FILE: json.dumps(meta, indent=1)},
                           base_model=meta["base_model"], merged_dtype=merged_dtype)
    write_json_atomic(out / METADATA_FILE, meta)
    return written
