"""The options both Embed-RL training stages take (`unime train reasoner --stage sft|grpo`), declared once."""

from __future__ import annotations

from dataclasses import dataclass

from unime.data.video import VideoOptions
from unime.models.hf_arguments import gradient_checkpointing_option
from unime.models.image_budget import ImageOptions
from unime.models.loading import dtype_option
from unime.options import as_given, key_value_pairs, on_error_option, option

# a reasoner stage's warm-up is transformers' `warmup_steps` (steps, or a fraction of the run below 1: transformers 5
# has no warmup_ratio), given as `--trainer-arg warmup_steps=N`; its run is --max-steps
WARMUP_OPTIONS = ("--trainer-arg warmup_steps", "--max-steps")
WARMUP_FIELDS = ("trainer_arg warmup_steps", "max_steps")  # the same from the Python API


def trainer_arg_warmup(trainer_arg) -> float:
    """The warm-up `--trainer-arg warmup_steps=N` among the `trainer_arg` strings sets (0 without one, or with a
    value that is no number: the run refuses it)."""
    try:
        value = key_value_pairs(trainer_arg, "--trainer-arg").get("warmup_steps", 0)
    except ValueError:
        return 0
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def warmup_check():
    """The trainer callback that logs the warm-up WARNING at the start of a reasoner stage's run
    (`unime.models.warmup.WarmupCheck`, named by the stage's options as the user gives them: `as_given`)."""
    from unime.models.warmup import WarmupCheck

    return WarmupCheck(*map(as_given, WARMUP_OPTIONS, WARMUP_FIELDS))


@dataclass(kw_only=True)
class ReasonerStageOptions(ImageOptions, VideoOptions):
    model: str = option(help="reasoner checkpoint to train (grpo: the SFT output folder or its merged/); an adapter "
                        "folder is trained on with its own LoRA (its rank; no --lora-* option), not wrapped in a "
                        "second one")
    out: str = option(help="output folder (merged/: an HF folder; adapter/ for LoRA; README.md, checkpoints/, logs)")
    data_root: str | None = option(None, "folder image paths are relative to")
    dtype: str = dtype_option(before="weights and training dtype: ")
    gradient_checkpointing: bool = gradient_checkpointing_option()
    seed: int = option(0)
    # --steps as the other trainers spell it (QA: `train reasoner --steps 3` was refused)
    max_steps: int = option(-1, "optimizer steps (default: the stage's epochs)", at_least=1,
                            flag=("--max-steps", "--steps"))
    resume: bool = option(False, "accepted for compatibility: re-running the same command continues an interrupted "
                          "run anyway")  # `unime.models.run_state`
    overwrite: bool = option(False, cli=False)  # start over (also with changed options): the commands' --overwrite
    on_error: str = on_error_option("skip bad lines of --tcots / --records and rows whose images do not open (counted "
                                    "and reported) instead of stopping at the first")

    def validate(self) -> None:
        """UsageError for a --device the run cannot train on (`trainer_device`), and ModelError for full fine-tuning
        (--lora-r 0) of an adapter folder, before any work: before the run claims its output folder (an option
        outside its range is refused as the config is made, `unime.options.RangeChecked`)."""
        from unime.models.loading import trainer_device
        from unime.models.lora import (LoraSettings, refuse_full_fine_tuning_of_adapter,
                                       refuse_lora_vision_without_vision_targets)

        trainer_device(getattr(self, "device", None))  # both stages' configs add --device (`DeviceOptions`)
        if getattr(self, "lora_r", None) == 0:  # both stages' configs add the LoRA options (rank 0: full)
            refuse_full_fine_tuning_of_adapter(self.model, "--lora-r 0")
        elif hasattr(self, "lora_targets"):
            refuse_lora_vision_without_vision_targets(self.model, LoraSettings.from_options(self))
