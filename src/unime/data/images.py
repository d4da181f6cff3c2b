"""Safe image loading.

Rules (all violations raise `DataError` naming source, record and field):
- a path must stay inside the data root: absolute paths outside it and `..` escapes are rejected unless the
  loader was created with `allow_outside_root=True` (an absolute path inside the root is accepted);
- a pixel limit guards against decompression bombs (checked on the header, before decoding);
- with `max_aspect_ratio` (the caller's model's processor limit), an image whose longer side is more than that
  many times its shorter one is refused from its header too (in-memory images included);
- EXIF orientation is applied and every mode is converted to RGB (alpha composited on white).
"""

from __future__ import annotations

import io
import os
import re
import stat
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from unime.data.items import ImageRef
from unime.data.video import (SIGNATURE_BYTES, VideoSampling, aspect_ratio_problem, ftyp_brands, is_image_brand,
                              is_video_file_ref, load_video, missing_file_problem)
from unime.errors import DataError

DEFAULT_MAX_PIXELS = 64_000_000  # ~ 8000 x 8000
MAX_PATH_BYTES = 4096  # PATH_MAX on Linux: longer image paths are bad input, not an OS error
MAX_NAME_BYTES = 255   # NAME_MAX: one path component


def path_below(root: Path, full: str) -> str | None:
    """The part of the absolute, normalised path `full` below the folder `root` ('.': the root itself; None: not
    inside it), compared as strings: `Path.is_relative_to` / `relative_to` without their parsing per row."""
    base = str(root)
    if full == base:
        return "."
    prefix = base if base.endswith(os.sep) else base + os.sep
    return full[len(prefix):] if full.startswith(prefix) else None


def real_path_under(root: Path, ref: str) -> tuple[str, str | None]:
    """The real path `ref` names, as `Path.resolve()` gives it (symlinks and `..` resolved; a relative `ref` is
    relative to `root`, a resolved folder: `ImageLoader.root`), and its part below `root` (`path_below`). On
    strings, and a relative path's components are looked at below the root only (the root is real already):
    a collection of 20,000 rows spent seconds in pathlib's parsing and a `lstat` of every folder above."""
    if os.path.isabs(ref):
        full = os.path.realpath(ref)
        return full, path_below(root, full)
    full = base = str(root)
    for part in ref.split(os.sep):
        if part in ("", "."):
            continue
        if part == "..":  # the components so far are real folders (or missing): `..` is their parent
            full = os.path.dirname(full)
            continue
        full = os.path.join(full, part)
        try:
            link = stat.S_ISLNK(os.lstat(full).st_mode)
        except OSError:  # missing, or below a file: not a link, as `realpath` takes it
            link = False
        if link:  # a symlink below the root: where it leads is realpath's to say
            full = os.path.realpath(os.path.join(base, ref))
            break
    return full, path_below(root, full)


# PIL plugins of the ISO-BMFF images PIL may not read itself (a HEIF / HEIC image; an AVIF one, under a Pillow built
# without it): (what the image is, the module, the package to install). Imported the first time PIL cannot read such
# an image; pillow_heif's reader is registered by its register_heif_opener(), pillow_avif's by the import.
_HEIF_PLUGIN = ("a HEIF / HEIC image", "pillow_heif", "pillow-heif")
_AVIF_PLUGIN = ("an AVIF image", "pillow_avif", "pillow-avif-plugin")
_PLUGINS_LOADED: dict[str, bool] = {}


def _image_plugin(head: bytes) -> tuple[str, str, str] | None:
    """The PIL plugin (`_HEIF_PLUGIN`, `_AVIF_PLUGIN`) of the ISO-BMFF still image that `head` starts
    (`unime.data.video.is_image_brand`), None for any other file."""
    if not is_image_brand(head):
        return None
    major, compatible = ftyp_brands(head)
    return _AVIF_PLUGIN if major == b"avif" or (b"avif" in compatible and major not in (b"heic", b"heix")) \
        else _HEIF_PLUGIN


# the brands of a HEIF image coded in HEVC (ISO/IEC 23008-12), the files an iPhone names .heic; other HEIF: .heif
_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis"})


def iso_image_suffix(head: bytes) -> str | None:
    """The file extension of the ISO-BMFF still image that `head` starts, by its brands (`_image_plugin`): ".avif",
    ".heic" (HEVC: `_HEIC_BRANDS`) or ".heif"; None for any other file. PIL reads some of them only with a plugin
    (or not at all), so their bytes cannot be named by the format PIL reports."""
    plugin = _image_plugin(head)
    if plugin is None:
        return None
    if plugin is _AVIF_PLUGIN:
        return ".avif"
    major, compatible = ftyp_brands(head)
    return ".heic" if ({major} | compatible) & _HEIC_BRANDS else ".heif"


