"""Where a data file's image paths are relative to, recorded next to the file so that the next stage
finds the images without `--data-root`.

A folder may hold `unime_data.json` = ``{"data_root": PATH}`` (PATH relative to that folder, or
absolute), which speaks for every data file in it; a data file may have its own, `NAME.unime_data.json` beside
it, which speaks for that file alone. `unime data import` writes folder markers beside its records and MMEB
files, `unime data synth` in the world's `train/`, `unime mine` records the root in its `manifest.json`, and the
commands that write data files from others (`unime data convert`, `unime reason teacher` / `generate` / `split` /
`materialize`) record it beside their outputs (`record_data_root`): a folder marker when the folder holds
nothing but their outputs, else a marker of each output's own — a marker never re-points files the command did not
write (QA: `reason teacher --out t.jsonl` in a working folder re-pointed every data file there).
`resolve_data_root(file, explicit)` answers, in order: the explicit option; the file's own marker; the marker in
the file's folder; a mining `manifest.json` there (``inputs.data_root``); the file's folder.
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


def file_marker(data_file: str | os.PathLike) -> Path:
    """The path of `data_file`'s own marker: `NAME.unime_data.json` beside it."""
    data_file = Path(data_file)
    return data_file.with_name(f"{data_file.name}.{DATA_ROOT_FILE}")


def write_data_root(folder: str | os.PathLike, data_root: str | os.PathLike, *, file: str | None = None) -> Path:
    """Record in `folder` that paths of the data files there (only of the file named `file`, when given: its own
    marker) are relative to `data_root` (stored relative to `folder` when both are on one drive, so the pair of
    folders can move together)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    root = Path(data_root).resolve()
    try:
        value = os.path.relpath(root, folder.resolve())
    except ValueError:  # another drive (Windows)
        value = str(root)
    path = file_marker(folder / file) if file else folder / DATA_ROOT_FILE
    with atomic_open(path) as fh:
        json.dump({"data_root": value}, fh, indent=1)
        fh.write("\n")
    return path


def _read_marker(marker: Path) -> str:
    try:
        value = json.loads(marker.read_text(encoding="utf-8"))["data_root"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"expected {{\"data_root\": PATH}} ({e})", source=str(marker), field="data_root") from None
    if not isinstance(value, str) or not value:
        raise DataError("expected a non-empty path", source=str(marker), field="data_root")
    root = Path(value)
    return str((root if root.is_absolute() else marker.parent / root).resolve())


def recorded_file_root(data_file: str | os.PathLike) -> str | None:
    """The data root `data_file` records for itself (its own marker, `file_marker`), or None."""
    marker = file_marker(os.path.abspath(data_file))
    return _read_marker(marker) if marker.is_file() else None


def recorded_data_root(folder: str | os.PathLike) -> str | None:
    """The data root recorded in `folder` for its files (marker file or mining manifest), or None."""
    folder = Path(folder)
    marker = folder / DATA_ROOT_FILE
    if marker.is_file():
        return _read_marker(marker)
    manifest = folder / "manifest.json"
    if manifest.is_file():
        try:
            value = json.loads(manifest.read_text(encoding="utf-8")).get("inputs", {}).get("data_root")
        except (json.JSONDecodeError, AttributeError):
            return None
        if isinstance(value, str) and value:
            return value
    return None


def recorded_root_of(data_file: str | os.PathLike) -> str | None:
    """The data root recorded for `data_file`: its own marker, else its folder's (marker or mining manifest)."""
    return recorded_file_root(data_file) or recorded_data_root(Path(os.path.abspath(data_file)).parent)


def resolve_data_root(data_file: str | os.PathLike, explicit: str | os.PathLike | None = None) -> str:
    """The folder `data_file`'s image paths are relative to (see the module doc)."""
    if explicit:
        return str(explicit)
    return recorded_root_of(data_file) or str(Path(os.path.abspath(data_file)).parent)


def record_data_root(folder: str | os.PathLike, data_root: str | os.PathLike, *, written: Iterable[str] = (),
                     companions: Iterable[str] = ()) -> list[Path]:
    """After a stage wrote the data files `written` into `folder`, their image paths relative to `data_root`: record
    it so that the next stage resolves them without `--data-root`, never changing how another file resolves.

    - `folder` already resolves to `data_root` (it is the data root, or records it): nothing to write;
    - `folder` records no root and holds nothing but the stage's outputs (`written`, and `companions`: the other
      files it writes there, e.g. a summary): the folder marker (`write_data_root`);
    - else (other entries are there, or the folder records another root, which its other files rely on): a marker
      of each written file's own (`NAME.unime_data.json`), read before the folder's.

    A written file's own marker from an earlier run is brought up to date in every case (it would win over the
    folder's). Returns the markers written."""
    folder = Path(folder)
    root = Path(data_root).resolve()
    names = [Path(w).name for w in written]
    recorded = recorded_data_root(folder) if folder.is_dir() else None
    markers, each_its_own = [], False
    if Path(recorded or folder).resolve() != root:
        own = {*names, *(Path(c).name for c in companions), *(file_marker(n).name for n in names)}
        others = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and p.name not in own) \
            if folder.is_dir() else []
        each_its_own = recorded is not None or bool(others)
        if each_its_own:
            log.info("data root %s recorded in %s, not for the folder: %s", root,
                     ", ".join(file_marker(n).name for n in names), f"{folder} records {recorded} for its other files"
                     if recorded else f"the other entries of {folder} (e.g. {', '.join(others[:3])}) keep theirs")
        else:
            markers.append(write_data_root(folder, root))
    for name in names:  # a file's own marker wins over the folder's: written when needed, kept up to date
        mine = recorded_file_root(folder / name)
        if (each_its_own or mine is not None) and (mine is None or Path(mine) != root):
            markers.append(write_data_root(folder, root, file=name))
    return markers
