"""Request items → `Item`s, with the service's safety rules.

Images are accepted only inline, as ``data:image/<format>;base64,<payload>`` URIs: a path, a
``file:`` or ``http(s):`` URL, or anything else is refused — a request never makes the service read a
file or fetch a URL. The encoded size is checked before decoding, the pixel count on the image header
before the pixels are decoded (decompression bombs), by `unime.data.images.ImageLoader`. Videos likewise, only
as ``data:video/<format>;base64,<payload>`` URIs: the encoded size checked against ``max_video_bytes`` before
decoding, then decoded in memory and sampled by the model's loader (`unime.data.video.load_video`: the file
loader's limits and the `--video-*` sampling `unime embed` applies to a file; its frames cached for the model).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Callable, Sequence

from unime.data.images import ImageLoader
from unime.data.items import Item
from unime.data.placeholders import MODEL_SPECIAL_TOKEN
from unime.errors import DataError
from unime.serve.config import Limits

DATA_URI = re.compile(r"^data:image/[a-zA-Z0-9.+-]+;base64,", re.ASCII)
VIDEO_URI = re.compile(r"^data:video/[a-zA-Z0-9.+-]+;base64,", re.ASCII)
OTHER_MEDIA_URI = re.compile(r"^data:(image|video)/([a-zA-Z0-9.+-]+);base64,", re.ASCII)  # either field's URI


class RequestError(Exception):
    """A bad request: status (4xx), a message for the client, an OpenAI-style error type and parameter."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


class InlineOnlyLoader(ImageLoader):
    """An image loader that refuses every path: the service's models only see decoded inline images."""

    def resolve(self, ref, *, source=None, record=None, field=None):
        raise DataError("the service does not read image files", source=source, record=record, field=field)


def inline_payload(uri: Any, pattern: re.Pattern, what: str, example: str, max_bytes: int, field: str) -> bytes:
    """The decoded payload of an inline `data:` URI matching `pattern` (`what`: "image", "video"; `example`: the URI
    a message shows), its encoded size held to `max_bytes` before it is decoded; else a `RequestError` naming
    `field`."""
    if not isinstance(uri, str) or not pattern.match(uri):
        other = OTHER_MEDIA_URI.match(uri) if isinstance(uri, str) else None
        if other and other.group(1) != what:  # an inline URI of the other field's media: say which field takes it
            hint = ("an animated GIF, APNG or WebP is read as a video sent as data:video/gif;base64,... (and so on), a "
                    "still image goes in 'image'" if what == "video" else "a video goes in 'video'")
            article = "an" if what == "image" else "a"
            raise RequestError(400, f"{field}: got a data:{other.group(1)}/{other.group(2)} URI; {article} {what}'s "
                                    f"is data:{what}/<format>;base64,... ({example}): {hint}", param=field)
        shown = uri[:60] + "…" if isinstance(uri, str) and len(uri) > 60 else uri
        raise RequestError(400, f"{field}: {what}s must be inline data URIs ({example}); "
                                f"the server never reads files or fetches URLs (got {shown!r})", param=field)
    payload = uri[uri.index(",") + 1:]
    if len(payload) * 3 // 4 > max_bytes:
        raise RequestError(413, f"{field}: {what} is over {max_bytes} bytes", param=field)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{field}: invalid base64 in the data URI", param=field) from None


def decode_image(uri: Any, limits: Limits, field: str):
    """A PIL RGB image from an inline `data:` URI, or a `RequestError` naming `field`."""
    raw = inline_payload(uri, DATA_URI, "image", "data:image/png;base64,...", limits.max_image_bytes, field)
    try:
        return ImageLoader(max_pixels=limits.max_image_pixels, max_aspect_ratio=limits.max_aspect_ratio).load(
            raw, field=field)
    except DataError as e:
        raise RequestError(400, str(e), param=field) from None


