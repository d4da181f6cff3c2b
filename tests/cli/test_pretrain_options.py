"""`unime models pretrain` / `pretrain-judge`: their recipe overrides (`--FIELD`, `--judge-FIELD`, default None =
the preset's value) are generated from the recipe dataclasses. Every argparse action of both commands is
pinned as it was hand-written (`tests/cli/pretrain_options_pinned.json`: flags, dest, default, type, choices,
help, metavar, group), and so are the recipes' cache keys and how the overrides reach the recipes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

PINNED = Path(__file__).parent / "pretrain_options_pinned.json"
COMMANDS = ("models pretrain", "models pretrain-judge")


def _group_titles(sub: argparse.ArgumentParser) -> dict[int, str | None]:
    return {id(a): g.title for g in sub._action_groups for a in g._group_actions}


def _shown_metavar(a: argparse.Action) -> str | None:
    """The metavar `--help` shows: argparse's default for a value option is its dest in capitals (the
    hand-written `--hidden` said `metavar="HIDDEN"`, the generated one leaves it to argparse)."""
    takes_value = a.option_strings and a.nargs != 0 and not a.choices  # choices are shown as {a,b}
    return a.metavar if a.metavar is not None or not takes_value else a.dest.upper()


def dump_actions() -> dict[str, list[dict]]:
    """Every action of both commands, in parser order, as JSON-ready rows."""
    from unime.cli import _add_overwrite_options, _command_path, build_parser

    parser = build_parser()
    _add_overwrite_options(parser)
    out = {}
    for command in COMMANDS:
        sub = _command_path(parser, command.split())[1]
        groups = _group_titles(sub)
        out[command] = [{
            "flags": list(a.option_strings), "dest": a.dest, "default": repr(a.default),
            "type": getattr(a.type, "__name__", repr(a.type)), "choices": a.choices and list(a.choices),
            "help": a.help, "metavar": _shown_metavar(a), "nargs": a.nargs, "action": type(a).__name__,
            "required": a.required, "group": groups.get(id(a))} for a in sub._actions]
    return out


def test_every_action_of_both_commands_is_as_pinned():
    assert dump_actions() == json.loads(PINNED.read_text(encoding="utf-8"))


def test_the_help_of_both_commands_is_as_pinned(monkeypatch):
    """The rendered `--help` (at a fixed width), which also covers the order of the options in their groups."""
    from unime.cli import _add_overwrite_options, _command_path, build_parser

    monkeypatch.setenv("COLUMNS", "100")
    parser = build_parser()
    _add_overwrite_options(parser)
    pinned = json.loads((PINNED.parent / "pretrain_help_pinned.json").read_text(encoding="utf-8"))
    assert {c: _command_path(parser, c.split())[1].format_help() for c in COMMANDS} == pinned


def test_the_recipes_cache_keys_are_unchanged():
    """The cache folder names of the pretrained base and judge (a changed key would retrain on every machine)."""
    from unime.demo.pretrain import JudgePretrainRecipe, PretrainRecipe

    assert PretrainRecipe().key() == "fef3def7be0d0da0"  # the captioning stage became the default (issue #13)
    assert JudgePretrainRecipe().key("x") == "90816129e2054209"  # judge steps 4000 → 8000 (issue #13)
    # the default preset's contrastive stage on the corpus's caption datasets only (issue #13)
    assert PretrainRecipe.preset("default").key() == "bb68263762bd4680"
    assert PretrainRecipe.preset("default") == PretrainRecipe(contrastive_datasets="i2t,t2i")
    assert PretrainRecipe.preset("quick").key() == "35c364b04dac1684"
    assert JudgePretrainRecipe.preset("quick").key("x") == "0fd480e9d9d2b688"


@pytest.fixture()
def calls(monkeypatch):
    """The recipes the two commands hand to the stage functions (nothing trains)."""
    import unime.demo.pretrain as P

    seen = []

    class _Done:
        model = "MODEL"

    monkeypatch.setattr(P, "pretrain", lambda recipe, **where: seen.append((recipe, where)) or _Done())
    monkeypatch.setattr(P, "pretrain_judge", lambda judge, base, **where: seen.append((judge, base, where)) or _Done())
    return seen


def test_the_overrides_change_only_the_named_fields_of_the_preset(calls, capsys):
    from unime.cli import main
    from unime.demo.pretrain import JudgePretrainRecipe, PretrainRecipe

    assert main(["models", "pretrain", "--preset", "quick", "--steps", "7", "--lr", "0.5", "--family", "qwen3_vl",
                 "--device", "cpu", "--attn-implementation", "eager"]) == 0
    assert main(["models", "pretrain-judge", "--preset", "quick", "--judge-steps", "9", "--judge-holdout", "0.25",
                 "--judge-video-clips", "0"]) == 0
    assert main(["models", "pretrain"]) == 0
    # the judge of a base other than the preset's: the base's overrides as in `models pretrain`, beside --judge-*
    assert main(["models", "pretrain-judge", "--layers", "8", "--seed", "3", "--judge-seed", "5"]) == 0
    assert capsys.readouterr().out == "MODEL\nMODEL\nMODEL\nMODEL\n"
    (base, where), (judge, judge_base, _), (default, _), (judge8, base8, _) = calls
    assert base == PretrainRecipe.preset("quick").replace(steps=7, lr=0.5, family="qwen3_vl")
    assert where == {"out": None, "exclude_world": None, "device": "cpu", "attn_implementation": "eager",
                     "overwrite": False}
    assert judge == JudgePretrainRecipe.preset("quick").replace(steps=9, holdout=0.25, video_clips=0)
    assert judge_base == PretrainRecipe.preset("quick")
    assert default == PretrainRecipe.preset("default")
    assert base8 == PretrainRecipe.preset("default").replace(layers=8, seed=3)
    assert judge8 == JudgePretrainRecipe.preset("default").replace(seed=5)


def test_overwrite_reaches_the_stage_functions(calls, tmp_path):
    """--overwrite lets the stage discard an interrupted run of another recipe into --out (its work folder)."""
    from unime.cli import main

    for command in ("pretrain", "pretrain-judge"):
        assert main(["models", command, "--preset", "quick", "--out", str(tmp_path / command), "--overwrite"]) == 0
    assert [c[-1]["overwrite"] for c in calls] == [True, True]


def test_an_empty_contrastive_datasets_option_trains_on_all_datasets(calls):
    """The default preset keeps to i2t,t2i; `--contrastive-datasets ""` is the recipe of every dataset."""
    from unime.cli import main
    from unime.demo.pretrain import PretrainRecipe

    assert main(["models", "pretrain", "--contrastive-datasets", ""]) == 0
    assert main(["models", "pretrain"]) == 0
    (everything, _), (default, _) = calls
    assert everything == PretrainRecipe() and everything.contrastive_subset() is None
    assert default.contrastive_subset() == {"i2t", "t2i"}


def test_under_torchrun_both_pretrainings_are_refused_before_any_work(calls, capsys, monkeypatch):
    from unime.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    for command in ("pretrain", "pretrain-judge"):
        assert main(["models", command, "--preset", "quick"]) == 2
        err = capsys.readouterr().err
        assert f"models {command}" in err and "runs as one process" in err and "(2 processes)" in err
    assert calls == []  # neither pretraining started
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert main(["models", "pretrain", "--preset", "quick"]) == 0


def test_print_config_shows_the_presets_values_of_the_options_left_unset(capsys):
    """QA: `--print-config` printed None for every recipe option (None = the preset's value)."""
    from unime.cli import main
    from unime.demo.pretrain import JudgePretrainRecipe, PretrainRecipe

    assert main(["models", "pretrain", "--print-config", "--lr", "0.002"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    base = PretrainRecipe.preset("default")
    assert rows["steps"].split("#")[0].split()[1] == repr(base.steps) and rows["steps"].endswith("# preset default")
    assert rows["lr"].split()[1] == "0.002" and rows["lr"].endswith("# command line")
    assert main(["models", "pretrain-judge", "--print-config", "--preset", "quick"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    quick = JudgePretrainRecipe.preset("quick")
    assert rows["judge-steps"].split()[1] == repr(quick.steps) and rows["judge-steps"].endswith("# preset quick")
