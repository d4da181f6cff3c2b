"""Video items: decoding video files with PyAV, uniform frame sampling, safety rules, a frame cache.

An item's `video` is either a list of frames (image references, as extracted beforehand) or exactly
one video file (a path given alone, ``{"video": "clips/x.m2ts"}``, whatever its extension; in a list, a path with a
video extension such as ``clips/x.mp4``, or a list's one entry holding a video, an animated GIF, APNG, WebP or
AVIF or a media container PIL cannot read: `is_one_video_file`; or the file's bytes inline). An APNG's, animated
WebP's or animated AVIF's frames are PIL's (FFmpeg reads one frame of them or none), at their delays:
`_decode_animation`; an APNG's and a WebP's delays are read from their chunks, no frame decoded, and one of more
frames than ``max_duration_s`` at 100 frames per second or lasting longer is refused before a frame is decoded, by
the header probe too (`_animation_delays`).
`load_video` turns either into a `Video`: the sampled frames (RGB PIL images) plus what the model's
processor needs to place them in time (source frame rate, the sampled frame indices).

Why PyAV: its wheels bundle FFmpeg (no system codecs to install), it reads from a Python file object (a file
is hashed for the cache in chunks and decoded from the same open file, as far as decoding needs: never held
whole in memory, QA's 600 MB clip took 631 MB to decode 8 frames; inline bytes are read from memory) and reports
stream metadata before any frame is decoded (so absurd files are refused before the work). torchvision's reader
is deprecated in favour of torchcodec, which needs a system FFmpeg; decord has no wheels for recent Pythons.

Sampling (`VideoSampling`): ``num_frames`` frames spread uniformly over the whole clip (first and last
frame included), or, with ``num_frames=None``, ``fps`` frames per second of video, clamped to
[min_frames, max_frames]; the count is rounded down to a multiple of ``frame_factor`` (Qwen-VL merges
2 frames per temporal patch). A frame list is sampled by the same rules, as a clip of its frames at
``frame_list_fps`` (2 frames per second, as qwen-vl-utils assumes for frame lists). ``frame_rule="vlm2vec"`` (an
embedder under ``--item-format vlm2vec``) takes VLM2Vec-V2's frames instead (`vlm2vec_indices`). A video of fewer frames
than a temporal patch (``TEMPORAL_PATCH``: one frame, a one-frame clip) is padded by repeating its last frame
(`pad_frames`), as Qwen2-VL's processor does inside; Qwen3-VL's refuses it ("t:1 must be larger than
temporal_factor:2"), so every family gets the padded video.

Safety, as for images (`unime.data.images`): paths stay inside the data root; an empty, corrupt or
truncated file, a file without a video stream (an audio track alone, with its packets or none), a video stream
without a frame ("empty video X: its video stream has no frames", a Matroska / WebM file without a cluster too:
`_clusterless_matroska`) or none of whose packets decode (`_frameless`: what a failed decoding, or a header without
a frame count or size, is explained by), a duration over ``max_duration_s``, a frame over ``max_frame_pixels`` or a
file over ``max_bytes`` raise `DataError` naming source, record and field; so do, under the loader's
``max_aspect_ratio`` (the model's processor limit), frames whose long side is more than that many times their short
one, from the stream's header (a frame list's frames: by the image loader's rules).
A pixel budget per video (``max_video_pixels``, the sum over the sampled frames) scales the frames
down, keeping their aspect ratio, before they reach the processor; under ``max_aspect_ratio`` the scaled long side
is cut to that many times the scaled short side (`within_aspect_ratio`: each side is rounded down on its own, and
the processor checks the size it is given). Frames are turned upright by the stream's
rotation (its display matrix, e.g. a phone's portrait clip stored landscape), as players and FFmpeg show them.
`probe_video_file` applies the rules a file's header can answer (everything but a stream corrupt past
its header) without decoding a frame: the up-front check of a reader whose videos are decoded later anyway.
A stream without a frame count in its header (Matroska / WebM) is measured by its own duration (the track's
``DURATION`` tag; the container's lasts as long as its longest stream, an audio track outlasting the video) and,
when decoded, counted by its packets; it is truncated when its packets end well before its announced duration. A
frame count that was only an estimate and proves too high when decoding is corrected, not taken for a truncation.

Decoding seeks (`decode_video(seek=True)`, the default): one pass over the packets (no decoding) lists the
keyframes; each sampled frame whose keyframe lies past the frames already decoded is reached by seeking to
that keyframe, the others by decoding on, so a long clip costs about a GOP per sampled frame instead of the
whole stream. Frames are identified by their presentation time stamps on the constant frame-rate grid; when
a frame cannot be found that way (variable frame rate, no time stamps) the clip is decoded from its start.
A variable frame-rate clip (a frame more than a quarter frame off the i / fps grid) is sampled uniformly in
*time* from the same pass's time stamps (`time_uniform_indices`: the frame nearest each target time), its
`Video.timestamps` the frames' own times, `Video.duration` its real span, and decoded from its start (up to its
last sampled frame); a constant frame-rate clip is sampled by frame number as above. `Video.processor_metadata`
gives the processors those real times (a millisecond grid as frame rate and indices); a constant frame-rate clip
gives its own rate and frame numbers.

Decoded, sampled frames are cached by content (SHA-1 of the file's bytes + the sampling settings),
so the same clip under two paths or two data roots is decoded once; the cache is bounded in bytes.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import hashlib
import io
import itertools
import math
import os
import stat
import threading
import warnings
from collections import OrderedDict
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, Sequence

from unime.data.hashing import stream_sha1
from unime.errors import DataError
from unime.options import RangeChecked, none_meanings, option

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".m2ts",
                              ".mts", ".flv", ".wmv", ".3gp", ".ogv"})
# frame lists carry no frame rate; qwen-vl-utils assumes 2 frames per second for them, so do we
FRAME_LIST_FPS = 2.0
# frames per temporal patch of every supported family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): a shorter video is padded
TEMPORAL_PATCH = 2
FRAME_RULES = ("uniform", "vlm2vec")  # `VideoSampling.frame_rule`: unime's uniform sampling, VLM2Vec-V2's
# ticks per second of the time grid a variable frame-rate clip's real times are given to the processors on (ms)
PROCESSOR_TIME_GRID = 1000.0


MIXED_VIDEO_REFS = "a video is one video file or a list of frame images, not several files or a mix"
MIN_VIDEO_PIXELS = 28 * 28  # one frame of one merged 2 x 2 block of 14-pixel patches


def _bad_video_options(frames, fps, max_frames, max_pixels) -> str | None:
    """What is wrong with the `--video-*` options given, in their own names (None: nothing)."""
    if frames is not None and frames < 1:
        return f"--video-frames must be >= 1, got {frames}"
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        return f"--video-fps must be a positive number, got {fps}"
    if frames is not None and fps is not None:
        return "give --video-frames N or --video-fps F, not both (N uniform frames, or F frames per second)"
    if max_frames is not None and max_frames < 1:
        return f"--video-max-frames must be >= 1, got {max_frames}"
    if max_pixels is not None and max_pixels < MIN_VIDEO_PIXELS:
        return f"--video-max-pixels must be >= {MIN_VIDEO_PIXELS} (one 28 x 28 frame), got {max_pixels}"
    return None


class FrameLoader(Protocol):
    """What reading a video needs of an image loader (`unime.data.images.ImageLoader`): its path rule for a
    video file, and its image rules for the frames of a frame list. Its ``max_aspect_ratio``, where it has one
    (the model's processor limit), applies to a video file's frames too."""

    def resolve(self, ref: str, *, source=None, record=None, field=None) -> Path: ...

    def load(self, ref: Any, *, source=None, record=None, field=None) -> Any: ...


@dataclass(frozen=True)
class VideoSampling:
    """How frames are taken from a video and the limits a video must respect."""

    num_frames: int | None = 8          # uniform N frames; None → sample by `fps`
    fps: float | None = None            # frames per second of video (used when num_frames is None)
    min_frames: int = 2
    max_frames: int = 64
    frame_factor: int = 2               # frame count rounded down to a multiple of this (>= it)
    max_video_pixels: int = 32 * 448 * 448   # pixel budget per video (sum over sampled frames)
    max_frame_pixels: int = 4096 * 4096      # a larger source frame is refused (absurd resolution)
    max_duration_s: float = 6 * 3600.0       # a longer video is refused (absurd duration)
    max_bytes: int = 4 * 1024 ** 3
    frame_list_fps: float = FRAME_LIST_FPS
    frame_rule: str = "uniform"              # which frames: `FRAME_RULES` (`indices`)

    def __post_init__(self):
        if self.num_frames is None and not self.fps:
            raise ValueError("VideoSampling needs num_frames or fps")
        if self.frame_rule not in FRAME_RULES:
            raise ValueError(f"frame_rule must be one of {FRAME_RULES}, got {self.frame_rule!r}")
        if self.frame_rule == "vlm2vec" and self.num_frames is None:
            raise ValueError("VLM2Vec's frame rule takes a frame count (--video-frames), not a frame rate")
        if self.num_frames is not None and self.num_frames < 1:
            raise ValueError("num_frames must be >= 1")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError("fps must be > 0")
        if not 1 <= self.min_frames <= self.max_frames:
            raise ValueError("need 1 <= min_frames <= max_frames")
        if self.frame_factor < 1:
            raise ValueError("frame_factor must be >= 1")

    @classmethod
    def from_options(cls, frames: int | None = None, fps: float | None = None, max_frames: int | None = None,
                     max_pixels: int | None = None) -> "VideoSampling | None":
        """The sampling the command-line options (`--video-frames/-fps/-max-frames/-max-pixels`) ask for, or
        None when none was given or those given ask for the defaults (the defaults apply). `fps` without `frames`
        samples by frame rate."""
        given = {k: v for k, v in (("num_frames", frames), ("fps", fps), ("max_frames", max_frames),
                                   ("max_video_pixels", max_pixels)) if v is not None}
        if not given:
            return None
        bad = _bad_video_options(frames, fps, max_frames, max_pixels)
        if bad:
            from unime.errors import UsageError

            raise UsageError(bad)
        if "fps" in given and "num_frames" not in given:
            given["num_frames"] = None
        if max_frames is not None and max_frames < cls.min_frames:  # --video-max-frames 1: one frame is the most
            given["min_frames"] = max_frames
        sampling = cls(**given)
        # the defaults asked for explicitly (--video-frames 8) are no option given: the records of the sampling
        # (eval's run options, the embedding cache's model id, the judge's cache keys) stay those of a run without
        return None if sampling == cls() else sampling

    @classmethod
    def from_fields(cls, obj) -> "VideoSampling | None":
        """`from_options` of an object with `video_frames`, `video_fps`, `video_max_frames` and `video_max_pixels`
        attributes (a training config, parsed command-line options)."""
        return cls.from_options(getattr(obj, "video_frames", None), getattr(obj, "video_fps", None),
                                getattr(obj, "video_max_frames", None), getattr(obj, "video_max_pixels", None))

    def numbering(self) -> dict[str, Any]:
        """What decides which frames of a video are taken, and so what a frame's number among them means (a T-CoT's
        key frames): `{"frames": N}` (N uniform frames: `num_frames` within `max_frames`, rounded as `frame_count`
        rounds it) or `{"fps": F, "max_frames": M}`. Two samplings with the same numbering take the same frames of
        every video (the pixel budget only scales them)."""
        if self.num_frames is not None:
            return {"frames": self.frame_count(self.max_frames, None)}
        return {"fps": self.fps, "max_frames": self.max_frames}

    def with_numbering(self, numbering: dict[str, Any]) -> "VideoSampling":
        """This sampling's limits taking the frames a recorded `numbering` (`numbering`, `parse_numbering`) takes: of
        every video, the frames the sampling it was recorded from takes. A frame rate's count is raised to the
        recorded sampling's minimum, the default within its max_frames as `from_options` gives it, not this one's
        (1 under --video-max-frames 1)."""
        import dataclasses

        if "frames" in numbering:
            n = numbering["frames"]  # already rounded within its max_frames (`numbering`)
            return dataclasses.replace(self, num_frames=n, fps=None, max_frames=n, min_frames=min(self.min_frames, n))
        m = numbering["max_frames"]
        return dataclasses.replace(self, num_frames=None, fps=numbering["fps"], max_frames=m,
                                   min_frames=min(VideoSampling.min_frames, m))

    def indices(self, total_frames: int, duration_s: float | None, *, saved: bool = True) -> list[int]:
        """The frame numbers taken from a clip of `total_frames` frames lasting `duration_s` seconds: `uniform`,
        `frame_count` frames spread by `uniform_indices`; `vlm2vec`, VLM2Vec's (`vlm2vec_indices`: at most
        `max_frames` saved from a file (`saved`; a frame list is its saved frames), `num_frames` of them)."""
        if self.frame_rule == "vlm2vec":
            return vlm2vec_indices(total_frames, self.num_frames, self.max_frames if saved else None)
        return uniform_indices(total_frames, self.frame_count(total_frames, duration_s))

    def frame_count(self, total_frames: int, duration_s: float | None) -> int:
        """How many frames to sample from a clip of `total_frames` frames lasting `duration_s` seconds."""
        if self.num_frames is not None:
            n = self.num_frames
        else:
            n = round((duration_s or 0.0) * self.fps)
            n = min(max(n, self.min_frames), self.max_frames)
        n = min(n, self.max_frames, total_frames)
        if n >= self.frame_factor:
            n -= n % self.frame_factor
        return max(n, 1)


@dataclass(kw_only=True)
class VideoOptions(RangeChecked):
    """`--video-frames`, `--video-fps`, `--video-max-frames`, `--video-max-pixels` (`VideoSampling.from_fields`),
    shared by the commands that read video items; unset: `VideoSampling`'s defaults (`none_means`: an option
    given at its default is the option unset, for a re-run's comparison of recorded options)."""

    option_groups = {"video": "how video items (a file, or a list of frames) are sampled"}
    video_frames: int | None = option(None, "frames sampled uniformly from each video (default 8)", group="video",
                                      none_means=VideoSampling.num_frames, at_least=1)
    video_fps: float | None = option(None, "sample this many frames per second of video instead of a fixed count",
                                     group="video", above=0)
    video_max_frames: int | None = option(None, "upper bound on frames per video (default 64)", group="video",
                                          none_means=VideoSampling.max_frames, at_least=1)
    video_max_pixels: int | None = option(None, "pixel budget per video, summed over its sampled frames (frames "
                                          "are scaled down to fit)", group="video",
                                          none_means=VideoSampling.max_video_pixels, at_least=MIN_VIDEO_PIXELS)


