"""SAM-MIL's host side around SAM (torch-free): tissue contours, SAM's automatic mask generator
on each rendered contour, the released mask compression and the two membership tests, and the
group features.

Frames: *level-0* px (``*_l0``); *render* px: a contour's padded bounding box drawn at
``downsample`` level-0 px per px (a power of two bringing its longest side to ≤ ``render_px``);
*cell*: the released compressed mask grid, ``scale`` render px per cell
(``patch_merge_scale = (patch_px // downsample) // 4``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import cv2
import numpy as np
from shapely.geometry.base import BaseGeometry

from wsisam.registry import Preprocess
from wsisam.runtime.postprocess import logits_to_crop
from wsisam.runtime.preprocess import preprocess_image
from wsisam.runtime.writers.geojson import mask_to_polygons
from wsisam.systems.sam.automatic import decode_prompts, stability_score
from wsisam.systems.sam_mil.spec import AmgConfig


@dataclass(frozen=True)
class Contour:
    """A tissue contour's bounding box padded to whole patches (``box_l0``), its rendering
    ``downsample`` and the compressed-mask ``scale``; ``index`` in contour order."""

    index: int
    box_l0: tuple[int, int, int, int]
    downsample: int
    scale: int

    @property
    def render_wh(self) -> tuple[int, int]:
        x0, y0, x1, y1 = self.box_l0
        return (max(1, (x1 - x0) // self.downsample), max(1, (y1 - y0) // self.downsample))


@dataclass
class Group:
    """One SAM mask of a contour: ``cells`` (h, w) bool, the compressed mask (any-true over
    ``scale``² render px); ``bbox`` (x, y, w, h) render px as SAM reports it; level-0 polygon."""

    contour: Contour
    cells: np.ndarray
    bbox: tuple[int, int, int, int]
    score: float
    stability: float
    area_px: int
    geometry_l0: BaseGeometry | None = None
    members: np.ndarray | None = field(default=None, repr=False)


def render_downsample(longest_l0: int, render_px: int) -> int:
    """2^ceil(log2(longest / render_px)), at least 1 (the released ``process_contour``)."""
    return 2 ** max(0, math.ceil(math.log2(max(longest_l0, 1) / render_px)))


def tissue_contours(tissue: np.ndarray, level0_wh: tuple[int, int], patch_px_l0: int,
                    render_px: int) -> list[Contour]:
    """Contours of the thumbnail tissue mask (``tissue`` (H, W) bool), in OpenCV's order, as
    level-0 boxes padded up to whole patches; contours smaller than one patch are dropped."""
    sx, sy = level0_wh[0] / tissue.shape[1], level0_wh[1] / tissue.shape[0]
    found, _ = cv2.findContours(tissue.astype(np.uint8), cv2.RETR_EXTERNAL,
                                cv2.CHAIN_APPROX_SIMPLE)
    out: list[Contour] = []
    for c in found:
        x, y, w, h = cv2.boundingRect(c)
        x0, y0 = int(x * sx), int(y * sy)
        wl = math.ceil(w * sx / patch_px_l0) * patch_px_l0
        hl = math.ceil(h * sy / patch_px_l0) * patch_px_l0
        if cv2.contourArea(c) * sx * sy < patch_px_l0**2:
            continue
        ds = render_downsample(max(wl, hl), render_px)
        scale = max(1, (patch_px_l0 // ds) // 4)
        out.append(Contour(len(out), (x0, y0, x0 + wl, y0 + hl), ds, scale))
    return out


def contour_patches(contour: Contour, tissue: np.ndarray, level0_wh: tuple[int, int],
                    patch_px_l0: int) -> list[tuple[int, int]]:
    """Level-0 top-left corners of the patches of a contour (step = size, from its corner)
    whose centre lies on tissue and whose box starts inside the slide."""
    sx, sy = tissue.shape[1] / level0_wh[0], tissue.shape[0] / level0_wh[1]
    x0, y0, x1, y1 = contour.box_l0
    out = []
    for y in range(y0, y1, patch_px_l0):
        for x in range(x0, x1, patch_px_l0):
            if x >= level0_wh[0] or y >= level0_wh[1]:
                continue
            cx = min(int((x + patch_px_l0 / 2) * sx), tissue.shape[1] - 1)
            cy = min(int((y + patch_px_l0 / 2) * sy), tissue.shape[0] - 1)
            if tissue[cy, cx]:
                out.append((x, y))
    return out


def compress(mask: np.ndarray, scale: int) -> np.ndarray:
    """(H, W) bool → (ceil(H/scale), ceil(W/scale)) bool, any-true per cell (the released
    mask compression)."""
    h, w = mask.shape
    hc, wc = -(-h // scale), -(-w // scale)
    padded = np.zeros((hc * scale, wc * scale), bool)
    padded[:h, :w] = mask
    return padded.reshape(hc, scale, wc, scale).any(axis=(1, 3))


# --- SAM's automatic mask generator ----------------------------------------------------------

def crop_boxes(wh: tuple[int, int], n_layers: int, overlap_ratio: float
               ) -> list[tuple[int, tuple[int, int, int, int]]]:
    """(layer, (x0, y0, x1, y1)) render px: the whole image, then 2^i × 2^i overlapping crops
    per layer i (segment-anything ``generate_crop_boxes``)."""
    w, h = wh
    out = [(0, (0, 0, w, h))]
    short = min(w, h)
    for layer in range(1, n_layers + 1):
        n = 2 ** layer
        overlap = int(overlap_ratio * short * (2 / n))
        cw = math.ceil((overlap * (n - 1) + w) / n)
        ch = math.ceil((overlap * (n - 1) + h) / n)
        for j in range(n):
            for i in range(n):
                x0, y0 = int((cw - overlap) * i), int((ch - overlap) * j)
                out.append((layer, (x0, y0, min(x0 + cw, w), min(y0 + ch, h))))
    return out


def point_grid(n: int) -> np.ndarray:
    """(n², 2) points in [0, 1]², cell centres (segment-anything ``build_point_grid``)."""
    offset = 1 / (2 * n)
    side = np.linspace(offset, 1 - offset, n)
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x0, y0 = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    x1, y1 = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def box_nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> np.ndarray:
    """Indices kept by greedy box NMS, highest score first (torchvision ``nms`` semantics)."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    for i in order:
        if not keep or _box_iou(boxes[i:i + 1], boxes[keep]).max() <= thresh:
            keep.append(int(i))
    return np.array(keep, int)


