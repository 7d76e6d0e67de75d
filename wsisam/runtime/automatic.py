"""Automatic (prompt-free) segmentation of every object on the tissue, tile by tile.

Prompt scheme, chosen by measurement (``bench/prompt_context.py``, docs/design.md): LiteMedSAM was
trained with boxes; a point prompt on a real nucleus gives mean Dice 0.03 against 0.70 for its box.
So the prompts are **box proposals**: stain blobs of the tile (hematoxylin density on brightfield,
brightness on fluorescence), each box decoded through the decoder's prompt axis in batches, then
filtered by predicted IoU and stability score, de-duplicated by mask NMS, specks removed.

Seams: tiles overlap by ``overlap_px`` model px (more than an object's diameter), blobs touching a
tile's border are not proposed (their extent is unknown there), and a tile keeps only the objects
whose mask centroid lies in its ``core_l0`` (cores are disjoint and cover the slide), so an object
cut by one tile's border is segmented whole by the tile that owns it. :class:`SeamDeduper` removes
the rare object kept by two neighbours (centroid on a core boundary).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from shapely.geometry.base import BaseGeometry

from wsisam.calib.objects import stained_objects
from wsisam.runtime.model import SamRuntime
from wsisam.runtime.postprocess import logits_to_crop
from wsisam.runtime.preprocess import InputGeometry, boxes_to_prompts
from wsisam.runtime.tiling import TileRequest
from wsisam.runtime.writers.geojson import mask_to_polygons


@dataclass(frozen=True)
class AutoConfig:
    """Automatic-mode settings (model px unless named otherwise)."""

    overlap_px: int = 64
    min_tissue: float = 0.05
    pred_iou_thresh: float = 0.5
    stability_thresh: float = 0.8
    stability_offset: float = 1.0
    nms_iou: float = 0.5
    min_area_px: int = 20
    max_proposals: int = 128
    prompt_batch: int = 64
    object_class: str = "Nucleus"


@dataclass
class Detection:
    """One object: level-0 ``geometry`` with its predicted IoU, stability score and owner tile."""

    geometry: BaseGeometry
    score: float
    stability: float
    tile_index: int
    centroid_l0: tuple[float, float]


def propose_boxes(rgb: np.ndarray, fluorescence: bool, cfg: AutoConfig) -> np.ndarray:
    """Box proposals (K, 4) xyxy in tile px from stain blobs not touching the tile border."""
    src = 255 - rgb if fluorescence else rgb  # bright nuclei on dark → dark-on-light for the OD
    objs = stained_objects(src, min_area_px=cfg.min_area_px, max_objects=cfg.max_proposals)
    return np.array([o.box_xyxy for o in objs], np.float32).reshape(-1, 4)


def stability_score(logits: np.ndarray, offset: float) -> float:
    """SAM's stability: IoU of the masks thresholded at +offset and -offset."""
    union = int((logits > -offset).sum())
    return 1.0 if union == 0 else float((logits > offset).sum() / union)


