"""Training curves of every fine-tuning stage (embedder, reranker / judge, reasoner SFT, GRPO): `curves.csv`,
every logged value per optimizer step, and `curves.png`, one panel per series (TensorBoard too, if installed
— the embedder trainer adds `report_to="tensorboard"` then).

`CurvesCallback` rewrites them from the trainer's `log_history` at every log (atomically), so they are
complete after a resume as well: the history is restored from the checkpoint. Stages that write their
output folder in one swap at the end call `write_curves` on it.

`LogLastStep` (added to every trainer by `unime.models.run_state.train_or_finish`) makes the Trainer log at
the run's last step too, when it is not a multiple of the logging interval: the curves end at the last step,
and the logged windows cover every step (`run_state.whole_run_loss`). It logs at every step the Trainer saves a
checkpoint at as well, so a resumed run's windows are an uninterrupted run's (and so its losses).

`log_training_dicts` (called on every trainer by `train_or_finish`, and by the demo's captioning stage, which trains
without it) sends the Trainer's log dicts (`{'loss': ..., 'grad_norm': ...}`) through `logging` at INFO, one line
each (`training_log_line`: `step 40/240: loss 0.4123, grad_norm 1.235, learning_rate 4.5e-05, epoch 0.1667`):
transformers' `ProgressCallback` wrote them to stdout with `tqdm.write` (and `PrinterCallback`, without a bar, with
`print`), where they mixed with a command's output (`unime train embedder`'s last line, the merged folder) and the
demo could not route them to its stage logs. The bar stays as it was.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from transformers import PrinterCallback, ProgressCallback, TrainerCallback

from unime.data.atomic import atomic_open

CURVES_CSV = "curves.csv"
CURVES_PNG = "curves.png"
log = logging.getLogger(__name__)
# keys of the trainer's end-of-training summary, not per-step values
_SUMMARY_KEYS = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss"}


def step_rows(log_history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-step log entries (the final summary entry is left out)."""
    return [dict(e) for e in log_history if "step" in e and not (_SUMMARY_KEYS & set(e))]


# curves.csv's first columns, in this order; the others follow sorted
_FIRST_COLUMNS = ("step", "epoch", "loss", "grad_norm", "learning_rate")


def curves_csv_text(log_history: Sequence[dict[str, Any]]) -> str:
    """The step rows as CSV, the columns in one order whatever order the rows hold their keys in (`_FIRST_COLUMNS`,
    then the rest sorted): a resumed run's history comes back from `trainer_state.json` with its keys sorted, and
    the columns followed the first row's order, so a resumed run's file differed from an uninterrupted one's."""
    rows = step_rows(log_history)
    keys = {k for r in rows for k in r}
    columns = ["step", "epoch"] + [k for k in _FIRST_COLUMNS[2:] if k in keys]
    columns += sorted(keys - set(columns))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k, "") for k in columns})
    return buf.getvalue()


def read_curves_csv(path: str | os.PathLike) -> list[dict[str, float]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]


