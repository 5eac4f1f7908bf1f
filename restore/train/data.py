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


@dataclass
class SRPairs:
    """HR photos and their bicubic LR versions, sampled as aligned random crops."""

    hr: list[np.ndarray]
    lr: list[np.ndarray]
    scale: int

    @classmethod
    def from_folders(cls, folders, scale: int, lr_patch: int, max_side: int = 2048, log=print) -> "SRPairs":
        hr_list, lr_list, skipped = [], [], 0
        for path in find_photos(folders):
            img = load_rgb8(path, max_side)
            if img is None or min(img.shape[:2]) < lr_patch * scale:
                skipped += 1
                continue
            h, w = (img.shape[0] // scale) * scale, (img.shape[1] // scale) * scale
            img = img[:h, :w]
            hr_list.append(img)
            lr_list.append(imresize(img, 1.0 / scale))
        if not hr_list:
            raise ValueError("no usable training images found (need photos at least "
                             f"{lr_patch * scale}px on the short side)")
        log(f"training set: {len(hr_list)} images ({skipped} skipped), "
            f"{sum(x.shape[0] * x.shape[1] for x in hr_list) / 1e6:.1f} MP")
        return cls(hr_list, lr_list, scale)

    def sample(self, rng: np.random.Generator, batch: int, lr_patch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of (LR, HR) float tensors in [0, 1], NCHW."""
        s, lrs, hrs = self.scale, [], []
        # Weight images by area so every pixel is equally likely.
        areas = np.array([x.shape[0] * x.shape[1] for x in self.lr], dtype=np.float64)
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
