"""Image resolution control: a pixel budget per image (and per video frame), recorded with checkpoints.

A Qwen-VL processor resizes every image so that its area lies between `min_pixels` and `max_pixels`
(rounded to multiples of patch × merge), and the number of visual tokens follows the area: one merged
token per (patch · merge)² pixels. A real Qwen2-VL processor's default upper bound (≈12.8 M pixels)
turns one large photo into thousands of tokens, so the papers fix the resolution: UniME-V2 resizes to
672×672 (576 merged tokens on Qwen2-VL), Embed-RL bounds the pixels.

`ImageBudget` holds the three controls (`--min-pixels`, `--max-pixels`, `--image-size`):
- the bounds go to the processor's own setting (transformers 5: `image_processor.size =
  {"shortest_edge": min_pixels, "longest_edge": max_pixels}`), so a processor saved with the
  checkpoint carries them and a plain `transformers` user gets the same resolution;
- `image_size` is a fixed resize (W×H, aspect ratio not kept, as the UniME-V2 release does) applied to
  the PIL image before the processor;
- video frames get the same budget per frame (`prepare_frames`): the family video processors read
  their own `size` differently (per frame in Qwen2-VL, per clip in Qwen3-VL), so frames are fitted
  here with the processor's own `smart_resize` rule before they reach it.

A training run writes its budget to `unime_images.json` in its output, `adapter/` and `merged/`
folders; loading a checkpoint reads it back (`recorded_budget`), and options given explicitly win
field by field (`ImageBudget.over`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

# the processors' aspect-ratio limit is the data layer's (its loaders and checks refuse an image beyond it)
from unime.data.video import PROCESSOR_MAX_ASPECT_RATIO
from unime.errors import OptionError, UsageError
from unime.options import RangeChecked, option

BUDGET_FILE = "unime_images.json"


def parse_image_size(value: Any) -> tuple[int, int] | None:
    """`672` → (672, 672); `"640x480"` / `[640, 480]` → (640, 480) (width, height); None/"" → None."""
    if value is None or value == "" or value == 0:
        return None
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"image size must be N or WxH, got {value!r}")
        w, h = int(value[0]), int(value[1])
    elif isinstance(value, int):
        w = h = value
    else:
        text = str(value).lower().strip()
        if "x" in text:
            a, b = text.split("x", 1)
            w, h = int(a), int(b)
        else:
            w = h = int(text)
    if w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive, got {value!r}")
    return (w, h)


@dataclass(frozen=True)
class ImageBudget:
    min_pixels: int | None = None
    max_pixels: int | None = None
    image_size: tuple[int, int] | None = None  # (width, height)

    def __post_init__(self):
        for name in ("min_pixels", "max_pixels"):
            v = getattr(self, name)
            if v is not None and int(v) <= 0:
                raise ValueError(f"{name} must be positive, got {v}")
        if self.min_pixels is not None and self.max_pixels is not None and self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")
        if self.image_size is not None:
            object.__setattr__(self, "image_size", parse_image_size(self.image_size))

    # -- construction / persistence ---------------------------------------------------------------
    @classmethod
    def from_options(cls, min_pixels=None, max_pixels=None, image_size=None) -> "ImageBudget":
        return cls(min_pixels=int(min_pixels) if min_pixels else None,
                   max_pixels=int(max_pixels) if max_pixels else None,
                   image_size=parse_image_size(image_size))

    @classmethod
    def from_args(cls, args) -> "ImageBudget":
        """From an argparse namespace with `min_pixels`, `max_pixels`, `image_size` (missing → unset)."""
        return cls.from_options(getattr(args, "min_pixels", None), getattr(args, "max_pixels", None),
                                getattr(args, "image_size", None))

    @classmethod
    def from_dict(cls, d: dict | None) -> "ImageBudget":
        d = d or {}
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown image budget field(s) {sorted(unknown)}")
        return cls.from_options(d.get("min_pixels"), d.get("max_pixels"), d.get("image_size"))

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.image_size is not None:
            d["image_size"] = list(self.image_size)
        return d

    def as_items(self) -> tuple:
        """Hashable, picklable form: sorted (field, value) pairs (`from_dict(dict(items))` inverts it)."""
        return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(self.to_dict().items()))

    def max_aspect_ratio(self) -> float | None:
        """The longest ratio of an image's long side to its short side the processor takes (`ImageLoader`'s
        check): the Qwen-VL processors' (`PROCESSOR_MAX_ASPECT_RATIO`); None under a fixed `image_size`, whose
        resize is what the processor sees."""
        return None if self.image_size is not None else PROCESSOR_MAX_ASPECT_RATIO

    def image_loader(self, root=None, **kwargs):
        """An `ImageLoader` (`root`, `kwargs`) for the images a processor with this budget sees: it refuses an image
        beyond `max_aspect_ratio` as bad data. Every loader unime builds for a model comes from here (or
        `unime.models.loading.checkpoint_image_loader`), so none forgets the limit."""
        from unime.data.images import ImageLoader

        return ImageLoader(root, max_aspect_ratio=self.max_aspect_ratio(), **kwargs)

    @property
    def is_set(self) -> bool:
        return any(v is not None for v in (self.min_pixels, self.max_pixels, self.image_size))

    def over(self, base: "ImageBudget | None") -> "ImageBudget":
        """This budget's set fields, the rest from `base` (explicit options over a recorded budget)."""
        if base is None:
            return self
        return ImageBudget(min_pixels=self.min_pixels if self.min_pixels is not None else base.min_pixels,
                           max_pixels=self.max_pixels if self.max_pixels is not None else base.max_pixels,
                           image_size=self.image_size if self.image_size is not None else base.image_size)

    def save(self, folder: str | os.PathLike) -> Path:
        from unime.data.atomic import atomic_open

        path = Path(folder) / BUDGET_FILE
        with atomic_open(path) as fh:
            fh.write(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    # -- application ------------------------------------------------------------------------------
    def configure(self, processor) -> None:
        """Set the bounds on the processor's image processor (its real `size` setting)."""
        ip = getattr(processor, "image_processor", None)
        if ip is None or (self.min_pixels is None and self.max_pixels is None):
            return
        size = dict(getattr(ip, "size", None) or {})
        if "shortest_edge" not in size and "min_pixels" not in size:
            raise ValueError(f"the image processor {type(ip).__name__} has no pixel bounds (size={size}); "
                             "--min-pixels/--max-pixels apply to Qwen-VL style processors")
        size = {"shortest_edge": size.get("shortest_edge", size.get("min_pixels")),
                "longest_edge": size.get("longest_edge", size.get("max_pixels"))}
        # one bound given, past the checkpoint's other one (a Qwen3-VL release's minimum is 65536 = 256x256 pixels)
        if self.max_pixels is not None and self.min_pixels is None and self.max_pixels < size["shortest_edge"]:
            raise UsageError(f"--max-pixels {self.max_pixels} is below the checkpoint's own minimum of "
                             f"{size['shortest_edge']} pixels per image (its image processor's size.shortest_edge): "
                             f"give --min-pixels too, at most {self.max_pixels}")
        if self.min_pixels is not None and self.max_pixels is None and self.min_pixels > size["longest_edge"]:
            raise UsageError(f"--min-pixels {self.min_pixels} is above the checkpoint's own maximum of "
                             f"{size['longest_edge']} pixels per image (its image processor's size.longest_edge): "
                             f"give --max-pixels too, at least {self.min_pixels}")
        if self.min_pixels is not None:
            size["shortest_edge"] = int(self.min_pixels)
        if self.max_pixels is not None:
            size["longest_edge"] = int(self.max_pixels)
        ip.size = size
        # older attribute names some code paths still read
        for old, key in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
            if hasattr(ip, old):
                setattr(ip, old, size[key])

    def prepare(self, image):
        """The fixed resize (if any) of one PIL image; the pixel bounds are the processor's job."""
        if self.image_size is None or tuple(image.size) == tuple(self.image_size):
            return image
        from PIL import Image

        return image.resize(self.image_size, Image.Resampling.BICUBIC)

    def prepare_frames(self, frames: Sequence[Any], *, factor: int) -> list:
        """Video frames under the same budget: the fixed resize, then each frame's area brought within
        [min_pixels, max_pixels] by the Qwen-VL `smart_resize` rule (multiples of `factor`), the long side cut to
        the processors' aspect-ratio limit (`within_aspect_ratio`: the rule rounds each side on its own, a short
        side of 1.7 factors down to 1, and the processor checks the ratio of the size it is given)."""
        out = [self.prepare(f) for f in frames]
        if self.min_pixels is None and self.max_pixels is None:
            return out
        from PIL import Image

        from unime.data.video import within_aspect_ratio

        fitted = []
        for f in out:
            w, h = f.size
            nh, nw = fitted_size(h, w, factor=factor, min_pixels=self.min_pixels or factor * factor,
                                 max_pixels=self.max_pixels or 1 << 62)
            nw, nh = within_aspect_ratio((nw, nh), PROCESSOR_MAX_ASPECT_RATIO, multiple=factor)
            fitted.append(f if (nw, nh) == (w, h) else f.resize((nw, nh), Image.Resampling.BICUBIC))
        return fitted


def fitted_size(height: int, width: int, *, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) after the Qwen-VL processor's resize rule (transformers' own `smart_resize`)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    return smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


