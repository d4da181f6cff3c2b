"""The demo's console and its stages' log files (`unime.demo.stage_logs`): a stage's INFO records go to
OUT/logs/STAGE.log and not to the console; WARNING and up to both; a level given with `--log-level` keeps the
console as it was; each attempt appends below its header; the worker processes write into the same file."""

from __future__ import annotations

import io
import logging

import pytest

from unime.demo.stage_logs import DETAILS, StageLogging

FMT = "%(levelname)s %(name)s: %(message)s"


@pytest.fixture
def console():
    """A console as `unime.cli.configure_logging` sets it up (a plain StreamHandler on the root logger, INFO), on a
    StringIO; the root logger's level and handlers put back afterwards."""
    root, stream = logging.getLogger(), io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(FMT))
    saved = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(saved)


def _lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def test_a_stages_info_goes_to_its_file_and_its_warnings_to_both(tmp_path, console):
    log = logging.getLogger("unime.eval.runners")
    path = tmp_path / "logs" / "eval.log"
    with StageLogging(path).routed(header="===== stage eval: attempt 1 ====="):
        log.debug("not logged at INFO")
        log.info("count_cls: hit@1=0.5000")
        log.warning("a warning the user must read")
        log.error("an error")
        logging.getLogger("faiss.loader").info("another library's INFO")
    log.info("after the stage")
    lines = _lines(path)
    assert lines[0] == "===== stage eval: attempt 1 ====="
    assert [line.split(" ", 2)[2] for line in lines[1:]] == [
        "INFO unime.eval.runners: count_cls: hit@1=0.5000", "WARNING unime.eval.runners: a warning the user must read",
        "ERROR unime.eval.runners: an error"]
    assert console.getvalue().splitlines() == [
        "WARNING unime.eval.runners: a warning the user must read", "ERROR unime.eval.runners: an error",
        "INFO unime.eval.runners: after the stage"]  # outside a stage the console is as it was


def test_each_attempt_appends_below_its_header(tmp_path, console):
    path = tmp_path / "logs" / "mine.log"
    log = logging.getLogger("unime.mining.pipeline")
    for attempt in (1, 2):
        with StageLogging(path).routed(header=f"== attempt {attempt} =="):
            log.info("shard %d", attempt)
    lines = _lines(path)
    assert [lines[0], lines[2]] == ["== attempt 1 ==", "== attempt 2 =="]
    assert lines[1].endswith("INFO unime.mining.pipeline: shard 1") and lines[3].endswith("shard 2")
    assert console.getvalue() == ""


def test_a_level_given_keeps_the_console_and_the_file_still_gets_info(tmp_path, console):
    log = logging.getLogger("unime.train.embedder_trainer")
    path = tmp_path / "logs" / "baseline.log"
    with StageLogging(path, console_level=logging.INFO, summary=False).routed():  # --log-level INFO
        log.info("step 1")
        log.warning("w1")
    assert console.getvalue().splitlines() == ["INFO unime.train.embedder_trainer: step 1",
                                               "WARNING unime.train.embedder_trainer: w1"]
    console.truncate(0), console.seek(0)
    logging.getLogger().setLevel(logging.WARNING)  # --log-level WARNING: the console as asked, the file has INFO
    with StageLogging(path, console_level=logging.WARNING, summary=False).routed():
        log.info("step 2")
        log.warning("w2")
    assert console.getvalue().splitlines() == ["WARNING unime.train.embedder_trainer: w2"]
    assert [line.split(" ", 2)[2] for line in _lines(path)][-2:] == [
        "INFO unime.train.embedder_trainer: step 2", "WARNING unime.train.embedder_trainer: w2"]
    assert not logging.getLogger("unime").isEnabledFor(logging.INFO)  # the level is put back after the stage


def test_a_warnings_details_stay_in_the_file(tmp_path, console):
    path = tmp_path / "logs" / "mine.log"
    log = logging.getLogger("unime.mining.stages")
    with StageLogging(path).routed():
        log.warning("summary line: skipped 2\n  - record a\n  - record b", extra={DETAILS: True})
        log.warning("two lines\nnot marked")
    assert console.getvalue().splitlines() == [
        f"WARNING unime.mining.stages: summary line: skipped 2 (2 more line(s) in {path})",
        "WARNING unime.mining.stages: two lines", "not marked"]
    assert "  - record a" in _lines(path) and "  - record b" in _lines(path)
    console.truncate(0), console.seek(0)
    with StageLogging(path, console_level=logging.INFO, summary=False).routed():  # --log-level given: all of it
        log.warning("summary\n  - record a", extra={DETAILS: True})
    assert console.getvalue().splitlines() == ["WARNING unime.mining.stages: summary", "  - record a"]


def test_worker_processes_write_whole_lines_into_the_stages_file(tmp_path, capfd):
    """The demo's per-seed workers (`unime.demo.parallel._init_worker`): each process's records go to the stage's one
    file (appended to, one write per record: long lines of two processes do not cut into each other), its console
    shows from WARNING up."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from unime.demo.parallel import _init_worker

    path = tmp_path / "logs" / "baseline.log"
    path.parent.mkdir()
    path.write_text("===== stage baseline: attempt started =====\n")
    log = logging.getLogger("unime.train.embedder_trainer")
    long = "x" * 20000  # longer than a write buffer
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                             initargs=(1, StageLogging(path))) as pool:
        futures = [pool.submit(log.info, "seed %d line %d %s end", seed, i, long)
                   for i in range(40) for seed in (0, 1)]
        futures += [pool.submit(log.warning, "seed %d warning", seed) for seed in (0, 1)]
        [f.result() for f in futures]
    lines = _lines(path)
    assert lines[0] == "===== stage baseline: attempt started ====="
    info = [line for line in lines[1:] if " INFO " in line]
    assert len(info) == 80 and all(line.endswith(f"{long} end") for line in info)
    assert {line.split(": ", 1)[1].split(" x")[0] for line in info} == {
        f"seed {s} line {i}" for s in (0, 1) for i in range(40)}
    assert all("[process " in line for line in lines[1:])  # a worker's lines name its process
    err = capfd.readouterr().err
    assert "seed 0 warning" in err and "seed 1 warning" in err and "line 0" not in err


@pytest.mark.parametrize("argv, level", [([], None), (["--log-level", "INFO"], logging.INFO),
                                         (["--log-level", "debug"], logging.DEBUG)])
def test_the_demo_tells_a_log_level_given_from_none(tmp_path, monkeypatch, argv, level):
    """`unime demo` without `--log-level`: its console shows warnings (None); with one, even INFO, the level."""
    import unime.demo.pipeline as pipeline
    from unime.cli import main

    seen = []

    def run_demo(opts, *, console_level=None):
        seen.append(console_level)
        return tmp_path / "report.md"
    monkeypatch.setattr(pipeline, "run_demo", run_demo)
    assert main([*argv, "demo", "--quick", "--out", str(tmp_path / "demo")]) == 0
    assert seen == [level]
