"""`restore bench --route MODE`: wall time of routed restoring against the large subnet alone.

Routing only pays on real content (flat sky goes to bicubic, texture to the large subnet), so
the frame is a photo: `--image` (default: the bundled samples/rocket.jpg) resized to `--size`.
Every mode runs on that same frame, round-robin (a change in machine load hits all alike);
figures are medians, and speed-ups are ratios within this one run. "off" is the large subnet
alone through the ordinary tiled pipeline, i.e. what `--route off` does.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import cv2
import numpy as np

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "rocket.jpg"


def load_frame(image: str | Path | None, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 float32 [0,1]: the photo scaled (area / bicubic) and centre-cropped to fill `size`."""
    from restore.io.images import read_image

    path = Path(image) if image else SAMPLE
    rgb = read_image(path).rgb
    w, h = size
    f = max(w / rgb.shape[1], h / rgb.shape[0])
    nw, nh = max(w, round(rgb.shape[1] * f)), max(h, round(rgb.shape[0] * f))
    rgb = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC)
    y, x = (nh - h) // 2, (nw - w) // 2
    return np.ascontiguousarray(np.clip(rgb[y:y + h, x:x + w], 0, 1), dtype=np.float32)


def run_route_bench(model: str, variant: str | None, scale: int | None, size: tuple[int, int], *,
                    modes: list[str], budget_ms: float | None = None, image=None, backend: str = "auto",
                    runs: int = 5, warmup: int = 1, threads: int | None = None, engines_dir=None) -> dict:
    from restore.api import load_restorer
    from restore.bench import cpu_name, load_average
    from restore.routing.decide import MODES

    for m in modes:
        if m not in MODES:
            raise ValueError(f"--route {m!r}: choose from {', '.join(MODES)}")
    restorer = load_restorer(model, variant, scale, backend=backend, threads=threads, engines_dir=engines_dir)
    if not restorer.spec.subnets:
        raise ValueError(f"{restorer.spec.name} has no subnets to route between")
    frame = load_frame(image, size)
    runs_of = ["off"] + [m for m in modes if m != "off"] + (["budget"] if budget_ms is not None else [])

    def call(mode: str):
        if mode == "off":
            return restorer.restore_rgb(frame, routing="off")
        if mode == "budget":
            return restorer.restore_rgb(frame, budget_ms=budget_ms)
        return restorer.restore_rgb(frame, routing=mode)

    load_before = load_average()
    for _ in range(warmup):
        for m in runs_of:
            call(m)
    times: dict[str, list[float]] = {m: [] for m in runs_of}
    shares: dict[str, dict] = {}
    predicted: dict[str, float] = {}
    for _ in range(runs):
        for m in runs_of:
            t0 = time.perf_counter()
            call(m)
            times[m].append(time.perf_counter() - t0)
            if m != "off":
                shares[m] = restorer.last_route.shares()
                predicted[m] = restorer.last_route.predicted_ms
    base = statistics.median(times["off"])
    rows = []
    for m in runs_of:
        med = statistics.median(times[m])
        rows.append({"mode": m if m != "budget" else f"budget {budget_ms:g} ms", "median_ms": round(1000 * med, 2),
                     "min_ms": round(1000 * min(times[m]), 2), "max_ms": round(1000 * max(times[m]), 2),
                     "fps": round(1 / med, 2), "speedup_vs_off": round(base / med, 3),
                     "shares": {k: round(v, 3) for k, v in shares.get(m, {restorer.spec.subnets[-1]: 1.0}).items()},
                     "predicted_ms": round(predicted[m], 1) if m in predicted else None})
    return {"restorer": restorer.stem, "backend": restorer.backend, "size": f"{size[0]}x{size[1]}",
            "output_size": f"{size[0] * restorer.scale}x{size[1] * restorer.scale}",
            "image": str(image or SAMPLE.name), "runs": runs, "warmup": warmup, "cpu": cpu_name(),
            "threads": restorer.threads, "load_before": load_before, "load_after": load_average(), "modes": rows}


def format_route_report(r: dict) -> str:
    lines = [f"{r['restorer']} on {r['backend']}: {r['size']} → {r['output_size']}, frame from {r['image']}, "
             f"median of {r['runs']} runs", f"cpu: {r['cpu']}  load {r['load_before']} → {r['load_after']}", "",
             f"{'mode':16s} {'median ms':>10s} {'fps':>7s} {'vs off':>7s}  patches per subnet"]
    for row in r["modes"]:
        share = ", ".join(f"{k} {100 * v:.0f}%" for k, v in row["shares"].items())
        lines.append(f"{row['mode']:16s} {row['median_ms']:10.1f} {row['fps']:7.2f} {row['speedup_vs_off']:6.2f}x  {share}")
    return "\n".join(lines)
