"""Automatic (prompt-free) segmentation of one tile: prompts, batched decoding, filters, NMS and
which objects the tile owns.

Prompt schemes (``AutoConfig.prompt_scheme``), compared on the real slides by
``bench/auto_prompts.py`` (docs/design.md, "Automatic mode"):
- ``"boxes"`` (default): box proposals from the tile's stain blobs — hematoxylin density on
  brightfield, brightness on fluorescence, touching blobs split at their necks — one box prompt
  per blob. LiteMedSAM was trained on
  boxes; the model turns a rough blob box into the object's outline.
- ``"points"``: SAM's automatic-mask-generator grid of ``points_per_side``² single points.

Filters, as SAM's automatic mask generator: predicted IoU ≥ ``pred_iou_thresh``, stability
score ≥ ``stability_thresh``, specks below ``min_object_um2`` removed, then greedy mask NMS.

Sizes are physical (µm) and become model px at the model's resolution (:class:`TileSizes`).
Seams (frames: *tile* = model px of one tile, ``*_l0`` = level-0 px). Tiles overlap by
``max_object_um``; objects are at most that across (larger proposals and masks are dropped), so
every object lies whole inside some tile. Masks touching a tile border that is not the slide's
edge are dropped (their extent is unknown there), and a tile keeps only the objects whose mask
centroid lies in its core (cores are disjoint and cover the slide): an object cut by one tile's
border is kept, whole, from the tile that owns its centre. :class:`SeamDeduper` removes the rare
object found by two neighbours (centroid on a core boundary).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
from shapely.geometry.base import BaseGeometry

from wsisam.runtime.postprocess import logits_to_crop, select_mask_token
from wsisam.runtime.preprocess import InputGeometry
from wsisam.runtime.tiling import TileRequest
from wsisam.runtime.writers.geojson import mask_to_polygons

from wsisam.systems.sam.spec import SCHEMES


@dataclass(frozen=True)
class AutoConfig:
    """Automatic-mode settings; sizes in µm (the defaults are for nuclei)."""

    prompt_scheme: str = "boxes"
    max_object_um: float = 32.0  # largest object side kept; also the tile overlap
    min_tissue: float = 0.05  # tiles with less tissue (thumbnail mask) are not read
    pred_iou_thresh: float = 0.5
    stability_thresh: float = 0.6
    stability_offset: float = 1.0
    nms_iou: float = 0.5
    min_object_um2: float = 5.0  # smaller masks, components and blobs are specks
    # "boxes": touching blobs are split at their necks (distance-transform seeds at least this
    # deep, i.e. objects ≥ 2× this across); 0 keeps Otsu's connected components whole.
    split_radius_um: float = 2.0
    max_proposals: int = 128  # per tile
    # Prompts are decoded only when their centre lies in the tile's core grown by this margin:
    # the others' objects belong to a neighbour (ownership is by mask centroid, which sits within
    # a few µm of the prompt's centre for objects ≤ max_object_um).
    core_margin_um: float = 4.0
    points_per_side: int = 16  # "points" scheme
    # Prompts per decoder call. The decoder's activations grow with it, and on the CPU larger
    # calls run no faster per prompt: 8 keeps a CMU-1 run's peak RSS 0.4 GiB below 16's
    # (bench/memory.py, docs/benchmarks.md). GPUs want larger calls.
    prompt_batch: int = 8
    # Tissue tiles sampled (evenly over the plan) for the slide-wide stain threshold; 0: each
    # tile thresholds itself (Otsu), which makes blobs depend on where the seams fall.
    threshold_tiles: int = 16
    object_class: str = "Nucleus"

    def __post_init__(self) -> None:
        if self.prompt_scheme not in SCHEMES:
            from wsisam.errors import ConfigError

            raise ConfigError(f"unknown prompt scheme '{self.prompt_scheme}'; use one of "
                              f"{', '.join(SCHEMES)}")


@dataclass(frozen=True)
class TileSizes:
    """An :class:`AutoConfig`'s sizes in model px at the model's µm/px."""

    overlap_px: int
    min_area_px: int
    split_radius_px: float
    core_margin_px: float

    @classmethod
    def of(cls, cfg: AutoConfig, model_mpp: float) -> "TileSizes":
        return cls(overlap_px=max(1, round(cfg.max_object_um / model_mpp)),
                   min_area_px=max(1, round(cfg.min_object_um2 / model_mpp**2)),
                   split_radius_px=cfg.split_radius_um / model_mpp,
                   core_margin_px=cfg.core_margin_um / model_mpp)


@dataclass
class Candidate:
    """A filtered mask of one tile: ``mask`` (h, w) bool cropped to ``box`` (x0, y0, x1, y1 tile
    px, exclusive), its predicted IoU ``score`` and ``stability``."""

    mask: np.ndarray
    box: tuple[int, int, int, int]
    score: float
    stability: float

    @property
    def area(self) -> int:
        return int(self.mask.sum())


@dataclass
class Detection:
    """One object: level-0 ``geometry``, predicted IoU, stability, owner tile, mask centroid."""

    geometry: BaseGeometry
    score: float
    stability: float
    tile_index: int
    centroid_l0: tuple[float, float]


def core_in_tile(tile: TileRequest) -> tuple[float, float, float, float]:
    """The tile's core (x0, y0, x1, y1) in tile px."""
    px_l0 = (tile.box_l0[2] - tile.box_l0[0]) / tile.size_px
    ox, oy = tile.box_l0[:2]
    x0, y0, x1, y1 = tile.core_l0
    return (x0 - ox) / px_l0, (y0 - oy) / px_l0, (x1 - ox) / px_l0, (y1 - oy) / px_l0


