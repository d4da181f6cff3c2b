"""The command line's contracts: one error line + exit code 2 for user-caused failures, config files
parsed by the command line's rules, and output folders that are never taken from the user."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from unime.cli import OWNED_OUTPUT_COMMANDS, _add_overwrite_options, _parse, build_parser, main
from unime.cli.options_file import ConfigError
from unime.outdir import MARKER_NAME, read_marker


def _error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("unime: error:")]


def parse(argv: list[str]):
    parser = build_parser()
    _add_overwrite_options(parser)
    return _parse(parser, argv)


# -- one error line, exit code 2 ---------------------------------------------------------------------------
def test_a_data_error_is_one_line_and_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "r.jsonl"
    bad.write_bytes(b'{"query": {"text": "q"}, "positive": {"text": "p"}}\n{"query": {"text": "\xff"}}\n')
    assert main(["mine", "--records", str(bad), "--embedder", "e", "--judge", "j", "--out", str(tmp_path / "o")]) == 2
    assert _error_lines(capsys) == [f"unime: error: {bad}, record line 2: not UTF-8 text at column 21 (byte b'\\xff')"]


def test_a_mine_option_that_does_not_fit_another_is_named_by_its_flags(tmp_path, capsys):
    """MineConfig's own refusal (OptionError) names the options as the user gives them, not the config fields."""
    argv = ["mine", "--records", "r.jsonl", "--embedder", "e", "--judge", "j", "--out", str(tmp_path / "o"),
            "--k", "4", "--range-min", "4"]
    assert main(argv) == 2
    assert _error_lines(capsys) == ["unime: error: mine: --range-min must be below --k (it skips that many of the K "
                                    "candidates), got 4 with 4"]
    assert not (tmp_path / "o").exists()


