"""Output folders are owned: a command writes only into a folder it created (or was allowed to take),
and deletes or replaces only what it wrote there. One OS lock per folder keeps two runs apart.

Every command that writes an output folder claims it first (`claim`, done by the CLI for each such
command):

- the folder is missing or empty: it is created and marked as the command's (an ownership marker
  `.unime-output.json`: command, unime version, options hash, the entries that were there before, and, for a
  command-line run, its `provenance`: the recipe, the config file with its SHA-256, each option's layer and
  value; a resumable command's later runs into the folder, where they differ, under `provenance_resumes`:
  `run_provenance_keys`);
- it holds the marker of the same command: a re-run (resume / a finished run: the command decides);
- it holds another command's marker, or is unmarked and not empty: refused, naming the folder and
  `--overwrite`. With `--overwrite` the command takes the folder; the entries found in it are listed
  in the marker as `preexisting`: replaced only when the command writes the same name, never deleted.

A run that fails before it wrote anything into the folder leaves it as the claim found it
(`OwnedFolder.undo_if_unused`, done by the CLI and on leaving a `with claim(...)` block with an error): a
folder the claim created goes, and a folder that was there keeps the marker it had (none, another
command's, or this command's earlier one), so that a run refused for its input marks no folder as its own.

`may_replace(folder, name)` is what a stage asks before it deletes or replaces an entry it finds (the
mining judge stage, a trainer's final folders): yes for entries the command wrote itself, for a
pre-existing entry only under `--overwrite`. `remove_owned` (`unime demo --fresh`) deletes exactly
the entries of the command's own layout that it wrote (inside its folders, the files it recorded writing); any
other entry stays.

The lock is an `fcntl.flock` on `.unime.lock` in the folder, held for the whole run and released by
the OS when the process ends, even by kill -9; a second run on the folder fails at once with the
holder's pid.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection

from unime.errors import UnimeError
from unime.options import as_given

MARKER_NAME = ".unime-output.json"
LOCK_NAME = ".unime.lock"
_OWN_FILES = (MARKER_NAME, LOCK_NAME)


class FolderNotOwned(UnimeError):
    """The output folder holds files this command did not write."""


class FolderInUse(UnimeError):
    """Another run holds the output folder's lock."""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("unime")
    except Exception:  # noqa: BLE001 - an uninstalled source tree
        return "0+unknown"


