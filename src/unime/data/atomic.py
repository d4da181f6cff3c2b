"""Atomic file and folder output: write to a temporary sibling, then `os.replace` it into place.

A reader never sees a half-written file; a crash leaves at most a stray `*.tmp-*` sibling. What appears has
the permissions of an ordinary file or folder under the process's umask (a temporary file or folder is made
private, 0600 / 0700, and would otherwise keep that mode).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _read_umask() -> int:
    current = os.umask(0o022)  # the umask can only be read by setting it: once, at import
    os.umask(current)
    return current


_UMASK = _read_umask()


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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path`, on error it is removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            ordinary_modes(tmp_path)
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
def merged_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder inside `path`; on success each of its entries replaces the entry of the
    same name in `path` (one `os.replace` per entry: a file or folder is never seen half-written), and
    every other entry of `path` stays. On error the temporary folder is removed. For output folders that
    may hold the user's own files beside the command's (`unime.outdir`)."""
    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".merge.tmp-", dir=target))
    try:
        yield tmp
        for entry in sorted(tmp.iterdir()):
            ordinary_modes(entry)
            dest = target / entry.name
            if dest.is_dir() and not dest.is_symlink() and entry.is_dir():
                old = Path(tempfile.mkdtemp(prefix=f".{entry.name}.old-", dir=target))
                os.replace(dest, old / "x")
                os.replace(entry, dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                if dest.is_dir() and not dest.is_symlink():
                    shutil.rmtree(dest)
                os.replace(entry, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