def test_debug_shows_the_traceback(tmp_path, capsys):
    argv = ["--log-level", "DEBUG", "data", "check", str(tmp_path / "none.jsonl")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert err.strip().splitlines()[-1] == f"unime: error: {tmp_path / 'none.jsonl'}: record file not found"


def test_the_error_line_starts_a_line_of_its_own_after_a_progress_bar(monkeypatch, capsys):
    """A bar's line ends without a newline: the error goes on the next line, not glued onto it; under torchrun too,
    where the bar is another process's (the Trainer shows it on the first process only)."""
    from tqdm import tqdm

    from unime.cli.failures import report
    from unime.errors import DataError

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    bar = tqdm(total=18, file=sys.stderr)
    bar.update(12)
    assert report(DataError("corrupt image", source="bad.jsonl", record=70), debug=False) == 2
    bar.close()
    err = capsys.readouterr().err
    assert "12/18" in err and "\nunime: error: bad.jsonl, record 70: corrupt image\n" in err
    assert report(DataError("bad"), debug=False) == 2  # no bar: no empty line
    assert capsys.readouterr().err == "unime: error: bad\n"
    monkeypatch.setenv("WORLD_SIZE", "2")  # another process's bar may be on the terminal's line
    assert report(DataError("bad"), debug=False) == 2
    assert capsys.readouterr().err == "\nunime: error: bad\n"


@pytest.mark.parametrize("argv, hint", [
    (["eval", "--model", "m", "--tasks", "t", "--out", "{out}"], "; for several GPUs, run one `unime eval` per GPU"),
    (["embed", "--model", "m", "--items", "i.jsonl", "--out", "{out}"], "; for several GPUs, split the items file"),
    (["index", "build", "--model", "m", "--items", "i.jsonl", "--out", "{out}"], ""),
    (["judge", "--pairs", "p.jsonl", "--judge", "j", "--out", "{out}"], ""),
    (["data", "synth", "--out", "{out}"], ""),
    (["reason", "teacher", "--world", "w", "--out", "{out}"], ""),
])
def test_a_one_process_command_under_a_launcher_of_several_is_refused_before_any_work(
        argv, hint, tmp_path, monkeypatch, capsys):
    """QA: `torchrun --nproc-per-node 2 -m unime eval ...` ran the whole evaluation in each process, into the same
    folder. Only the trainers and mining spread their work over the processes."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    out = tmp_path / "out"
    argv = [a.replace("{out}", str(out)) for a in argv]
    command = " ".join(argv[:2] if argv[0] in ("index", "data", "reason") else argv[:1])
    assert main(argv) == 2
    [line] = _error_lines(capsys)
    expected = f"unime: error: {command}: runs as one process, not under torchrun or another launcher (2 processes)"
    assert line.startswith(expected + hint) and (hint or line == expected)
    assert not out.exists()  # refused before the output was claimed


def test_the_trainers_and_mining_are_not_refused_under_a_launcher(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")  # not the first process: it claims no folder, and fails on the missing records
    for argv in (["train", "embedder", "--model", "m", "--records", str(tmp_path / "none.jsonl"), "--out",
                  str(tmp_path / "e")],
                 ["train", "reranker", "--model", "m", "--records", str(tmp_path / "none.jsonl"), "--out",
                  str(tmp_path / "r")]):
        main(argv)
        err = capsys.readouterr().err
        assert "runs as one process" not in err and "none.jsonl" in err, err
    from unime.cli import refuse_several_processes

    for command in ("mine", "train judge", "train reasoner"):  # mining under two processes: tests/mining
        refuse_several_processes(command)


def _reranker_result(cfg):
    """A finished run's result, in the folder `trained` next to OUT (its `adapter` and `merged`: the test's)."""
    from unime.train.reranker_trainer import TrainResult

    return TrainResult(out=str(Path(cfg.out).parent / "trained"), role=cfg.role, examples=6, records=3, skipped=0,
                       steps=2, num_candidates=None, first_loss=0.75, last_loss=0.5)


def _embedder_result(cfg):
    from unime.train.embedder_trainer import EmbedderTrainingResult

    out = Path(cfg.out)
    return EmbedderTrainingResult(out=out, merged=out / "merged", adapter=None,
                                  metrics={"initial_loss": 0.75, "final_loss": 0.5, "steps": 2})


_SFT = {"examples": 6, "steps": 2, "first_loss": 0.75, "last_loss": 0.5}


@pytest.mark.parametrize("argv, stub, result, summary", [
    (["train", "embedder", "--model", "m", "--records", "r.jsonl"], "unime.train.embedder_trainer.train_embedder",
     _embedder_result, "loss 0.7500 -> 0.5000 over 2 steps\n{tmp}/out/merged\n"),
    (["train", "reranker", "--model", "m", "--records", "r.jsonl"], "unime.train.reranker_trainer.train_reranker",
     _reranker_result, "reranker: 3 records, 6 examples, 2 steps, loss 0.7500 -> 0.5000\n{tmp}/trained/adapter\n"),
    (["train", "judge", "--model", "m", "--records", "r.jsonl"], "unime.train.reranker_trainer.train_reranker",
     _reranker_result, "judge: 3 records, 6 examples, 2 steps, loss 0.7500 -> 0.5000\n{tmp}/trained/merged\n"),
    (["train", "reasoner", "--stage", "sft", "--model", "m", "--tcots", "t.jsonl"],
     "unime.embed_rl.reasoner_sft.train_reasoner_sft", lambda cfg: _SFT,
     "SFT: 6 examples, 2 steps, loss 0.7500 -> 0.5000; saved {tmp}/out\n"),
    (["train", "reasoner", "--stage", "grpo", "--model", "m", "--records", "r.jsonl", "--embedder", "e"],
     "unime.embed_rl.grpo.train_reasoner_grpo", lambda cfg: {"steps": 2, "reward_steps": [{"step": 1}]},
     '[{"step": 1}]\nGRPO: 2 steps; saved {tmp}/out (reward_log.csv, reward_curves.png, completions.jsonl)\n'),
], ids=["embedder", "reranker", "judge", "reasoner-sft", "reasoner-grpo"])
def test_a_trainers_summary_is_printed_by_the_first_process_of_a_launcher_only(
        argv, stub, result, summary, tmp_path, monkeypatch, capsys):
    """QA: an 8-GPU `torchrun ... unime train reranker` printed its `reranker: N records, ... loss X -> Y` and output
    path 8 times, once per process; the embedder trainer and the logging already spoke from the first one only."""
    monkeypatch.setattr(stub, result)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("adapter", "merged"):
        (tmp_path / "trained" / name).mkdir(parents=True)
    for rank, expected in (("1", ""), ("0", summary.replace("{tmp}", str(tmp_path)))):
        monkeypatch.setenv("RANK", rank)
        assert main([*argv, "--out", str(tmp_path / "out")]) == 0
        assert capsys.readouterr().out == expected, rank


@pytest.mark.parametrize("rank, log_level, shown", [
    ("0", "INFO", ["INFO i", "WARNING w", "ERROR e"]),
    ("1", "INFO", ["ERROR e"]),  # the other processes of a launcher: errors only
    ("1", "WARNING", ["ERROR e"]),
    ("1", "DEBUG", ["DEBUG d", "INFO i", "WARNING w", "ERROR e"]),  # debugging a group: every process's lines
    (None, "INFO", ["INFO i", "WARNING w", "ERROR e"]),  # no launcher
])
def test_under_a_launcher_info_and_warnings_are_logged_by_the_first_process_only(rank, log_level, shown):
    """QA: `resuming from ...` and `skipped 1 record(s)` were printed once per process under torchrun. (A new
    interpreter: the logging configuration of this one is pytest's.)"""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    if rank is not None:
        env.update(RANK=rank, WORLD_SIZE="2")
    code = ("import logging; from unime.cli import configure_logging; configure_logging(%r); "
            "log = logging.getLogger('unime.x'); log.debug('d'); log.info('i'); log.warning('w'); log.error('e')"
            % log_level)
    err = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stderr
    lines = [line.split() for line in err.splitlines()]  # DATE TIME LEVEL unime.x: MESSAGE
    assert [f"{level} {message}" for _, _, level, _, message in lines] == shown


@pytest.mark.parametrize("log_level, shown", [
    ("INFO", ["INFO unime.x: i", "WARNING faiss.loader: w"]),
    ("DEBUG", ["INFO faiss.loader: i", "INFO unime.x: i", "WARNING faiss.loader: w"]),
])
def test_other_libraries_log_from_warning_up(log_level, shown):
    """QA: every mine / index / search run printed faiss's loader lines at INFO ('Could not load library with AVX512
    support ...'). unime's own INFO lines stay; the other libraries' from WARNING up, all of them under DEBUG."""
    import subprocess

    code = ("import logging; from unime.cli import configure_logging; configure_logging(%r); "
            "logging.getLogger('faiss.loader').info('i'); logging.getLogger('unime.x').info('i'); "
            "logging.getLogger('faiss.loader').warning('w')" % log_level)
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    assert [" ".join(line.split()[2:]) for line in err.splitlines()] == shown
    faiss = subprocess.run([sys.executable, "-c", "from unime.cli import configure_logging; "
                            "configure_logging('INFO'); import faiss"], capture_output=True, text=True, check=True)
    assert "faiss.loader" not in faiss.stderr


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    import unime.cli.data as data_cli

    def broken(args):
        raise KeyError("a bug, not the user's doing")

    monkeypatch.setattr(data_cli, "_check", broken)
    with pytest.raises(KeyError):
        main(["data", "check", str(tmp_path / "x.jsonl")])


# -- config files ------------------------------------------------------------------------------------------
MINE = ["mine", "--records", "r.jsonl", "--embedder", "e", "--judge", "j", "--out", "o"]


def _cfg(tmp_path, text: str) -> str:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_config_values_go_through_the_options_types_and_choices(tmp_path):
    args = parse(MINE + ["--config", _cfg(tmp_path, "k: 7\nbeta: '0.5'\nfallback: drop\non-error: skip\n")])
    assert (args.k, args.beta, args.fallback, args.on_error) == (7, 0.5, "drop", "skip")
    args = parse(MINE + ["--k", "3", "--config", _cfg(tmp_path, "k: 7\n")])
    assert args.k == 3  # the command line wins


@pytest.mark.parametrize("text, fragment", [
    ("k: 4.7\n", "key 'k': expected int, got 4.7"),
    ("count: [1, 2]\n", "key 'count': expected a single value"),
    ("k: true\n", "key 'k': expected int, got True"),
    ("fallback: sometimes\n", "key 'fallback': 'sometimes' is not one of random, drop"),
    ("progress: maybe\n", "key 'progress': expected true or false"),
    ("frobnicate: 1\n", "unknown key for `unime mine`: 'frobnicate'"),
    ("- a\n- b\n", "must be a mapping"),
    ("k: [\n", "malformed YAML"),
])
def test_bad_config_values_are_refused_before_any_work(tmp_path, text, fragment, capsys):
    cfg = _cfg(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        parse(MINE + ["--config", cfg])
    assert str(e.value).startswith(cfg) and fragment in str(e.value)
    assert main(MINE + ["--config", cfg]) == 2
    assert _error_lines(capsys) == [f"unime: error: {e.value}"]


_TRAIN = ["train", "embedder", "--model", "m", "--records", "r", "--out", "o"]
_EVAL = ["eval", "--model", "m", "--tasks", "t", "--out", "o"]


# an unknown key of a --config file: (command, file, what the error says of it after "{path}: "), as an unknown
# option on the command line (`unime.cli.suggest_option`, test_usage_errors): the other commands that take it, the
# command's key of the same config field, else the closest by spelling, in the file's spelling (dashes or underscores)
@pytest.mark.parametrize("argv, text, said", [
    (_TRAIN, "batchsize: 8\n", "unknown key for `unime train embedder`: 'batchsize' (did you mean batch_size?)"),
    (_TRAIN, "batch-siz: 8\n", "unknown key for `unime train embedder`: 'batch-siz' (did you mean batch-size?)"),
    (_TRAIN, "batch_siz: 8\n", "unknown key for `unime train embedder`: 'batch_siz' (did you mean batch_size?)"),
    # a key without a separator takes the one of the file's other keys
    (_TRAIN, "in-batch: true\nbatchsize: 8\n",
     "unknown key for `unime train embedder`: 'batchsize' (did you mean batch-size?)"),
    (_TRAIN, "on_error: skip\nbatchsize: 8\n",
     "unknown key for `unime train embedder`: 'batchsize' (did you mean batch_size?)"),
    # another command's key: the command's key of the same config field (`only`), with its help
    (_EVAL, "only: [a]\n", "unknown key for `unime eval`: 'only' (an option of 'unime reason eval'; did you mean "
                           "task (evaluate only this task (repeatable))?)"),
    (["train", "judge"], "max_steps: 3\n", "unknown key for `unime train judge`: 'max_steps' (an option of 'unime "
     "eval reference' and 'unime train reasoner'; did you mean steps (optimizer steps (overrides --epochs when > "
     "0))?)"),
    (_TRAIN, "only: [a]\n", "unknown key for `unime train embedder`: 'only' (an option of 'unime reason eval')"),
    # a key no command has, nothing close: nothing suggested; several keys, each said
    (MINE, "frobnicate: 1\n", "unknown key for `unime mine`: 'frobnicate'"),
    (_TRAIN, "sed: 1\nfrobnicate: 1\nbatch-sise: 2\n", "unknown keys for `unime train embedder`: 'batch-sise' (did "
     "you mean batch-size?), 'frobnicate', 'sed' (did you mean seed?)"),
    # the options a config file does not set are not suggested, nor said to be other commands'
    (_TRAIN, "confi: x\nhepl: 1\n", "unknown keys for `unime train embedder`: 'confi', 'hepl'"),
])
def test_an_unknown_config_key_is_named_with_the_command_lines_suggestion(tmp_path, argv, text, said, capsys):
    cfg = _cfg(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        parse(argv + ["--config", cfg])
    assert str(e.value) == f"{cfg}: {said}"
    assert main(argv + ["--config", cfg, "--print-config"]) == 2
    assert _error_lines(capsys) == [f"unime: error: {cfg}: {said}"]


def test_flags_from_a_config_mean_what_they_say(tmp_path):
    base = ["train", "embedder", "--model", "m", "--records", "r.jsonl", "--out", "o"]
    for text, full in (('full: "false"\n', False), ("full: false\n", False), ("full: 'yes'\n", True),
                       ("full: true\n", True)):
        assert parse(base + ["--config", _cfg(tmp_path, text)]).full is full
    args = parse(base + ["--config", _cfg(tmp_path, "skip-bad-records: true\nin-batch: 'false'\n")])
    assert args.on_error == "skip" and args.in_batch is False
    assert parse(base + ["--config", _cfg(tmp_path, "resume: true\n")]).resume is True
    # the trainers take `--on-error skip` as the other commands do; `--skip-bad-records` says the same
    for command in (["train", "embedder"], ["train", "reranker"], ["train", "judge"]):
        line = command + base[2:]
        assert parse(line).on_error == "raise"
        assert parse(line + ["--on-error", "skip"]).on_error == parse(line + ["--skip-bad-records"]).on_error == "skip"
        assert parse(line + ["--config", _cfg(tmp_path, "on_error: skip\n")]).on_error == "skip"
        assert parse(line + ["--config", _cfg(tmp_path, "skip-bad-records: false\n")]).on_error == "raise"


# a line of each command that has `--on-error` (its required options given)
ON_ERROR_COMMANDS = {
    "mine": MINE[1:], "judge": ["--pairs", "p.jsonl", "--judge", "j", "--out", "o"],
    "eval": ["--model", "m", "--tasks", "t.yaml", "--out", "o"],
    "eval reference": ["--tasks", "t.yaml", "--records", "r.jsonl", "--out", "o"],
    "embed": ["--model", "m", "--items", "i.jsonl", "--out", "o.npy"],
    "index build": ["--model", "m", "--items", "i.jsonl", "--out", "o"],
    "train embedder": ["--model", "m", "--records", "r.jsonl", "--out", "o"],
    "train reranker": ["--model", "m", "--records", "r.jsonl", "--out", "o"],
    "train judge": ["--model", "m", "--records", "r.jsonl", "--out", "o"],
    "train reasoner": ["--stage", "sft", "--model", "m", "--tcots", "t.jsonl", "--out", "o"],
    "reason teacher": ["--world", "w", "--out", "o"],
    "reason eval": ["--embedder", "e", "--tasks", "t.yaml", "--out", "o"],
    "data import": ["--captions", "c.jsonl", "--images", "img", "--out", "o"],
    "data convert": ["in.jsonl", "out.jsonl"],
}


def test_every_command_with_on_error_takes_skip_bad_records_as_on_error_skip():
    """README: `--on-error skip` (or `--skip-bad-records`) in mine, train (also train reasoner), eval, judge, embed,
    index build, reason teacher, reason eval and data import — every command that has `--on-error` takes both (they
    were train embedder, reranker and judge only; the others refused `--skip-bad-records` as an unrecognized
    argument)."""
    import argparse

    def with_on_error(p, words=()):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    yield from with_on_error(sub, (*words, name))
            elif "--on-error" in a.option_strings:
                yield " ".join(words)

    assert sorted(with_on_error(build_parser())) == sorted(ON_ERROR_COMMANDS)
    for command, rest in ON_ERROR_COMMANDS.items():
        line = command.split() + rest
        assert parse(line).on_error == "raise", command
        assert parse(line + ["--skip-bad-records"]).on_error == parse(line + ["--on-error", "skip"]).on_error \
            == "skip", command


def test_key_value_options_from_a_config_as_a_list_or_a_mapping(tmp_path):
    """`trainer_arg` (`--trainer-arg KEY=VALUE`, repeatable) from YAML: a list of KEY=VALUE strings, or a mapping whose
    values keep their YAML types through the option's own parsing."""
    from unime.options import key_value_pairs

    base = ["train", "embedder", "--model", "m", "--records", "r.jsonl", "--out", "o"]
    args = parse(base + ["--config", _cfg(tmp_path, "trainer_arg: [adam_beta2=0.95, report_to=wandb]\n")])
    assert args.trainer_arg == ["adam_beta2=0.95", "report_to=wandb"]
    text = ("trainer-arg:\n  adam_beta2: 0.95\n  report_to: [wandb]\n  fsdp: full_shard auto_wrap\n"
            "  lr_scheduler_kwargs: {num_cycles: 2}\n  run_name: 'true'\n")
    args = parse(base + ["--config", _cfg(tmp_path, text)])
    assert key_value_pairs(args.trainer_arg, "--trainer-arg") == {
        "adam_beta2": 0.95, "report_to": ["wandb"], "fsdp": "full_shard auto_wrap",
        "lr_scheduler_kwargs": {"num_cycles": 2}, "run_name": "true"}
    args = parse(MINE + ["--config", _cfg(tmp_path, "vllm_engine_arg: {tensor_parallel_size: 8}\n")])
    assert args.vllm_engine_arg == ["tensor_parallel_size=8"]


def test_required_options_may_come_from_the_config(tmp_path):
    cfg = _cfg(tmp_path, "records: r.jsonl\nembedder: e\njudge: j\nout: o\n")
    args = parse(["mine", "--config", cfg])
    assert (args.records, args.embedder, args.judge, args.out) == ("r.jsonl", "e", "j", "o")
    with pytest.raises(SystemExit):  # still required when neither gives it
        parse(["mine", "--config", _cfg(tmp_path, "records: r.jsonl\n")])


def test_a_config_file_fills_the_configs_the_commands_build(tmp_path):
    """YAML keys (option names or dests) reach the config dataclasses the commands are generated from."""
    from unime.cli.dataclass_options import config_from_args
    from unime.eval.reference_config import ReferenceConfig, ReferenceRunOptions
    from unime.eval.runners import EvalConfig
    from unime.index.store import IndexBuildConfig
    from unime.mining.backends import BackendOptions
    from unime.mining.config import MineConfig

    args = parse(MINE + ["--config", _cfg(tmp_path, "chunk-size: 4\nprogress: true\nindex-storage: float16\n"
                                                    "vllm-engine-arg: [tensor_parallel_size=8]\nhnsw_m: 8\n")])
    cfg = config_from_args(MineConfig, args)
    assert (cfg.judge_chunk_size, cfg.show_progress, cfg.index_storage, cfg.hnsw_m) == (4, True, "float16", 8)
    assert config_from_args(BackendOptions, args).for_backend("vllm")["engine_kwargs"] == {"tensor_parallel_size": 8}
    args = parse(["eval", "--model", "m", "--out", "o", "--config",
                  _cfg(tmp_path, "tasks: t.yaml\ntask: [a, b]\ntopk: 3\ncompositional-mode: run\nno-cache: yes\n")])
    assert config_from_args(EvalConfig, args) == EvalConfig(model="m", tasks="t.yaml", out="o", only=["a", "b"],
                                                            rerank_topk=3, rerank_compositional="run", no_cache=True)
    args = parse(["index", "build", "--config", _cfg(tmp_path, "model: m\nitems: i.jsonl\nout: o\nnlist: 7\n")])
    assert config_from_args(IndexBuildConfig, args).index_config("ivf").nlist == 7
    args = parse(["eval", "reference", "--tasks", "t", "--records", "r", "--out", "o", "--config",
                  _cfg(tmp_path, "seconds: 5\nvideo-frames: 4\n")])
    assert config_from_args(ReferenceConfig, args, unset_is_none=True) == ReferenceConfig(seconds=5.0, video_frames=4)
    assert config_from_args(ReferenceConfig, parse(["eval", "reference", "--tasks", "t", "--records", "r", "--out",
                                                    "o"]), unset_is_none=True) == ReferenceConfig()
    assert config_from_args(ReferenceRunOptions, args).records == "r"


# -- output folders ----------------------------------------------------------------------------------------
def _argv(command: str, out: Path) -> list[str]:
    """A parseable command line of each command that writes an output folder."""
    extra = {
        "mine": ["--records", "r.jsonl", "--embedder", "e", "--judge", "j"],
        "eval": ["--model", "m", "--tasks", "t.yaml"],
        "demo": ["--fresh"],
        "train embedder": ["--model", "m", "--records", "r.jsonl"],
        "train reranker": ["--model", "m", "--records", "r.jsonl"],
        "train judge": ["--model", "m", "--records", "r.jsonl"],
        "train reasoner": ["--stage", "sft", "--model", "m", "--tcots", "t.jsonl"],  # a complete one: an
        # option refusal (--tcots missing) comes before the folder is claimed
        "models build-tiny": [],
        "reason add-emb": ["--model", "m"],
        "reason eval": ["--embedder", "e", "--tasks", "t.yaml"],
        "eval reference": ["--tasks", "t.yaml", "--records", "r.jsonl"],
        "reason split": ["--records", "r.jsonl", "--tcots", "t.jsonl", "--judge", "j"],
        "data synth": ["--size", "tiny"],
        "data import": ["--captions", "c.csv", "--images", "imgs"],
        "models pretrain": ["--preset", "quick"],
        "models pretrain-judge": ["--preset", "quick"],
        "index build": ["--model", "m", "--items", "i.jsonl"],
    }[command]
    return command.split() + extra + ["--out-dir" if command == "reason split" else "--out", str(out)]


@pytest.mark.parametrize("command", OWNED_OUTPUT_COMMANDS)
def test_a_user_file_in_an_existing_out_survives_every_command(tmp_path, command, capsys):
    out = tmp_path / "out"
    (out / "merged").mkdir(parents=True)
    (out / "README.md").write_text("my notes")
    (out / "merged" / "model.safetensors").write_bytes(b"my model")
    assert main(_argv(command, out)) == 2
    [line] = _error_lines(capsys)
    assert f"output folder {out} is not empty and was not written by unime" in line and "--overwrite" in line
    assert sorted(p.name for p in out.rglob("*")) == ["README.md", "merged", "model.safetensors"]
    assert (out / "README.md").read_text() == "my notes"


def test_index_build_never_writes_into_a_folder_that_is_not_an_index(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("my notes")
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"text": "a"}) + "\n")
    assert main(["index", "build", "--model", tiny_model_dir("qwen2_vl"), "--items", str(items), "--out", str(out),
                 "--device", "cpu", "--no-thumbnails"]) == 2
    [line] = _error_lines(capsys)
    assert f"output folder {out} is not empty and was not written by unime" in line and "--overwrite" in line
    assert sorted(p.name for p in out.iterdir()) == ["README.md"] and (out / "README.md").read_text() == "my notes"


def test_mine_never_deletes_a_judge_folder_it_did_not_write(tmp_path, capsys):
    """The demo keeps judge/ beside mined/; a user who mines into the folder holding the judge must not
    lose it (mining used to rmtree DIR/judge whenever its manifest was missing)."""
    run = tmp_path / "run"
    (run / "judge").mkdir(parents=True)
    (run / "judge" / "model.safetensors").write_bytes(b"the judge")
    records = tmp_path / "r.jsonl"
    records.write_text(json.dumps({"query": {"text": "q"}, "positive": {"text": "p"}}) + "\n")
    assert main(["mine", "--records", str(records), "--embedder", "e", "--judge", str(run / "judge"),
                 "--out", str(run)]) == 2
    assert "--overwrite" in _error_lines(capsys)[0]
    assert (run / "judge" / "model.safetensors").read_bytes() == b"the judge"


def test_demo_fresh_deletes_only_what_the_demo_wrote(tmp_path, monkeypatch, capsys, caplog):
    import logging

    import unime.demo.pipeline as demo

    runs: list[str] = []

    class FakeDemo:  # the stages themselves are not the point here
        def __init__(self, out, *a, **k):
            self.out = Path(out)

        def run(self):
            runs.append(str(self.out))
            (self.out / "stages").mkdir(exist_ok=True)
            (self.out / "report.md").write_text("r")
            return self.out / "report.md"

    monkeypatch.setattr(demo, "Demo", FakeDemo)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    (out / "stages" / "keep-me.txt").write_text("x")  # inside the demo's own folder, but no stage wrote it
    assert main(["demo", "--out", str(out), "--fresh"]) == 0
    assert (out / "stages" / "keep-me.txt").read_text() == "x" and (out / "report.md").is_file()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.csv").write_text("1,2")
    assert main(["demo", "--out", str(foreign), "--fresh"]) == 2
    assert (foreign / "data.csv").read_text() == "1,2" and not (foreign / MARKER_NAME).exists()
    assert len(runs) == 2
    (out / "NOTES.md").write_text("x")  # added after the demo made the folder: the user's, not the demo's
    (out / "mine").mkdir()
    (out / "mine" / "a.py").write_text("y")
    with caplog.at_level(logging.WARNING, logger="unime.outdir"):
        assert main(["demo", "--out", str(out), "--fresh"]) == 0
    assert (out / "NOTES.md").read_text() == "x" and (out / "mine" / "a.py").read_text() == "y"
    assert any("left as they were (not written by `unime demo`): NOTES.md, mine" in r.getMessage()
               for r in caplog.records)


def test_overwrite_is_the_way_to_write_into_a_foreign_folder(tmp_path, monkeypatch):
    import unime.demo.pipeline as demo

    class FakeDemo:
        def __init__(self, out, *a, **k):
            self.out = Path(out)

        def run(self):
            (self.out / "report.md").write_text("demo report")
            return self.out / "report.md"

    monkeypatch.setattr(demo, "Demo", FakeDemo)
    out = tmp_path / "mixed"
    out.mkdir()
    (out / "report.md").write_text("the user's report")
    (out / "data.csv").write_text("1,2")
    assert main(["demo", "--out", str(out), "--overwrite"]) == 0
    assert (out / "report.md").read_text() == "demo report" and (out / "data.csv").read_text() == "1,2"
    assert read_marker(out)["preexisting"] == ["data.csv", "report.md"]
    assert main(["demo", "--out", str(out), "--fresh"]) == 0  # fresh never deletes the user's entries
    assert (out / "data.csv").read_text() == "1,2"


def test_a_second_run_on_a_locked_out_fails_at_once_naming_the_pid(tmp_path, capsys):
    import os
    import subprocess
    import sys
    import textwrap

    out = tmp_path / "mined"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from unime.outdir import claim
        claim({str(out)!r}, "mine")
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")})
    try:
        assert holder.stdout.readline().strip() == "locked"
        records = tmp_path / "r.jsonl"
        records.write_text(json.dumps({"query": {"text": "q"}, "positive": {"text": "p"}}) + "\n")
        assert main(["mine", "--records", str(records), "--embedder", "e", "--judge", "j", "--out", str(out)]) == 2
        assert _error_lines(capsys) == [f"unime: error: output folder {out} is in use by another unime run "
                                        f"(pid {holder.pid}); wait for it to finish or choose another --out"]
    finally:
        holder.kill()
        holder.wait()


def _command_paths(parser, prefix=()):
    subs = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    if not subs:
        yield prefix
        return
    for name, sub in subs[0].choices.items():
        yield from _command_paths(sub, (*prefix, name))


@pytest.mark.parametrize("command", sorted(" ".join(p) for p in _command_paths(build_parser())))
def test_help_shows_each_options_own_default(command, capsys):
    # the parse that finds which options the command line sets swaps every default for a marker object;
    # `--help` must print the command's defaults, never that marker
    with pytest.raises(SystemExit) as done:
        main([*command.split(), "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: unime " + command)
    assert "object object at" not in out
    if command == "train embedder":
        assert "temperature (default 0.02)" in out


def test_help_after_a_double_dash_is_an_argument_not_a_request_for_help():
    with pytest.raises(SystemExit) as done:  # argparse refuses the stray word; no help printed
        _parse(build_parser(), ["eval", "--", "--help"])
    assert done.value.code == 2


def test_the_command_line_parses_without_importing_the_model_libraries():
    # `unime --help` and every command's parser come from the config dataclasses alone: importing torch and
    # transformers' Trainer costs seconds on each call, so only the chosen stage function may import them
    import subprocess
    import sys

    code = ("import sys; from unime.cli import build_parser; build_parser(); "
            "print(','.join(m for m in ('torch', 'transformers', 'peft', 'trl', 'faiss') if m in sys.modules))")
    import os

    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert done.stdout.strip() == ""


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    """QA: `unime ... | head` printed `unime: error: Broken pipe`. Standard output whose reader has gone ends the
    command with 141 (128 + SIGPIPE) and nothing on stderr, as a shell tool does."""
    import subprocess
    import sys

    script = f"""
import os, sys
r, w = os.pipe()
os.close(r)
os.dup2(w, 1)  # standard output: a pipe whose reader is gone
import unime.cli.demo as demo_cli
def noisy(args):
    for _ in range(10000):
        print("x" * 100)
    return 0
demo_cli._demo = noisy
from unime.cli import main
os.write(2, f"rc {{main(['demo', '--out', {str(tmp_path / 'o')!r}])}}".encode())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.stderr.strip().splitlines()[-1] == "rc 141" and "error" not in done.stderr


@pytest.mark.parametrize("argv, hint", [
    (["train", "judge", "--model", "m", "--records", "r.jsonl", "--out", "j"], "; re-run the same command to resume"),
    (["mine", "--records", "r.jsonl", "--embedder", "e", "--judge", "j", "--out", "o"],
     "; re-run the same command to resume"),
    (["judge", "--pairs", "p.jsonl", "--judge", "j", "--out", "s.jsonl"], "; re-run the same command to resume"),
    (["embed", "--model", "m", "--items", "i.jsonl", "--out", "x.npy"], "; re-run the same command to resume"),
    (["reason", "generate", "--model", "m", "--records", "r.jsonl", "--out", "t.jsonl"],
     "; re-run the same command to resume"),
    (["data", "check", "r.jsonl"], ""),  # nothing to resume
])
def test_ctrl_c_says_how_to_resume_a_command_that_resumes(argv, hint, monkeypatch, capsys):
    import unime.cli
    from unime.cli import failures

    def interrupted(args, command):
        raise KeyboardInterrupt

    monkeypatch.setattr(unime.cli, "_claim_output", interrupted)
    assert main(argv) == failures.EXIT_INTERRUPTED
    assert capsys.readouterr().err.splitlines()[-1] == f"unime: interrupted{hint}"