@dataclass
class RawMask:
    """A kept SAM mask: ``mask`` (h, w) bool cropped to ``box`` (x0, y0, x1, y1 render px,
    exclusive), predicted IoU, stability, and the area of the crop it came from."""

    mask: np.ndarray
    box: np.ndarray
    score: float
    stability: float
    crop_area: int


def _filter_batch(logits: np.ndarray, scores: np.ndarray, geom: Any, input_px: int,
                  crop: tuple[int, int, int, int], wh: tuple[int, int], cfg: AmgConfig
                  ) -> list[RawMask]:
    """The masks of one decoder batch that pass the IoU and stability thresholds and do not
    touch an inner crop edge, cropped to their boxes (render px)."""
    x0, y0, x1, y1 = crop
    w, h = wh
    out = []
    for lg, s in zip(logits, scores):
        if s < cfg.pred_iou_thresh:
            continue
        crop_logits = logits_to_crop(lg, geom, input_px)
        stab = stability_score(crop_logits, cfg.stability_offset)
        if stab < cfg.stability_thresh:
            continue
        m = crop_logits > 0
        ys, xs = np.nonzero(m)
        if not len(xs):
            continue
        bx0, by0, bx1, by1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        if ((bx0 == 0 and x0 > 0) or (by0 == 0 and y0 > 0) or (bx1 == x1 - x0 and x1 < w)
                or (by1 == y1 - y0 and y1 < h)):
            continue
        out.append(RawMask(m[by0:by1, bx0:bx1].copy(),
                           np.array([bx0 + x0, by0 + y0, bx1 + x0, by1 + y0]), float(s), stab,
                           (x1 - x0) * (y1 - y0)))
    return out


