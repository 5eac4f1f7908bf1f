"""`restore`: restore photos and folders from the command line.

Quiet by default (a progress bar on a terminal, nothing else), `-v` for per-file lines,
`--json` for a machine-readable summary. Errors are one line each; a batch keeps going past
bad files and exits non-zero at the end if any file failed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2

RUN_EPILOG = """\
examples:
  restore run photo.jpg -o out/                 # LIPT-Tiny x2, writes out/photo.png
  restore run shots/ -o big/ --scale 4          # a whole folder (recursive), x4
  restore run shots/ -o big/ --skip-existing    # resume an interrupted batch
  restore run a.png --backend torch --tile 128 -v
  restore run clip.mp4 -o out/ --crf 20         # a video: out/clip.mp4, H.264, audio copied
  restore run clip.mp4 -o out/ --resume         # continue an interrupted video

Outputs are new files: PNG by default (16-bit sources stay 16-bit, alpha is kept and resized
on its own), written atomically; inputs are never modified and existing outputs are never
overwritten. Videos (.mp4 .mkv .mov .avi .webm .m4v) keep their container (.avi and .webm
become .mp4), timestamps, audio and subtitles; they are done in segments kept in a hidden
folder next to the output until the video is complete, so --resume loses nothing finished.
"""


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _add_model_args(p: argparse.ArgumentParser, scale_default: int | None = None) -> None:
    p.add_argument("--model", default="lipt", help="restorer (see `restore models`; default: lipt)")
    p.add_argument("--variant", help="model variant, e.g. tiny or small (default: the restorer's default)")
    p.add_argument("--scale", type=int, default=scale_default,
                   help="upscaling factor (default: the restorer's: 2 for SR restorers, 1 for iptv2)")
    p.add_argument("--task", choices=["denoise", "deblur", "sr"],
                   help="for restorers with several tasks (iptv2): denoise (default), deblur, or sr "
                        "(with --scale 2 or 4)")


def _add_ensemble_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ensemble", action="store_true",
                   help="self-ensemble: restore the 8 flips/rotations of each picture and average them; "
                        "8x slower, typically 0.1-0.2 dB better (not with --route)")


def _add_route_args(p: argparse.ArgumentParser, save_map: bool = False) -> None:
    p.add_argument("--route", default="off", choices=["off", "quality", "balanced", "fast"],
                   help="patch routing for restorers with subnets (the 'routing tiers' of `restore models`): each "
                        "patch goes to bicubic or a narrower subnet when that costs little quality. quality: "
                        "best predicted PSNR per patch; balanced: at most ~0.05 dB predicted loss, faster the "
                        "more flat areas a picture has; fast: real-time, about 0.6 dB predicted loss "
                        "(default: off = the full network everywhere)")
    p.add_argument("--route-budget", type=float, default=None, metavar="MS",
                   help="route to fit a time budget per image/frame in milliseconds (costs measured by "
                        "`restore calibrate`); overrides --route")
    if save_map:
        p.add_argument("--save-route-map", action="store_true",
                       help="also write NAME.route.png: the result tinted by the subnet each patch used "
                            "(green bicubic, yellow/orange/red wider subnets)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="restore",
        description="Real-time image restoration: super-resolution and more, on ONNX Runtime or PyTorch.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `restore COMMAND --help` for the options of each command.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="say more (repeat for tracebacks)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="restore image files and folders",
                       description="Restore images (files or folders, searched recursively) into a new folder.",
                       epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image or video files, or folders")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the results (created if missing)")
    _add_model_args(p)
    p.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "torch"],
                   help="inference engine (default: auto = ONNX Runtime on CPU)")
    p.add_argument("--tile", type=int, default=None,
                   help="tile size in input pixels for large images (default: the restorer's; 0 = no tiling)")
    p.add_argument("--overlap", type=int, default=None, help="tile overlap in input pixels (default: the restorer's)")
    p.add_argument("--format", default="png", choices=["png", "tif", "webp", "jpg", "same"],
                   help="output format (default: png; 'same' keeps the input's)")
    p.add_argument("--weights", help="a .safetensors file to use instead of the shipped weights")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--skip-existing", action="store_true", help="skip inputs whose output already exists")
    p.add_argument("--crf", type=int, default=18, help="video quality, lower is better (default: 18)")
    p.add_argument("--codec", default=None,
                   help="video encoder (default: libx264, else mpeg4; e.g. libx265, libvpx-vp9)")
    p.add_argument("--resume", action="store_true",
                   help="continue interrupted videos from their last finished segment")
    p.add_argument("--noise-level", type=float, default=None, metavar="SIGMA",
                   help="denoising: the noise level of the input as σ on the 0-255 scale, if you know it "
                        "(default: blind, the network judges it)")
    _add_ensemble_arg(p)
    _add_route_args(p, save_map=True)
    p.add_argument("--dry-run", action="store_true", help="list what would be written, do nothing")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("-v", "--verbose", action="count", default=0, help="print a line per file")

    p = sub.add_parser("eval", help="PSNR/SSIM of a restorer on folders of clean images (standard protocols)",
                       description="Evaluate with the standard protocols. SR: HR cropped to a multiple of the "
                                   "scale, LR by MATLAB bicubic (antialiased), PSNR/SSIM on Y (BT.601) with a "
                                   "border of `scale` pixels cropped; bicubic upscaling beside it. Denoise "
                                   "(--task denoise): clean + Gaussian noise of each --sigma (seeded, unclipped), "
                                   "RGB PSNR/SSIM of the 8-bit result; the noisy input beside it. Deblur "
                                   "(--task deblur): image i blurred with committed motion kernel i mod 8, "
                                   "σ=1 noise, 8-bit; RGB PSNR/SSIM; the blurred input and Richardson-Lucy "
                                   "with the true kernel beside it.",
                       epilog="examples:\n  restore eval ../shared/data/eval/Set5 --model lipt --scale 4\n"
                              "  restore eval CBSD68 --model iptv2 --task denoise --sigma 25 50\n"
                              "  restore eval Set14 CBSD68 --model iptv2 --task deblur",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", metavar="DIR", help="folders of HR images (e.g. Set5)")
    _add_model_args(p)
    p.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "torch"])
    p.add_argument("--weights", help="a .safetensors file to use instead of the shipped weights")
    p.add_argument("--tile", type=int, default=0, help="tile size (default: 0 = whole image)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--record", action="store_true", help="store the mean scores in the weights' manifest")
    p.add_argument("--sigma", type=float, nargs="+", default=[25.0, 50.0],
                   help="denoise: noise levels to test, σ on the 0-255 scale (default: 25 50)")
    p.add_argument("--known-sigma", action="store_true",
                   help="denoise: give the network the true σ as its noise-level hint (default: blind)")
    _add_ensemble_arg(p)
    _add_route_args(p)
    p.add_argument("--json", action="store_true", help="print per-image and mean scores as JSON")
    p.add_argument("-v", "--verbose", action="count", default=0, help="print a line per image")

    p = sub.add_parser("export", help="export a restorer to ONNX (dynamic H/W)",
                       description="Export the reparameterised network to ONNX with dynamic batch, height and "
                                   "width. Without -o the file goes to the engine cache (engines/).")
    _add_model_args(p)
    p.add_argument("-o", "--output", help="where to write the .onnx file (must not exist)")
    p.add_argument("--weights", help="a .safetensors file to use instead of the shipped weights")
    p.add_argument("--opset", type=int, default=18)

    p = sub.add_parser("models", help="list restorers, variants and the weights present",
                       description="List registered restorers, their variants and scales, and the shipped "
                                   "weights with their scores.")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("bench", help="time a restorer on each backend against the machine's conv ceiling",
                       description="Median/min/max ms per frame, frames/s, GFLOP per frame (counted from the "
                                   "ONNX graph), achieved GFLOP/s and its share of a 3x3-conv ceiling measured "
                                   "in the same run, with bicubic as the floor. Needs no trained weights "
                                   "(random weights are used, and said so, when none are shipped).")
    _add_model_args(p)
    p.add_argument("--size", default="640x360", help="input frame WIDTHxHEIGHT (default: 640x360)")
    p.add_argument("--backend", default="all", choices=["all", "onnxruntime", "torch", "torch-cuda", "tensorrt"],
                   help="backend(s) to time (default: all that can run here)")
    p.add_argument("--runs", type=int, default=10, help="timed runs per backend (default: 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up runs (default: 2)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all usable cores)")
    p.add_argument("--route", nargs="?", const="all", default=None, metavar="MODE",
                   help="time patch routing instead of backends: off, quality, balanced, fast or all "
                        "(default when given without a mode), on a photo frame; ratios are against the "
                        "large subnet alone (off) in the same run")
    p.add_argument("--route-budget", type=float, default=None, metavar="MS", help="with --route: also time "
                   "routing to this per-frame budget")
    p.add_argument("--image", help="with --route: the photo to time on (default: samples/rocket.jpg)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")

    p = sub.add_parser("ui", help="open the web UI (Gradio) in a browser",
                       description="Serve the Gradio web UI: image, video, webcam and compare tabs. "
                                   "It stays on this machine (no share links).")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; "
                                                       "0.0.0.0 for other machines on the network)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    p.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "torch"],
                   help="default inference engine in the UI (default: auto)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--allow-untrained", action="store_true",
                   help="let restorers without trained weights run with random weights (demos, tests)")

    p = sub.add_parser("live", help="restore a camera, stream or video file live",
                       description="Restore a live source at a target frame rate: frames are admitted at "
                                   "--fps at most, and when restoring is slower the work shrinks (a lower "
                                   "working resolution), then frames are skipped. Show it in a window "
                                   "and/or record it (constant --fps; the last frame repeats when no new "
                                   "one is ready). q, Esc or Ctrl-C stops.",
                       epilog="examples:\n  restore live --source 0 --show\n"
                              "  restore live --source rtsp://cam.local/stream -o cam.mp4 --fps 10\n"
                              "  restore live --source clip.mp4 -o live.mp4 --max-frames 100",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, help="camera index (0), stream URL (rtsp://...) or a video file")
    p.add_argument("--show", action="store_true", help="show the result in a window (needs a display and GUI OpenCV)")
    p.add_argument("-o", "--output", metavar="OUT.mp4", help="record the result to a new H.264 .mp4 file")
    p.add_argument("--fps", type=float, default=15.0, help="target frame rate (default: 15)")
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N output frames")
    _add_model_args(p)
    p.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "torch"],
                   help="inference engine (default: auto = ONNX Runtime on CPU)")
    p.add_argument("--weights", help="a .safetensors file to use instead of the shipped weights")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--noise-level", type=float, default=None, metavar="SIGMA",
                   help="denoising: the noise level of the input as σ on the 0-255 scale, if you know it "
                        "(default: blind, the network judges it)")
    _add_route_args(p)
    p.add_argument("--crf", type=int, default=20, help="recording quality, lower is better (default: 20)")
    p.add_argument("--codec", default=None, help="recording encoder (default: libx264, else mpeg4)")
    p.add_argument("--json", action="store_true", help="print the session's numbers as JSON")

    p = sub.add_parser("calibrate", help="measure each subnet's quality per patch score and its cost (routing)",
                       description="Build the routing table of a restorer with subnets: for patches of the "
                                   "photos in DIR (HR; LR made by MATLAB bicubic), the mean PSNR/MSE of every "
                                   "subnet per edge-score bin, and each subnet's measured time per patch on "
                                   "this machine. Written beside the weights as NAME.route.json, where "
                                   "`--route` finds it. Use photos that are not in your evaluation sets.",
                       epilog="example: restore calibrate --model carn --scale 4 ~/photos/holdout")
    p.add_argument("folders", nargs="+", metavar="DIR", help="folders (or files) of HR photos")
    _add_model_args(p)
    p.add_argument("--weights", help="a .safetensors file to use instead of the shipped weights")
    p.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "torch"],
                   help="engine to measure costs on (default: auto, as `restore run` would use)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--bins", type=int, default=30, help="score bins (default: 30, as ARM)")
    p.add_argument("--max-patches", type=int, default=64, help="patches per photo at most (default: 64)")
    p.add_argument("-o", "--output", help="where to write the table (default: beside the weights)")
    p.add_argument("--dry-run", action="store_true", help="say what would be measured and written, do nothing")
    p.add_argument("-v", "--verbose", action="count", default=0, help="print a line per photo")

    sub.add_parser("train", help="train a restorer on a folder of photos (see `restore train --help`)",
                   add_help=False)
    return parser


# ----------------------------------------------------------------------------------------- run

def _collect_inputs(inputs: list[str]) -> tuple[list[tuple[Path, Path]], list[tuple[str, str]]]:
    """(file, path relative to its root) pairs for every image or video, and (path, reason) for bad inputs."""
    from restore.io.images import is_image_path
    from restore.io.video import is_video_path

    found, bad = [], []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and (is_image_path(p) or is_video_path(p)))
            if not files:
                bad.append((raw, "no image or video files in this folder"))
            found += [(f, f.relative_to(path)) for f in files]
        elif path.exists():
            found.append((path, Path(path.name)))
        else:
            bad.append((raw, "no such file or folder"))
    return found, bad


def _output_path(outdir: Path, rel: Path, fmt: str) -> Path:
    from restore.io.video import is_video_path, video_output_name

    if is_video_path(rel):  # --format is for images; a video keeps its container
        return outdir / video_output_name(rel)
    suffix = rel.suffix.lower() if fmt == "same" else "." + fmt
    return outdir / rel.with_suffix(suffix)


def cmd_run(args) -> int:
    import numpy as np

    from restore.io.images import ImageError, Picture, read_image, write_image
    from restore.io.video import check_encoder, is_video_path, restore_video

    outdir = Path(args.output)
    if outdir.exists() and not outdir.is_dir():
        raise CliError(f"{outdir}: output exists and is not a folder")
    jobs, failures = _collect_inputs(args.inputs)
    for path, reason in failures:
        _err(f"{path}: {reason}")
    if not jobs and failures:
        return _finish_run(args, [], failures, 0, 0.0)
    plan = [(src, _output_path(outdir, rel, args.format)) for src, rel in jobs]
    seen: dict[Path, Path] = {}
    for src, dst in plan:  # two inputs mapping to one output would overwrite each other
        if dst in seen:
            raise CliError(f"{src} and {seen[dst]} would both be written to {dst}; restore them separately")
        seen[dst] = src
    if any(is_video_path(src) for src, _ in plan):
        check_encoder(args.codec, args.crf)  # a bad --codec/--crf is a usage error, found before any work
    if args.save_route_map and args.route == "off" and args.route_budget is None:
        raise CliError("--save-route-map needs --route quality|balanced|fast or --route-budget")
    if args.dry_run:
        for src, dst in plan:
            print(f"{src} -> {dst}" + (f" (+ {dst.stem}.route.png)" if args.save_route_map else ""))
        return EXIT_OK
    restorer = _load(args)  # before touching the disk: a bad --model/--scale leaves nothing behind
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(f"{outdir}: cannot create output folder ({e.strerror or e})") from None
    if not os.access(outdir, os.W_OK):
        raise CliError(f"{outdir}: output folder is not writable")

    done, skipped, results, start = 0, 0, [], time.time()
    bar = _progress(len(plan), args)
    for src, dst in plan:
        record = {"input": str(src), "output": str(dst)}
        try:
            if dst.exists():
                if args.skip_existing:
                    skipped += 1
                    record["status"] = "skipped"
                    results.append(record)
                    continue
                raise ImageError(dst, "exists; refusing to overwrite (use --skip-existing or another -o)")
            t0 = time.time()
            if is_video_path(src):
                video = restore_video(restorer, src, dst, crf=args.crf, codec=args.codec, resume=args.resume,
                                      tile=args.tile, overlap=args.overlap, progress=bar is not None,
                                      log=lambda message: _note(bar, message, error=True))
                record.update(status="ok", seconds=round(time.time() - t0, 3), size=video["size"],
                              frames=video["frames"], resumed_frames=video["resumed_frames"])
            else:
                picture = read_image(src)
                restored = restorer.restore_picture(picture, tile=args.tile, overlap=args.overlap)
                dst.parent.mkdir(parents=True, exist_ok=True)
                write_image(dst, restored)
                if args.save_route_map and restored.route is not None:
                    map_path = dst.with_name(dst.stem + ".route.png")
                    write_image(map_path, Picture(rgb=restored.route.render(restored.rgb).astype(np.float32) / 255))
                    record["route_map"] = str(map_path)
                if restored.route is not None:
                    record["route"] = {k: round(v, 3) for k, v in restored.route.shares().items()}
                record.update(status="ok", seconds=round(time.time() - t0, 3),
                              size=[restored.rgb.shape[1], restored.rgb.shape[0]])
            done += 1
            results.append(record)
            if args.verbose:
                _note(bar, f"{src} -> {dst} ({record['seconds']:.2f} s)")
        except (ImageError, OSError, ValueError) as e:
            reason = str(e) if isinstance(e, ImageError) else f"{src}: {e}"
            failures.append((str(src), reason.split(": ", 1)[-1] if reason.startswith(str(src)) else reason))
            record.update(status="failed", error=str(e))
            results.append(record)
            _note(bar, f"error: {reason}", error=True)
        finally:
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    args._restorer = restorer
    return _finish_run(args, results, failures, done, time.time() - start, skipped)


def _finish_run(args, results, failures, done, seconds, skipped=0) -> int:
    if args.json:
        restorer = getattr(args, "_restorer", None)
        print(json.dumps({
            "restorer": restorer.stem if restorer else None,
            "backend": restorer.backend if restorer else None,
            "written": done, "skipped": skipped, "failed": len(failures), "seconds": round(seconds, 3),
            "files": results,
            "errors": [{"input": p, "reason": r} for p, r in failures]}, indent=2))
    elif failures or args.verbose:
        summary = f"{done} written, {skipped} skipped, {len(failures)} failed in {seconds:.1f} s"
        print(summary, file=sys.stderr)
    return EXIT_SOME_FAILED if failures else EXIT_OK


def _progress(total: int, args):
    if args.json or not sys.stderr.isatty() or total < 1:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", dynamic_ncols=True, leave=False)


def _note(bar, message: str, error: bool = False) -> None:
    if bar is not None:
        bar.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr if error else sys.stdout)


def _err(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _load(args):
    from restore.api import load_restorer

    return load_restorer(args.model, args.variant, args.scale, backend=getattr(args, "backend", "auto"),
                         weights=args.weights, threads=getattr(args, "threads", None),
                         routing=getattr(args, "route", None) or "off",
                         route_budget_ms=getattr(args, "route_budget", None), task=args.task,
                         noise_level=getattr(args, "noise_level", None), ensemble=getattr(args, "ensemble", False))


# ----------------------------------------------------------------------------------------- eval

def cmd_eval(args) -> int:
    import numpy as np

    from restore.io.images import ImageError, read_image
    from restore.metrics import crop_to_multiple, psnr, ssim
    from restore.resize import imresize

    restorer = _load(args)
    routed = args.route != "off" or args.route_budget is not None
    if routed and args.record:
        raise CliError("--record stores the full network's scores; run it without --route")
    if args.ensemble and args.record:
        raise CliError("--record stores single-pass scores; run it without --ensemble")
    if restorer.task != "sr":
        if routed:
            raise CliError("--route applies to SR restorers with subnets")
        return _eval_same_size(args, restorer)
    s = restorer.scale
    to8 = _to8
    report = {}
    folders, status = _image_folders(args.folders)
    for root, paths in folders:
        rows = []
        for path in paths:
            try:
                pic = read_image(path)
            except ImageError as e:
                _err(str(e))
                status = EXIT_SOME_FAILED
                continue
            hr8 = crop_to_multiple(to8(pic.rgb), s)
            lr8 = imresize(hr8, 1.0 / s)
            sr8 = to8(restorer.restore_rgb(lr8.astype(np.float32) / 255, tile=args.tile))
            bic8 = imresize(lr8, float(s))
            hr, sr, bic = (x.astype(np.float64) / 255 for x in (hr8, sr8, bic8))
            row = {"image": path.name,
                   "psnr": round(psnr(sr, hr, border=s, y_channel=True), 4),
                   "ssim": round(ssim(sr, hr, border=s, y_channel=True), 5),
                   "bicubic_psnr": round(psnr(bic, hr, border=s, y_channel=True), 4),
                   "bicubic_ssim": round(ssim(bic, hr, border=s, y_channel=True), 5)}
            if routed:
                route = restorer.last_route
                row["patches"] = {n: int(np.sum(route.choice == k)) for k, n in enumerate(route.subnets)}
            rows.append(row)
            if args.verbose:
                print(f"  {path.name:24s} {row['psnr']:7.3f} dB  {row['ssim']:.4f}  (bicubic {row['bicubic_psnr']:.3f})")
        if not rows:
            continue
        mean = {k: round(float(np.mean([r[k] for r in rows])), 4 if "psnr" in k else 5)
                for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")}
        report[root.name] = {"images": len(rows), **mean, "per_image": rows}
        share_text = ""
        if routed:
            total = {n: sum(r["patches"][n] for r in rows) for n in restorer.spec.subnets}
            n_all = max(1, sum(total.values()))
            report[root.name]["patch_share"] = {n: round(v / n_all, 4) for n, v in total.items()}
            share_text = "   patches: " + ", ".join(f"{n} {100 * v / n_all:.0f}%" for n, v in total.items())
        if not args.json:
            print(f"{root.name:8s} {restorer.stem}{' +ensemble' if args.ensemble else ''} x{s}: PSNR {mean['psnr']:.2f} dB SSIM {mean['ssim']:.4f}   "
                  f"bicubic {mean['bicubic_psnr']:.2f} dB {mean['bicubic_ssim']:.4f}   ({len(rows)} images, Y, border {s})"
                  + share_text)
    if args.record and report:
        _record_scores(restorer, report, f"Y (BT.601), border {s}, MATLAB bicubic LR, uint8 I/O")
    if args.json:
        print(json.dumps({"restorer": restorer.stem, "backend": restorer.backend,
                          "route": (f"budget {args.route_budget:g} ms" if args.route_budget is not None else args.route),
                          "ensemble": args.ensemble, "sets": report}, indent=2))
    return status


def _record_scores(restorer, report: dict, protocol: str) -> None:
    """Store each set's mean scores (not the per-image rows) in the weights' manifest."""
    from restore.weights import read_manifest, write_manifest

    if restorer.weights_path is None:
        raise CliError("--record needs shipped weights or --weights")
    manifest = read_manifest(restorer.weights_path)
    scores = manifest.setdefault("scores", {})
    for name, r in report.items():
        scores[name] = {k: v for k, v in r.items() if k not in ("per_image", "patch_share")}
        scores[name]["protocol"] = protocol
    write_manifest(restorer.weights_path, manifest)


def _to8(x):
    import numpy as np

    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def _image_folders(folders: list[str]) -> tuple[list[tuple[Path, list[Path]]], int]:
    """Each DIR argument with its images (sorted); a non-folder is reported and makes the status 1."""
    from restore.io.images import is_image_path

    out, status = [], EXIT_OK
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            _err(f"{folder}: not a folder")
            status = EXIT_SOME_FAILED
            continue
        out.append((root, sorted(p for p in root.iterdir() if is_image_path(p))))
    return out, status


def _eval_same_size(args, restorer) -> int:
    """Denoising / deblurring protocols (see `restore eval --help`)."""
    import numpy as np

    from restore import degrade
    from restore.io.images import ImageError, read_image
    from restore.metrics import psnr, ssim

    task = restorer.task
    to8 = _to8
    f64 = lambda x8: x8.astype(np.float64) / 255
    if task == "denoise":
        if any(not 0 <= s <= 255 for s in args.sigma):
            raise CliError("--sigma values must be in [0, 255]")
        conditions = [(f"sigma{s:g}", s) for s in args.sigma]
        baseline = "noisy"
    else:
        kernels = degrade.eval_kernels()
        conditions = [("motion", None)]
        baseline = "blurred"
    report = {}
    folders, status = _image_folders(args.folders)
    for root, paths in folders:
        for label, sigma in conditions:
            rows = []
            for i, path in enumerate(paths):
                try:
                    clean8 = to8(read_image(path).rgb)
                except ImageError as e:
                    _err(str(e))
                    status = EXIT_SOME_FAILED
                    continue
                clean = clean8.astype(np.float32) / 255
                row = {"image": path.name}
                if task == "denoise":
                    degraded = degrade.noisy_image(clean, sigma, seed=i)
                    hint = sigma if args.known_sigma else None
                else:
                    k = kernels[i % len(kernels)]
                    degraded = degrade.blurred_image(clean, k, seed=i)
                    hint = degrade.DEBLUR_EVAL_NOISE if args.known_sigma else None
                    rl8 = to8(degrade.richardson_lucy(degraded, k))
                    row["rl_psnr"] = round(psnr(f64(rl8), f64(clean8), border=0, y_channel=False), 4)
                out8 = to8(restorer.restore_rgb(degraded, tile=args.tile, noise_level=hint))
                deg8 = to8(degraded)
                row.update({
                    "psnr": round(psnr(f64(out8), f64(clean8), border=0, y_channel=False), 4),
                    "ssim": round(ssim(f64(out8), f64(clean8), border=0, y_channel=False), 5),
                    f"{baseline}_psnr": round(psnr(f64(deg8), f64(clean8), border=0, y_channel=False), 4)})
                rows.append(row)
                if args.verbose:
                    extra = f", RL {row['rl_psnr']:.3f}" if "rl_psnr" in row else ""
                    print(f"  {path.name:24s} {row['psnr']:7.3f} dB  {row['ssim']:.4f}  "
                          f"({baseline} {row[baseline + '_psnr']:.3f}{extra})")
            if not rows:
                continue
            keys = [k for k in rows[0] if k != "image"]
            mean = {k: round(float(np.mean([r[k] for r in rows])), 5 if "ssim" in k else 4) for k in keys}
            report[f"{root.name}/{label}"] = {"images": len(rows), **mean, "per_image": rows}
            if not args.json:
                extra = f"   Richardson-Lucy (true kernel) {mean['rl_psnr']:.2f} dB" if "rl_psnr" in mean else ""
                print(f"{root.name:8s} {restorer.stem}{' +ensemble' if args.ensemble else ''} {label}: PSNR {mean['psnr']:.2f} dB SSIM {mean['ssim']:.4f}   "
                      f"{baseline} {mean[baseline + '_psnr']:.2f} dB{extra}   ({len(rows)} images, RGB, "
                      f"{'known σ' if args.known_sigma else 'blind'})")
    if args.record and report:
        _record_scores(restorer, report, (
            f"RGB, border 0, 8-bit output; {'known' if args.known_sigma else 'blind'} noise level; "
            + ("clean + N(0, sigma/255) seeded per image, unclipped" if task == "denoise" else
               "committed motion kernel i mod 8, reflect borders, sigma 1 noise, 8-bit; RL: 30 iterations")))
    if args.json:
        print(json.dumps({"restorer": restorer.stem, "backend": restorer.backend, "ensemble": args.ensemble,
                          "sets": report}, indent=2))
    return status


# ------------------------------------------------------------------------------- export, models

def cmd_export(args) -> int:
    from restore.api import load_restorer
    from restore.backends.cache import get_or_export_onnx
    from restore.backends.export import export_onnx

    restorer = load_restorer(args.model, args.variant, args.scale, backend="torch", weights=args.weights,
                             task=args.task)
    if args.output:
        out = Path(args.output)
        if out.exists():
            raise CliError(f"{out}: exists; refusing to overwrite")
        path = export_onnx(restorer.model, out, opset=args.opset)
    else:
        path = get_or_export_onnx(restorer.model, model_name=restorer.spec.name, variant=restorer.variant,
                                  scale=restorer.scale, weights_sha256=restorer.manifest.get("sha256", "untrained"),
                                  opset=args.opset)
    print(path)
    return EXIT_OK


def cmd_models(args) -> int:
    from restore import registry
    from restore.routing.table import table_path
    from restore.weights import list_weights

    weights = list_weights()
    out = []
    for spec in registry.all_specs():
        mine = [(p, m) for p, m in weights if m.get("restorer") == spec.name]
        out.append({"name": spec.name, "task": spec.task, "tasks": list(spec.all_tasks),
                    "summary": spec.summary, "paper": spec.paper,
                    "variants": list(spec.variants), "scales": list(spec.scales), "extras": list(spec.extras),
                    "subnets": list(spec.subnets),
                    "weights": [{"file": p.name, "variant": m.get("variant"), "scale": m.get("scale"),
                                 "task": m.get("task"),
                                 "parameters": m.get("parameters"), "scores": m.get("scores", {}),
                                 "route_table": table_path(p).exists()} for p, m in mine]})
    if args.json:
        print(json.dumps(out, indent=2))
        return EXIT_OK
    for r in out:
        scales = ", ".join(f"x{s}" for s in r["scales"])
        print(f"{r['name']:8s} {'/'.join(r['tasks']):5s} {r['summary']}")
        print(f"         variants: {', '.join(r['variants'])}   scales: {scales}")
        print(f"         paper: {r['paper']}")
        if r["subnets"]:
            print(f"         routing tiers: {', '.join(r['subnets'])}")
        for w in r["weights"] or [{"file": None}]:
            if w["file"] is None:
                print("         weights: none shipped")
                continue
            base = lambda v: next((f" ({k[:-5]} {v[k]:.2f})" for k in ("bicubic_psnr", "noisy_psnr", "blurred_psnr")
                                   if k in v), "")
            scores = "  ".join(f"{k} {v['psnr']:.2f} dB{base(v)}" for k, v in w["scores"].items() if "psnr" in v)
            table = "  (routing table)" if w["route_table"] else ""
            print(f"         weights: {w['file']}  {w['parameters'] / 1e6:.3f} M params  {scores}{table}")
    return EXIT_OK


# ------------------------------------------------------------------------------------- ui

def cmd_ui(args) -> int:
    try:
        from restore.ui import build_demo, launch
    except ImportError as e:
        raise CliError(f"the web UI needs gradio ({e}); install it with `pip install gradio`") from None
    if not 0 < args.port < 65536:
        raise CliError(f"--port {args.port}: not a TCP port")
    demo = build_demo(backend=args.backend, threads=args.threads, allow_untrained=args.allow_untrained)
    launch(demo, host=args.host, port=args.port)
    return EXIT_OK


# ------------------------------------------------------------------------------------- bench

def cmd_bench(args) -> int:
    from restore.bench import format_report, parse_size, run_bench

    size = parse_size(args.size)
    if args.route is not None or args.route_budget is not None:
        from restore.routing.bench import format_route_report, run_route_bench

        modes = ["quality", "balanced", "fast"] if args.route in (None, "all") else [args.route]
        backend = "auto" if args.backend == "all" else args.backend
        report = run_route_bench(args.model, args.variant, args.scale, size, modes=modes, budget_ms=args.route_budget,
                                 image=args.image, backend=backend, runs=args.runs, warmup=min(args.warmup, 1),
                                 threads=args.threads)
        print(json.dumps(report, indent=2) if args.json else format_route_report(report))
        return EXIT_OK
    report = run_bench(args.model, args.variant, args.scale, size, backend=args.backend, runs=args.runs,
                       warmup=args.warmup, threads=args.threads,
                       quiet=args.json or not sys.stderr.isatty())
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return EXIT_OK


# -------------------------------------------------------------------------------- calibrate

def cmd_calibrate(args) -> int:
    from restore.api import load_restorer
    from restore.routing.calibrate import calibrate
    from restore.routing.table import table_path
    from restore.train.data import find_photos

    try:
        photos = find_photos(args.folders)
    except FileNotFoundError as e:
        raise CliError(str(e)) from None
    if not photos:
        raise CliError("no photos found in " + ", ".join(args.folders))
    restorer = load_restorer(args.model, args.variant, args.scale, backend=args.backend, weights=args.weights,
                             threads=args.threads)
    if not restorer.spec.subnets:
        raise CliError(f"{restorer.spec.name} has no subnets: nothing to calibrate")
    out = Path(args.output) if args.output else table_path(restorer.weights_path)
    if args.dry_run:
        print(f"would measure {', '.join(restorer.spec.subnets)} of {restorer.stem} on {len(photos)} photos "
              f"(at most {args.max_patches} patches each) and write {out}")
        return EXIT_OK
    log = (lambda m: print(m, file=sys.stderr)) if args.verbose else (lambda m: None)
    table = calibrate(restorer, photos, bins=args.bins, max_patches_per_image=args.max_patches, log=log)
    existed = out.exists()
    table.save(out)
    best = ", ".join(f"{n} {c:.3f} ms" for n, c in zip(table.subnets, table.cost_ms))
    print(f"{'replaced' if existed else 'wrote'} {out} ({table.info['patches']} patches from "
          f"{table.info['images']} photos; per patch: {best})")
    return EXIT_OK


# ------------------------------------------------------------------------------------- live

def cmd_live(args) -> int:
    from restore.io.live import LiveError, check_display, run_live
    from restore.io.video import check_encoder

    if not args.show and not args.output:
        raise CliError("nothing to do: give --show, -o OUT.mp4, or both")
    if args.max_frames is not None and args.max_frames < 1:
        raise CliError(f"--max-frames must be at least 1, not {args.max_frames}")
    try:
        if args.output:
            check_encoder(args.codec, args.crf)
        if args.show:
            check_display()  # before loading a model: fail fast on a headless machine
        restorer = _load(args)
        stats = run_live(restorer, args.source, fps=args.fps, show=args.show, output=args.output,
                         max_frames=args.max_frames, crf=args.crf, codec=args.codec)
    except LiveError as e:
        raise CliError(str(e)) from None
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        where = f" -> {stats['output']}" if stats["output"] else ""
        print(f"{stats['frames']} frames in {stats['seconds']:.1f} s at {args.fps:g} fps: restored "
              f"{stats['processed']} ({stats['mean_fps']:.1f} fps, level {stats['level']}), "
              f"{stats['dropped']} dropped, {stats['repeated']} repeated{where}", file=sys.stderr)
    return EXIT_OK


# ------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        from restore.train.loop import main as train_main

        return train_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from restore.registry import UnknownRestorer
    from restore.weights import WeightsError

    handlers = {"run": cmd_run, "eval": cmd_eval, "export": cmd_export, "models": cmd_models, "ui": cmd_ui,
                "bench": cmd_bench, "live": cmd_live, "calibrate": cmd_calibrate}
    try:
        return handlers[args.command](args)
    except (CliError, UnknownRestorer, WeightsError, ValueError) as e:
        _err(str(e))
        return EXIT_USAGE
    except RuntimeError as e:  # e.g. a backend that cannot run here (no TensorRT, no CUDA)
        _err(str(e).splitlines()[0] if str(e) else type(e).__name__)
        return EXIT_USAGE
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:  # e.g. `restore models | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as e:  # a bug: still one line, the traceback only on request
        if args.verbose >= 2:
            raise
        _err(f"unexpected {type(e).__name__}: {e} (run with -vv for the traceback)")
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
