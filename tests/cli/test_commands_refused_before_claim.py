"""Commands refused for their options or inputs write nothing: the checks come before the command claims its
output (`unime.outdir`), so that a refused run leaves no new folder (or file) behind and leaves a folder (or file)
another command wrote byte-identical, even under --overwrite. (The trainers, `index build`, `mine` and `eval` are
checked in their own tests: tests/train/test_refused_on_bad_input.py, tests/test_outdir.py.)"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from unime.cli import main


def _tree(folder: Path) -> dict[str, str]:
    """Every entry below `folder` (hidden ones too) with its content's SHA-1 (None for a folder)."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root, name)
            found[str(path.relative_to(folder))] = hashlib.sha1(path.read_bytes()).hexdigest() \
                if path.is_file() else None
    return found


def _error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("unime: error:")]


def _refused(argv: list[str], capsys, *named: str) -> None:
    """`unime ARGV` ends with exit code 2 and one error line, naming each of `named`."""
    assert main(argv) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and all(n in lines[0] for n in named), lines


def _other_commands_folder(path: Path) -> Path:
    """A folder `unime data synth` claimed and wrote a file into."""
    from unime.outdir import claim

    with claim(path, "data synth"):
        (path / "notes.txt").write_text("the synth run's file\n")
    return path


# -- unime demo ------------------------------------------------------------------------------------------

def test_demo_refused_for_its_device_writes_no_world(tmp_path, capsys):
    """Before, `unime demo --device nodev` generated the whole world into --out (also into a folder taken with
    --overwrite) and refused the device only when the first model loaded."""
    out = tmp_path / "demo"
    _refused(["demo", "--quick", "--device", "nodev", "--out", str(out)], capsys, "--device 'nodev'")
    assert not out.exists(), sorted(_tree(out))
    other = _other_commands_folder(tmp_path / "other")
    before = _tree(other)
    _refused(["demo", "--quick", "--device", "nodev", "--out", str(other), "--overwrite"], capsys)
    assert _tree(other) == before


def test_demo_fresh_refused_for_its_device_deletes_nothing(tmp_path, capsys):
    """Before, `--fresh` deleted the earlier demo run's outputs, and then the device was refused."""
    from unime.outdir import claim

    out = tmp_path / "demo"
    with claim(out, "demo"):
        (out / "stages").mkdir()
        (out / "stages" / "world.done").write_text("done\n")
        (out / "report.md").write_text("# an earlier demo run\n")
    before = _tree(out)
    _refused(["demo", "--quick", "--fresh", "--device", "nodev", "--out", str(out)], capsys)
    assert _tree(out) == before


# -- single-file outputs (`unime.outdir.claim_file`): data convert, embed, judge, reason teacher / generate / ... ----

RECORD = '{"id": "r%d", "query": {"text": "a query %d"}, "positive": {"text": "its answer %d"}}\n'


def _records(path: Path, n: int = 3) -> Path:
    path.write_text("".join(RECORD % (i, i, i) for i in range(n)), encoding="utf-8")
    return path


def test_a_refused_file_command_leaves_no_folder_it_made_for_its_output(tmp_path, capsys):
    """Before, the output file's missing folders were made when the file was claimed, and stayed after the
    refusal (`data convert nope.jsonl new/sub/out.jsonl` left new/sub/)."""
    out = tmp_path / "new" / "sub" / "out.jsonl"
    _refused(["data", "convert", str(tmp_path / "nope.jsonl"), str(out)], capsys)
    assert not (tmp_path / "new").exists(), sorted(_tree(tmp_path / "new"))
    (tmp_path / "kept").mkdir()  # a folder that was there stays, empty as it was
    _refused(["data", "convert", str(tmp_path / "nope.jsonl"), str(tmp_path / "kept" / "a" / "out.jsonl")], capsys)
    assert _tree(tmp_path / "kept") == {}


