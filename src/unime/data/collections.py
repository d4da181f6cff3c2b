"""Readers of captioned-image collections in the field's common layouts, for `unime data import`.

Each reader yields `CaptionedImage`s (an image, its captions, an optional class label), with the place
it came from so that bad input raises `DataError` naming the file, the record (1-based line / row /
index) and the field. Supported layouts:

- a folder of images + a captions file (`read_caption_table`): CSV (``.csv``, ``.txt``), TSV (``.tsv``,
  ``.tab``) or JSON lines (``.jsonl``, ``.ndjson``), by its ending (another ending is refused, unless a
  delimiter is given), UTF-8 with or without a byte-order mark, one row per (image, caption), several rows
  per image allowed; column names are options (defaults: the first of ``image, file_name, filename, file,
  path`` / ``caption, text, captions`` / ``label, category, class``, in any case when one column alone
  matches); a header read as one column that holds ``;`` or a tab is refused naming ``--delimiter``;
  a row with more fields than the header (a caption holding an unquoted delimiter) is a bad row, not cut short;
- COCO captions JSON (`read_coco_captions`): ``images: [{id, file_name}]``, ``annotations: [{image_id,
  caption}]``; categories, when an ``instances`` file is given, become labels (first annotation's);
- a local Hugging Face ``datasets`` dataset (`read_hf_dataset`): a folder saved with ``save_to_disk``,
  or an ``imagefolder`` (images + ``metadata.csv``/``metadata.jsonl``); when every image of an imagefolder
  sits in a first-level sub-folder, the sub-folder is its class label (column ``label``; also with a metadata
  file, where ``datasets`` drops it) unless the metadata has a label column of its own;
  relative image paths are under ``--images`` when given, else under the dataset folder; images named by path
  stay inside the dataset folder or ``--images`` (unless ``allow_outside_root``);
- WebDataset tar shards (`read_webdataset`), read member by member with ``tarfile`` (nothing extracted;
  one bad sample is one record): the image under ``jpg``/``jpeg``/``png``/``webp``, the caption under
  ``txt``/``caption`` or ``json["caption"]``, the label under ``cls`` or ``json["label"]``. A sample is
  named ``sample N ('KEY')``.

Images are returned as a file path (absolute) or as encoded bytes; nothing is decoded here (the
importer opens every image once, with `ImageLoader`).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from unime.data.images import ImageLoader, path_below
from unime.data.jsonl import iter_jsonl, read_json_file, require_file, require_folder
from unime.data.placeholders import SOURCE_IMAGE_PLACEHOLDER
from unime.data.skips import ErrorPolicy, data_error
from unime.data.video import missing_file_problem
from unime.errors import DataError, OptionError, require_extra
from unime.options import RangeChecked, option

IMAGE_COLUMNS = ("image", "file_name", "filename", "file", "path", "img")
CAPTION_COLUMNS = ("caption", "text", "captions", "sentence")
LABEL_COLUMNS = ("label", "category", "class", "labels")
WDS_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


@dataclass
class CaptionedImage:
    """One image of a collection: `image` is an absolute file path or encoded bytes."""

    id: str
    image: str | bytes
    captions: list[str] = field(default_factory=list)
    label: str = ""
    source: str = ""
    record: str = ""      # where it came from, 1-based ("line 3", "row 7", "index 2")
    name_hint: str = ""   # a file name to keep when the image is written (bytes) or copied (path)
    field: str = "image"  # the field (column) of `record` that names the image, for errors about it


IMAGES_ONLY = ('data import takes images only; a video item is a record with a "video" field (docs/CONTRACTS.md, '
               '"Items and records")')


def _pick_column(names: Sequence[str], wanted: str | None, defaults: Sequence[str], *, source: str, what: str,
                 required: bool = True) -> str | None:
    """The column `wanted`, else the first of `defaults` present; a name matches exactly, else in any case
    (`Image`) when one column alone does."""
    def match(name: str) -> str | None:
        if name in names:
            return name
        alike = [c for c in names if isinstance(c, str) and c.casefold() == name.casefold()]
        if len(alike) > 1:
            raise DataError(f"{len(alike)} {what} columns {alike}: name one with --{what}-column", source=source)
        return alike[0] if alike else None

    if wanted:
        found = match(wanted)
        if found is None:
            raise DataError(f"no {what} column {wanted!r}; the columns are {list(names)}", source=source, field=wanted)
        return found
    for name in defaults:
        found = match(name)
        if found is not None:
            return found
    if required:
        videos = [c for c in names if isinstance(c, str) and c.casefold() in ("video", "videos")]
        if what == "image" and videos:  # not "name it with --image-column", which then refuses each video (QA)
            raise DataError(f"no image column (looked for {list(defaults)}; the columns are {list(names)}): "
                            f"{IMAGES_ONLY}", source=source, field=videos[0])
        raise DataError(f"no {what} column (looked for {list(defaults)}; the columns are {list(names)}); "
                        f"name it with --{what}-column", source=source)
    return None


def _captions_of(value: Any, *, source: str, record: str, field_name: str) -> list[str]:
    values = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for i, v in enumerate(values):
        if v is None and len(values) == 1:  # a JSON row without the key, or with null
            raise data_error("schema", "missing caption", source=source, record=record, field=field_name)
        if not isinstance(v, str):
            raise data_error("schema", f"expected a caption string, got {type(v).__name__}", source=source,
                             record=record, field=field_name if len(values) == 1 else f"{field_name}[{i}]")
        if not v.strip():
            raise data_error("empty_item", "empty caption", source=source, record=record, field=field_name)
        m = SOURCE_IMAGE_PLACEHOLDER.search(v)
        if m:  # it would become a text item with an image token and no image (every later reader refuses it)
            raise data_error("placeholder", f"caption holds the image placeholder {m.group(0)!r}", source=source,
                             record=record, field=field_name if len(values) == 1 else f"{field_name}[{i}]")
        out.append(v.strip())
    if not out:
        raise data_error("empty_item", "no caption", source=source, record=record, field=field_name)
    return out


def _label_of(value: Any, *, source: str, record: str, field_name: str) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise data_error("schema", f"expected a label (string or integer), got {type(value).__name__}", source=source,
                         record=record, field=field_name)
    return str(value).strip()


class _Merger:
    """Rows of one image (same image reference) merged into one `CaptionedImage`, in first-seen order."""

    def __init__(self):
        self.by_key: dict[Any, CaptionedImage] = {}

    def add(self, key: Any, make, captions: list[str], label: str, *, source: str, record: str, field_name: str):
        item = self.by_key.get(key)
        if item is None:
            item = self.by_key[key] = make()
        item.captions.extend(c for c in captions if c not in item.captions)
        if label and item.label and label != item.label:
            raise data_error("schema", f"label {label!r} disagrees with {item.label!r} given for the same image at "
                             f"{item.record}", source=source, record=record, field=field_name)
        item.label = item.label or label

    def items(self) -> list[CaptionedImage]:
        return list(self.by_key.values())


def _table_rows(path: Path, delimiter: str | None, policy: ErrorPolicy) -> Iterator[tuple[str, dict, list[str]]]:
    """(record label, row dict, column names) per data row of a JSONL file (`delimiter` None) or of delimited
    text (`_delimiter_of`)."""
    if delimiter is None:
        columns: list[str] = []
        for n, obj in iter_jsonl(path, on_malformed=policy.handle):
            if not isinstance(obj, dict):
                policy.handle(data_error("schema", f"expected an object, got {type(obj).__name__}", source=str(path),
                                         record=f"line {n}"))
                continue
            for k in obj:
                if k not in columns:
                    columns.append(k)
            yield f"line {n}", obj, columns
        return
    # bytes that are not UTF-8 are kept as surrogates while parsing, then reported per row and column; a
    # byte-order mark (Excel's "CSV UTF-8") is read as nothing
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        try:
            header = reader.fieldnames
        except csv.Error as e:
            raise data_error("malformed_json", f"malformed CSV header: {e}", source=str(path),
                             record="line 1") from None
        if not header:
            raise DataError("empty captions file (no header line)", source=str(path))
        bad_header = next((c for c in header if _undecodable(c)), None)
        if bad_header is not None:
            raise _not_utf8(bad_header, source=str(path), record="line 1", field=None)
        columns = [c.strip() for c in header]
        _check_header(columns, delimiter, source=str(path))
        reader.fieldnames = columns
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                policy.handle(data_error("malformed_json", f"malformed CSV: {e}", source=str(path),
                                         record=f"line {reader.line_num}"))
                continue
            key = next((k for k, v in row.items() if _undecodable(v) or (k is not None and _undecodable(k))), "")
            if key != "":
                value = row[key] if isinstance(row[key], str) else "".join(row[key])
                policy.handle(_not_utf8(value, source=str(path), record=f"line {reader.line_num}",
                                        field=key if isinstance(key, str) else None))
                continue
            if None in row:  # DictReader's place for the fields past the header's: a caption cut at a delimiter
                n = len(columns) + len(row[None])
                policy.handle(data_error("malformed_json", f"{n} fields, the header has {len(columns)}: quote a "
                                         f"value that holds the delimiter {delimiter!r}", source=str(path),
                                         record=f"line {reader.line_num}"))
                continue
            yield f"line {reader.line_num}", row, columns


# the captions files `read_caption_table` reads, by their ending: JSON lines, or delimited text and its delimiter
JSONL_SUFFIXES = (".jsonl", ".ndjson")
TABLE_SUFFIXES = {".csv": ",", ".txt": ",", ".tsv": "\t", ".tab": "\t"}
# delimiters a header read as one column may be separated by, as a command line gives them
OTHER_DELIMITERS = {";": ("';'", "';'"), "\t": ("tabs", "'\\t'"), "|": ("'|'", "'|'"), ",": ("commas", "','")}


def _delimiter_of(path: Path, delimiter: str | None) -> str | None:
    """The delimiter of the captions table `path` (None: JSON lines, by its ending): `delimiter` (one character,
    or a tab written `\\t` / `tab`), else by the file's ending; a file of another kind (`.json`, `.parquet`, ...)
    is named, not parsed as CSV."""
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return None
    if delimiter is not None:
        delimiter = {"\\t": "\t", "tab": "\t"}.get(delimiter, delimiter)
        if len(delimiter) != 1:
            raise OptionError(CollectionSource, "{delimiter} must be one character ('\\t' for a tab), got {got!r}",
                              got=delimiter)
        return delimiter
    if suffix not in TABLE_SUFFIXES:
        ending = f"ending in {suffix!r}" if suffix else "without a file ending"
        raise DataError(f"a captions file {ending} is not read: --captions reads CSV (.csv, .txt), TSV (.tsv, .tab) or "
                        "JSON lines (.jsonl, .ndjson); JSON lines: name the file .jsonl; COCO captions JSON: --coco; "
                        "other delimited text: --delimiter", source=str(path))
    return TABLE_SUFFIXES[suffix]


def _check_header(columns: list[str], delimiter: str, *, source: str) -> None:
    """A header read as one column that holds another delimiter: which option reads it; two columns of one
    name: refused (a row's value of the first would be lost)."""
    if len(columns) == 1:
        for other, (what, flag) in OTHER_DELIMITERS.items():
            if other != delimiter and other in columns[0]:
                raise DataError(f"the header reads as one column {columns[0]!r}: are the fields separated by {what}? "
                                f"give --delimiter {flag}", source=source, record="line 1")
    alike = sorted({c for c in columns if columns.count(c) > 1})
    if alike:
        raise DataError(f"columns named alike: {alike} (a row's value of each but the last would be lost)",
                        source=source, record="line 1")


def _undecodable(value: Any) -> bool:
    values = value if isinstance(value, list) else [value]
    return any(isinstance(v, str) and any("\udc80" <= ch <= "\udcff" for ch in v) for v in values)


def _not_utf8(value: str, *, source: str, record: str, field: str | None) -> DataError:
    pos = next(i for i, ch in enumerate(value) if "\udc80" <= ch <= "\udcff")
    byte = bytes([ord(value[pos]) - 0xDC00])
    return data_error("not_utf8", f"not UTF-8 text at character {pos + 1} of the value (byte {byte!r})",
                      source=source, record=record, field=field)


def _image_file(loader: ImageLoader, ref: str, *, source: str, record: str, field: str) -> Path:
    """The file an image path names, confined to the images folder by the loader's rules (no absolute path,
    `..` or symlink out of it unless `allow_outside_root`; NUL bytes and over-long paths refused)."""
    try:
        file = loader.resolve(ref)  # its DataError carries no place: this function adds it
        problem = missing_file_problem("image", ref, file, loader.root)
    except DataError as e:
        raise data_error("image", str(e), source=source, record=record, field=field) from None
    except OSError as e:
        raise data_error("image", f"cannot open image {ref!r}: {e.strerror or e}", source=source, record=record,
                         field=field) from None
    if problem:
        raise data_error("image", problem, source=source, record=record, field=field)
    return file


def read_caption_table(captions: str | os.PathLike, images: str | os.PathLike, *, image_column: str | None = None,
                       caption_column: str | None = None, label_column: str | None = None,
                       delimiter: str | None = None, policy: ErrorPolicy,
                       allow_outside_root: bool = False) -> list[CaptionedImage]:
    """A folder of images + a CSV / TSV / JSONL captions file (see the module doc). Image paths in the
    file are relative to `images` and stay inside it (absolute paths and `..` only with
    `allow_outside_root`)."""
    path, root = Path(captions), Path(images)
    src = str(path)
    delimiter = _delimiter_of(path, delimiter)  # the option and the kind of file, before the file is looked for
    require_file(path, "a captions file", missing="captions file not found")
    require_folder(root, "images folder", source=src)
    loader = ImageLoader(root, allow_outside_root=allow_outside_root)
    merger = _Merger()
    cols: tuple[str | None, str | None, str | None] | None = None
    for label, row, columns in _table_rows(path, delimiter, policy):
        if cols is None:  # chosen from the header (CSV / TSV) or the first row's keys (JSONL)
            cols = (_pick_column(columns, image_column, IMAGE_COLUMNS, source=src, what="image"),
                    _pick_column(columns, caption_column, CAPTION_COLUMNS, source=src, what="caption"),
                    _pick_column(columns, label_column, LABEL_COLUMNS, source=src, what="label", required=False))
        icol, ccol, lcol = cols
        try:
            ref = row.get(icol)
            if not isinstance(ref, str) or not ref.strip():
                raise data_error("empty_item", "no image path", source=src, record=label, field=icol)
            resolved = _image_file(loader, ref.strip(), source=src, record=label, field=icol)
            caps = _captions_of(row.get(ccol), source=src, record=label, field_name=ccol)
            lab = _label_of(row.get(lcol), source=src, record=label, field_name=lcol) if lcol else ""
            hint = path_below(loader.root, str(resolved)) or resolved.name
            merger.add(resolved, lambda: CaptionedImage(id="", image=str(resolved), source=src, record=label,
                                                        name_hint=hint, field=icol),
                       caps, lab, source=src, record=label, field_name=lcol or "label")
        except DataError as e:
            policy.handle(e)
    return merger.items()


def read_coco_captions(annotations: str | os.PathLike, images: str | os.PathLike, *,
                       instances: str | os.PathLike | None = None, policy: ErrorPolicy,
                       allow_outside_root: bool = False) -> list[CaptionedImage]:
    """COCO captions JSON (``captions_*.json``); with `instances` (``instances_*.json``) each image's label
    is the category of its largest annotated object. A bad image entry (its `file_name` missing, outside
    `images`, ...) is one error (skipped once, with every caption of it)."""
    path, root = Path(annotations), Path(images)
    src = str(path)
    data = _load_json(path)
    loader = ImageLoader(root, allow_outside_root=allow_outside_root)
    checked: dict[Any, Path | None] = {}  # image id -> its file (None: bad, already reported)
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise DataError(f"a COCO captions file holds lists 'images' and 'annotations'; '{key}' is "
                            f"{type(data.get(key)).__name__}", source=src, field=key)
    files: dict[Any, tuple[str, str]] = {}
    for i, img in enumerate(data["images"], 1):
        label = f"image {i}"
        try:
            if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
                raise data_error("schema", "expected {id, file_name}", source=src, record=label, field="file_name")
            files[img["id"]] = (img["file_name"], label)
        except DataError as e:
            policy.handle(e)
    labels = _coco_labels(instances) if instances else {}
    merger = _Merger()
    for i, ann in enumerate(data["annotations"], 1):
        label = f"annotation {i}"
        try:
            if not isinstance(ann, dict):
                raise data_error("schema", "expected an object", source=src, record=label)
            if ann.get("image_id") not in files:
                raise data_error("schema", f"image_id {ann.get('image_id')!r} is not in 'images'", source=src,
                                 record=label, field="image_id")
            name, image_label = files[ann["image_id"]]
            if ann["image_id"] not in checked:
                checked[ann["image_id"]] = None
                checked[ann["image_id"]] = _image_file(loader, name, source=src, record=image_label,
                                                       field="file_name")
            file = checked[ann["image_id"]]
            if file is None:
                continue  # its image entry was reported
            caps = _captions_of(ann.get("caption"), source=src, record=label, field_name="caption")
            merger.add(ann["image_id"], lambda: CaptionedImage(id=str(ann["image_id"]), image=str(file),
                                                               source=src, record=image_label, name_hint=name,
                                                               field="file_name"),
                       caps, labels.get(ann["image_id"], ""), source=src, record=label, field_name="image_id")
        except DataError as e:
            policy.handle(e)
    return merger.items()


def _load_json(path: Path) -> dict:
    require_file(path, "a COCO annotations JSON file")
    data = read_json_file(path)  # undecodable bytes, bad syntax, absurd nesting: a DataError naming the line
    if not isinstance(data, dict):
        raise DataError(f"expected a JSON object, got {type(data).__name__}", source=str(path))
    return data


def _coco_labels(instances: str | os.PathLike) -> dict[Any, str]:
    data = _load_json(Path(instances))
    names = {c.get("id"): c.get("name") for c in data.get("categories", []) if isinstance(c, dict)}
    best: dict[Any, tuple[float, str]] = {}
    for ann in data.get("annotations", []):
        if not isinstance(ann, dict) or ann.get("category_id") not in names:
            continue
        area = float(ann.get("area") or 0.0)
        if ann.get("image_id") not in best or area > best[ann["image_id"]][0]:
            best[ann["image_id"]] = (area, str(names[ann["category_id"]]))
    return {k: v[1] for k, v in best.items()}


# -- Hugging Face datasets -----------------------------------------------------------------------------

def _image_value(value: Any, *, source: str, record: str, field_name: str, root: Path | None = None,
                 allow_outside_root: bool = False, images: Path | None = None) -> tuple[str | bytes, str]:
    """A `datasets` image cell (undecoded {bytes, path}, a PIL image, bytes or a path) → (ref, name hint).
    A path (relative: to `images` when given, else to `root`, the dataset folder) must stay inside `root` or
    `images` unless `allow_outside_root`."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"]), os.path.basename(value.get("path") or "")
        if value.get("path"):
            return _dataset_file(value["path"], source=source, record=record, field_name=field_name, root=root,
                                 allow_outside_root=allow_outside_root, images=images)
    elif isinstance(value, (bytes, bytearray)):
        return bytes(value), ""
    elif isinstance(value, str) and value:
        return _dataset_file(value, source=source, record=record, field_name=field_name, root=root,
                             allow_outside_root=allow_outside_root, images=images)
    elif hasattr(value, "save"):  # a decoded PIL image
        import io

        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue(), ""
    raise data_error("image", "no image (neither bytes nor an existing file)", source=source, record=record,
                     field=field_name)


def _dataset_file(ref: str, *, source: str, record: str, field_name: str, root: Path | None,
                  allow_outside_root: bool, images: Path | None = None) -> tuple[str, str]:
    """An image a dataset names by path: a relative one resolved against `images` (--images) when given, else
    the dataset folder `root`; confined to those two folders."""
    base = images if images is not None else root
    relative = base is not None and not os.path.isabs(ref)
    try:
        if "\x00" in ref:
            raise ValueError("holds a NUL byte")
        path = base / ref if relative else Path(ref)
        resolved = path.resolve()
        allowed = [r for r in (root, images) if r is not None]
        if allowed and not allow_outside_root and not any(resolved.is_relative_to(r.resolve()) for r in allowed):
            where = f"the dataset folder {str(root)!r}" + (f" and --images {str(images)!r}" if images else "")
            raise data_error("image", f"image path {ref[:200]!r} leads out of {where} (--allow-outside-root permits "
                             "it)", source=source, record=record, field=field_name)
        problem = missing_file_problem("image", ref[:200], resolved, base)
    except (OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise data_error("image", f"cannot use image path {ref[:200]!r}: {getattr(e, 'strerror', None) or e}",
                         source=source, record=record, field=field_name) from None
    if problem:
        raise data_error("image", problem, source=source, record=record, field=field_name)
    return str(resolved), resolved.name


def _rows_of_dataset(ds, *, source: str, image_column: str | None, caption_column: str | None,
                     label_column: str | None, image_keys: Sequence[str], policy: ErrorPolicy,
                     split_name: str = "", root: Path | None = None,
                     allow_outside_root: bool = False, images: Path | None = None,
                     folder_labels: bool = False) -> list[CaptionedImage]:
    """The rows of one split. `folder_labels` (an imagefolder, `root` its folder): without a label column, the
    label of each image is its class sub-folder when every image sits in a first-level sub-folder of `root`
    (`_folder_labels`); `label_column` "label" then names them."""
    from datasets import ClassLabel, Image

    names = list(ds.column_names)
    icol = _pick_column(names, image_column, image_keys, source=source, what="image")
    ccol = _pick_column(names, caption_column, CAPTION_COLUMNS + ("txt",), source=source, what="caption")
    by_folder = folder_labels and root is not None and label_column in (None, FOLDER_LABEL) and not any(
        isinstance(c, str) and c.casefold() in {name.casefold() for name in LABEL_COLUMNS + ("cls",)} for c in names)
    lcol = None if by_folder else _pick_column(names, label_column, LABEL_COLUMNS + ("cls",), source=source,
                                               what="label", required=False)
    if isinstance(ds.features.get(icol), Image):
        ds = ds.cast_column(icol, Image(decode=False))
    label_names = ds.features[lcol] if lcol and isinstance(ds.features.get(lcol), ClassLabel) else None
    out = []
    for n, row in _dataset_rows(ds, source=source, split_name=split_name):
        rec = f"{split_name + ' ' if split_name else ''}row {n}"
        try:
            ref, hint = _image_value(row[icol], source=source, record=rec, field_name=icol, root=root,
                                     allow_outside_root=allow_outside_root, images=images)
            caps = _captions_of(row[ccol], source=source, record=rec, field_name=ccol)
            lab_value = row[lcol] if lcol else None
            if label_names is not None and isinstance(lab_value, int) and lab_value >= 0:
                lab_value = label_names.int2str(lab_value)
            lab = _label_of(lab_value, source=source, record=rec, field_name=lcol or "label")
            key = row.get("__key__") or f"{split_name}{n}"
            out.append(CaptionedImage(id=str(key), image=ref, captions=caps, label=lab, source=source, record=rec,
                                      name_hint=hint, field=icol))
        except DataError as e:
            policy.handle(e)
    if by_folder:
        labels = _folder_labels(out, root)
        if labels is None and label_column == FOLDER_LABEL:
            raise DataError(f"no label column {FOLDER_LABEL!r}; the columns are {names} and the images are not all "
                            "in class sub-folders", source=source, field=FOLDER_LABEL)
        for item, lab in zip(out, labels or ()):
            item.label = lab
    return out


FOLDER_LABEL = "label"  # the column an imagefolder's class sub-folders are (`datasets`' own name)


def _folder_labels(items: Sequence[CaptionedImage], root: Path) -> list[str] | None:
    """Each image's first-level sub-folder of `root`, when every image is a file there (`datasets`' rule for an
    imagefolder's class labels, which it drops when the folder has a metadata file); else None."""
    top = root.resolve()
    labels = []
    for item in items:
        if isinstance(item.image, bytes) or not Path(item.image).is_relative_to(top):
            return None
        parts = Path(item.image).relative_to(top).parts
        if len(parts) != 2:
            return None
        labels.append(parts[0])
    return labels or None


def _dataset_rows(ds, *, source: str, split_name: str) -> Iterator[tuple[int, dict]]:
    """(1-based row number, row) of a dataset; a row the library cannot produce (a streamed imagefolder
    checks its metadata as it reads, e.g. a file_name leading out of the folder) stops the import with a
    `DataError` naming the row: what follows it cannot be read either."""
    rows = iter(ds)
    n = 0
    while True:
        n += 1
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001 - the library's message says what is wrong with the row
            raise DataError(f"the datasets library cannot read it ({type(e).__name__}: {' '.join(str(e).split())})",
                            source=source, record=f"{split_name + ' ' if split_name else ''}row {n}") from None
        yield n, row


def _datasets():
    require_extra("data", "reading a `datasets` folder (--hf-dataset)", "datasets")
    import datasets

    return datasets


def read_hf_dataset(path: str | os.PathLike, *, image_column: str | None = None, caption_column: str | None = None,
                    label_column: str | None = None, policy: ErrorPolicy, allow_outside_root: bool = False,
                    images: str | os.PathLike | None = None) -> list[CaptionedImage]:
    """A local `datasets` dataset: a `save_to_disk` folder, or an imagefolder (every split, in order;
    streamed, with the library's cache in a temporary folder removed afterwards, so nothing is left outside
    the output). Relative image paths are under `images` (--images) when given, else under the dataset folder;
    images named by path must lie inside the dataset folder or `images` unless `allow_outside_root`."""
    import tempfile

    datasets = _datasets()

    p = Path(path)
    src = str(p)
    require_folder(p, "dataset folder")
    if images is not None:
        require_folder(images, "images folder", source=src)
    saved = any((p / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json"))
    with tempfile.TemporaryDirectory(prefix="unime-datasets-") as cache:
        try:
            ds = datasets.load_from_disk(str(p)) if saved else \
                datasets.load_dataset("imagefolder", data_dir=str(p), streaming=True, cache_dir=cache)
        except Exception as e:  # the library's own message says what is wrong with the folder
            raise DataError(f"not a readable datasets folder ({type(e).__name__}: {e})", source=src) from None
        dicts = (datasets.DatasetDict, datasets.IterableDatasetDict)
        splits = list(ds.items()) if isinstance(ds, dicts) else [("", ds)]
        out: list[CaptionedImage] = []
        for name, split in splits:
            out += _rows_of_dataset(split, source=src, image_column=image_column, caption_column=caption_column,
                                    label_column=label_column, image_keys=IMAGE_COLUMNS, policy=policy,
                                    split_name=name if len(splits) > 1 else "", root=p,
                                    allow_outside_root=allow_outside_root,
                                    images=Path(images) if images is not None else None, folder_labels=not saved)
    return out


def read_webdataset(shards: Sequence[str | os.PathLike], *, image_column: str | None = None,
                    caption_column: str | None = None, label_column: str | None = None,
                    policy: ErrorPolicy) -> list[CaptionedImage]:
    """WebDataset tar shards (every sample = one image), read member by member with `tarfile`: the
    WebDataset layout is consecutive members sharing a key (the member path up to the first dot of its
    file name), one per extension. Read here rather than by `datasets`' webdataset builder, which fails
    a whole shard on one bad sample (naming no sample) and writes a cache outside `--out`. Nothing is
    extracted: a member's name is never a path on disk."""
    files = [str(Path(s).resolve()) for s in shards]
    for f in files:
        require_file(f, "a WebDataset .tar shard", missing="shard not found")
    out: list[CaptionedImage] = []
    for shard, shown in zip(files, shards):
        for n, key, members, error in _tar_samples(shard, str(shown)):
            rec = f"sample {n} ({key!r})"
            try:
                if error is not None:
                    raise error
                out.append(_wds_sample(key, members, source=str(shown), record=rec, image_column=image_column,
                                       caption_column=caption_column, label_column=label_column))
            except DataError as e:
                policy.handle(e)
    return out


def _tar_samples(shard: str, shown: str) -> Iterator[tuple[int, str, dict[str, bytes], DataError | None]]:
    """(sample number, key, extension -> bytes, the error that spoils the sample or None) of one shard. A
    shard that is no tar stops the import; a shard cut short ends with one spoilt sample (the one being
    read): what was read before it is kept."""
    import tarfile

    try:
        tar = tarfile.open(shard, mode="r|*")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"not a tar archive ({e})", source=shown) from None
    n, key, members, error = 0, None, {}, None
    with tar:
        while True:
            try:
                member = tar.next()
                if member is None:
                    break
                if member.isdir():
                    continue
                name = member.name
                parts = name.replace("\\", "/").split("/")
                base = parts[-1]
                k = "/".join(parts[:-1] + [base.split(".", 1)[0]])
                ext = base.split(".", 1)[1].lower() if "." in base else ""
                if k != key:
                    if key is not None:
                        yield n, key, members, error
                    n, key, members, error = n + 1, k, {}, None
                if error is not None:
                    continue
                if name.startswith("/") or ".." in parts:
                    error = data_error("schema", f"member name {name!r} leads out of the archive", source=shown,
                                       record=f"sample {n} ({key!r})", field=ext or None)
                elif not member.isfile():
                    kind = "a symlink" if member.issym() else "a hard link" if member.islnk() else "not a file"
                    error = data_error("schema", f"member {name!r} is {kind}", source=shown,
                                       record=f"sample {n} ({key!r})", field=ext or None)
                elif not ext:
                    error = data_error("schema", f"member {name!r} has no extension (the field of its sample)",
                                       source=shown, record=f"sample {n} ({key!r})")
                elif ext in members:
                    error = data_error("schema", f"two members {name!r} in one sample", source=shown,
                                       record=f"sample {n} ({key!r})", field=ext)
                else:
                    members[ext] = tar.extractfile(member).read()
            except (tarfile.TarError, EOFError, OSError) as e:  # cut short or corrupt from here on
                at = f"sample {n + (key is None)} ({key!r})" if key is not None else "sample 1"
                spoilt = data_error("schema", f"the archive is cut short or corrupt here ({e})", source=shown,
                                    record=at)
                yield max(n, 1), key or "", {}, spoilt
                return
    if key is not None:
        yield n, key, members, error


def _wds_text(data: bytes, *, source: str, record: str, field_name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise data_error("not_utf8", f"not UTF-8 text at byte {e.start + 1} ({data[e.start:e.start + 1]!r})",
                         source=source, record=record, field=field_name) from None


def _wds_sample(key: str, members: dict[str, bytes], *, source: str, record: str, image_column: str | None,
                caption_column: str | None, label_column: str | None) -> CaptionedImage:
    """One sample's image, captions and label (by extension: `WDS_IMAGE_KEYS`, txt/caption or json, cls)."""
    exts = sorted(members)
    if image_column:
        icol = image_column if image_column in members else None
    else:
        icol = next((k for k in WDS_IMAGE_KEYS if k in members), None)
    if icol is None:
        wanted = [image_column] if image_column else list(WDS_IMAGE_KEYS)
        raise data_error("image", f"no image member (looked for {wanted}; the sample has {exts})", source=source,
                         record=record, field=image_column or "image")
    extra: dict = {}
    if "json" in members:
        try:
            extra = json.loads(_wds_text(members["json"], source=source, record=record, field_name="json"))
        except ValueError as e:
            raise data_error("malformed_json", f"malformed JSON ({e})", source=source, record=record,
                             field="json") from None
        extra = extra if isinstance(extra, dict) else {}
    ccol = caption_column or next((k for k in ("txt", "caption", "text") if k in members), None)
    if ccol is not None and ccol in members:
        caps = _captions_of(_wds_text(members[ccol], source=source, record=record, field_name=ccol), source=source,
                            record=record, field_name=ccol)
    elif caption_column is None and ("caption" in extra or "text" in extra):
        caps = _captions_of(extra.get("caption", extra.get("text")), source=source, record=record,
                            field_name="json.caption")
    else:
        wanted = [caption_column] if caption_column else ["txt", "caption", "text", "json.caption"]
        raise data_error("schema", f"no caption member (looked for {wanted}; the sample has {exts})", source=source,
                         record=record, field=caption_column or "txt")
    lcol = label_column or ("cls" if "cls" in members else None)
    if lcol is not None and lcol in members:
        value: Any = _wds_text(members[lcol], source=source, record=record, field_name=lcol).strip()
        lab = _label_of(value, source=source, record=record, field_name=lcol)
    else:
        lab = _label_of(extra.get("label"), source=source, record=record, field_name="json.label")
    return CaptionedImage(id=key, image=members[icol], captions=caps, label=lab, source=source, record=record,
                          name_hint=os.path.basename(key) + "." + icol, field=icol)


@dataclass(kw_only=True)
class CollectionSource(RangeChecked):
    """Where `unime data import` reads a collection: exactly one of captions / coco / hf_dataset / webdataset,
    and how (`unime.options`)."""

    captions: str | None = option(None, "CSV / TSV / JSONL of (image, caption[, label]) rows; image paths relative "
                                  "to --images", metavar="FILE", exclusive="source", exclusive_required=True)
    coco: str | None = option(None, "COCO captions JSON (captions_*.json); images in --images", metavar="FILE",
                              exclusive="source")
    hf_dataset: str | None = option(None, "a `datasets` folder: save_to_disk output or an imagefolder", metavar="DIR",
                                    exclusive="source")
    webdataset: list[str] | None = option(None, "WebDataset .tar shards", nargs="+", metavar="SHARD",
                                          exclusive="source")
    images: str | None = option(None, "folder of the images (--captions, --coco); with --hf-dataset the folder its "
                                "relative image paths are under (default: the dataset folder)", metavar="DIR")
    allow_outside_root: bool = option(False, "permit absolute image paths and '..' / symlinks leading out of --images "
                                      "(or out of the --hf-dataset folder)")
    coco_instances: str | None = option(None, "COCO instances JSON: the largest object's category becomes the "
                                        "image's label", metavar="FILE")
    image_column: str | None = option(None, "column of the image path (default: image, file_name, ...)")
    caption_column: str | None = option(None, "column of the caption (default: caption, text, ...)")
    label_column: str | None = option(None, "column of a class label (default: label, category, class if present); "
                                      "labels add a classification task")
    delimiter: str | None = option(None, "CSV delimiter, one character; \\t for a tab (default: tab for .tsv, "
                                   "else comma)")

    def read(self, policy: ErrorPolicy) -> tuple[list[CaptionedImage], dict, Path]:
        """The images, what was read (for import.json) and the folder the collection is named after."""
        from unime.errors import UsageError

        cols = dict(image_column=self.image_column, caption_column=self.caption_column,
                    label_column=self.label_column)
        if (self.captions or self.coco) and not self.images:
            raise UsageError("--captions / --coco need --images DIR", command="data import")
        if self.webdataset and self.images:
            raise UsageError("--images does not apply to --webdataset: its shards hold the images",
                             command="data import")
        if self.captions:
            images = read_caption_table(self.captions, self.images, delimiter=self.delimiter, policy=policy,
                                        allow_outside_root=self.allow_outside_root, **cols)
            origin = Path(self.images).resolve()
            return images, {"captions": self.captions, "images": self.images}, \
                origin.parent if origin.name in ("images", "imgs", "img") else origin
        if self.coco:
            images = read_coco_captions(self.coco, self.images, instances=self.coco_instances, policy=policy,
                                        allow_outside_root=self.allow_outside_root)
            return images, {"coco": self.coco, "images": self.images}, Path(self.coco).resolve().parent
        if self.hf_dataset:
            images = read_hf_dataset(self.hf_dataset, policy=policy, allow_outside_root=self.allow_outside_root,
                                     images=self.images, **cols)
            return images, {"hf_dataset": self.hf_dataset, **({"images": self.images} if self.images else {})}, \
                Path(self.hf_dataset).resolve()
        images = read_webdataset(self.webdataset, policy=policy, **cols)
        return images, {"webdataset": list(self.webdataset)}, Path(self.webdataset[0]).resolve().parent
