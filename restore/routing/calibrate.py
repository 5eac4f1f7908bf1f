"""`restore calibrate`: measure what each subnet delivers per score bin, and what it costs.

For every photo: HR → MATLAB-bicubic LR (the eval protocol), cut the LR into non-overlapping
routed-size patches, score each, and restore each with every subnet (bicubic = the whole-image
bicubic upscale cropped, as the router does). Per patch: Y-PSNR and Y-MSE against the HR patch
(border = scale, uint8 output). Scores are split into `bins` equal bins (ARM: 30) and each
subnet's mean PSNR and MSE per bin make the table. Costs are measured on the engine that will
run them: median wall time of a batch of patches, per patch.

Calibrate on photos that are neither training nor evaluation images when you can; the table
only has to rank subnets per score bin, so a few hundred patches per bin are plenty.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from restore.resize import imresize

from . import Router, subnet_width
from .router import bicubic_upscale
from .scores import score_patches
from .table import RouteTable, mse_to_psnr


def _y_mse(out: np.ndarray, ref: np.ndarray, border: int) -> np.ndarray:
    """Per-patch MSE on Y ([0,1] scale), (N,H,W,3) float arrays in [0,1], border cropped."""
    coeffs = np.array([65.481, 128.553, 24.966]) / 255.0  # BT.601 luma, as restore.metrics.rgb_to_y
    y_out = (np.round(np.clip(out, 0, 1) * 255) / 255) @ coeffs
    y_ref = ref.astype(np.float64) @ coeffs
    if border:
        y_out, y_ref = y_out[:, border:-border, border:-border], y_ref[:, border:-border, border:-border]
    return np.maximum(((y_out - y_ref) ** 2).mean(axis=(1, 2)), 1e-10)


def _time_engine(engine, patches: np.ndarray, repeats: int = 5) -> float:
    """Median ms per patch of running `patches` (N,3,h,w) as one batch."""
    engine(patches)  # warm-up (first-call allocations, ORT arena)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        engine(patches)
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times)) / len(patches)


def _time_bicubic(lr: np.ndarray, scale: int, n_patches: int, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        bicubic_upscale(lr, scale)
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times)) / max(1, n_patches)


def calibrate(restorer, photos: list[Path], *, bins: int = 30, max_patches_per_image: int = 64,
              max_side: int = 2048, seed: int = 0, log=lambda msg: None) -> RouteTable:
    from restore.train.data import load_rgb8

    spec, s = restorer.spec, restorer.scale
    patch = spec.route.patch
    router = Router(restorer, RouteTable(subnets=list(spec.subnets), bin_centres=[0.0],
                                         psnr=[[0.0]] * len(spec.subnets), mse=[[0.0]] * len(spec.subnets),
                                         cost_ms=[0.0] * len(spec.subnets), macs=[0.0] * len(spec.subnets)))
    engines = router.engines()
    rng = np.random.default_rng(seed)
    scores, mses = [], [[] for _ in spec.subnets]
    used = 0
    for path in photos:
        img = load_rgb8(path, max_side)
        if img is None or min(img.shape[:2]) < patch * s:
            continue
        img = img[: img.shape[0] // s * s, : img.shape[1] // s * s]
        lr8 = imresize(img, 1.0 / s)
        lr = lr8.astype(np.float32) / 255
        hr = img.astype(np.float32) / 255
        boxes = [(y, x, patch, patch) for y in range(0, lr.shape[0] - patch + 1, patch)
                 for x in range(0, lr.shape[1] - patch + 1, patch)]
        if len(boxes) > max_patches_per_image:
            boxes = [boxes[i] for i in sorted(rng.choice(len(boxes), max_patches_per_image, replace=False))]
        scores.append(score_patches(lr8, boxes, spec.route.score))
        ref = np.stack([hr[y * s:(y + patch) * s, x * s:(x + patch) * s] for y, x, _, _ in boxes])
        crops = np.stack([lr[y:y + patch, x:x + patch].transpose(2, 0, 1) for y, x, _, _ in boxes])
        bic = bicubic_upscale(lr, s)
        for k, engine in enumerate(engines):
            if engine is None:
                out = np.stack([bic[y * s:(y + patch) * s, x * s:(x + patch) * s] for y, x, _, _ in boxes])
            else:
                out = np.concatenate([engine(crops[i:i + 64]) for i in range(0, len(crops), 64)]).transpose(0, 2, 3, 1)
            mses[k].append(_y_mse(out, ref, s))
        used += 1
        log(f"{path.name}: {len(boxes)} patches")
    if not scores:
        raise ValueError(f"no usable photos (need images at least {patch * s}px on the short side)")
    score = np.concatenate(scores)
    mse = np.stack([np.concatenate(m) for m in mses])  # (subnets, patches)
    # ~20 patches per bin at least, or a bin's mean is noise (ARM's 30 bins assume thousands).
    bins = int(min(bins, max(4, len(score) // 20)))
    edges = np.linspace(score.min(), score.max() + 1e-9, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    which = np.clip(np.digitize(score, edges) - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    psnr_tab = np.full((len(engines), bins), np.nan)
    mse_tab = np.full((len(engines), bins), np.nan)
    for b in range(bins):
        sel = which == b
        if sel.any():
            mse_tab[:, b] = mse[:, sel].mean(axis=1)
            psnr_tab[:, b] = mse_to_psnr(mse[:, sel]).mean(axis=1)
    filled = counts > 0
    for tab in (psnr_tab, mse_tab):  # empty bins: interpolate between their filled neighbours
        for row in tab:
            row[~filled] = np.interp(centres[~filled], centres[filled], row[filled])

    # Costs on this machine and engine: a batch of real patches per subnet.
    sample = crops[: min(64, len(crops))].astype(np.float32)
    cost_ms = [(_time_bicubic(lr, s, len(boxes)) if e is None else _time_engine(e, sample)) for e in engines]
    from restore.models.blocks.slimmable import count_macs

    macs = [0.0 if n == "bicubic" else float(count_macs(restorer.model, subnet_width(n), (patch, patch)))
            for n in spec.subnets]  # convolutions only (attention matmuls are not counted)
    # Per-patch overhead of routing itself (score, crop, blend): an all-bicubic routed run.
    from restore.pipeline.tiling import plan_tiles

    from .router import run_routed

    frame = lr[: 8 * patch, : 8 * patch]
    n_boxes = len(plan_tiles(frame.shape[0], frame.shape[1], patch, spec.route.overlap))
    zero = np.zeros(n_boxes, np.int64)
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        run_routed(frame, engines=[None] * len(engines), table=router.table, scale=s, patch=patch,
                   overlap=spec.route.overlap, choice=zero)
        runs.append(time.perf_counter() - t0)
    overhead_ms = 1000.0 * float(np.median(runs)) / n_boxes
    log("cost per patch: " + ", ".join(f"{n} {c:.3f} ms" for n, c in zip(spec.subnets, cost_ms))
        + f"; routing overhead {overhead_ms:.3f} ms")
    return RouteTable(
        subnets=list(spec.subnets), bin_centres=centres.tolist(), psnr=psnr_tab.round(4).tolist(),
        mse=mse_tab.tolist(), cost_ms=[round(c, 5) for c in cost_ms], macs=macs, counts=counts.tolist(),
        overhead_ms=round(overhead_ms, 5),
        score=spec.route.score, patch=patch, scale=s,
        info={"images": used, "patches": int(len(score)), "photos": sorted({str(p.parent) for p in photos}),
              "backend": restorer.backend, "threads": restorer.threads,
              "weights_sha256": restorer.manifest.get("sha256"), "made": time.strftime("%Y-%m-%d %H:%M"),
              "protocol": f"Y (BT.601) PSNR/MSE per {patch}px LR patch, border {s}, MATLAB bicubic LR"})
