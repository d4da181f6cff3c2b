"""The unit of data: an `Item` (text, images, video frames) and a training `Record`.

Images are referenced either by a path relative to a data root (str) or as inline encoded bytes
(PNG/JPEG). Loading goes through `unime.data.images.ImageLoader`, which enforces the safety rules.
An item's `key` identifies it for de-duplication and embedding caches.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Union

from unime.data.video import VideoFileRef, is_video_file_ref
from unime.errors import DataError

# a path relative to the data root, inline encoded bytes, or (in memory only) a PIL image
ImageRef = Union[str, bytes, Any]


def _is_pil(ref: Any) -> bool:
    return hasattr(ref, "tobytes") and hasattr(ref, "size") and hasattr(ref, "mode")


def _is_image_ref(x: Any) -> bool:
    """An image reference that is not a str: bytes, a PIL image or a `pathlib.Path`."""
    return isinstance(x, (bytes, bytearray, os.PathLike)) or _is_pil(x)


def _is_single_ref(x: Any) -> bool:
    """One image reference (a path, bytes, a PIL image) or one item (a str, dict, `Item`), not a sequence."""
    return isinstance(x, (str, dict, Item)) or _is_image_ref(x)


def _path_ref(ref: Any) -> Any:
    """`ref`, a `pathlib.Path` (any `os.PathLike`) as its path string: refused as not a path before (QA)."""
    return os.fspath(ref) if isinstance(ref, os.PathLike) else ref


def _ref_key(ref: ImageRef) -> str:
    if isinstance(ref, str):
        return "path:" + ref
    if isinstance(ref, (bytes, bytearray)):
        return "sha1:" + hashlib.sha1(ref).hexdigest()
    if hasattr(ref, "tobytes") and hasattr(ref, "size"):  # PIL image
        h = hashlib.sha1(f"{ref.mode}{ref.size}".encode())
        h.update(ref.tobytes())
        return "pil:" + h.hexdigest()
    raise DataError(f"unsupported image reference of type {type(ref).__name__}", field="images")


@dataclass(frozen=True)
class Item:
    """Text, image(s), or both; or a video: an ordered tuple of frames, or a 1-tuple holding one video
    file (decoded and sampled by `unime.data.video` when loaded).

    `text` may contain the source format's image placeholders (e.g. MMEB's `<|image_1|>`); the model
    adapter maps them to the target family's image token (see `unime.models.adapters`).
    """

    text: str = ""
    images: tuple[ImageRef, ...] = ()
    video: tuple[ImageRef, ...] = ()

    def __post_init__(self):
        if not isinstance(self.text, str):
            raise DataError(f"text must be a string, got {type(self.text).__name__}", field="text")
        # accept lists for convenience, store tuples so items stay hashable; a single reference is refused
        # (a str would be iterated character by character, a PIL image is not iterable); a `pathlib.Path` is its path
        for name in ("images", "video"):
            refs = getattr(self, name)
            if not isinstance(refs, tuple):
                if _is_single_ref(refs) or not hasattr(refs, "__iter__"):
                    raise DataError(f"{name} must be a list or tuple of image references, got a single "
                                    f"{type(refs).__name__}; wrap it: {name}=[...]", field=name)
                refs = tuple(refs)
            if any(isinstance(r, os.PathLike) for r in refs):
                refs = tuple(map(_path_ref, refs))
            object.__setattr__(self, name, refs)

    @property
    def is_empty(self) -> bool:
        return not self.text.strip() and not self.images and not self.video

    @property
    def key(self) -> str:
        """Stable content key: same text and same image references → same key."""
        payload = json.dumps(
            {"t": self.text, "i": [_ref_key(r) for r in self.images], "v": [_ref_key(r) for r in self.video]},
            ensure_ascii=False, sort_keys=True,
        )
        return hashlib.sha1(payload.encode("utf-8")).hexdigest()

    @property
    def lone_video_file(self) -> str | None:
        """The path of this item's video when it is one video file that a list holding the path would not say (no
        video extension: read back from a list, it would be one frame); a written file marks it (JSONL: the path
        alone, `to_dict`; Parquet: `unime.data.io`)."""
        ref = self.video[0] if len(self.video) == 1 else None
        return str(ref) if isinstance(ref, VideoFileRef) and not is_video_file_ref(str(ref)) else None

    def to_dict(self) -> dict[str, Any]:
        if any(not isinstance(r, str) for r in self.images + self.video):
            raise DataError("items with inline images are not JSON-serialisable; write Parquet",
                            field="images")
        d: dict[str, Any] = {"text": self.text}
        if self.images:
            d["images"] = list(self.images)
        if self.lone_video_file is not None:
            d["video"] = self.lone_video_file  # a video file without a video extension: read back as one file
        elif self.video:
            d["video"] = list(self.video)
        return d

    @classmethod
    def from_dict(cls, d: Any, *, source: str | None = None, record: str | int | None = None,
                  field_name: str = "item") -> "Item":
        """Build an item from `{"text": ..., "image": path | "images": [...], "video": [...] | "clip.mp4"}` (both
        "image" and "images": a DataError naming both).

        `video` is a list of frame images or one video file (a path or bytes; see `unime.data.video`)."""
        if isinstance(d, Item):
            return d
        if isinstance(d, str):
            return cls(text=d)
        if not isinstance(d, dict):  # an image alone (from Python: JSON holds none) is told how it makes an item
            alone = ": an image alone is the item {'image': ...}" if _is_image_ref(d) else ""
            raise DataError(f"expected an object, got {type(d).__name__}{alone}", source=source, record=record,
                            field=field_name)
        unknown = set(d) - {"text", "image", "images", "video"}
        if unknown:
            raise DataError(f"unknown keys {sorted(unknown)}", source=source, record=record, field=field_name)
        if d.get("image") is not None and d.get("images") is not None:  # both were read, "image" first (QA)
            raise DataError(f"both {field_name}.image and {field_name}.images are given: give one, every image in "
                            f"{field_name}.images", source=source, record=record, field=f"{field_name}.image")
        text = d.get("text")
        if text is None:
            text = ""
        elif not isinstance(text, str):  # {"text": 0} was read as "" (`or ""`)
            raise DataError(f"text must be a string, got {type(text).__name__}", source=source, record=record,
                            field=f"{field_name}.text")
        video, image = _path_ref(d.get("video")), _path_ref(d.get("image"))  # a `pathlib.Path` is its path
        if isinstance(video, (str, bytes)) and video:
            # one video file: {"video": "clips/x.mp4"}, whatever its extension (a list of paths is frames)
            video = [VideoFileRef(video) if isinstance(video, str) else video]
        for k, v in (("images", d.get("images")), ("video", video)):
            if v is not None and not isinstance(v, (list, tuple)):
                raise DataError(f"expected a video file or a list of image references, got {type(v).__name__}"
                                if k == "video" else f"expected a list of image references, got {type(v).__name__}",
                                source=source,
                                record=record, field=f"{field_name}.{k}")
        if image is not None and not isinstance(image, (str, bytes)) and not _is_pil(image):
            raise DataError(f"expected an image path, bytes or a PIL image, got {type(image).__name__}",
                            source=source, record=record, field=f"{field_name}.image")
        images = list(map(_path_ref, d.get("images") or []))
        if image is not None:  # an empty path is refused below, as in "images"
            images.insert(0, image)
        for k, refs in (("images", images), ("video", list(map(_path_ref, video or [])))):
            for r in refs:
                if isinstance(r, str) and not r or not isinstance(r, (str, bytes)) and not _is_pil(r):
                    got = "" if isinstance(r, str) else f", got {type(r).__name__}"
                    raise DataError(f"image reference must be a non-empty path, bytes or a PIL image{got}",
                                    source=source, record=record, field=f"{field_name}.{k}")
        return cls(text=text, images=tuple(images), video=tuple(video or ()))


def require_list(x: Any, *, name: str, of: str = "items (str, dict or Item)") -> list:
    """`x` as a list, refusing a single item where a list is expected: a bare str (it would be read character by
    character), a dict, an `Item`, an image, or anything not iterable is a TypeError naming the argument."""
    if _is_single_ref(x) or not hasattr(x, "__iter__"):
        raise TypeError(f"{name} must be a list of {of}, got a single {type(x).__name__}; wrap it in a list")
    return list(x)


def one_item(x: Any, *, name: str = "item") -> Item:
    """`x` (a str, a dict or an `Item`) as an `Item` to embed or score: an empty one (no text, image or video: "",
    {}, {"text": "  "}) is a DataError naming it, as the readers refuse empty items."""
    item = Item.from_dict(x, field_name=name)
    if item.is_empty:
        raise DataError("empty item (no text, image or video)", field=name)
    return item


def item_list(items: Any, *, name: str = "items") -> list[Item]:
    """`items` (a list, tuple or other iterable of items, each a str, a dict or an `Item`) as a list of `Item`s;
    a single item instead of a list is a TypeError (`require_list`), an empty item a DataError (`one_item`)."""
    return [one_item(x, name=f"{name}[{i}]") for i, x in enumerate(require_list(items, name=name))]


@dataclass
class Record:
    """A training record: a query, its positive, optional hard negatives with optional judge scores."""

    query: Item
    positive: Item
    negatives: list[Item] = field(default_factory=list)
    positive_score: float | None = None
    negative_scores: list[float] | None = None
    dataset: str = ""
    id: str = ""

    def validate(self, *, source: str | None = None) -> "Record":
        rid = self.id or None
        if self.query.is_empty:
            raise DataError("empty query", source=source, record=rid, field="query")
        if self.positive.is_empty:
            raise DataError("empty positive", source=source, record=rid, field="positive")
        for i, n in enumerate(self.negatives):
            if n.is_empty:
                raise DataError("empty negative", source=source, record=rid, field=f"negatives[{i}]")
        if self.negative_scores is not None and len(self.negative_scores) != len(self.negatives):
            raise DataError(f"{len(self.negative_scores)} scores for {len(self.negatives)} negatives",
                            source=source, record=rid, field="negative_scores")
        from unime.data.scores import parse_score

        parse_score(self.positive_score, source=source, record=rid, field="positive_score")
        for i, s in enumerate(self.negative_scores or []):
            parse_score(s, source=source, record=rid, field=f"negative_scores[{i}]", allow_none=False)
        return self
