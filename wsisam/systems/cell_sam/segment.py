"""Whole annotated images through CellSAM (torch-free): encoder-sized crops, their maps blended
into one map of the image, seeded watershed, labels back in the image frame.

Used by training (thresholds on the training images) and by the evaluation bench; the slide
runtime does the same per tile with seam ownership instead of blending (``runtime.py``).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from wsisam.runtime.preprocess import preprocess_image
from wsisam.systems.cell_sam.data import AnnotatedImage, resize_labels
from wsisam.systems.cell_sam.instances import WatershedConfig, maps_to_instances
from wsisam.systems.cell_sam.spec import CellSamSpec

MIN_OVERLAP_FRAC = 0.25


def tile_inputs(rgb: np.ndarray, spec: CellSamSpec) -> tuple[np.ndarray, np.ndarray]:
    """One tile (head_px, head_px, 3) uint8 RGB at ``spec.head_mpp`` → (head input
    (3, head_px, head_px), large-encoder input (3, input_px, input_px)), both SAM-preprocessed.
    The encoder's is the tile area-reduced by ``spec.head.upscale`` (the same tensor at 1)."""
    head, _ = preprocess_image(rgb, spec.head_preprocess)
    if spec.head.upscale == 1:
        return head, head
    n = spec.input_px
    small = cv2.resize(rgb, (n * rgb.shape[1] // spec.head_px, n * rgb.shape[0] // spec.head_px),
                       interpolation=cv2.INTER_AREA)
    return head, preprocess_image(small, spec.preprocess)[0]


def axis_origins(length: int, n: int) -> list[int]:
    if length <= n:
        return [0]
    k = math.ceil((length - n) / (n * (1 - MIN_OVERLAP_FRAC))) + 1
    return [round(v) for v in np.linspace(0, length - n, k)]


def crop_origins(shape_hw: tuple[int, int], n: int) -> list[tuple[int, int]]:
    """(y, x) top-left corners of n×n crops covering an image of ``shape_hw`` (≥ n each side),
    row-major, overlapping by at least a quarter of a crop."""
    return [(y, x) for y in axis_origins(shape_hw[0], n) for x in axis_origins(shape_hw[1], n)]


def taper(n: int) -> np.ndarray:
    """(n, n) blending weight: 1 in the middle, falling linearly to 0.05 at the crop's edges."""
    r = 1 - np.abs(np.linspace(-1, 1, n))
    w = np.clip(r * 4, 0.05, 1)
    return np.outer(w, w).astype(np.float32)


def blend_crops(maps: np.ndarray, origins: list[tuple[int, int]], shape_hw: tuple[int, int]
                ) -> np.ndarray:
    """Crop maps (K, 3, n, n) at ``origins`` → (3, H, W) weighted mean over overlaps."""
    n = maps.shape[-1]
    acc = np.zeros((3,) + tuple(shape_hw), np.float32)
    wsum = np.zeros(shape_hw, np.float32)
    w = taper(n)
    for m, (y, x) in zip(maps, origins):
        acc[:, y:y + n, x:x + n] += m * w
        wsum[y:y + n, x:x + n] += w
    return acc / np.maximum(wsum, 1e-6)


def instances_at_image(maps: np.ndarray, img: AnnotatedImage, work_mpp: float,
                       ws: WatershedConfig) -> np.ndarray:
    """(3, h, w) maps at ``work_mpp`` (possibly padded past the image) → (H, W) int32 instance
    labels in ``img``'s frame (nearest-neighbour upsampling of the work-frame labels)."""
    h, w = img.work_hw(work_mpp)
    lab = maps_to_instances(maps[:, :h, :w], work_mpp, ws)
    H, W = img.labels.shape
    return resize_labels(lab, (H, W)).astype(np.int32)