def sampling_video_options(options: dict[str, Any]) -> dict[str, Any]:
    """The `--video-*` options in `options` (`VideoSampling.from_options`' keywords: frames, fps, max_frames,
    max_pixels; None: not given) that change the sampling: given, and not at the value their absence stands
    for (`VideoOptions`' `none_means`), so that a record of them reads the same with a default given or not."""
    if VideoSampling.from_options(**options) is None:
        return {}
    means = none_meanings(VideoOptions)  # keyed by field: video_frames, ...
    return {k: v for k, v in options.items() if v is not None and v != means.get(f"video_{k}")}


def numbering_options(numbering: dict[str, Any]) -> str:
    """The `--video-*` options that give a sampling of this `VideoSampling.numbering` ("--video-frames 8")."""
    if "frames" in numbering:
        return f"--video-frames {numbering['frames']}"
    return f"--video-fps {numbering['fps']:g} --video-max-frames {numbering['max_frames']}"


def parse_numbering(value: Any) -> dict[str, Any]:
    """A recorded `VideoSampling.numbering` (read back from JSON), checked; ValueError saying what is wrong."""
    def count(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    if isinstance(value, dict) and set(value) == {"frames"} and count(value["frames"]):
        return dict(value)
    if (isinstance(value, dict) and set(value) == {"fps", "max_frames"} and count(value["max_frames"])
            and isinstance(value["fps"], (int, float)) and not isinstance(value["fps"], bool)
            and math.isfinite(value["fps"]) and value["fps"] > 0):
        return dict(value)
    raise ValueError(f'expected {{"frames": N}} or {{"fps": F, "max_frames": M}} (N, M >= 1, F > 0), got {value!r}')


def vlm2vec_indices(total_frames: int, n: int, max_saved: int | None) -> list[int]:
    """The frames VLM2Vec-V2's evaluation feeds of a video of `total_frames` frames (TIGER-AI-Lab/VLM2Vec
    `src/utils/vision_utils/vision_utils.py`): `save_frames` keeps every frame of a video of at most `max_saved`
    (None: the frames are already saved, a frame list), else frame floor(j·T/max_saved) for j < max_saved; then
    `process_video_frames` takes `n` of the S saved by `np.linspace(0, S - 1, n, dtype=int)` (i·(S−1)/(n−1)
    truncated, the last exactly S − 1), or all S when S < n. Counts are not rounded to even: the processor pads."""
    saved = list(range(total_frames))
    if max_saved is not None and total_frames > max_saved:
        step = total_frames / max_saved
        saved = [math.floor(j * step) for j in range(max_saved)]
    if n > len(saved):
        return saved
    if n == 1:
        return [saved[0]]  # np.linspace(0, S - 1, 1) is [0.0]
    step = (len(saved) - 1) / (n - 1)
    return [saved[int(i * step)] for i in range(n - 1)] + [saved[-1]]


def uniform_indices(total_frames: int, n: int) -> list[int]:
    """`n` frame indices spread uniformly over [0, total_frames - 1], first and last included."""
    if n <= 0 or total_frames <= 0:
        return []
    if n == 1:
        return [(total_frames - 1) // 2]
    step = (total_frames - 1) / (n - 1)
    return [int(math.floor(i * step + 0.5)) for i in range(n)]


@dataclass(frozen=True, eq=False)
class Video:
    """Sampled frames of one video with their place in time. Iterates / indexes like its frames."""

    frames: tuple[Any, ...]            # RGB PIL images
    fps: float                         # frame rate of the source (frame lists: `frame_list_fps`)
    frame_indices: tuple[int, ...]     # index in the source of each sampled frame
    total_frames: int                  # frames in the source
    source: str = ""
    decoded_frames: int = 0            # frames the decoder produced to get these (files; 0 for frame lists)
    frame_times: tuple[float, ...] | None = None  # seconds per sampled frame, when not index / fps (variable rate)
    span: float | None = None          # seconds from the first frame to the end of the last, when not total / fps

    @property
    def timestamps(self) -> tuple[float, ...]:
        """Seconds from the start of the source, per sampled frame."""
        if self.frame_times is not None:
            return self.frame_times
        return tuple(i / self.fps for i in self.frame_indices)

    @property
    def duration(self) -> float:
        """Seconds the source lasts: its real span for a variable frame-rate clip, else its frames / its rate."""
        return self.span if self.span is not None else self.total_frames / self.fps

    def processor_metadata(self) -> dict[str, Any]:
        """Where the frames sit in time, as the Qwen-VL processors' video metadata says it (``fps``,
        ``frames_indices``, ``total_num_frames``, ``duration``). The processors time frame i at
        ``frames_indices[i] / fps`` (Qwen3-VL's prompt timestamps: the mean of each temporal patch's frames) and
        a temporal patch at ``TEMPORAL_PATCH / sampled_fps`` seconds, ``sampled_fps = len(frames_indices) /
        total_num_frames * fps`` (Qwen2.5-VL's ``second_per_grid_ts``). A constant frame-rate clip or a frame list
        gives its own rate, indices and frame count. A variable frame-rate clip gives its real times on a
        millisecond grid (``fps`` = `PROCESSOR_TIME_GRID`, indices = its frames' times in ticks) and, as
        ``total_num_frames``, the ticks that make a temporal patch last the mean step between its patches' times."""
        if self.frame_times is None:
            return {"fps": float(self.fps), "frames_indices": list(self.frame_indices),
                    "total_num_frames": int(self.total_frames), "duration": float(self.duration)}
        grid, n = PROCESSOR_TIME_GRID, len(self.frame_times)
        ticks = [int(round(t * grid)) for t in self.frame_times]
        times = list(self.frame_times) + [self.frame_times[-1]] * (-n % TEMPORAL_PATCH)
        patches = [sum(times[i:i + TEMPORAL_PATCH]) / TEMPORAL_PATCH for i in range(0, len(times), TEMPORAL_PATCH)]
        step = (patches[-1] - patches[0]) / (len(patches) - 1) if len(patches) > 1 else 0.0
        # one patch (or no step): no patch-to-patch time to give; the ticks the clip lasts
        total = round(n * grid * step / TEMPORAL_PATCH) if step > 0 else max(round(self.duration * grid), 1)
        return {"fps": grid, "frames_indices": ticks, "total_num_frames": max(int(total), 1),
                "duration": self.duration}

    @property
    def size(self) -> tuple[int, int]:
        return self.frames[0].size if self.frames else (0, 0)

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self):
        return iter(self.frames)

    def __getitem__(self, i):
        return self.frames[i]


class VideoFileRef(str):
    """The path given alone as an item's ``video`` (``{"video": "clips/x.m2ts"}``): a video file whatever its
    extension (PyAV finds the container from the content), where a list of paths is a list of frames."""

    __slots__ = ()


# the leading bytes `_container_signature` looks at: an MPEG transport stream's third packet starts at byte 376 (384
# in a .m2ts, whose 192-byte packets carry a 4-byte time code first), an ISO-BMFF ``ftyp`` box lists its brands
SIGNATURE_BYTES = 1024
# ISO-BMFF (``ftyp``) brands of images: HEIF / HEIC (ISO/IEC 23008-12: ``mif1`` any image item, ``msf1`` HEIF's
# general brand of images in a track, read as HEIF images are; ``heic``, ``heix`` HEVC, ``heim`` / ``heis`` multi-layer
# / scalable HEVC, ``avci`` AVC, ``jpeg``, ``j2ki``, ``vvic``) and AVIF (``avif``). The sequences of a codec
# (``hevc``, ``hevx``, ``hevm``, ``hevs``, ``avcs``, ``vvis``; AVIF's animation ``avis``) are read as videos.
IMAGE_BRANDS = frozenset({b"mif1", b"mif2", b"msf1", b"heic", b"heix", b"heim", b"heis", b"avci", b"jpeg", b"j2ki",
                          b"vvic", b"avif"})
_SEQUENCE_BRANDS = frozenset({b"hevc", b"hevx", b"hevm", b"hevs", b"avcs", b"vvis", b"avis"})
# ASF (WMV / WMA): the header object's GUID, 75B22630-668E-11CF-A6D9-00AA0062CE6C as it is stored
_ASF_GUID = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")


def ftyp_brands(head: bytes) -> tuple[bytes, frozenset[bytes]] | None:
    """The major brand and the compatible brands of an ISO-BMFF file's leading ``ftyp`` box (those within `head`),
    or None when `head` does not start with one."""
    if head[4:8] != b"ftyp" or len(head) < 12:
        return None
    end = min(int.from_bytes(head[:4], "big"), len(head))
    return head[8:12], frozenset(head[i:i + 4] for i in range(16, end - 3, 4))


def is_image_brand(head: bytes) -> bool:
    """Whether `head` starts an ISO-BMFF still image (HEIF / HEIC, AVIF: `IMAGE_BRANDS`): its major brand is one,
    or, its major brand being neither an image's nor a sequence's, a compatible brand is an image's and none is
    a sequence's. MP4 / MOV / 3GP brands (``isom``, ``mp42``, ``qt  ``, ...) and the sequences' are videos."""
    brands = ftyp_brands(head)
    if brands is None:
        return False
    major, compatible = brands
    if major in IMAGE_BRANDS or major in _SEQUENCE_BRANDS:
        return major in IMAGE_BRANDS
    return bool(compatible & IMAGE_BRANDS) and not compatible & _SEQUENCE_BRANDS


def _transport_stream(head: bytes) -> bool:
    """An MPEG transport stream: the sync byte 0x47 every 188 bytes (every 192 after a 4-byte time code, .m2ts),
    three packets in a row, each with a payload or an adaptation field (its control bits not the reserved 00)."""
    if head[:4] == b"GIF8":  # a GIF's first byte is 0x47 too
        return False
    return any(len(head) >= start + 2 * step + 4 and all(
        head[at] == 0x47 and head[at + 3] & 0x30 for at in range(start, start + 3 * step, step))
        for start, step in ((0, 188), (4, 192)))


def _container_signature(head: bytes) -> bool:
    """The first bytes (up to `SIGNATURE_BYTES`) of a media container: MP4 / MOV / M4A / 3GP (``ftyp``, but for a
    still image's brands: `is_image_brand`), Matroska / WebM (EBML), AVI, Ogg, FLV, ASF (WMV / WMA), an MPEG
    transport stream (`_transport_stream`) or program stream (a pack header); or of an audio file, which FFmpeg
    opens to say it has no video stream: MP3 (an ID3 tag or an MPEG audio frame), raw AAC (ADTS), FLAC, WAV."""
    if head[4:8] == b"ftyp":
        return not is_image_brand(head)
    return (head[:4] in (b"\x1a\x45\xdf\xa3", b"OggS", b"\x00\x00\x01\xba", b"fLaC")
            or head[:4] + head[8:12] in (b"RIFFAVI ", b"RIFFWAVE") or head[:4] == b"FLV\x01" or head[:3] == b"ID3"
            or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0)  # an MPEG audio or ADTS frame's sync
            or head[:16] == _ASF_GUID or _transport_stream(head))


