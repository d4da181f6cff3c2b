"""Checks shared by every reader: item shape, image placeholders (scores: `unime.data.scores`).

Each check raises a `DataError` (tagged with its skip reason, see `unime.data.skips`) that names the
source file, the record and the field.
"""

from __future__ import annotations

from typing import Any

from unime.data.items import Item
from unime.data.placeholders import placeholder_refs
from unime.data.skips import data_error
from unime.errors import DataError


def check_placeholders(item: Item, *, source=None, record=None, field: str = "text") -> None:
    """Every image placeholder in the text must name one of the item's images (`unime.data.placeholders`
    numbering, the one the family adapters map)."""
    for m, idx in placeholder_refs(item.text):
        if idx < 0 or idx >= len(item.images):
            raise data_error("placeholder", f"text has placeholder {m.group(0)!r} but the item has "
                             f"{len(item.images)} image(s)", source=source, record=record, field=field)


def parse_item(obj: Any, *, source=None, record=None, field: str = "item") -> Item:
    """An `Item` from a JSON-like object (`{"text", "image", "images", "video"}` or a bare string)."""
    try:
        item = Item.from_dict(obj, source=source, record=record, field_name=field)
    except DataError as e:
        if getattr(e, "reason", None) is None:
            e.reason = "schema"  # type: ignore[attr-defined]
        raise
    if item.is_empty:
        raise data_error("empty_item", "empty item (no text, image or video)", source=source, record=record,
                         field=field)
    check_placeholders(item, source=source, record=record, field=f"{field}.text")
    return item


def make_item(text: Any, image: Any, *, source=None, record=None, field: str = "item",
              text_key: str = "text", image_key: str = "image") -> Item:
    """An `Item` from a (text, image path) pair of a flat format; `""` or None = no image."""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise data_error("schema", f"expected a string, got {type(text).__name__}", source=source, record=record,
                         field=text_key)
    if image is None:
        image = ""
    if not isinstance(image, str):
        raise data_error("schema", f"expected an image path string, got {type(image).__name__}", source=source,
                         record=record, field=image_key)
    item = Item(text=text, images=(image,) if image else ())
    if item.is_empty:
        raise data_error("empty_item", "empty item (no text and no image)", source=source, record=record,
                         field=field)
    check_placeholders(item, source=source, record=record, field=text_key)
    return item


# The two JSONL files a user may give one for the other (`--tcots records.jsonl`, `--records tcots.jsonl`): the keys of
# each (required, optional) and what the option reading it takes, so a key check given exactly the keys of the other
# says which file it was given (`swapped_file_hint`).
RECORD_KEYS_REQUIRED = {"query", "positive"}
RECORD_KEYS_OPTIONAL = {"id", "dataset", "negatives", "positive_score", "negative_scores"}
TCOT_KEYS_REQUIRED = {"record_id", "side", "item", "tcot"}
TCOT_KEYS_OPTIONAL = {"source", "video_sampling"}
_SWAPPABLE_FILES = (
    ("records", RECORD_KEYS_REQUIRED, RECORD_KEYS_OPTIONAL,
     "--records takes a records file (keys id, query, positive, negatives, ...)"),
    ("T-CoT", TCOT_KEYS_REQUIRED, TCOT_KEYS_OPTIONAL,
     "--tcots takes the T-CoT file written by `unime reason teacher` / `reason generate`"),
)


def swapped_file_hint(keys: Any, required: set[str]) -> str:
    """": this looks like a records file (keys ...); --tcots takes ..." when `keys` are exactly the keys of the other
    of the two `_SWAPPABLE_FILES` than the one whose required keys are `required`; "" otherwise."""
    keys = set(keys)
    expected = [advice for _, req, _, advice in _SWAPPABLE_FILES if req == required]
    given = [name for name, req, opt, _ in _SWAPPABLE_FILES if req != required and req <= keys <= req | opt]
    if not expected or not given:
        return ""
    return f": this looks like a {given[0]} file (keys {', '.join(sorted(keys))}); {expected[0]}"


def check_keys(obj: Any, required: set[str], optional: set[str], *, source=None, record=None,
               what: str = "record") -> dict:
    if not isinstance(obj, dict):
        raise data_error("schema", f"a {what} must be a JSON object, got {type(obj).__name__}", source=source,
                         record=record)
    missing = required - obj.keys()
    extra = obj.keys() - required - optional
    if missing:  # a misspelt key (`positve`) is named beside the key it stands for
        typo = (f" with unknown key(s) {sorted(extra)} given: rename them to the expected keys "
                f"{sorted(required | optional)}") if extra else ""
        typo = swapped_file_hint(obj.keys(), required) or typo
        raise data_error("schema", f"missing key(s) {sorted(missing)}{typo}", source=source, record=record,
                         field=sorted(missing)[0])
    if extra:
        raise data_error("schema", f"unknown key(s) {sorted(extra)} (expected {sorted(required | optional)})",
                         source=source, record=record, field=sorted(extra)[0])
    return obj


def check_str(value: Any, *, source=None, record=None, field: str, allow_none: bool = True) -> str:
    if value is None and allow_none:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise data_error("schema", f"expected a string, got {type(value).__name__}", source=source, record=record,
                         field=field)
    return value


def check_aligned_lists(first: Any, second: Any, *, source=None, record=None, first_key: str, second_key: str,
                        what: str) -> None:
    """`first` a non-empty list and `second` a list of as many entries (`what`: the words for them, e.g.
    "grades (one per candidate)"), each error naming its key."""
    if not isinstance(first, list) or not first:
        raise data_error("schema", "expected a non-empty list", source=source, record=record, field=first_key)
    if not isinstance(second, list) or len(second) != len(first):
        raise data_error("schema", f"expected a list of {len(first)} {what}", source=source, record=record,
                         field=second_key)
