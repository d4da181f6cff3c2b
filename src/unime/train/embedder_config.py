"""The options of `unime train embedder` (`EmbedderTrainingConfig`), in a module without torch: the command
line builds its parsers from it without importing the trainer (`unime.train.embedder_trainer`)."""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from unime.data.video import VideoOptions
from unime.errors import OptionError, UnimeError
from unime.models.export import ExportOptions
from unime.models.hf_arguments import TrainerArgOptions, deepspeed_setting, gradient_checkpointing_option
from unime.models.image_budget import ImageOptions
from unime.models.item_format import ItemFormatOptions
from unime.models.loading import DeviceOptions, dtype_choices, dtype_option, refuse_missing_local_model
from unime.models.lora import (EMBEDDER_LORA_OPTIONS, LoraSettings, refuse_full_fine_tuning_of_adapter,
                               refuse_lora_vision_without_vision_targets)
from unime.options import lr_scheduler_option, on_error_option, option
from unime.train.loss_defaults import DEFAULT_KL_EPS, DEFAULT_TEMPERATURE


# hard_negatives None (the command's default): the records' count of negatives, at most this many
MAX_AUTO_HARD_NEGATIVES = 8
# the `--dtype` names the embedder trains in (bf16 autocast or fp32; its trainer has no fp16 mode), with
# their long aliases (`dtype_choices`)
TRAIN_DTYPES = ("fp32", "bf16")