def _pil_reads_avif() -> bool:
    """Whether this Pillow reads AVIF itself (built with libavif: Pillow 11.2 and later)."""
    from PIL import features

    return bool(features.check("avif"))


def _load_plugin(module: str) -> bool:
    """Whether PIL's plugin `module` is loaded: imported (and its reader registered) on the first call."""
    if module not in _PLUGINS_LOADED:
        import importlib

        try:
            plugin = importlib.import_module(module)
        except ImportError:
            _PLUGINS_LOADED[module] = False
        else:
            register = getattr(plugin, "register_heif_opener", None)
            if register is not None:
                register()
            _PLUGINS_LOADED[module] = True
    return _PLUGINS_LOADED[module]


def _open_image(fh, name: str, *, source, record, field) -> Image.Image:
    """PIL's image of the open file `fh`; a HEIF / HEIC or AVIF image PIL cannot read is read by its plugin
    (`_image_plugin`) when that is installed, else refused with what to install."""
    try:
        return Image.open(fh)
    except UnidentifiedImageError:
        fh.seek(0)
        plugin = _image_plugin(fh.read(SIGNATURE_BYTES))
        if plugin is None:
            raise DataError(f"corrupt or unreadable image {name}: not in an image format PIL can read",
                            source=source, record=record, field=field) from None
        what, module, package = plugin
        if plugin is _AVIF_PLUGIN and _pil_reads_avif():  # PIL's own AVIF reader refused it
            raise DataError(f"corrupt or unreadable image {name}: {what} that PIL's AVIF reader cannot read",
                            source=source, record=record, field=field) from None
        if not _load_plugin(module):
            raise DataError(f"image {name} is {what}, which PIL cannot read without the {package} package "
                            f"(pip install {package})", source=source, record=record, field=field) from None
    fh.seek(0)
    try:
        return Image.open(fh)
    except UnidentifiedImageError:  # the plugin does not read it either
        raise DataError(f"corrupt or unreadable image {name}: {what} that {package} cannot read", source=source,
                        record=record, field=field) from None


