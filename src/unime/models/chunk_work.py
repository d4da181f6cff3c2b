"""The work folder of a long job that writes one file (`unime judge --pairs`, `unime embed`): the job runs in
chunks of a fixed size, each finished chunk is written atomically into a hidden folder beside the output,
`.NAME.unime-work/`, and a re-run of the same job reuses the chunks it finds there, so a run killed after hours
loses at most the chunk it was in. `unime mine` resumes its judge stage the same way (its shards, in its own
output folder: `unime.mining.stages.run_judge`); a single-file command has no folder of its own, hence this one.

Layout: `unime-work.json` (the key file: the command, the output's name, the job's key, the chunk count) and
`chunk-00000.npy`, ... A chunk is written with `unime.data.atomic.atomic_path`: a killed write leaves a
`.chunk-*.tmp-*` sibling, removed by the next run. `image_digests.tsv`: the sha1 of the input images the key was
computed from, by (path, size, mtime) (`unime.data.image_digests`, `work_digests`), written with the key file: the
re-run of a killed job computes its key without reading its images again (a changed image has another size or
mtime: it is read, and changes the key). A re-run with another key keeps it (its digests stay true).

A command reading an input file gives the line of each row (`lines=`), recorded in the key file: a re-run opens
only the images of the rows left to do (`done_lines`: the lines of the finished chunks, whose images are only looked
up; `checked_work`: those of them the work does after all, its key changed or its rows moved, checked before it).

The key is a digest (`unime.outdir.options_hash`) of what the results depend on — the inputs by content, the model
by its fingerprint, the options that change the numbers, the chunk size — chosen by the command. A re-run whose key
differs discards the chunks found (unime's own files only) and starts over. The folder is unime's when it holds the
key file (or nothing at all): a folder of that name without it is not touched, the command refuses it. When the
output is written the command calls `finish`: unime's files go, and the folder when they leave it empty; a command
that tells a finished run (`unime reason generate`, `unime embed`, `unime judge --pairs`) keeps the key file there,
recording it (`finish(done_key=...)`): the same run again, its output files unchanged, has nothing to do
(`finished_before`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Callable, Collection, Sequence, TypeVar

import numpy as np

from unime.data.atomic import atomic_open, atomic_path, warn_left
from unime.data.image_digests import ImageDigests
from unime.data.skips import ErrorPolicy, SkipReport
from unime.errors import DataError, UnimeError
from unime.outdir import options_hash

log = logging.getLogger(__name__)

WORK_SUFFIX = ".unime-work"
KEY_FILE = "unime-work.json"
DIGESTS_FILE = "image_digests.tsv"  # the input images' sha1, by (path, size, mtime): `work_digests`
_OWN = re.compile(r"chunk-\d{5,}\.npy")
_OWN_TMP = re.compile(r"\.(chunk-\d{5,}\.npy|" + re.escape(KEY_FILE) + "|" + re.escape(DIGESTS_FILE) + r")\.tmp-.+")


def work_folder(out: str | Path) -> Path:
    """`.NAME.unime-work` beside the output file NAME."""
    out = Path(out)
    return out.parent / f".{out.name}{WORK_SUFFIX}"


def work_digests(out: str | Path) -> ImageDigests:
    """The image digests of the job writing `out`, for its key (`unime.data.image_digests.digest_items`): those an
    earlier run of it left in its work folder (read only from unime's folder, one with the key file), saved there by
    the `ChunkWork` given them (`digests=`) with its key file and removed by its `finish`."""
    folder = work_folder(out)
    return ImageDigests(folder / DIGESTS_FILE, read=(folder / KEY_FILE).is_file() and not folder.is_symlink())


def _read_key(folder: Path) -> dict[str, Any] | None:
    """The key file of unime's work folder `folder`, None when there is none (or it is unreadable, or not unime's)."""
    if folder.is_symlink():
        return None
    try:
        data = json.loads((folder / KEY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class _EveryLine:
    """Every line number (`EVERY_LINE`)."""

    def __contains__(self, n: object) -> bool:
        return True


# the `files_only` of a reader that looks every image up and opens none (a finished run's key, `finished_before`)
EVERY_LINE = _EveryLine()


def finished_output(out: str | Path, command: str, done_key: dict[str, Any]) -> bool:
    """Whether an earlier run of `command` with `done_key` wrote `out` (and the companion files it recorded) and
    they are unchanged since (the record `ChunkWork.finish(done_key=...)` keeps): a re-run of it has nothing to do."""
    from unime.data.image_digests import file_sha1

    recorded = _read_key(work_folder(out))
    done = recorded.get("finished") if recorded is not None and recorded.get("command") == command else None
    if not isinstance(done, dict) or done.get("key") != options_hash(done_key) or not Path(out).is_file():
        return False
    companions = done.get("companions", {})
    if not isinstance(companions, dict) or not all((Path(out).parent / name).is_file() for name in companions):
        return False
    return done.get("output_sha1") == file_sha1(out) and all(
        sha == file_sha1(Path(out).parent / name) for name, sha in companions.items())


def finished_before(out: str | Path, command: str, done_key: dict[str, Any] | None, *, overwrite: bool,
                    again: str) -> bool:
    """`finished_output` unless `overwrite` (or no `done_key`: what the output depends on could not be told), logged:
    `OUT: this COMMAND run finished earlier (same options and inputs); nothing to do (--overwrite AGAIN)`."""
    if done_key is None or overwrite or not finished_output(out, command, done_key):
        return False
    log.info("%s: this %s run finished earlier (same options and inputs); nothing to do (--overwrite %s)", out,
             command, again)
    return True


def line_runs(lines: Sequence[int]) -> list[list[int]]:
    """`lines` as runs of consecutive numbers, [first, last] each (the key file's record of a million lines in a few
    numbers when few were skipped)."""
    runs: list[list[int]] = []
    for n in lines:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return runs


def _lines_of_runs(runs: Any) -> list[int] | None:
    if not isinstance(runs, list) or not all(isinstance(r, list) and len(r) == 2 and all(
            type(x) is int for x in r) and r[0] <= r[1] for r in runs):
        return None
    return [n for first, last in runs for n in range(first, last + 1)]


def done_lines(out: str | Path) -> frozenset[int]:
    """The input lines whose rows are in the chunks an earlier run of the job writing `out` finished (by the lines its
    key file records, `ChunkWork(lines=)`): a re-run looks their images up (`ImageChecker.check_files`) but opens
    none; `checked_work` checks those the work does after all. Empty without unime's work folder or its record."""
    folder = work_folder(out)
    recorded = _read_key(folder)
    if recorded is None:
        return frozenset()
    lines, per_chunk = _lines_of_runs(recorded.get("lines")), recorded.get("per_chunk")
    if lines is None or type(per_chunk) is not int or per_chunk < 1:
        return frozenset()
    done: set[int] = set()
    for i in range((len(lines) + per_chunk - 1) // per_chunk):
        if (folder / f"chunk-{i:05d}.npy").is_file():
            done.update(lines[i * per_chunk:(i + 1) * per_chunk])
    return frozenset(done)


Row = TypeVar("Row")


def checked_work(rows: list[Row], make_work: Callable[[list[Row]], "ChunkWork"], *, line_of: Callable[[Row], int],
                 unchecked: Collection[int], check: Callable[[Row], None], on_error: str = "raise",
                 skips: SkipReport | None = None, source: str | None = None) -> tuple["ChunkWork", list[Row]]:
    """The work of `rows` (`make_work(rows)`, not yet opened) once every row it will compute had its images checked:
    the rows of `unchecked` lines (`done_lines`: only looked up, as an earlier run finished them) that the work does
    after all (its key changed, or they moved to a chunk not done) are checked now by `check` (raising a `DataError`),
    before any is computed. Under `on_error="skip"` a bad one is left out (counted in `skips`) and the work made
    again for the rows kept. Returns (work, rows kept)."""
    unchecked = set(unchecked)
    while True:
        work = make_work(rows)
        late = [r for r in work.rows_todo() if line_of(rows[r]) in unchecked]
        if not late:
            return work, rows
        policy, bad = ErrorPolicy(on_error, skips, source or work.command), set()
        for r in late:
            unchecked.discard(line_of(rows[r]))
            try:
                check(rows[r])
            except DataError as e:
                policy.handle(e)
                bad.add(r)
        policy.finish()
        if not bad:
            return work, rows
        rows = [row for r, row in enumerate(rows) if r not in bad]


class ChunkWork:
    """The finished chunks of one job writing `out` (see the module doc): `rows` rows (pairs, items) cut in chunks of
    `per_chunk` (chunk `i` holds the rows of `span(i)`). `open()` before the work; `todo()`, the chunks left;
    `save(i, array)` as each finishes (a row per row); `load_all()` to assemble the output; `finish()` once it is
    written. `digests`: the `work_digests(out)` the key was computed with, kept in the folder with the key file;
    `lines`: the input line of each row, recorded in the key file for a re-run (`done_lines`)."""

    def __init__(self, out: str | Path, command: str, key: dict[str, Any], *, rows: int, per_chunk: int,
                 digests: ImageDigests | None = None, lines: Sequence[int] | None = None):
        self.out = Path(out)
        self.folder = work_folder(out)
        self.command = command
        self.digests = digests
        self.lines = lines
        self.rows, self.per_chunk = rows, per_chunk
        self.n_chunks = (rows + per_chunk - 1) // per_chunk
        self.key = options_hash({**key, "rows": rows, "per_chunk": per_chunk})

    def span(self, i: int) -> slice:
        """The rows of chunk `i`."""
        return slice(i * self.per_chunk, min(self.rows, (i + 1) * self.per_chunk))

    def path(self, i: int) -> Path:
        return self.folder / f"chunk-{i:05d}.npy"

    def _own_files(self) -> list[Path]:
        return [p for p in self.folder.iterdir()
                if p.name in (KEY_FILE, DIGESTS_FILE) or _OWN.fullmatch(p.name) or _OWN_TMP.fullmatch(p.name)]

    def open(self) -> int:
        """Re-enter the folder an earlier run left, if any; returns the number of chunks done before (logged when there
        are some). A folder of another key loses its chunks; one that is not unime's (no key file, not empty) is
        refused."""
        f = self.folder
        if f.is_symlink() or (f.exists() and not f.is_dir()):
            raise UnimeError(f"{f} is in the way: `unime {self.command}` keeps its finished chunks of {self.out.name} "
                             "in a folder of that name; move it away and run again")
        if f.is_dir():
            recorded = self._recorded()
            if recorded is None and any(f.iterdir()):
                raise UnimeError(f"{f} exists and is not unime's work folder (no {KEY_FILE}); `unime {self.command}` "
                                 f"keeps its finished chunks of {self.out.name} there: move it away and run again")
            if recorded is not None and recorded.get("key") != self.key:
                stale = [p for p in self._own_files() if p.name not in (KEY_FILE, DIGESTS_FILE)]
                log.info("%s: the inputs or options changed since the chunks in %s were written: %d discarded, "
                         "starting over", self.out, f, sum(1 for p in stale if _OWN.fullmatch(p.name)))
                for p in stale:
                    p.unlink(missing_ok=True)
                self._write_key()
            for p in f.iterdir():
                if _OWN_TMP.fullmatch(p.name):  # leftovers of a killed write
                    p.unlink(missing_ok=True)
            if recorded is not None and recorded.get("key") == self.key and self.lines is not None \
                    and recorded.get("lines") != line_runs(self.lines):  # the same rows on other lines (a line added)
                self._write_key()
            elif recorded is not None:
                self._save_digests()  # the images re-read (touched since), if any
        done = self.n_chunks - len(self.todo())
        if done:
            log.info("%s: resuming: %d of %d chunks done before (in %s)", self.out, done, self.n_chunks, f)
        return done

    def reuses(self) -> bool:
        """Whether `open()` will keep the chunks found: the folder is unime's and its key this work's."""
        recorded = _read_key(self.folder)
        return recorded is not None and recorded.get("key") == self.key

    def rows_todo(self) -> list[int]:
        """The rows `open()` then `todo()` leave to compute (before `open()`): all of them unless it `reuses()` the
        chunks found."""
        chunks = self.todo() if self.reuses() else range(self.n_chunks)
        return [r for i in chunks for r in range(self.rows)[self.span(i)]]

    def _write_key(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"command": self.command, "output": self.out.name, "key": self.key, "chunks": self.n_chunks}
        if self.lines is not None:
            record.update(per_chunk=self.per_chunk, lines=line_runs(self.lines))
        with atomic_open(self.folder / KEY_FILE) as fh:
            json.dump(record, fh, indent=1)
        self._save_digests()

    def _save_digests(self) -> None:
        """The image digests the key was computed with, into the folder (if any were read: none for text only)."""
        if self.digests is not None and self.digests.cache_file == self.folder / DIGESTS_FILE:
            self.digests.save()

    def _recorded(self) -> dict[str, Any] | None:
        return _read_key(self.folder)

    def todo(self) -> list[int]:
        return [i for i in range(self.n_chunks) if not self.path(i).is_file()]

    def save(self, i: int, values: np.ndarray) -> None:
        """Chunk `i` done: written atomically (the folder appears with the first chunk: a run that fails before it
        finished one leaves nothing beside the output)."""
        if not (self.folder / KEY_FILE).is_file():
            self._write_key()
        with atomic_path(self.path(i)) as tmp:
            with open(tmp, "wb") as fh:  # np.save on a file object: no ".npy" appended to the temporary name
                np.save(fh, values)

    def load(self, i: int) -> np.ndarray:
        """Chunk `i`'s values, one row per row of its `span`."""
        path = self.path(i)
        rows = len(range(self.rows)[self.span(i)])
        try:
            values = np.load(path)
        except (OSError, ValueError) as e:
            raise UnimeError(f"{path}: unreadable chunk ({e}); remove it and run again (it is redone)") from None
        if len(values) != rows:
            raise UnimeError(f"{path}: {len(values)} rows, chunk {i} has {rows}; remove it and run again")
        return values

    def load_all(self) -> np.ndarray:
        """Every chunk's values, in order (all done)."""
        return np.concatenate([self.load(i) for i in range(self.n_chunks)])

    def finish(self, *, done_key: dict[str, Any] | None = None, companions: Sequence[str | Path] = ()) -> None:
        """The output is written: remove unime's files of the folder, then the folder when that leaves it empty.
        With `done_key` (what the output depends on, as `finished_output` is asked before the work), the key file
        stays, recording the finished run (`done_key`'s digest and the SHA-1 of the output and of the `companions`
        written beside it), with the image digests: a re-run of the same job finds its output finished without
        reading an unchanged image again."""
        if done_key is not None:
            from unime.data.image_digests import file_sha1

            self.folder.mkdir(parents=True, exist_ok=True)
            for p in self._own_files():
                if p.name not in (KEY_FILE, DIGESTS_FILE):
                    p.unlink(missing_ok=True)
            finished = {"key": options_hash(done_key), "output_sha1": file_sha1(self.out)}
            if companions:
                finished["companions"] = {Path(c).name: file_sha1(c) for c in companions}
            record = {"command": self.command, "output": self.out.name, "key": self.key, "chunks": self.n_chunks,
                      "finished": finished}
            with atomic_open(self.folder / KEY_FILE) as fh:
                json.dump(record, fh, indent=1)
            self._save_digests()
            return
        if not self.folder.is_dir():
            return
        for p in self._own_files():
            p.unlink(missing_ok=True)
        left = sorted(p.name for p in self.folder.iterdir())
        if left:
            warn_left(self.folder, left, f"(not unime's: the finished chunks of {self.out.name} were removed)")
            return
        self.folder.rmdir()
