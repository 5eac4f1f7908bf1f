"""Average the weights of several training checkpoints of one model into one slim checkpoint.

Runs that start from the same weights and fine-tune with a small learning rate stay in one basin
of the loss, so the mean of their weights is usually at least as good as either run ("model
soup", Wortsman et al. 2022). Each checkpoint contributes its weight average when it has one
(what its run exported), else its model. The result is written like `write_slim_checkpoint`
(no optimiser state), taking the step count, time and arguments of the first checkpoint, so
`restore train --run DIR --resume --export-only --weights-dir OUT` exports it:

    python tools/average_checkpoints.py runs/a/last.pt runs/b/last.pt --out /tmp/soup/last.pt
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from restore.train.loop import atomic_torch_save, exported_weights


def average(paths: list[Path]) -> dict:
    states = [torch.load(p, map_location="cpu", weights_only=False) for p in paths]
    first = states[0]
    tensors = [exported_weights(s) for s in states]
    keys = set(tensors[0])
    for path, t in zip(paths[1:], tensors[1:]):
        if set(t) != keys or any(t[k].shape != tensors[0][k].shape for k in keys):
            raise ValueError(f"{path}: holds a different model from {paths[0]}")
    mean = {}
    for k in tensors[0]:
        if tensors[0][k].is_floating_point():
            mean[k] = sum(t[k].double() for t in tensors).div(len(tensors)).to(tensors[0][k].dtype)
        else:  # counters (e.g. BatchNorm's num_batches_tracked): keep the first run's
            mean[k] = tensors[0][k]
    out = dict(first)
    out.update(model=mean, ema=None, optimizer=None)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="run checkpoints (last.pt)")
    parser.add_argument("--out", type=Path, required=True, help="the averaged checkpoint to write")
    args = parser.parse_args(argv)
    if len(args.checkpoints) < 2:
        parser.error("give at least two checkpoints")
    if args.out.exists():
        parser.error(f"{args.out}: exists; pick a new path")
    try:
        state = average(args.checkpoints)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        print(f"average_checkpoints: {e}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(state, args.out)
    print(f"wrote {args.out}: mean of {len(args.checkpoints)} checkpoints")
    return 0


if __name__ == "__main__":
    sys.exit(main())