def is_video_file_ref(ref: Any) -> bool:
    """A path given alone as an item's video (`VideoFileRef`) or with a video extension, or inline bytes of a video
    container (`_container_signature`: MP4/MOV, Matroska/WebM, AVI, Ogg, FLV, ASF, MPEG-TS/PS; not a HEIF / AVIF
    image) or of an audio file (MP3, AAC, FLAC, WAV: its message is then "no video stream"). By the name alone:
    `is_one_video_file` also looks at a lone file."""
    if isinstance(ref, str):
        return isinstance(ref, VideoFileRef) or Path(ref).suffix.lower() in VIDEO_EXTENSIONS
    if isinstance(ref, (bytes, bytearray)):
        return _container_signature(bytes(ref[:SIGNATURE_BYTES]))
    return False


# PIL's formats of animated images, read as videos where a video is expected (an item's one video entry); FFmpeg
# reads an animated GIF's frames (its "gif" demuxer), of an APNG or an animated WebP one frame or none, of an
# animated AVIF its still image alone (its first stream): theirs are PIL's (`_decode_animation`)
_ANIMATED_FORMATS = ("GIF", "PNG", "WEBP", "AVIF")
_PIL_ANIMATIONS = ("PNG", "WEBP", "AVIF")


def _avif_head(head: bytes) -> bool:
    """Whether `head` starts an AVIF file, a still image or an animation (an ``ftyp`` box naming ``avif``/``avis``)."""
    brands = ftyp_brands(head)
    return brands is not None and bool({b"avif", b"avis"} & ({brands[0]} | brands[1]))


