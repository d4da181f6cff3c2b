"""A training command refused for its input (a malformed records file, a missing image) writes nothing into --out:
the records are read and checked before the run writes its config, its input fingerprints or its checkpoints
folder, so that the claimed folder holds nothing of the run and goes (a new --out) or keeps its marker (a folder
taken with --overwrite). Before, `train reasoner --stage grpo` wrote `train_config.json`, `train_inputs.json` and
`checkpoints/` first, and left them in a half-made folder."""

from __future__ import annotations

import json

import pytest

from tests.train.helpers import trainer_argv as _argv

TRAINERS = ["embedder", "reranker", "judge", "reasoner sft", "reasoner grpo"]
BAD_LINE = '{"id": "broken", "query": {"text": "unfinished"\n'


def _missing_image(value):
    """`value` (a parsed record) with every image path pointing to a file that does not exist."""
    if isinstance(value, dict):
        return {k: _missing_image(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_missing_image(v) for v in value]
    return "nope.png" if isinstance(value, str) and value.endswith(".png") else value


def _break_records(argv: list[str], bad: str) -> str:
    """Spoil the run's records (or T-CoTs) file: a malformed line appended, or the images of its first record with
    images made missing; returns its path."""
    flag = "--tcots" if "--tcots" in argv else "--records"
    path = argv[argv.index(flag) + 1]
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    if bad == "malformed":
        lines.append(BAD_LINE.strip())
    else:  # the first line with an image
        first = next(i for i, line in enumerate(lines) if ".png" in line)
        lines[first] = json.dumps(_missing_image(json.loads(lines[first])))
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


EXPECTED = {"malformed": "malformed JSON", "missing image": "nope.png"}


def _error_line(capsys) -> str:
    errors = [line for line in capsys.readouterr().err.splitlines() if "unime: error:" in line]
    assert len(errors) == 1, errors
    return errors[0]


@pytest.mark.parametrize("bad", sorted(EXPECTED))
@pytest.mark.parametrize("trainer", TRAINERS)
def test_bad_records_leave_no_output_folder(trainer, bad, tmp_path, tiny_model_dir, capsys):
    pytest.importorskip("trl")
    from unime.cli import main

    argv = _argv(trainer, tmp_path, tiny_model_dir)
    path = _break_records(argv, bad)
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 2
    error = _error_line(capsys)  # one line naming the file and what is wrong
    assert path in error and EXPECTED[bad] in error, error
    assert not out.exists(), sorted(p.name for p in out.iterdir())


@pytest.mark.parametrize("trainer", TRAINERS)
def test_bad_records_leave_another_commands_folder_as_it_was(trainer, tmp_path, tiny_model_dir, capsys):
    """With --overwrite on a folder another unime command made, a run refused for its records leaves the folder's
    marker as it was (before, it stayed re-marked as this command's) and writes nothing there."""
    pytest.importorskip("trl")
    from unime.cli import main
    from unime.outdir import claim

    argv = _argv(trainer, tmp_path, tiny_model_dir)
    _break_records(argv, "missing image")
    other = tmp_path / "other"
    with claim(other, "data synth"):
        (other / "notes.txt").write_text("mine")

    def snapshot():
        return {p.name: p.read_bytes() for p in sorted(other.iterdir())}

    before = snapshot()
    assert main([*argv, "--out", str(other), "--overwrite"]) == 2
    assert "nope.png" in _error_line(capsys)
    assert snapshot() == before


@pytest.mark.parametrize("trainer, what", [("embedder", "no usable training records"),
                                           ("reranker", "no training examples"), ("judge", "no training examples")])
def test_an_empty_records_file_is_refused_saying_it_is_empty(trainer, what, tmp_path, tiny_model_dir, capsys):
    """QA: `train embedder` on an empty records file (or one of blank lines) said "no usable training records",
    silent on why, and `train reranker` / `train judge` said "no training examples"; each now says the file is
    empty, in `data check`'s words (bc5e167)."""
    from unime.cli import main

    argv = _argv(trainer, tmp_path, tiny_model_dir)
    path = argv[argv.index("--records") + 1]
    for text in ("", "\n  \n"):
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        out = tmp_path / "out"
        assert main([*argv, "--out", str(out)]) == 2
        assert _error_line(capsys) == f"unime: error: {path}: {what} (the file is empty): " \
            "give the file that holds your records"
        assert not out.exists()


@pytest.mark.parametrize("trainer", ["embedder", "reranker", "judge", "reasoner grpo"])
def test_every_record_skipped_shows_what_was_skipped_before_its_error(trainer, tmp_path, tiny_model_dir, capsys):
    """QA: `unime train reranker --on-error skip` on records every one of which was skipped (their images missing,
    or no negatives) said only 'no training examples' (the embedder: 'no usable training records'), the reasons
    lost with the run; GRPO's 'fewer than pairs_per_batch' was a ValueError's traceback. Now the skip report is shown
    before the one error line, as `unime embed` and `judge` show theirs."""
    pytest.importorskip("trl")
    from unime.cli import main

    argv = _argv(trainer, tmp_path, tiny_model_dir)
    flag = "--tcots" if "--tcots" in argv else "--records"
    path = argv[argv.index(flag) + 1]
    with open(path, encoding="utf-8") as fh:
        lines = [json.dumps(_missing_image(json.loads(line))) for line in fh.read().splitlines() if line.strip()]
    assert all("nope.png" in line for line in lines)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out), "--on-error", "skip"]) == 2
    captured = capsys.readouterr()
    assert f"skipped {len(lines)} record(s)" in captured.out and "nope.png" in captured.out, captured.out
    assert path in _error_line_of(captured.err) and not out.exists()


def _error_line_of(err: str) -> str:
    errors = [line for line in err.splitlines() if "unime: error:" in line]
    assert len(errors) == 1, errors
    return errors[0]


def test_reasoner_sft_with_every_t_cot_line_skipped_is_one_error_line_before_the_model_loads(
        tmp_path, tiny_model_dir, capsys, monkeypatch):
    """QA: `unime train reasoner --stage sft --on-error skip` on a T-CoT file none of whose lines could be read loaded
    the model, then ended in a ValueError traceback ('no usable T-CoT rows (0 skipped)'). Now the skip report, then
    one error line naming the file, before the model loads."""
    pytest.importorskip("trl")
    from unime.cli import main
    from unime.models import loading

    argv = _argv("reasoner sft", tmp_path, tiny_model_dir)
    path = argv[argv.index("--tcots") + 1]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(BAD_LINE.strip() + "\n" + BAD_LINE.strip() + "\n")
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out), "--on-error", "skip"]) == 2
    captured = capsys.readouterr()
    assert "skipped 2 record(s)" in captured.out and "malformed JSON" in captured.out, captured.out
    assert "no usable T-CoT rows" in _error_line_of(captured.err) and path in _error_line_of(captured.err)
    assert not out.exists()
