"""Recipes (`--recipe NAME`): every recipe resolves, through the real parsers, to the values of its table
in docs/RECIPES.md; the layering recipe < --config < command line; `--print-config` names each origin."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from unime.cli import _apply_config, build_parser, main, resolved_config
from unime.cli.recipes import list_recipes, load_recipe, recipes_markdown

DOCS = Path(__file__).resolve().parents[2] / "docs" / "RECIPES.md"
README = DOCS.parents[1] / "README.md"
EXPECTED_RECIPES = {"unime-v2/qwen2-vl-2b", "unime-v2/qwen2-vl-7b", "unime-v2/reranker-qwen2.5-vl-7b",
                    "unime-v2/judge-qwen2.5-vl-7b", "embed-rl/qwen3-vl-4b", "embed-rl/qwen3-vl-2b"}


def _doc_tables() -> dict[tuple[str, str], dict[str, str]]:
    """(recipe, command) -> {option: value as written} parsed from docs/RECIPES.md."""
    tables: dict[tuple[str, str], dict[str, str]] = {}
    current = None
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        m = re.fullmatch(r"`unime (.+) --recipe (\S+)`", line.strip())
        if m:
            current = (m.group(2), m.group(1))
            tables[current] = {}
            continue
        m = re.fullmatch(r"\| `--([a-z0-9-]+)` \| (.*?) \| .* \|", line.strip())
        if m and current:
            tables[current][m.group(1)] = m.group(2)
    return tables


def _as_text(v) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def test_the_docs_table_is_generated_from_the_recipe_files():
    assert DOCS.read_text(encoding="utf-8") == recipes_markdown()
    assert EXPECTED_RECIPES <= set(list_recipes())


@pytest.mark.parametrize("name", sorted(EXPECTED_RECIPES))
def test_every_recipe_resolves_to_its_table(name):
    tables = _doc_tables()
    recipe = load_recipe(name)
    assert recipe.commands
    for command in recipe.commands:
        table = tables[(name, command)]
        args = _apply_config(build_parser(), [*command.split(), "--recipe", name, "--print-config"])
        rows = {opt: (value, origin) for opt, value, origin in resolved_config(args)}
        assert set(table) == {k.replace("_", "-") for k in recipe.commands[command]}
        for opt, written in table.items():
            value, origin = rows[opt]
            # the parsed value is the table's value (numbers compared as numbers)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert float(value) == float(written), (name, command, opt)
            else:
                assert _as_text(value) == written, (name, command, opt)
            assert origin.startswith(f"recipe {name}: "), (opt, origin)


def _readme_commands(prefix: str) -> list[list[str]]:
    """The README's shell commands starting with `prefix` (continuation lines joined, comments dropped), as argv."""
    commands, pending = [], ""
    for line in README.read_text(encoding="utf-8").splitlines():
        line = (pending + " " + line.strip()) if pending else line
        pending = ""
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1]
            continue
        if line.startswith(prefix):
            commands.append(shlex.split(line, comments=True)[1:])
    return commands


def test_the_readme_tcot_embedder_command_trains_the_embed_rl_loss():
    """QA: the README's T-CoT embedder command (`unime train embedder ... --pooling emb`) trained one-directional
    InfoNCE (`--print-config`: symmetric False), while SPEC 2.1, the release, the embed-rl recipes and the demo train
    symmetric InfoNCE (query->target and target->query). It gives `--symmetric`; tau and pooling are the paper's."""
    commands = [argv for argv in _readme_commands("unime train embedder")
                if "--pooling" in argv and argv[argv.index("--pooling") + 1] == "emb"]
    assert commands, "the README shows the T-CoT embedder command"
    recipe = load_recipe("embed-rl/qwen3-vl-2b").options("train embedder")
    for argv in commands:
        args = _apply_config(build_parser(), [*argv, "--print-config"])
        rows = {opt: value for opt, value, _ in resolved_config(args)}
        assert (rows["symmetric"], rows["tau"], rows["pooling"]) == (True, 0.02, "emb"), argv  # SPEC 2.1
        assert [rows[k] for k in ("symmetric", "tau", "pooling")] == \
            [recipe[k].value for k in ("symmetric", "tau", "pooling")]


def test_the_readme_shows_how_to_get_the_match_judge():
    """QA: the README's Embed-RL block gives `reason split --judge match-judge` (and GRPO's `--process-judge
    match-judge`) with no documented way to make one (the only builder is demo code reading the world's ground
    truth). The README shows `unime train judge ... --out match-judge` and a base model from the hub as a zero-shot
    judge; every such command parses."""
    splits = _readme_commands("unime reason split")
    judges_made = [argv for argv in _readme_commands("unime train judge") if "match-judge" in argv]
    given = {argv[argv.index("--judge") + 1] for argv in splits}
    made = {argv[argv.index("--out") + 1] for argv in judges_made}
    assert "match-judge" in given & made
    assert any(re.fullmatch(r"[\w.-]+/[\w.-]+-Instruct", judge) for judge in given - made)  # a hub id, zero-shot
    for argv in splits + judges_made:
        _apply_config(build_parser(), argv)


