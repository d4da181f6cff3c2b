"""How `unime data import` scales with the number of captions: the seconds of an import at two sizes and their
ratio (linear: the ratio of the sizes; the import was quadratic before: 2,500 captions 24 s, 5,000 480 s).

    python bench/data_import_scale.py [--sizes 2500 10000] [--captions-per-image 5] [--work DIR]

Per size N a captions collection is generated: N rows `image,caption`, `--captions-per-image` captions per
image (as in COCO-style data), the images hard links (else copies) of a few small PNGs, so the import's work is
in its records and negatives rather than in decoding. Each import runs in this process (`unime.cli.main`) at
one thread; its wall and CPU seconds are printed, then the ratio of the larger size's to the smaller's.
`--work` keeps the collections and imports there (default: a temporary folder, removed).

Measured (2026-12-05, 2 shared CPU cores): 2,500 / 10,000 captions 1.3 / 2.8 s CPU (2.3x, fixed costs
included); before the linear negatives, 1,250 / 2,500 captions 6.5 / 21.9 s CPU (3.3x).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

WORDS = ("red green blue orange purple yellow circle square star cross triangle small large left right top bottom "
         "center").split()
DISTINCT_IMAGES = 8


def make_collection(folder: Path, n_rows: int, per_image: int) -> tuple[Path, Path]:
    """folder/photos/*.png and folder/captions.csv with `n_rows` captions, `per_image` per image; returns both."""
    from PIL import Image

    photos = folder / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    sources = []
    for k in range(DISTINCT_IMAGES):
        path = folder / f"source_{k}.png"
        Image.new("RGB", (16, 16), tuple(rng.randrange(256) for _ in range(3))).save(path)
        sources.append(path)
    with open(folder / "captions.csv", "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["image", "caption"])
        for row in range(n_rows):
            i = row // per_image
            name = f"p{i:06d}.png"
            if row % per_image == 0:
                try:
                    os.link(sources[i % DISTINCT_IMAGES], photos / name)
                except OSError:
                    shutil.copyfile(sources[i % DISTINCT_IMAGES], photos / name)
            words = " ".join(rng.choice(WORDS) for _ in range(6))
            out.writerow([name, f"A {words} photo {i} v{row % per_image}."])
    return photos, folder / "captions.csv"


def timed_import(folder: Path, n_rows: int, per_image: int) -> tuple[float, float]:
    """(wall, CPU) seconds of `unime data import` on a generated collection of `n_rows` captions."""
    from unime.cli import main

    photos, captions = make_collection(folder / f"collection_{n_rows}", n_rows, per_image)
    out = folder / f"import_{n_rows}"
    wall, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):  # the import's summary
        code = main(["--log-level", "WARNING", "data", "import", "--captions", str(captions), "--images", str(photos),
                     "--out", str(out)])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if code != 0:
        raise SystemExit(f"unime data import exited {code} on {n_rows} captions")
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=[2500, 10000], metavar=("SMALL", "LARGE"),
                    help="captions of the two imports (default 2500 10000)")
    ap.add_argument("--captions-per-image", type=int, default=5)
    ap.add_argument("--work", type=Path, help="keep the collections and imports here (default: a temporary folder)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    small, large = sorted(args.sizes)
    work = args.work or Path(tempfile.mkdtemp(prefix="unime-import-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        times = {n: timed_import(work, n, args.captions_per_image) for n in (small, large)}
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    for n, (wall, cpu) in times.items():
        print(f"{n:>8} captions: {wall:7.1f} s wall, {cpu:7.1f} s CPU")
    ratio = times[large][1] / max(times[small][1], 1e-9)
    print(f"ratio {large}/{small} captions: {ratio:.1f}x CPU (linear: {large / small:.1f}x; quadratic: "
          f"{(large / small) ** 2:.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
