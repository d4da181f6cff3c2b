"""The options of `unime eval reference` (`ReferenceConfig`, `ReferenceRunOptions`), in a module without
torch: the command line builds its parsers from them without importing the reference's model
(`unime.eval.reference`)."""

from __future__ import annotations

from dataclasses import dataclass

from unime.eval.metrics import TIE_POLICIES
from unime.errors import OptionError
from unime.eval.runners import eval_on_error_option
from unime.options import RangeChecked, option


@dataclass
class ReferenceConfig(RangeChecked):
    """The reference's training and model settings (recorded in its result folder); the fields with an option
    are options of `unime eval reference`."""

    seconds: float = option(120.0, "wall-clock training budget (default %(default)s; inf: no time limit, "
                            "--max-steps only)", finite=False)  # > 0: `check_together` (-inf is no limit)
    # whichever of the two comes first: either at 0 trains no step at all
    max_steps: int = option(100_000, "step limit (default %(default)s)", at_least=1)
    batch_size: int = option(64, "training batch size (in-batch negatives)", at_least=2)
    lr: float = option(2e-3, "learning rate", at_least=0)
    weight_decay: float = option(0.01, cli=False, at_least=0)
    dim: int = option(128, cli=False, at_least=1)  # output embedding size
    word_dim: int = option(64, cli=False, at_least=1)
    image_size: int = option(64, "images are resized to this square size", at_least=16)
    channels: tuple[int, int, int, int] = option((32, 64, 96, 128), cli=False)
    init_temperature: float = option(0.07, cli=False, above=0)
    seed: int = option(0, "random seed")
    # training and encoding
    threads: int = option(1, "torch threads (1 = bit-reproducible; default %(default)s)", at_least=1)
    video_frames: int = option(8, "frames sampled uniformly from each video (default: ReferenceConfig.video_frames, 8)",
                               metavar="N", cli_default=None, at_least=1)
    # steps between training-log lines (running in-batch P@1 and loss)
    log_every: int = option(20, cli=False, at_least=1)

    def __post_init__(self):
        super().__post_init__()
        self.channels = tuple(int(c) for c in self.channels)
        if len(self.channels) != 4:
            raise ValueError("channels: four conv widths")

    def check_together(self) -> None:
        super().check_together()
        if self.seconds <= 0:  # the training stops at its first step (NaN: refused by its range check)
            raise OptionError(self, "{seconds} must be > 0 (inf: no time limit), got {got!r}", got=self.seconds)
        if any(c < 1 for c in self.channels):
            raise OptionError(self, "{channels} must be four widths >= 1, got {got}", got=tuple(self.channels))


@dataclass(kw_only=True)
class ReferenceRunOptions(RangeChecked):
    """The other options of `unime eval reference`: `evaluate_reference`'s inputs and outputs."""

    tasks: str = option(help="task config YAML or a folder holding eval_tasks.yaml")
    tasks_root: str | None = option(None, "folder the task paths are relative to")
    only: list[str] | None = option(None, "evaluate only this task", dest="task", action="append", metavar="NAME")
    records: str = option(help="training records (.jsonl, .parquet, .json)")
    data_root: str | None = option(None, "folder the records' image paths are relative to (default: the records "
                                   "file's folder)")
    out: str = option(help="output folder")
    also: list[list[str]] | None = option(None, "also evaluate the trained reference on TASKS, writing the result "
                                          "folder OUT like `unime eval` (repeatable; e.g. a world's "
                                          "eval_tasks_video.yaml)", nargs=2, action="append", metavar=("TASKS", "OUT"))
    ties: str = option("pessimistic", "exact score ties (as `unime eval --ties`)", choices=list(TIE_POLICIES))
    on_error: str = eval_on_error_option()  # `unime eval`'s: the same policy and report