def test_a_refused_file_command_leaves_another_commands_file_and_its_record_as_they_were(tmp_path, capsys):
    """Before, a run refused for its input under --overwrite re-marked the file another command wrote as its own
    pending output (its sidecar replaced), and the file's owner was then refused its own re-run without
    --overwrite; the same for a re-run of the owner refused for its input."""
    good = _records(tmp_path / "good.jsonl")
    folder = tmp_path / "outputs"
    folder.mkdir()
    out = folder / "records.jsonl"
    assert main(["data", "convert", str(good), str(out)]) == 0
    before = _tree(folder)
    _refused(["reason", "materialize", "--records", str(tmp_path / "nope.jsonl"), "--no-tcots",
              "--out", str(out), "--overwrite"], capsys)
    assert _tree(folder) == before
    _refused(["data", "convert", str(tmp_path / "nope.jsonl"), str(out), "--overwrite"], capsys)
    assert _tree(folder) == before
    capsys.readouterr()
    assert main(["data", "convert", str(good), str(out)]) == 0  # still the owner's: re-run without --overwrite


# -- unime models pretrain / pretrain-judge ----------------------------------------------------------------

def _nothing_beside(out: Path) -> None:
    """Neither --out nor its work folder (`.NAME.work`, where the stages are built) exists."""
    assert not out.exists(), sorted(_tree(out))
    work = out.parent / f".{out.name}.work"
    assert not work.exists(), sorted(_tree(work))


def test_pretrain_refused_for_its_family_or_datasets_writes_nothing(tmp_path, capsys):
    """Before, an unknown --family was refused (a traceback) only when the backbone was built, and a dataset of the
    corpus without training records (an OOD task) once the backbone and the corpus were made: both left the work
    folder stamped with the refused recipe's key, so that the corrected run into the same --out was refused (`holds an
    interrupted base pretraining of another recipe`) until the user removed it."""
    out = tmp_path / "base"
    for option, value, named in (("--family", "nofam", "--family 'nofam'"),
                                 ("--contrastive-datasets", "i2t,t2i_ood", "t2i_ood"),
                                 ("--contrastive-datasets", "i2t,nosuch", "nosuch")):
        _refused(["models", "pretrain", "--preset", "quick", option, value, "--out", str(out)], capsys, option,
                 named)
        _nothing_beside(out)
    other = _other_commands_folder(tmp_path / "other")
    before = _tree(other)
    _refused(["models", "pretrain", "--preset", "quick", "--family", "nofam", "--out", str(other),
              "--overwrite"], capsys)
    assert _tree(other) == before and not (tmp_path / ".other.work").exists()


