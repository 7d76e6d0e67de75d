"""Tile plan over a slide: which level-0 squares the model sees, and which part of each it owns.

Pure geometry (no OpenSlide), so it is testable anywhere and shared by the runtime and calibration.

Frames: ``*_l0`` is level-0 pixels (x right, y down, boxes are half-open ``(x0, y0, x1, y1)``);
the tissue mask is in the thumbnail frame, ``mask_downsample`` level-0 px per mask px.
A tile covers ``tile_px`` model pixels at ``target_mpp``, i.e. ``tile_px * target_mpp / slide_mpp``
level-0 px. Neighbouring tiles overlap by ``overlap_px`` model px; each tile *owns* its core, the
part nearer to it than to any neighbour, so an object cut by one tile's edge is kept from the tile
that sees it whole (the one owning its centre) and seams disappear.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from wsisam.errors import ConfigError

# Pyramid downsamples are stored rounded (e.g. 4.000287 for "4×"); a level counts as usable when
# it is at most this much finer than asked.
LEVEL_SLACK = 1e-3

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class TileRequest:
    """One model tile.

    index: position in the plan (row-major over the full grid, kept tiles only, renumbered 0..).
    box_l0: the square the model reads, (x0, y0, x1, y1) level-0 px; may overhang the slide's
        right/bottom edge (the reader fills white there).
    level: pyramid level to read it from (largest downsample ≤ the tile's).
    size_px: side of the model input, px.
    core_l0: the part of ``box_l0`` this tile owns, clipped to the slide; cores of the full grid
        tile the slide exactly without overlap.
    """

    index: int
    box_l0: Box
    level: int
    size_px: int
    core_l0: Box


def level_for_downsample(level_downsamples: Sequence[float], downsample: float) -> int:
    """Index of the level with the largest downsample ≤ ``downsample`` (+1e-3 slack); 0 if none."""
    best = 0
    for i, ds in enumerate(level_downsamples):
        if ds <= downsample + LEVEL_SLACK and ds > level_downsamples[best]:
            best = i
    return best


def tile_geometry(slide_mpp: float, target_mpp: float, tile_px: int,
                  overlap_px: int) -> tuple[int, int]:
    """(side_l0, stride_l0): integer level-0 side and step of the tile grid.

    Integers so that every tile has the same level-0 size, i.e. one scale for the whole run.
    """
    if slide_mpp <= 0 or target_mpp <= 0:
        raise ConfigError(f"MPP must be positive (slide {slide_mpp}, target {target_mpp}); "
                          "pass a valid --mpp")
    if tile_px <= 0 or not 0 <= overlap_px < tile_px:
        raise ConfigError(f"tile overlap must be in [0, tile size): got tile {tile_px} px, "
                          f"overlap {overlap_px} px; choose a smaller overlap")
    side_l0 = max(1, round(tile_px * target_mpp / slide_mpp))
    stride_l0 = max(1, round(side_l0 * (tile_px - overlap_px) / tile_px))
    return side_l0, stride_l0


def _axis(length_l0: int, side_l0: int, stride_l0: int) -> tuple[np.ndarray, np.ndarray]:
    """Tile origins and core edges along one axis.

    Returns (origins (n,), edges (n+1,)): tile i spans [origins[i], origins[i] + side) and owns
    [edges[i], edges[i+1]). Edges sit in the middle of each overlap; the first is 0 and the last
    is ``length_l0``, so cores partition the axis.
    """
    n = max(1, math.ceil(max(length_l0 - side_l0, 0) / stride_l0) + 1)
    origins = np.arange(n, dtype=np.int64) * stride_l0
    mids = origins[:-1] + (side_l0 + stride_l0) // 2
    edges = np.concatenate([[0], np.minimum(mids, length_l0), [length_l0]])
    return origins, edges


class _MaskIntegral:
    """O(1) tissue fraction of any level-0 box, from the thumbnail-frame mask's integral image."""

    def __init__(self, mask: np.ndarray, downsample_xy: tuple[float, float]):
        self.h, self.w = mask.shape
        self.sx, self.sy = downsample_xy
        self.sat = np.zeros((self.h + 1, self.w + 1), np.int64)
        self.sat[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)

    def fraction(self, box_l0: Box) -> float:
        x0, y0, x1, y1 = box_l0
        mx0, mx1 = round(x0 / self.sx), round(x1 / self.sx)
        my0, my1 = round(y0 / self.sy), round(y1 / self.sy)
        area = max(mx1 - mx0, 1) * max(my1 - my0, 1)
        cx0, cx1 = min(max(mx0, 0), self.w), min(max(mx1, 0), self.w)
        cy0, cy1 = min(max(my0, 0), self.h), min(max(my1, 0), self.h)
        s = self.sat
        inside = s[cy1, cx1] - s[cy0, cx1] - s[cy1, cx0] + s[cy0, cx0]
        # off-mask area (overhang) counts as background: a sliver of slide is not a tissue tile
        return float(inside) / area


def plan_tiles(level0_wh: tuple[int, int], slide_mpp: float, target_mpp: float, tile_px: int,
               overlap_px: int, tissue_mask: np.ndarray | None = None,
               mask_downsample: float | tuple[float, float] | None = None,
               min_tissue: float = 0.05,
               level_downsamples: Sequence[float] = (1.0,)) -> list[TileRequest]:
    """Tiles covering a slide of ``level0_wh`` (W, H) level-0 px, row-major.

    Args:
        slide_mpp, target_mpp: µm per level-0 px and per model px.
        tile_px, overlap_px: model input side and overlap between neighbours, model px.
        tissue_mask: optional (h, w) bool, thumbnail frame; tiles whose box has a tissue fraction
            below ``min_tissue`` are dropped (their cores are then not covered).
        mask_downsample: level-0 px per mask px (scalar or (x, y)); by default W/w and H/h.
        level_downsamples: the slide's pyramid, to pick each tile's read level.
    Returns:
        the kept tiles, ``index`` renumbered 0.. in row-major order.
    """
    w0, h0 = level0_wh
    side_l0, stride_l0 = tile_geometry(slide_mpp, target_mpp, tile_px, overlap_px)
    xs, x_edges = _axis(w0, side_l0, stride_l0)
    ys, y_edges = _axis(h0, side_l0, stride_l0)
    level = level_for_downsample(level_downsamples, side_l0 / tile_px)
    integral = None
    if tissue_mask is not None:
        integral = _MaskIntegral(tissue_mask, _mask_scale(level0_wh, tissue_mask, mask_downsample))
    tiles: list[TileRequest] = []
    for j, y in enumerate(ys):
        for i, x in enumerate(xs):
            box = (int(x), int(y), int(x) + side_l0, int(y) + side_l0)
            if integral is not None and integral.fraction(box) < min_tissue:
                continue
            core = (int(x_edges[i]), int(y_edges[j]), int(x_edges[i + 1]), int(y_edges[j + 1]))
            tiles.append(TileRequest(len(tiles), box, level, tile_px, core))
    return tiles


def _mask_scale(level0_wh: tuple[int, int], mask: np.ndarray,
                mask_downsample: float | tuple[float, float] | None) -> tuple[float, float]:
    """(sx, sy) level-0 px per mask px."""
    if mask_downsample is None:
        return level0_wh[0] / mask.shape[1], level0_wh[1] / mask.shape[0]
    if isinstance(mask_downsample, (int, float)):
        return float(mask_downsample), float(mask_downsample)
    return float(mask_downsample[0]), float(mask_downsample[1])


def spread(tiles: Sequence[TileRequest], n: int) -> list[TileRequest]:
    """Up to ``n`` tiles spread evenly over a plan (first and last included), for slide-wide
    statistics from a sample."""
    n = min(n, len(tiles))
    if n <= 0:
        return []
    return [tiles[i] for i in np.linspace(0, len(tiles) - 1, n).round().astype(int)]
