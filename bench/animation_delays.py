"""Animations read as videos (APNG, animated WebP): the cost of reading their frame delays, which decide the
frames sampled and the duration limit.

    python bench/animation_delays.py                       # 10,000 frames of 64 x 48, 100 ms each
    python bench/animation_delays.py --frames 3000 --size 320x240

Writes an APNG and a lossless animated WebP of `--frames` flat-colour frames (PIL) into a temporary folder, then
times, per file (the frame cache off), and measures in a second run the peak of Python's allocations (`tracemalloc`,
which slows Python down; PIL's and libwebp's pixel buffers are C allocations it does not see): `decode_video`
refusing it under a `max_duration_s` of `--limit-s` seconds (shorter than the animation: refused by its frame count)
and of 90 % of its duration (its frames within the count: refused by their delays), `decode_video` sampling 8
frames under the default limits, and `probe_video_file` (the header check) under each limit. Run it against two
checkouts with PYTHONPATH=.../src to compare them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path


def write_animation(path: Path, n: int, size: tuple[int, int], fmt: str) -> None:
    from PIL import Image

    frames = [Image.new("RGB", size, ((7 * i) % 256, (3 * i) % 256, 90)) for i in range(n)]
    extra = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **extra)


def outcome(fn) -> str:
    """"ok", or the message of the error `fn` raised (a refusal is a measured outcome)."""
    try:
        fn()
        return "ok"
    except Exception as e:
        return str(e)


def measure(fn) -> tuple[float, float, str]:
    """Seconds of one call of `fn`, the peak traced MB of another, and the outcome of the first."""
    t = time.perf_counter()
    said = outcome(fn)
    seconds = time.perf_counter() - t
    tracemalloc.start()
    outcome(fn)
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return seconds, peak, said


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--size", default="64x48")
    ap.add_argument("--limit-s", type=float, default=60.0, help="max_duration_s of the refusal case")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))

    from unime.data.images import ImageLoader
    from unime.data.video import VideoSampling, decode_video, probe_video_file

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for fmt, name in (("PNG", "long.png"), ("WEBP", "long.webp")):
            write_animation(root / name, args.frames, size, fmt)
            cases = {}
            for limit in (args.limit_s, 0.9 * args.frames / 10):
                sampling = VideoSampling(max_duration_s=limit)
                cases[f"refused (limit {limit:g} s)"] = (
                    lambda s=sampling: decode_video((root / name).open("rb"), s, name=name))
                cases[f"probe (limit {limit:g} s)"] = lambda s=sampling: probe_video_file(ImageLoader(root), name, s)
            cases["sampled (8 frames)"] = lambda: decode_video((root / name).open("rb"), VideoSampling(), name=name)
            for what, fn in cases.items():
                seconds, peak, outcome = measure(fn)
                print(f"{name:10s} {args.frames} frames {what:24s} {seconds:7.3f} s  peak {peak:6.2f} MB  "
                      f"{outcome[:80]}")


if __name__ == "__main__":
    main()
