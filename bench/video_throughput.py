"""Video throughput: the judge's fast path vs per-pair forwards on video candidates, and the cost of
decoding + sampling a clip with and without the frame cache.

    python bench/video_throughput.py                         # tiny Qwen2.5-VL judge built on the fly
    python bench/video_throughput.py --judge PATH --family qwen3_vl --candidates 16 --frames 8

Clips are written with PyAV (MPEG-4 Part 2, 30 fps, `--clip-seconds` long, `--clip-size` pixels) into a
temporary folder. Judge: one text query against `--candidates` video candidates (each its own clip, 8
frames by default), timed as (a) one full forward per (query, candidate) prompt and (b)
`JudgeScorer.margin_candidates` (shared prefix + continuations; candidate videos' vision features
cached, cold on the first pass), both in CPU time of this process with one torch thread, alternated
`--rounds` times; printed side by side with the largest margin difference between the two paths.
Decode: per clip, `ImageLoader.load_video` with the frame cache cleared before each call (cold: read +
hash + demux + decode + sample + resize) and with it warm (read + hash + lookup).
Seeking: one long clip (`--long-seconds`, keyframe every `--long-gop` frames, libx264) decoded + sampled
with keyframe seeking (`decode_video(seek=True)`, the default) and by decoding the stream from its start
(`seek=False`), `--frames` frames, best of `--rounds` + 1, with the frames each path decoded.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np


def write_clip(path, *, seconds: float, fps: int, size: tuple[int, int], seed: int, codec: str = "mpeg4",
               gop: int | None = None) -> None:
    import av

    rng = np.random.default_rng(seed)
    w, h = size
    c = av.open(str(path), "w")
    s = c.add_stream("mpeg4", rate=fps)
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    if gop:
        s.codec_context.gop_size = gop
    base = rng.integers(0, 255, 3)
    for i in range(int(seconds * fps)):
        a = np.zeros((h, w, 3), np.uint8)
        a[...] = (base + 3 * i) % 256
        x = (7 * i) % max(1, w - 32)
        a[h // 3:h // 3 + 32, x:x + 32] = 255 - a[0, 0]
        for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()


def cpu() -> float:
    return time.process_time()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--judge", default=None, help="judge checkpoint (default: a tiny model built on the fly)")
    ap.add_argument("--family", default="qwen2_5_vl", help="family of the tiny judge")
    ap.add_argument("--candidates", type=int, default=12)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--clips", type=int, default=6, help="clips timed for decoding")
    ap.add_argument("--clip-seconds", type=float, default=4.0)
    ap.add_argument("--clip-size", default="320x240")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--long-seconds", type=float, default=300.0, help="length of the clip timed for seeking")
    ap.add_argument("--long-gop", type=int, default=60, help="its keyframe interval in frames")
    ap.add_argument("--long-size", default="320x240")
    ap.add_argument("--skip-judge", action="store_true", help="decode figures only")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
    from unime.data.images import ImageLoader
    from unime.data.items import Item
    from unime.data.video import FRAME_CACHE, VideoSampling
    from unime.models.judge import JudgeScorer

    w, h = (int(x) for x in args.clip_size.split("x"))
    sampling = VideoSampling(num_frames=args.frames)
    with tempfile.TemporaryDirectory() as tmp:
        n_clips = max(args.clips, args.candidates)
        for i in range(n_clips):
            write_clip(os.path.join(tmp, f"c{i}.mp4"), seconds=args.clip_seconds, fps=30, size=(w, h), seed=i)

        # -- decode + sample ---------------------------------------------------------------------------
        loader = ImageLoader(tmp, video=sampling)
        cold, warm = [], []
        for i in range(args.clips):
            FRAME_CACHE.clear()
            t = time.perf_counter()
            loader.load_video([f"c{i}.mp4"])
            cold.append(time.perf_counter() - t)
            t = time.perf_counter()
            loader.load_video([f"c{i}.mp4"])
            warm.append(time.perf_counter() - t)
        size_kb = np.mean([os.path.getsize(os.path.join(tmp, f"c{i}.mp4")) for i in range(args.clips)]) / 1024
        print(f"decode+sample ({args.clips} clips, {args.clip_seconds:g} s at 30 fps, {w}x{h}, {size_kb:.0f} KiB, "
              f"{args.frames} frames sampled):")
        print(f"  without the frame cache: {1000 * np.mean(cold):8.1f} ms/clip (median {1000 * np.median(cold):.1f})")
        print(f"  with the frame cache:    {1000 * np.mean(warm):8.1f} ms/clip (median {1000 * np.median(warm):.1f})"
              f"   → {np.mean(cold) / np.mean(warm):.0f}x")

        bench_seeking(tmp, args, sampling)
        if args.skip_judge:
            return 0

        # -- judge ---------------------------------------------------------------------------------------
        if args.judge is None:
            from unime.models.tiny import build_tiny

            path = build_tiny(args.family, os.path.join(tmp, "judge"))
        else:
            path = args.judge
        judge = JudgeScorer.from_pretrained(path, device="cpu", data_root=tmp, video_sampling=sampling,
                                            chunk_size=8)
        query = Item(text="Find a video that contains the following visual content: a white square moves "
                          "from left to right over a dark background")
        cands = [Item(text="Understand the content of the provided video.", video=(f"c{i}.mp4",))
                 for i in range(args.candidates)]
        FRAME_CACHE.clear()
        judge.margin_pair(query, cands[0])  # warm-up (allocator, kernels, decoding of one clip)
        for c in cands:  # decode every clip once so both paths time model work only
            loader.load_video(list(c.video))
        bench_video_candidates(judge, query, cands, args)
        # the other direction: a video query (in the shared prefix) against caption candidates
        vquery = Item(text="Represent the given video for retrieval.", video=("c0.mp4",))
        words = "a white square moves left right over dark light background slowly quickly then stops".split()
        rng = np.random.default_rng(0)
        captions = [Item(text=" ".join(rng.choice(words, 12))) for _ in range(args.candidates)]
        t = cpu()
        for _ in range(args.rounds):
            ref = np.array([judge.margin_pair(vquery, c) for c in captions])
        t_ref = cpu() - t
        t = cpu()
        for _ in range(args.rounds):
            fast = judge.margin_candidates(vquery, captions)
        t_fast = cpu() - t
        n = args.candidates * args.rounds
        print(f"judge, video query vs {args.candidates} caption candidates:")
        print(f"  per-pair full forwards:        {n / t_ref:8.2f} pairs/s")
        print(f"  fast path:                     {n / t_fast:8.2f} pairs/s   ({t_ref / t_fast:.2f}x)")
        print(f"  largest |margin difference|:   {float(np.abs(fast - ref).max()):.2e}")
    return 0


def bench_seeking(tmp, args, sampling) -> None:
    """Decode + sample one long clip: keyframe seeking vs decoding from the start (same frames)."""
    import av

    from unime.data.video import decode_video

    lw, lh = (int(x) for x in args.long_size.split("x"))
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    path = os.path.join(tmp, "long.mp4")
    t = time.perf_counter()
    write_clip(path, seconds=args.long_seconds, fps=30, size=(lw, lh), seed=99, codec=codec, gop=args.long_gop)
    written = time.perf_counter() - t
    data = open(path, "rb").read()
    best = {}
    videos = {}
    for _ in range(args.rounds + 1):
        for seek in (True, False):
            t = time.perf_counter()
            videos[seek] = decode_video(data, sampling, seek=seek)
            best[seek] = min(best.get(seek, float("inf")), time.perf_counter() - t)
    same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(videos[True], videos[False]))
    v = videos[True]
    print(f"decode+sample of one long clip ({args.long_seconds:g} s at 30 fps = {v.total_frames} frames, {lw}x{lh}, "
          f"{codec}, keyframe every {args.long_gop} frames, {len(data) / 2 ** 20:.1f} MiB, written in {written:.0f} s; "
          f"{len(v)} frames sampled; best of {args.rounds + 1}):")
    print(f"  decoding from the start:  {1000 * best[False]:9.1f} ms  ({videos[False].decoded_frames} frames decoded)")
    print(f"  keyframe seeking:         {1000 * best[True]:9.1f} ms  ({v.decoded_frames} frames decoded)   "
          f"→ {best[False] / best[True]:.1f}x; same frames: {same}")


def bench_video_candidates(judge, query, cands, args) -> None:
    """A text query against video candidates: both paths alternated `args.rounds` times."""
    t_ref = t_fast_cold = t_fast_warm = 0.0
    diff = 0.0
    for _ in range(args.rounds):
        t = cpu()
        ref = np.array([judge.margin_pair(query, c) for c in cands])
        t_ref += cpu() - t
        judge.clear_image_cache()
        t = cpu()
        fast = judge.margin_candidates(query, cands)
        t_fast_cold += cpu() - t
        t = cpu()
        fast2 = judge.margin_candidates(query, cands)
        t_fast_warm += cpu() - t
        diff = max(diff, float(np.abs(fast - ref).max()), float(np.abs(fast2 - ref).max()))
    n = len(cands) * args.rounds
    print(f"judge, text query vs {len(cands)} video candidates ({args.judge or 'tiny ' + args.family}, "
          f"{args.rounds} rounds, {args.frames} frames each, CPU time, 1 thread):")
    print(f"  per-pair full forwards:        {n / t_ref:8.2f} pairs/s")
    print(f"  fast path, video cache cold:   {n / t_fast_cold:8.2f} pairs/s   ({t_ref / t_fast_cold:.2f}x)")
    print(f"  fast path, video cache warm:   {n / t_fast_warm:8.2f} pairs/s   ({t_ref / t_fast_warm:.2f}x)")
    print(f"  largest |margin difference|:   {diff:.2e} (tolerance 1e-4)")


if __name__ == "__main__":
    raise SystemExit(main())
