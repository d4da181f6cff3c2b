"""The shared option groups of the commands that read images and video (declared once, on
`unime.models.image_budget.ImageOptions` and `unime.data.video.VideoOptions`)."""

from __future__ import annotations


def add_image_options(p) -> None:
    from unime.cli.dataclass_options import add_options
    from unime.models.image_budget import IMAGE_GROUP, ImageOptions

    add_options(p, ImageOptions, groups=(IMAGE_GROUP,))


def add_video_options(p) -> None:
    from unime.cli.dataclass_options import add_options
    from unime.data.video import VideoOptions

    add_options(p, VideoOptions, groups=("video",))


def video_sampling_from_args(args):
    """A `VideoSampling` from the parsed options, or None when none was given (the defaults apply)."""
    from unime.data.video import VideoSampling

    return VideoSampling.from_options(**video_options_from_args(args))


def video_options_from_args(args) -> dict:
    """The four options as keyword arguments of `VideoSampling.from_options` (None = not given)."""
    return {k: getattr(args, a, None) for k, a in (("frames", "video_frames"), ("fps", "video_fps"),
                                                    ("max_frames", "video_max_frames"),
                                                    ("max_pixels", "video_max_pixels"))}