def test_the_unime_v2_2b_recipe_is_the_paper_setting():
    """Independent of the files: the values SPEC 1.5 lists for Qwen2-VL-2B."""
    args = _apply_config(build_parser(), ["train", "embedder", "--recipe", "unime-v2/qwen2-vl-2b",
                                           "--records", "r.jsonl", "--out", "o"])
    paper = dict(model="Qwen/Qwen2-VL-2B-Instruct", loss="symmetric_kl", hard_negatives=8, tau=0.02, lora_r=16,
                 lora_alpha=64, lora_dropout=0.1, dora=True, lr=1e-4, lr_scheduler="linear", warmup=200, steps=2000,
                 dtype="bf16", gradcache=True, chunk_size=2, global_batch=1024, image_size=672)
    assert {k: getattr(args, k) for k in paper} == paper
    from unime.cli.train import embedder_config_from_args

    cfg = embedder_config_from_args(args)
    assert (cfg.global_batch, cfg.image_size, cfg.warmup, cfg.steps) == (1024, 672, 200, 2000)
    args = _apply_config(build_parser(), ["train", "reranker", "--recipe", "unime-v2/reranker-qwen2.5-vl-7b",
                                           "--records", "r.jsonl", "--out", "o"])
    assert (args.lora_r, args.losses, args.model) == (128, "pair,list", "Qwen/Qwen2.5-VL-7B-Instruct")


def test_the_reranker_recipe_trains_as_the_release_script(tmp_path):
    """Independent of the files: SPEC 1.6 gives LoRA r=128; the release script (Rerank/scripts/train_qwen25VL_7B.sh
    of GaryGuTC/UniME-v2) LORA_ALPHA 256, lr 2e-5, cosine, warmup ratio 0.03, global batch 32 = 1 per device x 4
    accumulation x 8 GPUs. QA: the recipe left unime's defaults (alpha 32, lr 1e-4, linear, no warm-up, batch 4)."""
    from unime.cli.train_reranker import config_from_args
    from unime.train.reranker_trainer import _training_arguments

    args = _apply_config(build_parser(), ["train", "reranker", "--recipe", "unime-v2/reranker-qwen2.5-vl-7b",
                                          "--records", "r.jsonl", "--out", str(tmp_path / "o"), "--device", "cpu",
                                          "--dtype", "fp32"])
    cfg = config_from_args(args)
    assert (cfg.lora_r, cfg.lora_alpha) == (128, 256)
    hf = _training_arguments(cfg, tmp_path / "o" / "checkpoints")
    schedule = str(getattr(hf.lr_scheduler_type, "value", hf.lr_scheduler_type))
    assert (hf.learning_rate, schedule, hf.get_warmup_steps(1000)) == (2e-5, "cosine", 30)
    assert hf.per_device_train_batch_size * hf.gradient_accumulation_steps * 8 == 32


@pytest.mark.parametrize("name", ["embed-rl/qwen3-vl-2b", "embed-rl/qwen3-vl-4b"])
def test_the_embed_rl_recipes_train_grpo_as_the_release(name, tmp_path):
    """Independent of the files: the release's GRPO config (vlm2vec_grpo.yaml: lr_scheduler_type constant,
    max_response_length 2048, verl's default loss_agg_mode token-mean, which is TRL's dapo: one mean over the tokens
    of the batch) reaches TRL's GRPOConfig. QA: the recipes left unime's defaults (a linear decay, per-sequence
    means, unime's shorter completions)."""
    pytest.importorskip("trl")
    from unime.embed_rl.grpo import GRPOStageConfig, embed_rl_grpo_config

    args = _apply_config(build_parser(), ["train", "reasoner", "--stage", "grpo", "--recipe", name, "--model", "m",
                                          "--records", "r", "--embedder", "e", "--out", str(tmp_path / "o")])
    cfg = GRPOStageConfig(model="m", records="r", embedder="e", out=str(tmp_path / "o"),
                          lr_scheduler=args.lr_scheduler, loss_type=args.loss_type,
                          max_completion_length=args.max_completion_length)
    grpo = embed_rl_grpo_config(cfg, output_dir=str(tmp_path / "o"), use_cpu=True, bf16=False, fp16=False)
    schedule = str(getattr(grpo.lr_scheduler_type, "value", grpo.lr_scheduler_type))
    assert (schedule, grpo.loss_type, grpo.max_completion_length) == ("constant", "dapo", 2048)


@pytest.mark.parametrize("name", ["embed-rl/qwen3-vl-2b", "embed-rl/qwen3-vl-4b"])
def test_the_embed_rl_recipes_size_the_embedders_images_as_the_release(name):
    """Independent of the files: the release's Embedder reads images and evidence crops at 128x32x32 .. 768x32x32
    pixels and video at total_pixels 300x32x32 x 8 frames (its contrastive data, embedder_actor_api.py); QA: the
    recipes left the processor's own bounds (Qwen3-VL: up to 16,777,216 pixels an image)."""
    from unime.cli.train import embedder_config_from_args

    args = _apply_config(build_parser(), ["train", "embedder", "--recipe", name, "--model", "m", "--records", "r",
                                          "--out", "o"])
    cfg = embedder_config_from_args(args)
    assert (cfg.min_pixels, cfg.max_pixels, cfg.video_max_pixels) == (128 * 32 * 32, 768 * 32 * 32,
                                                                      300 * 32 * 32 * 8)


