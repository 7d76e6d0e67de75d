"""Quick-look overlay: labels as translucent colour with solid outlines over the slide thumbnail."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from wsisam.runtime.writers.atomic import write_bytes_atomic

# Distinct colours for the first classes (RGB); further ids get golden-ratio hues.
PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128),
    (170, 110, 40), (128, 0, 0), (0, 0, 128), (128, 128, 0), (255, 225, 25),
], np.uint8)


def label_colors(n: int) -> np.ndarray:
    """(n + 1, 3) uint8 RGB colour per label value 0..n (row 0, background, is unused)."""
    colors = np.zeros((n + 1, 3), np.uint8)
    k = min(n, len(PALETTE))
    colors[1:k + 1] = PALETTE[:k]
    if n > len(PALETTE):
        ids = np.arange(len(PALETTE) + 1, n + 1)
        hsv = np.stack([(ids * 0.618034 % 1.0) * 180, np.full_like(ids, 200),
                        np.full_like(ids, 230)], axis=1).astype(np.uint8)
        colors[len(PALETTE) + 1:] = cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]
    return colors


def render_overlay(thumb_rgb: np.ndarray, label_thumb: np.ndarray,
                   alpha: float = 0.4) -> np.ndarray:
    """(H, W, 3) uint8 RGB: ``thumb_rgb`` with each nonzero label filled at ``alpha`` and outlined.

    ``label_thumb`` is (h, w) of any integer dtype (classes or instance ids); if its size differs
    from the thumbnail's it is resized with nearest neighbour.
    """
    if thumb_rgb.ndim != 3 or thumb_rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB thumbnail (H, W, 3), got shape {thumb_rgb.shape}")
    h, w = thumb_rgb.shape[:2]
    label = np.asarray(label_thumb)
    if label.ndim != 2:
        raise ValueError(f"expected a 2-D label image, got shape {label.shape}")
    if label.shape != (h, w):
        label = _resize_nearest(label, (w, h))
    label = label.astype(np.int64)
    colors = label_colors(int(label.max(initial=0)))
    color = colors[label]
    out = thumb_rgb.astype(np.float32)
    inside = label > 0
    out[inside] = (1 - alpha) * out[inside] + alpha * color[inside]
    edge = inside & _boundary(label)
    out[edge] = color[edge]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def write_overlay_png(path: str | os.PathLike[str], thumb_rgb: np.ndarray,
                      label_thumb: np.ndarray, alpha: float = 0.4) -> Path:
    """Render :func:`render_overlay` and write it as PNG, atomically; returns the path."""
    rgb = render_overlay(thumb_rgb, label_thumb, alpha)
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return write_bytes_atomic(path, png.tobytes())


def _boundary(label: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose 4-neighbourhood holds another value (or the image edge)."""
    padded = np.pad(label, 1, mode="constant", constant_values=-1)
    centre = padded[1:-1, 1:-1]
    return ((padded[:-2, 1:-1] != centre) | (padded[2:, 1:-1] != centre)
            | (padded[1:-1, :-2] != centre) | (padded[1:-1, 2:] != centre))


def _resize_nearest(label: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of (h, w) ints to ``size_wh`` without OpenCV's dtype limits."""
    w, h = size_wh
    rows = np.minimum((np.arange(h) + 0.5) * label.shape[0] / h, label.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(w) + 0.5) * label.shape[1] / w, label.shape[1] - 1).astype(int)
    return label[rows[:, None], cols[None, :]]
