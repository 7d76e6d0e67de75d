"""Tissue detection on a slide thumbnail.

Frames: everything here is in the *thumbnail* frame: ``thumb_rgb`` (H, W, 3) uint8 and the
returned mask (H, W) bool share pixel coordinates; callers map to level-0 with the thumbnail's
downsample (level-0 px per thumbnail px).

Brightfield (H&E, IHC): stained tissue is coloured (saturated) against a white, grey-white glass
background, so tissue = Otsu on HSV saturation, plus anything clearly darker than the background
(dense, weakly saturated stain). Fluorescence: the background is black and only the labelled
structures (e.g. DAPI nuclei) are bright: tissue = brightness above the glass level after a
median filter (autofluorescence), or Otsu on brightness closed over the gaps between nuclei.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Median brightness (HSV V, 0..255) below which a thumbnail is taken for fluorescence.
FLUORESCENCE_MEDIAN_V = 60
# Otsu on an image without tissue splits sensor noise; thresholds never go below these.
MIN_SATURATION = 20
# Fluorescence: tissue is brighter than FACTOR × glass + MARGIN (8-bit brightness).
FLUO_GLASS_FACTOR = 2.0
FLUO_GLASS_MARGIN = 3.0
# Specks smaller than this fraction of the thumbnail are dust, not tissue.
MIN_SPECK_FRACTION = 0.001
# Morphology kernels scale with the thumbnail so the result does not depend on its size.
KERNEL_FRACTION = 0.01
# Gaps between labelled nuclei closed in fluorescence, as a fraction of the longest side.
NUCLEI_GAP_FRACTION = 0.02


@dataclass(frozen=True)
class TissueTile:
    """A tile of real tissue: ``rgb`` (tile_px, tile_px, 3) uint8 of ``box_l0`` (level-0 px) in
    ``slide`` (a path): what parity, calibration and accuracy gates run on."""

    slide: str
    box_l0: tuple[int, int, int, int]
    rgb: np.ndarray


def is_fluorescence(thumb_rgb: np.ndarray) -> bool:
    """True when the thumbnail (H, W, 3) uint8 has a dark background (median HSV V < 60)."""
    return float(np.median(thumb_rgb.max(axis=2))) < FLUORESCENCE_MEDIAN_V


def tissue_mask(thumb_rgb: np.ndarray) -> np.ndarray:
    """Tissue mask of a thumbnail.

    Args:
        thumb_rgb: (H, W, 3) uint8 RGB thumbnail.
    Returns:
        (H, W) bool, True on tissue (thumbnail frame).
    """
    if thumb_rgb.ndim != 3 or thumb_rgb.shape[2] != 3 or thumb_rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 thumbnail (H, W, 3), got {thumb_rgb.dtype} "
                         f"{thumb_rgb.shape}")
    if is_fluorescence(thumb_rgb):
        raw = _fluorescence_foreground(thumb_rgb)
    else:
        raw = _brightfield_foreground(thumb_rgb)
    return _clean(raw)


def tissue_fraction(mask: np.ndarray, box_thumb: tuple[float, float, float, float]) -> float:
    """Fraction of ``box_thumb`` (x0, y0, x1, y1, thumbnail px) covered by tissue in ``mask``.

    The part of the box outside the mask counts as background, so a tile overhanging the slide
    edge is judged on its whole area. An empty box gives 0.0.
    """
    h, w = mask.shape
    x0, y0, x1, y1 = (int(round(v)) for v in box_thumb)
    area = max(x1 - x0, 0) * max(y1 - y0, 0)
    if area == 0:
        return 0.0
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx1 <= cx0 or cy1 <= cy0:
        return 0.0
    return float(np.count_nonzero(mask[cy0:cy1, cx0:cx1])) / area


def _otsu(channel: np.ndarray) -> float:
    """Otsu threshold of a uint8 image (H, W)."""
    thr, _ = cv2.threshold(channel, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(thr)


def _brightfield_foreground(rgb: np.ndarray) -> np.ndarray:
    """Saturated or clearly-darker-than-glass pixels, (H, W) bool."""
    sat = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    sat = cv2.GaussianBlur(sat, (3, 3), 0)
    saturated = sat > max(_otsu(sat), MIN_SATURATION)
    # Glass is the brightest common level; dense stain with little colour is still much darker.
    glass = float(np.percentile(gray, 95))
    dark = gray < min(_otsu(gray), 0.6 * glass)
    return saturated | dark


def _fluorescence_foreground(rgb: np.ndarray) -> np.ndarray:
    """Tissue on a dark background, (H, W) bool.

    Two cues, either suffices: (1) tissue autofluorescence lifts the *median-filtered*
    brightness (which ignores the sparse bright nuclei) clearly above the glass level;
    (2) bright labelled structures (Otsu on brightness) closed over the dark gaps between them,
    for samples without autofluorescence.
    """
    bright = rgb.max(axis=2)
    smooth = cv2.medianBlur(bright, _odd(KERNEL_FRACTION * max(rgb.shape[:2])))
    glass = float(np.percentile(smooth, 2))
    above_glass = smooth > FLUO_GLASS_FACTOR * glass + FLUO_GLASS_MARGIN
    labelled = (bright > max(_otsu(bright), FLUO_GLASS_FACTOR * glass + FLUO_GLASS_MARGIN))
    k = _odd(NUCLEI_GAP_FRACTION * max(rgb.shape[:2]))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    labelled = cv2.morphologyEx(labelled.astype(np.uint8), cv2.MORPH_CLOSE, kernel).astype(bool)
    return above_glass | labelled


def _clean(mask: np.ndarray) -> np.ndarray:
    """Close gaps, open away noise, drop specks < 0.1 % of the area; (H, W) bool → (H, W) bool."""
    k = _odd(KERNEL_FRACTION * max(mask.shape))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    m = mask.astype(np.uint8)
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, kernel)
    m = cv2.morphologyEx(m, cv2.MORPH_OPEN, kernel)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    min_area = MIN_SPECK_FRACTION * mask.size
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area
    return keep[labels]


def _odd(x: float) -> int:
    """Nearest odd kernel size ≥ 3."""
    k = max(3, int(round(x)))
    return k if k % 2 else k + 1