@pytest.mark.parametrize("name", ["embed-rl/qwen3-vl-2b", "embed-rl/qwen3-vl-4b"])
@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_the_embed_rl_recipes_size_the_reasoners_images_as_the_release(name, stage, capsys):
    """Independent of the files: the release's reasoner reads its images at 128x32x32 .. 768x32x32 pixels and video
    frames at 300x32x32, 8 of them (its GRPO data, vlm2vec_dataset.py), the Embedder's bounds. QA: the recipes' note
    told the user to give `train reasoner` those bounds but the recipes did not set them, so the reasoner's stages
    ran (and `unime plan` planned them) at the processor's own bounds (Qwen3-VL: up to 16,777,216 pixels an image).
    Both stages' configs now carry them, and the plan of either reasoner stage reads them: a 1280x720 photo under
    131072..786432 pixels is scaled by sqrt(1280 x 720 / 786432) to 1152x640 (multiples of Qwen3-VL's 32-pixel merged
    patch), 36 x 20 = 720 visual tokens (at the processor's bounds 1280x704: 880)."""
    from unime.cli.train_reasoner import _stage_config
    from unime.data.video import VideoSampling
    from unime.models.image_budget import ImageBudget

    argv = ["train", "reasoner", "--stage", stage, "--recipe", name, "--model", "m", "--out", "o",
            *(["--tcots", "t.jsonl"] if stage == "sft" else ["--records", "r", "--embedder", "e"])]
    cfg = _stage_config(_apply_config(build_parser(), argv))
    budget = ImageBudget.from_args(cfg)
    assert (budget.min_pixels, budget.max_pixels) == (128 * 32 * 32, 768 * 32 * 32)
    assert VideoSampling.from_fields(cfg).max_video_pixels == 300 * 32 * 32 * 8
    assert main(["plan", "--recipe", name, "--stage", f"reasoner-{stage}"]) == 0
    out = capsys.readouterr().out
    assert "1 x 720 visual (1280x720 image under 131072..786432 pixels -> 1152x640)" in out, out


