"""Embedder training with soft semantic labels (UniME-V2 stage D, SPEC §1.5).

`train_embedder(EmbedderTrainingConfig(...))` trains an `Embedder` (LoRA / DoRA or full fine-tuning)
on records with hard negatives and judge scores, with one of the losses of `unime.train.losses`,
optionally with GradCache, on one process or under `torchrun` (DDP, embeddings all-gathered across
processes). It uses the Hugging Face `Trainer` as it is — optimizer, schedule, gradient accumulation,
DDP wrapping, logging, periodic checkpoints and exact resume (optimizer, scheduler, RNG and data
position) — and overrides only what an embedding loss needs: `compute_loss`, checkpoint weights
(adapter only), and the data loader when batches must be homogeneous.

Outputs under `out`: `checkpoints/checkpoint-N/` (resumable), `adapter/`, `merged/`, `README.md`
(model card), `curves.csv`, `curves.png`, `metrics.json`, `train_config.json`.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from unime.data.items import Record
from unime.data.roots import resolve_data_root
from unime.data.skips import SkipReport, empty_file_error, shown_on_failure
from unime.errors import DataError, UnimeError
from unime.data.video import VideoSampling
from unime.models.hf_arguments import (hf_training_arguments, non_reentrant_checkpointing_callback,
                                     process_device)
from unime.models.image_budget import ImageBudget
from unime.models.item_format import item_format_record, save_item_format
from unime.models.loading import refuse_unreachable_hub_model, trainer_device
from unime.models.lora import LoraSettings, model_to_train
from unime.models import export, run_state
from unime.train.batching import EmbedderCollator, HomogeneousBatchSampler, RecordDataset, check_records
from unime.models.curves import CURVES_CSV, CURVES_PNG, CurvesCallback, step_rows
from unime.models.warmup import WarmupCheck
from unime.options import check_optimizer_name, option_name
from unime.train import global_batch
from unime.train.distributed import gather_constant, gather_with_grad
from unime.train.gradcache import GradCache
from unime.train.embedder_config import MAX_AUTO_HARD_NEGATIVES, EmbedderTrainingConfig, per_device_batch
from unime.train.losses import LOSSES, GroupLoss, build_loss

logger = logging.getLogger(__name__)

IMAGE_PREFLIGHT = 64  # records whose images are decoded before training when bad input raises


def build_loss_from_config(config: EmbedderTrainingConfig) -> GroupLoss:
    if config.loss == "symmetric_kl":
        return build_loss("symmetric_kl", temperature=config.tau, label_temperature=config.label_tau, eps=config.kl_eps,
                          in_batch=bool(config.in_batch))
    if config.loss == "js":
        return build_loss("js", temperature=config.tau, label_temperature=config.label_tau,
                          in_batch=bool(config.in_batch))
    return build_loss("infonce", temperature=config.tau, in_batch=config.infonce_in_batch,
                      # None = not yet chosen from the records (`resolve_auto_options`)
                      use_hard_negatives=config.hard_negatives is None or config.hard_negatives > 0,
                      symmetric=config.symmetric,
                      mask_duplicates=config.mask_duplicates)


class EmbeddingModel(nn.Module):
    """The trainer's view of an `Embedder`: `forward(**model_inputs)` → L2-normalised embeddings.

    Owns the embedder's model as a submodule, so DDP wraps and synchronises exactly its parameters."""

    accepts_loss_kwargs = False

    def __init__(self, embedder):
        super().__init__()
        self.encoder = embedder.model
        self.embedder = embedder

    def forward(self, **inputs) -> torch.Tensor:
        return self.embedder.forward(inputs)

    # --gradient-checkpointing: the Trainer switches it on the model it trains, this wrapper; the layers are the
    # encoder's
    def activation_checkpointing_enable(self, **kwargs) -> None:
        self.encoder.activation_checkpointing_enable(**kwargs)

    def activation_checkpointing_disable(self) -> None:
        self.encoder.activation_checkpointing_disable()


