"""Pack what a GPU training run needs into device_kit/ (git-ignored), for the device's `carry`.

    .venv/bin/python tools/device/pack.py            # then carry ["device_kit"] to the device

- device_kit/photos/: the training photos as JPEG quality 97 with 4:4:4 chroma, long side at
  most 2048 px (the trainer's own --max-side), plus SOURCES.txt naming where each came from;
  the trainer records that list in the manifest of the weights it writes.
- device_kit/pylib/: pytest and its pure-Python dependencies, in case the device image has
  no pytest (tools/device/train.sh puts them on PYTHONPATH only then).

The photo sources are those of the shipped weights (README, "Training your own weights"):
never the evaluation sets. Carry is limited to 64 MiB in all, so the script stops if the kit
is larger.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from restore.train.data import find_photos, load_rgb8  # noqa: E402

OPENCV_DOC = Path("/usr/share/doc/opencv-doc/examples/data")
OPENCV_PHOTOS = ("aloeL.jpg building.jpg fruits.jpg graf1.png home.jpg leuvenA.jpg orange.jpg apple.jpg "
                 "starry_night.jpg squirrel_cls.jpg rubberwhale1.png basketball1.png aero1.jpg smarties.png "
                 "chicky_512.png messi5.jpg box_in_scene.png").split()
# The photographic ones of plasma-workspace-wallpapers (the rest are drawings, renders or fog).
WALLPAPERS = Path("/usr/share/wallpapers")
WALLPAPER_PHOTOS = "BytheWater ColorfulCups EveningGlow FallenLeaf Grey OneStandsOut Path".split()
SOURCES = [ROOT.parent / "shared" / "data" / "train" / "photos", Path("/usr/share/backgrounds/mate/nature"),
           *(OPENCV_DOC / name for name in OPENCV_PHOTOS),
           *(WALLPAPERS / name / "contents" / "images" / "2560x1600.jpg" for name in WALLPAPER_PHOTOS)]
PYLIB = ("pytest", "_pytest", "pluggy", "iniconfig", "packaging", "py.py")
CARRY_LIMIT = 64 * 2 ** 20


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "device_kit"), help="kit folder (default: device_kit/)")
    p.add_argument("--quality", type=int, default=97)
    p.add_argument("--max-side", type=int, default=2048)
    p.add_argument("--sources", nargs="+", type=Path, default=SOURCES,
                   help="photo folders or files (default: those of the shipped weights)")
    args = p.parse_args(argv)
    out = Path(args.out)
    missing = [str(s) for s in args.sources if not s.exists()]
    if missing:
        print(f"error: missing photo sources (apt-get install mate-backgrounds opencv-doc plasma-workspace-wallpapers?): {', '.join(missing)}",
              file=sys.stderr)
        return 2
    photos_dir = out / "photos"
    if photos_dir.exists():
        shutil.rmtree(photos_dir)
    photos_dir.mkdir(parents=True)
    lines = []
    for i, path in enumerate(find_photos(args.sources)):
        rgb = load_rgb8(path, args.max_side)
        if rgb is None:
            continue
        name = f"{i:03d}-{path.stem}.jpg"
        ok = cv2.imwrite(str(photos_dir / name), rgb[:, :, ::-1],
                         [cv2.IMWRITE_JPEG_QUALITY, args.quality,
                          cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
        if not ok:
            print(f"error: could not write {photos_dir / name}", file=sys.stderr)
            return 1
        lines.append(f"{name}\t{path}")
    (photos_dir / "SOURCES.txt").write_text(
        f"# JPEG q{args.quality} 4:4:4 copies (long side <= {args.max_side}) made by tools/device/pack.py\n"
        + "\n".join(lines) + "\n")
    lib = out / "pylib"
    if lib.exists():
        shutil.rmtree(lib)
    lib.mkdir()
    import pytest

    site = Path(pytest.__file__).resolve().parents[1]
    for name in PYLIB:
        src = site / name
        if src.is_dir():
            shutil.copytree(src, lib / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, lib / name)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {len(lines)} photos, {size / 2 ** 20:.1f} MiB")
    if size > CARRY_LIMIT:
        print(f"error: the kit is over the 64 MiB carry limit; lower --quality or --max-side", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
