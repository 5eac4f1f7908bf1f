"""Which subnet each patch gets: one knob from "best quality" to "fastest".

Inputs are the table's predictions for every patch: `mse[i, k]` (expected squared error of patch
i under subnet k) and `cost[k]` (time per patch). Modes:

* quality: each patch takes the subnet with the best predicted PSNR (ARM's eta="best"); bicubic
  wins the flattest patches, where networks only add noise.
* a loss budget in dB (balanced / fast): the cheapest assignment whose predicted *image* PSNR is
  at most that far below the quality assignment's.
* a time budget (`--route-budget MS`): the best predicted image PSNR whose predicted time fits.

Both budgets are solved the same way: for a price λ on time, every patch independently picks
argmin_k mse[i,k] + λ·cost[k] (a Lagrangian relaxation of the knapsack). Raising λ only ever
moves patches to cheaper subnets, so a bisection on λ finds the assignment at the budget. Unlike
ARM's per-patch trade-off (η·PSNR − cost), this spends the error where it costs least in image
PSNR: an image's PSNR follows its mean MSE, which the hard patches dominate.
"""
from __future__ import annotations

import numpy as np

# Allowed predicted loss (dB of image PSNR) relative to the quality assignment.
MODE_LOSS_DB = {"quality": 0.0, "balanced": 0.05, "fast": 0.6}
MODES = ("off", *MODE_LOSS_DB)


def _pick(mse: np.ndarray, cost: np.ndarray, price: float) -> np.ndarray:
    return np.argmin(mse + price * cost[None, :], axis=1)


def _quality(psnr: np.ndarray) -> np.ndarray:
    return np.argmax(psnr, axis=1)  # ties → the first, i.e. the cheapest subnet


def _bisect(mse: np.ndarray, cost: np.ndarray, fits, cheapest_fitting: bool, iterations: int = 60) -> np.ndarray:
    """The choice at the price λ on the edge of `fits(choice)`.

    Raising λ makes choices cheaper and worse, so "fits the time budget" holds above some λ* (we
    want the lowest such λ: the best quality that fits) and "fits the loss budget" holds below
    some λ* (we want the highest: the cheapest that fits). `cheapest_fitting` says which.
    """
    spread = float(np.ptp(mse, axis=1).max()) if mse.size else 0.0
    steps = np.diff(np.unique(cost))
    hi = 2.0 * max(spread, 1e-12) / max(float(steps.min()) if steps.size else 1.0, 1e-12)  # all cheapest
    lo = 0.0  # best MSE everywhere
    if cheapest_fitting:
        if fits(_pick(mse, cost, hi)):
            return _pick(mse, cost, hi)
        if not fits(_pick(mse, cost, lo)):
            return _pick(mse, cost, lo)
    else:
        if fits(_pick(mse, cost, lo)):
            return _pick(mse, cost, lo)
        if not fits(_pick(mse, cost, hi)):
            return _pick(mse, cost, hi)  # even the cheapest choice misses: as cheap as possible
    for _ in range(iterations):  # invariant: fits(lo) != fits(hi)
        mid = np.sqrt(lo * hi) if lo > 0 else hi / 1e6  # prices span decades: bisect geometrically
        if fits(_pick(mse, cost, mid)) == cheapest_fitting:
            lo = mid
        else:
            hi = mid
    return _pick(mse, cost, lo if cheapest_fitting else hi)


def assign(psnr: np.ndarray, mse: np.ndarray, cost: np.ndarray, *, mode: str = "balanced",
           loss_db: float | None = None, budget: float | None = None) -> np.ndarray:
    """Subnet index per patch. `psnr`/`mse`: (patches, subnets); `cost`: (subnets,), cheapest first.

    `budget` (same unit as cost, summed over patches) overrides the mode; `loss_db` overrides the
    mode's allowed loss.
    """
    n, k = mse.shape
    cost = np.asarray(cost, np.float64)
    if n == 0:
        return np.zeros(0, np.int64)
    if budget is not None:
        return _bisect(mse, cost, lambda c: cost[c].sum() <= budget, cheapest_fitting=False)
    if mode == "off":
        return np.full(n, k - 1, np.int64)
    if loss_db is None:
        try:
            loss_db = MODE_LOSS_DB[mode]
        except KeyError:
            raise ValueError(f"unknown routing mode {mode!r} (choose from {', '.join(MODES)})") from None
    best = _quality(psnr)
    if loss_db <= 0:
        return best
    limit = mse[np.arange(n), best].mean() * 10.0 ** (loss_db / 10.0)
    chosen = _bisect(mse, cost, lambda c: mse[np.arange(n), c].mean() <= limit, cheapest_fitting=True)
    # Never pay more than the quality choice: a patch whose best subnet is cheaper keeps it.
    return np.minimum(chosen, best) if np.all(np.diff(cost) >= 0) else chosen
