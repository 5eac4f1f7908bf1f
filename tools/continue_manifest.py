"""Fold a continuation run into a shipped checkpoint's manifest.

A run started with `restore train --init weights-or-checkpoint` counts its steps, wall time and
validation history from zero and knows nothing of the runs before it. Shipped weights must say how
they were made in full, so this writes the new run's weights with a manifest whose steps, wall time,
optimiser story, loss and history continue the old one's:

    python tools/continue_manifest.py weights/lipt-tiny-x4-sr.json /tmp/x4w/lipt-tiny-x4-sr.json \
        --out weights --note "Session 11: ..." [--loss-suffix "; steps {a}-{b} L2 (MSE)"]

`{a}` and `{b}` in --loss-suffix and --note stand for the first and last step of the new run on
the cumulative count. Scores are emptied: they belong to the old weights; record new ones with
`restore eval ... --record`. Run it twice to chain two runs (e.g. an L1 run, then a short L2 one).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from restore.weights import sha256_of  # noqa: E402

HISTORY_KEPT = 20  # as many as `restore train` keeps


def merged(old: dict, new: dict, note: str, loss_suffix: str | None) -> dict:
    if (old["restorer"], old["variant"], old["scale"], old["task"]) != \
            (new["restorer"], new["variant"], new["scale"], new["task"]):
        raise SystemExit("error: the two manifests are of different restorers; nothing written")
    if old.get("config") != new.get("config"):
        raise SystemExit("error: the two manifests have different architectures; nothing written")
    ot, nt = old["training"], new["training"]
    a, b = ot["steps"], ot["steps"] + nt["steps"]
    out = json.loads(json.dumps(old))
    t = out["training"]
    for key in ("data", "data_sources", "images", "photo_scales", "megapixels", "batch", "lr_patch", "hardware",
                "torch", "weight_average"):
        if key in nt or key in t:  # a key neither run knew of stays absent
            t[key] = nt.get(key, t.get(key))
    t["steps"] = b
    t["wall_time_min"] = round(ot["wall_time_min"] + nt["wall_time_min"], 1)
    t["optimizer"] = f"{ot['optimizer']}; then steps {a}-{b}: {nt['optimizer']}"
    if loss_suffix:
        t["loss"] = ot["loss"] + loss_suffix.format(a=a, b=b)
    history = [dict(h, step=h["step"] + a) for h in nt.get("history", [])]
    t["history"] = (ot.get("history", []) + history)[-HISTORY_KEPT:]
    t["notes"] = (ot.get("notes", "") + " " + note.format(a=a, b=b)).strip()
    out["scores"] = {}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old", help="the shipped manifest (weights/STEM.json)")
    p.add_argument("new", help="the continuation run's exported manifest (its .safetensors beside it)")
    p.add_argument("--out", required=True, help="folder to write STEM.json and STEM.safetensors into")
    p.add_argument("--note", required=True, help="what the new run was, appended to the notes")
    p.add_argument("--loss-suffix", help="appended to the loss label, e.g. '; steps {a}-{b} L2 (MSE)'")
    args = p.parse_args(argv)
    old_path, new_path, out_dir = Path(args.old), Path(args.new), Path(args.out)
    try:
        old, new = (json.loads(x.read_text()) for x in (old_path, new_path))
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    weights = new_path.with_name(new["file"])
    if sha256_of(weights) != new["sha256"]:
        raise SystemExit(f"error: {weights} does not match its manifest's sha256; nothing written")
    manifest = merged(old, new, args.note, args.loss_suffix)
    manifest["file"], manifest["sha256"] = new["file"], new["sha256"]
    manifest["parameters"] = new.get("parameters", old.get("parameters"))
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / new["file"]
    if target.resolve() != weights.resolve():
        fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".part")
        os.close(fd)
        shutil.copyfile(weights, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp, target)
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".part")
    with os.fdopen(fd, "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, out_dir / old_path.name)
    t = manifest["training"]
    print(f"{out_dir / old_path.name}: steps {t['steps']}, {t['wall_time_min']} min, loss {t['loss']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