def remove_specks(mask: np.ndarray, min_area_px: int) -> np.ndarray:
    """Keep the connected components of ``mask`` (H, W bool) with at least ``min_area_px`` px."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= min_area_px]
    return np.isin(labels, keep) if keep else np.zeros_like(mask, bool)


def mask_nms(masks: list[np.ndarray], scores: list[float], iou_thresh: float) -> list[int]:
    """Indices kept by greedy mask NMS (highest score first)."""
    order = np.argsort(scores)[::-1]
    kept: list[int] = []
    flat = [m.reshape(-1) for m in masks]
    areas = [int(f.sum()) for f in flat]
    for i in order:
        for j in kept:
            inter = int(np.logical_and(flat[i], flat[j]).sum())
            if inter > iou_thresh * (areas[i] + areas[j] - inter):
                break
        else:
            kept.append(int(i))
    return kept


def decode_tile(rt: SamRuntime, embedding: np.ndarray, boxes_in: np.ndarray,
                geom: InputGeometry, cfg: AutoConfig) -> list[tuple[np.ndarray, float, float]]:
    """Masks (tile frame, bool), predicted IoUs and stability scores of the boxes that pass the
    filters; decoded ``cfg.prompt_batch`` prompts per call."""
    n = rt.spec.input_px
    out = []
    for start in range(0, len(boxes_in), cfg.prompt_batch):
        coords, labels = boxes_to_prompts(boxes_in[start:start + cfg.prompt_batch])
        low_res, iou = rt.decode(embedding, coords, labels)
        for lg, s in zip(low_res[:, 0], iou[:, 0]):
            if s < cfg.pred_iou_thresh:
                continue
            logits = logits_to_crop(lg, geom, n)
            stab = stability_score(logits, cfg.stability_offset)
            if stab < cfg.stability_thresh:
                continue
            mask = remove_specks(logits > 0, cfg.min_area_px)
            if mask.any():
                out.append((mask, float(s), stab))
    return out


def tile_detections(tile: TileRequest, candidates: list[tuple[np.ndarray, float, float]],
                    cfg: AutoConfig) -> list[Detection]:
    """NMS within the tile, then the objects this tile owns (centroid in its core), in level-0."""
    keep = mask_nms([c[0] for c in candidates], [c[1] for c in candidates], cfg.nms_iou)
    px_l0 = (tile.box_l0[2] - tile.box_l0[0]) / tile.size_px
    cx0, cy0, cx1, cy1 = tile.core_l0
    dets = []
    for i in keep:
        mask, score, stab = candidates[i]
        ys, xs = np.nonzero(mask)
        cx = tile.box_l0[0] + (xs.mean() + 0.5) * px_l0
        cy = tile.box_l0[1] + (ys.mean() + 0.5) * px_l0
        if not (cx0 <= cx < cx1 and cy0 <= cy < cy1):
            continue
        poly = mask_to_polygons(mask, (px_l0, px_l0, tile.box_l0[0], tile.box_l0[1]))
        if poly is not None:
            dets.append(Detection(poly, score, stab, tile.index, (float(cx), float(cy))))
    return dets


class SeamDeduper:
    """Drops an object that overlaps (IoU > ``iou``) one already kept from a neighbouring tile.

    Only objects within ``margin_l0`` of their tile core's boundary can be duplicates, so only those
    are remembered, bucketed on a grid of ``cell_l0``; :meth:`evict_above` forgets rows that no
    later tile can touch, which keeps memory bounded in the slide size.
    """

    def __init__(self, cell_l0: float, margin_l0: float, iou: float = 0.5) -> None:
        self.cell, self.margin, self.iou = cell_l0, margin_l0, iou
        self._cells: dict[tuple[int, int], list[BaseGeometry]] = {}
        self.removed = 0

    def _keys(self, g: BaseGeometry) -> list[tuple[int, int]]:
        x0, y0, x1, y1 = g.bounds
        c = self.cell
        return [(i, j) for i in range(int(x0 // c), int(x1 // c) + 1)
                for j in range(int(y0 // c), int(y1 // c) + 1)]

    def keep(self, det: Detection, core_l0: tuple[int, int, int, int]) -> bool:
        """True if ``det`` is new; remembers it when it lies near its core's boundary."""
        g = det.geometry
        for key in self._keys(g):
            for other in self._cells.get(key, ()):
                inter = g.intersection(other).area
                if inter and inter / (g.area + other.area - inter) > self.iou:
                    self.removed += 1
                    return False
        x0, y0, x1, y1 = g.bounds
        cx0, cy0, cx1, cy1 = core_l0
        m = self.margin
        if x0 < cx0 + m or y0 < cy0 + m or x1 > cx1 - m or y1 > cy1 - m:
            for key in self._keys(g):
                self._cells.setdefault(key, []).append(g)
        return True

    def evict_above(self, y_l0: float) -> None:
        """Forget objects in grid rows wholly above ``y_l0`` (no later tile reaches them)."""
        row = int(y_l0 // self.cell) - 1
        for key in [k for k in self._cells if k[1] < row]:
            del self._cells[key]

    def __len__(self) -> int:
        return sum(len(v) for v in self._cells.values())


def describe(cfg: AutoConfig) -> dict[str, Any]:
    """The settings as recorded in the report."""
    return {"prompt_scheme": "box proposals from stain blobs", **vars(cfg)}
