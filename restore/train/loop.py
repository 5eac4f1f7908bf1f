"""Train any registered restorer from folders of photos, with checkpoints and resume.

    python -m restore.train --model lipt --variant tiny --scale 2 --data ../shared/data/train/photos

Checkpoints (`<run>/last.pt`) hold the model, optimiser, step and RNG state and are written
atomically every --ckpt-every steps and on Ctrl-C/SIGTERM, so `--resume` continues where a run
stopped. At the end the reparameterised model is written to weights/ with its manifest.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from restore import registry
from restore.metrics import psnr
from restore.models.blocks.slimmable import count_macs, set_width
from restore.weights import save_weights, weights_stem, load_state

from .data import SameSizePairs, SRPairs, check_photo_scales, find_photos, load_photos, photo_pyramid
from .losses import LOSSES, get_loss


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="restore train",
        description="Train a restorer on a folder of photos (degradations are made on the fly).",
        epilog="Example: restore train --model lipt --variant tiny --scale 2 --data ~/DIV2K/train --steps 20000",
    )
    p.add_argument("--model", help="restorer name (default: lipt, or the resumed run's)")
    p.add_argument("--variant", help="model variant (default: the restorer's default)")
    p.add_argument("--scale", type=int, default=None, help="SR scale (default: the restorer's)")
    p.add_argument("--task", help="what to train for, for restorers with several tasks: denoise, deblur, sr "
                                  "(default: the restorer's; sr when --scale > 1)")
    p.add_argument("--data", nargs="+", help="folders (searched recursively) or files of HR photos "
                                              "(a resumed run reuses its own)")
    p.add_argument("--steps", type=int, help="total optimiser steps")
    p.add_argument("--minutes", type=float, default=None,
                   help="train for this many minutes of wall time instead of a step count: the cosine "
                        "schedule runs over the time (for a GPU lent for a fixed time; --steps is ignored)")
    p.add_argument("--batch", type=int, help="patches per step")
    p.add_argument("--patch", type=int, help="LR patch size in pixels (multiple of the model's size multiple)")
    p.add_argument("--lr", type=float, help="peak learning rate (Adam; cosine decay to 1%%)")
    p.add_argument("--loss", choices=sorted(LOSSES), help="training loss: l1 (default); l2 (MSE, meant for a short "
                                                      "last phase: PSNR follows the MSE); or l1+fft, which adds an L1 term on "
                                                      "the image spectra (helps deblurring)")
    p.add_argument("--warmup", type=int, default=None, help="linear warm-up steps (default: 200)")
    p.add_argument("--ema", type=float, default=None,
                   help="keep an exponential moving average of the weights with this decay (e.g. 0.999) "
                        "and validate and export it (default: off)")
    p.add_argument("--run", default=None, help="run folder for checkpoints and logs (default: runs/<stem>)")
    p.add_argument("--resume", action="store_true", help="continue from <run>/last.pt")
    p.add_argument("--init", help="initialise from a checkpoint or .safetensors (tensors of matching shape only, "
                                  "e.g. start x4 from x2)")
    p.add_argument("--plain", action="store_true", default=None,
                   help="train the folded (inference) graph directly instead of the multi-branch training "
                        "graph: ~4x faster per step on CPU, at some cost in final quality")
    p.add_argument("--max-side", type=int, default=2048, help="shrink photos whose long side exceeds this")
    p.add_argument("--photo-scales", type=float, nargs="+", default=None, metavar="S",
                   help="also train on every photo shrunk by these factors, each scale drawn as often as "
                        "the full-size photos, e.g. 1 0.5 (default: 1). Shrunk photos are denser in "
                        "detail and cleaner, like the small benchmark images")
    p.add_argument("--val-count", type=int, default=2, help="photos held out for validation (default: 2)")
    p.add_argument("--ckpt-every", type=int, default=250, help="steps between checkpoints (default: 250)")
    p.add_argument("--log-every", type=int, default=50, help="steps between progress lines (default: 50)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights-dir", default=None, help="where to write the final weights (default: weights/)")
    p.add_argument("--no-export", action="store_true", help="do not write weights at the end")
    p.add_argument("--dry-run", action="store_true",
                   help="load the photos, build and initialise the model, run two patches forward and "
                        "backward on the device and print the plan; train and write nothing")
    p.add_argument("--export-only", action="store_true",
                   help="with --resume: write weights from the checkpoint without training further "
                        "(no photos are loaded when the checkpoint records the data's summary)")
    return p


def lr_at(step: int, total: int, peak: float, warmup: int, progress: float | None = None) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 1 % of `peak` at `total` steps, or,
    when `progress` (0..1, e.g. the share of a time budget used) is given, at progress 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup) if progress is None else progress
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


class WeightAverage:
    """Exponential moving average of a model's parameters (buffers are copied as they are).

    The decay ramps up as (1 + n) / (10 + n) so the first steps do not drag in the
    initialisation; the averaged copy is what validation and export see."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for mine, theirs in zip(self.model.parameters(), model.parameters()):
            mine.lerp_(theirs.detach(), 1.0 - d)
        for mine, theirs in zip(self.model.buffers(), model.buffers()):
            mine.copy_(theirs)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.model.load_state_dict(state["model"])