def plot_curves(log_history: Sequence[dict[str, Any]], png_path: str | os.PathLike, *, title: str = "") -> None:
    """One panel per logged series (loss first), against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = step_rows(log_history)
    series = []
    for r in rows:
        series += [k for k, v in r.items() if k not in ("step", "epoch") and isinstance(v, (int, float))
                   and k not in series]
    series.sort(key=lambda k: (k != "loss", k))
    n = max(1, len(series))
    fig, axes = plt.subplots(n, 1, figsize=(6.5, 2.2 * n), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], series):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 50 else None)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("optimizer step")
    if title:
        axes[0, 0].set_title(title)
    fig.tight_layout()
    png_path = Path(png_path)
    tmp = png_path.with_name(f".{png_path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)


def write_curves(log_history: Sequence[dict[str, Any]], folder: str | os.PathLike, *, title: str = "",
                 plot: bool = True) -> None:
    """FOLDER/curves.csv and, with `plot` and at least one step logged, FOLDER/curves.png."""
    folder = Path(folder)
    with atomic_open(folder / CURVES_CSV) as fh:
        fh.write(curves_csv_text(log_history))
    if plot and step_rows(log_history):
        plot_curves(log_history, folder / CURVES_PNG, title=title)


class LogLastStep(TrainerCallback):
    """The Trainer logs at the run's last step as well (by default only every `logging_steps` steps, so the
    steps after the last multiple went unlogged: the curves stopped short, and the whole-run loss, the
    last loss and a short run's first loss left them out). It only sets the Trainer's `should_log` flag at
    that step: a run whose last step is a multiple of the interval logs exactly as before, and training (the
    weights) is the same either way. Also at the end of an epoch where training stops short of `max_steps`
    (an iterable dataset run dry, a callback's stop), which the step-end check cannot see.

    And at every step it saves a checkpoint at: each logged loss is the mean since the previous log, and a run
    resumed from checkpoint-N starts its first window at step N, where an uninterrupted run's started at its
    previous logging step — with `save_steps` not a multiple of `logging_steps` the two reported other losses
    (the last one too) for the same weights. A checkpoint's step now ends a window in both, so their logged
    windows and values are the same; an uninterrupted run gets one more log row at each save step that was no
    logging step. (The Trainer's `DefaultFlowCallback`, first among the callbacks, has set `should_save` by
    then; the log is written before the checkpoint, so the checkpoint's history holds it.)"""

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save or (state.max_steps > 0 and state.global_step >= state.max_steps):
            control.should_log = True  # the Trainer skips it if this step is logged already
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if control.should_training_stop:
            control.should_log = True
        return control


class CurvesCallback(TrainerCallback):
    """Writes OUT/curves.csv at every log and OUT/curves.png at every save and at the end (main process)."""

    def __init__(self, out_dir: str | os.PathLike, *, title: str = ""):
        self.out_dir = Path(out_dir)
        self.title = title

    def _write(self, state, *, plot: bool) -> None:
        if not state.is_world_process_zero:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_curves(state.log_history, self.out_dir, title=self.title, plot=plot)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._write(state, plot=False)

    def on_save(self, args, state, control, **kwargs):
        self._write(state, plot=True)

    def on_train_end(self, args, state, control, **kwargs):
        self._write(state, plot=True)


# -- the Trainer's log dicts, logged ----------------------------------------------------------------------------
def training_log_line(state, logs: Mapping[str, Any], max_str_len: int = 100) -> str:
    """One log dict of the Trainer as a line: `step N/MAX: key value, ...`, every key in order but `total_flos`
    (transformers' bar and printer leave it out too), floats to 4 significant digits, a string longer than
    `max_str_len` by its length."""
    parts = []
    for key, value in logs.items():
        if key == "total_flos":
            continue
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, str) and len(value) > max_str_len:
            value = f"[a string of {len(value)} characters]"
        parts.append(f"{key} {value}")
    step = f"step {state.global_step}/{state.max_steps}" if state.max_steps else f"step {state.global_step}"
    return f"{step}: {', '.join(parts)}"


def _reaches_a_console(logger: logging.Logger, record: logging.LogRecord) -> bool:
    """Whether a handler of `logger` or its parents writes `record` to stdout / stderr."""
    current: logging.Logger | None = logger
    while current is not None:
        for h in current.handlers:
            if (isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (sys.stdout, sys.stderr)
                    and record.levelno >= h.level and h.filter(record)):
                return True
        current = current.parent if current.propagate else None
    return False


def _log_training_dict(state, logs: Mapping[str, Any], max_str_len: int, bar=None) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, training_log_line(state, logs, max_str_len), (),
                            None)
    write_mode = getattr(type(bar), "external_write_mode", None) if bar is not None else None
    if write_mode is not None and _reaches_a_console(log, record):
        with write_mode(file=sys.stderr):  # the bar cleared, the line written, the bar drawn again (as tqdm.write)
            log.handle(record)
    else:
        log.handle(record)


class LoggedProgressCallback(ProgressCallback):
    """transformers' progress bar as it is; each log dict goes to `logging` (INFO) instead of `tqdm.write`."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs is not None:
            _log_training_dict(state, logs, self.max_str_len, self.training_bar)


class LoggedPrinterCallback(PrinterCallback):
    """transformers' printer without a bar (`disable_tqdm`): each log dict goes to `logging` (INFO) instead of
    `print`."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None:
            return
        logs.pop("total_flos", None)  # as PrinterCallback: the callbacks after it get the dict without it
        if state.is_local_process_zero:
            _log_training_dict(state, logs, 100)


def log_training_dicts(trainer) -> None:
    """Replace `trainer`'s `ProgressCallback` / `PrinterCallback` (transformers adds one of them to every Trainer)
    by `LoggedProgressCallback` / `LoggedPrinterCallback`, in the same place among its callbacks. Again: nothing."""
    callbacks = trainer.callback_handler.callbacks
    for i, callback in enumerate(callbacks):
        if type(callback) is ProgressCallback:
            callbacks[i] = LoggedProgressCallback(max_str_len=callback.max_str_len)
        elif type(callback) is PrinterCallback:
            callbacks[i] = LoggedPrinterCallback()
