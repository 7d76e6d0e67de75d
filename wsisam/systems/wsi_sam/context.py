"""WSI-SAM tile geometry: which LR tile gives each HR tile its context, and how prompts map.

Frames: ``*_l0`` level-0 px; *HR px* / *LR px* are model-input pixels of an HR or LR tile (both
``input_px`` square). An HR tile covers ``side_l0`` level-0 px; an LR tile covers ``lr_scale ×
side_l0`` (the same ``input_px`` at ``lr_scale``× the µm/px). If the HR tile's origin lies
``offset_hr`` HR px inside the LR field, a point maps exactly by

    x_lr = (x_hr + offset_hr) / lr_scale.

Layouts:

- ``concentric`` (the released geometry): every HR tile gets its own LR tile with the same centre,
  ``offset_hr = (lr_scale − 1) · input_px / 2`` — at 1024 px and lr_scale 2: ``x_lr = x_hr/2 + 256``
  (``inference.py`` floors: ``x_hr // 2 + 256``). Two encoder passes per HR tile.
- ``shared``: LR tiles are placed on a grid of step ``side_l0 / 2`` and each serves every HR tile
  lying wholly inside its field; HR tiles are assigned by a greedy set cover (most HR tiles first,
  ties to the placement nearest concentric; the free cover or the best grid-aligned one, whichever
  needs fewer LR tiles). On a non-overlapping HR grid one LR tile serves a
  2×2 block: 1.25 passes per HR tile, with the HR field in a corner of its LR context (offset
  0 or ``input_px`` instead of ``input_px / 2``: 256 LR px off centre at 1024 px). A tile no other
  tile shares with still gets the concentric LR tile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from wsisam.errors import ConfigError
from wsisam.systems.wsi_sam.spec import LR_LAYOUTS

Box = tuple[float, float, float, float]
NAIVE_PASSES_PER_HR_TILE = 2.0  # one HR and one LR encoder pass for every HR tile
_EPS = 1e-6


@dataclass
class LrTile:
    """One LR tile: ``box_l0`` (may overhang the slide; read white there) and the HR tiles
    (indices into the planned HR boxes) it serves."""

    box_l0: Box
    hr_indices: list[int] = field(default_factory=list)


@dataclass
class LrPlan:
    """LR tiles for a list of HR tiles: ``lr_of_hr[i]`` is HR tile i's LR tile and
    ``offsets_hr[i]`` (x, y) its origin inside that LR field, in HR px."""

    layout: str
    lr_tiles: list[LrTile]
    lr_of_hr: list[int]
    offsets_hr: list[tuple[float, float]]

    def concentric_count(self, input_px: int, lr_scale: int) -> int:
        """HR tiles whose LR context is centred on them."""
        c = concentric_offset_px(input_px, lr_scale)
        return sum(abs(ox - c) < 1e-3 and abs(oy - c) < 1e-3 for ox, oy in self.offsets_hr)


def concentric_offset_px(input_px: int, lr_scale: int) -> float:
    """HR px offset of a concentric HR tile inside its LR field (512 at 1024 px, lr_scale 2)."""
    return (lr_scale - 1) * input_px / 2


def concentric_lr_box(hr_box_l0: Box, lr_scale: int) -> Box:
    """The LR field (level-0 box) concentric with an HR box, ``lr_scale``× its side."""
    x0, y0, x1, y1 = (float(v) for v in hr_box_l0)
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, lr_scale * (x1 - x0) / 2
    return (cx - half, cy - half, cx + half, cy + half)


def hr_to_lr(xy_hr: np.ndarray, offset_hr: tuple[float, float] | np.ndarray,
             lr_scale: int) -> np.ndarray:
    """Points (..., 2) x/y in HR px → the same points in LR px, float32."""
    return ((np.asarray(xy_hr, np.float32) + np.asarray(offset_hr, np.float32))
            / np.float32(lr_scale)).astype(np.float32)


def plan_lr_tiles(hr_boxes_l0: list[Box], side_l0: float, input_px: int, lr_scale: int,
                  layout: str) -> LrPlan:
    """LR tiles for HR tiles of side ``side_l0`` (the finest crop; other sizes, e.g. a large
    prompt's own coarser crop, always get their concentric LR tile)."""
    if layout not in LR_LAYOUTS:
        raise ConfigError(f"unknown LR layout '{layout}'; use one of {', '.join(LR_LAYOUTS)}")
    n = len(hr_boxes_l0)
    lr_of_hr = [-1] * n
    offsets: list[tuple[float, float]] = [(0.0, 0.0)] * n
    tiles: list[LrTile] = []
    shareable = [i for i, b in enumerate(hr_boxes_l0)
                 if layout == "shared" and abs((b[2] - b[0]) - side_l0) <= _EPS * side_l0]
    step = side_l0 / 2
    lr_side = lr_scale * side_l0
    for key, members in _best_cover(hr_boxes_l0, shareable, step, lr_side, side_l0, lr_scale):
        lx, ly = key[0] * step, key[1] * step
        tiles.append(LrTile((lx, ly, lx + lr_side, ly + lr_side), members))
        for i in members:
            lr_of_hr[i] = len(tiles) - 1
            offsets[i] = ((hr_boxes_l0[i][0] - lx) * input_px / side_l0,
                          (hr_boxes_l0[i][1] - ly) * input_px / side_l0)
    conc = concentric_offset_px(input_px, lr_scale)
    for i in range(n):
        if lr_of_hr[i] < 0:
            tiles.append(LrTile(concentric_lr_box(hr_boxes_l0[i], lr_scale), [i]))
            lr_of_hr[i] = len(tiles) - 1
            offsets[i] = (conc, conc)
    return LrPlan(layout, tiles, lr_of_hr, offsets)


def _axis_candidates(origin: float, step: float, lr_side: float, hr_side: float) -> range:
    """Grid indices j (LR origin j·step) whose LR span [j·step, j·step + lr_side) holds
    [origin, origin + hr_side)."""
    lo = math.ceil((origin + hr_side - lr_side) / step - _EPS)
    hi = math.floor(origin / step + _EPS)
    return range(lo, hi + 1)


Cover = list[tuple[tuple[int, int], list[int]]]


def _best_cover(boxes: list[Box], members: list[int], step: float, lr_side: float,
                hr_side: float, lr_scale: int) -> Cover:
    """The cover with the fewest LR tiles among the free greedy cover and the greedy covers
    restricted to each non-overlapping LR grid phase (origins ≡ r mod ``2·lr_scale`` steps): on a
    regular HR grid with tissue holes an aligned block partition often beats the free greedy
    (measured: 23 vs 26 LR tiles for 85 tissue tiles)."""
    period = 2 * lr_scale  # LR side in grid steps
    best = _greedy_cover(boxes, members, step, lr_side, hr_side)
    for rx in range(period):
        for ry in range(period):
            cover = _greedy_cover(boxes, members, step, lr_side, hr_side, (period, rx, ry))
            if cover is not None and len(cover) < len(best):
                best = cover
    return best


def _greedy_cover(boxes: list[Box], members: list[int], step: float, lr_side: float,
                  hr_side: float, phase: tuple[int, int, int] | None = None) -> Cover | None:
    """Pick LR grid positions until every HR tile in ``members`` is served: each time the
    position serving the most unserved tiles, ties to the one whose tiles sit nearest the
    concentric offset, then the top-left-most. ``phase`` (period, rx, ry) keeps only positions
    (jx, jy) ≡ (rx, ry) mod period; None if some tile then has no position."""
    hosts: dict[tuple[int, int], list[int]] = {}
    for i in members:
        x0, y0 = boxes[i][0], boxes[i][1]
        keys = [(jx, jy) for jx in _axis_candidates(x0, step, lr_side, hr_side)
                for jy in _axis_candidates(y0, step, lr_side, hr_side)
                if phase is None or (jx % phase[0], jy % phase[0]) == phase[1:]]
        if not keys:
            return None
        for key in keys:
            hosts.setdefault(key, []).append(i)
    conc = (lr_side - hr_side) / 2

    def off_centre(key: tuple[int, int], i: int) -> float:
        return (abs(boxes[i][0] - key[0] * step - conc) + abs(boxes[i][1] - key[1] * step - conc))

    left = set(members)
    picked: Cover = []
    while left:
        def rank(item: tuple[tuple[int, int], list[int]]) -> tuple[float, float, int, int]:
            key, served = item
            new = [i for i in served if i in left]
            return (-len(new), sum(off_centre(key, i) for i in new), key[1], key[0])

        key, served = min(hosts.items(), key=rank)
        new = [i for i in served if i in left]
        picked.append((key, new))
        left.difference_update(new)
    return picked


def passes_summary(hr_passes: int, lr_passes: int, plan: LrPlan, input_px: int,
                   lr_scale: int) -> dict[str, float | int | str]:
    """Encoder passes of a run, for the report (``naive``: one LR pass per HR tile)."""
    return {
        "layout": plan.layout,
        "hr_tiles": hr_passes,
        "lr_tiles": lr_passes,
        "encoder_passes": hr_passes + lr_passes,
        "encoder_passes_per_hr_tile": round((hr_passes + lr_passes) / hr_passes, 4)
        if hr_passes else 0.0,
        "naive_passes_per_hr_tile": NAIVE_PASSES_PER_HR_TILE,
        "hr_tiles_with_concentric_lr": plan.concentric_count(input_px, lr_scale),
    }
