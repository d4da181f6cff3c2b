"""One resume convention for every trainer (embedder, reranker / judge):

- re-running the same command continues the run from its last complete checkpoint (`--resume` is
  accepted but not needed);
- a finished run (its final outputs written) says so and does nothing;
- a checkpoint at the run's last step (a kill or a full disk during the export) is exported as it is:
  no extra optimizer step is taken;
- options that change what is trained are compared with the run's `train_config.json`; a difference
  is refused, listing the differing keys, unless `--overwrite` (start over: the run's checkpoints are
  discarded);
- the reported loss covers the whole run, not the part after the last resume.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Sequence

from unime.errors import ChangedOptions, UnimeError, changed_option_keys, refuse_changed_options  # noqa: F401

CHECKPOINTS_DIR = "checkpoints"  # OUT/checkpoints/checkpoint-N while a run trains
FULL_STATE_FILE = "trainable_state.safetensors"  # resumable state of a full fine-tuning run

log = logging.getLogger(__name__)

CONFIG_FILE = "train_config.json"


def write_config(out: str | Path, options: dict[str, Any]) -> None:
    """The run's options, `out/train_config.json` (atomic), compared on every re-run."""
    from unime.data.atomic import atomic_open

    with atomic_open(Path(out) / CONFIG_FILE) as fh:
        fh.write(json.dumps(options, indent=2, sort_keys=True, default=str) + "\n")


# -- resumable checkpoints (inside the trainer's checkpoint-N folders) ---------------------------------
def is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