def _ref_file(loader: FrameLoader, ref: Any) -> BinaryIO | None:
    """An open binary file of `ref`: inline bytes, or a regular file under `loader`'s root; None when there is none
    to read (a missing file, a FIFO, whose open would block, a path outside the root)."""
    if isinstance(ref, (bytes, bytearray)):
        return io.BytesIO(ref)
    if not isinstance(ref, str):
        return None
    try:
        path = loader.resolve(ref)
        return open(path, "rb") if path.is_file() else None
    except (DataError, OSError, ValueError):
        return None


def is_animated_avif(loader: FrameLoader, ref: Any) -> bool:
    """Whether `ref` (a path under `loader`'s root, or inline bytes) is an animated AVIF that PIL reads: read as a
    video, its frames are PIL's (`_decode_animation`); FFmpeg gave its still image alone, one frame."""
    from PIL import Image

    fh = _ref_file(loader, ref)
    if fh is None:
        return False
    with fh, warnings.catch_warnings():
        if not _avif_head(fh.read(SIGNATURE_BYTES)):
            return False
        fh.seek(0)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(fh) as img:
                return img.format == "AVIF" and bool(getattr(img, "is_animated", False))
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
            return False


def _holds_video(loader: FrameLoader, ref: Any) -> bool:
    """Whether `ref` (a path under `loader`'s root, or inline bytes), the one entry of an item's video, holds a
    video its name does not tell of: an animated GIF, APNG, WebP or AVIF (PIL reads an image of several frames:
    `_ANIMATED_FORMATS`), or a file PIL cannot read whose first bytes are a media container's
    (`_container_signature`, an audio-only .m4a too: its message is then the video one, "no video stream"). A still
    image (a HEIF / AVIF one too), or a file that cannot be read, is left to the image loader's rules and messages."""
    from PIL import Image, UnidentifiedImageError

    fh = _ref_file(loader, ref)
    if fh is None:
        return False
    with fh, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(fh) as img:
                return img.format in _ANIMATED_FORMATS and bool(getattr(img, "is_animated", False))
        except UnidentifiedImageError:
            fh.seek(0)
            return _container_signature(fh.read(SIGNATURE_BYTES))
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
            return False


def is_one_video_file(loader: FrameLoader, refs: Sequence[Any]) -> bool:
    """Whether an item's video `refs` is read as one video file, not as a list of frames: one reference that is a
    video file by its name or bytes (`is_video_file_ref`) or that holds a video (`_holds_video`: an animated GIF,
    APNG, WebP or AVIF, a media container of any name), so that ``["clips/anim.gif"]`` (MMEB-V2's ``{"paths": [...]}``)
    gives the frames ``"clips/anim.gif"`` gives. Several references are frames. An item's *image* is an image
    whatever its file holds (a GIF: its first frame)."""
    return len(refs) == 1 and (is_video_file_ref(refs[0]) or _holds_video(loader, refs[0]))


# -- the frame cache ---------------------------------------------------------------------------------

class FrameCache:
    """LRU of decoded, sampled videos by content key, bounded by the bytes of their frames."""

    def __init__(self, max_bytes: int = 1 << 30):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[Video, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Video | None:
        with self._lock:
            hit = self._entries.get(key)
            if hit is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return hit[0]

    def put(self, key: str, video: Video) -> None:
        size = sum(f.size[0] * f.size[1] * 3 for f in video.frames)
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = (video, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, s) = self._entries.popitem(last=False)
                self._bytes -= s

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)


FRAME_CACHE = FrameCache()


# -- decoding ------------------------------------------------------------------------------------------

# transformers' `smart_resize` (every Qwen-VL image and video processor) raises a bare ValueError for an image whose
# long side is over 200 times its short side: a literal in its code, not exposed (pinned by a test against it). The
# models' loaders refuse such an image (`unime.models.image_budget.ImageBudget.max_aspect_ratio`), and so do `data
# check` and `data import`, which give no image to a model but tell of one every model command would refuse.
PROCESSOR_MAX_ASPECT_RATIO = 200


def aspect_ratio_problem(what: str, size: tuple[int, int], limit: float | None, *,
                         processor: str = "image") -> str | None:
    """Why a processor refuses `what` (e.g. "image x.png") of `size` (w, h) under its aspect-ratio `limit`
    (`unime.models.image_budget.ImageBudget.max_aspect_ratio`; None: no limit): its long side over `limit` times
    its short one (transformers' `smart_resize` raises a bare ValueError mid-batch). None when it takes it."""
    w, h = size
    if limit is None or min(w, h) <= 0 or max(w, h) / min(w, h) <= limit:
        return None
    return (f"{what} is {w}x{h}: its long side is {max(w, h) / min(w, h):g} times its short side, over the "
            f"{limit:g} the model's {processor} processor accepts")


