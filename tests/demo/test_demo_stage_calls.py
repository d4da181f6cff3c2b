"""The demo runs its stages through the stage functions (`unime.demo.stage_calls`), not the command line:
every call it makes must be the call `unime` makes from the command the demo lists in its report. Each
stage function is replaced by a recorder; the demo's calls (quick and default settings, with the oracle
and Embed-RL groups) are then made both ways and the bound arguments compared (values and types)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import shlex
import shutil

import pytest

from unime.cli import main
from unime.demo.pipeline import Demo
from unime.demo.run import DemoSettings
from unime.demo.stage_calls import command_line, run_stage_command
from unime.demo.video_rows import VIDEO_TASKS_FILE

STAGE_FUNCTIONS = [
    ("unime.data.synth.generate", "generate_world"), ("unime.eval.reference", "evaluate_reference"),
    ("unime.models.tiny", "build_tiny"), ("unime.train.reranker_trainer", "train_reranker"),
    ("unime.train.embedder_trainer", "train_embedder"), ("unime.mining.pipeline", "run_mining"),
    ("unime.eval.runners", "evaluate_checkpoint"), ("unime.reasoning.teacher", "write_teacher_tcots"),
    ("unime.embed_rl.tcot_embedder", "split_records_file"),
    ("unime.embed_rl.tcot_embedder", "materialize_records_file"),
    ("unime.embed_rl.tcot_embedder", "prepare_emb_checkpoint"),
    ("unime.embed_rl.reasoner_sft", "train_reasoner_sft"), ("unime.embed_rl.grpo", "train_reasoner_grpo"),
    ("unime.embed_rl.tcot_embedder", "evaluate_with_reasoning"),
]
# stages that run no command (python steps of the demo, or reading an output a skipped command would write)
NOT_COMMANDS = {"models", "judge-data", "er-judge-data", "report"}


class Called(Exception):
    def __init__(self, name: str, arguments: dict):
        super().__init__(name)
        self.name, self.arguments = name, arguments


@pytest.fixture
def recorded_stage_functions(monkeypatch):
    for module, name in STAGE_FUNCTIONS:
        mod = importlib.import_module(module)
        original = getattr(mod, name)

        def record(*args, __name=f"{module}.{name}", __sig=inspect.signature(original), **kwargs):
            bound = __sig.bind(*args, **kwargs)
            bound.apply_defaults()
            raise Called(__name, dict(bound.arguments))
        monkeypatch.setattr(mod, name, record)


def _demo_commands(tmp_path, world_dir, settings: DemoSettings, monkeypatch) -> list[tuple[str, dict]]:
    """(command, options) of every command stage `Demo.run` goes through, none of them run."""
    out = tmp_path / "demo"
    shutil.copytree(world_dir, out / "world")  # the Embed-RL teacher stage reads the world's records first
    (out / "world" / VIDEO_TASKS_FILE).write_text("")  # the eval stage adds the video evals when this exists
    (out / "eval" / "video").mkdir(parents=True)  # where they record their time
    calls = []
    monkeypatch.setattr(Demo, "run_command", lambda self, command, options, c: calls.append((command, options)))
    monkeypatch.setattr(Demo, "check_judge", lambda self, mined: None)
    monkeypatch.setattr(Demo, "stage", lambda self, name, done, body, writes=(): None if name in NOT_COMMANDS
                        else body([]))
    Demo(out, settings, progress=lambda m: None, embed_rl=True, oracle_judge=True,
         timings=tmp_path / "times.json").run()
    monkeypatch.undo()
    return calls


def _call(fn) -> Called:
    with pytest.raises(Called) as info:
        fn()
    return info.value


@pytest.mark.parametrize("preset", ["quick", "default"])
def test_each_demo_stage_call_is_the_call_of_the_command_it_lists(preset, tmp_path, tiny_world_dir, monkeypatch,
                                                                  request):
    calls = _demo_commands(tmp_path, tiny_world_dir(0), DemoSettings.preset(preset), monkeypatch)
    request.getfixturevalue("recorded_stage_functions")
    # the demo's models are not built here: the commands would refuse their missing folders before the call
    for module in ("unime.models.loading", "unime.train.embedder_config"):
        monkeypatch.setattr(f"{module}.refuse_missing_local_model", lambda *a, **k: None)
    assert {c for c, _ in calls} == {"data synth", "eval reference", "train judge", "train embedder", "mine",
                                     "train reranker", "eval", "reason add-emb", "reason teacher",
                                     "reason split", "reason materialize", "train reasoner", "reason eval"}
    if preset == "quick":
        assert any(c == "eval" and "--video-frames" in o for c, o in calls)  # the video evals are among them
    for command, options in calls:
        line = command_line(command, options)
        by_demo = _call(lambda: run_stage_command(command, options))
        by_cli = _call(lambda: main(shlex.split(line)[1:]))
        assert by_demo.name == by_cli.name, line
        assert _differences(by_demo.arguments, by_cli.arguments) == [], line


def _differences(demo: dict, cli: dict) -> list[str]:
    """(name, demo's value, command line's value) of each argument or config field that differs in value or
    type (a Path where the command line passes a str, an int for a float)."""
    out = []
    for name in sorted(set(demo) | set(cli)):
        a, b = demo.get(name), cli.get(name)
        if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b) and type(a) is type(b):
            out += [f"{name}.{k}" for k in _differences(vars(a), vars(b))]
        elif a != b or repr(a) != repr(b):
            out.append(f"{name}: demo {a!r}, command line {b!r}")
    return out


def test_the_command_line_lists_options_in_order_with_bare_flags():
    assert command_line("train embedder", {"--model": "a b", "--full": True, "--steps": 3}) == \
        "unime train embedder --model 'a b' --full --steps 3"
    with pytest.raises(ValueError):
        command_line("eval", {"--rerank": None})


def test_an_option_the_stage_call_does_not_read_is_refused(recorded_stage_functions, tmp_path):
    from unime.errors import UnimeError

    with pytest.raises(UnimeError, match="--no-such-option"):
        run_stage_command("reason materialize", {"--records": "r", "--tcots": "t", "--out": str(tmp_path / "o"),
                                                 "--no-such-option": 1})


EMBED_RL_READERS = {"reason teacher", "reason split", "reason materialize", "train reasoner", "reason eval"}


@pytest.mark.parametrize("preset", ["quick", "default"])
def test_the_embed_rl_stages_sample_clips_as_the_demo_mines_them(preset, tmp_path, tiny_world_dir, monkeypatch):
    """The demo passed no `--video-*` options to its Embed-RL stages: the teacher, the split, materialize, the
    reasoner's SFT and GRPO and `reason eval` sampled clips with the default 8 frames whatever the demo's
    `video_frames` (consistent only at the default). Each now gets the demo's sampling, the one its mining gets."""
    settings = dataclasses.replace(DemoSettings.preset(preset), video_frames=4)
    calls = _demo_commands(tmp_path, tiny_world_dir(0), settings, monkeypatch)
    mine = [o for c, o in calls if c == "mine"]
    assert mine and mine[0]["--video-frames"] == 4
    embed_rl = [(c, o) for c, o in calls if c in EMBED_RL_READERS]
    assert {c for c, _ in embed_rl} == EMBED_RL_READERS and len(embed_rl) >= 10  # 2 materialize, 2 reasoner, 5 evals
    assert [(c, o.get("--video-frames")) for c, o in embed_rl] == [(c, 4) for c, _ in embed_rl]
