"""Every output records which recipe and config file produced it: the marker of an output folder (and the sidecar of
a single-file output) holds `provenance` (the recipe's name or null, the config file as given with its SHA-256, and
where each option not left at its default came from, with the value in effect), outside the options hash; a resumable
command's later runs into the output are added under `provenance_resumes`; a trainer's model card names the recipe."""

from __future__ import annotations

import json

from unime.cli import _add_overwrite_options, _claim_output, _parse, build_parser, main
from unime.outdir import MARKER_NAME, read_file_marker, read_marker

RECIPE = "unime-v2/qwen2-vl-2b"
# the options `unime train embedder --recipe unime-v2/qwen2-vl-2b` sets (its file in src/unime/cli/recipes/)
RECIPE_VALUES = {"model": "Qwen/Qwen2-VL-2B-Instruct", "loss": "symmetric_kl", "hard-negatives": 8, "tau": 0.02,
                 "lora-r": 16, "lora-alpha": 64, "lora-dropout": 0.1, "dora": True, "lr": 1e-4,
                 "lr-scheduler": "linear", "warmup": 200, "steps": 2000, "dtype": "bf16", "gradcache": True,
                 "chunk-size": 2, "global-batch": 1024, "image-size": 672}
SEED_3_SHA256 = "e3b40a56eafb6ee811e1a98c8ca0796ee50da302dca51be6aaf04f8cade4af6f"  # sha256sum of "seed: 3\n"
DEMO_SHA256 = "082f647c744d9cd1793814be9c17e63f969e81f857be882c80716820a0e45756"  # sha256sum of "dataset: demo\n"
LR_SHA256 = "a70dbf5f0321c18f19386d903a274c288f03488cafd8de54c2f255947a268da4"  # sha256sum of "lr: 2.0e-4\n"


def _claimed(argv: list[str]):
    """Parse `argv` as `unime.cli.main` does and claim its output (the marker is written), then release it."""
    parser = build_parser()
    _add_overwrite_options(parser)
    args = _parse(parser, argv)
    owned = _claim_output(args, args._command)
    owned.release()
    return args


def test_a_folder_marker_records_the_recipe_the_config_file_and_each_options_layer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_text("lr: 2.0e-4\n")
    _claimed(["train", "embedder", "--recipe", RECIPE, "--config", "run.yaml", "--records", "r.jsonl",
              "--out", "out", "--steps", "5"])
    expected = {name: "recipe" for name in RECIPE_VALUES}
    expected.update({"lr": "config", "steps": "command line", "records": "command line", "out": "command line"})
    values = {**RECIPE_VALUES, "lr": 2e-4, "steps": 5, "records": "r.jsonl", "out": "out"}
    assert read_marker(tmp_path / "out")["provenance"] == {
        "recipe": RECIPE, "config": {"path": "run.yaml", "sha256": LR_SHA256}, "sources": expected, "values": values}


def test_an_option_a_closer_layer_sets_back_to_its_default_is_that_layers_with_the_value_in_effect(tmp_path,
                                                                                                  monkeypatch):
    """The recipe's DoRA (true) turned off on the command line (false, the default), the recipe's tau (0.02, the
    default) replaced by the config file's 0.05 and the recipe's lr (1e-4) by the command line's: each is named by
    the layer whose value the run uses, with that value."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_text("tau: 0.05\n")
    _claimed(["train", "embedder", "--recipe", RECIPE, "--config", "run.yaml", "--records", "r.jsonl",
              "--out", "out", "--no-dora", "--lr", "3e-4"])
    provenance = read_marker(tmp_path / "out")["provenance"]
    picked = {name: (provenance["sources"][name], provenance["values"][name]) for name in ("dora", "tau", "lr")}
    assert picked == {"dora": ("command line", False), "tau": ("config", 0.05), "lr": ("command line", 3e-4)}
    assert provenance["values"]["lora-r"] == 16 and provenance["sources"]["lora-r"] == "recipe"


def test_the_options_hash_leaves_out_where_the_values_came_from(tmp_path, monkeypatch):
    """The same options from a config file and from the command line: the same options hash (what an interrupted
    run of an earlier version recorded), other provenance."""
    markers = []
    for name, given in (("a", ["--config", "run.yaml"]), ("b", ["--lr", "2e-4"])):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)  # the same relative --out and --records: the same option values
        (tmp_path / name / "run.yaml").write_text("lr: 2.0e-4\n")
        _claimed(["train", "embedder", *given, "--model", "m", "--records", "r.jsonl", "--out", "out"])
        markers.append(read_marker(tmp_path / name / "out"))
    assert markers[0]["options_hash"] == markers[1]["options_hash"]
    assert [m["provenance"]["sources"]["lr"] for m in markers] == ["config", "command line"]


def test_a_command_run_with_neither_records_null_and_the_command_line_options(tmp_path):
    out = tmp_path / "world"
    assert main(["data", "synth", "--out", str(out), "--size", "tiny"]) == 0
    assert read_marker(out)["provenance"] == {"recipe": None, "config": None,
                                              "sources": {"out": "command line", "size": "command line"},
                                              "values": {"out": str(out), "size": "tiny"}}


def test_a_finished_command_keeps_the_config_file_it_was_given_in_its_marker(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "world.yaml").write_text("seed: 3\n")
    assert main(["data", "synth", "--config", "world.yaml", "--out", "world", "--size", "tiny"]) == 0
    marker = json.loads((tmp_path / "world" / MARKER_NAME).read_text())
    assert marker["command"] == "data synth"
    assert marker["provenance"] == {"recipe": None, "config": {"path": "world.yaml", "sha256": SEED_3_SHA256},
                                    "sources": {"seed": "config", "out": "command line", "size": "command line"},
                                    "values": {"seed": 3, "out": "world", "size": "tiny"}}


def test_a_single_file_outputs_sidecar_records_the_config_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.jsonl").write_text(json.dumps({"query": {"text": "q"}, "positive": {"text": "p"}}) + "\n")
    (tmp_path / "convert.yaml").write_text("dataset: demo\n")
    assert main(["data", "convert", "--config", "convert.yaml", "r.jsonl", "r.parquet"]) == 0
    sidecar = read_file_marker(tmp_path / "r.parquet")
    assert sidecar["provenance"] == {
        "recipe": None, "config": {"path": "convert.yaml", "sha256": DEMO_SHA256},
        "sources": {"dataset": "config", "input": "command line", "output": "command line"},
        "values": {"dataset": "demo", "input": "r.jsonl", "output": "r.parquet"}}


def test_the_config_hash_is_of_the_bytes_the_options_were_read_from(tmp_path, monkeypatch):
    """The config file edited after the options were parsed (while the run goes on): the marker's SHA-256 names the
    content the run read ("lr: 2.0e-4\\n"), not the file's new content."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_text("lr: 2.0e-4\n")
    parser = build_parser()
    _add_overwrite_options(parser)
    args = _parse(parser, ["train", "embedder", "--config", "run.yaml", "--model", "m", "--records", "r.jsonl",
                           "--out", "out"])
    (tmp_path / "run.yaml").write_text("lr: 1.0e-3\n")
    _claim_output(args, args._command).release()
    assert args.lr == 2e-4
    assert read_marker(tmp_path / "out")["provenance"]["config"] == {"path": "run.yaml", "sha256": LR_SHA256}