def processor_factor(processor) -> int:
    """Pixels per merged visual token along one side: patch_size × merge_size."""
    ip = getattr(processor, "image_processor", processor)
    return int(ip.patch_size) * int(ip.merge_size)


def processor_bounds(processor) -> tuple[int, int]:
    """(min_pixels, max_pixels) the processor applies now."""
    size = dict(processor.image_processor.size)
    return int(size.get("shortest_edge", size.get("min_pixels"))), int(size.get("longest_edge", size.get("max_pixels")))


def visual_tokens(height: int, width: int, processor) -> int:
    """Merged visual tokens (`<|image_pad|>` count) of one height×width image under the processor's bounds."""
    lo, hi = processor_bounds(processor)
    f = processor_factor(processor)
    h, w = fitted_size(height, width, factor=f, min_pixels=lo, max_pixels=hi)
    return (h // f) * (w // f)


def record_folders(path: str | os.PathLike | None) -> list[Path]:
    """Where a checkpoint's records (`unime_images.json`, `unime_item_format.json`) are looked for: PATH, then the
    run folder when PATH is its `merged/` or `adapter/` (or a `checkpoints/checkpoint-N`) sub-folder."""
    if path is None:
        return []
    p = Path(path)
    folders = [p]
    if p.name in ("merged", "adapter"):
        folders.append(p.parent)
    if p.parent.name == "checkpoints":
        folders.append(p.parent.parent)
    return folders


def recorded_budget(path: str | os.PathLike | None) -> ImageBudget | None:
    """The budget recorded with a checkpoint: `PATH/unime_images.json`, or the run folder's when PATH is
    its `merged/` or `adapter/` (or a `checkpoints/checkpoint-N`) sub-folder. None if none is recorded."""
    for folder in record_folders(path):
        f = folder / BUDGET_FILE
        if f.is_file():
            try:
                return ImageBudget.from_dict(json.loads(f.read_text(encoding="utf-8")))
            except (ValueError, json.JSONDecodeError) as e:
                from unime.errors import ModelError

                raise ModelError(f"{f}: bad image budget: {e}") from None
    return None


def resolve_budget(path: str | os.PathLike | None, explicit: ImageBudget | None) -> ImageBudget:
    """Explicit options over the checkpoint's recorded budget (field by field)."""
    explicit = explicit or ImageBudget()
    return explicit.over(recorded_budget(path))


def image_size_option(text: str) -> int | str:
    """`--image-size` as typed on the command line or in a config file / recipe: N (an int, a square) or
    "WxH"; checked here, so a bad size stops the parse naming the option."""
    import argparse

    try:
        size = parse_image_size(text)
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"expected N or WxH: {e}") from None
    if size is None:
        raise argparse.ArgumentTypeError(f"expected N or WxH (positive), got {text!r}")
    w, h = size
    return w if w == h and "x" not in str(text).lower() else f"{w}x{h}"


