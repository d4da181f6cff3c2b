"""Atomic file and folder output: write to a temporary sibling, then `os.replace` it into place.

A reader never sees a half-written file; a crash leaves at most a stray `*.tmp-*` sibling. What appears has
the permissions of an ordinary file or folder under the process's umask (a temporary file or folder is made
private, 0600 / 0700, and would otherwise keep that mode).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Callable, Collection, Iterable, Iterator


def _read_umask() -> int:
    current = os.umask(0o022)  # the umask can only be read by setting it: once, at import
    os.umask(current)
    return current


_UMASK = _read_umask()

MERGE_TMP_PREFIX = ".merge.tmp-"  # `merged_dir`'s temporary folder inside its target: `tempfile.mkdtemp`'s name
_MERGE_TMP = re.compile(re.escape(MERGE_TMP_PREFIX) + r"[a-z0-9_]{8}")


def ordinary_modes(path: Path) -> None:
    """Give `path` (and, for a folder, everything below it) the mode a plain `open()` / `mkdir()` gives under
    the umask: 0666 / 0777 minus the umask. Links are left alone."""
    mask = _UMASK
    if path.is_symlink():
        return
    if not path.is_dir():
        os.chmod(path, 0o666 & ~mask)
        return
    os.chmod(path, 0o777 & ~mask)
    for root, dirs, files in os.walk(path):
        for d in dirs:
            if not os.path.islink(os.path.join(root, d)):
                os.chmod(os.path.join(root, d), 0o777 & ~mask)
        for f in files:
            if not os.path.islink(os.path.join(root, f)):
                os.chmod(os.path.join(root, f), 0o666 & ~mask)


# outputs whose owner is told, just before a finished temporary file is renamed onto them, what it holds
# (`unime.outdir.OwnedFile` records its SHA-1, so that a run killed right after the rename leaves a file the next
# run can tell for that run's): absolute path -> callback(target, temporary file)
_BEFORE_REPLACE: dict[str, Callable[[Path, Path], None]] = {}


def before_replace(path: str | os.PathLike, callback: Callable[[Path, Path], None] | None) -> None:
    """Have `atomic_path` call `callback(path, tmp)` before it renames a finished `tmp` onto `path` (None: no
    more). A callback that raises stops the write: `path` stays as it was."""
    key = os.path.abspath(path)
    if callback is None:
        _BEFORE_REPLACE.pop(key, None)
    else:
        _BEFORE_REPLACE[key] = callback


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path`, on error it is removed. A block that
    removes the temporary file itself (it found nothing to write) leaves `path` as it was. The `before_replace`
    callback registered for `path` hears of the rename before it happens."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if not (tmp_path.exists() or tmp_path.is_symlink()):
            return
        ordinary_modes(tmp_path)
        announce = _BEFORE_REPLACE.get(os.path.abspath(target))
        if announce is not None:
            announce(target, tmp_path)
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """`open()` for writing whose result appears at `path` only when the block succeeds."""
    if "b" in mode:
        encoding = None
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding, newline="\n" if encoding else None) as fh:
            yield fh


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; on success it becomes `path` (replacing an existing
    folder only if `overwrite`), on error it is removed."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists (pass overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        ordinary_modes(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def merged_dir(path: str | os.PathLike, *, kept: list[str] | None = None) -> Iterator[Path]:
    """Yield a temporary folder; on success its entries are merged into `path`: each file replaces the file of
    the same name (one `os.replace` each: a file is never seen half-written), a folder is merged into the
    folder of the same name the same way, and every other entry of `path` and of its merged folders stays —
    appended to `kept` (paths relative to `path`, hidden ones left out). A missing `path` appears whole, at
    once. On error the temporary folder is removed. For output folders that may hold the user's own files
    beside the command's, at any depth (`unime.outdir`). The temporary folder lies inside `path`: one a killed
    merge left there (`.merge.tmp-XXXXXXXX`, a folder) is removed first (the caller holds the output folder's lock,
    so no other merge is running there); nothing else is."""
    target = Path(path)
    if not target.exists():
        with atomic_dir(target) as tmp:
            yield tmp
        return
    _remove_stale_merges(target)
    tmp = Path(tempfile.mkdtemp(prefix=MERGE_TMP_PREFIX, dir=target))
    try:
        yield tmp
        ordinary_modes(tmp)
        clash = _kind_clash(tmp, target)
        if clash is not None:
            from unime.errors import UnimeError

            raise UnimeError(f"{target / clash} is in the way: the command writes a "
                             f"{'folder' if (tmp / clash).is_dir() else 'file'} there; move it away and run again "
                             "(nothing was replaced)")
        _merge_into(tmp, target, kept if kept is not None else [], "")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_merges(target: Path) -> None:
    """Remove the temporary folders killed `merged_dir`s left in `target`: folders named exactly as `mkdtemp` names
    them; a file, a link or any other name is not one of them and stays."""
    for p in target.iterdir():
        if _MERGE_TMP.fullmatch(p.name) and _is_folder(p):
            shutil.rmtree(p, ignore_errors=True)


def remove_stale_temporaries(target: str | os.PathLike) -> list[str]:
    """Remove the temporary files killed `atomic_path`s left beside `target` (`.NAME.tmp-XXXXXXXX`, named exactly as
    `mkstemp` names them; a folder, a link or any other name stays). Only for a caller that holds `target`'s lock,
    so that no other write of it is running. Returns the names removed."""
    target = Path(target)
    pattern = re.compile(re.escape(f".{target.name}.tmp-") + r"[a-z0-9_]{8}")
    removed = []
    with contextlib.suppress(OSError):
        for p in target.parent.iterdir():
            if pattern.fullmatch(p.name) and p.is_file() and not p.is_symlink():
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p.name)
    return removed


def _is_folder(p: Path) -> bool:
    return p.is_dir() and not p.is_symlink()


def _kind_clash(src: Path, dest: Path, prefix: str = "") -> str | None:
    """The first entry (relative path) where `dest` holds a folder and `src` a file of the same name, or the other
    way round: not the command's to replace, so `merged_dir` refuses before replacing anything."""
    for entry in sorted(src.iterdir()):
        to = dest / entry.name
        if not (to.exists() or to.is_symlink()):
            continue
        if _is_folder(entry) and _is_folder(to):
            found = _kind_clash(entry, to, f"{prefix}{entry.name}/")
            if found is not None:
                return found
        elif _is_folder(entry) or _is_folder(to):
            return f"{prefix}{entry.name}"
    return None


