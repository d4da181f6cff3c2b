"""Cold-start SFT of the Reasoner on teacher T-CoTs (Embed-RL, before EG-RL).

Each example is the reasoner's own prompt (`unime.reasoning.reasoner.reasoning_prompt_segments`, the
same turn `Reasoner.generate` and GRPO use) followed by the teacher's T-CoT and the chat template's
end-of-turn token. The loss is next-token cross-entropy on the assistant tokens only: the system and
user tokens (image tokens included) are labelled -100.

Tokens are built the way generation sees them: prompt ids from the processor (image placeholders
expanded), then the completion's ids appended, so training and generation agree token for token.

Training runs on Hugging Face's `Trainer` (resumable checkpoints, logging); LoRA through PEFT
(`lora_r > 0`, merged into the saved model) or full fine-tuning (`lora_r = 0`). The output is an
ordinary HF folder (model + processor) that `Reasoner.from_pretrained` and the GRPO stage load.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from unime.data.roots import resolve_data_root
from unime.models.adapters import FamilyAdapter, Segment
from unime.embed_rl.stage_options import ReasonerStageOptions
from unime.models.loading import DeviceOptions
from unime.models.lora import GENERATIVE_LORA, GENERATIVE_LORA_OPTIONS, LoraSettings, apply_lora
from unime.options import option

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


def end_of_turn_text(adapter: FamilyAdapter) -> str:
    """What the chat template writes right after an assistant message's content (e.g. `<|im_end|>`),
    found by rendering a sentinel answer; trailing whitespace dropped (generation stops at the token)."""
    sentinel = "\u0001unime-sft-sentinel\u0001"
    rendered = adapter.render([{"role": "user", "content": [{"type": "text", "text": "x"}]},
                               {"role": "assistant", "content": [{"type": "text", "text": sentinel}]}],
                              add_generation_prompt=False)
    if sentinel not in rendered:  # pragma: no cover - every chat template renders the content
        raise ValueError("the chat template does not render assistant content")
    tail = rendered.split(sentinel, 1)[1].rstrip()
    if not tail:
        raise ValueError("the chat template writes nothing after an assistant message; cannot find the end of turn")
    return tail


def sft_features(adapter: FamilyAdapter, segments: Sequence[Segment], answer: str, *,
                 end_of_turn: str | None = None) -> dict[str, Any]:
    """Tensors of one SFT example: `input_ids`, `attention_mask`, `labels` (-100 on the prompt) plus the
    processor's vision fields (`pixel_values`, `image_grid_thw`, `mm_token_type_ids`, ...), batch dim 1."""
    import torch

    eot = end_of_turn if end_of_turn is not None else end_of_turn_text(adapter)
    prompt = adapter.render_user_turn(segments)
    enc = adapter.processor_inputs([prompt], [list(segments)])
    answer_ids = adapter.tokenizer.encode(answer + eot, add_special_tokens=False)
    prompt_ids = enc["input_ids"]
    n_prompt, n_ans = prompt_ids.shape[1], len(answer_ids)
    ans = torch.tensor([answer_ids], dtype=prompt_ids.dtype)
    feats: dict[str, Any] = {}
    for k, v in enc.items():
        if not isinstance(v, torch.Tensor):
            continue
        if v.dim() == 2 and v.shape[0] == 1 and v.shape[1] == n_prompt:  # per-token field
            if k == "input_ids":
                feats[k] = torch.cat([v, ans], dim=1)
            elif k == "attention_mask":
                feats[k] = torch.cat([v, torch.ones(1, n_ans, dtype=v.dtype)], dim=1)
            else:  # e.g. mm_token_type_ids: the answer is text (type 0)
                feats[k] = torch.cat([v, torch.zeros(1, n_ans, dtype=v.dtype)], dim=1)
        else:  # vision fields, concatenated over examples by the collator
            feats[k] = v
    feats["labels"] = torch.cat([torch.full((1, n_prompt), IGNORE_INDEX, dtype=prompt_ids.dtype), ans], dim=1)
    return feats