def options_hash(options: dict[str, Any]) -> str:
    """A stable digest of a command's options (what the marker records)."""
    return hashlib.sha1(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_marker(folder: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(folder) / MARKER_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # unreadable: treated as no marker (the folder is then not ours)
    return data if isinstance(data, dict) and "command" in data else None


def run_provenance_keys(before: dict[str, Any] | None, command: str, provenance: dict[str, Any] | None,
                        hashed: str, *, overwrite: bool, resumable: bool) -> dict[str, Any]:
    """The marker's (or a sidecar's) `provenance` keys for a run of `command` with options hash `hashed`, whose
    output held the marker `before`. A new output, another command's, a command that rewrites its output whole
    (not `resumable`) and a re-run with other options under `overwrite` (it starts over) record this run's
    `provenance` alone. A resumable command's re-run keeps the first run's `provenance` (what the output was begun
    with) and, where this run differs from the run before it (in its options hash, recipe, config file or an option's
    layer or value), adds its provenance with its `options_hash` to `provenance_resumes`: the marker does not claim
    that the output was made by the last command line alone."""
    if provenance is None:
        return {}
    ours = before is not None and before.get("command") == command and isinstance(before.get("provenance"), dict)
    if not ours or not resumable or (overwrite and before.get("options_hash") != hashed):
        return {"provenance": provenance}
    resumes = list(before.get("provenance_resumes") or [])
    previous = resumes[-1] if resumes else {**before["provenance"], "options_hash": before.get("options_hash")}
    entry = {**provenance, "options_hash": hashed}
    if entry != previous:
        resumes.append(entry)
    return {"provenance": before["provenance"], **({"provenance_resumes": resumes} if resumes else {})}


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in _OWN_FILES)


def _write_marker(folder: Path, data: dict[str, Any]) -> None:
    tmp = folder / f".{MARKER_NAME}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MARKER_NAME)


def _flag(option: str) -> str:
    """The command-line flag of the output option `option` (a field: `out`, `out_dir`): `--out`, `--out-dir`."""
    return "--" + option.replace("_", "-")


def _refusal(folder: Path, command: str, marker: dict[str, Any] | None, option: str = "out") -> FolderNotOwned:
    if marker is None:
        why = "is not empty and was not written by unime"
    else:
        why = f"was written by `unime {marker.get('command')}`, not `unime {command}`"
    out, overwrite = as_given(_flag(option), option), as_given("--overwrite", "overwrite=True")
    return FolderNotOwned(f"output folder {folder} {why}; refusing to write into it (its files could be replaced). "
                          f"Choose another {out}, or pass {overwrite} to let this command replace what it writes there")


def check_claim(folder: str | os.PathLike, command: str, *, overwrite: bool = False,
                adopts: Callable[[Path], bool] | None = None, option: str = "out") -> None:
    """Raise `FolderNotOwned` if `command` may not write into `folder` (read-only check). `adopts`
    recognises an unmarked folder as the command's own output from before it wrote markers (see `claim`).
    `option`: the option naming the folder (`out`, `out_dir`: the refusal names it, or its flag on the command
    line)."""
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise FolderNotOwned(f"output folder {folder} exists and is not a folder")
    marker = read_marker(folder)
    if overwrite or (marker is not None and marker.get("command") == command):
        return
    if marker is None and (not _entries(folder) or (adopts is not None and adopts(folder))):
        return
    raise _refusal(folder, command, marker, option)


@dataclass
class OwnedFolder:
    """A claimed output folder, locked until `release()` (or the end of the process)."""

    path: Path
    command: str
    marker: dict[str, Any]
    _lock_fd: int | None = field(default=None, repr=False)
    created: bool = False  # this claim created the folder
    # a folder that was there: its marker as it was (None: unmarked), whether it held the lock file, and what it
    # held once claimed (`_contents`), so that a run that fails before writing anything leaves it as it was
    _marker_before: bytes | None = field(default=None, repr=False)
    _lock_before: bool = field(default=True, repr=False)
    _lock_content: tuple | None = field(default=None, repr=False)  # the lock file's bytes and times as found
    _contents: list | None = field(default=None, repr=False)
    _restored: bool = field(default=False, repr=False)

    def may_replace(self, name: str) -> bool:
        return _may_replace(self.marker, name)

    def undo_if_unused(self) -> bool:
        """After a failed run (call before `release`): leave the folder as the claim found it when the run wrote
        nothing into it — a folder this claim created is removed (`discard_if_unused`); in a folder that was there
        (another command's, taken with --overwrite, or this command's own), the marker this claim wrote is put
        back as it was (removed, in a folder that had none) and the lock file gets back the pid it held, so that a
        run refused for its input does not mark the folder as its own. True when the folder was left as found."""
        if self.created:
            return self.discard_if_unused()
        if self._lock_fd is None or self._contents is None or _contents(self.path) != self._contents:
            return False
        try:
            if self._marker_before is None:
                (self.path / MARKER_NAME).unlink(missing_ok=True)
            else:
                tmp = self.path / f".{MARKER_NAME}.tmp-{os.getpid()}"
                tmp.write_bytes(self._marker_before)
                os.replace(tmp, self.path / MARKER_NAME)
            if not self._lock_before:  # removed while still held, then unlocked (see `_lock_path`)
                (self.path / LOCK_NAME).unlink(missing_ok=True)
            elif self._lock_content is not None:  # the pid of the run that wrote the folder, not this one's
                data, times = self._lock_content
                os.ftruncate(self._lock_fd, 0)
                os.pwrite(self._lock_fd, data, 0)
                os.utime(self.path / LOCK_NAME, ns=times)
        except OSError:
            return False
        self._restored = True
        return True

    def discard_if_unused(self) -> bool:
        """After a failed run (call before `release`): remove the folder this claim created when it holds
        nothing but the marker and the lock, so that a usage or data error found before any output was
        written leaves no folder behind. True when it was removed."""
        if not self.created or self._lock_fd is None:
            return False
        try:
            if _entries(self.path):
                return False
            for name in _OWN_FILES:
                (self.path / name).unlink(missing_ok=True)
            self.path.rmdir()
        except OSError:
            return False
        return True

    def release(self) -> None:
        """Unlock; re-write the marker if the command replaced the whole folder (and with it the marker)."""
        if not self._restored and self.path.is_dir() and read_marker(self.path) is None:
            with contextlib.suppress(OSError):
                _write_marker(self.path, self.marker)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None
            if _HELD.get(self.path.resolve()) is self:
                del _HELD[self.path.resolve()]

    def __enter__(self) -> "OwnedFolder":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            self.undo_if_unused()
        self.release()


# a folder with more entries than this is not compared after a failed run (`OwnedFolder.undo_if_unused`): the
# marker a failed run wrote there stays
_CONTENTS_LIMIT = 100_000


def _contents(folder: Path) -> list | None:
    """What `folder` holds, for telling whether a run wrote into it: every entry below it (the marker and the
    lock excepted) with its kind, inode (a file replaced whole is another), size and modification time; None when
    it holds more than `_CONTENTS_LIMIT`."""
    found: list = []
    try:
        for root, dirs, files in os.walk(folder):
            for name in sorted(dirs) + sorted(files):
                path = Path(root, name)
                if root == str(folder) and name in _OWN_FILES:
                    continue
                st = path.lstat()
                found.append((str(path.relative_to(folder)), st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns))
                if len(found) > _CONTENTS_LIMIT:
                    return None
    except OSError:
        return None
    return sorted(found)


def _lock(folder: Path, option: str = "out") -> int:
    return _lock_path(folder / LOCK_NAME, f"output folder {folder}",
                      f"choose another {as_given(_flag(option), option)}")


def _holder(fd: int) -> tuple[str, str]:
    """The pid and host a lock file names (its first and second lines; "unknown" where it names none)."""
    lines = os.pread(fd, 256, 0).decode("ascii", "replace").splitlines()
    return (lines[0].strip() if lines and lines[0].strip() else "unknown",
            lines[1].strip() if len(lines) > 1 and lines[1].strip() else "unknown")


def _lock_path(path: Path, what: str, alternative: str, *,
               wait: Callable[[str, str], None] | None = None) -> int:
    """An exclusive `flock` on `path` (created if missing) with this pid and host written in it; `FolderInUse`
    naming the holder's pid when another process holds it, or with `wait`: `wait(pid, host)` of the holder, once,
    then blocks until the holder releases it (the OS releases the lock of a killed holder). A lock file may be
    removed by its holder (single-file outputs remove theirs): a lock won on a file that was unlinked meanwhile is
    retried."""
    import fcntl
    import socket

    waited = False
    for _ in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                os.close(fd)
                raise
            pid, host = _holder(fd)
            if wait is None:
                os.close(fd)
                raise FolderInUse(f"{what} is in use by another unime run (pid {pid}); wait for it to finish or "
                                  f"{alternative}") from None
            try:
                if not waited:
                    wait(pid, host)
                    waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n{socket.gethostname()}\n".encode(), 0)
            return fd
        os.close(fd)  # its holder removed it as we opened it: lock the new one
    raise FolderInUse(f"{what}: could not take its lock {path}")


def left_unwritable(path: str | os.PathLike) -> bool:
    """The lock file `path` (`file_lock_path`) is one no run holds (a killed run left it) and this process may not
    write (a read-only cache, shared on a cluster): `waiting_lock` could not take it, and nobody is at work on what
    it guards, so a reader of that may go without it. False when it can be written (the lock is taken the usual way,
    which removes the file), when a run holds it, and when it cannot be read either."""
    import fcntl

    try:
        os.close(os.open(path, os.O_RDWR))
        return False
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # only while the holder's exclusive lock is not held
    except OSError:
        return False
    finally:
        os.close(fd)  # and the shared lock with it
    return True


@contextlib.contextmanager
def waiting_lock(path: str | os.PathLike, what: str, wait: Callable[[str, str], None]):
    """Hold the lock file `path` (`.NAME.unime-lock` beside what it guards, `file_lock_path`) for the `with`
    block, waiting for its holder when another run holds it (`wait(pid, host)` is called once first); the file is
    removed at the end. For work that two runs may both want done once (a pretrained model cached per machine):
    the second run waits, then finds the first one's result."""
    path = Path(path)
    fd = _lock_path(path, what, "", wait=wait)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # removed while still held, then unlocked (see `_lock_path`)
            path.unlink()
        os.close(fd)


# folders this process holds: a nested claim (the CLI claims, then the stage function it calls claims
# again) re-enters the outer one instead of locking against itself
_HELD: dict[Path, "OwnedFolder"] = {}


def claim(folder: str | os.PathLike, command: str, options: dict[str, Any] | None = None, *,
          overwrite: bool = False, adopts: Callable[[Path], bool] | None = None, option: str = "out",
          provenance: dict[str, Any] | None = None, resumable: bool = False) -> OwnedFolder:
    """Create or take `folder` for `command` (see the module doc), locked. Raises `FolderNotOwned` or
    `FolderInUse`; writes nothing into a folder it refuses. Re-entrant within a process for the same
    command (the inner claim is a no-op handle). An unmarked folder that `adopts(folder)` recognises as
    the command's own output, written before the command claimed its folders (an index folder), is
    taken as the command's: nothing in it counts as pre-existing; `adopts` may raise to refuse a folder.
    `option`: the option naming the folder, as the refusals name it (`check_claim`). `provenance`: where the
    run's options came from (`unime.cli.run_provenance`), recorded in the marker beside the options hash (not in
    it: the hash is of the values alone); `resumable`: the command continues the run it finds in the folder (a
    re-run keeps the first run's provenance: `run_provenance_keys`)."""
    folder = Path(folder)
    held = _HELD.get(folder.resolve()) if folder.exists() else None
    if held is not None and held._lock_fd is not None:
        if held.command != command:
            raise FolderInUse(f"output folder {folder} is in use by `unime {held.command}` in this process")
        return OwnedFolder(held.path, command, held.marker, None)
    if adopts is not None and folder.is_dir() and read_marker(folder) is None:
        adopts(folder)  # it may refuse the folder outright (even under --overwrite), before anything is written
    check_claim(folder, command, overwrite=overwrite, adopts=adopts, option=option)
    created = not folder.exists()
    lock_before = (folder / LOCK_NAME).exists()
    try:
        st = (folder / LOCK_NAME).stat()
        lock_content = ((folder / LOCK_NAME).read_bytes(), (st.st_atime_ns, st.st_mtime_ns))
    except OSError:
        lock_content = None
    folder.mkdir(parents=True, exist_ok=True)
    fd = _lock(folder, option)
    try:
        # again, now no other run can change it
        check_claim(folder, command, overwrite=overwrite, adopts=adopts, option=option)
        try:
            marker_before = (folder / MARKER_NAME).read_bytes() if not created else None
        except FileNotFoundError:
            marker_before = None
        old = read_marker(folder)
        if old is not None and old.get("command") == command:
            preexisting = list(old.get("preexisting", []))
        elif old is None and adopts is not None and adopts(folder):
            preexisting = []
        else:  # new, or taken with --overwrite: whatever is there now is not ours
            preexisting = _entries(folder)
        marker = {"command": command, "unime_version": _version(), "options_hash": options_hash(options or {}),
                  "preexisting": preexisting, "overwrite": bool(overwrite),
                  "created": (old or {}).get("created") if old and old.get("command") == command else
                  time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        marker.update(run_provenance_keys(old, command, provenance, marker["options_hash"], overwrite=overwrite,
                                          resumable=resumable))
        _write_marker(folder, marker)
        _clean_stale_temporaries(folder, keep=set(preexisting))
        contents = None if created else _contents(folder)
    except BaseException:
        os.close(fd)
        raise
    owned = OwnedFolder(folder, command, marker, fd, created=created, _marker_before=marker_before,
                        _lock_before=lock_before, _lock_content=lock_content, _contents=contents)
    _HELD[folder.resolve()] = owned
    return owned


def is_main_process() -> bool:
    """This process is the first of a torchrun / accelerate group (`RANK` 0), or runs alone: the one process
    that owns a run's output folder and writes into it."""
    return int(os.environ.get("RANK", "0") or 0) == 0


@contextlib.contextmanager
def claim_on_main_process(folder: str | os.PathLike, command: str, options: dict[str, Any] | None = None, *,
                          overwrite: bool = False):
    """`claim` the folder in the main process (`is_main_process`) for the `with` block, and release it
    after; yields the `OwnedFolder`, or None in the other processes of a group: they share the main
    process's folder (its lock would refuse them)."""
    owned = claim(folder, command, options, overwrite=overwrite) if is_main_process() else None
    try:
        yield owned
    except BaseException:
        if owned is not None:  # a run that failed before writing anything leaves the folder as it was
            owned.undo_if_unused()
        raise
    finally:
        if owned is not None:
            owned.release()


def _clean_stale_temporaries(folder: Path, keep: set[str]) -> None:
    """Remove the temporary siblings a killed atomic write leaves (`.NAME.tmp-*`, `.NAME.old-*`), for
    entries this folder's owner writes."""
    for p in folder.iterdir():
        if p.name in keep or p.name in _OWN_FILES:
            continue
        if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()


def _may_replace(marker: dict[str, Any] | None, name: str) -> bool:
    if marker is None:
        return False
    if name in marker.get("preexisting", []):
        return bool(marker.get("overwrite"))
    return True


def may_replace(folder: str | os.PathLike, name: str) -> bool:
    """May the owner of `folder` delete or replace its entry `name`? False in an unmarked folder."""
    return _may_replace(read_marker(folder), name)


def require_replaceable(folder: str | os.PathLike, name: str) -> None:
    """Raise `FolderNotOwned` unless `folder/name` is missing or may be replaced (see `may_replace`)."""
    path = Path(folder) / name
    if path.exists() or path.is_symlink():
        if not may_replace(folder, name):
            raise FolderNotOwned(f"{path} was not written by this command; refusing to replace it. Move it away, "
                                 f"or pass {as_given('--overwrite', 'overwrite=True')} to let the command replace it")


def remove_entry(path: Path) -> None:
    """Delete a file, a symlink (not what it points to) or a folder tree."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def remove_owned(folder: str | os.PathLike, command: str, own: Collection[str], *,
                 overwrite: bool = False, clear: Callable[[Path], None] | None = None) -> list[str]:
    """Delete what `command` wrote in `folder`: its entries named in `own` (the command's layout: the folders
    and files it writes there) that are not listed as pre-existing (with `overwrite`, in a folder it does not
    own: every entry named in `own`). Every other entry stays (a file the user added after the folder was
    claimed is not in the marker either) and is named in a warning; the marker and lock stay. With `clear`, a
    folder of `own` is not deleted whole: `clear(path)` deletes what the command recorded writing inside it (and
    names what it left). Returns the removed names (a cleared folder's when nothing was left in it)."""
    folder = Path(folder)
    if not folder.exists():
        return []
    check_claim(folder, command, overwrite=overwrite)
    marker = read_marker(folder)
    ours = marker is not None and marker.get("command") == command
    preexisting = set(marker.get("preexisting", [])) if ours else set()
    removed, left = [], []
    for name in _entries(folder):
        if name in preexisting:
            continue
        if name not in own:
            if not name.startswith("."):
                left.append(name)
            continue
        path = folder / name
        if clear is not None and path.is_dir() and not path.is_symlink():
            clear(path)
            if path.exists():
                continue
        else:
            remove_entry(path)
        removed.append(name)
    if left:
        logging.getLogger(__name__).warning("%s: left as they were (not written by `unime %s`): %s", folder, command,
                                            ", ".join(left))
    return removed


# -- single-file outputs ---------------------------------------------------------------------------------
# A command whose output is one file (`unime judge --out scores.jsonl`, `unime embed --out x.npy`, `unime
# reason teacher|generate|materialize --out`, `unime data convert IN OUT`) keeps its ownership record in a
# hidden sidecar beside it, `.NAME.unime-output.json`: the command, the options hash, the `provenance` (as a
# folder's marker) and, per file it writes (the output and its companions, e.g. `NAME.metrics.json`), the SHA-1
# of what it wrote. An existing file is replaced only when the sidecar says this command wrote exactly its
# current content (a re-run), or under `--overwrite`. The sidecar is written before the work, listing the files still to
# be written as pending (null; a file it wrote before keeps its SHA-1 until replaced). Just before the run renames a
# finished file into place (`unime.data.atomic.atomic_path`, `before_replace`), the sidecar records that file's
# SHA-1 under `placing`; `commit` then records every file it wrote and drops `placing`.
#
# A run killed between a rename and its commit leaves a pending entry and the file it put there: the re-run of the
# same command replaces that file, as that run's output, when its content is what `placing` recorded (one line
# says so). A pending entry alone does not make a file the command's: the claim found no file there (one that was,
# and was not the command's, was refused before the pending entry was written), but a run killed before its rename
# leaves the same pending entry with no file, and a file the user saves there after the kill would then pass for
# the run's. `placing` is written by the run holding the output's lock, after the claim and before the rename:
# a file found with that content is the one the run put there (or a byte-identical one, which replacing does not
# lose); a file saved after the kill has other content, and is replaced only under `--overwrite`. A file left by
# an interrupted run of another command is refused, naming that command. A run that fails before it wrote any of
# its files (refused for its input) puts the sidecar back as it found it and removes the folders it made for the
# output. A killed run's lock file (`.NAME.unime-lock`, its pid dead) is taken over and removed by the next run.

FILE_MARKER_SUFFIX = ".unime-output.json"
FILE_LOCK_SUFFIX = ".unime-lock"  # `.NAME.unime-lock`: held (flock) for the run, removed at its end


class FileNotOwned(FolderNotOwned):
    """An output file exists that this command did not write (or that was changed since)."""


def file_marker_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.parent / f".{path.name}{FILE_MARKER_SUFFIX}"


def file_lock_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.parent / f".{path.name}{FILE_LOCK_SUFFIX}"


def _file_sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_file_marker(path: str | os.PathLike) -> dict[str, Any] | None:
    try:
        data = json.loads(file_marker_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files"), dict) else None


def _sha1_if_file(target: Path) -> str | None:
    return _file_sha1(target) if target.is_file() and not target.is_symlink() else None


def _recorded(marker: dict[str, Any] | None, target: Path) -> tuple[str | None, bool]:
    """The SHA-1 the sidecar `marker` records for `target` as it is now (None: none, or other content), and whether
    it is one an interrupted run recorded as it put the file in place (`placing`) rather than one it committed."""
    if marker is None:
        return None, False
    written = marker["files"].get(target.name)
    placing = (marker.get("placing") or {}).get(target.name)
    if written is None and placing is None:  # pending, and nothing put in place: the file is not the run's
        return None, False
    sha = _sha1_if_file(target)
    if sha is not None and sha == written:
        return sha, False
    if sha is not None and sha == placing:
        return sha, True
    return None, False


@dataclass
class OwnedFile:
    """A claimed single-file output; `commit()` after the command wrote it records what it wrote."""

    path: Path
    command: str
    options_hash: str
    targets: tuple[Path, ...]
    _lock_fd: int | None = field(default=None, repr=False)
    provenance: dict[str, Any] | None = None  # where the run's options came from (`claim`)
    provenance_resumes: list[dict[str, Any]] | None = None  # the later runs', where they differ (`claim`)

    def _write(self, files: dict[str, str | None], placing: dict[str, str] | None = None) -> None:
        data = {"command": self.command, "unime_version": _version(), "options_hash": self.options_hash,
                "files": files}
        if self.provenance is not None:
            data["provenance"] = self.provenance
        if self.provenance_resumes:
            data["provenance_resumes"] = self.provenance_resumes
        if placing:
            data["placing"] = placing
        marker = file_marker_path(self.path)
        tmp = marker.parent / f"{marker.name}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, marker)

    committed: bool = False
    # as the claim found them: the sidecar's bytes (None: there was none), each target's `_file_state`, and the
    # folders it made for the output (deepest first), so that a run that fails before writing leaves them so
    _marker_before: bytes | None = field(default=None, repr=False)
    _targets_before: tuple | None = field(default=None, repr=False)
    _made_folders: tuple[Path, ...] = field(default=(), repr=False)
    _pending: dict = field(default_factory=dict, repr=False)  # the sidecar's `files` as the claim wrote them
    _placing: dict = field(default_factory=dict, repr=False)  # what this run put in place so far (`_put_in_place`)

    def _put_in_place(self, target: Path, tmp: Path) -> None:
        """Called by `atomic_path` just before it renames the finished `tmp` onto `target`: record its SHA-1, so
        that a kill before `commit` leaves a file the re-run knows for this run's."""
        self._placing[Path(target).name] = _file_sha1(tmp)
        self._write(self._pending, self._placing)

    def _listen(self, on: bool) -> None:
        from unime.data.atomic import before_replace

        for t in self.targets:
            before_replace(t, self._put_in_place if on else None)

    def commit(self) -> None:
        """Record the SHA-1 of every target the command wrote (targets it did not write are dropped)."""
        self._write({t.name: _file_sha1(t) for t in self.targets if t.is_file()})
        self.committed = True
        self._listen(False)

    def release(self) -> None:
        """After a failed run that wrote none of its files (each target as the claim found it): the sidecar is put
        back as it was (removed, where there was none), and the folders the claim made for the output go when they
        are empty, so that a run refused for its input leaves no trace and marks no other command's file as its
        own. A run killed by the OS keeps its pending sidecar, so that its re-run may replace what it left."""
        self._listen(False)
        if not self.committed and self._targets_before is not None \
                and tuple(_file_state(t) for t in self.targets) == self._targets_before:
            with contextlib.suppress(OSError):
                if self._marker_before is None:
                    file_marker_path(self.path).unlink(missing_ok=True)
                else:
                    marker = file_marker_path(self.path)
                    tmp = marker.parent / f"{marker.name}.tmp-{os.getpid()}"
                    tmp.write_bytes(self._marker_before)
                    os.replace(tmp, marker)
        elif not self.committed and not any(t.exists() or t.is_symlink() for t in self.targets):
            with contextlib.suppress(OSError):
                file_marker_path(self.path).unlink()
        if self._lock_fd is not None:  # removed while still held, then unlocked (see `_lock_path`)
            with contextlib.suppress(OSError):
                file_lock_path(self.path).unlink()
            os.close(self._lock_fd)
            self._lock_fd = None
        if not self.committed:
            for folder in self._made_folders:  # deepest first; one that holds anything stays
                try:
                    folder.rmdir()
                except OSError:
                    break


def _file_state(path: Path) -> tuple | None:
    """What a target is, for telling whether a run wrote it: None when missing, else its kind, inode (a file
    replaced whole is another), size and modification time."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    return st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns


def _file_refusal(target: Path, command: str, marker: dict[str, Any] | None) -> str:
    other = (marker or {}).get("command")
    if other is not None and other != command and _recorded(marker, target)[1]:
        why = f"was left by an interrupted `unime {other}` run, not written by `unime {command}`"
    else:
        why = f"was not written by `unime {command}` (or was changed since)"
    return (f"output file {target} exists and {why}; refusing to replace it. Choose another output name, or pass "
            f"{as_given('--overwrite', 'overwrite=True')} to replace it")


def claim_file(path: str | os.PathLike, command: str, options: dict[str, Any] | None = None, *,
               overwrite: bool = False, companions: tuple[str | os.PathLike, ...] = (),
               provenance: dict[str, Any] | None = None, resumable: bool = False) -> OwnedFile:
    """Check that `command` may write the file `path` (and its `companions`): each is missing, or was
    written by this command and not changed since (also by a run of it killed after it put the file in place: see
    the section's comment), or `overwrite`. Raises `FileNotOwned` naming the file and `--overwrite`, before any
    work; creates the parent folder; writes the pending sidecar, then records each file as the run puts it in
    place (until `commit` or `release`). `provenance`, `resumable`: recorded in the sidecar, as `claim` records
    them."""
    path = Path(path)
    targets = (path, *(Path(c) for c in companions))
    for t in targets:
        if t.is_dir():
            raise FileNotOwned(f"output {t} is a folder; this command writes a file there (choose a file name)")
    made = []  # the output's missing folders, deepest first (removed again by a run that fails before writing)
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():  # mkdir would say only "PARENT: File exists" / "Not a directory"
                raise FileNotOwned(f"output file {path}: {parent} is a file, not a folder")
            break
        made.append(parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    # one run per output file at a time: an OS lock beside it, held until `release` (or the process ends)
    fd = _lock_path(file_lock_path(path), f"output file {path}", "choose another output name")
    try:
        try:
            marker_before = file_marker_path(path).read_bytes()
        except OSError:
            marker_before = None
        targets_before = tuple(_file_state(t) for t in targets)
        before = read_file_marker(path)
        ours = before is not None and before.get("command") == command
        if ours:  # what a killed write of this command left beside its files (the lock is held: none is running)
            from unime.data.atomic import remove_stale_temporaries

            stale = [n for t in targets for n in remove_stale_temporaries(t)]
            if stale:
                logging.getLogger(__name__).info("%s: removed what an interrupted `unime %s` run was writing: %s",
                                                 path, command, ", ".join(stale))
        found = {}  # target name -> the SHA-1 the sidecar records for it as it is now (this command's)
        for t in targets:
            if not (t.exists() or t.is_symlink()):
                continue
            sha, interrupted = _recorded(before, t) if ours else (None, False)
            if sha is not None and not overwrite:
                found[t.name] = sha
                if interrupted:
                    logging.getLogger(__name__).info("%s: replacing the output of an interrupted `unime %s` run",
                                                     t, command)
            elif not overwrite:
                raise FileNotOwned(_file_refusal(t, command, before))
        hashed = options_hash(options or {})
        kept = run_provenance_keys(before, command, provenance, hashed, overwrite=overwrite, resumable=resumable)
        owned = OwnedFile(path, command, hashed, targets, fd, _marker_before=marker_before,
                          _targets_before=targets_before, _made_folders=tuple(made), provenance=kept.get("provenance"),
                          provenance_resumes=kept.get("provenance_resumes"))
        # pending: a file this command wrote keeps its record until replaced (a run killed before that leaves it
        # ours), any other target is recorded as not written yet
        owned._pending = {t.name: found.get(t.name) for t in targets}
        owned._write(owned._pending)
        owned._listen(True)
    except BaseException:
        with contextlib.suppress(OSError):
            file_lock_path(path).unlink()
        os.close(fd)
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return owned