def decode_video_uri(uri: Any, limits: Limits, field: str, loaders: Sequence[Any] = ()) -> bytes:
    """The video bytes of an inline `data:video/...` URI, or a `RequestError` naming `field`. The bytes are decoded
    and sampled now by each of `loaders` (the loaders of the models that read the item: their sampling, their
    aspect-ratio limit), so that a bad clip (not a video, truncated, no frames, too long) is refused here and the
    model's own load finds its frames in the frame cache."""
    from unime.data.video import is_one_video_file

    raw = inline_payload(uri, VIDEO_URI, "video", "data:video/mp4;base64,...", limits.max_video_bytes, field)
    if not raw:
        raise RequestError(400, f"{field}: empty video (no bytes in the data URI)", param=field)
    for loader in loaders:
        if not is_one_video_file(loader, [raw]):  # read as a frame list, it would be one still image
            raise RequestError(400, f"{field}: not a video (no video container or animated image in the data URI)",
                               param=field)
        try:
            loader.load_video([raw], field=field)
        except DataError as e:
            raise RequestError(400, str(e), param=field) from None
    return raw


def check_text(text: Any, limits: Limits, field: str) -> str:
    if not isinstance(text, str):
        raise RequestError(400, f"{field}: expected a string", param=field)
    if len(text) > limits.max_text_chars:
        raise RequestError(400, f"{field}: text of {len(text)} characters is over the limit of "
                                f"{limits.max_text_chars}", param=field)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # JSON's "\ud800" escape: a lone UTF-16 surrogate (was a 500 at `Item.key`)
        raise RequestError(400, f"{field}: text holds a lone UTF-16 surrogate {text[e.start]!r} at character "
                                f"{e.start}, which is not valid Unicode", param=field) from None
    special = MODEL_SPECIAL_TOKEN.search(text)
    if special:  # would end the user turn of the prompt, or claim an image no request sent (a 500 before)
        raise RequestError(400, f"{field}: text holds the model's special token {special.group(0)!r}", param=field)
    return text


def to_item(x: Any, limits: Limits, field: str, *, instruction: str | None = None,
            count_tokens: Callable[[str], int] | None = None, video_loaders: Sequence[Any] = ()) -> Item:
    """A request input (a string, or an object with `text`, `image`, `images` and/or `video`) → `Item`.
    An `instruction` is put before the text, on its own line. `count_tokens` (the model's tokenizer,
    `Engine.count_tokens`): the text with its instruction is held to `limits.max_text_tokens`. `video_loaders`: the
    image loaders of the models that read the item, which decode and check its video (`decode_video_uri`)."""
    text_field = field
    video: list[bytes] = []
    if isinstance(x, str):
        text, images = check_text(x, limits, field), []
    else:
        d = x if isinstance(x, dict) else x.model_dump(exclude_none=True)
        text_field = f"{field}.text"
        text = check_text(d.get("text") or "", limits, text_field)
        refs = ([d["image"]] if d.get("image") is not None else []) + list(d.get("images") or [])
        images = [decode_image(r, limits, f"{field}.image" if i == 0 and d.get("image") is not None
                               else f"{field}.images[{i}]") for i, r in enumerate(refs)]
        if d.get("video") is not None:
            video = [decode_video_uri(d["video"], limits, f"{field}.video", video_loaders)]
    if instruction:
        check_text(instruction, limits, "instruction")
        text = f"{instruction}\n{text}" if text else instruction
    if count_tokens is not None and text:
        # characters do not bound tokens (8000 emoji: 32,000 tokens, 8 times the tiny models' context, which
        # held the model thread, and every request queued behind it, for minutes)
        n = count_tokens(text)
        if n > limits.max_text_tokens:
            raise RequestError(400, f"{text_field}: text of {n} tokens{' with the instruction' if instruction else ''} "
                                    f"is over the limit of {limits.max_text_tokens}", param=text_field)
    item = Item(text=text, images=tuple(images), video=tuple(video))
    if item.is_empty:
        raise RequestError(400, f"{field}: empty input (no text, image or video)", param=field)
    return item