def within_aspect_ratio(size: tuple[int, int], limit: float | None, *, multiple: int = 1) -> tuple[int, int]:
    """`size` (w, h) with its long side cut, in whole `multiple`s, to at most `limit` times its short side (None: no
    limit). A size scaled down with each side rounded on its own can come out over the processor's limit though the
    source was within it (a short side of 5.5 px rounded to 5): the processor checks the size it is given."""
    w, h = size
    short = min(w, h)
    if limit is None or short <= 0 or max(w, h) <= short * limit:
        return w, h
    long = max(multiple, int(short * limit) // multiple * multiple)
    return (long, h) if w > h else (w, long)


def _budget_size(width: int, height: int, n_frames: int, budget: int,
                 max_aspect_ratio: float | None = None) -> tuple[int, int]:
    """Frame size after the per-video pixel budget (aspect kept, never upscaled, >= 1 px), within
    `max_aspect_ratio` (`within_aspect_ratio`)."""
    if n_frames * width * height <= budget:
        return width, height
    scale = math.sqrt(budget / (n_frames * width * height))
    return within_aspect_ratio((max(1, int(width * scale)), max(1, int(height * scale))), max_aspect_ratio)


@dataclass(frozen=True)
class _StreamHeader:
    stream: Any
    width: int
    height: int
    fps: float
    duration: float | None
    total: int
    counted: bool = True          # `total` is the stream's announced frame count (False: duration x frame rate)
    own_duration: bool = True     # `duration` is the video stream's own (False: the container's, its longest stream)
    max_aspect_ratio: float | None = None  # the processor's limit the frames are checked (and budgeted) by


def _matroska_duration(stream) -> float | None:
    """The ``DURATION`` tag ("HH:MM:SS.nnnnnnnnn") Matroska / WebM muxers write per track, in seconds."""
    tag = (stream.metadata or {}).get("DURATION") or ""
    try:
        h, m, sec = tag.split(":")
        seconds = int(h) * 3600 + int(m) * 60 + float(sec)
    except ValueError:
        return None
    return seconds if seconds > 0 and math.isfinite(seconds) else None


def _video_duration(container, stream) -> tuple[float | None, bool]:
    """The video stream's duration in seconds and whether it is the stream's own: its header's, else its Matroska
    ``DURATION`` tag (Matroska / WebM tracks carry no duration field), else the container's, which is the video's
    own only when the video is its one stream (with an audio track, it is the longer of the two)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base), True
    tagged = _matroska_duration(stream)
    if tagged is not None:
        return tagged, True
    if container.duration is not None:  # a cover art's picture has no duration: it does not make it longer
        return container.duration / 1_000_000, sum(not _cover_art(s) for s in container.streams) == 1
    return None, False


# FFmpeg's AV_DISPOSITION_ATTACHED_PIC: a stream that is one picture (a file's cover art, a thumbnail embedded by
# yt-dlp --embed-thumbnail or iTunes), not a video, though FFmpeg lists it among the video streams
_ATTACHED_PIC = 0x0400


def _cover_art(stream) -> bool:
    """Whether `stream` is a file's cover art (its disposition ``attached_pic``)."""
    return bool(int(getattr(stream, "disposition", 0) or 0) & _ATTACHED_PIC)


def _video_stream(container, fail, name: str):
    """The container's video: its first video stream that is not cover art (`_cover_art`, which may come first);
    a file whose only video streams are cover art (an audio file with its album art) has none."""
    streams = container.streams.video
    stream = next((s for s in streams if not _cover_art(s)), None)
    if stream is None:
        raise fail(f"video {name} has no video stream except cover art" if streams else
                   f"video {name} has no video stream")
    return stream


# the suffix of FFmpeg's demuxers of still images (png_pipe, jpeg_pipe, webp_pipe, ...: its image2pipe family), the
# container format PyAV reports for an image file; animated GIF has a demuxer of its own ("gif"), a video
_IMAGE_DEMUXER = "_pipe"


def _stream_header(container, sampling: VideoSampling, fail, name: str,
                   max_aspect_ratio: float | None = None) -> _StreamHeader:
    """The video stream of an open container (`_video_stream`: its first one, cover art aside), checked by the
    module's rules from its header alone (no frame decoded): a stream, a frame size (within `max_aspect_ratio`) and
    rate, a duration and a frame count within the limits."""
    fmt = container.format.name or ""
    if fmt.endswith(_IMAGE_DEMUXER):  # it announces no frames, no duration: say what the file is
        raise fail(f"video {name} is an image file ({fmt[:-len(_IMAGE_DEMUXER)].upper()}), not a video")
    stream = _video_stream(container, fail, name)
    width, height = stream.codec_context.width, stream.codec_context.height
    if width <= 0 or height <= 0:  # FFmpeg found no frame size, in the header nor in a frame: were there any?
        _refuse_frameless(container, stream, fail, name)
    _check_frame_size(width, height, sampling, fail, name, max_aspect_ratio)
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    if not fps > 0 or not math.isfinite(fps):
        raise fail(f"video {name} has no usable frame rate")
    duration, own = _video_duration(container, stream)
    total = int(stream.frames or 0)
    counted = total > 0
    if not counted and duration:
        total = int(round(duration * fps))
    if duration is None:
        duration = total / fps if total else None
    if duration is not None and duration > sampling.max_duration_s:
        raise fail(f"video {name} lasts {duration:.0f} s, over the limit {sampling.max_duration_s:.0f} s")
    if total <= 0:
        _refuse_frameless(container, stream, fail, name)
        raise fail(f"video {name} announces no frames")
    if total > sampling.max_duration_s * max(fps, 1.0):
        raise fail(f"video {name} announces {total} frames, over {sampling.max_duration_s:.0f} s at {fps:g} fps")
    return _StreamHeader(stream, width, height, fps, duration, total, counted, own, max_aspect_ratio)


def _check_size(data: bytes | BinaryIO, sampling: VideoSampling, name: str, fail) -> None:
    """An empty or oversized file (bytes, or an open binary file, left at its start) is refused."""
    if isinstance(data, bytes):
        size = len(data)
    else:
        size = os.fstat(data.fileno()).st_size
        data.seek(0)
    if not size:
        raise fail(f"video {name} is an empty file")
    if size > sampling.max_bytes:
        raise fail(f"video {name} has {size} bytes, over the limit {sampling.max_bytes}")


def _open_animation(data: bytes | BinaryIO, sampling: VideoSampling, name: str, fail):
    """PIL's image of `data` when it is an animated PNG (APNG), WebP or AVIF (`_PIL_ANIMATIONS`: FFmpeg reads one
    frame of it or none), the file not empty nor over ``max_bytes``; None for anything else (its first bytes read,
    or PIL's open when they are a PNG's, a WebP's or an AVIF's), which FFmpeg reads."""
    from PIL import Image

    fh = io.BytesIO(data) if isinstance(data, bytes) else data
    fh.seek(0)
    head = fh.read(SIGNATURE_BYTES)
    fh.seek(0)
    if not (head.startswith(b"\x89PNG\r\n\x1a\n") or head[:4] + head[8:12] == b"RIFFWEBP" or _avif_head(head)):
        return None
    _check_size(data, sampling, name, fail)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(fh)
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
            fh.seek(0)
            return None  # FFmpeg's verdict
    if img.format in _PIL_ANIMATIONS and getattr(img, "is_animated", False):
        return img
    fh.seek(0)  # not closed: PIL's close() would close the file FFmpeg reads next
    return None


def _check_frame_size(width: int, height: int, sampling: VideoSampling, fail, name: str,
                      max_aspect_ratio: float | None) -> None:
    """A video's frame size from its header: not empty, within ``max_frame_pixels`` and `max_aspect_ratio`."""
    if width <= 0 or height <= 0:
        raise fail(f"video {name} has an empty frame size {width}x{height}")
    if width * height > sampling.max_frame_pixels:
        raise fail(f"video {name} has {width}x{height}={width * height} pixels per frame, over the limit "
                   f"{sampling.max_frame_pixels}")
    problem = aspect_ratio_problem(f"video {name}", (width, height), max_aspect_ratio, processor="video")
    if problem:
        raise fail(problem)


# the delay of a frame that gives none (or 0), as FFmpeg's GIF reader and browsers take it
_DEFAULT_FRAME_DELAY_MS = 100


def _rgb_frame(img):
    """The current frame of PIL's animated image as RGB, alpha composited on white (as `unime.data.images` does)."""
    from PIL import Image

    if img.mode == "RGB":
        return img.copy()
    rgba = img.convert("RGBA")
    out = Image.new("RGB", rgba.size, (255, 255, 255))
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


# the fastest an animation is taken to play (GIF's finest delay, 10 ms): an animation of more frames than
# ``max_duration_s`` of them at this rate is refused from its frame count, before a delay is read
_ANIMATION_MAX_FPS = 100


def _chunk_delays(fh: BinaryIO, fmt: str, n_frames: int) -> list[float | None] | None:
    """Each frame's delay (ms; None: none given) of an APNG (its ``fcTL`` chunks; a default image shown before the
    animation, an ``IDAT`` before the first ``fcTL``, is a frame without one) or an animated WebP (its ``ANMF``
    chunks), as PIL gives them (``info["duration"]``, which it knows once it has decoded the frames before: every
    pixel of the file), read from the chunk headers alone, `fh` left where it was. None for another format, or when
    the chunks do not give `n_frames` delays (PIL's reading then)."""
    at = fh.tell()
    delays: list[float | None] = []
    try:
        if fmt == "PNG":
            fh.seek(8)
            while (head := fh.read(8)) and len(head) == 8 and head[4:] != b"IEND":
                length = int.from_bytes(head[:4], "big")
                if head[4:] == b"fcTL":
                    body = fh.read(length)
                    if len(body) < 26:
                        return None
                    num, den = int.from_bytes(body[20:22], "big"), int.from_bytes(body[22:24], "big")
                    delays.append(num / (den or 100) * 1000)  # PIL's rule: a denominator of 0 is 100
                    length = 0
                elif head[4:] == b"IDAT" and not delays:
                    delays.append(None)  # the default image, shown before the animation: a frame of PIL's
                fh.seek(length + 4, os.SEEK_CUR)  # the data, then the CRC
        elif fmt == "WEBP":
            fh.seek(12)
            while len(head := fh.read(8)) == 8:
                size = int.from_bytes(head[4:], "little")
                if head[:4] == b"ANMF":
                    body = fh.read(16)
                    if len(body) < 16:
                        return None
                    delays.append(int.from_bytes(body[12:15], "little"))
                    size -= 16
                fh.seek(size + (size & 1), os.SEEK_CUR)  # a chunk is padded to an even size
        else:
            return None
    except (OSError, ValueError):
        return None
    finally:
        fh.seek(at)
    return delays if len(delays) == n_frames else None


def _animation_delays(img, data: bytes | BinaryIO | None, sampling: VideoSampling, fail, name: str, *,
                      decode: bool = True) -> tuple[list[float], float, bool] | None:
    """The frame delays (ms; a frame without one lasts `_DEFAULT_FRAME_DELAY_MS`) of PIL's animated image `img`,
    their sum (summed in order, exactly) and whether PIL decoded every frame to give them,
    read from `data` (the file `img` was opened on, bytes or an open file) by `_chunk_delays` without decoding, else
    by PIL, which decodes every frame to give them (`decode`; without it, None). Refused, naming the file and the
    limit: more frames than ``max_duration_s`` at `_ANIMATION_MAX_FPS` (from the header), a duration over
    ``max_duration_s`` (as soon as the frames read pass it)."""
    n = img.n_frames
    most = int(sampling.max_duration_s * _ANIMATION_MAX_FPS)
    if n > most:
        raise fail(f"video {name} has {n} frames, over the limit {most} ({sampling.max_duration_s:g} s at "
                   f"{_ANIMATION_MAX_FPS} frames per second, the fastest an animation is taken to play)")
    fh = io.BytesIO(data) if isinstance(data, bytes) else data
    given = _chunk_delays(fh, img.format, n) if fh is not None else None
    if given is None and not decode:
        return None
    delays: list[float] = []  # milliseconds, summed exactly
    lasts = 0.0
    for i in range(n):
        if given is None:
            try:
                img.seek(i)
                img.load()  # a WebP frame's duration is known once it is decoded
            except (OSError, ValueError, SyntaxError, EOFError) as e:
                raise fail(f"corrupt video {name}: {e}") from None
        ms = given[i] if given is not None else img.info.get("duration")
        delays.append(ms if ms and ms > 0 else _DEFAULT_FRAME_DELAY_MS)
        lasts += delays[-1]
        if lasts > sampling.max_duration_s * 1000:
            raise fail(f"video {name} lasts over the limit {sampling.max_duration_s:.0f} s: its first {i + 1} of {n} "
                       f"frames last {lasts / 1000:.1f} s")
    return delays, lasts, given is None


def _decode_animation(img, sampling: VideoSampling, fail, name: str, max_aspect_ratio: float | None,
                      data: bytes | BinaryIO | None = None) -> Video:
    """The sampled frames of PIL's animated image `img` (`_open_animation`, on `data`), as a clip is sampled: its
    frames at their delays (`_animation_delays`); equal delays are a constant frame rate, sampled by frame number,
    unequal ones a variable frame rate, sampled uniformly in time (``frame_rule="uniform"``) as a variable
    frame-rate clip is (`time_uniform_indices`, the frames' own times)."""
    from PIL import Image

    _check_frame_size(*img.size, sampling, fail, name, max_aspect_ratio)
    delays, lasts, decoded_all = _animation_delays(img, data, sampling, fail, name)
    total, span = len(delays), lasts / 1000
    fps = 1000 / delays[0] if len(set(delays)) == 1 else total / span
    # each frame's start (seconds from the first), when the delays differ: a variable frame rate
    times = [t / 1000 for t in (0, *itertools.accumulate(delays[:-1]))] if len(set(delays)) > 1 else None
    if times is not None and sampling.frame_rule == "uniform":
        wanted = time_uniform_indices(times, sampling.frame_count(total, span))
    else:
        wanted = sampling.indices(total, span)
        times = None
    size = _budget_size(*img.size, len(wanted), sampling.max_video_pixels, max_aspect_ratio)
    decoded = {}
    try:
        for i in sorted(set(wanted)):
            img.seek(i)
            frame = _rgb_frame(img)
            decoded[i] = frame if frame.size == size else frame.resize(size, Image.Resampling.BICUBIC)
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise fail(f"corrupt video {name}: {e}") from None
    return pad_frames(Video(frames=tuple(decoded[i] for i in wanted), fps=fps, frame_indices=tuple(wanted),
                            total_frames=total, source=name, decoded_frames=total if decoded_all else max(wanted) + 1,
                            frame_times=times and tuple(times[i] for i in wanted), span=span if times else None))


def _open_container(data: bytes | BinaryIO, sampling: VideoSampling, name: str, fail):
    """A PyAV container on `data` (bytes, or an open binary file, read from its start as far as PyAV needs): an
    empty, oversized or unreadable file is refused."""
    import av

    _check_size(data, sampling, name, fail)
    fh = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        return av.open(fh, mode="r")
    except _av_errors() as e:  # FFmpeg's words, without the errno and file name
        video = _clusterless_matroska(fh) if isinstance(e, EOFError) else None
        if video is not None:  # a whole file, no frame: of its video track, or it has none (an audio track alone)
            raise fail(_frameless_problem(name, 0) if video else f"video {name} has no video stream") from None
        raise fail(f"corrupt or unreadable video {name}: {getattr(e, 'strerror', None) or e}") from None


def _frameless_problem(name: str, packets: int, error: Exception | None = None) -> str:
    """What is said of a video whose video stream gives no frame: it has `packets` packets, none of which decoded
    (`error`: FFmpeg's last complaint)."""
    if not packets:
        return f"empty video {name}: its video stream has no frames"
    why = f" ({getattr(error, 'strerror', None) or error})" if error is not None else ""
    return f"corrupt video {name}: none of its {packets} packet(s) decode{why}"


def _frameless(container, stream, name: str) -> str | None:
    """`_frameless_problem` when the video `stream` of `container` gives no frame, read from where the container
    stands (its start, freshly opened): its packets demuxed, each decoded until one gives a frame (then None)."""
    packets, error = 0, None
    try:
        for packet in container.demux(stream):
            packets += packet.size > 0  # the last, empty, flushes the decoder
            try:
                if packet.decode():
                    return None
            except _av_errors() as e:
                error = e
    except _av_errors() as e:  # the demuxer stopped: what it had read is all there is
        error = e
    return _frameless_problem(name, packets, error)


def _refuse_frameless(container, stream, fail, name: str) -> None:
    """Raise `fail` saying so when the video `stream` of a freshly opened `container` gives no frame (`_frameless`)."""
    problem = _frameless(container, stream, name)
    if problem is not None:
        raise fail(problem)


# Matroska's element ids (EBML): its segment, the segment's tracks and clusters (the frames), a track's type
_EBML, _SEGMENT, _TRACKS, _TRACK_ENTRY, _TRACK_TYPE, _CLUSTER = (0x1A45DFA3, 0x18538067, 0x1654AE6B, 0xAE, 0x83,
                                                                 0x1F43B675)


def _ebml_elements(fh: BinaryIO, start: int, end: int):
    """(id, data offset, data size) of the EBML elements laid end to end in `fh` from `start` to `end`; ValueError
    for one that does not fit (a cut file), whose id or size is malformed or unknown (a live stream's)."""
    pos = start
    while pos < end:
        fh.seek(pos)
        head = fh.read(12)
        if not head or not head[0] or head[0] < 0x10:  # an id is 1 to 4 bytes, its first byte's marker bit says
            raise ValueError("not an EBML element")
        id_len = 9 - head[0].bit_length()
        if len(head) <= id_len or not head[id_len]:
            raise ValueError("no EBML size")
        size_len = 9 - head[id_len].bit_length()
        raw = head[id_len:id_len + size_len]
        if len(raw) < size_len:
            raise ValueError("cut EBML size")
        size = int.from_bytes(raw, "big") & ((1 << (7 * size_len)) - 1)
        at = pos + id_len + size_len
        if size == (1 << (7 * size_len)) - 1 or at + size > end:
            raise ValueError("an EBML element of unknown size or past the end")
        yield int.from_bytes(head[:id_len], "big"), at, size
        pos = at + size


def _clusterless_matroska(fh: BinaryIO) -> bool | None:
    """When `fh` is a whole Matroska / WebM file (its EBML header, then its segment to the file's end) which has no
    cluster (no frame of any track): whether its tracks hold a video track; None for any other file. FFmpeg's
    demuxer, looking for the first cluster, gives up at the end of the file ("End of file"), as it does for a file
    cut before it; `fh` is left at its start."""
    try:
        end = fh.seek(0, os.SEEK_END)
        top = _ebml_elements(fh, 0, end)  # read as far as needed: a file of another kind stops at its first bytes
        if next(top)[0] != _EBML or (segment := next(top))[0] != _SEGMENT or next(top, None) is not None:
            return None
        video = False
        for eid, at, size in _ebml_elements(fh, segment[1], segment[1] + segment[2]):
            if eid == _CLUSTER:
                return None
            entries = _ebml_elements(fh, at, at + size) if eid == _TRACKS else ()
            for tracks_at, tracks_size in [(a, n) for i, a, n in entries if i == _TRACK_ENTRY]:
                for kid, kat, ksize in list(_ebml_elements(fh, tracks_at, tracks_at + tracks_size)):
                    fh.seek(kat)
                    video |= kid == _TRACK_TYPE and int.from_bytes(fh.read(ksize), "big") == 1  # 1: video
        return video
    except (ValueError, OSError, StopIteration):
        return None
    finally:
        with contextlib.suppress(OSError, ValueError):
            fh.seek(0)


def decode_video(data: bytes | BinaryIO, sampling: VideoSampling, *, name: str = "<inline bytes>", source=None,
                 record=None, field=None, seek: bool = True, max_aspect_ratio: float | None = None) -> Video:
    """Decode and sample one video file given as bytes or an open binary file (read from its start, as far as
    decoding needs: a file is never held whole in memory). See the module notes for the rules; frames beyond
    `max_aspect_ratio` are refused from the header. `seek=False` decodes the stream from its start up to the last
    sampled frame (the reference the seeking path equals)."""
    fail = functools.partial(DataError, source=source, record=record, field=field)
    animation = _open_animation(data, sampling, name, fail)
    if animation is not None:
        with animation:
            return _decode_animation(animation, sampling, fail, name, max_aspect_ratio, data)
    with _open_container(data, sampling, name, fail) as container:
        h = _stream_header(container, sampling, fail, name, max_aspect_ratio)
        try:
            return _decode_stream(container, h, sampling, seek, fail, name)
        except DataError as e:
            failed = e
    # decoding failed: when no packet of the stream gives a frame, that is what is wrong (FFmpeg's complaint about
    # a first packet, a seek or a count of 0 frames tells less), read again from the start
    problem = None
    with contextlib.suppress(DataError), _open_container(data, sampling, name, fail) as container:
        problem = _frameless(container, _video_stream(container, fail, name), name)
    raise failed if problem is None else fail(problem)


def _decode_stream(container, h: _StreamHeader, sampling: VideoSampling, seek: bool, fail, name: str) -> Video:
    """`decode_video`'s work on an open container whose header passed: the sampled frames of its video stream."""
    index = _packet_index(container, h.stream)
    total, duration = h.total, h.duration
    if not h.counted and index is not None:
        # no frame count in the header (Matroska / WebM): the video's packets are its frames, and a stream that
        # ends well before its own announced duration was cut
        span = index.span(h.stream.time_base)
        if h.own_duration and duration and span < duration - max(1.5 / h.fps, 0.02 * duration):
            raise fail(f"truncated video {name}: it announces {duration:.2f} s of video, its frames end at "
                       f"{span:.2f} s")
        total, duration = len(index.pts), span if not h.own_duration else duration
    times = _variable_frame_times(index, h.stream.time_base, h.fps) if index and len(index.pts) == total else None
    if times is not None and sampling.frame_rule == "uniform":
        # variable frame rate: sampled uniformly in time, placed at their own times (VLM2Vec's rule counts frames)
        wanted = time_uniform_indices(times, sampling.frame_count(total, index.span(h.stream.time_base)))
        size = _budget_size(h.width, h.height, len(wanted), sampling.max_video_pixels, h.max_aspect_ratio)
        frames, decoded = _decode_frames(container, h.stream, wanted, h.fps, size, None, fail=fail, name=name)
        return pad_frames(Video(frames=tuple(frames), fps=h.fps, frame_indices=tuple(wanted), total_frames=total,
                                source=name, decoded_frames=decoded, frame_times=tuple(times[i] for i in wanted),
                                span=index.span(h.stream.time_base)))
    try:
        return _sample_video(container, h, sampling, total, duration, index if seek else None, fail, name)
    except _ShortStream as short:
        if h.counted:
            raise fail(f"truncated video {name}: it announces {total} frames, {short.decoded} could be "
                       f"decoded") from None
        total = short.decoded
    # the frame count was an estimate (duration x frame rate) and was wrong: sample the frames there are
    try:
        container.seek(0, stream=h.stream)
        return _sample_video(container, h, sampling, total, total / h.fps, None, fail, name)
    except (_ShortStream, *_av_errors()) as e:  # a nested tuple is no exception class: a TypeError
        raise fail(f"corrupt video {name}: it decoded {total} frames once, not again: {e}") from None


def _variable_frame_times(index: "_PacketIndex", time_base, fps: float) -> list[float] | None:
    """Seconds from the first frame to each frame (presentation order) when the frames are off the constant
    `fps` grid (a frame more than a quarter frame from i / fps), else None: a constant frame rate clip is sampled
    by frame number."""
    times = [float((p - index.pts[0]) * time_base) for p in index.pts]
    if all(abs(t - i / fps) <= 0.25 / fps for i, t in enumerate(times)):
        return None
    return times


def time_uniform_indices(times: Sequence[float], n: int) -> list[int]:
    """`n` frame indices of frames at `times` (seconds, ascending) spread uniformly in time over [first, last],
    first and last included: per target time, the nearest frame (the later one on a tie), as `uniform_indices`
    does over frame numbers."""
    if n <= 0 or not times:
        return []
    first, last = times[0], times[-1]
    targets = [(first + last) / 2] if n == 1 else [first + k * (last - first) / (n - 1) for k in range(n)]
    out = []
    for t in targets:
        j = min(bisect.bisect_left(times, t), len(times) - 1)
        out.append(j - 1 if j > 0 and t - times[j - 1] < times[j] - t else j)
    return out


def _sample_video(container, h: _StreamHeader, sampling: VideoSampling, total: int, duration: float | None,
                  index: "_PacketIndex | None", fail, name: str) -> Video:
    """The sampled frames of a clip of `total` frames (`_decode_frames`; seeking when `index` is given)."""
    wanted = sampling.indices(total, duration)
    size = _budget_size(h.width, h.height, len(wanted), sampling.max_video_pixels, h.max_aspect_ratio)
    frames, decoded = _decode_frames(container, h.stream, wanted, h.fps, size, index, fail=fail, name=name)
    return pad_frames(Video(frames=tuple(frames), fps=h.fps, frame_indices=tuple(wanted), total_frames=total,
                            source=name, decoded_frames=decoded))


def _av_errors() -> tuple[type[Exception], ...]:
    """What PyAV raises on a file it cannot read."""
    import av

    return av.error.FFmpegError, ValueError, OSError


def probe_video_file(loader: FrameLoader, ref: Any, sampling: VideoSampling | None = None, *, source=None,
                     record=None, field=None) -> None:
    """The cheap check of one video file (a path under `loader`'s root, or inline bytes), no frame decoded: the
    path stays inside the root, the file exists, is not empty nor over ``max_bytes``, PyAV opens its container
    and its header passes `decode_video`'s rules (a video stream; frame size, frame rate, duration and frame
    count within the limits). A stream corrupt past its header is found when the video is decoded."""
    sampling = sampling or VideoSampling()
    fail = functools.partial(DataError, source=source, record=record, field=field)
    with contextlib.ExitStack() as stack:
        data, name = _opened_video(stack, loader, ref, sampling, source=source, record=record, field=field)
        limit = getattr(loader, "max_aspect_ratio", None)
        animation = _open_animation(data, sampling, name, fail)
        if animation is not None:
            with animation:  # its frame count, and its duration where its chunks give it without decoding
                _check_frame_size(*animation.size, sampling, fail, name, limit)
                _animation_delays(animation, data, sampling, fail, name, decode=False)
                return None
        with _open_container(data, sampling, name, fail) as container:
            _stream_header(container, sampling, fail, name, limit)


_REFORMATTER = threading.local()


def _reformatter():
    """This thread's PyAV `VideoReformatter`. `frame.to_image()` makes a new one for every frame, and with it a
    new swscale context (1-7 ms at the demo's 56 px clips, more than decoding the frame); one reformatter per
    thread keeps FFmpeg's cached context (`sws_getCachedContext`) from frame to frame: the same pixels
    (`tests/data/test_video.py`), several times faster (`bench/video_throughput.py`). A context is not shared
    between threads."""
    r = getattr(_REFORMATTER, "instance", None)
    if r is None:
        from av.video.reformatter import VideoReformatter

        r = _REFORMATTER.instance = VideoReformatter()
    return r


def _frame_image(frame, size: tuple[int, int]):
    """A decoded frame as an RGB PIL image of `size` (stored orientation), turned upright as players show it: the
    stream's display matrix rotation (`frame.rotation`, counter-clockwise degrees; a phone's portrait clip is stored
    landscape with -90) is applied, as FFmpeg's autorotate does. The pixel rules (frame size, budget) count pixels,
    the same either way up."""
    from PIL import Image

    resize = {"width": size[0], "height": size[1]} if size != (frame.width, frame.height) else {}
    img = _reformatter().reformat(frame, format="rgb24", **resize).to_image()
    turn = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}.get(
        round(getattr(frame, "rotation", 0) or 0) % 360)
    return (img.transpose(turn) if turn is not None else img).convert("RGB")