def automatic_masks(rgb: np.ndarray, encode: Callable[[np.ndarray], np.ndarray],
                    decode: Any, pre: Preprocess, multimask: bool, cfg: AmgConfig
                    ) -> list[RawMask]:
    """SAM's automatic mask generator on one rendered contour ``rgb`` (H, W, 3): per crop,
    the crop encoded once and its grid points decoded ``prompt_batch`` at a time (each batch
    filtered at once, so only kept masks, cropped to their boxes, are held); masks kept with
    predicted IoU ≥ ``pred_iou_thresh`` and stability ≥ ``stability_thresh``, box NMS within
    the crop, masks touching an inner crop edge dropped, then NMS across crops preferring
    smaller crops. ``encode`` (1, 3, n, n) → embedding; ``decode`` as :func:`decode_prompts`."""
    h, w = rgb.shape[:2]
    found: list[RawMask] = []
    for layer, crop in crop_boxes((w, h), cfg.crop_n_layers, cfg.crop_overlap_ratio):
        x0, y0, x1, y1 = crop
        image, geom = preprocess_image(np.ascontiguousarray(rgb[y0:y1, x0:x1]), pre)
        emb = encode(image[None])
        n_side = max(1, cfg.points_per_side // cfg.crop_points_downscale ** layer)
        pts = point_grid(n_side) * np.array([x1 - x0, y1 - y0])
        coords = (pts * geom.scale).astype(np.float32)[:, None, :]
        labels = np.ones((len(coords), 1), np.float32)
        cands: list[RawMask] = []
        for start in range(0, len(coords), cfg.prompt_batch):
            sl = slice(start, start + cfg.prompt_batch)
            logits, scores = decode_prompts(decode, emb, coords[sl], labels[sl], multimask,
                                            cfg.prompt_batch)
            cands.extend(_filter_batch(logits, scores, geom, pre.input_px, crop, (w, h), cfg))
        if cands:
            keep = box_nms(np.stack([c.box for c in cands]).astype(float),
                           np.array([c.score for c in cands]), cfg.box_nms_thresh)
            found.extend(cands[i] for i in keep)
    if len(found) > 1:
        # across crops the smaller crop wins (segment-anything scores by 1 / crop area)
        keep = box_nms(np.stack([f.box for f in found]).astype(float),
                       np.array([1.0 / f.crop_area for f in found]), cfg.crop_nms_thresh)
        found = [found[i] for i in sorted(keep)]
    return found


def to_groups(contour: Contour, masks: list[RawMask]) -> list[Group]:
    """Raw render-frame masks → compressed :class:`Group` s with level-0 polygons."""
    ds = contour.downsample
    w, h = contour.render_wh
    out = []
    for m in masks:
        x0, y0, x1, y1 = (int(v) for v in m.box)
        full = np.zeros((h, w), bool)  # one at a time: the cells align with the render frame
        full[y0:y1, x0:x1] = m.mask
        geom = mask_to_polygons(m.mask, (ds, ds, contour.box_l0[0] + x0 * ds,
                                         contour.box_l0[1] + y0 * ds))
        out.append(Group(contour, compress(full, contour.scale), (x0, y0, x1 - x0, y1 - y0),
                         m.score, m.stability, int(m.mask.sum()), geom))
    return out


# --- membership and group features ------------------------------------------------------------

def members(group: Group, coords_l0: np.ndarray, patch_px_l0: int, membership: str
            ) -> np.ndarray:
    """(N,) bool: the patches (``coords_l0`` (N, 2) level-0 top-left) the group covers.

    ``released`` (``02_extract_features_and_group_feature.py``): the patch's top-left, in render
    px (rounded), must lie in the SAM bbox, and the compressed mask indexed with those render-px
    coordinates, ``cells[py:py+aps, px:px+aps]``, must have a true cell (``aps`` = patch px in
    render px) — the frames differ unless ``scale`` is 1.
    ``corrected``: the patch window ``[p, p+aps)`` in render px overlaps the mask, tested on the
    cells that window covers."""
    c = group.contour
    ds, s = c.downsample, c.scale
    adj = np.round((coords_l0 - np.array(c.box_l0[:2])) / ds).astype(int)
    aps = patch_px_l0 // ds
    hc, wc = group.cells.shape
    # 2-D prefix sums answer "any true cell in this rectangle" for all patches at once
    integral = np.zeros((hc + 1, wc + 1), np.int64)
    integral[1:, 1:] = group.cells.cumsum(0).cumsum(1)

    def any_in(r0: np.ndarray, r1: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
        r0, r1 = np.clip(r0, 0, hc), np.clip(r1, 0, hc)
        c0, c1 = np.clip(c0, 0, wc), np.clip(c1, 0, wc)
        tot = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
        return (tot > 0) & (r1 > r0) & (c1 > c0)

    px, py = adj[:, 0], adj[:, 1]
    if membership == "released":
        bx, by, bw, bh = group.bbox
        in_box = (bx <= px) & (px < bx + bw) & (by <= py) & (py < by + bh)
        # the bbox test keeps px, py ≥ 0, so the released slice never wraps around
        hit = np.zeros(len(adj), bool)
        for i in np.nonzero(in_box)[0]:  # few patches pass the bbox test: a plain loop
            hit[i] = bool(np.any(group.cells[py[i]:py[i] + aps, px[i]:px[i] + aps]))
        return hit
    return any_in(py // s, -(-(py + aps) // s), px // s, -(-(px + aps) // s)) & (
        px + aps > 0) & (py + aps > 0)


def group_features(groups: list[Group], coords_l0: np.ndarray, feats: np.ndarray,
                   patch_px_l0: int, membership: str) -> tuple[np.ndarray, list[Group]]:
    """The group features (G, D): for each group covering ≥ 1 patch, the mean of the features
    (``feats`` (N, D)) of its patches, in group order; and those groups (``members`` set).
    ``released`` uses only the first contour's groups, as the released code does."""
    if membership == "released" and groups:
        first = min(g.contour.index for g in groups)
        groups = [g for g in groups if g.contour.index == first]
    rows, kept = [], []
    for g in groups:
        m = members(g, coords_l0, patch_px_l0, membership)
        if m.any():
            g.members = np.nonzero(m)[0]
            rows.append(feats[m].mean(axis=0))
            kept.append(g)
    d = feats.shape[1]
    return (np.stack(rows).astype(np.float32) if rows else np.zeros((0, d), np.float32)), kept