IMAGE_GROUP = "image resolution (default: the checkpoint's recorded setting, else its processor's)"


@dataclass(kw_only=True)
class ImageOptions(RangeChecked):
    """`--max-pixels`, `--min-pixels`, `--image-size` (every command that reads images). A lower bound above the
    upper one is refused as the config is made (or either is assigned), naming both (`check_together`), not when
    the model loads (`ImageBudget`)."""

    max_pixels: int | None = option(None, "upper bound of pixels per image (and per video frame), set on the "
                                    "processor (e.g. 451584 = 672x672; Qwen2-VL's own default is 12845056)",
                                    metavar="N", group=IMAGE_GROUP, above=0)
    min_pixels: int | None = option(None, "lower bound of pixels per image", metavar="N", group=IMAGE_GROUP, above=0)
    image_size: Any = option(None, "resize every image to a fixed size before the processor (UniME-V2: 672)",
                             type=image_size_option, metavar="N|WxH", group=IMAGE_GROUP)

    def check_together(self) -> None:
        super().check_together()
        if self.min_pixels is not None and self.max_pixels is not None and self.min_pixels > self.max_pixels:
            raise OptionError(self, "{min_pixels} must be <= {max_pixels} ({max}), got {min}", max=self.max_pixels,
                              min=self.min_pixels)


def adapter_image_loader(adapter, image_loader=None):
    """`image_loader`, else the loader of `adapter`'s budget (`ImageBudget.image_loader`: the processor's
    aspect-ratio limit): the default of a model wrapper built directly (`Embedder(model, processor, adapter)`), so
    an image its processor refuses is bad data, not transformers' bare ValueError. An adapter without a budget (a
    test's fake): a loader without a limit."""
    if image_loader is not None:
        return image_loader
    budget = getattr(adapter, "image_budget", None)
    if isinstance(budget, ImageBudget):
        return budget.image_loader()
    from unime.data.images import ImageLoader

    return ImageLoader()
