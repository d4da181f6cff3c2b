"""The served index kept current: `unime index build --out IDX` appends to an index a running service serves.

Every `interval_s` the watcher stats IDX/manifest.json; when the file changed it reads its digest
(`unime.index.store.manifest_digest`: a build rewrites the manifest with the same content while it runs, and
changes it with its last write), and when that differs from the served index's, it opens the new state in a
thread, checks it is the served embedder's as at startup (`check_model`), and swaps it in: one reference,
read once per request, so a search runs on one state or the other, never on a mix. A state that cannot be
served (damaged, another model, a build that was stopped half-way: the store refuses those; a build begun anew in
the folder, whose first manifest holds no items yet, while it runs) keeps the old index serving, with one warning
and the reason in /health (`warning`), until the manifest changes again.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from unime.errors import UnimeError

log = logging.getLogger("unime.serve")


class IndexReloader:
    """Watches the folder of `engine.index` and swaps a newer build into `engine.index` (see the module doc).
    `model`, `dtype`: the served embedder's checkpoint and dtype option (its identity, as `Engine.load` checks
    it); `fixed_rerank_root`: the reranker reads the indexed images from the index's data root, which a new
    state must keep."""

    def __init__(self, engine, *, model: str, dtype: str | None, interval_s: float, fixed_rerank_root: bool):
        self.engine, self.model, self.dtype, self.interval_s = engine, model, dtype, interval_s
        self.fixed_rerank_root = fixed_rerank_root
        self.folder = Path(engine.index.folder)
        self.warning: str | None = None  # why the index on disk is not the one served (None: it is)
        self._stat: tuple | None = None  # the first look reads the digest: a build may have ended since the load
        self._refused: str | None = None  # the manifest digest last refused: not tried again

    def _manifest_stat(self) -> tuple | None:
        try:
            st = os.stat(self.folder / "manifest.json")
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except Exception:  # noqa: BLE001 - the watcher never stops serving; the old index stays
                log.exception("index %s: looking for a newer build failed", self.folder)

    async def check(self) -> bool:
        """Swap in a newer build of the index folder if there is one that can be served; True if swapped."""
        from unime.index.store import manifest_digest

        stat = self._manifest_stat()
        if stat == self._stat:
            return False
        self._stat = stat
        digest = await asyncio.to_thread(manifest_digest, self.folder)
        served = self.engine.index
        if digest == served.manifest_digest:  # (back to) the state served
            self.warning = self._refused = None
        if digest is None or digest in (served.manifest_digest, self._refused):
            return False
        try:
            new = await asyncio.to_thread(self._open)
        except (UnimeError, OSError, ValueError) as e:
            self._refused = digest
            why = " ".join(str(e).split())
            self.warning = (f"the index {self.folder} changed on disk but its new state cannot be served ({why}); "
                            f"still serving the {len(served)} items loaded before")
            log.warning("%s", self.warning)
            return False
        self.engine.index, self.warning, self._refused = new, None, None
        log.info("index %s reloaded: %d items (was %d)", self.folder, len(new), len(served))
        return True

    def _open(self):
        """The index folder opened (the store's own checks) and held to the served embedder, as at startup."""
        from unime.index.store import CorpusIndex, IndexError_, check_model
        from unime.models.embedding_cache import embedding_settings

        # read as the served one was (--mmap); a build begun anew in the folder (`rm -r IDX`, then `index build`):
        # its first manifest holds no items yet
        new = CorpusIndex(self.folder, mmap=self.engine.index.mmap).require_items()
        emb = self.engine.embedder
        check_model(new, self.model, embedding_settings(emb, self.dtype), device=emb.device)
        old_root = self.engine.index.data_root
        if self.fixed_rerank_root and new.data_root != old_root:
            raise IndexError_(f"its images' data root is now {new.data_root}, not {old_root} which the reranker "
                              "reads them from; restart the service to serve it")
        return new
