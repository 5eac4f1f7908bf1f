"""Self-ensemble: restore the eight flips/rotations of the input and average them.

A network is not exactly equivariant to flips and 90° rotations, so its errors differ between the
eight views of a picture; undone and averaged, they partly cancel (the "+" rows of the SR
literature, typically +0.1–0.2 dB) at eight times the cost. Every input plane is transformed alike
(a noise-level hint plane is constant, so it is unaffected).

It wraps an engine and is itself an engine, so tiling, blending and out-of-memory back-off work
unchanged: each tile is ensembled on its own.
"""
from __future__ import annotations

import numpy as np

# (quarter turns, mirror): the dihedral group of the square, identity first
VIEWS = tuple((k, flip) for flip in (False, True) for k in range(4))


def to_view(batch: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """(N, C, H, W) → the view: mirrored left-right first, then turned k quarter turns."""
    if flip:
        batch = batch[..., ::-1]
    return np.ascontiguousarray(np.rot90(batch, k, axes=(2, 3)))


def from_view(batch: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """Inverse of `to_view`."""
    batch = np.rot90(batch, -k, axes=(2, 3))
    if flip:
        batch = batch[..., ::-1]
    return batch


class SelfEnsemble:
    """An engine that averages `inner` over the eight views of each batch."""

    def __init__(self, inner):
        self.inner = inner

    @property
    def name(self) -> str:  # the inner engine's, which may change (TensorRT takes over when built)
        return self.inner.name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        total = None
        for k, flip in VIEWS:
            out = from_view(self.inner(to_view(batch, k, flip)), k, flip)
            total = out.astype(np.float32, copy=True) if total is None else total + out
        return total / len(VIEWS)

    def __getattr__(self, attr):  # backend-specific extras (e.g. a TensorRT engine's status)
        return getattr(self.inner, attr)