class SFTCollator:
    """Right-pads per-token fields (`input_ids` with the pad id, `labels` with -100, masks with 0) and
    concatenates vision fields along their first dimension."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        length = max(ex["input_ids"].shape[1] for ex in examples)
        per_token = [k for k, v in examples[0].items() if v.dim() == 2 and v.shape == examples[0]["input_ids"].shape]
        batch: dict[str, Any] = {}
        for k in per_token:
            pad = self.pad_token_id if k == "input_ids" else IGNORE_INDEX if k == "labels" else 0
            rows = []
            for ex in examples:
                v = ex[k]
                rows.append(torch.cat([v, torch.full((1, length - v.shape[1]), pad, dtype=v.dtype)], dim=1))
            batch[k] = torch.cat(rows, dim=0)
        vision_keys = sorted({k for ex in examples for k in ex if k not in per_token})
        for k in vision_keys:
            parts = [ex[k] for ex in examples if k in ex]
            batch[k] = torch.cat(parts, dim=0)
        return batch


@dataclass(kw_only=True)
class ReasonerSFTConfig(GENERATIVE_LORA_OPTIONS, DeviceOptions, ReasonerStageOptions):
    """Options of `unime train reasoner --stage sft` (`unime.options`)."""

    learning_rate: float = option(1e-4, "learning rate", dest="lr")
    lora_r: int = option(GENERATIVE_LORA.r, "LoRA rank; 0 = full fine-tuning")
    save_steps: int = option(500)
    data: str = option(help="T-CoT JSONL (sft)", dest="tcots", cli_default=None, group="sft")  # unime reason teacher / generate
    epochs: float = option(3.0, group="sft")
    batch_size: int = option(8, group="sft")
    grad_accum: int = option(1, group="sft")
    skip_invalid: bool = option(False, "drop T-CoTs that do not parse (counted)", group="sft")
    logging_steps: int = option(10, group="sft")
    warmup_steps: int = option(0, cli=False)
    weight_decay: float = option(0.0, cli=False)


# options that may change between a run and its continuation without changing what is trained
_RESUME_FREE_OPTIONS = {"resume", "overwrite", "logging_steps", "save_steps"}
SUMMARY_FILE = "sft_summary.json"


def build_sft_examples(rows, adapter: FamilyAdapter, loader, *, skip_invalid: bool = False,
                       source: str | None = None) -> tuple[list[dict[str, Any]], int]:
    """SFT tensors for T-CoT rows. A T-CoT that does not parse raises `TCoTError` naming the row, or is
    skipped and counted when `skip_invalid`. Returns (examples, skipped)."""
    from unime.reasoning.reasoner import reasoning_prompt_segments
    from unime.reasoning.tcot import TCoTError, parse_tcot

    eot = end_of_turn_text(adapter)
    out, skipped = [], 0
    for n, r in enumerate(rows):
        rid = f"{r.record_id}/{r.side}"
        try:
            parse_tcot(r.tcot, source=source, record=rid)
        except TCoTError:
            if not skip_invalid:
                raise
            skipped += 1
            continue
        images = [loader.load(ref, source=source, record=rid, field=f"item.images[{i}]")
                  for i, ref in enumerate(r.item.images)]
        frames = loader.load_video(r.item.video, source=source, record=rid, field="item.video") if r.item.video \
            else []
        segs = reasoning_prompt_segments(r.item.text, images, frames, r.side, record=rid)
        out.append(sft_features(adapter, segs, r.tcot, end_of_turn=eot))
    return out, skipped


def lora_model(model, cfg: ReasonerSFTConfig):
    """`model` with the reasoner's LoRA adapter (`cfg.lora_r > 0`)."""
    return apply_lora(model, LoraSettings.from_options(cfg), task_type="CAUSAL_LM")


class CheckedImages:
    """An `ImageLoader` whose images are opened (and so checked) once, before the model is loaded: a bad
    image stops the run (or is skipped) without a model load first; the examples reuse what was opened."""

    def __init__(self, loader):
        self.loader, self._opened = loader, {}

    def load(self, ref, **where):
        key = ref if isinstance(ref, str) else id(ref)
        if key not in self._opened:
            self._opened[key] = self.loader.load(ref, **where)
        return self._opened[key]

    def load_video(self, refs, **where):
        return self.loader.load_video(refs, **where)

    def check(self, rows, *, source: str | None, policy) -> list:
        """The rows whose images and video open; a failure names the row's line and field, and goes to
        `policy` (`unime.data.skips.ErrorPolicy`: raise, or count and leave the row out)."""
        from unime.data.io import origin_of
        from unime.errors import DataError

        kept = []
        for r in rows:
            where = origin_of(r) or f"{r.record_id}/{r.side}"
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
    """Run the cold-start SFT; writes `cfg.out` (merged HF folder + processor), `curves.csv`,
    `curves.png`, `sft_summary.json`, `train_config.json`. Returns a summary dict. The folder is owned and locked
    (`unime.outdir`); checkpoints live in `cfg.out/checkpoints` while training, and a re-run follows
    `unime.models.run_state` (continue / finished / changed options refused)."""
    from unime.outdir import claim

    options = json.loads(json.dumps(asdict(cfg), default=str))
    with claim(cfg.out, "train reasoner", options, overwrite=cfg.overwrite):
        return _train_reasoner_sft(cfg, options)