def test_pretrain_judge_refused_for_its_base_family_writes_nothing(tmp_path, monkeypatch, capsys):
    """Before, `pretrain-judge --family nofam` failed with a traceback after the base's work folder was made in the
    per-machine cache, stamped with the refused recipe's key (the base's `pretrain` checks its recipe first now)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("UNIME_CACHE_DIR", str(cache))
    out = tmp_path / "judge"
    _refused(["models", "pretrain-judge", "--preset", "quick", "--family", "nofam", "--out", str(out)], capsys,
             "--family 'nofam'")
    _nothing_beside(out)
    assert not cache.exists(), sorted(_tree(cache))


# -- unime reason split -------------------------------------------------------------------------------------

def test_reason_split_refuses_an_rl_fraction_outside_0_1_first_with_one_line(tmp_path, capsys):
    """Before, --rl-fraction 1.5 was refused with a ValueError traceback after the records were read and the judge
    loaded; now with one line naming the option, before --out-dir is claimed or any input read."""
    out = tmp_path / "split"
    argv = ["reason", "split", "--records", str(tmp_path / "nope.jsonl"), "--tcots", str(tmp_path / "nope.tcots"),
            "--judge", str(tmp_path / "no-judge"), "--out-dir", str(out)]
    for bad in ("1.5", "-0.1"):
        _refused([*argv, "--rl-fraction", bad], capsys, "--rl-fraction must be >= 0 and <= 1", bad)
        assert not out.exists()


def test_reason_split_refuses_a_threshold_beside_an_rl_fraction_first_with_one_line(tmp_path, capsys):
    """Before, --threshold given beside --rl-fraction was ignored without a word (the fraction decided the split)."""
    out = tmp_path / "split"
    argv = ["reason", "split", "--records", str(tmp_path / "nope.jsonl"), "--tcots", str(tmp_path / "nope.tcots"),
            "--judge", str(tmp_path / "no-judge"), "--out-dir", str(out)]
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error for two options of one exclusive group
        main([*argv, "--threshold", "0.3", "--rl-fraction", "0.2"])
    assert exit_.value.code == 2
    assert "argument --rl-fraction: not allowed with argument --threshold" in capsys.readouterr().err
    assert not out.exists()
    # a threshold from a --config file passes argparse's group (it is a default there): the config's check refuses it
    config = tmp_path / "split.yaml"
    config.write_text("threshold: 0.3\n")
    _refused([*argv, "--config", str(config), "--rl-fraction", "0.2"], capsys, "--threshold", "--rl-fraction")
    assert not out.exists()


# -- every command that claims an output folder --------------------------------------------------------------

def test_a_refused_run_leaves_the_lock_file_of_a_folder_it_took_as_it_was(tmp_path, capsys):
    """The lock file of a folder another run wrote holds that run's pid. Before, a run refused for its input under
    --overwrite left its own pid there (the folder's marker was put back, the lock file's content was not)."""
    other = _other_commands_folder(tmp_path / "other")
    (other / ".unime.lock").write_text("4242\n")  # as the synth run, another process, left it
    before = _tree(other)
    _refused(["data", "import", "--captions", str(tmp_path / "nope.csv"), "--images", str(tmp_path),
              "--out", str(other), "--overwrite"], capsys)
    assert _tree(other) == before


# -- unime data synth ----------------------------------------------------------------------------------------

def test_data_synth_refuses_a_size_out_of_range_with_one_line_before_claiming(tmp_path, capsys):
    """Before, a world size out of range (--image-size 1, --candidates 1, --train-scenes -1) was a ValueError
    traceback raised from the world builder after --out was claimed."""
    out = tmp_path / "world"
    for option, value, named in (("--image-size", "1", "image_size must be at least 32 pixels"),
                                 ("--candidates", "1", "candidates must be at least 2"),
                                 ("--train-scenes", "-1", "size train_scenes must be a non-negative integer")):
        _refused(["data", "synth", "--size", "tiny", option, value, "--out", str(out)], capsys, named)
        assert not out.exists()


# -- unime eval reference --also TASKS OUT --------------------------------------------------------------------

def test_eval_reference_also_folder_is_claimed_like_out(tiny_world_dir, tmp_path, capsys):
    """Before, the result folder of --also was written without a claim: no marker, no lock, and a folder another
    command wrote (an `unime eval` result) had its summary.json and results.md replaced without --overwrite. It is
    checked before anything runs and claimed like --out."""
    from unime.outdir import claim, read_marker

    world = tiny_world_dir(0)
    evaluated = tmp_path / "eval-result"
    with claim(evaluated, "eval"):
        (evaluated / "summary.json").write_text('{"the": "eval run"}\n')
        (evaluated / "results.md").write_text("# the eval run\n")
    before = _tree(evaluated)
    out = tmp_path / "ref"
    argv = ["eval", "reference", "--tasks", str(world), "--task", "shape_cls", "--records",
            str(world / "train" / "records.jsonl"), "--data-root", str(world), "--out", str(out), "--max-steps", "1",
            "--image-size", "16"]
    _refused([*argv, "--also", str(world), str(evaluated)], capsys, str(evaluated), "--overwrite")
    assert _tree(evaluated) == before and not out.exists()
    also = tmp_path / "also"
    assert main([*argv, "--also", str(world), str(also)]) == 0
    assert read_marker(also)["command"] == "eval reference" and (also / "summary.json").is_file()


def test_eval_reference_takes_its_unmarked_also_folder_of_an_earlier_version(tiny_world_dir, tmp_path, capsys):
    """An --also folder written before the command claimed them (no marker) is its own: a re-run is not refused."""
    from unime.outdir import MARKER_NAME, read_marker

    world = tiny_world_dir(0)
    also = tmp_path / "also"
    argv = ["eval", "reference", "--tasks", str(world), "--task", "shape_cls", "--records",
            str(world / "train" / "records.jsonl"), "--data-root", str(world), "--out", str(tmp_path / "ref"),
            "--max-steps", "1", "--image-size", "16", "--also", str(world), str(also)]
    assert main(argv) == 0
    (also / MARKER_NAME).unlink()  # as an earlier version left it
    (also / ".unime.lock").unlink()
    assert main(argv) == 0
    assert read_marker(also)["command"] == "eval reference"


# -- trainers whose embedder pools at <emb>: GRPO's --embedder, train embedder --pooling emb ---------------------

class _Loading(Exception):
    """A model's weights began to load: the run got past its checks and claimed its output folder."""


