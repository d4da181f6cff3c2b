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
                            "--max-steps only)", finite=False)
    max_steps: int = option(100_000, "step limit (default %(default)s)")  # whichever of the two comes first
    batch_size: int = option(64, "training batch size (in-batch negatives)", at_least=2)
    lr: float = option(2e-3, "learning rate", at_least=0)
    weight_decay: float = option(0.01, cli=False)
    dim: int = option(128, cli=False)  # output embedding size
    word_dim: int = option(64, cli=False)
    image_size: int = option(64, "images are resized to this square size", at_least=16)
    channels: tuple[int, int, int, int] = option((32, 64, 96, 128), cli=False)
    init_temperature: float = option(0.07, cli=False)
    seed: int = option(0, "random seed")
    # training and encoding
    threads: int = option(1, "torch threads (1 = bit-reproducible; default %(default)s)", at_least=1)
    video_frames: int = option(8, "frames sampled uniformly from each video (default: ReferenceConfig.video_frames, 8)",
                               metavar="N", cli_default=None)
    log_every: int = option(20, cli=False)  # steps between training-log lines (running in-batch P@1 and loss)

    def __post_init__(self):
        super().__post_init__()
        if self.seconds <= 0 and self.max_steps <= 0:
            raise OptionError(self, "give a positive time budget ({seconds}) or step count ({max_steps})")
        self.channels = tuple(int(c) for c in self.channels)
        if len(self.channels) != 4:
            raise ValueError("channels: four conv widths")


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
