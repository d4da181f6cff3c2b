"""A warm-up that covers the whole run, said: with the linear schedule the learning rate rises for the warm-up's
steps, so a run of no more steps never reaches its peak value (QA: a recipe's `--warmup 200` with `--steps 100`, or a
3-step run, trained at 0.0 then 1e-06). Nothing is changed; `WarmupCheck` (added by every trainer) logs one
WARNING at the start of training naming both options, once the run's number of optimizer steps is known (given,
or from the epochs). `--print-config` shows the same WARNING (`run_warmup_warning`) when --steps gives them.

Importing this module does not import transformers (`--print-config` stays quick): `WarmupCheck` is built on first
use."""

from __future__ import annotations

import logging
import math

log = logging.getLogger(__name__)


def warmup_steps(warmup: float, steps: int) -> int:
    """The warm-up's optimizer steps for the option's value `warmup` (steps, or a fraction of the run's `steps` below
    1): transformers' rule (`TrainingArguments.get_warmup_steps`), without importing transformers."""
    return int(warmup) if warmup >= 1 else math.ceil(steps * warmup)


def run_warmup_warning(warmup: float, steps: int | None, warmup_option: str = "--warmup",
                       steps_option: str = "--steps") -> str | None:
    """`warmup_warning` for a run of `steps` optimizer steps (None or < 1: not known, no warning) with the warm-up
    option's value `warmup`: what the run logs at its start (`WarmupCheck`) and `--print-config` shows."""
    if not steps or steps < 1:
        return None
    return warmup_warning(warmup, warmup_steps(warmup, steps), steps, warmup_option, steps_option)


def warmup_warning(warmup: float, warmup_steps: int, steps: int, warmup_option: str, steps_option: str) -> str | None:
    """The WARNING when the warm-up's `warmup_steps` (from the option's value `warmup`: steps, or a fraction of the
    steps below 1) are at least the run's `steps`; None otherwise."""
    if steps <= 0 or warmup_steps < steps:
        return None
    given = f"{warmup_option} {warmup:g}" + (f" ({warmup_steps} steps)" if warmup != warmup_steps else "")
    return (f"{given} >= the run's {steps} optimizer steps ({steps_option}, or from the epochs): the learning rate "
            f"never leaves warm-up (it stays below its peak value for the whole run); give a smaller {warmup_option} "
            f"or more {steps_option}")


def _warmup_check_class():
    from transformers import TrainerCallback

    class WarmupCheck(TrainerCallback):
        """`run_warmup_warning` at the start of training, on the main process; `warmup_option` / `steps_option` are
        the trainer's options (`--warmup`, `--steps`)."""

        def __init__(self, warmup_option: str = "--warmup", steps_option: str = "--steps"):
            self.warmup_option, self.steps_option = warmup_option, steps_option

        def on_train_begin(self, args, state, control, **kwargs):
            text = run_warmup_warning(args.warmup_steps, state.max_steps, self.warmup_option, self.steps_option)
            if text and state.is_world_process_zero:
                log.warning(text)

    return WarmupCheck


def __getattr__(name):  # lazy: `WarmupCheck` needs transformers, the rest of the module does not
    if name == "WarmupCheck":
        globals()[name] = cls = _warmup_check_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