@dataclass(kw_only=True)
class EmbedderTrainingConfig(TrainerArgOptions, ImageOptions, VideoOptions, DeviceOptions, EMBEDDER_LORA_OPTIONS,
                             ExportOptions, ItemFormatOptions):
    """Everything a run depends on (saved as `train_config.json`); each field declares its option of
    `unime train embedder` (`unime.options`)."""

    # data
    model: str = option(help="base checkpoint: HF folder or hub id (or a PEFT adapter to continue training)",
                        group="data")
    records: str | None = option(None, "training records: unime JSONL / Parquet, or the released UniME-V2 JSON",
                                 required=True, group="data", input_file=True)
    data_root: str | None = option(None, "folder image paths are relative to (default: the records' folder)",
                                   group="data")
    out: str = option(help="output folder (checkpoints/, adapter/, merged/, README.md, curves)", group="data")
    on_error: str = on_error_option("a bad record: raise (stop, naming it) or skip (counted and reported)",
                                    group="data")
    homogeneous_batches: bool = option(False, "every per-device batch from one dataset (Record.dataset)", group="data")
    workers: int = option(0, "data-loader worker processes", group="data", at_least=0)
    # loss ("auto" and hard_negatives None are chosen from the records: `resolve_auto_options`)
    loss: str = option("symmetric_kl", "auto (default): plain pairs → in-batch infonce; judge-scored records → "
                       "symmetric_kl; negatives without scores → infonce with them. symmetric_kl (released "
                       "UniME-V2), js (true Jensen-Shannon), infonce", cli_default="auto",
                       choices=["auto", "symmetric_kl", "js", "infonce"], group="loss")
    hard_negatives: int | None = option(8, "use the first K stored negatives of each record (default: the records' "
                                        "count, at most 8; 0 for plain pairs)", cli_default=None, metavar="K",
                                        group="loss", at_least=0)
    allow_fallback_labels: bool = option(False, "train a soft-label loss on records mined mostly by the fallback "
                                         "(random negatives scored 1.0; refused by default)", group="loss")
    in_batch: bool | None = option(None, "in-batch negatives: infonce default on; symmetric_kl / js default off "
                                   "(as released; on, the other queries' positives join each query's candidates with "
                                   "label score 0, docs/SOFT_LABELS.md)",
                                   action=argparse.BooleanOptionalAction, group="loss")
    tau: float = option(DEFAULT_TEMPERATURE, "temperature (default %(default)s)", group="loss", above=0)
    label_tau: float | None = option(None, "temperature of the judge-score softmax (default: --tau)", group="loss",
                                     above=0)
    kl_eps: float = option(DEFAULT_KL_EPS, "symmetric_kl: log(p + eps) as released; 0 = exact (measured: no faster "
                           "with 1/0 labels, docs/SOFT_LABELS.md)", group="loss", at_least=0)
    symmetric: bool = option(False, "infonce: add the target-to-query direction", group="loss",
                             action=argparse.BooleanOptionalAction)
    mask_duplicates: bool = option(True, "in-batch infonce: other copies of a query's positive in the batch (same "
                                   "text and images) are masked, not negatives (default on; --no-mask-duplicates "
                                   "keeps them)", action=argparse.BooleanOptionalAction, group="loss")
    # parameters (LoRA, device: the mixins)
    full: bool = option(False, "full fine-tuning instead of LoRA")
    freeze_vision: bool = option(False, "with --full: keep the vision tower and its merger frozen (only the "
                                 "language model trains)")
    dtype: str = dtype_option(auto="bf16 autocast on GPU, fp32 on CPU", names=TRAIN_DTYPES)
    gradient_checkpointing: bool = gradient_checkpointing_option()
    pooling: str = option("auto", choices=["auto", "last", "emb"])
    # optimisation
    batch_size: int = option(8, "queries per device per micro-batch", group="optimisation", at_least=1)
    grad_accum: int = option(1, "gradient accumulation steps: micro-batches per optimizer step; in-batch negatives "
                             "are those of one micro-batch (--gradcache: of the whole batch)", group="optimisation",
                             at_least=1)
    global_batch: int | None = option(None, "queries per optimizer step over all processes (sets --batch-size = N / "
                                      "(processes x --grad-accum); UniME-V2: 1024 with --gradcache)", metavar="N",
                                      group="optimisation", at_least=1)
    steps: int | None = option(None, "optimizer steps (default: --epochs 1)", group="optimisation", at_least=1)
    epochs: float | None = option(None, group="optimisation", above=0)
    lr: float = option(1e-4, group="optimisation", at_least=0)
    warmup: float = option(0.1, "warm-up: fraction of the steps if < 1, else steps", group="optimisation",
                           at_least=0)
    lr_scheduler: str = lr_scheduler_option("linear", "learning-rate schedule (transformers' lr_scheduler_type: "
                                            "linear, constant, cosine, ...)", group="optimisation")
    weight_decay: float = option(0.0, group="optimisation", at_least=0)  # torch's optimizers refuse a negative one
    max_grad_norm: float = option(1.0, "gradient clipping (0 = off)", group="optimisation", at_least=0)
    optim: str = option("adamw_torch", "a transformers optimizer name (adamw_torch, sgd, ...)", group="optimisation")
    gradcache: bool = option(False, "GradCache: large batches in the memory of one chunk", group="optimisation",
                             action=argparse.BooleanOptionalAction)
    chunk_size: int = option(2, "items per forward pass with --gradcache (default 2)", group="optimisation",
                            at_least=1)
    seed: int = option(0, group="optimisation")
    # checkpoints
    save_steps: int = option(500, group="checkpoints", at_least=1)
    # transformers reads 0 (or less) as no limit, not "keep none": None is that
    save_total_limit: int | None = option(None, "keep at most this many checkpoints", group="checkpoints", at_least=1)
    logging_steps: int = option(10, group="checkpoints", at_least=1)  # transformers refuses 0
    resume: bool | str = option(False, "continue from the given checkpoint, also into a new or --overwrite OUT "
                                "(refused if missing or incomplete); without it, re-running the same command "
                                "continues from the latest complete one, and a finished run does nothing", nargs="?",
                                const=True, metavar="CHECKPOINT", group="checkpoints")
    overwrite: bool = option(False, "start over (discard OUT's checkpoints), also with changed options; and write "
                             "into an OUT this command did not create (replacing only what it writes there)",
                             group="checkpoints")

    def validate(self) -> None:
        from unime.train.losses import LOSSES

        if self.loss == "auto" or self.hard_negatives is None:
            raise UnimeError("loss 'auto' / hard_negatives None are resolved from the records first "
                             "(`resolve_auto_options`)")
        if self.loss not in LOSSES:
            raise UnimeError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.loss == "infonce" and not self.infonce_in_batch and self.hard_negatives < 1:
            raise OptionError(self, "infonce without in-batch negatives needs {hard_negatives} >= 1")
        if self.freeze_vision and not self.full:
            raise OptionError(self, "{freeze_vision} is for full fine-tuning ({full}); LoRA leaves the vision tower "
                              "frozen unless {lora_vision}")
        if self.steps is not None and self.epochs is not None:
            raise OptionError(self, "give {steps} or {epochs}, not both")
        if self.dtype not in dtype_choices(TRAIN_DTYPES):
            raise OptionError(self, "{dtype} must be one of {_names}, got {_got!r}",
                              _names=", ".join(dtype_choices(TRAIN_DTYPES)), _got=self.dtype)
        if self.on_error not in ("raise", "skip"):
            raise UnimeError(f"on_error must be raise or skip, got {self.on_error!r}")
        if self.records is None:
            raise UnimeError("no training records given")
        refuse_missing_local_model(self.model, only_mistyped=True)  # before the run records anything
        if self.full:
            refuse_full_fine_tuning_of_adapter(self.model)
        else:
            refuse_lora_vision_without_vision_targets(self.model, LoraSettings.from_options(self))
        given = {key.strip(): value for key, _, value in (str(a).partition("=") for a in self.trainer_arg)}
        deepspeed = self.gradcache and deepspeed_setting(given)
        if deepspeed:  # a config's refusal (`train embedder: --gradcache ...` on the command line, as the others)
            setting = "{trainer_arg} deepspeed={_config}" if given.get("deepspeed") is not None else "{_launch}"
            raise OptionError(self, "{gradcache} back-propagates each chunk's cached gradient itself, outside "
                              "DeepSpeed's engine: use it without %s (or DeepSpeed without {gradcache})" % setting,
                              _config=given.get("deepspeed"), _launch=deepspeed)

    @property
    def infonce_in_batch(self) -> bool:
        return True if self.in_batch is None else bool(self.in_batch)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        return d


def per_device_batch(global_batch: int, grad_accum: int = 1, world_size: int | None = None) -> int:
    """Queries per device per micro-batch for a global batch (WORLD_SIZE processes under torchrun)."""
    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    per, rest = divmod(int(global_batch), world * grad_accum)
    if rest or per < 1:
        raise UnimeError(f"--global-batch {global_batch} is not a multiple of {world} processes x {grad_accum} "
                         "accumulation steps")
    return per
