"""Where a data file's image paths are relative to, recorded next to the file so that the next stage
finds the images without `--data-root`.

A folder may hold `unime_data.json` = ``{"data_root": PATH}`` (PATH relative to that folder, or
absolute). `unime data import` writes one beside its records and MMEB files, `unime data synth` in the
world's `train/`, `unime mine` beside `mined.parquet`, and the commands that write data files from others
(`unime data convert`, `unime reason teacher` / `generate` / `split` / `materialize`) beside their outputs
(`record_data_root`).
`resolve_data_root(file, explicit)` answers, in order: the explicit option; the marker in the file's folder; a
mining `manifest.json` there (``inputs.data_root``); the file's folder.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable

from unime.data.atomic import atomic_open
from unime.errors import DataError

DATA_ROOT_FILE = "unime_data.json"

log = logging.getLogger(__name__)


def write_data_root(folder: str | os.PathLike, data_root: str | os.PathLike) -> Path:
    """Record in `folder` that paths of the data files there are relative to `data_root` (stored relative
    to `folder` when both are on one drive, so the pair of folders can move together)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    root = Path(data_root).resolve()
    try:
        value = os.path.relpath(root, folder.resolve())
    except ValueError:  # another drive (Windows)
        value = str(root)
    path = folder / DATA_ROOT_FILE
    with atomic_open(path) as fh:
        json.dump({"data_root": value}, fh, indent=1)
        fh.write("\n")
    return path


def recorded_data_root(folder: str | os.PathLike) -> str | None:
    """The data root recorded in `folder` (marker file or mining manifest), or None."""
    folder = Path(folder)
    marker = folder / DATA_ROOT_FILE
    if marker.is_file():
        try:
            value = json.loads(marker.read_text(encoding="utf-8"))["data_root"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"expected {{\"data_root\": PATH}} ({e})", source=str(marker), field="data_root") from None
        if not isinstance(value, str) or not value:
            raise DataError("expected a non-empty path", source=str(marker), field="data_root")
        root = Path(value)
        return str((root if root.is_absolute() else folder / root).resolve())
    manifest = folder / "manifest.json"
    if manifest.is_file():
        try:
            value = json.loads(manifest.read_text(encoding="utf-8")).get("inputs", {}).get("data_root")
        except (json.JSONDecodeError, AttributeError):
            return None
        if isinstance(value, str) and value:
            return value
    return None


def resolve_data_root(data_file: str | os.PathLike, explicit: str | os.PathLike | None = None) -> str:
    """The folder `data_file`'s image paths are relative to (see the module doc)."""
    if explicit:
        return str(explicit)
    folder = Path(os.path.abspath(data_file)).parent
    return recorded_data_root(folder) or str(folder)


def record_data_root(folder: str | os.PathLike, data_root: str | os.PathLike, *, written: Iterable[str] = ()
                     ) -> Path | None:
    """After a stage wrote data files into `folder` whose image paths are relative to `data_root`: record it
    there (`write_data_root`) so that the next stage resolves them without `--data-root`. Nothing is written
    when `folder` already resolves to `data_root` (it is the data root, or records it). A folder that records
    another root keeps it — its other files rely on it — and a warning says which `--data-root` the new
    files need; one written beside other entries than `written` (the stage's own outputs) comes with a warning,
    since every data file there now resolves under `data_root`. Returns the marker written, or None."""
    folder = Path(folder)
    root = Path(data_root).resolve()
    recorded = recorded_data_root(folder) if folder.is_dir() else None
    if Path(recorded or folder).resolve() == root:
        return None
    if recorded is not None:
        log.warning("%s records the data root %s, not %s: give the files written there --data-root %s",
                    folder, recorded, root, data_root)
        return None
    own = {Path(w).name for w in written}
    others = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and p.name not in own) \
        if folder.is_dir() else []
    marker = write_data_root(folder, root)
    if others:  # the marker speaks for the whole folder: say so where other files are there
        log.warning("wrote %s: every data file in %s now resolves its image paths under %s (%d other entries there, "
                    "e.g. %s; a file whose images are relative to the folder itself needs --data-root %s)", marker,
                    folder, root, len(others), ", ".join(others[:3]), folder)
    return marker