def save_training_weights(model, folder: str | os.PathLike) -> None:
    """The weights a resumed run needs: the adapter (LoRA) or every parameter (full fine-tuning)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if is_peft(model):
        model.save_pretrained(str(folder))
    else:
        from safetensors.torch import save_model

        save_model(model, str(folder / FULL_STATE_FILE))


def load_training_weights(model, folder: str | os.PathLike) -> None:
    folder = Path(folder)
    if is_peft(model):
        from peft import load_peft_weights, set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_peft_weights(str(folder), device="cpu"))
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"{folder}: adapter weights do not fit the model: {unexpected[:5]}")
    else:
        from safetensors.torch import load_model

        path = folder / FULL_STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: no {FULL_STATE_FILE} (not a full fine-tuning checkpoint?)")
        load_model(model, str(path), strict=True)


class ExactWeightsCheckpoints:
    """Trainer mixin: a fully fine-tuned model is checkpointed under its in-memory parameter names and
    reloaded strictly (`save_training_weights` / `load_training_weights`). The Trainer's default goes
    through `save_pretrained`, whose on-disk names (Qwen-VL's `model.language_model.*` saved as
    `model.*`) a non-strict reload does not map back: a resumed run silently restarted from the base
    weights. PEFT models keep the Trainer's own adapter checkpoints."""

    def _save(self, output_dir=None, state_dict=None):
        if is_peft(self.model):
            return super()._save(output_dir, state_dict)
        if self.args.should_save:
            save_training_weights(self.model, output_dir or self.args.output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if is_peft(self.model):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_training_weights(self.model, resume_from_checkpoint)


def complete_checkpoints(checkpoint_root: str | os.PathLike) -> list[Path]:
    """`checkpoint-N` folders the trainer finished writing (its `trainer_state.json` is written last),
    by step."""
    root = Path(checkpoint_root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("checkpoint-") and p.name[len("checkpoint-"):].isdigit():
            if (p / "trainer_state.json").is_file():
                found.append((int(p.name[len("checkpoint-"):]), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(checkpoint_root: str | os.PathLike) -> Path | None:
    done = complete_checkpoints(checkpoint_root)
    return done[-1] if done else None




def changed_options(before: dict[str, Any], now: dict[str, Any], free: Iterable[str]) -> list[str]:
    """Keys (outside `free`) whose values differ (`unime.errors.changed_option_keys`)."""
    return changed_option_keys(before, now, free)


def previous_config(out: str | Path) -> dict[str, Any] | None:
    path = Path(out) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def check_same_run(out: str | Path, now: dict[str, Any], *, free: Iterable[str], overwrite: bool,
                   has_state: bool) -> bool:
    """Before training in `out`: True if a previous run there may be continued (or reported finished).

    `has_state`: `out` holds checkpoints or final outputs of a previous run. Differing options raise
    `ChangedOptions` naming the keys unless `overwrite` (then False: start over). State without a
    `train_config.json` (of unknown options) is refused the same way."""
    before = previous_config(out)
    if before is None:
        if has_state and not overwrite:
            raise ChangedOptions(f"{out} holds checkpoints or outputs of a run whose options are unknown (no "
                                 f"{CONFIG_FILE}); pass --overwrite to start over, or choose another --out")
        return False
    diff = changed_options(before, now, free)
    if not diff:
        return True
    if overwrite:
        log.warning("%s: options changed (%s); --overwrite: starting over", out, ", ".join(diff))
        return False
    raise refuse_changed_options(out, before, now, diff)


def discard_checkpoints(checkpoint_root: str | Path) -> None:
    """Start over: the run's own checkpoints go (the folder is the trainer's; see `unime.outdir`)."""
    shutil.rmtree(checkpoint_root, ignore_errors=True)


def final_state(checkpoint: str | Path | None):
    """The `TrainerState` of `checkpoint` if it is at the run's last step (nothing left to train)."""
    if checkpoint is None:
        return None
    from transformers import TrainerState

    state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    if state.max_steps and state.global_step >= state.max_steps:
        return state
    return None


def load_final_checkpoint(trainer, checkpoint: str | Path, load_weights) -> None:
    """Put `trainer` in the state of its final checkpoint without an optimizer step: the trained
    weights (`load_weights(model, folder)`) and the state (step, log history)."""
    from transformers import TrainerState

    load_weights(trainer.model, str(checkpoint))
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    log.info("%s is the run's last step (%d): exporting it, no further training", checkpoint,
             trainer.state.global_step)


def step_log(log_history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The training-loss log rows, one per step (a step logged twice — a resume repeats the log of the
    checkpoint's step — keeps its last row), by step."""
    by_step: dict[int, dict[str, Any]] = {}
    for row in log_history:
        if "loss" in row and "step" in row:
            by_step[int(row["step"])] = row
    return [by_step[s] for s in sorted(by_step)]


def whole_run_loss(log_history: Sequence[dict[str, Any]]) -> float | None:
    """The mean training loss over every step of the run, from the logged windows (each logged loss is
    the mean since the previous log): sum(loss x window) / steps."""
    rows = step_log(log_history)
    if not rows:
        return None
    total, prev = 0.0, 0
    for r in rows:
        step = int(r["step"])
        total += float(r["loss"]) * (step - prev)
        prev = step
    return total / prev if prev else None


class RunPlan:
    """What a trainer whose output is one folder (replaced as a whole at the end) does on (re-)entry."""

    def __init__(self, finished: bool, checkpoint: Path | None):
        self.finished, self.checkpoint = finished, checkpoint


def plan_folder_run(out: str | Path, options: dict[str, Any], *, free: Iterable[str], overwrite: bool,
                    finished_file: str, checkpoint_root: str | Path) -> RunPlan:
    """The convention for a trainer writing `out` as a whole (reasoner SFT, GRPO): finished (with the
    same options) → nothing to do; checkpoints under `checkpoint_root` → continue from the latest
    complete one; changed options → `ChangedOptions` unless `overwrite` (start over)."""
    out = Path(out)
    latest = latest_checkpoint(checkpoint_root)
    finished = (out / finished_file).is_file()
    same = not overwrite and check_same_run(out, options, free=free, overwrite=False,
                                            has_state=finished or latest is not None)
    if not same:
        discard_checkpoints(checkpoint_root)
        return RunPlan(False, None)
    return RunPlan(finished, None if finished else latest)


def train_or_finish(trainer, checkpoint: Path | None) -> None:
    """`trainer.train`, continuing from `checkpoint`; a checkpoint at the last step is only loaded (no
    optimizer step max_steps + 1)."""
    if final_state(checkpoint) is not None:
        load_final_checkpoint(trainer, checkpoint, lambda _model, folder: trainer._load_from_checkpoint(folder))
    else:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
