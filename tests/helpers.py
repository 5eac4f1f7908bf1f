"""Small synthetic images for tests."""
import numpy as np


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth colourful HxWx3 float image in [0, 1] (what SR networks are good at)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    chans = []
    for _ in range(3):
        fy, fx, ph = rng.uniform(0.05, 0.3, 2).tolist() + [rng.uniform(0, 6.28)]
        chans.append(0.5 + 0.4 * np.sin(fy * y + ph) * np.cos(fx * x))
    return np.stack(chans, -1).astype(np.float32)
