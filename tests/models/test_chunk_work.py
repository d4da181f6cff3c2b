"""The work folder's record of the input lines of its rows (`unime.models.chunk_work`): what a resume does not check
again (`done_lines`) and what it checks after all (`checked_work`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unime.errors import DataError
from unime.models.chunk_work import KEY_FILE, ChunkWork, checked_work, done_lines, line_runs, work_folder


def _work(out, lines, key=None):
    return ChunkWork(out, "test", key or {"k": 1}, rows=len(lines), per_chunk=2, lines=lines)


def test_line_runs():
    assert line_runs([]) == []
    assert line_runs([1, 2, 3, 5, 7, 8]) == [[1, 3], [5, 5], [7, 8]]


def test_done_lines_are_those_of_the_chunks_found(tmp_path):
    out = tmp_path / "out.npy"
    assert done_lines(out) == frozenset()  # no work folder
    work = _work(out, [1, 2, 4, 5, 6])  # line 3 skipped
    work.open()
    work.save(0, np.zeros(2))
    work.save(2, np.zeros(1))
    assert done_lines(out) == {1, 2, 6}
    assert json.loads((work_folder(out) / KEY_FILE).read_text())["lines"] == [[1, 2], [4, 6]]
    (work_folder(out) / KEY_FILE).write_text(json.dumps({"key": "x", "chunks": 3}))  # an older unime's record
    assert done_lines(out) == frozenset()


def test_rows_on_other_lines_than_recorded_are_checked_before_the_work(tmp_path):
    """The same rows (same key) on other lines: a blank line 2 the killed run passed over was removed, so the row of
    line 3 (recorded done, in chunk 0) is now the row of line 2, and line 3 holds the first row of chunk 1, to do: its
    images were only looked up (line 3 is in `done_lines`), it is checked now; the record follows the new lines."""
    out = tmp_path / "out.npy"
    first = _work(out, [1, 3, 4, 5])
    first.open()
    first.save(0, np.zeros(2))
    done = done_lines(out)
    assert done == {1, 3}
    checked = []
    work, rows = checked_work([1, 2, 3, 4], lambda rows: _work(out, rows), line_of=lambda r: r, unchecked=done,
                              check=checked.append)
    assert checked == [3] and rows == [1, 2, 3, 4]
    assert work.open() == 1 and work.todo() == [1]
    assert done_lines(out) == {1, 2}


def test_discarded_chunks_are_checked_and_a_bad_row_skipped_or_raised(tmp_path):
    """Another key: the chunks found are not reused, every row of `unchecked` is checked; a bad one raises, or under
    the skip policy is left out and the work made again for the rows kept."""
    out = tmp_path / "out.npy"
    first = _work(out, [1, 2, 3])
    first.open()
    first.save(0, np.zeros(2))

    def check(row):
        if row == 2:
            raise DataError("bad image", source="f", record=f"line {row}")

    made = []

    def make(rows):
        made.append(list(rows))
        return _work(out, rows, key={"k": 2})

    with pytest.raises(DataError, match="line 2"):
        checked_work([1, 2, 3], make, line_of=lambda r: r, unchecked=done_lines(out), check=check)
    work, rows = checked_work([1, 2, 3], make, line_of=lambda r: r, unchecked=done_lines(out), check=check,
                              on_error="skip")
    assert rows == [1, 3] and made[-2:] == [[1, 2, 3], [1, 3]] and work.rows == 2
    checked = []
    same_key, _ = checked_work([1, 2, 3], lambda rows: _work(out, rows), line_of=lambda r: r,
                               unchecked=done_lines(out), check=checked.append)
    assert checked == [] and same_key.rows_todo() == [2]  # the chunks reused: nothing of them checked


def test_a_finished_run_is_recorded_for_its_key_and_its_output_as_written(tmp_path):
    """`finish(done_key=...)`: the chunks go, the key file stays with the record of the finished run; `finished_output`
    is true for the same command, key and output bytes only; a new key's work drops the record."""
    from unime.models.chunk_work import finished_output

    out = tmp_path / "out.jsonl"
    work = ChunkWork(out, "test", {"k": 1}, rows=3, per_chunk=2)
    work.open()
    work.save(0, np.zeros(2))
    work.save(1, np.zeros(1))
    assert not finished_output(out, "test", {"done": 1})  # nothing written yet
    out.write_text("rows\n")
    work.finish(done_key={"done": 1})
    assert sorted(p.name for p in work_folder(out).iterdir()) == [KEY_FILE]
    assert finished_output(out, "test", {"done": 1})
    assert not finished_output(out, "other", {"done": 1}) and not finished_output(out, "test", {"done": 2})
    out.write_text("rows edited\n")
    assert not finished_output(out, "test", {"done": 1})
    out.write_text("rows\n")
    assert finished_output(out, "test", {"done": 1})
    ChunkWork(out, "test", {"k": 2}, rows=3, per_chunk=2).open()  # another run's work starts: the record goes
    assert "finished" not in json.loads((work_folder(out) / KEY_FILE).read_text())
    assert not finished_output(out, "test", {"done": 1})


def test_a_finished_run_records_the_files_written_beside_its_output(tmp_path, caplog):
    """`finish(done_key=..., companions=...)`: the files written beside the output (`unime embed`'s OUT.lines.json,
    `unime judge`'s metrics and plot) are recorded too: one of them changed or removed since, the run is not finished;
    `finished_before` says so in the log, and is false under `overwrite` or without a key."""
    import logging

    from unime.models.chunk_work import finished_before, finished_output

    out, side = tmp_path / "out.npy", tmp_path / "out.npy.lines.json"
    work = ChunkWork(out, "test", {"k": 1}, rows=1, per_chunk=2)
    work.open()
    work.save(0, np.zeros(1))
    out.write_text("rows\n")
    side.write_text("[1]")
    work.finish(done_key={"done": 1}, companions=[side])
    assert finished_output(out, "test", {"done": 1})
    side.write_text("[2]")
    assert not finished_output(out, "test", {"done": 1})
    side.unlink()
    assert not finished_output(out, "test", {"done": 1})
    side.write_text("[1]")
    with caplog.at_level(logging.INFO, logger="unime"):
        assert not finished_before(out, "test", {"done": 1}, overwrite=True, again="works again")
        assert not finished_before(out, "test", None, overwrite=False, again="works again")
        assert "finished earlier" not in caplog.text
        assert finished_before(out, "test", {"done": 1}, overwrite=False, again="works again")
    assert caplog.messages == [f"{out}: this test run finished earlier (same options and inputs); nothing to do "
                               "(--overwrite works again)"]