class ImageLoader:
    def __init__(self, root: str | os.PathLike | None = None, *, allow_outside_root: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS, video: VideoSampling | None = None,
                 max_aspect_ratio: float | None = None):
        self.root = Path(root).resolve() if root is not None else Path.cwd().resolve()
        self.allow_outside_root = allow_outside_root
        self.max_pixels = max_pixels
        # the processor's own limit (`unime.models.image_budget.ImageBudget.max_aspect_ratio`): beyond it the
        # processor raises a bare ValueError in the middle of a batch; None: no limit
        self.max_aspect_ratio = max_aspect_ratio
        self.video_sampling = video  # None: `unime.data.video.VideoSampling()` defaults

    def under(self, root: str | os.PathLike | None) -> "ImageLoader":
        """This loader (its limits, video sampling, path rule) with image paths relative to `root`: one loader's
        rules over the data roots of several files (an eval suite's tasks)."""
        import copy

        rooted = copy.copy(self)
        rooted.root = Path(root).resolve() if root is not None else Path.cwd().resolve()
        return rooted

    # what the two refusals below add: the commands that have the option (those that read a user's own folders)
    _PERMIT_TEXT = ("; `unime data import`, `data check`, `eval`, `mine` and `judge` permit it with "
                    "--allow-outside-root (in Python: ImageLoader(..., allow_outside_root=True))")

    def resolve(self, ref: str, *, source=None, record=None, field=None) -> Path:
        if "\x00" in ref:
            raise DataError(f"image path {ref[:80]!r} holds a NUL byte", source=source, record=record, field=field)
        if len(ref.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES or any(
                len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES for part in ref.split("/")):
            raise DataError(f"image path {ref[:80]!r}... is too long ({len(ref)} characters)", source=source,
                            record=record, field=field)
        full, inside = real_path_under(self.root, ref)
        if self.allow_outside_root or inside is not None:
            return Path(full)  # an absolute path inside the root too (VLM2Vec's parsers write absolute frame paths)
        what = "video" if is_video_file_ref(ref) else "image"  # a video file's path is resolved here too
        if os.path.isabs(ref):
            raise DataError(f"absolute {what} path {ref!r} not allowed outside the data root ({self.root}): image "
                            f"and video paths are relative to it or inside it{self._PERMIT_TEXT}", source=source,
                            record=record, field=field)
        raise DataError(f"{what} path {ref!r} escapes the data root ({self.root}){self._PERMIT_TEXT}", source=source,
                        record=record, field=field)

    def file_path(self, ref: str, *, source=None, record=None, field=None) -> Path:
        """The file of the image path `ref`, checked by a stat without opening it: inside the data root (`resolve`),
        a regular file (`missing_file_problem`: a missing one names the folder a relative path was resolved against,
        for every command) — the first checks of `load`, with its messages (`ImageChecker.check_files`)."""
        path = self.resolve(ref, source=source, record=record, field=field)
        try:
            problem = missing_file_problem("image", ref, path, self.root)
        except OSError as e:  # a path the OS rejects
            raise DataError(f"cannot open image {ref!r}: {e.strerror or e}", source=source, record=record,
                            field=field) from None
        if problem:
            raise DataError(problem, source=source, record=record, field=field)
        return path

    def load(self, ref: ImageRef, *, source=None, record=None, field=None, shown_as: str | None = None) -> Image.Image:
        """The image `ref` (a path under the root, bytes or a PIL image) as RGB; any failure is a `DataError`
        naming `source`, `record`, `field` and the image (`shown_as`, where the user knows it by another path)."""
        return self._read(ref, source=source, record=record, field=field, shown_as=shown_as, decode=True)

    def check_header(self, ref: ImageRef, *, source=None, record=None, field=None) -> None:
        """What `load` checks before it decodes the pixels, from the image's header alone: the path (inside
        the root), the file, a format PIL reads, a size within the pixel limit. A file corrupt past its header
        is found when it is loaded."""
        self._read(ref, source=source, record=record, field=field, decode=False)

    def _read(self, ref: ImageRef, *, source, record, field, shown_as: str | None = None,
              decode: bool) -> Image.Image | None:
        if isinstance(ref, Image.Image):
            self._check_aspect(ref.size, "<in-memory image>", source=source, record=record, field=field)
            return _normalise(ref)
        if isinstance(ref, (bytes, bytearray)):
            fh, name = io.BytesIO(ref), "<inline bytes>"
        elif isinstance(ref, str) and ref:
            path = self.file_path(ref, source=source, record=record, field=field)
            try:
                fh, name = open(path, "rb"), shown_as or ref
            except OSError as e:  # unreadable (permissions, a path the OS rejects)
                raise DataError(f"cannot open image {ref!r}: {e.strerror or e}", source=source, record=record,
                                field=field) from None
        else:
            raise DataError(f"bad image reference {ref!r}", source=source, record=record, field=field)
        try:
            with fh, warnings.catch_warnings():
                # PIL warns of a large image before our own pixel limit below refuses it (or lets it through)
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                try:
                    img = _open_image(fh, name, source=source, record=record, field=field)
                except OSError as e:
                    raise DataError(f"corrupt or unreadable image {name}: {e}", source=source, record=record,
                                    field=field) from None
                w, h = img.size
                if w * h > self.max_pixels:
                    raise DataError(f"image {name} has {w}x{h}={w * h} pixels, over the limit {self.max_pixels}",
                                    source=source, record=record, field=field)
                if w == 0 or h == 0:
                    raise DataError(f"image {name} is empty", source=source, record=record, field=field)
                self._check_aspect((w, h), name, source=source, record=record, field=field)
                if not decode:
                    return None
                try:
                    img.load()
                except (OSError, SyntaxError, ValueError) as e:
                    raise DataError(f"corrupt image {name}: {e}", source=source, record=record, field=field) from None
                return _normalise(img)
        except Image.DecompressionBombError as e:  # PIL's own guard (2 x Image.MAX_IMAGE_PIXELS), met before ours
            raise DataError(self._bomb_message(name, str(e)), source=source, record=record, field=field) from None

    def _bomb_message(self, name: str, pil_message: str) -> str:
        """The refusal of an image that PIL's own guard refused on opening it, before `_read` saw its size: its
        pixels (counted in PIL's message) against this loader's limit, the one the user sets, not PIL's; PIL's
        limit only where the user's is higher (no image past it is read)."""
        pil_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)  # PIL refuses past twice its warning threshold
        found = re.search(r"\((\d+) pixels\)", pil_message)
        has = f"has {found.group(1)} pixels" if found else f"has more than {pil_limit} pixels"
        if self.max_pixels < pil_limit:
            return f"image {name} {has}, over the limit {self.max_pixels}"
        return f"image {name} {has}, over PIL's limit {pil_limit} (its decompression-bomb guard), which is below " \
               f"the limit {self.max_pixels} asked for"

    def _check_aspect(self, size: tuple[int, int], name: str, *, source, record, field) -> None:
        problem = aspect_ratio_problem(f"image {name}", size, self.max_aspect_ratio)
        if problem:
            err = DataError(problem, source=source, record=record, field=field)
            err.over_aspect_ratio = True  # type: ignore[attr-defined]  # `data check` says what takes such images
            raise err

    def load_video(self, refs, *, source=None, record=None, field="video"):
        """An item's `video` (one video file, or a list of frames) → `unime.data.video.Video`: decoded,
        sampled and checked by the rules of `unime.data.video`, frames cached by content."""
        return load_video(self, refs, self.video_sampling, source=source, record=record, field=field)


def _normalise(img: Image.Image) -> Image.Image:
    img = ImageOps.exif_transpose(img)
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return img.convert("RGB")
