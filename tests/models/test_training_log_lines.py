"""The Trainer's log dicts (`{'loss': ..., 'grad_norm': ...}`) go through `logging` at INFO
(`unime.models.curves.log_training_dicts`), not to stdout: transformers' `ProgressCallback` (`tqdm.write`) and
`PrinterCallback` (`print`) are replaced by subclasses that keep the bar and log one line per dict."""

from __future__ import annotations

import logging

from transformers import PrinterCallback, ProgressCallback, TrainerControl, TrainerState, TrainingArguments

LOGS = {"loss": 0.412345678, "grad_norm": 1.23456, "learning_rate": 4.5e-05, "epoch": 0.16666666, "total_flos": 9e12,
        "note": "x" * 150, "num_tokens": 128}
LINE = ("step 40/240: loss 0.4123, grad_norm 1.235, learning_rate 4.5e-05, epoch 0.1667, "
        "note [a string of 150 characters], num_tokens 128")


def _state(**kw) -> TrainerState:
    state = TrainerState(global_step=40, max_steps=240, **kw)
    return state


def test_the_progress_callback_logs_the_dict_as_one_info_line_and_prints_nothing(capsys, caplog, tmp_path):
    from unime.models.curves import LoggedProgressCallback

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    callback, state = LoggedProgressCallback(), _state()
    assert isinstance(callback, ProgressCallback)
    callback.on_train_begin(args, state, TrainerControl())
    logs = dict(LOGS)
    with caplog.at_level(logging.INFO, logger="unime"):
        callback.on_log(args, state, TrainerControl(), logs=logs)
    callback.on_train_end(args, state, TrainerControl())
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("unime.models.curves", logging.INFO, LINE)]
    assert logs == LOGS  # the dict the later callbacks get is left as it is (as ProgressCallback does)
    assert capsys.readouterr().out == ""


def test_the_printer_callback_logs_the_dict_and_drops_total_flos_as_transformers_does(capsys, caplog, tmp_path):
    from unime.models.curves import LoggedPrinterCallback

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    callback = LoggedPrinterCallback()
    assert isinstance(callback, PrinterCallback)
    logs = dict(LOGS)
    with caplog.at_level(logging.INFO, logger="unime"):
        callback.on_log(args, _state(), TrainerControl(), logs=logs)
        callback.on_log(args, _state(is_local_process_zero=False), TrainerControl(), logs=dict(LOGS))
    assert [r.getMessage() for r in caplog.records] == [LINE]  # once: the local main process only
    assert "total_flos" not in logs  # PrinterCallback pops it from the dict the later callbacks get
    assert capsys.readouterr().out == ""


def test_other_processes_and_levels_log_nothing(capsys, caplog, tmp_path):
    from unime.models.curves import LoggedProgressCallback

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    callback = LoggedProgressCallback()
    callback.on_train_begin(args, _state(), TrainerControl())
    with caplog.at_level(logging.INFO, logger="unime"):
        callback.on_log(args, _state(is_world_process_zero=False), TrainerControl(), logs=dict(LOGS))
    with caplog.at_level(logging.WARNING, logger="unime"):
        callback.on_log(args, _state(), TrainerControl(), logs=dict(LOGS))
    callback.on_train_end(args, _state(), TrainerControl())
    assert caplog.records == []
    assert capsys.readouterr().out == ""


def test_a_run_without_max_steps_names_the_step_only(caplog):
    from unime.models.curves import training_log_line

    assert training_log_line(TrainerState(global_step=3), {"loss": 2.0, "epoch": 1}) == "step 3: loss 2, epoch 1"


def test_log_training_dicts_replaces_the_bar_and_the_printer_in_place_once():
    """The replacement keeps each callback's place (the order of on_log calls) and is idempotent."""
    from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback

    from unime.models.curves import LoggedPrinterCallback, LoggedProgressCallback, log_training_dicts

    class FakeTrainer:
        pass

    for cls, logged in ((ProgressCallback, LoggedProgressCallback), (PrinterCallback, LoggedPrinterCallback)):
        trainer = FakeTrainer()
        trainer.callback_handler = CallbackHandler([DefaultFlowCallback, cls(), DefaultFlowCallback], None, None,
                                                   None, None)
        log_training_dicts(trainer)
        log_training_dicts(trainer)
        assert [type(c) for c in trainer.callback_handler.callbacks] == [DefaultFlowCallback, logged,
                                                                          DefaultFlowCallback]


def test_on_a_console_the_line_is_not_glued_onto_the_bar(capsys, tmp_path):
    """A console handler on stderr (the command line's, at INFO): the bar is cleared before the line and drawn
    again after it (as `tqdm.write` does), so the line starts a line of its own."""
    import sys

    from unime.models.curves import LoggedProgressCallback

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    unime = logging.getLogger("unime")
    console = logging.StreamHandler(sys.stderr)  # capsys's stderr, as the bar's
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    level = unime.level
    unime.addHandler(console)
    unime.setLevel(logging.INFO)
    try:
        callback = LoggedProgressCallback()
        callback.on_train_begin(args, _state(), TrainerControl())
        callback.on_log(args, _state(), TrainerControl(), logs=dict(LOGS))
        callback.on_train_end(args, _state(), TrainerControl())
    finally:
        unime.removeHandler(console)
        unime.setLevel(level)
    captured = capsys.readouterr()
    assert captured.out == ""
    shown = [segment.split("\r")[-1] for segment in captured.err.split("\n")]
    assert f"INFO unime.models.curves: {LINE}" in shown, captured.err