class Prefetcher:
    """Draws training batches in a background thread, so that cropping and degrading (deblur:
    a blur per patch) overlap with the optimiser step instead of stalling it. Batches come
    out in the same order as a serial loop drawing from `rng` would make them."""

    def __init__(self, sample, rng: np.random.Generator, batch: int, patch: int, depth: int = 3,
                 pin: bool = False):
        import queue
        import threading

        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()

        def work():
            failed = False
            while not failed and not self._stop.is_set():
                try:
                    item = sample(rng, batch, patch)
                    if pin:
                        item = tuple(t.pin_memory() for t in item)
                except BaseException as e:  # noqa: BLE001 - handed to next(), which raises it
                    item, failed = e, True
                while not self._stop.is_set():  # close() ends the wait for a free slot
                    try:
                        self._queue.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue

        self._thread = threading.Thread(target=work, daemon=True, name="batches")
        self._thread.start()

    def next(self):
        """The next batch; an error raised while drawing it is raised here, in the training loop."""
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_slim_checkpoint(src: Path, dst: Path) -> Path:
    """A copy of a run's checkpoint without the optimiser state (a third of the size), small enough
    to commit; `--resume` from it continues the schedule with a fresh optimiser.

    A run with a weight average keeps only the average, as its model: that is what the run
    exported and what `--init` would take, and it halves the file again. A resumed run with
    `--ema` starts a new average from it."""
    state = torch.load(src, map_location="cpu", weights_only=False)
    state["model"], state["ema"], state["optimizer"] = exported_weights(state), None, None
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(state, Path(dst))
    return Path(dst)


