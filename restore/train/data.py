"""Training pairs from any folder of photos: random aligned crops with flips and transposes.

Images are decoded once and kept in memory as uint8; the degraded counterpart of each whole
image is made once too (for SR: MATLAB bicubic with antialiasing, the eval protocol), so a
training step only slices arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from restore.resize import imresize

PHOTO_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def find_photos(folders: list[str | Path], min_side: int = 96) -> list[Path]:
    """All image files under the folders (recursive), sorted for reproducibility."""
    files: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if folder.is_file():
            files.append(folder)
        elif folder.is_dir():
            files += [p for p in folder.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file()]
        else:
            raise FileNotFoundError(f"{folder}: no such file or folder")
    return sorted(set(files))


def load_rgb8(path: Path, max_side: int) -> np.ndarray | None:
    """RGB uint8, shrunk (MATLAB bicubic) so the long side is at most max_side; None if unreadable."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)  # 8-bit BGR; 16-bit and alpha are irrelevant here
    if img is None:
        return None
    img = img[:, :, ::-1]
    long_side = max(img.shape[:2])
    if long_side > max_side:
        img = imresize(img, max_side / long_side)
    return np.ascontiguousarray(img)


def check_photo_scales(scales) -> tuple[float, ...]:
    """The scales as a tuple; ValueError unless each is in (0, 1]."""
    scales = tuple(float(s) for s in scales)
    if not scales or not all(0 < s <= 1 for s in scales):
        raise ValueError(f"photo scales must be in (0, 1], e.g. 1 0.5; got {' '.join(f'{s:g}' for s in scales)}")
    return scales


def photo_pyramid(images: list[np.ndarray], scales=(1.0,), min_side: int = 0, log=None
                  ) -> tuple[list[np.ndarray], np.ndarray]:
    """Every photo at every scale in `scales` (MATLAB bicubic with antialiasing), with sampling
    weights that give each scale the same share of patches as the full-size photos.

    Why: camera photos at full size are soft at the pixel level (optics, demosaicing, JPEG);
    benchmark images such as CBSD68 and Set14 are small and dense with detail. Shrunk copies
    bring training crops closer to them, and shrinking also averages away the photos' own noise,
    which a denoiser would otherwise learn to keep. A copy below `min_side` is left out.
    """
    scales = check_photo_scales(scales)
    out, weights = [], []
    for s in scales:
        for img in images:
            copy = img if s == 1 else np.clip(np.round(imresize(img, s)), 0, 255).astype(np.uint8)
            if min(copy.shape[:2]) < min_side:
                continue
            out.append(copy)
            weights.append(copy.shape[0] * copy.shape[1] / (s * s))  # area-weighted within a scale
    if log is not None and scales != (1.0,):
        log(f"photo scales {', '.join(f'{s:g}' for s in scales)}: {len(out)} images, "
            f"{sum(x.shape[0] * x.shape[1] for x in out) / 1e6:.1f} MP")
    return out, np.asarray(weights, dtype=np.float64)


