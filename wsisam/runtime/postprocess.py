"""Mask post-processing shared by every backend (numpy + OpenCV, no torch).

The decoder returns low-resolution logits (N, K, mh, mw) covering the padded model input. To get a
mask in the crop frame: upsample to input_px×input_px, cut off the padding (keep ``resized_hw``),
resize to the crop size, threshold at 0 — the same chain SAM applies with ``F.interpolate``
(bilinear, align_corners=False), which ``cv2.INTER_LINEAR`` reproduces.
"""

from __future__ import annotations

import cv2
import numpy as np

from wsisam.runtime.preprocess import InputGeometry


def select_mask_token(
    low_res: np.ndarray, iou: np.ndarray, multimask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pick one mask per prompt.

    low_res (N, K, mh, mw) logits, iou (N, K), multimask (N,) bool: prompts with ``multimask`` (a
    single point, ambiguous) take the best-scoring of tokens 1..K-1; others take token 0 (SAM's
    single-mask output). Returns logits (N, mh, mw) and scores (N,).
    """
    n = low_res.shape[0]
    best_multi = 1 + np.argmax(iou[:, 1:], axis=1)
    token = np.where(multimask, best_multi, 0)
    return low_res[np.arange(n), token], iou[np.arange(n), token]


def logits_to_crop(logits_lr: np.ndarray, geom: InputGeometry, input_px: int) -> np.ndarray:
    """Low-res logits (mh, mw) → logits in the crop frame (crop_h, crop_w), float32."""
    up = cv2.resize(logits_lr.astype(np.float32), (input_px, input_px),
                    interpolation=cv2.INTER_LINEAR)
    rh, rw = geom.resized_hw
    up = up[:rh, :rw]
    ch, cw = geom.crop_hw
    if (ch, cw) != (rh, rw):
        up = cv2.resize(up, (cw, ch), interpolation=cv2.INTER_LINEAR)
    return up


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks of one shape; two empty masks count as identical (1.0)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; two empty masks count as identical (1.0)."""
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)