def near_core(coords: np.ndarray, labels: np.ndarray, tile: TileRequest,
              margin_px: float) -> np.ndarray:
    """(K,) bool: prompts whose centre (mean of the non-padding points, tile px) lies in the
    tile's core grown by ``margin_px``."""
    real = (labels != -1)[..., None]
    centre = (coords * real).sum(1) / np.maximum(real.sum(1), 1)
    x0, y0, x1, y1 = core_in_tile(tile)
    return ((centre[:, 0] >= x0 - margin_px) & (centre[:, 0] < x1 + margin_px)
            & (centre[:, 1] >= y0 - margin_px) & (centre[:, 1] < y1 + margin_px))


def decode_prompts(decode: Any, embedding: np.ndarray, coords: np.ndarray, labels: np.ndarray,
                   multimask: bool, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """All prompts of one tile through ``decode(embedding, coords, labels)`` in batches of
    ``batch``; one mask token per prompt (:func:`select_mask_token`). Returns logits (K, mh, mw)
    and scores (K,)."""
    logits, scores = [], []
    single_points = multimask and coords.shape[1] == 2 and bool((labels[:, 1] == -1).all())
    for start in range(0, len(coords), batch):
        low_res, iou = decode(embedding, coords[start:start + batch], labels[start:start + batch])
        lg, sc = select_mask_token(low_res, iou, np.full(len(low_res), single_points))
        logits.append(lg)
        scores.append(sc)
    if not logits:
        return np.zeros((0, 1, 1), np.float32), np.zeros(0, np.float32)
    return np.concatenate(logits), np.concatenate(scores)


def stability_score(logits: np.ndarray, offset: float) -> float:
    """SAM's stability: IoU of the masks thresholded at +offset and -offset."""
    union = int((logits > -offset).sum())
    return 1.0 if union == 0 else float((logits > offset).sum() / union)


def remove_specks(mask: np.ndarray, min_area_px: int) -> np.ndarray:
    """Keep the connected components of ``mask`` (H, W bool) with at least ``min_area_px`` px."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area_px
    return keep[labels]


def open_sides(tile: TileRequest, level0_wh: tuple[int, int]) -> tuple[bool, bool, bool, bool]:
    """Which tile borders (left, top, right, bottom) lie inside the slide, i.e. may cut objects."""
    x0, y0, x1, y1 = tile.box_l0
    return x0 > 0, y0 > 0, x1 < level0_wh[0], y1 < level0_wh[1]


def filter_masks(logits: np.ndarray, scores: np.ndarray, geom: InputGeometry, input_px: int,
                 sides: tuple[bool, bool, bool, bool], cfg: AutoConfig,
                 sizes: TileSizes) -> list[Candidate]:
    """Masks (tile frame) that pass the score, stability, size and border filters."""
    out = []
    for lg, s in zip(logits, scores):
        if s < cfg.pred_iou_thresh:
            continue
        crop_logits = logits_to_crop(lg, geom, input_px)
        stab = stability_score(crop_logits, cfg.stability_offset)
        if stab < cfg.stability_thresh:
            continue
        mask = remove_specks(crop_logits > 0, sizes.min_area_px)
        ys, xs = np.nonzero(mask)
        if not len(xs):
            continue
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        h, w = mask.shape
        if max(box[2] - box[0], box[3] - box[1]) > sizes.overlap_px:
            continue
        touches = (box[0] == 0, box[1] == 0, box[2] == w, box[3] == h)
        if any(t and side for t, side in zip(touches, sides)):
            continue
        out.append(Candidate(mask[box[1]:box[3], box[0]:box[2]], box, float(s), stab))
    return out


def _intersection(a: Candidate, b: Candidate) -> int:
    x0, y0 = max(a.box[0], b.box[0]), max(a.box[1], b.box[1])
    x1, y1 = min(a.box[2], b.box[2]), min(a.box[3], b.box[3])
    if x1 <= x0 or y1 <= y0:
        return 0
    ma = a.mask[y0 - a.box[1]:y1 - a.box[1], x0 - a.box[0]:x1 - a.box[0]]
    mb = b.mask[y0 - b.box[1]:y1 - b.box[1], x0 - b.box[0]:x1 - b.box[0]]
    return int(np.logical_and(ma, mb).sum())


def mask_nms(cands: list[Candidate], iou_thresh: float) -> list[Candidate]:
    """Greedy mask NMS, highest predicted IoU first (only box-overlapping pairs are compared)."""
    kept: list[Candidate] = []
    areas: dict[int, int] = {}
    for c in sorted(cands, key=lambda c: -c.score):
        ac = c.area
        for k in kept:
            inter = _intersection(c, k)
            if inter and inter > iou_thresh * (ac + areas[id(k)] - inter):
                break
        else:
            kept.append(c)
            areas[id(c)] = ac
    return kept


def owned_detections(tile: TileRequest, cands: list[Candidate]) -> list[Detection]:
    """The candidates whose mask centroid lies in the tile's core, as level-0 polygons."""
    px_l0 = (tile.box_l0[2] - tile.box_l0[0]) / tile.size_px
    cx0, cy0, cx1, cy1 = tile.core_l0
    dets = []
    for c in cands:
        ys, xs = np.nonzero(c.mask)
        cx = tile.box_l0[0] + (c.box[0] + xs.mean() + 0.5) * px_l0
        cy = tile.box_l0[1] + (c.box[1] + ys.mean() + 0.5) * px_l0
        if not (cx0 <= cx < cx1 and cy0 <= cy < cy1):
            continue
        poly = mask_to_polygons(c.mask, (px_l0, px_l0, tile.box_l0[0] + c.box[0] * px_l0,
                                         tile.box_l0[1] + c.box[1] * px_l0))
        if poly is not None:
            dets.append(Detection(poly, c.score, c.stability, tile.index, (float(cx), float(cy))))
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
        if y_l0 == float("inf"):
            self._cells.clear()
            return
        row = int(y_l0 // self.cell) - 1
        for key in [k for k in self._cells if k[1] < row]:
            del self._cells[key]

    def __len__(self) -> int:
        return sum(len(v) for v in self._cells.values())


def describe(cfg: AutoConfig) -> dict[str, Any]:
    """The settings as recorded in the report."""
    scheme = ("box proposals from stain blobs" if cfg.prompt_scheme == "boxes"
              else f"{cfg.points_per_side}×{cfg.points_per_side} point grid")
    return {"prompts": scheme, **asdict(cfg)}