class _ShortStream(Exception):
    """The stream ended before the last sampled frame."""

    def __init__(self, decoded: int):
        super().__init__(f"the stream ended after {decoded} frame(s)")
        self.decoded = decoded


def _decode_frames(container, stream, wanted: list[int], fps: float, size: tuple[int, int],
                   index: "_PacketIndex | None", *, fail, name: str) -> tuple[list[Any], int]:
    """The sampled frames and how many frames were decoded to get them: by keyframe seeking when `index` is given
    and seeking saves decoding (`_keyframe_plan`), else by decoding from the start up to the last sampled frame
    (`_ShortStream` when the stream ends before it)."""
    want: dict[int, list[int]] = {}
    for j, i in enumerate(wanted):
        want.setdefault(i, []).append(j)
    frames: list[Any] = [None] * len(wanted)
    if index is not None:
        plan = _keyframe_plan(index, stream, sorted(want), fps)
        try:
            if plan is not None:
                decoded = _decode_seeking(container, stream, plan, want, frames, size)
                if decoded:
                    return frames, decoded
                container.seek(0, stream=stream)
        except _av_errors() as e:
            raise fail(f"corrupt or unseekable video {name}: {e}") from None
        frames = [None] * len(wanted)
    last = max(wanted)
    decoded = 0
    try:
        for i, frame in enumerate(container.decode(stream)):
            decoded = i + 1
            if i in want:
                img = _frame_image(frame, size)
                for j in want[i]:
                    frames[j] = img
            if i >= last:
                break
    except _av_errors() as e:
        raise fail(f"corrupt video {name} (failed after {decoded} decoded frame(s)): {e}") from None
    if decoded <= last:
        raise _ShortStream(decoded)
    return frames, decoded


