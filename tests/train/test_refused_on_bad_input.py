"""A training command refused for its input (a malformed records file) writes nothing into --out: the records are
read and checked before the run writes its config, its input fingerprints or its checkpoints folder, so that the
claimed folder holds nothing of the run and goes (a new --out) or keeps its marker (a folder taken with
--overwrite). Before, `train reasoner --stage grpo` wrote `train_config.json`, `train_inputs.json` and
`checkpoints/` first, and left them in a half-made folder."""

from __future__ import annotations

import pytest

from tests.train.helpers import trainer_argv as _argv

BAD_LINE = '{"id": "broken", "query": {"text": "unfinished"\n'


def _break_records(argv: list[str]) -> str:
    """Append a malformed line to the run's records (or T-CoTs) file; returns its path."""
    flag = "--tcots" if "--tcots" in argv else "--records"
    path = argv[argv.index(flag) + 1]
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(BAD_LINE)
    return path


@pytest.mark.parametrize("trainer", ["reasoner grpo"])
def test_malformed_records_leave_no_output_folder(trainer, tmp_path, tiny_model_dir, capsys):
    pytest.importorskip("trl")
    from unime.cli import main

    argv = _argv(trainer, tmp_path, tiny_model_dir)
    path = _break_records(argv)
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "unime: error:" in line]
    assert len(errors) == 1 and path in errors[0] and "malformed JSON" in errors[0], errors  # one line naming it
    assert not out.exists(), sorted(p.name for p in out.iterdir())


@pytest.mark.parametrize("trainer", ["reasoner grpo"])
def test_malformed_records_leave_another_commands_folder_as_it_was(trainer, tmp_path, tiny_model_dir, capsys):
    """With --overwrite on a folder another unime command made, a run refused for its records leaves the folder's
    marker as it was (before, it stayed re-marked as this command's) and writes nothing there."""
    pytest.importorskip("trl")
    from unime.cli import main
    from unime.outdir import claim

    argv = _argv(trainer, tmp_path, tiny_model_dir)
    _break_records(argv)
    other = tmp_path / "other"
    with claim(other, "data synth"):
        (other / "notes.txt").write_text("mine")

    def snapshot():
        return {p.name: p.read_bytes() for p in sorted(other.iterdir())}

    before = snapshot()
    assert main([*argv, "--out", str(other), "--overwrite"]) == 2
    assert "malformed JSON" in capsys.readouterr().err
    assert snapshot() == before
