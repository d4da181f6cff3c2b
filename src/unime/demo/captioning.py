"""Captioning stage of the embedded default's base (`PretrainRecipe.caption_steps`, before the contrastive stage).

The tiny base learns what a multi-object scene holds (which objects, their colours, sizes and positions)
much faster when it has to *say* it: each caption token is one lookup in the image, where a contrastive or
Yes/No loss gives one signal for the whole comparison (measured for issue #13: `bench/judge_captioning_probe.py`;
a base captioned before its contrastive stage ends that stage at in-batch accuracy 0.86 instead of 0.75).

Rows: every training scene of the pretraining corpus that does not show an excluded scene, with its full
caption (`unime.demo.pretrain.corpus_captions`: background, count, each object's size, colour, shape and
position). Prompt = the scene image + `CAPTION_PROMPT`, one user turn as the family adapter renders it;
completion = the caption + the chat template's end of turn. TRL's `SFTTrainer` (the reasoner SFT's,
`unime.embed_rl.reasoner_sft.sft_trainer`) with completion-only loss, full fine-tuning. The captioned model
is written in one rename; the stage checkpoints ten times a run beside it (`checkpoints_folder`: weights, optimizer,
schedule, RNG and data position, the Trainer's own resume) and an interrupted stage resumes from its last complete
checkpoint, to the weights an uninterrupted run ends with.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

CAPTION_PROMPT = "Describe the image."
METRICS_FILE = "captioning.json"


def caption_prompt(image, adapter, text: str = CAPTION_PROMPT) -> tuple[str, list]:
    """The captioning prompt (or a question `text`) for `image` in the family's chat format, and its segments
    (the processor's input)."""
    from unime.models.adapters import Segment

    segments = [Segment("image", image), Segment("text", text)]
    return adapter.render_user_turn(segments), segments


def caption_row(image, caption: str, adapter, eot: str, text: str = CAPTION_PROMPT) -> dict[str, Any]:
    """One TRL prompt-completion row (`prompt` = the image + `text`, `completion` = caption + end of turn `eot`,
    `images`)."""
    return {"prompt": caption_prompt(image, adapter, text)[0], "completion": caption + eot,
            "images": [adapter.image_budget.prepare(image)]}


def caption_rows(pairs: list[tuple[str, str]], adapter, loader,
                 questions: list[tuple[str, str, str]] = ()) -> list[dict[str, Any]]:
    """TRL prompt-completion rows (`prompt`, `completion`, `images`) for (image, caption) pairs, then for
    (image, question, answer) triples."""
    from unime.embed_rl.reasoner_sft import end_of_turn_text

    eot = end_of_turn_text(adapter)

    def image(ref):
        return loader.load(ref, record=str(ref), field="image")

    return ([caption_row(image(ref), caption, adapter, eot) for ref, caption in pairs]
            + [caption_row(image(ref), answer, adapter, eot, question) for ref, question, answer in questions])


def train_captioner(model: str | os.PathLike, corpus_root: str | os.PathLike, pairs: list[tuple[str, str]],
                    out: str | os.PathLike, *, steps: int, batch_size: int, lr: float, seed: int, device: str | None,
                    freeze_vision: bool = False, progress: Callable[[str], None] = print,
                    attn_implementation: str | None = None,
                    questions: list[tuple[str, str, str]] = ()) -> dict[str, Any]:
    """Fine-tune `model` as a captioner of `pairs` ((image path relative to `corpus_root`, caption); the
    pretraining stage passes `unime.demo.pretrain.corpus_captions`) and as an answerer of `questions` ((image
    path, question, answer); `unime.demo.pretrain.corpus_questions`), the rows shuffled together, for `steps`
    steps, with the vision tower frozen if `freeze_vision`; writes the model, its processor and `METRICS_FILE` to
    `out` (one rename). Returns the metrics."""
    import torch
    from trl import SFTConfig

    from unime.data.atomic import atomic_dir
    from unime.embed_rl.reasoner_sft import sft_trainer
    from unime.models.curves import log_training_dicts
    from unime.models.hf_arguments import hf_training_arguments
    from unime.models.image_budget import adapter_image_loader
    from unime.models.loading import load_model
    from unime.models.run_state import last_complete_checkpoint

    if not pairs:
        raise ValueError(f"{corpus_root}: no training scene left to caption")
    loaded = load_model(model, device=device, trainable=True, attn_implementation=attn_implementation)
    if freeze_vision:
        loaded.adapter.freeze_vision(loaded.model)
    rows = caption_rows(pairs, loaded.adapter, adapter_image_loader(loaded.adapter).under(corpus_root), questions)
    progress(f"[pretrain] captioning: {steps} steps of {batch_size} on {len(pairs)} scene captions"
             + (f" and {len(questions)} questions" if questions else ""))
    out = Path(out)
    checkpoints = checkpoints_folder(out)
    resume = last_complete_checkpoint(checkpoints)
    if resume is not None:
        progress(f"[pretrain] captioning: resuming from {resume}")
    with atomic_dir(out, overwrite=out.exists()) as tmp:  # `out` is this stage's own folder in the recipe's work folder
        args = hf_training_arguments(
            SFTConfig, output_dir=checkpoints, max_steps=steps, batch_size=batch_size, learning_rate=lr,
            warmup_steps=max(steps // 30, 1) if steps > 1 else 0, seed=seed, logging_steps=max(steps // 10, 1),
            save_steps=checkpoint_steps(steps), save_total_limit=1, use_cpu=loaded.device == "cpu",
            bf16=loaded.dtype == torch.bfloat16, fp16=loaded.dtype == torch.float16, show_progress=False,
            remove_unused_columns=True, completion_only_loss=True, max_length=None)
        trainer = sft_trainer(loaded.model, loaded.processor, rows, args)
        log_training_dicts(trainer)  # its log dicts to the stage's log, not stdout (trains outside train_or_finish)
        trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        trainer.model.save_pretrained(str(tmp))  # the whole model (the trainer's own save writes checkpoints' state)
        loaded.processor.save_pretrained(str(tmp))
        metrics = {"captions": len(pairs), **({"questions": len(questions)} if questions else {}),
                   "steps": trainer.state.global_step, "batch_size": batch_size,
                   "vision_frozen": freeze_vision,
                   "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    shutil.rmtree(checkpoints, ignore_errors=True)  # this stage's own, beside its folder; the model is in place
    return metrics


def checkpoint_steps(steps: int) -> int:
    """Every how many steps a stage of a pretrained model (the base's captioning, tagging and contrastive stages, the
    judge) checkpoints: ten times a run, so a kill loses at most a tenth of a stage (the judge's 8,000 steps are an
    hour on 2 CPU cores beside other work). Not part of any cache key: the weights do not depend on it."""
    return max(steps // 10, 1)


def checkpoints_folder(out: str | os.PathLike) -> Path:
    """Where the stage writing `out` keeps its checkpoints: beside `out` (its temporary folder goes when the stage
    is killed; these stay, and the rerun resumes from the last complete one), removed once `out` is in place."""
    out = Path(out)
    return out.parent / f"{out.name}.checkpoints"


def read_metrics(out: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(out) / METRICS_FILE).read_text(encoding="utf-8"))
