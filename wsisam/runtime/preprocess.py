"""Host-side preprocessing shared by every backend, by export parity checks and by calibration.

Frames: a *crop* is an RGB uint8 array (H, W, 3) read from the slide; the *model input* is the
``input_px``×``input_px`` padded tensor. A crop is resized so its longest side is ``input_px``, so
one scale factor ``scale = input_px / max(H, W)`` maps crop pixels to model-input pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from wsisam.registry import Preprocess


@dataclass(frozen=True)
class InputGeometry:
    """How a crop sits in the model input: ``resized_hw`` of the crop after resizing, and ``scale``."""

    crop_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    scale: float


def input_geometry(crop_hw: tuple[int, int], input_px: int) -> InputGeometry:
    """Geometry of a crop of ``crop_hw`` (H, W) resized to longest side ``input_px``."""
    h, w = crop_hw
    scale = input_px / max(h, w)
    # SAM's ResizeLongestSide rounds with int(x + 0.5)
    resized = (int(h * scale + 0.5), int(w * scale + 0.5))
    return InputGeometry(crop_hw=(h, w), resized_hw=resized, scale=scale)


def preprocess_image(rgb: np.ndarray, pre: Preprocess) -> tuple[np.ndarray, InputGeometry]:
    """One crop (H, W, 3) uint8 RGB → model input (3, input_px, input_px) float32 and its geometry."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {rgb.shape}")
    geom = input_geometry(rgb.shape[:2], pre.input_px)
    rh, rw = geom.resized_hw
    if (rh, rw) != rgb.shape[:2]:
        rgb = cv2.resize(rgb, (rw, rh), interpolation=cv2.INTER_LINEAR)
    x = (rgb.astype(np.float32) - np.asarray(pre.pixel_mean, np.float32)) / np.asarray(
        pre.pixel_std, np.float32
    )
    out = np.zeros((3, pre.input_px, pre.input_px), np.float32)
    out[:, :rh, :rw] = x.transpose(2, 0, 1)
    return out, geom


BOX_LABELS = (2.0, 3.0)
PAD_LABEL = -1.0


def boxes_to_prompts(boxes_xyxy_in: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, 4) xyxy in model-input px → point_coords (N, 2, 2) and point_labels (N, 2)."""
    boxes = np.asarray(boxes_xyxy_in, np.float32).reshape(-1, 4)
    coords = boxes.reshape(-1, 2, 2)
    labels = np.tile(np.asarray(BOX_LABELS, np.float32), (len(boxes), 1))
    return coords, labels


def points_to_prompts(
    point_sets_in: list[np.ndarray], label_sets: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Point sets (each (P_i, 2) model-input px, labels (P_i,) 1/0) → padded decoder inputs.

    Each set is padded to P = max(P_i) + 1 with (0, 0, label -1): SAM appends one padding point when
    a prompt has points but no box, and the padding also equalises set lengths across the batch.
    """
    p = max(len(s) for s in point_sets_in) + 1
    coords = np.zeros((len(point_sets_in), p, 2), np.float32)
    labels = np.full((len(point_sets_in), p), PAD_LABEL, np.float32)
    for i, (pts, lab) in enumerate(zip(point_sets_in, label_sets)):
        coords[i, : len(pts)] = pts
        labels[i, : len(pts)] = lab
    return coords, labels
