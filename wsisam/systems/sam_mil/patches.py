"""SAM-MIL's patch preprocessing for the feature graph (torch-free)."""

from __future__ import annotations

import cv2
import numpy as np

from wsisam.systems.sam_mil.spec import SamMilSpec


def feature_input(rgb: np.ndarray, spec: SamMilSpec) -> np.ndarray:
    """A patch (H, W, 3) uint8 → (3, n, n) float32: resized to ``feature_px`` (bicubic, as the
    released PIL resize; OpenCV's bicubic does not antialias, PIL's does: a known difference
    of the host step, not of the graph), ImageNet mean/std on the 0-255 scale."""
    n, pre = spec.feature_px, spec.feature_preprocess
    if rgb.shape[:2] != (n, n):
        rgb = cv2.resize(rgb, (n, n), interpolation=cv2.INTER_CUBIC)
    x = (rgb.astype(np.float32) - np.asarray(pre.pixel_mean, np.float32)) / np.asarray(
        pre.pixel_std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))