def _train(*given: str) -> list[str]:
    return ["train", "embedder", "--model", "m", "--records", "r.jsonl", "--out", "out", *given]


def test_a_resume_given_its_options_otherwise_keeps_the_first_runs_provenance_and_adds_its_own(tmp_path,
                                                                                                monkeypatch):
    """The run begun with lr from run.yaml, resumed with the same lr on the command line and another --save-steps
    (an option a resume may change): the marker keeps the first run's provenance, and lists the resume's with its
    options hash; a resume given exactly as the one before adds nothing."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_text("lr: 2.0e-4\n")
    _claimed(_train("--config", "run.yaml"))
    first = read_marker(tmp_path / "out")
    for _ in range(2):
        _claimed(_train("--lr", "2e-4", "--save-steps", "10"))
    marker = read_marker(tmp_path / "out")
    assert marker["provenance"] == first["provenance"]
    assert marker["provenance"]["config"] == {"path": "run.yaml", "sha256": LR_SHA256}
    assert marker["provenance"]["sources"]["lr"] == "config"
    sources = {"lr": "command line", "save-steps": "command line", "model": "command line",
               "records": "command line", "out": "command line"}
    assert marker["provenance_resumes"] == [{
        "recipe": None, "config": None, "sources": sources, "options_hash": marker["options_hash"],
        "values": {"lr": 2e-4, "save-steps": 10, "model": "m", "records": "r.jsonl", "out": "out"}}]
    assert marker["options_hash"] != first["options_hash"]  # --save-steps 10: another value


def test_a_rerun_as_the_first_run_records_no_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        _claimed(_train("--lr", "2e-4"))
    assert "provenance_resumes" not in read_marker(tmp_path / "out")


def test_a_rerun_with_other_options_under_overwrite_starts_over_and_records_its_own_provenance(tmp_path,
                                                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    _claimed(_train("--lr", "2e-4"))
    _claimed(_train("--lr", "3e-4", "--overwrite"))
    marker = read_marker(tmp_path / "out")
    assert "provenance_resumes" not in marker
    assert marker["provenance"]["values"]["lr"] == 3e-4


def test_a_command_that_rewrites_its_output_records_the_last_runs_provenance(tmp_path, monkeypatch):
    """`data synth` (not resumable) writes its folder again on a re-run: the marker names the re-run's config."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "world.yaml").write_text("seed: 3\n")
    _claimed(["data", "synth", "--out", "world", "--size", "tiny"])
    _claimed(["data", "synth", "--config", "world.yaml", "--out", "world", "--size", "tiny"])
    marker = read_marker(tmp_path / "world")
    assert "provenance_resumes" not in marker
    assert marker["provenance"]["config"] == {"path": "world.yaml", "sha256": SEED_3_SHA256}


def test_a_resumed_single_file_output_keeps_the_first_runs_provenance(tmp_path, monkeypatch):
    """`unime embed` (resumable, from its finished chunks) resumed with --batch-size from a config file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "embed.yaml").write_text("batch_size: 4\n")
    given = ["embed", "--model", "m", "--items", "items.jsonl", "--out", "e.npy"]
    for argv in ([*given, "--batch-size", "4"], [*given, "--config", "embed.yaml"]):
        parser = build_parser()
        _add_overwrite_options(parser)
        args = _parse(parser, argv)
        owned = _claim_output(args, args._command)
        (tmp_path / "e.npy").write_bytes(b"written")  # the run's output, recorded by commit
        owned.commit()
        owned.release()
    sidecar = read_file_marker(tmp_path / "e.npy")
    assert sidecar["provenance"]["config"] is None and sidecar["provenance"]["sources"]["batch-size"] == "command line"
    [resume] = sidecar["provenance_resumes"]
    assert resume["config"]["path"] == "embed.yaml" and resume["sources"]["batch-size"] == "config"
    assert resume["options_hash"] == sidecar["options_hash"]