class EmbedderTrainer(Trainer):
    """`transformers.Trainer` with an embedding loss. Batches come from `EmbedderCollator`."""

    # compute_loss returns a per-batch mean: the Trainer divides it by the accumulation steps
    loss_is_scaled_for_ga = False

    def __init__(self, *, embedder, loss: GroupLoss, grad_cache: GradCache | None = None,
                 homogeneous_sampler: HomogeneousBatchSampler | None = None, **kwargs):
        self.embedder = embedder
        self.loss_module = loss
        self.grad_cache = grad_cache
        self.homogeneous_sampler = homogeneous_sampler
        self._metric_sums: dict[str, float] = {}
        self._metric_count = 0
        super().__init__(model=EmbeddingModel(embedder), **kwargs)

    # -- loss ------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        chunks = inputs["chunks"]
        num_queries, group_size = int(inputs["num_queries"]), int(inputs["group_size"])
        scores = inputs.get("scores")
        candidate_ids = inputs.get("candidate_ids")
        item_index = inputs.get("item_index")  # the collator encoded each distinct item once

        def encode(chunk):
            return model(**chunk)

        def loss_of(reps: torch.Tensor) -> torch.Tensor:
            if item_index is not None:
                reps = reps[item_index]
            queries = gather_with_grad(reps[:num_queries])
            candidates = gather_with_grad(reps[num_queries:].reshape(num_queries, group_size, -1))
            # ids only when the batch has them, so a loss without the keyword still works on batches without
            extra = {} if candidate_ids is None else {"candidate_ids": gather_constant(candidate_ids)}
            loss = self.loss_module(queries, candidates, gather_constant(scores), **extra)
            self._record_accuracy(queries.detach(), candidates.detach(), extra.get("candidate_ids"))
            return loss

        if self.grad_cache is not None and torch.is_grad_enabled():
            loss = self.grad_cache.loss(encode, chunks, loss_of, no_sync=self._no_sync_context(model))
        else:
            loss = loss_of(torch.cat([encode(c) for c in chunks]))
        return (loss, {}) if return_outputs else loss

    @staticmethod
    def _no_sync_context(model):
        """DDP's `no_sync` while this micro-batch will all-reduce (GradCache then syncs its last chunk
        only); None outside DDP or when the Trainer already defers the sync (accumulation)."""
        if isinstance(model, nn.parallel.DistributedDataParallel) and model.require_backward_grad_sync:
            return model.no_sync
        return None

    def _record_accuracy(self, queries: torch.Tensor, candidates: torch.Tensor,
                         candidate_ids: torch.Tensor | None = None) -> None:
        """Accumulate the logged training accuracies (see `batch_accuracies`)."""
        for name, hits in batch_accuracies(queries, candidates, candidate_ids).items():
            self._metric_sums[name] = self._metric_sums.get(name, 0.0) + hits
        self._metric_count += int(queries.shape[0])

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._metric_count:
            logs = {**logs, **{k: v / self._metric_count for k, v in self._metric_sums.items()}}
            self._metric_sums, self._metric_count = {}, 0
        super().log(logs, start_time)

    # -- data ------------------------------------------------------------------------------------
    def get_train_dataloader(self):
        if self.homogeneous_sampler is None:
            return super().get_train_dataloader()
        from torch.utils.data import DataLoader

        loader = DataLoader(self.train_dataset, batch_sampler=self.homogeneous_sampler, collate_fn=self.data_collator,
                            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory)
        # accelerate deals whole batches round-robin to the processes: each per-device batch stays homogeneous
        return self.accelerator.prepare(loader)

    def _run_epoch(self, *args, **kwargs):
        # the Trainer sets the epoch of samplers it can reach; after a resume skip-wrapper under DDP it
        # cannot reach ours, so set it here (the data order of an epoch depends on it)
        if self.homogeneous_sampler is not None and "epoch" in kwargs:
            self.homogeneous_sampler.set_epoch(kwargs["epoch"])
        return super()._run_epoch(*args, **kwargs)

    # -- checkpoint weights: the adapter (or the full model), not the frozen base -------------------
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        if self.args.should_save:
            run_state.save_training_weights(self.embedder.model, output_dir or self.args.output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        run_state.load_training_weights(self.embedder.model, resume_from_checkpoint)


@dataclass
class EmbedderTrainingResult:
    out: Path
    merged: Path
    adapter: Path | None
    metrics: dict[str, Any]
    log_history: list[dict[str, Any]] = field(default_factory=list)


def read_records_for_training(config: EmbedderTrainingConfig, skips: SkipReport) -> list[Record]:
    """The records of the file `config.records`; one holding no row at all (empty, blank lines) is refused saying
    so."""
    from unime.data.io import read_records

    skipped = skips.total
    records = read_records(config.records, on_error=config.on_error, skips=skips)
    if not records and skips.total == skipped:
        raise empty_file_error("no usable training records", config.records)
    return records


def resolve_auto_options(config: EmbedderTrainingConfig, records: Sequence[Record]) -> EmbedderTrainingConfig:
    """`loss="auto"` and / or `hard_negatives=None` → the choice `label_quality.choose_loss` makes."""
    from unime.train.label_quality import choose_loss

    if config.loss == "auto":
        choice = choose_loss(records, config.hard_negatives)
        logger.info("--loss auto: %s (loss %s, %d hard negatives)", choice.reason, choice.loss, choice.hard_negatives)
        return dataclasses.replace(config, loss=choice.loss, hard_negatives=choice.hard_negatives)
    if LOSSES.get(config.loss) is not None and LOSSES[config.loss].requires_scores:
        k = choose_loss(records).hard_negatives or 8
    else:
        k = min(MAX_AUTO_HARD_NEGATIVES, min((len(r.negatives) for r in records), default=0))
    logger.info("--hard-negatives: %d (the records' negatives, at most %d)", k, MAX_AUTO_HARD_NEGATIVES)
    return dataclasses.replace(config, hard_negatives=k)


def check_fallback_labels(config: EmbedderTrainingConfig, records: Sequence[Record], loss: GroupLoss) -> None:
    """A soft-label loss refuses records mined mostly by the fallback (see `unime.train.label_quality`)."""
    from unime.train.label_quality import FALLBACK_REFUSE_SHARE, FALLBACK_WARN_SHARE, fallback_share

    if not loss.requires_scores:
        return
    share, n, where = fallback_share(records, config.records)
    if share > FALLBACK_REFUSE_SHARE and not config.allow_fallback_labels:
        raise DataError(
            f"{n} records ({100 * share:.1f} %, from {where}) were mined by the fallback: no candidate survived the "
            f"judge's false-negative filter, so their negatives are random and scored 1.0, above the positive. The "
            f"{config.loss} loss would pull each query towards them. Check the judge (`unime judge --pairs` with a "
            "label column reports its AUC; `unime mine --backend oracle --judge QRELS` shows what a right judge "
            "gives), train with --loss infonce, or pass --allow-fallback-labels to train on them anyway",
            source=config.records, field="negative_scores")
    if share > FALLBACK_WARN_SHARE:
        logger.warning("%d records (%.1f %%, from %s) were mined by the fallback (random negatives scored 1.0); "
                       "the paper sees < 1 %%", n, 100 * share, where)


def _image_budget(config: EmbedderTrainingConfig) -> ImageBudget:
    return ImageBudget.from_options(config.min_pixels, config.max_pixels, config.image_size)


def _naming_the_data_root(err: DataError) -> DataError:
    """`err`, a missing image of a record given in memory (named by its index, `unime.data.io.in_memory_name`),
    saying what the folder its message names (`unime.data.video.looked_in`) is for such records: their paths are
    relative to data_root, the working directory unless set (QA). A record read from a file keeps the message (it
    was told it was in memory whenever `--loss auto` had read the file first)."""
    from unime.data.io import is_in_memory_name, raw_message
    from unime.data.skips import data_error, reason_of

    message = raw_message(err)
    if not is_in_memory_name(err.record) or "file not found" not in message or "(looked in " not in message \
            or not message.endswith(")"):
        return err
    return data_error(reason_of(err), f"{message[:-1]}: the paths of in-memory records are relative to data_root, "
                      "the working directory unless set)", source=err.source, record=err.record, field=err.field)


def _usable_records(config: EmbedderTrainingConfig, records: Sequence[Record] | None, loss: GroupLoss,
                    data_root: str, skips: SkipReport) -> list[Record]:
    """Read (unless given) and check the records; images are decoded up front — all of them under the
    skip policy (bad ones are skipped and counted), the first `IMAGE_PREFLIGHT` records otherwise (a
    wrong --data-root fails in seconds, not after the model has loaded)."""
    from unime.data.io import check_images, origin_of, with_origin
    from unime.models.loading import checkpoint_image_loader

    source = config.records
    if records is None:
        records = read_records_for_training(config, skips)
    records = check_records(records, num_negatives=config.hard_negatives, needs_scores=loss.requires_scores,
                            source=source, loss_name=loss.name, on_error=config.on_error, skips=skips,
                            config=config)
    # only the negatives training uses are checked
    used = [with_origin(dataclasses.replace(r, negatives=r.negatives[:config.hard_negatives]), origin_of(r))
            for r in records]  # (the line each was read from names it in errors)
    # the frames training will use, the images within the model's processor's limits
    loader = checkpoint_image_loader(config.model, _image_budget(config), data_root,
                                     video=VideoSampling.from_fields(config))
    if config.on_error == "skip":
        keep = {id(r) for r in check_images(used, loader, on_error="skip", skips=skips, source=source)}
        records = [r for r, u in zip(records, used) if id(u) in keep]
        if not records:
            raise DataError("no usable training records", source=source)
    else:
        try:
            check_images(used[:IMAGE_PREFLIGHT], loader, source=source)
        except DataError as e:
            raise _naming_the_data_root(e) from None
    if skips.total:
        logger.warning("%s: %s", source, skips.summary())
    return records


# options that may change between a run and its continuation without changing what is trained; "processes" is
# not an option: the number of processes the run was launched on, recorded beside them
# (`run_state.warn_other_global_batch`)
_RESUME_FREE_OPTIONS = {"resume", "overwrite", "save_steps", "save_total_limit", "logging_steps", "workers",
                        run_state.PROCESSES_KEY}
FINISHED_FILE = "metrics.json"  # written last (`unime.models.run_state`)


def _free_options(config: EmbedderTrainingConfig, *, training: bool) -> set[str]:
    """The options a re-run may change: `_RESUME_FREE_OPTIONS` and, with --global-batch, the per-device batch
    it derives from the process count (train_config.json records that). A finished run is finished whatever
    the count; an interrupted one continues at the same global batch with another count — the Trainer's
    seeded order and its skip on resume count global batches (measured: 2 processes then 1 end with the
    losses and weights of 2 uninterrupted) — but not with --homogeneous-batches, whose batches are cut at the
    per-device size (`_refuse_other_process_count`)."""
    if config.global_batch and not (training and config.homogeneous_batches):
        return _RESUME_FREE_OPTIONS | {"batch_size"}
    return _RESUME_FREE_OPTIONS


def _refuse_other_process_count(out: Path, config: EmbedderTrainingConfig) -> None:
    """Raise `ChangedOptions` when an interrupted --global-batch --homogeneous-batches run in `out` ran on
    another number of processes: its data order depends on the per-device batch."""
    before = run_state.previous_config(out) or {}
    if not (config.global_batch and config.homogeneous_batches) or config.overwrite or any(
            before.get(k) != getattr(config, k) for k in ("global_batch", "grad_accum", "homogeneous_batches")):
        return
    was = before.get("batch_size")
    if not isinstance(was, int) or was == config.batch_size:
        return
    processes = config.global_batch // (was * config.grad_accum)
    now = config.global_batch // (config.batch_size * config.grad_accum)
    raise run_state.ChangedOptions(
        "{_out} holds a run on {_then} process(es) and this one has {_now}: the per-device batch is derived from "
        "{global_batch} {_global} and the number of processes ({_was} then, {_is} now), and {homogeneous_batches} "
        "cuts the batches at that size, so the data order differs; resume it with {_then} process(es), pass "
        "{+overwrite} to start over, or choose another {out}", config, _out=out, _then=processes, _now=now,
        _global=config.global_batch, _was=was, _is=config.batch_size)


def _resume_path(config: EmbedderTrainingConfig) -> str | None:
    """`--resume PATH` (an explicit checkpoint folder); True / False / "latest": the convention's choice."""
    return None if config.resume in (False, True, None, "", "false", "true", "latest") else str(config.resume)


def _finished_result(config: EmbedderTrainingConfig) -> "EmbedderTrainingResult | None":
    """The result of a finished run with the same options in `config.out` (nothing to do), else None."""
    import json

    out = Path(config.out)
    before = run_state.previous_config(out) or {}
    options = config.to_dict()
    if options["loss"] == "auto":  # `--loss auto` / no --hard-negatives: the run saved what they resolved to
        options["loss"] = before.get("loss")
    if options["hard_negatives"] is None:
        options["hard_negatives"] = before.get("hard_negatives")
    if not run_state.finished_run(out, options, free=_free_options(config, training=False), overwrite=config.overwrite,
                                  finished_file=FINISHED_FILE, config=config):
        return None
    metrics = json.loads((out / FINISHED_FILE).read_text(encoding="utf-8"))
    logger.info("%s: this run is finished (%s steps); nothing to do (--overwrite starts it over)", out,
                metrics.get("steps"))
    adapter = out / export.ADAPTER_DIR
    return EmbedderTrainingResult(out=out, merged=out / export.MERGED_DIR,
                                  adapter=adapter if adapter.is_dir() else None,
                                  metrics={**metrics, "already_finished": True})


def lora_model(model, config: EmbedderTrainingConfig):
    """`model` as the embedder trains it (`unime.models.lora.model_to_train`): with its LoRA (or DoRA) adapter;
    every parameter with --full; an adapter loaded (--model an adapter folder) is trained on."""
    return model_to_train(model, None if config.full else LoraSettings.from_options(config), source=config.model,
                          full_option="--full")


def _training_arguments(config: EmbedderTrainingConfig, checkpoint_root: Path,
                        check_only: bool = False) -> TrainingArguments | None:
    on_cpu = trainer_device(config.device).startswith("cpu")
    bf16 = config.dtype in ("bf16", "bfloat16") or (config.dtype == "auto" and not on_cpu)
    # every trainable parameter is used in every forward pass when LoRA adapts only the decoder (all-linear
    # too); otherwise (vision LoRA, full fine-tuning) a text-only chunk leaves vision parameters unused
    find_unused = bool(config.full or config.lora_vision)
    return hf_training_arguments(
        TrainingArguments, output_dir=checkpoint_root, batch_size=config.batch_size, grad_accum=config.grad_accum,
        max_steps=config.steps if config.steps is not None else -1,
        epochs=config.epochs if config.epochs is not None else 1.0, learning_rate=config.lr,
        lr_scheduler=config.lr_scheduler, warmup_steps=config.warmup, weight_decay=config.weight_decay,
        seed=config.seed, data_seed=config.seed, logging_steps=config.logging_steps, save_steps=config.save_steps,
        save_total_limit=config.save_total_limit, use_cpu=on_cpu, bf16=bf16, workers=config.workers,
        show_progress=logger.isEnabledFor(logging.INFO), activation_checkpointing=config.gradient_checkpointing,
        max_grad_norm=config.max_grad_norm, optim=config.optim,
        dataloader_pin_memory=not on_cpu, ddp_find_unused_parameters=find_unused,
        # the models' buffers are constants (rotary tables): no per-forward broadcast, which would
        # also require the same number of forward passes on every process
        ddp_broadcast_buffers=False, trainer_arg=config.trainer_arg, check_only=check_only, config=config,
        option_keys={"lr_scheduler_type": "--lr-scheduler", "warmup_steps": "--warmup",
                     "weight_decay": "--weight-decay", "dataloader_num_workers": "--workers",
                     "save_total_limit": "--save-total-limit"})


def _data_summary(config: EmbedderTrainingConfig, records: Sequence[Record], data_root: str,
                  skips: SkipReport) -> dict[str, Any]:
    counts = collections.Counter(r.dataset or "<unnamed>" for r in records)
    summary = {"records": config.records, "data_root": data_root, "num_records": len(records),
               "datasets": dict(sorted(counts.items())), "hard_negatives_per_query": config.hard_negatives,
               "homogeneous_batches": config.homogeneous_batches}
    if skips.total:
        summary["skipped_records"] = {"total": skips.total, **dict(sorted(skips.counts.items()))}
    return summary


def batch_accuracies(queries: torch.Tensor, candidates: torch.Tensor,
                     candidate_ids: torch.Tensor | None = None) -> dict[str, float]:
    """Number of queries (of the batch) that rank right, by two measures:

    - `in_batch_accuracy`: the query's most similar positive among all the batch's positives is its own
      (or a copy of it: the same candidate id);
    - `group_accuracy` (only with hard negatives): its positive beats its own hard negatives.
    """
    q = torch.nn.functional.normalize(queries.float(), dim=-1)
    positives = torch.nn.functional.normalize(candidates[:, 0].float(), dim=-1)
    best = (q @ positives.T).argmax(dim=-1)
    own = torch.arange(q.shape[0], device=q.device)
    if candidate_ids is not None:
        pos_ids = candidate_ids[:, 0].to(q.device)
        hits = pos_ids[best] == pos_ids
    else:
        hits = best == own
    out = {"in_batch_accuracy": float(hits.float().sum())}
    if candidates.shape[1] > 1:
        sims = GroupLoss.group_similarities(queries, candidates)
        out["group_accuracy"] = float((sims.argmax(dim=-1) == 0).float().sum())
    return out


def _final_metrics(log_history: Sequence[dict[str, Any]], global_step: int) -> dict[str, Any]:
    """First and last logged loss (the last log is a mean over its logging window), accuracies, and the
    mean loss over the whole run (every step, across resumptions: `run_state.whole_run_loss`)."""
    rows = run_state.step_log(step_rows(log_history))
    summary = next((e for e in reversed(log_history) if "train_runtime" in e), {})
    metrics: dict[str, Any] = {"steps": global_step}
    if rows:
        metrics["initial_loss"] = rows[0]["loss"]
        metrics["final_loss"] = rows[-1]["loss"]
        metrics["final_loss_step"] = rows[-1]["step"]
        for key in ("group_accuracy", "in_batch_accuracy"):
            if key in rows[-1]:
                metrics[f"final_{key}"] = rows[-1][key]
    for key in ("train_runtime", "train_samples_per_second"):  # of the last session
        if key in summary:
            metrics[key] = summary[key]
    loss = run_state.whole_run_loss(rows)
    if loss is not None:
        metrics["train_loss"] = loss
    return metrics


@dataclass
class EmbedderTrainingRun:
    """A prepared run: the trainer and what the export needs (see `prepare_embedder_training`)."""

    config: EmbedderTrainingConfig
    trainer: EmbedderTrainer
    embedder: Any
    loss: GroupLoss
    records: list[Record]
    data_root: str
    lora: LoraSettings | None
    resume_from: Path | None
    skips: SkipReport = field(default_factory=SkipReport)

    @property
    def out(self) -> Path:
        return Path(self.config.out)


def with_resolved_batch(config: EmbedderTrainingConfig) -> EmbedderTrainingConfig:
    """`config` with `--global-batch` resolved into the per-device `--batch-size` it sets for this run's
    processes (`per_device_batch`): the value the trainer uses and `train_config.json` records."""
    if not config.global_batch:
        return config
    return dataclasses.replace(config, batch_size=per_device_batch(config.global_batch, config.grad_accum))


def prepare_embedder_training(config: EmbedderTrainingConfig, *, records: Sequence[Record | dict] | None = None,
                              callbacks: Sequence[Any] = ()) -> EmbedderTrainingRun:
    """Validate the configuration and the records, load the model (+ LoRA), and build the trainer.

    `records` (already loaded: `Record`s or dicts, `in_memory_records`) are used instead of reading
    `config.records`, which then only names their source in errors and in the model card."""
    from transformers import set_seed

    from unime.models.embedder import Embedder
    from unime.models.loading import training_load_dtype

    if records is not None and config.records is None:
        config = dataclasses.replace(config, records="<in-memory records>")
    if records is not None:
        records = in_memory_records(records, config.records)
    config = with_resolved_batch(config)
    skips = SkipReport()
    if config.loss == "auto" or config.hard_negatives is None:
        if records is None:
            with shown_on_failure(skips):
                records = read_records_for_training(config, skips)
        config = resolve_auto_options(config, records)
    config.validate()
    out = Path(config.out)
    checkpoint_root = out / run_state.CHECKPOINTS_DIR
    source = config.records
    loss = build_loss_from_config(config)
    k = config.hard_negatives
    data_root = resolve_data_root(source, config.data_root) if os.path.isfile(source) else (config.data_root or ".")
    _refuse_other_process_count(out, config)
    plan_options = dict(free=_free_options(config, training=True), overwrite=config.overwrite,
                        finished_file=FINISHED_FILE, resume=_resume_path(config), config=config)
    # the refusals for the options, then the records checked: all before anything is written in `out`
    # (`run_state.plan_run`, below, records the inputs and, under --overwrite, removes the earlier checkpoints)
    if run_state.check_run(out, config.to_dict(), **plan_options):  # `train_embedder` reports such a run;
        raise UnimeError(f"{out} holds a finished run with these options: nothing to train (`train_embedder` "
                         "reports it; --overwrite starts it over)")  # training it again would replace its export
    with shown_on_failure(skips):  # every record skipped: the reasons before "no usable training records"
        records = _usable_records(config, records, loss, data_root, skips)
    check_fallback_labels(config, records, loss)

    args = _training_arguments(config, checkpoint_root)
    _warn_short_batch(config, len(records), args.world_size)
    resume_from = run_state.plan_run(out, config.to_dict(), **plan_options).checkpoint  # not finished (above)
    if resume_from is not None and not config.global_batch:  # --global-batch keeps the global batch
        run_state.warn_other_global_batch(out, batch_size=config.batch_size, grad_accum=config.grad_accum,
                                          processes=args.world_size, fixed_by="global_batch", config=config)
    device = process_device(args)
    set_seed(config.seed)  # LoRA initialisation
    # LoRA: frozen base in the compute dtype (bf16 under autocast); full fine-tuning keeps fp32 master weights
    load_dtype = training_load_dtype(torch.bfloat16 if args.bf16 else torch.float32, full=config.full)
    embedder = Embedder.from_pretrained(config.model, device=device, dtype=load_dtype, pooling=config.pooling,
                                        data_root=data_root, trainable=True,
                                        video_sampling=VideoSampling.from_fields(config),
                                        image_budget=_image_budget(config), item_format=config.item_format,
                                        attn_implementation=config.attn_implementation)
    # the LoRA settings of a new adapter (none for --full, or an adapter loaded: it is trained on)
    lora = None if config.full or run_state.is_peft(embedder.model) else LoraSettings.from_options(config)
    embedder.model = lora_model(embedder.model, config)
    if config.full and config.freeze_vision:
        frozen = embedder.adapter.freeze_vision(embedder.model)
        logger.info("full fine-tuning with the vision tower frozen (%d parameters)", frozen)
    embedder.model.train()

    # input assembly only (no model): the collator runs in data-loader workers, on CPU
    input_builder = Embedder(None, embedder.processor, embedder.adapter, pooling=embedder.pooling,
                             image_loader=embedder.image_loader, instruction_suffix=embedder.instruction_suffix,
                             device="cpu", item_format=embedder.item_format)
    collator = EmbedderCollator(input_builder, num_negatives=k, with_scores=loss.requires_scores,
                                chunk_size=config.chunk_size if config.gradcache else None, source=source)
    sampler = (HomogeneousBatchSampler([r.dataset for r in records], config.batch_size, seed=config.seed)
               if config.homogeneous_batches else None)

    all_callbacks: list[Any] = [non_reentrant_checkpointing_callback(),
                                CurvesCallback(out, title=f"{loss.name} — {Path(str(config.model)).name}"),
                                WarmupCheck(option_name(config, "warmup"), option_name(config, "steps"))]
    if args.process_index == 0:
        tensorboard = _tensorboard_callback(out)
        if tensorboard is not None:
            all_callbacks.append(tensorboard)
    all_callbacks += list(callbacks)
    trainer = EmbedderTrainer(embedder=embedder, loss=loss, grad_cache=GradCache() if config.gradcache else None,
                              homogeneous_sampler=sampler, args=args, train_dataset=RecordDataset(records),
                              data_collator=collator, callbacks=all_callbacks)
    return EmbedderTrainingRun(config=config, trainer=trainer, embedder=embedder, loss=loss, records=records,
                               data_root=data_root, lora=lora, resume_from=resume_from, skips=skips)


def check_embedder_options(config: EmbedderTrainingConfig) -> EmbedderTrainingConfig:
    """The checks of `config` that need no model and no records — the options, the --device, the optimizer, the
    --trainer-arg keys — and, last, a hub id --model asked of the hub (`refuse_unreachable_hub_model`) run before
    the output folder is claimed (by the trainer, and by the command line: `unime.cli.train`), so that a refused run
    writes nothing. Returns `config` with its batch resolved."""
    config = with_resolved_batch(config)  # a finished run recorded the per-device batch it used
    if config.loss != "auto" and config.hard_negatives is not None:
        config.validate()  # else once `--loss auto` / the negatives count are resolved from the records
    elif config.records is None:
        raise UnimeError("no training records given")
    trainer_device(config.device)  # a --device the run cannot train on
    if config.pooling == "emb":  # the model's tokenizer has <emb> (read without the weights)
        from unime.models.embedder import check_emb_pooling

        check_emb_pooling(config.model)
    if config.optim != EmbedderTrainingConfig.optim:  # likewise an optimizer transformers does not know
        check_optimizer_name(config.optim, config)
    _training_arguments(config, Path(config.out) / run_state.CHECKPOINTS_DIR, check_only=True)
    refuse_unreachable_hub_model(config.model)  # no hub, or no such model there: before --out is claimed
    return config


def in_memory_records(records: Any, source: str | None = None) -> list[Record]:
    """The `records=` given to a trainer: a list of `Record`s or of dicts (a records file's JSON objects, parsed
    as a JSONL line is: `unime.data.io.record_from_dict`; a bad one is a `DataError` naming `source`, its index in
    the list and its field). Anything else is a TypeError naming what is expected (a dict failed deep inside
    with "'dict' object has no attribute 'negatives'", QA). Each record (a copy: the caller's stay as given) carries
    its index as its name, with its id if it has one (`records[1]`, `records[1] (id q3)`, as a file's record carries
    its line: `unime.data.io.in_memory_name`), Record or dict alike, which the later checks name it by (the number
    of negatives, the images), also once bad ones are skipped."""
    import copy

    from unime.data.io import in_memory_name, record_from_dict, row_label, with_origin
    from unime.data.items import require_list

    out = []
    for i, r in enumerate(require_list(records, name="records", of="Records or dicts")):
        if isinstance(r, dict):
            r = record_from_dict(r, source=source, record=row_label(in_memory_name(i), r))
        elif isinstance(r, Record):
            r = copy.copy(r)
        else:
            raise TypeError(f"{in_memory_name(i)}: expected a unime.data.items.Record or a dict (a records file's "
                            f"JSON object), got {type(r).__name__}")
        out.append(with_origin(r, row_label(in_memory_name(i), {"id": r.id})))  # with its id, as a file's line
    return out


def train_embedder(config: EmbedderTrainingConfig, *, records: Sequence[Record | dict] | None = None,
                   callbacks: Sequence[Any] = ()) -> EmbedderTrainingResult:
    """Train, then export the adapter, the merged model and the model card — in an output folder the
    run owns and holds locked (`unime.outdir`). Re-running continues from the last complete checkpoint,
    reports a finished run without training, and refuses changed options (`unime.models.run_state`).

    `records`: the training records in memory instead of `config.records` (`in_memory_records`: `Record`s, or
    dicts as a records file's lines hold them); their image paths are relative to `config.data_root`, the
    working directory by default."""
    from unime.outdir import claim_on_main_process

    if records is not None and config.records is None:
        config = dataclasses.replace(config, records="<in-memory records>")
    if records is not None:
        records = in_memory_records(records, config.records)
    config = check_embedder_options(config)
    with claim_on_main_process(config.out, "train embedder", config.to_dict(), overwrite=config.overwrite):
        # --resume CHECKPOINT trains from it, over a finished run too (`run_state.plan_run`)
        done = _finished_result(config) if _resume_path(config) is None else None
        if done is not None:
            return done
        return _train_embedder(config, records=records, callbacks=callbacks)


def _train_embedder(config: EmbedderTrainingConfig, *, records: Sequence[Record] | None,
                    callbacks: Sequence[Any]) -> EmbedderTrainingResult:
    run = prepare_embedder_training(config, records=records, callbacks=callbacks)
    config, trainer, out = run.config, run.trainer, run.out
    if trainer.is_world_process_zero():
        run_state.write_config(out, {**config.to_dict(), run_state.PROCESSES_KEY: trainer.args.world_size})
    run_state.train_or_finish(trainer, run.resume_from)

    history = list(trainer.state.log_history)
    metrics = _final_metrics(history, trainer.state.global_step)
    written: dict[str, Path] = {}
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        args = trainer.args
        per_device, per_step, configured = batch_that_runs(config, len(run.records), args.world_size)  # as it ran
        started = run.embedder.origin["started_from_adapter"]  # trained with that adapter's own LoRA settings
        lora = run.lora or (LoraSettings.of_peft_model(run.embedder.model) if started else None)
        hyper = {"per_device_batch_size": per_device, "processes": args.world_size,
                 "gradient_accumulation": config.grad_accum, "global_batch_queries": per_step,
                 **({"global_batch_configured": configured} if per_step < configured else {}),
                 "max_steps": trainer.state.max_steps, "learning_rate": config.lr, "lr_scheduler": config.lr_scheduler,
                 "warmup": config.warmup, "optimizer": config.optim, "weight_decay": config.weight_decay,
                 "max_grad_norm": config.max_grad_norm, "precision": "bf16 autocast" if args.bf16 else "fp32",
                 "gradcache": f"chunk size {config.chunk_size}" if config.gradcache else "off", "seed": config.seed,
                 "fine_tuning": "full" if config.full else "LoRA" if run.lora else
                                f"LoRA, continuing the adapter {started}",
                 "image_budget": run.embedder.image_budget.to_dict(), "item_format": run.embedder.item_format}
        card = export.ModelCard(
            title="Universal multimodal embedder (unime, UniME-V2 stage D)",
            base_model=run.embedder.origin["base_model"],  # the full model, not --model's run folder (QA)
            summary=f"Fine-tuned from `{config.model}` with `unime train embedder`. The embedding of an item is the "
                    "L2-normalised last-layer hidden state at the last token (or at `<emb>` if the tokenizer has it).",
            usage='from unime import Embedder\nemb = Embedder.from_pretrained("merged")   # or the adapter folder\n'
                  'vecs = emb.encode([{"text": "a red circle"}, {"image": "img.png"}])',
            sections={"Data": _data_summary(config, run.records, run.data_root, run.skips),
                      "Loss": {"name": run.loss.name, **run.loss.config()}, "Hyper-parameters": hyper,
                      "LoRA": dataclasses.asdict(lora) if lora else {}, "Final metrics (training)": metrics},
            pipeline_tag=export.EMBEDDER_PIPELINE_TAG, tags=["embedding", "multimodal", run.loss.name],
            notes=[f"Training curves: {CURVES_CSV}, {CURVES_PNG}; full configuration: train_config.json."])
        written = export.export_final(run.embedder.model, run.embedder.processor, out, card=card,
                                      image_budget=run.embedder.image_budget,
                                      base_model=run.embedder.origin["base_model"],
                                      merged_dtype=config.merged_dtype,
                                      folder_files=item_format_record(run.embedder.item_format))
        save_item_format(out, run.embedder.item_format)  # beside the run's unime_images.json (checkpoints/)
        export.write_json_atomic(out / FINISHED_FILE, metrics)  # last: the run is finished
    trainer.accelerator.wait_for_everyone()
    return EmbedderTrainingResult(out=out, merged=out / export.MERGED_DIR, adapter=written.get("adapter"),
                                  metrics=metrics, log_history=history)


def batch_that_runs(config: EmbedderTrainingConfig, records: int, processes: int) -> tuple[int, int, int]:
    """`unime.train.global_batch.batch_that_runs` of this config: with --homogeneous-batches too few records for a
    full batch are refused (`HomogeneousBatchSampler`)."""
    return global_batch.batch_that_runs(records, batch_size=config.batch_size, grad_accum=config.grad_accum,
                                        processes=processes, fixed=config.homogeneous_batches)


def _warn_short_batch(config: EmbedderTrainingConfig, records: int, processes: int) -> None:
    """A warning when the records cannot fill the global batch: every step then holds all of them."""
    global_batch.warn_short_batch(
        config.records, records, batch_size=config.batch_size, grad_accum=config.grad_accum, processes=processes,
        given=f"{option_name(config, 'global_batch')} {config.global_batch}" if config.global_batch else None,
        batch_unit="queries", fixed=config.homogeneous_batches, config=config)


def _tensorboard_callback(out: Path):
    from transformers.integrations import is_tensorboard_available

    if not is_tensorboard_available():
        return None
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(out / "tensorboard")))