@dataclass(frozen=True)
class _PacketIndex:
    """The video stream's packets, listed by one demux pass (no decoding): their presentation time stamps in
    presentation order, those of the keyframes, and where the last one shown ends (all in the stream's time base)."""

    pts: tuple[int, ...]
    keys: tuple[int, ...]
    end: int

    def span(self, time_base) -> float:
        """Seconds from the first frame to the end of the last."""
        return float((self.end - self.pts[0]) * time_base)


def _packet_index(container, stream) -> _PacketIndex | None:
    """The stream's `_PacketIndex`, the container rewound to its start; None when packets lack time stamps or
    the pass fails (decoding then reports what is wrong with the file)."""
    if stream.time_base is None:
        return None
    # the last frame shown ends its own packet's duration after it: an MP4 / MOV packet's duration is its decode
    # step, which with B-frames belongs to another frame (one before a gap of a variable frame rate carried the gap)
    pts_all, keys, end = [], [], None
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            if packet.pts is None:
                pts_all = []
                break
            pts_all.append(packet.pts)
            if end is None or packet.pts >= end[0]:
                end = (packet.pts, packet.pts + (packet.duration or 0))
            if packet.is_keyframe:
                keys.append(packet.pts)
        container.seek(0, stream=stream)  # the demux pass read to the end
    except _av_errors():
        return None
    if not pts_all or not keys:
        return None
    return _PacketIndex(tuple(sorted(pts_all)), tuple(keys), end[1])


