"""How much work can patch routing take off a large SR network before it costs 0.1 dB?

Runs a large and a small restorer (and bicubic) on whole LR images under the eval protocol,
cuts the outputs into cells of CELL LR pixels, and asks two questions per share of cells given
to the cheap tier:

  * edge-score routing: the cells with the lowest ARM edge score go to the cheap tier (what
    `--route` can do with a score threshold);
  * oracle: per image, the cells where the large network gains least go to the cheap tier (an
    upper bound for any per-patch score).

The answer is the mean per-image PSNR drop on Y against the large network alone. It ignores
the cost of patch overlaps and of the cheap tier, so real routing does worse: a design that
fails here cannot meet a speed-at-quality target.

    .venv/bin/python tools/routing_headroom.py ../shared/data/eval/{Set14,CBSD68} --large lipt --small rtsr --scale 4
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restore.api import load_restorer  # noqa: E402
from restore.io.images import read_image  # noqa: E402
from restore.metrics import crop_to_multiple, rgb_to_y  # noqa: E402
from restore.resize import imresize  # noqa: E402
from restore.routing.scores import edge_score, to_uint8  # noqa: E402

SHARES = (0.2, 0.3, 0.4, 0.5, 0.6)


def cell_errors(hr8: np.ndarray, outputs: list[np.ndarray], lr8: np.ndarray, scale: int, cell: int) -> np.ndarray:
    """One row per LR cell: edge score, then the Y squared-error sum of each output over the
    cell's HR pixels (the eval border excluded)."""
    ref = rgb_to_y(hr8)
    ys = [rgb_to_y(o) for o in outputs]
    inside = np.zeros(ref.shape, bool)
    inside[scale:-scale, scale:-scale] = True
    rows = []
    for y in range(0, lr8.shape[0], cell):
        for x in range(0, lr8.shape[1], cell):
            hr_box = (slice(y * scale, (y + cell) * scale), slice(x * scale, (x + cell) * scale))
            keep = inside[hr_box]
            rows.append([edge_score(lr8[y:y + cell, x:x + cell])]
                        + [float(((out[hr_box] - ref[hr_box]) ** 2)[keep].sum()) for out in ys])
    return np.array(rows)


def psnr_of(sse: float, n: int) -> float:
    return 10 * np.log10(255.0 ** 2 * n / sse)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path, help="folders of HR images (e.g. Set14 CBSD68)")
    p.add_argument("--large", default="lipt")
    p.add_argument("--small", default="rtsr")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--cell", type=int, default=48, help="cell size in LR pixels (default: 48)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    s = args.scale
    large = load_restorer(args.large, scale=s, threads=args.threads)
    small = load_restorer(args.small, scale=s, threads=args.threads)
    per_set: dict[str, list[tuple[np.ndarray, int]]] = {}
    for folder in args.folders:
        for path in sorted(q for q in folder.iterdir() if q.suffix.lower() in (".png", ".jpg", ".bmp", ".tif")):
            hr8 = crop_to_multiple(to_uint8(read_image(path).rgb), s)
            lr8 = imresize(hr8, 1.0 / s)
            lr = lr8.astype(np.float32) / 255
            outputs = [imresize(lr8, float(s)), to_uint8(small.restore_rgb(lr)), to_uint8(large.restore_rgb(lr))]
            n = (hr8.shape[0] - 2 * s) * (hr8.shape[1] - 2 * s)
            per_set.setdefault(folder.name, []).append((cell_errors(hr8, outputs, lr8, s, args.cell), n))

    def mean_drop(pick) -> float:
        """Mean over sets of the mean per-image PSNR change when `pick(cells)` chooses the output
        column of each cell (1 bicubic, 2 small, 3 large)."""
        drops = []
        for images in per_set.values():
            drops.append(np.mean([psnr_of(c[np.arange(len(c)), pick(c)].sum(), n) - psnr_of(c[:, 3].sum(), n)
                                  for c, n in images]))
        return float(np.mean(drops))

    scores = np.concatenate([c[:, 0] for images in per_set.values() for c, _ in images])
    print(f"{args.large} x{s} alone: " + ", ".join(
        f"{name} {np.mean([psnr_of(c[:, 3].sum(), n) for c, n in images]):.2f} dB" for name, images in per_set.items()))
    print(f"cells of {args.cell} LR px; drop = mean per-image PSNR change vs {args.large} alone")
    print(f"{'cheap share':>11} | {'bicubic by score':>16} | {args.small + ' by score':>16} | {args.small + ' oracle':>16}")
    for share in SHARES:
        threshold = np.quantile(scores, share)

        def by_score(column):
            return lambda c: np.where(c[:, 0] <= threshold, column, 3)

        def oracle(c):
            gain = c[:, 2] - c[:, 3]  # what the large network saves over the small one, per cell
            chosen = np.full(len(c), 3)
            chosen[np.argsort(gain)[:int(share * len(c))]] = 2
            return chosen

        print(f"{share:>11.0%} | {mean_drop(by_score(1)):>+13.3f} dB | {mean_drop(by_score(2)):>+13.3f} dB | "
              f"{mean_drop(oracle):>+13.3f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