def _train_reasoner_sft(cfg: ReasonerSFTConfig, options: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import Trainer, TrainingArguments

    from unime.data.atomic import atomic_dir
    from unime.data.images import ImageLoader
    from unime.models.curves import write_curves
    from unime.models.loading import load_model
    from unime.reasoning.reasoner import read_tcot_rows

    from unime.models import run_state
    from unime.models.run_state import CHECKPOINTS_DIR

    out = Path(cfg.out)
    work = out / CHECKPOINTS_DIR
    plan = run_state.plan_folder_run(out, options, free=_RESUME_FREE_OPTIONS, overwrite=cfg.overwrite,
                                     finished_file=SUMMARY_FILE, checkpoint_root=work)
    if plan.finished:
        log.info("%s: this reasoner SFT run is finished; nothing to do (--overwrite starts it over)", out)
        return json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8"))
    run_state.write_config(out, options)
    from unime.data.skips import ErrorPolicy, SkipReport

    skips = SkipReport(max_examples=10)
    rows = read_tcot_rows(cfg.data, on_error=cfg.on_error, skips=skips)
    data_root = resolve_data_root(cfg.data, cfg.data_root)
    images = CheckedImages(ImageLoader(data_root))
    rows = images.check(rows, source=cfg.data, policy=ErrorPolicy(cfg.on_error, skips, "reasoner SFT"))
    if skips.total:
        log.warning("reasoner SFT: %s", skips.summary())
    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, trainable=True)
    model, processor, adapter = loaded.model, loaded.processor, loaded.adapter
    examples, skipped = build_sft_examples(rows, adapter, images, skip_invalid=cfg.skip_invalid, source=cfg.data)
    if not examples:
        raise ValueError(f"{cfg.data}: no usable T-CoT rows ({skipped} skipped)")
    log.info("reasoner SFT: %d examples (%d skipped), answer tokens %d", len(examples), skipped,
             sum(int((e["labels"] != IGNORE_INDEX).sum()) for e in examples))

    if cfg.lora_r > 0:
        model = lora_model(model, cfg)
    use_cpu = loaded.device == "cpu"
    args = TrainingArguments(
        output_dir=str(work), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
        lr_scheduler_type="linear", logging_steps=cfg.logging_steps, save_steps=cfg.save_steps, save_total_limit=2,
        seed=cfg.seed, report_to=[], remove_unused_columns=False, use_cpu=use_cpu,
        bf16=loaded.dtype == torch.bfloat16, fp16=loaded.dtype == torch.float16, dataloader_num_workers=0,
        disable_tqdm=False)
    from unime.models.run_state import ExactWeightsCheckpoints

    class SFTTrainer(ExactWeightsCheckpoints, Trainer):
        """The Trainer, with full fine-tuning checkpoints that resume exactly."""

    trainer = SFTTrainer(model=model, args=args, train_dataset=examples,
                      data_collator=SFTCollator(adapter.tokenizer.pad_token_id))
    run_state.train_or_finish(trainer, plan.checkpoint)

    final = trainer.model
    if cfg.lora_r > 0:
        final = final.merge_and_unload()
    final.train(False)
    with atomic_dir(out, overwrite=True) as tmp:
        final.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        history = run_state.step_log(trainer.state.log_history)
        write_curves(history, tmp, title=f"reasoner SFT — {Path(str(cfg.model)).name}")
        summary = {"examples": len(examples), "skipped_invalid": skipped,
                   "skipped_records": {"total": skips.total, "by_reason": dict(sorted(skips.counts.items()))},
                   "steps": trainer.state.global_step,
                   "train_loss": run_state.whole_run_loss(history),  # every step, across resumptions
                   "first_loss": history[0]["loss"] if history else None,
                   "last_loss": history[-1]["loss"] if history else None,
                   "config": options}
        (tmp / run_state.CONFIG_FILE).write_text(json.dumps(options, indent=2, sort_keys=True))
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))  # last: the run is finished
    return summary  # the old folder, checkpoints included, went with the swap