@pytest.mark.parametrize("command", ["reasoner grpo", "embedder"])
def test_a_run_refused_for_a_tokenizer_without_emb_claims_no_output(command, tiny_model_dir, tmp_path, capsys,
                                                                     monkeypatch):
    """Before, GRPO with an --embedder whose tokenizer lacks <emb> (and `train embedder --pooling emb` with such a
    --model) claimed --out and wrote checkpoints/, train_config.json / train_inputs.json before the embedder loaded
    and refused its pooling; the corrected run (an --embedder made by `unime reason add-emb`) was then refused as a
    run with other options (--embedder ...) without --overwrite. The pooling is checked from the tokenizer before
    the claim now."""
    import transformers

    from tests.train.helpers import trainer_argv

    plain, with_emb = tiny_model_dir("qwen2_vl"), tiny_model_dir("qwen2_vl", ("<emb>",))
    argv = trainer_argv(command, tmp_path, tiny_model_dir)
    option = "--embedder" if command == "reasoner grpo" else "--model"
    if command == "embedder":
        argv += ["--pooling", "emb"]
    at = argv.index(option) + 1
    argv[at] = plain
    new, empty = tmp_path / "new", tmp_path / "empty"
    empty.mkdir()
    errors = []
    for out in (new, empty):
        capsys.readouterr()
        assert main([*argv, "--out", str(out)]) == 2
        errors += _error_lines(capsys)
    assert not new.exists() and _tree(empty) == {}, (sorted(_tree(new)), sorted(_tree(empty)))
    assert len(errors) == 2 and all(f"{option} {plain!r}: pooling 'emb' needs the <emb> token" in e
                                    and "unime reason add-emb" in e for e in errors), errors

    def loading(cls, path, *args, **kwargs):
        raise _Loading(str(path))

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", classmethod(loading))
    argv[at] = with_emb
    for out in (new, empty):  # the corrected run: accepted, it goes on to load the model
        with pytest.raises(_Loading):
            main([*argv, "--out", str(out)])


def test_the_emb_check_reads_the_tokenizer_a_run_folder_loads_with(tiny_model_dir, tmp_path):
    """The check before the claim reads the tokenizer the load would: a trainer's run folder's merged/ (not the
    run folder itself, which holds none); a missing local folder is refused, naming it."""
    import shutil

    from unime.errors import ModelError
    from unime.models.embedder import check_emb_pooling

    for name, source in (("plain", tiny_model_dir("qwen2_vl")), ("emb", tiny_model_dir("qwen2_vl", ("<emb>",)))):
        shutil.copytree(source, tmp_path / name / "merged")
    check_emb_pooling(tmp_path / "emb")
    with pytest.raises(ModelError) as refused:
        check_emb_pooling(tmp_path / "plain", "--embedder")
    assert str(refused.value).startswith(f"--embedder {str(tmp_path / 'plain')!r}: pooling 'emb' needs the <emb> ")
    with pytest.raises(ModelError, match=r": no such folder \(the folder .* exists\)$"):  # at once, not at the load
        check_emb_pooling(tmp_path / "nope")
