"""Cold-start SFT of the Reasoner on teacher T-CoTs (Embed-RL, before EG-RL), on TRL's `SFTTrainer`.

Each example is a prompt-completion row in TRL's standard form: `prompt` is the reasoner's own user turn
(`unime.reasoning.reasoner.reasoning_prompt_segments`, the turn `Reasoner.generate` and GRPO use) as the
family adapter renders it, `completion` the teacher's T-CoT followed by the chat template's end-of-turn
token, `images` the item's video frames and images (the adapter's fixed resize applied). TRL's
vision-language collator runs the processor on the prompts (image placeholders expanded) and tokenizes the
completions; with `completion_only_loss` the prompt tokens (image tokens included) are labelled -100, so
the loss is next-token cross-entropy on the T-CoT and end-of-turn tokens only. The prompt ids are the ones
generation sees, token for token.

LoRA through `unime.models.lora.model_to_train` (`lora_r > 0`, merged into the saved model; an adapter folder
given as --model is trained on, not wrapped in a second LoRA) or full fine-tuning (`lora_r = 0`: fp32 master weights,
computed in the run's dtype under autocast, `unime.models.loading.training_load_dtype`). The output is
every trainer's export (`unime.embed_rl.export`): `merged/` is an ordinary HF folder (model + processor) that
`Reasoner.from_pretrained` and the GRPO stage load.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from unime.data.roots import resolve_data_root
from unime.embed_rl.stage_options import ReasonerStageOptions, warmup_check
from unime.errors import require_extra
from unime.models.adapters import FamilyAdapter
from unime.models.export import ExportOptions
from unime.models.hf_arguments import TrainerArgOptions, non_reentrant_checkpointing_callback
from unime.models.loading import DeviceOptions
from unime.models.lora import GENERATIVE_LORA, GENERATIVE_LORA_OPTIONS, LoraSettings, model_to_train
from unime.models.rerank_prompts import answer_format
from unime.options import option

log = logging.getLogger(__name__)


def end_of_turn_text(adapter: FamilyAdapter) -> str:
    """What the chat template writes right after an assistant message's content (e.g. `<|im_end|>`), as
    the reranker reads it (`unime.models.rerank_prompts.answer_format`); trailing whitespace dropped
    (generation stops at the token)."""
    tail = answer_format(adapter).turn_end
    if not tail:
        raise ValueError("the chat template writes nothing after an assistant message; cannot find the end of turn")
    return tail


@dataclass(kw_only=True)
class ReasonerSFTConfig(TrainerArgOptions, GENERATIVE_LORA_OPTIONS, ExportOptions, DeviceOptions,
                        ReasonerStageOptions):
    """Options of `unime train reasoner --stage sft` (`unime.options`)."""

    stage: str = option("sft", cli=False)  # recorded: a GRPO folder is refused naming it (`ReasonerStageOptions`)
    learning_rate: float = option(1e-4, "learning rate", dest="lr", at_least=0)
    lora_r: int = option(GENERATIVE_LORA.r, "LoRA rank; 0 = full fine-tuning", at_least=0)
    save_steps: int = option(500, at_least=1)
    # from unime reason teacher / generate
    data: str = option(help="T-CoT JSONL (sft)", dest="tcots", cli_default=None, group="sft", input_file=True)
    epochs: float = option(3.0, group="sft", above=0)
    batch_size: int = option(8, group="sft", at_least=1)
    grad_accum: int = option(1, group="sft", at_least=1)
    skip_invalid: bool = option(False, "drop T-CoTs that do not parse or name key frames past the frames sampled "
                                "(counted)", group="sft")
    logging_steps: int = option(10, group="sft", at_least=1)  # transformers refuses 0
    warmup_steps: int = option(0, cli=False, at_least=0)
    weight_decay: float = option(0.0, cli=False, at_least=0)


# options that may change between a run and its continuation without changing what is trained
# ("processes": the number of processes the run was launched on, recorded beside them, not an option)
_RESUME_FREE_OPTIONS = {"resume", "overwrite", "logging_steps", "save_steps", "processes"}
SUMMARY_FILE = "sft_summary.json"


def sft_rows(rows, adapter: FamilyAdapter, loader, *, skip_invalid: bool = False,
             source: str | None = None) -> tuple[list[dict[str, Any]], int]:
    """TRL prompt-completion rows (`prompt`, `completion`, `images`) for T-CoT rows. A T-CoT that does not
    parse or has a box inverted or wholly outside the image (`unime.reasoning.reasoner.parse_tcot_row`), or names
    a key frame past the frames its prompt shows (a T-CoT file written with another video sampling than the
    --video-* options given), or whose key frames the file records numbered under another sampling
    (`refuse_other_sampling`), raises `TCoTError` / `DataError` naming the row, or is skipped and counted when
    `skip_invalid`. Returns (rows, skipped)."""
    from unime.errors import DataError
    from unime.reasoning.evidence import select_key_frames
    from unime.reasoning.reasoner import (parse_tcot_row, reasoning_prompt_segments, refuse_other_sampling,
                                          tcot_row_label)

    eot = end_of_turn_text(adapter)
    out, skipped = [], 0
    for r in rows:
        rid = tcot_row_label(r)
        try:
            tcot = parse_tcot_row(r, source=source)  # as `reason split` and `reason materialize` check it
        except DataError:  # a TCoTError
            if not skip_invalid:
                raise
            skipped += 1
            continue
        # decoded once: the frames the sampling check compares are the prompt's (a bad video is raised, not skipped)
        frames = loader.load_video(r.item.video, source=source, record=rid, field="item.video") if r.item.video \
            else []
        try:
            refuse_other_sampling(r, loader, source=source, video=frames or None)
        except DataError:  # key frames numbered under another sampling
            if not skip_invalid:
                raise
            skipped += 1
            continue
        images = [loader.load(ref, source=source, record=rid, field=f"item.images[{i}]")
                  for i, ref in enumerate(r.item.images)]
        if tcot.evidence.key_frames and frames:  # past the frames shown: the T-CoT was written with another sampling
            kept = select_key_frames(frames, tcot.evidence.key_frames, on_invalid="skip" if skip_invalid else "raise",
                                     dedupe=False, source=source, record=rid, field="tcot")
            if len(kept) < len(tcot.evidence.key_frames):
                skipped += 1
                continue
        segs = reasoning_prompt_segments(r.item.text, images, frames, r.side, record=rid)
        out.append({"prompt": adapter.render_user_turn(segs), "completion": r.tcot + eot,
                    "images": [adapter.image_budget.prepare(s.value) for s in segs if s.kind == "image"]})
    return out, skipped


def sft_trainer(model, processor, rows: list[dict[str, Any]], args):
    """TRL's `SFTTrainer` on `rows` (`sft_rows`) with its vision-language collator, checkpointing full
    fine-tuning exactly (`unime.models.run_state.ExactWeightsCheckpoints`)."""
    from datasets import Dataset
    from trl import SFTTrainer

    from unime.models.run_state import ExactWeightsCheckpoints

    class ReasonerSFTTrainer(ExactWeightsCheckpoints, SFTTrainer):
        pass

    return ReasonerSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=processor)


def sft_config(cfg: ReasonerSFTConfig, output_dir: str, *, use_cpu: bool, dtype, check_only: bool = False):
    """TRL's `SFTConfig` for `cfg`: completion-only loss, no truncation, activation checkpointing only with
    --gradient-checkpointing (TRL's default of on is not taken). With `check_only`, its --trainer-arg strings
    checked and nothing built (None)."""
    import torch
    from trl import SFTConfig

    from unime.models.hf_arguments import hf_training_arguments

    return hf_training_arguments(
        SFTConfig, output_dir=output_dir, epochs=cfg.epochs, max_steps=cfg.max_steps, batch_size=cfg.batch_size,
        grad_accum=cfg.grad_accum, learning_rate=cfg.learning_rate, warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay, logging_steps=cfg.logging_steps, save_steps=cfg.save_steps,
        save_total_limit=2, seed=cfg.seed, use_cpu=use_cpu, bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16, show_progress=True, activation_checkpointing=cfg.gradient_checkpointing,
        # SFTConfig's own default, kept (the core's False is for the collators that read whole records)
        remove_unused_columns=True, completion_only_loss=True, max_length=None, trainer_arg=cfg.trainer_arg,
        check_only=check_only, config=cfg)


def lora_model(model, cfg: ReasonerSFTConfig):
    """`model` as the reasoner SFT trains it (`unime.models.lora.model_to_train`): with its LoRA adapter
    (`cfg.lora_r > 0`), else every parameter; an adapter loaded (--model an adapter folder) is trained on."""
    return model_to_train(model, LoraSettings.from_options(cfg) if cfg.lora_r > 0 else None, source=cfg.model,
                          full_option="--lora-r 0", task_type="CAUSAL_LM")


class CheckedImages:
    """An `ImageLoader` whose images are opened (and so checked) once, before the model is loaded: a bad
    image stops the run (or is skipped) without a model load first; the examples reuse what was opened."""

    def __init__(self, loader):
        self.loader, self._opened = loader, {}
        self.video_sampling = loader.video_sampling  # what the key frames of the rows must be numbered under

    def load(self, ref, **where):
        key = ref if isinstance(ref, str) else id(ref)
        if key not in self._opened:
            self._opened[key] = self.loader.load(ref, **where)
        return self._opened[key]

    def load_video(self, refs, **where):
        return self.loader.load_video(refs, **where)

    def resolve(self, ref, **where):  # a `unime.data.video.FrameLoader` too: a clip under another sampling
        return self.loader.resolve(ref, **where)

    @property
    def root(self):  # the folder relative paths are resolved against, which a missing file's message names
        return self.loader.root

    def check(self, rows, *, source: str | None, policy) -> list:
        """The rows whose images and video open; a failure names the row (line, record id, side) and field, and goes
        to `policy` (`unime.data.skips.ErrorPolicy`: raise, or count and leave the row out)."""
        from unime.errors import DataError
        from unime.reasoning.reasoner import tcot_row_label

        kept = []
        for r in rows:
            where = tcot_row_label(r)  # its line, record id and side, as its T-CoT's errors name it
            try:
                for i, ref in enumerate(r.item.images):
                    self.load(ref, source=source, record=where, field=f"item.images[{i}]")
                if r.item.video:
                    self.load_video(r.item.video, source=source, record=where, field="item.video")
            except DataError as e:
                e.reason = getattr(e, "reason", None) or "image"
                policy.handle(e)
                continue
            kept.append(r)
        return kept


def train_reasoner_sft(cfg: ReasonerSFTConfig) -> dict[str, Any]:
    """Run the cold-start SFT; writes `cfg.out`: `merged/` (HF folder + processor), `adapter/` (LoRA),
    `README.md`, `curves.csv`, `curves.png`, `train_config.json`, `checkpoints/`, `sft_summary.json` (last).
    Returns a summary dict. The folder is owned and locked by the main process (`unime.outdir`), which alone
    writes into it under torchrun; a re-run follows `unime.models.run_state` (continue / finished / changed
    options refused)."""
    from unime.outdir import claim_on_main_process

    check_sft_options(cfg)
    options = json.loads(json.dumps(asdict(cfg), default=str))
    with claim_on_main_process(cfg.out, "train reasoner", options, overwrite=cfg.overwrite):
        return _train_reasoner_sft(cfg, options)


def check_sft_options(cfg: ReasonerSFTConfig) -> ReasonerSFTConfig:
    """The checks of `cfg` that need no model and no data — the options, the extra packages, the --trainer-arg
    keys — and, last, a hub id --model asked of the hub (`refuse_unreachable_hub_model`) run before the output
    folder is claimed (by the trainer, and by the command line: `unime.cli.train_reasoner`), so that a refused run
    writes nothing. Returns `cfg`."""
    from unime.models.loading import refuse_unreachable_hub_model
    from unime.models.run_state import CHECKPOINTS_DIR

    cfg.validate()
    require_extra("rl", "train reasoner", "trl", "datasets")
    sft_config(cfg, str(Path(cfg.out) / CHECKPOINTS_DIR), use_cpu=True, dtype=None, check_only=True)
    refuse_unreachable_hub_model(cfg.model)  # no hub, or no such model there: before --out is claimed
    return cfg


def _train_reasoner_sft(cfg: ReasonerSFTConfig, options: dict[str, Any]) -> dict[str, Any]:
    from unime.data.video import VideoSampling
    from unime.models.curves import write_curves
    from unime.models.hf_arguments import process_device
    from unime.models.image_budget import ImageBudget
    from unime.models.loading import (checkpoint_image_loader, load_model, resolve_dtype, trainer_device,
                                      training_load_dtype)
    from unime.reasoning.reasoner import check_tcot_rows, read_tcot_rows

    from unime.models import run_state
    from unime.models.run_state import CHECKPOINTS_DIR
    from unime.outdir import is_main_process

    out = Path(cfg.out)
    work = out / CHECKPOINTS_DIR
    # the refusals for the options, then the T-CoTs read and checked: all before anything is written in `out`
    # (`run_state.plan_run`, below, records the inputs and, under --overwrite, removes the earlier checkpoints)
    if run_state.check_run(out, options, free=_RESUME_FREE_OPTIONS, overwrite=cfg.overwrite,
                           finished_file=SUMMARY_FILE, config=cfg):
        log.info("%s: this reasoner SFT run is finished; nothing to do (--overwrite starts it over)", out)
        return json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8"))
    from unime.data.skips import ErrorPolicy, SkipReport, shown_on_failure
    from unime.errors import DataError

    skips = SkipReport(max_examples=10)
    rows = read_tcot_rows(cfg.data, on_error=cfg.on_error, skips=skips)
    data_root = resolve_data_root(cfg.data, cfg.data_root)
    images = CheckedImages(checkpoint_image_loader(cfg.model, ImageBudget.from_args(cfg), data_root,
                                                   video=VideoSampling.from_fields(cfg)))
    rows = images.check(rows, source=cfg.data, policy=ErrorPolicy(cfg.on_error, skips, "reasoner SFT"))
    if not cfg.skip_invalid:  # a bad T-CoT stops the run before the model loads (`sft_rows` skips them otherwise)
        check_tcot_rows(rows, source=cfg.data)
    if not rows:  # every line skipped: the reasons, then the error, before the model loads
        with shown_on_failure(skips):
            raise DataError(f"no usable T-CoT rows ({skips.total} skipped)", source=cfg.data)
    if skips.total:
        log.warning("reasoner SFT: %s", skips.summary())
    device = trainer_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    args = sft_config(cfg, str(work), use_cpu=device == "cpu", dtype=dtype)
    # LoRA: the frozen base in the run's dtype; full fine-tuning (--lora-r 0): fp32 master weights, computed in the
    # run's dtype under TRL's autocast (`args.bf16` / `fp16`)
    loaded = load_model(cfg.model, device=process_device(args), dtype=training_load_dtype(dtype, full=cfg.lora_r == 0),
                        trainable=True, image_budget=ImageBudget.from_args(cfg),
                        attn_implementation=cfg.attn_implementation)
    model, processor, adapter = loaded.model, loaded.processor, loaded.adapter
    examples, skipped = sft_rows(rows, adapter, images, skip_invalid=cfg.skip_invalid, source=cfg.data)
    if not examples:
        raise DataError(f"no usable T-CoT rows ({skipped} skipped)", source=cfg.data)
    log.info("reasoner SFT: %d examples (%d skipped)", len(examples), skipped)
    plan = run_state.plan_run(out, options, free=_RESUME_FREE_OPTIONS, overwrite=cfg.overwrite,
                              finished_file=SUMMARY_FILE, config=cfg)  # not finished: `check_run` said so
    if plan.checkpoint is not None:  # the global batch of a continuation (per device x processes x accumulation)
        run_state.warn_other_global_batch(out, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                                          processes=args.world_size, config=cfg)
    if is_main_process():
        run_state.write_config(out, {**options, run_state.PROCESSES_KEY: args.world_size})

    from transformers import set_seed

    set_seed(cfg.seed)  # LoRA initialisation, as the embedder and reranker trainers
    model = lora_model(model, cfg)
    trainer = sft_trainer(model, processor, examples, args)
    trainer.add_callback(warmup_check())
    trainer.add_callback(non_reentrant_checkpointing_callback())
    run_state.train_or_finish(trainer, plan.checkpoint)

    history = run_state.step_log(trainer.state.log_history)
    summary = {"examples": len(examples), "skipped_invalid": skipped,
               "skipped_records": {"total": skips.total, "by_reason": dict(sorted(skips.counts.items()))},
               "steps": trainer.state.global_step,
               "train_loss": run_state.whole_run_loss(history),  # every step, across resumptions
               "first_loss": history[0]["loss"] if history else None,
               "last_loss": history[-1]["loss"] if history else None,
               "config": options}
    from unime.embed_rl.export import export_reasoner
    from unime.models.export import write_json_atomic

    results = {k: v for k, v in summary.items() if k != "config"}
    summary.update(loaded.origin())  # what the weights start from (the card's base_model)
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        write_curves(history, out, title=f"reasoner SFT — {Path(str(cfg.model)).name}")
        export_reasoner(trainer.model, processor, out, stage="sft", options=options, results=results,
                        origin=loaded.origin(), image_budget=loaded.image_budget, dtype=dtype)
        write_json_atomic(out / SUMMARY_FILE, summary)  # last: the run is finished
    trainer.accelerator.wait_for_everyone()
    return summary
