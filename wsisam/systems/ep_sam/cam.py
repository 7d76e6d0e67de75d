"""EP-SAM host side, as released (``ResNetAdl.generate_cam_masks`` and
``segment_anything/utils/make_prompt.py``): rotation TTA, uint8 CAM quantisation, the normalised
CAM, the percentile threshold + morphology per dataset variant, and the seeded sampling of positive
points. Numpy + OpenCV (what the released code uses), no torch.

Frames: ``patch`` = the level-0 patch (p×p px, 512 released); ``cam`` = its p/16 grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

ANGLES = (0, 90, 180, 270)


@dataclass(frozen=True)
class CamOptions:
    """The released behaviour is the default of every field (see ``spec.EPSAM_OPTIONS``)."""

    variant: str = "camelyon17"
    tta: str = "rot4"
    cam_quantise: str = "uint8"
    resize: str = "bilinear"
    num_points: int = 50
    seed: int = 21
    coords: str = "patch"

    @classmethod
    def from_options(cls, opts: dict) -> "CamOptions":
        return cls(**{k: opts[k] for k in cls.__dataclass_fields__ if k in opts})


def tta_batch(rgb01: np.ndarray, tta: str = "rot4") -> np.ndarray:
    """(p, p, 3) RGB in [0, 1] → (R, 3, p, p) float32: PIL ``rotate(angle, expand=True)`` of a
    square patch is ``np.rot90`` by angle/90 (counter-clockwise)."""
    angles = ANGLES if tta == "rot4" else (0,)
    return np.stack([np.rot90(rgb01, k=a // 90).transpose(2, 0, 1) for a in angles]
                    ).astype(np.float32)


def average_cam(cams: np.ndarray, quantise: str = "uint8") -> np.ndarray:
    """Raw graph CAMs (R, h, w) of the rotated patches → the TTA average (h, w) in the patch's
    orientation: ReLU, min-max, ×255 → uint8 (truncation), rotated back by ``np.rot90`` with
    k = (4 − angle)//90, averaged and truncated to uint8 again. ``quantise="float"`` skips both
    truncations (scale kept 0–255)."""
    out = []
    for i, cam in enumerate(cams):
        c = np.maximum(cam.astype(np.float32), 0)
        c = c - c.min()
        c = c / c.max() if c.max() > 0 else c
        c = c * 255
        if quantise == "uint8":
            c = c.astype(np.uint8)
        out.append(np.rot90(c, k=(4 - ANGLES[i]) // 90))
    avg = np.mean(np.stack(out).astype(np.float32), axis=0)
    return avg.astype(np.uint8) if quantise == "uint8" else avg


def _resize(img: np.ndarray, p: int, how: str) -> np.ndarray:
    # the released calls pass cv2.INTER_LANCZOS4 as the third positional argument (dst), so the
    # interpolation used is the default bilinear
    return cv2.resize(img, (p, p), interpolation=cv2.INTER_LINEAR if how == "bilinear"
                      else cv2.INTER_NEAREST)


def normalised_cam(avg: np.ndarray, p: int, resize: str = "bilinear") -> np.ndarray:
    """Min-max of the averaged CAM, resized to the patch (p, p) float32 (the released
    ``softmax_cam``: not a softmax)."""
    c = avg.astype(np.float32)
    c = c - c.min()
    c = c / c.max() if c.max() > 0 else c
    return _resize(c, p, resize)


def cam_mask(avg: np.ndarray, p: int, variant: str = "camelyon17",
             resize: str = "bilinear") -> np.ndarray:
    """Binary CAM mask (p, p) bool. camelyon16: resize to p, threshold at the 10th percentile of
    the non-zero pre-resize CAM, opening 21×21; camelyon17: threshold the CAM grid at the 30th
    percentile of its non-zero values, opening 5×5, then resize. Non-zero → True."""
    nz = avg[avg > 0]
    if not nz.size:
        return np.zeros((p, p), bool)
    if variant == "camelyon16":
        thr = np.percentile(nz, 10)
        big = _resize(avg, p, resize)
        m = (big > thr).astype(np.uint8)
        m = cv2.morphologyEx(m, cv2.MORPH_OPEN, np.ones((21, 21), np.uint8))
    else:
        thr = np.percentile(nz, 30)
        m = (avg > thr).astype(np.uint8)
        m = cv2.morphologyEx(m, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
        m = _resize(m, p, resize)
    return m > 0


def sample_points(norm: np.ndarray, mask: np.ndarray, num_points: int,
                  seed: int) -> np.ndarray:
    """``num_points`` positive points (x, y) in the patch frame, sampled without replacement inside
    ``mask`` with probability ∝ ``norm`` (legacy ``np.random`` stream seeded with ``seed``, as the
    released ``np.random.choice`` after ``seed_everything``); ``[[0, 0]]`` when sampling fails
    (fewer candidates than points), as released."""
    prob = np.where(mask, norm, 0).astype(np.float64).ravel()
    if (prob > 0).sum() < num_points:
        return np.zeros((1, 2), np.float32)
    idx = np.random.RandomState(seed).choice(prob.size, num_points, replace=False,
                                             p=prob / prob.sum())
    rows, cols = np.divmod(idx, norm.shape[1])
    return np.stack([cols, rows], axis=1).astype(np.float32)  # (row, col) → (x, y)


def prompt_coords(points_patch: np.ndarray, patch_px: int, input_px: int,
                  coords: str = "patch") -> tuple[np.ndarray, np.ndarray]:
    """Points (P, 2) → decoder inputs (1, P+1, 2), (1, P+1) with SAM's padding point. ``patch``:
    the patch-frame coordinates unscaled into the ``input_px`` frame (the released quirk, which
    the fine-tuned decoder was trained with); ``scaled``: × input_px / patch_px."""
    xy = points_patch * (input_px / patch_px if coords == "scaled" else 1.0)
    c = np.zeros((1, len(xy) + 1, 2), np.float32)
    c[0, : len(xy)] = xy
    lab = np.full((1, len(xy) + 1), -1.0, np.float32)
    lab[0, : len(xy)] = 1.0
    return c, lab