def split_photos(folders, val_count: int) -> tuple[list[Path], list[Path]]:
    """The training photos and the held-out validation photos (spread evenly over the sorted list)."""
    photos = find_photos(folders)
    held_out = photos[:: max(1, len(photos) // max(1, val_count))][:val_count] if val_count else []
    return [p for p in photos if p not in held_out], held_out


def data_summary_of(pool: list[np.ndarray], n_photos: int) -> dict:
    """The manifest's account of the training data: distinct photos, and megapixels of every photo
    at every scale (the pool the patches were cut from)."""
    return {"images": n_photos, "megapixels": round(sum(x.shape[0] * x.shape[1] for x in pool) / 1e6, 1)}


def exported_weights(state: dict) -> dict:
    """The weights a run's checkpoint stands for: its weight average when it has one (what the run
    exported), else its model."""
    return state["ema"]["model"] if state.get("ema") else state["model"]


def load_matching(model: torch.nn.Module, source: str) -> int:
    """Copy tensors whose name and shape match (from a checkpoint's weight average when it has
    one); returns how many were copied."""
    if source.endswith(".safetensors"):
        state = load_state(Path(source), verify=False)
    else:
        state = torch.load(source, map_location="cpu", weights_only=False)
        # A run with a weight average starts others from the average: that is what it exported.
        state = exported_weights(state) if "model" in state else state
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matched, strict=False)
    return len(matched)


def subnet_sampler(model, log):
    """For a width-sliced supernet: a function drawing the width of the next step, each width with
    probability proportional to its cost squared (ARM), so the full network gets most steps and
    the narrow ones still learn to stand on their own. None for an ordinary network."""
    widths = getattr(model, "subnet_widths", None)
    if not widths:
        return None
    macs = np.array([count_macs(model, w) for w in widths], dtype=np.float64)
    p = macs ** 2 / (macs ** 2).sum()
    log("supernet widths " + ", ".join(f"{w} ({m / 1e6:.0f} M MACs/32x32, p={q:.2f})"
                                       for w, m, q in zip(widths, macs, p)))
    return lambda rng: int(rng.choice(widths, p=p))


def packed_sources(folders) -> list[str] | None:
    """Where packed copies came from: the lines of a SOURCES.txt in a data folder (written by
    tools/device/pack.py), so weights trained on a copy still name the original photos."""
    lines: list[str] = []
    for folder in folders:
        listing = Path(folder) / "SOURCES.txt"
        if listing.is_file():
            lines += [ln.split("\t")[-1] for ln in listing.read_text().splitlines() if ln and not ln.startswith("#")]
    return lines or None


@torch.no_grad()
def validate_same_size(model, fixed: list, device) -> float:
    """Mean RGB PSNR of the fixed validation pairs (same-size tasks)."""
    was_training = model.training
    model.eval()
    scores = [psnr(np.round(model(inp.to(device)).clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy() * 255) / 255,
                   clean, border=0, y_channel=False) for inp, clean in fixed]
    model.train(was_training)
    return float(np.mean(scores))


DEGRADATIONS = {
    "sr": "MATLAB bicubic downscale with antialiasing",
    "denoise": "additive Gaussian noise, sigma uniform in [0, 55] (0-255 scale) per patch, unclipped; "
               "noise-level hint plane shown for 30% of patches, -1 (unknown) otherwise",
    "deblur": "motion blur from a bank of 1024 random shake trajectories (7-31 px, 8 orientations each), "
              "reflect borders, Gaussian noise sigma in [0, 3], 8-bit quantisation; hint plane as for denoise",
}


@torch.no_grad()
def validate(model, pairs: SRPairs, device) -> float:
    """Mean Y-PSNR (border = scale) over centre crops of the held-out photos (full width for a
    supernet)."""
    was_training = model.training
    model.eval()
    set_width(model, None)
    scores = []
    s = pairs.scale
    for lr_img, hr_img in zip(pairs.lr, pairs.hr):
        size = min(128, lr_img.shape[0], lr_img.shape[1])
        y, x = (lr_img.shape[0] - size) // 2, (lr_img.shape[1] - size) // 2
        lr = torch.from_numpy(lr_img[y:y + size, x:x + size].copy()).permute(2, 0, 1)[None].float() / 255
        hr = hr_img[y * s:(y + size) * s, x * s:(x + size) * s].astype(np.float32) / 255
        out = model(lr.to(device)).clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy()
        out = np.round(out * 255) / 255
        scores.append(psnr(out, hr, border=s, y_channel=True))
    model.train(was_training)
    return float(np.mean(scores))


def adopt_run_identity(args) -> None:
    """`--resume --run DIR` needs no --model/--variant/--scale/--task/--plain: they come from the
    checkpoint. Given and different, they are an error (the weights would not fit)."""
    if not (args.resume and args.run and (Path(args.run) / "last.pt").exists()):
        return
    state = torch.load(Path(args.run) / "last.pt", map_location="cpu", weights_only=False)
    saved = {"model": state.get("restorer"), "variant": state.get("variant"), "scale": state.get("scale"),
             "task": state.get("task"), "plain": state.get("plain")}
    for key, value in saved.items():
        given = getattr(args, key)
        if value is None:
            continue
        if given is None:
            setattr(args, key, value)
        elif given != value:
            flag = "--" + key
            raise ValueError(f"{args.run} is a run of {key} {value}, not {given}: drop {flag} or pick another --run")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        adopt_run_identity(args)
        args.model, args.plain = args.model or "lipt", bool(args.plain)
        spec = registry.get(args.model)
        variant = spec.check_variant(args.variant)
        scale = spec.check_scale(args.scale or spec.default_scale)
        task = spec.check_task(args.task, scale)
        return _train(args, spec, variant, scale, task)
    except (ValueError, registry.UnknownRestorer, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _train(args, spec, variant: str, scale: int, task: str) -> int:
    d = spec.train_defaults
    stem = weights_stem(spec.name, variant, scale, task)
    saved = Path(args.run or f"runs/{stem}") / "last.pt"
    if args.resume and not saved.exists():  # said before minutes of photo loading, not after
        print(f"error: --resume given but {saved} does not exist", file=sys.stderr)
        return 2
    resumed = torch.load(saved, map_location="cpu", weights_only=False) if args.resume else None
    if resumed is not None:
        # A resumed run keeps its hyper-parameters unless they are given again explicitly, and its
        # --init for the manifest's record (the weights come from the checkpoint, not from --init).
        before = resumed["args"]
        # The length of a run is its --steps or its --minutes: giving either replaces both.
        length = () if args.steps is not None or args.minutes is not None else ("steps", "minutes")
        for key in (*length, "batch", "patch", "lr", "data", "loss", "init", "ema", "warmup", "photo_scales"):
            if getattr(args, key) is None:
                setattr(args, key, before.get(key))
    steps = args.steps or d.get("steps", 20000)
    batch = args.batch or d.get("batch", 8)
    patch = args.patch or d.get("patch", 64)
    peak_lr = args.lr or d.get("lr", 2e-4)
    if args.warmup is None:
        args.warmup = 200
    loss_fn, loss_label = get_loss(args.loss or d.get("loss", "l1"))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("error: --device cuda, but torch sees no CUDA GPU", file=sys.stderr)
            return 2
        # TF32 matmuls/convs: several times faster on recent GPUs, far below L1-loss noise.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if not args.data:
        print("error: --data is required (folders of training photos)", file=sys.stderr)
        return 2
    if args.minutes is not None and args.minutes <= 0:
        print("error: --minutes must be positive", file=sys.stderr)
        return 2
    run = Path(args.run or f"runs/{stem}")
    log_file = None
    if not args.dry_run:
        run.mkdir(parents=True, exist_ok=True)
        log_file = open(run / "train.log", "a")

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        if log_file is not None:
            log_file.write(line + "\n")
            log_file.flush()

    ema = None  # the weight average, when --ema (made once the model is on its device)

    def evaluated() -> torch.nn.Module:
        """What validation and export see: the weight average when there is one."""
        return ema.model if ema is not None else model

    val_key = "val_psnr_y" if task == "sr" else "val_psnr_rgb"
    photo_scales = check_photo_scales(args.photo_scales or (1.0,))  # before minutes of photo loading
    model = spec.build(variant, scale)
    # What the manifest says of the training data. An export from a checkpoint that recorded it
    # needs no photos: loading and degrading them all takes minutes.
    data_summary = (resumed.get("data_summary") if args.export_only and not args.dry_run and resumed is not None
                    else None)
    if data_summary is not None:
        train = check = None
        log("export only: the training data's summary comes from the checkpoint, no photos loaded")
    elif task == "sr":
        train_files, held_out = split_photos(args.data, args.val_count)
        train = SRPairs.from_folders(train_files, scale, patch, args.max_side, log=log, photo_scales=photo_scales)
        val = SRPairs.from_folders(held_out, scale, 16, args.max_side, log=lambda m: None) if held_out else None
        check = (lambda: validate(evaluated(), val, device)) if val is not None else None
        data_summary = data_summary_of(train.hr, train.photos)
    else:
        # A network with a noise-level plane (in_channels 4) encodes σ with its own hint_value.
        hint = model.hint_value if getattr(model, "in_channels", 3) == 4 else None
        train_files, held_out = split_photos(args.data, args.val_count)
        photo_list = load_photos(train_files, patch + 2 * 16, args.max_side, log=log)
        pool, weights = photo_pyramid(photo_list, photo_scales, patch + 2 * 16, log=log)
        train = SameSizePairs(pool, task, hint, seed=args.seed, weights=weights)
        fixed = (SameSizePairs(load_photos(held_out, 64, args.max_side, log=lambda m: None), task, hint)
                 .fixed_set() if held_out else [])
        check = (lambda: validate_same_size(evaluated(), fixed, device)) if fixed else None
        data_summary = data_summary_of(train.images, len(photo_list))
    if args.plain:
        # A model may keep what its optimisation needs (LIPT: the BatchNorm after project_inp).
        getattr(model, "plain_training_graph", model.reparameterize)()
        if hasattr(model, "init_plain"):
            model.init_plain()
    model.train().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=peak_lr, betas=(0.9, 0.99))
    step, elapsed, history, timed_s = 0, 0.0, [], 0.0
    ema = WeightAverage(model, args.ema) if args.ema else None
    ckpt = run / "last.pt"
    if args.resume:
        state = resumed
        if state["plain"] != args.plain:
            log("error: --plain must match the run being resumed")
            return 2
        adopt = getattr(model, "adopt_folded_projections", None) if args.plain else None
        # (An export-only run without photos has only checkpoints written since the conversion.)
        converted = adopt(state["model"], train.sample(np.random.default_rng(args.seed), batch, patch)[0].to(device)) \
            if adopt is not None and train is not None else None
        if converted is not None:
            log("converted a plain run without project_inp BatchNorm to the current graph "
                "(queries renormalised; the optimiser starts afresh)")
            state["model"], state["optimizer"] = converted, None
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise ValueError(f"{ckpt} does not fit {stem} ({str(e).splitlines()[1].strip()[:160]})") from None
        if state.get("optimizer") is not None:
            opt.load_state_dict(state["optimizer"])
        step, elapsed, history = state["step"], state["elapsed"], state["history"]
        timed_s = state.get("timed_s", 0.0)  # of a --minutes run: the part of its budget already used
        if ema is not None:
            if state.get("ema") is not None:
                ema.load_state_dict(state["ema"])
            else:  # a run without an average so far starts one from its current weights
                ema = WeightAverage(model, args.ema)
        log(f"resumed {ckpt} at step {step}" + ("" if state.get("optimizer") is not None else
                                                " (slim checkpoint: the optimiser starts afresh)"))
    elif args.init:
        log(f"initialised {load_matching(model, args.init)} tensors from {args.init}")
        if ema is not None:
            ema = WeightAverage(model, args.ema)
    if args.export_only:
        if not args.resume:
            log("error: --export-only needs --resume")
            return 2
        steps = step
    rng = np.random.default_rng(args.seed + step)  # a resumed run draws fresh patches
    width_rng = np.random.default_rng(args.seed + step + 1)
    torch.manual_seed(args.seed + step)
    width_draw = subnet_sampler(model, log)

    def save_checkpoint() -> None:
        atomic_torch_save({
            "model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "elapsed": elapsed,
            "ema": ema.state_dict() if ema is not None else None,
            "timed_s": timed_s + (time.time() - t_start if budget_s is not None else 0.0),
            "history": history, "plain": args.plain, "restorer": spec.name, "variant": variant, "scale": scale,
            "task": task, "data_summary": data_summary,
            "args": vars(args)}, ckpt)

    stop = {"now": False}

    def request_stop(signum, frame):
        stop["now"] = True

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    budget_s = 60.0 * args.minutes if args.minutes and not args.export_only else None
    if budget_s is not None:
        steps = 10 ** 12  # the clock ends the run; the manifest records the steps actually made
    goal = f"{args.minutes:g} minutes" if budget_s is not None else f"{steps} steps"
    log(f"training {stem} ({'plain' if args.plain else 'multi-branch'} graph) for {goal}, "
        f"batch {batch} x {patch}px LR, lr {peak_lr:g}, loss {loss_label}"
        + (f", weight average {args.ema:g}" if ema is not None else "")
        + f", {torch.get_num_threads()} threads on {device}, run {run}")
    if args.dry_run:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        lr_batch, hr_batch = train.sample(rng, batch, patch)
        out = model(lr_batch[:2].to(device))  # forward and backward on two patches: no optimiser step
        if out.shape[1:] != hr_batch.shape[1:]:
            log(f"error: the model makes {tuple(out.shape[1:])} from a patch, the target is {tuple(hr_batch.shape[1:])}")
            return 1
        loss_fn(out, hr_batch[:2].to(device)).backward()
        log(f"dry run: batches of {tuple(lr_batch.shape)} -> {tuple(hr_batch.shape)} fit, the loss backpropagates; "
            "nothing trained or written")
        return 0
    batches = Prefetcher(train.sample, rng, batch, patch, pin=device.type == "cuda") if step < steps else None
    t_start = t_mark = time.time()
    loss_acc, n_acc, first = 0.0, 0, step
    while step < steps and not stop["now"]:
        used = (timed_s + time.time() - t_start) / budget_s if budget_s is not None else None
        if used is not None and used >= 1.0:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, peak_lr, args.warmup, used)
        lr_batch, hr_batch = batches.next()
        if width_draw is not None:  # supernet: one subnet width for the whole batch
            set_width(model, width_draw(width_rng))
        out = model(lr_batch.to(device, non_blocking=True))
        loss = loss_fn(out, hr_batch.to(device, non_blocking=True))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update(model)
        step += 1
        loss_acc, n_acc = loss_acc + loss.item(), n_acc + 1
        if step % args.log_every == 0 or step == steps:
            now = time.time()
            elapsed += now - t_mark
            t_mark = now
            rate = (step - first) / max(now - t_start, 1e-9)
            if budget_s is not None:
                left = max(0.0, budget_s - timed_s - (now - t_start)) / 60
                msg = f"step {step} loss {loss_acc / n_acc:.4f} {rate:.2f} step/s {left:.0f} min left"
            else:
                msg = f"step {step}/{steps} loss {loss_acc / n_acc:.4f} {rate:.2f} step/s ETA {(steps - step) / max(rate, 1e-9) / 60:.0f} min"
            if check is not None and (step % (args.log_every * 10) == 0 or step == steps):
                score = check()
                history.append({"step": step, val_key: round(score, 3), "elapsed_s": round(elapsed)})
                msg += f" val {score:.2f} dB"
            log(msg)
            loss_acc, n_acc = 0.0, 0
        if step % args.ckpt_every == 0:
            save_checkpoint()
    if batches is not None:
        batches.close()
    if budget_s is not None and not stop["now"] and check is not None:
        score = check()  # the end of a timed run falls between validation steps
        history.append({"step": step, val_key: round(score, 3),
                        "elapsed_s": round(elapsed + time.time() - t_mark)})
        log(f"time is up at step {step}: val {score:.2f} dB")
    elapsed += time.time() - t_mark
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    if not args.export_only:
        save_checkpoint()
    if stop["now"]:
        log(f"stopped at step {step}; continue with --resume")
        return 130
    if not args.no_export:
        set_width(evaluated(), None)
        deploy = copy.deepcopy(evaluated()).cpu().eval()
        deploy.reparameterize()
        manifest = {
            "restorer": spec.name, "variant": variant, "scale": scale, "task": task,
            "config": getattr(getattr(deploy, "config", None), "to_dict", dict)(),
            "training": {
                "data": [str(x) for x in args.data], "data_sources": packed_sources(args.data),
                "images": data_summary["images"], "photo_scales": list(photo_scales),
                "megapixels": data_summary["megapixels"],
                "degradation": DEGRADATIONS[task],
                "steps": step, "batch": batch, "lr_patch": patch, "loss": loss_label,
                "optimizer": f"Adam(betas=0.9,0.99) peak lr {peak_lr:g}, {args.warmup} warm-up steps, cosine to 1%"
                             + (f" over {args.minutes:g} minutes of wall time" if args.minutes else ""),
                "graph": getattr(model, "plain_graph_label", "plain (folded) convs") if args.plain else "multi-branch (reparameterised after training)",
                "init": args.init, "wall_time_min": round(elapsed / 60, 1),
                "weight_average": args.ema,
                "subnets": (f"width-sliced supernet, widths {list(deploy.subnet_widths)}, one width per step "
                            "drawn with probability proportional to its MACs squared (ARM)")
                           if getattr(deploy, "subnet_widths", None) else None,
                "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
                            + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""),
                "torch": torch.__version__, "history": history[-20:],
            },
            "scores": {},
        }
        path = save_weights(deploy, stem, manifest, args.weights_dir)
        log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