@dataclass
class SRPairs:
    """HR photos and their bicubic LR versions, sampled as aligned random crops."""

    hr: list[np.ndarray]
    lr: list[np.ndarray]
    scale: int
    weights: np.ndarray | None = None  # sampling weight per image (default: its area)
    photos: int = 0  # distinct photos behind hr (hr holds each once per photo scale)

    @classmethod
    def from_folders(cls, folders, scale: int, lr_patch: int, max_side: int = 2048, log=print,
                     photo_scales=(1.0,)) -> "SRPairs":
        photos, skipped = [], 0
        for path in find_photos(folders):
            img = load_rgb8(path, max_side)
            if img is None or min(img.shape[:2]) < lr_patch * scale:
                skipped += 1
                continue
            photos.append(img)
        if not photos:
            raise ValueError("no usable training images found (need photos at least "
                             f"{lr_patch * scale}px on the short side)")
        log(f"training set: {len(photos)} images ({skipped} skipped), "
            f"{sum(x.shape[0] * x.shape[1] for x in photos) / 1e6:.1f} MP")
        hr_list, weights = photo_pyramid(photos, photo_scales, lr_patch * scale, log=log)
        hr_list = [img[:(img.shape[0] // scale) * scale, :(img.shape[1] // scale) * scale] for img in hr_list]
        lr_list = [imresize(img, 1.0 / scale) for img in hr_list]
        return cls(hr_list, lr_list, scale, weights, len(photos))

    def sample(self, rng: np.random.Generator, batch: int, lr_patch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of (LR, HR) float tensors in [0, 1], NCHW."""
        s, lrs, hrs = self.scale, [], []
        # Weight images by area so every pixel is equally likely.
        areas = (self.weights if self.weights is not None else
                 np.array([x.shape[0] * x.shape[1] for x in self.lr], dtype=np.float64))
        picks = rng.choice(len(self.lr), size=batch, p=areas / areas.sum())
        for i in picks:
            lr_img, hr_img = self.lr[i], self.hr[i]
            y = rng.integers(0, lr_img.shape[0] - lr_patch + 1)
            x = rng.integers(0, lr_img.shape[1] - lr_patch + 1)
            lr_crop = lr_img[y:y + lr_patch, x:x + lr_patch]
            hr_crop = hr_img[y * s:(y + lr_patch) * s, x * s:(x + lr_patch) * s]
            lr_crop, hr_crop = augment(rng, lr_crop, hr_crop)
            lrs.append(lr_crop), hrs.append(hr_crop)
        to_t = lambda xs: torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float().div_(255.0)
        return to_t(lrs), to_t(hrs)


def augment(rng: np.random.Generator, *images: np.ndarray) -> list[np.ndarray]:
    """The same random flip / transpose (the 8 dihedral transforms) applied to every image."""
    flip_v, flip_h, transpose = rng.integers(0, 2, size=3)
    out = []
    for img in images:
        if flip_v:
            img = img[::-1]
        if flip_h:
            img = img[:, ::-1]
        if transpose:
            img = img.transpose(1, 0, 2)
        out.append(np.ascontiguousarray(img))
    return out


def load_photos(folders, min_side: int, max_side: int = 2048, log=print) -> list[np.ndarray]:
    """RGB uint8 photos (long side ≤ max_side) at least `min_side` on the short side."""
    images, skipped = [], 0
    for path in find_photos(folders):
        img = load_rgb8(path, max_side)
        if img is None or min(img.shape[:2]) < min_side:
            skipped += 1
            continue
        images.append(img)
    if not images:
        raise ValueError(f"no usable training images found (need photos at least {min_side}px on the short side)")
    log(f"training set: {len(images)} images ({skipped} skipped), "
        f"{sum(x.shape[0] * x.shape[1] for x in images) / 1e6:.1f} MP")
    return images


class SameSizePairs:
    """Clean photos, degraded on the fly into (input, target) pairs of the same size.

    `task` is "denoise" (Gaussian noise, σ uniform in [0, 55] per patch) or "deblur" (random
    motion kernels of 7–31 px from a pre-drawn bank, σ ∈ [0, 3] noise, 8-bit quantisation).
    With `hint` (the model's σ → plane-value function, e.g. `IPTV2.hint_value`) the input gets
    a fourth plane: the noise level for `hint_prob` of the patches, "unknown" (hint(None)) for the
    rest, so one network is blind and can take a hint. The encoding stays the model's own.
    """

    def __init__(self, images: list[np.ndarray], task: str, hint=None, hint_prob: float = 0.3,
                 sigma_max: float = 55.0, seed: int = 0, kernel_bank: int = 1024,
                 weights: np.ndarray | None = None):
        from restore import degrade

        if task not in ("denoise", "deblur"):
            raise ValueError(f"no training degradation for task {task!r}")
        self.images, self.task, self.hint, self.hint_prob, self.sigma_max = images, task, hint, hint_prob, sigma_max
        self.kernels: list[np.ndarray] = []
        if task == "deblur":
            bank_rng = np.random.default_rng(10_000 + seed)  # never the benchmark's seed
            self.kernels = [degrade.random_motion_kernel(bank_rng) for _ in range(kernel_bank)]
        self.margin = max((k.shape[0] for k in self.kernels), default=1) // 2
        # Sampling weight per image: its area (every pixel equally likely) unless given.
        self._areas = (np.asarray(weights, dtype=np.float64) if weights is not None else
                       np.array([x.shape[0] * x.shape[1] for x in images], dtype=np.float64))

    def _crops(self, rng: np.random.Generator, batch: int, size: int) -> list[np.ndarray]:
        picks = rng.choice(len(self.images), size=batch, p=self._areas / self._areas.sum())
        crops = []
        for i in picks:
            img = self.images[i]
            y = rng.integers(0, img.shape[0] - size + 1)
            x = rng.integers(0, img.shape[1] - size + 1)
            crops.append(augment(rng, img[y:y + size, x:x + size])[0])
        return crops

    def sample(self, rng: np.random.Generator, batch: int, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
        from restore import degrade

        if self.task == "denoise":
            clean = np.stack(self._crops(rng, batch, patch)).astype(np.float32) / 255.0
            sigma = rng.uniform(0.0, self.sigma_max, size=batch).astype(np.float32)
            noisy = clean + rng.standard_normal(clean.shape, dtype=np.float32) * (sigma / 255.0)[:, None, None, None]
        else:
            m = self.margin
            clean_list, noisy_list = [], []
            sigma = rng.uniform(0.0, degrade.DEBLUR_NOISE_MAX, size=batch).astype(np.float32)
            for crop, s in zip(self._crops(rng, batch, patch + 2 * m), sigma):
                k = self.kernels[rng.integers(len(self.kernels))]
                k = augment(rng, k[:, :, None])[0][:, :, 0]  # 8 orientations of every kernel
                big = crop.astype(np.float32) / 255.0
                blurred = degrade.blur(big, k)[m:m + patch, m:m + patch]
                blurred = degrade.to8bit(blurred + rng.standard_normal(blurred.shape, dtype=np.float32) * s / 255.0)
                clean_list.append(big[m:m + patch, m:m + patch])
                noisy_list.append(blurred.astype(np.float32))
            clean, noisy = np.stack(clean_list), np.stack(noisy_list)
        to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float()
        inp, target = to_t(noisy), to_t(clean)
        if self.hint is not None:
            shown = rng.random(batch) < self.hint_prob
            level = np.array([self.hint(float(s)) if show else self.hint(None) for s, show in zip(sigma, shown)],
                             dtype=np.float32)
            inp = torch.cat([inp, torch.from_numpy(level)[:, None, None, None].expand(-1, 1, patch, patch)], 1)
        return inp, target

    def fixed_set(self, size: int = 128, seed: int = 0) -> list[tuple[torch.Tensor, np.ndarray]]:
        """Validation pairs: a centre crop of each photo, degraded once with a fixed seed (denoise at
        σ = 25), blind hint."""
        from restore import degrade

        rng = np.random.default_rng(seed)
        out = []
        for i, img in enumerate(self.images):
            s = min(size, img.shape[0], img.shape[1])
            y, x = (img.shape[0] - s) // 2, (img.shape[1] - s) // 2
            clean = img[y:y + s, x:x + s].astype(np.float32) / 255.0
            if self.task == "denoise":
                inp = degrade.noisy_image(clean, 25.0, seed + i)
            else:
                inp = degrade.blurred_image(clean, self.kernels[rng.integers(len(self.kernels))], seed + i)
            t = torch.from_numpy(inp).permute(2, 0, 1)[None]
            if self.hint is not None:
                t = torch.cat([t, torch.full_like(t[:, :1], self.hint(None))], 1)
            out.append((t, clean))
        return out
