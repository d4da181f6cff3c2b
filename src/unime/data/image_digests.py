"""Content digests of image files, cached by (path, size, mtime) so a re-run over a million images does
not read them again.

A stage whose output depends on images (mining's retrieval and judge stages) puts `digest_items(...)`
into its stage hash: change an image's bytes and the stage is redone; touch nothing and no image is
re-read. The cache is a small TSV (`path \\t size \\t mtime_ns \\t sha1`), rewritten atomically, its lines ended by
"\\n" only (a name holding a tab or a newline is not kept).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable

from unime.data.atomic import atomic_open
from unime.data.hashing import stream_sha1
from unime.data.images import ImageLoader
from unime.data.items import Item


def file_sha1(path: str | os.PathLike) -> str:
    with open(path, "rb") as fh:
        return stream_sha1(fh).hexdigest()


class ImageDigests:
    """sha1 of image files, memoised in memory and (with `cache_file`) on disk by (path, size, mtime). `read=False`:
    the digests `cache_file` holds are not read (a file unime cannot tell for its own), only written by `save`."""

    def __init__(self, cache_file: str | os.PathLike | None = None, *, read: bool = True):
        self.cache_file = Path(cache_file) if cache_file else None
        self._memo: dict[tuple[str, int, int], str] = {}
        self.hashed = 0  # files read in this process (0 on a re-run with nothing changed)
        self._dirty = False
        if read and self.cache_file is not None and self.cache_file.is_file():
            # by "\n" only: a name may hold U+2028, U+0085, "\r" (which `str.splitlines` would break at); a name not
            # in UTF-8 comes back as the str the file system gave (surrogateescape)
            for line in self.cache_file.read_bytes().decode("utf-8", "surrogateescape").split("\n"):
                parts = line.rsplit("\t", 3)
                # a line not of this shape (a corrupt file) is left out: its image is read again if asked for;
                # ASCII digits only (str.isdigit is True for '²', which int() refuses, and for '١', which it reads)
                if len(parts) == 4 and all(n.isascii() and n.isdigit() for n in parts[1:3]):
                    self._memo[(parts[0], int(parts[1]), int(parts[2]))] = parts[3]

    def digest(self, path: str | os.PathLike) -> str:
        p = str(Path(path).resolve())
        st = os.stat(p)
        key = (p, st.st_size, st.st_mtime_ns)
        d = self._memo.get(key)
        if d is None:
            d = self._memo[key] = file_sha1(p)
            self.hashed += 1
            self._dirty = True
        return d

    def save(self) -> None:
        if self.cache_file is None or not self._dirty:
            return
        with atomic_open(self.cache_file, "wb") as fh:
            for (p, size, mtime), d in sorted(self._memo.items()):
                if "\t" not in p and "\n" not in p:  # the TSV's separators: such a name is not kept (read again)
                    fh.write(f"{p}\t{size}\t{mtime}\t{d}\n".encode("utf-8", "surrogateescape"))
        self._dirty = False


def digest_items(items: Iterable[Item], loader: ImageLoader, digests: ImageDigests) -> str:
    """One digest of the content of every image (and video frame) the items reference: file bytes for
    paths (resolved under the loader's root), the bytes themselves for inline images."""
    seen: dict[str, str] = {}
    for item in items:
        for ref in (*item.images, *item.video):
            if isinstance(ref, str):
                if ref not in seen:
                    seen[ref] = digests.digest(loader.resolve(ref))
            elif isinstance(ref, (bytes, bytearray)):
                seen.setdefault(f"<bytes {len(ref)}>" + hashlib.sha1(ref).hexdigest(), hashlib.sha1(ref).hexdigest())
    h = hashlib.sha1()
    for ref in sorted(seen):
        h.update(f"{ref}\0{seen[ref]}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()
