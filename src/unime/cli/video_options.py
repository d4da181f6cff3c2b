"""Command-line options for video sampling (`unime.data.video.VideoSampling`), shared by the commands
that read video items."""

from __future__ import annotations


def add_video_options(p) -> None:
    g = p.add_argument_group("video", "how video items (a file, or a list of frames) are sampled")
    g.add_argument("--video-frames", type=int, default=None,
                   help="frames sampled uniformly from each video (default 8)")
    g.add_argument("--video-fps", type=float, default=None,
                   help="sample this many frames per second of video instead of a fixed count")
    g.add_argument("--video-max-frames", type=int, default=None, help="upper bound on frames per video (default 64)")
    g.add_argument("--video-max-pixels", type=int, default=None,
                   help="pixel budget per video, summed over its sampled frames (frames are scaled down to fit)")


def video_sampling_from_args(args):
    """A `VideoSampling` from the parsed options, or None when none was given (the defaults apply)."""
    from unime.data.video import VideoSampling

    return VideoSampling.from_options(**video_options_from_args(args))


def video_options_from_args(args) -> dict:
    """The four options as keyword arguments of `VideoSampling.from_options` (None = not given)."""
    return {k: getattr(args, a, None) for k, a in (("frames", "video_frames"), ("fps", "video_fps"),
                                                    ("max_frames", "video_max_frames"),
                                                    ("max_pixels", "video_max_pixels"))}
