"""Mask fusion (torch-free): the head's nuclei keep their seeds, count and ids; their pixels come
from SAM decoder masks prompted with each nucleus's box on the embedding the head already used.

Each nucleus may only change pixels inside its *territory*: its head mask grown by
:data:`TERRITORY_UM` without touching a neighbour, so a SAM mask cannot take a neighbour's pixels
or add an object. A SAM mask whose predicted IoU is under :data:`MIN_SAM_IOU` (or that is empty
in the territory) leaves the head's mask as it was.

Rules: ``sam`` (the SAM mask), ``mean`` (mean of the head's foreground probability and SAM's
sigmoid > 0.5). Measured in ``docs/benchmarks.md`` ("CellSAM", mask fusion).
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels

from wsisam.runtime.preprocess import boxes_to_prompts

RULES = ("sam", "mean")  # with "off", the choices of the run option `fusion`
TERRITORY_UM = 1.5
MIN_SAM_IOU = 0.5

Decode = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def instance_boxes(labels: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """(H, W) instance labels → boxes (N, 4) x0, y0, x1, y1 in label px (exclusive) and ids."""
    boxes, ids = [], []
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is not None:
            boxes.append((sl[1].start, sl[0].start, sl[1].stop, sl[0].stop))
            ids.append(i)
    return np.asarray(boxes, np.float32).reshape(-1, 4), ids


def sam_masks(labels: np.ndarray, decode: Decode, scale: float, batch: int = 32
              ) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Box prompts of every nucleus of ``labels`` (tile px) through ``decode(coords, labels)`` →
    (ids, low-res logits (N, mh, mw) in the encoder-input frame, predicted IoUs (N,)).
    ``scale``: encoder-input px per tile px."""
    boxes, ids = instance_boxes(labels)
    if not ids:
        return ids, np.zeros((0, 1, 1), np.float32), np.zeros(0, np.float32)
    coords, lab = boxes_to_prompts(boxes * scale)
    logits, scores = [], []
    for s in range(0, len(ids), batch):
        low, iou = decode(coords[s:s + batch], lab[s:s + batch])
        logits.append(low[:, 0])  # box prompts: token 0, SAM's single-mask output
        scores.append(iou[:, 0])
    return ids, np.concatenate(logits), np.concatenate(scores)


def fuse(labels: np.ndarray, fg: np.ndarray, ids: list[int], logits: np.ndarray,
         scores: np.ndarray, territory_px: float, rule: str) -> np.ndarray:
    """Fused (H, W) labels. ``labels``/``fg`` (H, W): the head's instances and foreground
    probability; ``logits`` (N, mh, mw): SAM logits of ``ids`` over the whole tile (resampled
    to H×W here, one at a time)."""
    if rule not in RULES:
        raise ValueError(f"fusion rule '{rule}' is not one of {', '.join(RULES)}")
    territory = expand_labels(labels, territory_px)
    out = labels.copy()
    h, w = labels.shape
    slices = ndi.find_objects(territory)
    for i, lg, q in zip(ids, logits, scores):
        sl = slices[i - 1]
        if sl is None or q < MIN_SAM_IOU:
            continue
        full = cv2.resize(lg.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        p = 1 / (1 + np.exp(-full[sl]))
        m = (p > 0.5) if rule == "sam" else ((p + fg[sl]) / 2 > 0.5)
        m &= territory[sl] == i
        if m.any():
            region = out[sl]
            region[(region == i) & ~m] = 0
            region[m] = i
    return out
