"""Every command's `--dtype` is the same option: one declaration of its spellings (the short names fp32 / bf16 /
fp16 with torch's float32 / bfloat16 / float16 as aliases, and auto), checked when the command line (or a
--config file) is parsed, as one usage line, with a help listing what it accepts. Commands with a `--dtype` are
found by walking the parser, so a new one is checked too."""

from __future__ import annotations

import argparse

import pytest

ALL = ["auto", "fp32", "float32", "bf16", "bfloat16", "fp16", "float16"]
# `train embedder` trains in bf16 autocast or fp32 only (no fp16 loss scaling): the same spellings but fp16's
ACCEPTED = {"train embedder": ["auto", "fp32", "float32", "bf16", "bfloat16"]}


def _dtype_commands() -> dict[str, argparse.ArgumentParser]:
    from unime.cli import _add_overwrite_options, build_parser

    parser = build_parser()
    _add_overwrite_options(parser)
    out = {}

    def walk(p: argparse.ArgumentParser, words: list[str]) -> None:
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    walk(sub, [*words, name])
            elif "--dtype" in a.option_strings:
                out[" ".join(words)] = p

    walk(parser, [])
    return out


COMMANDS = _dtype_commands()


def _dtype_action(sub: argparse.ArgumentParser) -> argparse.Action:
    return next(a for a in sub._actions if "--dtype" in a.option_strings)


def test_the_commands_with_a_dtype_are_found():
    assert {"embed", "eval", "index build", "search", "mine", "judge", "serve", "train embedder", "train reranker",
            "train judge", "train reasoner", "reason generate", "reason split", "reason eval",
            "reason add-emb"} <= set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_dtype_takes_the_short_and_long_names_and_refuses_another_at_parse_time(command, capsys):
    sub = COMMANDS[command]
    action = _dtype_action(sub)
    accepted = ACCEPTED.get(command, ALL)
    assert list(action.choices) == accepted
    for value in accepted:  # each spelling parses, kept as given (what resolve_dtype and the records read)
        ns = argparse.Namespace()
        action(sub, ns, value, "--dtype")
        assert ns.dtype == value
    with pytest.raises(SystemExit) as stop:
        sub.parse_known_args(["--dtype", "fp8"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.splitlines()
    quoted = ", ".join(repr(v) for v in accepted)
    assert err[-1].endswith(f"error: argument --dtype: invalid choice: 'fp8' (choose from {quoted})"), err
    assert sum(": error: " in line for line in err) == 1


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_dtype_help_lists_what_it_accepts(command):
    action = _dtype_action(COMMANDS[command])
    assert action.metavar == "DTYPE"
    names = ["fp32", "bf16"] + ([] if command == "train embedder" else ["fp16"])
    long = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
    assert "auto (" in action.help
    for name in names:
        assert f"{name} (= {long[name]})" in action.help, action.help
    if command == "train embedder":
        assert "fp16" not in action.help


def test_a_long_name_runs_as_its_short_name_and_a_config_file_is_checked_too(tmp_path, capsys):
    """`--dtype bfloat16` is `--dtype bf16` (the same torch dtype); an unknown one in a --config file is its one
    line naming the file and key, before anything runs."""
    import torch

    from unime.cli import main
    from unime.models.loading import resolve_dtype

    for short, long, expected in (("fp32", "float32", torch.float32), ("bf16", "bfloat16", torch.bfloat16),
                                  ("fp16", "float16", torch.float16)):
        assert resolve_dtype(short, "cpu") is resolve_dtype(long, "cpu") is expected
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dtype: fp8\n", encoding="utf-8")
    out = tmp_path / "emb"
    assert main(["reason", "add-emb", "--model", "m", "--out", str(out), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"unime: error: {cfg}: key 'dtype': 'fp8' is not one of {', '.join(ALL)}"]
    assert not out.exists()