@dataclass(frozen=True)
class _SeekPlan:
    start_pts: int                       # presentation time stamp of frame 0
    seconds_per_tick: float              # the stream's time base
    fps: float
    # per sampled frame index (ascending): the keyframe pts to seek to first, or None to decode on from where we are
    steps: tuple[tuple[int, int | None], ...] = ()

    def index(self, pts: int) -> int:
        """Frame index of a presentation time stamp (constant frame rate)."""
        return int(math.floor((pts - self.start_pts) * self.seconds_per_tick * self.fps + 0.5))


def _keyframe_plan(index: _PacketIndex, stream, targets: list[int], fps: float) -> _SeekPlan | None:
    """Where to seek (from the stream's `_PacketIndex`): a sampled frame whose keyframe lies beyond the frames
    already decoded is reached by seeking to that keyframe, the others by decoding on. None (decode from the
    start) when no seek would skip a frame."""
    grid = _SeekPlan(index.pts[0], float(stream.time_base), fps)
    key_index = sorted((grid.index(k), k) for k in index.keys)
    steps, pos = [], -1
    for t in targets:
        before = [kk for kk in key_index if kk[0] <= t]
        if before and before[-1][0] > pos + 1:  # its keyframe is past what is decoded: frames to skip
            steps.append((t, before[-1][1]))
        else:
            steps.append((t, None))
        pos = t
    if all(k is None for _, k in steps):
        return None
    return _SeekPlan(grid.start_pts, grid.seconds_per_tick, fps, tuple(steps))


def _decode_seeking(container, stream, plan: _SeekPlan, want: dict[int, list[int]], frames: list[Any],
                    size: tuple[int, int]) -> int:
    """Follow the plan; the number of frames decoded, or 0 when a sampled frame could not be reached (the
    caller then decodes from the start)."""
    it, decoded = None, 0
    for target, seek_pts in plan.steps:
        if seek_pts is not None:
            container.seek(seek_pts, stream=stream, backward=True, any_frame=False)
            it = container.decode(stream)
        elif it is None:
            it = container.decode(stream)
        for frame in it:
            decoded += 1
            if frame.pts is None:
                return 0
            i = plan.index(frame.pts)
            if i in want and frames[want[i][0]] is None:
                img = _frame_image(frame, size)
                for j in want[i]:
                    frames[j] = img
            if i >= target:
                break
        else:
            return 0
        if frames[want[target][0]] is None:
            return 0  # time stamps do not land on the frame grid (variable frame rate)
    return decoded


def _opened_video(stack: contextlib.ExitStack, loader: FrameLoader, ref: Any, sampling: VideoSampling, *, source,
                  record, field) -> tuple[bytes | BinaryIO, str]:
    """One video file to read, and its name in messages: a path (`video_file_path`'s checks) opened, closed with
    `stack`; inline bytes as they are."""
    if not isinstance(ref, str):
        return bytes(ref), "<inline video bytes>"
    path = video_file_path(loader, ref, sampling, source=source, record=record, field=field)
    try:
        return stack.enter_context(open(path, "rb")), ref
    except OSError as e:
        raise DataError(f"cannot open video {ref!r}: {e.strerror or e}", source=source, record=record,
                        field=field) from None


def _content_key(data: bytes | BinaryIO, sampling: VideoSampling, max_aspect_ratio: float | None = None) -> str:
    """The frame cache's key: the file's content (the SHA-1 of its bytes; an open file is read in chunks from where
    it stands), the sampling and the limit its header was checked under."""
    h = hashlib.sha1(data) if isinstance(data, bytes) else stream_sha1(data)
    h.update(repr((astuple(sampling), max_aspect_ratio)).encode())
    return h.hexdigest()


_NOT_REGULAR = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))


def looked_in(ref: str, root: str | os.PathLike | None) -> str:
    """What a missing file's message adds to say where the path `ref` was looked for: " (looked in 'ROOT')" for a
    relative path, resolved against the folder `root` (the data root); "" for an absolute or empty one, or no root."""
    if root is None or not ref or os.path.isabs(ref):
        return ""
    return f" (looked in {str(root)!r})"


def missing_file_problem(what: str, ref: str, path: Path, root: str | os.PathLike | None = None) -> str | None:
    """Why the path `ref` of a `what` ("image", "video"), resolved to `path`, names no file to read: nothing there
    (naming `root`, the folder a relative `ref` was resolved against: `looked_in`), or something that is not a
    regular file (a directory; a FIFO, whose reading waits for a writer; a device, e.g. a link to /dev/zero, which
    never ends). None: a regular file. `Path.is_file`'s OSErrors are the caller's."""
    if path.is_file():
        return None
    try:
        mode = path.stat().st_mode
    except OSError:  # nothing there, or a broken link
        mode = None
    if mode is None or not ref:  # an empty path names no file (it resolves to the folder it is relative to)
        return f"{what} file not found: {ref!r}{looked_in(ref, root)}"
    kind = next((k for test, k in _NOT_REGULAR if test(mode)), "not a file")
    return f"{what} {ref!r} exists but is not a regular file: it is {kind}"


def video_file_path(loader: FrameLoader, ref: str, sampling: VideoSampling, *, source, record, field) -> Path:
    """The file of a video path: inside the data root, a regular file (`missing_file_problem`), within ``max_bytes``
    (a stat, the file not opened: `unime.data.io.ImageChecker.check_files` too)."""
    path = loader.resolve(ref, source=source, record=record, field=field)
    problem = missing_file_problem("video", ref, path, getattr(loader, "root", None))
    if problem:
        raise DataError(problem, source=source, record=record, field=field)
    size = path.stat().st_size
    if size > sampling.max_bytes:
        raise DataError(f"video {ref!r} has {size} bytes, over the limit {sampling.max_bytes}", source=source,
                        record=record, field=field)
    return path


def load_video(loader: FrameLoader, refs: Sequence[Any], sampling: VideoSampling | None = None, *,
               cache: FrameCache | None = FRAME_CACHE, source=None, record=None, field=None) -> Video:
    """A `Video` from an item's `video` references: one video file, or a list of frames."""
    sampling = sampling or VideoSampling()
    refs = list(refs)
    if not refs:
        raise DataError("empty video (no frames, no file)", source=source, record=record, field=field)
    if len(refs) > 1 and any(is_video_file_ref(r) for r in refs):
        raise DataError(MIXED_VIDEO_REFS, source=source, record=record, field=field)
    if is_one_video_file(loader, refs):
        limit = getattr(loader, "max_aspect_ratio", None)  # the image loader's, the model's processor limit
        with contextlib.ExitStack() as stack:
            # an open file, hashed in chunks and decoded from the same file: memory does not grow with its size
            data, name = _opened_video(stack, loader, refs[0], sampling, source=source, record=record, field=field)
            try:
                key = _content_key(data, sampling, limit)
            except OSError as e:
                raise DataError(f"cannot read video {name}: {e.strerror or e}", source=source, record=record,
                                field=field) from None
            hit = cache.get(key) if cache is not None else None
            if hit is not None:
                return hit
            video = decode_video(data, sampling, name=name, source=source, record=record, field=field,
                                 max_aspect_ratio=limit)
        if cache is not None:
            cache.put(key, video)
        return video
    # a frame list: sampled as a file is (its frames at `frame_list_fps`), each frame through the image loader's rules
    total = len(refs)
    wanted = sampling.indices(total, total / sampling.frame_list_fps, saved=False)
    frames = [loader.load(refs[i], source=source, record=record, field=f"{field or 'video'}[{i}]") for i in wanted]
    w, h = frames[0].size
    out = _budget_size(w, h, len(frames), sampling.max_video_pixels, getattr(loader, "max_aspect_ratio", None))
    from PIL import Image

    # a video's frames share one size (the processors stack them): a frame of another size is resized to the first
    # frame's budgeted size (frames of different sizes were budgeted one by one and crashed the processor, QA)
    resized = [f if f.size == out else f.resize(out, Image.Resampling.BICUBIC) for f in frames]
    return pad_frames(Video(frames=tuple(resized), fps=sampling.frame_list_fps, frame_indices=tuple(wanted),
                            total_frames=total, source="<frame list>"))


def pad_frames(video: Video, n: int = TEMPORAL_PATCH) -> Video:
    """`video` with at least `n` frames: a shorter (non-empty) one gets its last frame repeated, at the last frame's
    place in time (its index repeated), as Qwen-VL processors pad a frame count to a multiple of the temporal patch.
    `total_frames` stays the source's."""
    short = n - len(video.frames)
    if short <= 0 or not video.frames:
        return video
    import dataclasses

    times = video.frame_times and video.frame_times + (video.frame_times[-1],) * short
    return dataclasses.replace(video, frames=video.frames + (video.frames[-1],) * short,
                               frame_indices=video.frame_indices + (video.frame_indices[-1],) * short,
                               frame_times=times)


def as_video(value: Any, sampling: VideoSampling | None = None) -> Video:
    """A `Video` from an already loaded one or an in-memory list of PIL frames (used whole), padded to a temporal
    patch (`pad_frames`)."""
    if isinstance(value, Video):
        return pad_frames(value)
    frames = tuple(value)
    fps = (sampling or VideoSampling()).frame_list_fps
    return pad_frames(Video(frames=frames, fps=fps, frame_indices=tuple(range(len(frames))), total_frames=len(frames),
                            source="<frame list>"))
