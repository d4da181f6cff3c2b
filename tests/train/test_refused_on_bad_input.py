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

