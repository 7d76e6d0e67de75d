"""Real tissue tiles sampled from slides: for export parity, calibration and accuracy gates.

Tiles come from the tissue of each slide (thumbnail tissue mask), spread over the slides in turn,
read at the model's working resolution with the same reader the runtime uses, so that what is
checked or calibrated is what the runtime sees.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsisam.runtime.slide import open_slide, read_region_at
from wsisam.runtime.tiling import plan_tiles
from wsisam.runtime.tissue import TissueTile, tissue_mask

log = logging.getLogger(__name__)

THUMB_PX = 1024
# File suffixes treated as slides when a folder is given (parity, calibration).
SLIDE_SUFFIXES = (".svs", ".ndpi", ".tif", ".tiff", ".mrxs", ".scn")


@dataclass(frozen=True)
class TissuePlan:
    """Tissue tiles of one slide: level-0 ``boxes`` and the thumbnail (h, w, 3) uint8 they were
    planned on, ``thumb_downsample`` level-0 px per thumbnail px (x, y)."""

    boxes: list[tuple[int, int, int, int]]
    thumb: np.ndarray
    thumb_downsample: tuple[float, float]


def plan_tissue_tiles(path: Path, tile_px: int, target_mpp: float, min_tissue: float,
                      assumed_mpp: float, overlap_px: int = 0) -> TissuePlan:
    """Tissue tiles of one slide on a grid whose neighbours overlap by ``overlap_px`` model px."""
    with open_slide(path) as reader:
        mpp = reader.mpp or assumed_mpp
        thumb = reader.thumbnail(THUMB_PX)
        mask = tissue_mask(thumb)
        w0, h0 = reader.level_dimensions[0]
        tiles = plan_tiles(
            (w0, h0), mpp, target_mpp, tile_px, overlap_px, tissue_mask=mask,
            mask_downsample=w0 / mask.shape[1], min_tissue=min_tissue,
            level_downsamples=tuple(reader.level_downsamples),
        )
    return TissuePlan([t.box_l0 for t in tiles], thumb, (w0 / thumb.shape[1], h0 / thumb.shape[0]))


def slide_tile_boxes(path: Path, tile_px: int, target_mpp: float, min_tissue: float,
                     assumed_mpp: float) -> list[tuple[int, int, int, int]]:
    """Level-0 boxes of the non-overlapping tissue tiles of one slide."""
    return plan_tissue_tiles(path, tile_px, target_mpp, min_tissue, assumed_mpp).boxes


def sample_tissue_tiles(slides: list[Path], tile_px: int, target_mpp: float, n: int,
                        seed: int = 0, min_tissue: float = 0.5,
                        assumed_mpp: float = 0.5) -> list[TissueTile]:
    """Up to ``n`` tissue tiles, taken round-robin over ``slides`` in a seeded random order.

    A slide without MPP metadata is read as if at ``assumed_mpp`` (logged).
    """
    rng = np.random.default_rng(seed)
    per_slide: list[tuple[Path, list]] = []
    for path in slides:
        boxes = slide_tile_boxes(Path(path), tile_px, target_mpp, min_tissue, assumed_mpp)
        order = rng.permutation(len(boxes))
        per_slide.append((Path(path), [boxes[i] for i in order]))
    picks: list[tuple[Path, tuple[int, int, int, int]]] = []
    depth = 0
    while len(picks) < n and any(depth < len(b) for _, b in per_slide):
        picks += [(p, b[depth]) for p, b in per_slide if depth < len(b)]
        depth += 1
    picks = picks[:n]
    tiles = []
    for path in dict.fromkeys(p for p, _ in picks):  # one open per slide, order kept
        with open_slide(path) as reader:
            tiles += [TissueTile(str(path), tuple(int(v) for v in box),
                                 read_region_at(reader, box, tile_px))
                      for p, box in picks if p == path]
    if len(tiles) < n:
        log.warning("only %d tissue tiles available from %d slides (%d asked)", len(tiles),
                    len(slides), n)
    return tiles