def _merge_into(src: Path, dest: Path, kept: list[str], prefix: str) -> None:
    written = set()
    for entry in sorted(src.iterdir()):
        written.add(entry.name)
        to = dest / entry.name
        if _is_folder(entry) and _is_folder(to):
            _merge_into(entry, to, kept, f"{prefix}{entry.name}/")
            continue
        os.replace(entry, to)  # a file over a file (`_kind_clash` refused a folder against a file)
    kept.extend(f"{prefix}{p.name}" for p in sorted(dest.iterdir())
                if p.name not in written and not p.name.startswith("."))


def remove_listed(root: str | os.PathLike, listed: Iterable[str], *, keep: Collection[str] = ()) -> list[str]:
    """Delete the files (or links: never what they point to) `listed` — paths relative to `root`, as a command
    recorded writing them — except those in `keep`, then each folder that leaves empty (`root` stays). Never a path
    outside `root` or reached through a linked folder, never a folder, never a file not listed: the other files of
    the folders stay. Returns the removed paths."""
    root = Path(root)
    base = root.resolve()
    removed = []
    for rel in listed:
        parts = PurePosixPath(rel).parts if isinstance(rel, str) else ()
        if not parts or rel in keep or PurePosixPath(rel).is_absolute() or ".." in parts:
            continue
        path = root.joinpath(*parts)
        if _is_folder(path) or not (path.exists() or path.is_symlink()):
            continue
        if path.parent.resolve() != base.joinpath(*parts[:-1]):
            continue
        path.unlink()
        removed.append(rel)
        for folder in list(path.parents)[:len(parts) - 1]:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
    return removed


def warn_left(folder: str | os.PathLike, names: list[str], why: str, hint: str = "") -> None:
    """Name, in one warning, the entries of `folder` a command left as they were (`why`: beside what)."""
    import logging

    if names:
        shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        logging.getLogger(__name__).warning("%s: left as they were %s: %s%s", folder, why, shown, hint)