def test_config_file_and_command_line_win_over_the_recipe(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lora-r: 32\nsteps: 10\n")
    argv = ["train", "embedder", "--recipe", "unime-v2/qwen2-vl-2b", "--config", str(cfg), "--records", "r.jsonl",
            "--out", "o", "--steps", "5"]
    args = _apply_config(build_parser(), argv)
    assert (args.lora_r, args.steps, args.tau) == (32, 5, 0.02)
    origins = {opt: origin for opt, _, origin in resolved_config(args)}
    assert origins["lora-r"] == f"config {cfg}" and origins["steps"] == "command line"
    assert origins["tau"].startswith("recipe unime-v2/qwen2-vl-2b") and origins["seed"] == "default"
    # the recipe supplies the required --model; --print-config runs without --records / --out
    assert main(["train", "embedder", "--recipe", "unime-v2/qwen2-vl-7b", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^model\s+'Qwen/Qwen2-VL-7B-Instruct'\s+# recipe unime-v2/qwen2-vl-7b: ", out, re.M)
    assert re.search(r"^records\s+None\s+# default$", out, re.M)


@pytest.mark.parametrize("given, suggested", [
    ("qwen2-vl-2b", "unime-v2/qwen2-vl-2b"),             # the part after the slash
    ("qwen3-vl-4b", "embed-rl/qwen3-vl-4b"),
    ("unimev2/reranker-qwen2.5-vl-7b", "unime-v2/reranker-qwen2.5-vl-7b"),
    ("unime-v2/qwen2-vl-2", "unime-v2/qwen2-vl-2b, unime-v2/qwen2-vl-7b or unime-v2/judge-qwen2.5-vl-7b"),
    ("reranker", "unime-v2/reranker-qwen2.5-vl-7b"),     # contained in one recipe's name
])
def test_an_unknown_recipe_suggests_the_close_ones(given, suggested, tmp_path, capsys):
    """QA: `unime train embedder --recipe qwen2-vl-2b` said "unknown recipe" and listed every recipe without
    pointing at unime-v2/qwen2-vl-2b, the one meant."""
    assert main(["train", "embedder", "--recipe", given, "--records", "r", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"unime: error: unknown recipe {given!r}; did you mean {suggested}? "
                                               "known recipes: embed-rl/qwen3-vl-2b, "), err
    assert not (tmp_path / "o").exists()


def test_recipe_errors_name_the_choices(tmp_path, capsys):
    # a user-caused failure: one error line and exit code 2 (`unime.cli.failures`), before any output folder
    out = tmp_path / "o"
    assert main(["train", "embedder", "--recipe", "nope/x", "--records", "r", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("unime: error: unknown recipe 'nope/x'; known recipes: ")
    assert "unime-v2/qwen2-vl-2b" in err[0]
    assert main(["train", "reranker", "--recipe", "unime-v2/qwen2-vl-2b", "--records", "r", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no settings for `unime train reranker`" in err[0]
    assert not out.exists()
    # a command no recipe has settings for takes no --recipe (QA: every command offered it, then refused it)
    from unime.cli import _command_path, build_parser

    parser = build_parser()
    offered = {" ".join(c) for c in (["serve"], ["data", "synth"], ["embed"], ["search"], ["train", "embedder"],
                                     ["mine"], ["plan"], ["eval"])
               if any("--recipe" in a.option_strings for a in _command_path(parser, c)[1]._actions)}
    assert offered == {"train embedder", "mine", "plan", "eval"}
    with pytest.raises(SystemExit) as refused:  # argparse's own usage error
        main(["serve", "--model", "m", "--recipe", "unime-v2/qwen2-vl-2b"])
    assert refused.value.code == 2 and "unime serve: error: unrecognized option --recipe; --recipe is an option of " \
        "'unime eval', 'unime mine', 'unime judge' and 4 other commands" in capsys.readouterr().err


def test_the_recipe_help_of_each_command_names_recipes_it_takes():
    """QA: `--recipe`'s help on eval, judge, train reranker and train reasoner said "e.g. unime-v2/qwen2-vl-2b",
    which they refuse ("has no settings for unime eval"). Each command's help names the recipes it takes."""
    import argparse

    from unime.cli import _command_path

    parser = build_parser()
    commands = {}
    for c in (["eval"], ["judge"], ["mine"], ["plan"], ["train", "embedder"], ["train", "reranker"],
              ["train", "reasoner"]):
        helps = [a.help for a in _command_path(parser, c)[1]._actions if "--recipe" in a.option_strings]
        commands[" ".join(c)] = re.findall(r"\b[a-z0-9-]+/[a-z0-9.-]*[a-z0-9]", helps[0])
        # QA: the help pointed only to docs/RECIPES.md, which a wheel install does not ship: it also says how the
        # command itself shows a recipe's values
        assert "--recipe NAME --print-config shows each value with its source" in helps[0], c
    assert commands["eval"] == commands["train reranker"] == ["unime-v2/reranker-qwen2.5-vl-7b"]
    assert commands["judge"] == ["unime-v2/judge-qwen2.5-vl-7b"]
    assert commands["train reasoner"] == ["embed-rl/qwen3-vl-2b", "embed-rl/qwen3-vl-4b"]
    assert commands["plan"] == list_recipes()
    for command, names in commands.items():
        for name in names:  # each resolves (a refused one is a UnimeError)
            args = _apply_config(build_parser(), [*command.split(), "--recipe", name, "--print-config"])
            assert isinstance(args, argparse.Namespace) and args.recipe == name


@pytest.mark.parametrize("stage,expected", [("sft", {"lora-r": 16, "lr": 1e-4, "save-steps": 500}),
                                            ("grpo", {"lora-r": 0, "lr": 3e-6, "save-steps": 100})])
def test_print_config_of_train_reasoner_shows_the_stages_values_of_its_shared_options(stage, expected):
    """QA: `unime train reasoner --stage sft --print-config` printed `lora-r None`, `lr None`, `save-steps None`
    (the options the two stages share with their own defaults: help "default: sft 16, grpo 0"); the README says
    it prints the options as the run uses them. Values given still win, with their origin."""
    args = _apply_config(build_parser(), ["train", "reasoner", "--stage", stage, "--model", "a", "--out", "b",
                                          "--print-config"])
    rows = {opt: (value, origin) for opt, value, origin in resolved_config(args)}
    assert {k: rows[k] for k in expected} == {k: (v, f"default (--stage {stage})") for k, v in expected.items()}
    args = _apply_config(build_parser(), ["train", "reasoner", "--stage", stage, "--model", "a", "--out", "b",
                                          "--lr", "0.5", "--print-config"])
    assert dict((o, (v, g)) for o, v, g in resolved_config(args))["lr"] == (0.5, "command line")


@pytest.mark.parametrize("stage,other,shown,hidden", [
    ("sft", "grpo", {"tcots": None, "epochs": 3.0, "batch-size": 8},
     ["beta", "loss-type", "lr-scheduler", "max-completion-length", "num-generations", "weights"]),
    ("grpo", "sft", {"loss-type": "'dapo'", "max-completion-length": 2048, "lr-scheduler": "'constant'"},
     ["batch-size", "epochs", "tcots"])])
def test_print_config_of_train_reasoner_shows_only_the_options_of_the_stage(capsys, stage, other, shown, hidden):
    """QA: `unime train reasoner --recipe embed-rl/qwen3-vl-2b --stage sft --print-config` listed the recipe's GRPO
    values (lr-scheduler 'constant', loss-type 'dapo', max-completion-length 2048), which SFT ignores, as if the run
    used them. The options of the other stage only are left out, named on one line."""
    assert main(["train", "reasoner", "--recipe", "embed-rl/qwen3-vl-2b", "--stage", stage, "--print-config"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1] for line in lines if not line.startswith("#")}
    assert {k: rows[k] for k in shown} == {k: str(v) for k, v in shown.items()}
    assert not set(hidden) & set(rows)
    note = [line for line in lines if line.startswith("# not shown")]
    assert len(note) == 1 and note[0].startswith(
        f"# not shown, as they do nothing with --stage {stage} (they act only with --stage {other}): ")
    assert set(hidden) <= set(note[0].split(": ", 1)[1].split(", "))
    assert rows["stage"] == f"'{stage}'" and rows["lr"] == ("0.0001" if stage == "sft" else "3e-06")
    # without --stage (the run refuses it): every option shown, each stage's value of the shared ones
    assert main(["train", "reasoner", "--recipe", "embed-rl/qwen3-vl-2b", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "# not shown" not in out and all(f"\n{k} " in out for k in hidden + list(shown))


def test_print_config_of_train_reasoner_without_a_stage_shows_each_stages_value():
    """QA: without --stage, `--print-config` printed `lora-r None`, `lr None`, `save-steps None`: the values the run
    uses depend on the stage, so each stage's is shown (the help's "default: sft 16, grpo 0")."""
    args = _apply_config(build_parser(), ["train", "reasoner", "--model", "a", "--out", "b", "--print-config"])
    rows = {opt: (value, origin) for opt, value, origin in resolved_config(args)}
    assert {k: rows[k][0] for k in ("lora-r", "lr", "save-steps")} == {
        "lora-r": {"sft": 16, "grpo": 0}, "lr": {"sft": 1e-4, "grpo": 3e-6}, "save-steps": {"sft": 500, "grpo": 100}}
    assert rows["lora-r"][1] == "default of each --stage (none given)"
    assert rows["beta"] == (0.01, "default")  # an option of one stage: its own default, as before


def test_global_batch_sets_the_per_device_batch(monkeypatch):
    from unime.errors import UnimeError
    from unime.train.embedder_trainer import per_device_batch

    assert per_device_batch(1024, 1, world_size=8) == 128
    assert per_device_batch(1024, 2, world_size=8) == 64
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert per_device_batch(1024) == 256
    with pytest.raises(UnimeError, match="not a multiple"):
        per_device_batch(1000, 1, world_size=3)


def test_vllm_engine_arguments_are_parsed_as_yaml():
    from unime.mining.backends import vllm_engine_kwargs
    from unime.errors import UsageError

    assert vllm_engine_kwargs(["tensor_parallel_size=8", "distributed_executor_backend=ray",
                               "gpu_memory_utilization=0.85", "enforce_eager=true"]) == {
        "tensor_parallel_size": 8, "distributed_executor_backend": "ray", "gpu_memory_utilization": 0.85,
        "enforce_eager": True}
    with pytest.raises(UsageError, match="^mine: --vllm-engine-arg expects KEY=VALUE, got 'tensor_parallel_size'$"):
        vllm_engine_kwargs(["tensor_parallel_size"])


def test_recipe_values_are_typed_by_the_command_line_rules(monkeypatch, capsys):
    """A recipe goes through the same conversion as a config file: "672" and 672 give the same value as
    `--image-size 672`, and a value the option does not accept is one error line naming the recipe and key."""
    from unime.cli import recipes
    from unime.cli.recipes import Recipe, RecipeValue

    def fake(values):
        return lambda name: Recipe(name=name, title="t", paper="p", commands={
            "train embedder": {k: RecipeValue(v, "test") for k, v in values.items()}})

    on_cli = _apply_config(build_parser(), ["train", "embedder", "--model", "m", "--records", "r", "--out", "o",
                                             "--image-size", "672", "--lora-r", "16"])
    monkeypatch.setattr(recipes, "load_recipe", fake({"image_size": "672", "lora_r": "16", "model": "m"}))
    args = _apply_config(build_parser(), ["train", "embedder", "--recipe", "x/y", "--records", "r", "--out", "o"])
    assert (args.image_size, args.lora_r) == (on_cli.image_size, on_cli.lora_r) == (672, 16)
    assert args._origins["lora_r"] == "recipe x/y: test" and args._origins["records"] == "command line"

    monkeypatch.setattr(recipes, "load_recipe", fake({"lora_r": "sixteen", "model": "m"}))
    assert main(["train", "embedder", "--recipe", "x/y", "--records", "r", "--out", "o"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["unime: error: recipe x/y: key 'lora_r': invalid int 'sixteen' "
                   "(invalid literal for int() with base 10: 'sixteen')"]


def test_print_config_claims_no_output_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "embedder", "--recipe", "unime-v2/qwen2-vl-2b", "--records", "r.jsonl",
                 "--out", str(out), "--print-config"]) == 0
    assert re.search(r"^out\s+'.*run'\s+# command line$", capsys.readouterr().out, re.M)
    assert not out.exists()


def test_a_config_file_cannot_name_the_recipe(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("recipe: unime-v2/qwen2-vl-2b\n")
    assert main(["train", "embedder", "--config", str(cfg), "--model", "m", "--records", "r",
                 "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == (f"unime: error: {cfg}: key 'recipe': give --recipe on the command "
                                               "line (a config file holds the options of the run)")
    assert not (tmp_path / "o").exists()


def test_a_config_file_cannot_name_another_config_file(tmp_path, capsys):
    """A config file with a `config:` key got "unknown key for `unime search`: 'config'": it is refused as naming
    another config file, with the file and the key, before any work."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("config: other.yaml\nk: 3\n")
    assert main(["search", "--config", str(cfg), "--index", str(tmp_path / "i"), "--query", "q"]) == 2
    assert capsys.readouterr().err.strip() == (f"unime: error: {cfg}: key 'config': a config file cannot name another "
                                               "config file (copy its options into this one)")


def test_a_nearer_batch_size_wins_over_a_farther_global_batch(tmp_path):
    """QA: the recipe's (or a config file's) --global-batch silently overrode a --batch-size given on the command
    line, against 'command-line options still win'; both on the command line are refused."""
    from unime.cli import _add_overwrite_options, _parse, build_parser
    from unime.cli.train import embedder_config_from_args
    from unime.errors import UsageError

    def built(*argv):
        parser = build_parser()
        _add_overwrite_options(parser)
        return embedder_config_from_args(_parse(parser, ["train", "embedder", "--model", "m", "--records", "r",
                                                         "--out", "o", *argv]))

    from_recipe = built("--recipe", "unime-v2/qwen2-vl-2b")
    assert from_recipe.global_batch == 1024
    mine = built("--recipe", "unime-v2/qwen2-vl-2b", "--batch-size", "4")
    assert (mine.batch_size, mine.global_batch) == (4, None)
    cfg = tmp_path / "gb.yaml"
    cfg.write_text("global_batch: 8\n")
    assert (built("--config", str(cfg), "--batch-size", "2").global_batch, built("--config", str(cfg)).global_batch) \
        == (None, 8)
    with pytest.raises(UsageError, match="not both"):
        built("--batch-size", "2", "--global-batch", "8")


def test_options_that_do_nothing_are_refused_only_where_the_user_gave_them(tmp_path):
    """QA: --chunk-size without --gradcache and the LoRA options with --full did nothing. Given on the command line
    or in a config file they are refused; a recipe's values for them are not (the recipe's LoRA settings under
    --full, its chunk size with gradcache turned off in a config file)."""
    from unime.cli import _add_overwrite_options, _parse, build_parser
    from unime.cli.train import embedder_config_from_args
    from unime.errors import UsageError

    def built(*argv):
        parser = build_parser()
        _add_overwrite_options(parser)
        return embedder_config_from_args(_parse(parser, ["train", "embedder", "--model", "m", "--records", "r",
                                                         "--out", "o", *argv]))

    recipe = ("--recipe", "unime-v2/qwen2-vl-2b")
    assert (built(*recipe, "--full").full, built(*recipe).chunk_size) == (True, 2)
    no_gradcache = tmp_path / "off.yaml"
    no_gradcache.write_text("gradcache: false\n")
    assert built(*recipe, "--config", str(no_gradcache)).gradcache is False
    with pytest.raises(UsageError, match=r"^train embedder: --chunk-size does nothing without --gradcache"):
        built(*recipe, "--config", str(no_gradcache), "--chunk-size", "4")
    dropout = tmp_path / "dropout.yaml"
    dropout.write_text("lora_dropout: 0.2\n")
    with pytest.raises(UsageError, match=rf"^train embedder: --lora-dropout \(config {dropout}\) does nothing with "
                                         "--full: drop one of them$"):
        built("--config", str(dropout), "--full")
    assert (built("--gradcache", "--chunk-size", "4").chunk_size, built("--lora-r", "4").lora_r) == (4, 4)


def test_print_config_shows_the_batch_the_run_uses(tmp_path, capsys, monkeypatch):
    """QA: with --global-batch 4 `--print-config` showed `batch-size 8 # default` (the run uses 4 per device on one
    process, 2 on two); with the recipe's --global-batch 1024 dropped by a command-line --batch-size 16 it still
    listed `global-batch 1024 # recipe`."""
    def shown(*argv) -> dict[str, tuple[str, str]]:
        assert main(["train", "embedder", "--model", "m", "--records", "r", "--out", str(tmp_path / "o"), *argv,
                     "--print-config"]) == 0
        rows = [re.match(r"^(\S+)\s+(.+?)\s+# (.*)$", line) for line in capsys.readouterr().out.splitlines()[1:]]
        return {m[1]: (m[2], m[3]) for m in rows}

    rows = shown("--global-batch", "4")
    assert rows["batch-size"] == ("4", "derived from --global-batch 4 / (1 process(es) of this launch x "
                                       "--grad-accum 1)")
    assert rows["global-batch"] == ("4", "command line")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert shown("--global-batch", "8", "--grad-accum", "2")["batch-size"] == (
        "2", "derived from --global-batch 8 / (2 process(es) of this launch x --grad-accum 2)")
    assert shown("--global-batch", "6", "--grad-accum", "2")["batch-size"] == (
        "None", "--global-batch 6 is not a multiple of 2 processes x 2 accumulation steps")
    monkeypatch.delenv("WORLD_SIZE")
    rows = shown("--recipe", "unime-v2/qwen2-vl-2b", "--batch-size", "16")
    assert rows["batch-size"] == ("16", "command line")
    assert rows["global-batch"][0] == "None"
    assert rows["global-batch"][1].startswith("dropped: --batch-size (command line) wins over 1024 (recipe unime-v2/")
    assert shown("--batch-size", "16")["global-batch"] == ("None", "default")  # no global batch: nothing derived
    assert not (tmp_path / "o").exists()


def test_every_flag_a_recipe_turns_on_can_be_turned_off_on_the_command_line():
    """QA: `--no-gradcache` / `--no-symmetric` were unrecognized, so a recipe's true flag could not be undone
    (docs/RECIPES.md: command-line options win over the recipe). Each boolean a recipe sets to true has a --no- form
    that wins over it."""
    seen = set()
    for name in list_recipes():
        for command, opts in load_recipe(name).commands.items():
            for key, rv in opts.items():
                if rv.value is not True:
                    continue
                flag = "--no-" + key.replace("_", "-")
                args = _apply_config(build_parser(), [*command.split(), "--recipe", name, flag, "--print-config"])
                assert getattr(args, key) is False, (name, command, flag)
                assert args._origins[key] == "command line", (name, command, flag)
                seen.add((command, key))
    assert {("train embedder", k) for k in ("gradcache", "symmetric", "dora", "in_batch")} <= seen


def test_the_judge_recipe_sets_the_judge_of_unime_judge_as_of_unime_mine(tmp_path):
    """QA: `unime judge --recipe unime-v2/judge-qwen2.5-vl-7b --pairs p.jsonl --out s.jsonl` failed 'the following
    arguments are required: --judge', though the same recipe sets --judge for `unime mine`."""
    argv = ["--recipe", "unime-v2/judge-qwen2.5-vl-7b", "--out", str(tmp_path / "s.jsonl")]
    judge = _apply_config(build_parser(), ["judge", "--pairs", "p.jsonl", *argv])
    mine = _apply_config(build_parser(), ["mine", "--records", "r", "--embedder", "e", *argv])
    assert judge.judge == mine.judge == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert judge._origins["judge"].startswith("recipe unime-v2/judge-qwen2.5-vl-7b: ")


def test_a_nearer_epochs_drops_a_farther_steps_in_every_trainer(tmp_path, capsys):
    """QA: `unime train embedder --recipe unime-v2/qwen2-vl-2b --epochs 1` was refused 'give --steps or --epochs, not
    both' though the user gave only --epochs: the recipe's --steps 2000 is dropped, as a nearer --batch-size drops a
    farther --global-batch; the same for a config file's steps under the reranker / judge and the reasoner."""
    from unime.cli import _add_overwrite_options, _parse
    from unime.cli.train import embedder_config_from_args
    from unime.cli.train_reranker import config_from_args as reranker_config_from_args

    def parsed(*argv):
        parser = build_parser()
        _add_overwrite_options(parser)
        return _parse(parser, list(argv))

    base = ["--records", "r", "--out", "o"]
    cfg = embedder_config_from_args(parsed("train", "embedder", "--recipe", "unime-v2/qwen2-vl-2b", *base,
                                           "--epochs", "1"))
    assert (cfg.steps, cfg.epochs, cfg.warmup) == (None, 1.0, 200)
    assert main(["train", "embedder", "--recipe", "unime-v2/qwen2-vl-2b", "--epochs", "1", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^steps\s+None\s+# dropped: --epochs \(command line\) wins over 2000 \(recipe "
                     r"unime-v2/qwen2-vl-2b: ", out, re.M), out
    steps_file = tmp_path / "steps.yaml"
    steps_file.write_text("steps: 10\n")
    for role in ("reranker", "judge"):
        cfg = reranker_config_from_args(parsed("train", role, "--model", "m", *base, "--config", str(steps_file),
                                               "--epochs", "2"))
        assert (cfg.max_steps, cfg.epochs) == (-1, 2.0), role
        # kept where nothing nearer drops it
        assert reranker_config_from_args(parsed("train", role, "--model", "m", *base, "--config",
                                                str(steps_file))).max_steps == 10, role
    steps_file.write_text("max_steps: 10\n")
    for stage, flag in (("sft", "--epochs"), ("grpo", "--grpo-epochs")):
        args = parsed("train", "reasoner", "--stage", stage, "--model", "m", "--out", "o", "--config", str(steps_file),
                      flag, "2", "--print-config")
        rows = {opt: (value, origin) for opt, value, origin in resolved_config(args)}
        assert rows["max-steps"] == (-1, f"dropped: {flag} (command line) wins over 10 (config {steps_file})"), stage


@pytest.mark.parametrize("name", ["embed-rl/qwen3-vl-2b", "embed-rl/qwen3-vl-4b"])
def test_embed_rl_recipes_show_the_process_judge_4_negative_pairs(name):
    """SPEC 2.3: the process judge sees the 4 hardest negative pairs. QA: the recipes set --hard-negative-pairs 4 with
    the default --pairs-per-batch 2, whose batch has 2 - 1 = 1 negative pair (now refused); the recipe's batch holds
    at least 5 pairs, so the GRPO config it gives validates."""
    from unime.cli.dataclass_options import config_from_args
    from unime.embed_rl.grpo import GRPOStageConfig

    args = _apply_config(build_parser(), ["train", "reasoner", "--stage", "grpo", "--recipe", name, "--model", "m",
                                           "--records", "r.jsonl", "--embedder", "e", "--out", "o"])
    cfg = config_from_args(GRPOStageConfig, args, unset_is_none=True, weights=(0.05, 0.8, 0.2))
    cfg.validate()
    assert cfg.hard_negative_pairs == 4 and cfg.pairs_per_batch - 1 >= 4


# Every `unime plan` figure a recipe's source quotes: (recipe, option, the plan's arguments after `--recipe NAME`,
# the quoted text as a regex whose group is the figure). QA: the embed-rl recipes quoted figures of an older plan
# (full fine-tuning of the reasoner: 150.9 / 155.2 GiB, now 199.9 / 204.2 since its fp32 master weights; the
# embedder and reasoner stages 0.1-0.2 GiB off), and `unime plan --set lora-r=0`, as quoted, planned the embedder
# (the recipe's default stage), so the reasons the docs gave were not what `unime plan` shows.
_EMBED_RL = ("embed-rl/qwen3-vl-2b", "embed-rl/qwen3-vl-4b")
_QUOTED_PLANS = [
    *[(name, opt, argv, pattern) for name in _EMBED_RL for opt, argv, pattern in (
        ("gradcache", ["--set", "gradcache=false"], r"\(`unime plan`: ([\d.]+) GiB\)"),
        ("chunk-size", [], r"\(`unime plan`: ([\d.]+) GiB on 80\)"),
        ("gradient-checkpointing", ["--stage", "reasoner-sft"],
         r"`unime plan --stage reasoner-sft` ([\d.]+) GiB on 80"),
        ("gradient-checkpointing", ["--stage", "reasoner-sft", "--set", "gradient-checkpointing=false"],
         r"with it, ([\d.]+) GiB without"),
        ("lora-r", ["--stage", "reasoner-grpo", "--gpus", "8", "--set", "lora-r=0"],
         r"\(`unime plan --stage reasoner-grpo --gpus 8 --set lora-r=0`: ([\d.]+) GiB"),
        ("lora-r", ["--stage", "reasoner-grpo"], r"\(`unime plan --stage reasoner-grpo`: ([\d.]+) GiB on 80\)"),
        ("micro-batch", ["--stage", "reasoner-grpo", "--set", "micro-batch=40"],
         r"`unime plan --stage reasoner-grpo --set micro-batch=40`: ([\d.]+) GiB on 80"))],
    ("unime-v2/reranker-qwen2.5-vl-7b", "gradient-checkpointing", ["--set", "gradient-checkpointing=false"],
     r"\(`unime plan`: ([\d.]+) GiB, "),
    ("unime-v2/reranker-qwen2.5-vl-7b", "gradient-checkpointing", [], r"GiB, ([\d.]+) GiB with it\)"),
]


@pytest.mark.parametrize("name,option,argv,pattern", _QUOTED_PLANS,
                         ids=[f"{n}:{o}:{' '.join(a)}" for n, o, a, _ in _QUOTED_PLANS])
def test_the_plan_figures_a_recipe_quotes_are_what_unime_plan_shows(name, option, argv, pattern, capsys):
    """The figure a recipe's source quotes for `unime plan ...` is the plan's total (printed to 0.01 GiB), to 0.1."""
    source = load_recipe(name).options(_command_of(name, option))[option.replace("-", "_")].source
    quoted = re.search(pattern, source)
    assert quoted, (name, option, pattern, source)
    assert main(["plan", "--recipe", name, *argv]) == 0
    total = re.search(r"^  total +([\d.]+)", capsys.readouterr().out, re.M)
    assert abs(float(total.group(1)) - float(quoted.group(1))) <= 0.05 + 1e-9, (name, option, argv, total.group(1))


def _command_of(name: str, option: str) -> str:
    """The command of recipe `name` whose settings hold `option` (train embedder before train reasoner)."""
    return next(c for c, opts in load_recipe(name).commands.items() if option.replace("-", "_") in opts)


@pytest.mark.parametrize("name", ["embed-rl/qwen3-vl-2b", "embed-rl/qwen3-vl-4b"])
def test_the_full_fine_tuning_state_a_recipe_quotes_is_20_bytes_a_parameter(name):
    """By hand: full fine-tuning under DDP holds per parameter fp32 master weights, fp32 gradients, DDP's fp32
    gradient buckets and AdamW's two fp32 states: 5 x 4 = 20 bytes; the 8B reasoner's parameters counted on the
    model built from its config (no weights)."""
    from unime.models.known_checkpoints import meta_model

    model = meta_model("Qwen/Qwen3-VL-8B-Instruct")
    n = sum(p.numel() for p in (model[0] if isinstance(model, tuple) else model).parameters())
    source = load_recipe(name).options("train reasoner")["lora_r"].source
    quoted = re.search(r"AdamW states of ([\d.]+) B parameters alone take ([\d.]+) GiB of each device", source)
    assert quoted, source
    assert (quoted.group(1), quoted.group(2)) == (f"{n / 1e9:.2f}", f"{n * 20 / 2**30:.1f}")
