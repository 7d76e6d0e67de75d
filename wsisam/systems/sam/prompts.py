"""SAM's automatic-mode prompt sources: box proposals from stain blobs, or a point grid.

Frames: tile px = model-input px (tiles are read square at ``input_px``).
"""

from __future__ import annotations

import numpy as np

from wsisam.runtime.preprocess import boxes_to_prompts, points_to_prompts
from wsisam.runtime.stain import (density_threshold, fluorescent_objects, stain_density,
                                  stained_objects)
from wsisam.systems.sam.automatic import AutoConfig, TileSizes


def propose(rgb: np.ndarray, fluorescence: bool, cfg: AutoConfig, sizes: TileSizes,
            threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Prompts for one tile (H, W, 3) uint8 (tile px = model-input px: tiles are read square at
    ``input_px``): point_coords (K, P, 2) and point_labels (K, P) for the decoder.

    ``threshold``: the slide's stain threshold (:func:`slide_stain_threshold`); None: the tile's.
    """
    if cfg.prompt_scheme == "points":
        n = cfg.points_per_side
        side = rgb.shape[1]
        c = (np.arange(n, dtype=np.float32) + 0.5) * side / n
        xy = np.stack(np.meshgrid(c, c), -1).reshape(-1, 1, 2)
        return points_to_prompts(list(xy), [np.ones(1, np.float32)] * len(xy))
    find = fluorescent_objects if fluorescence else stained_objects
    objs = find(rgb, min_area_px=sizes.min_area_px, max_objects=cfg.max_proposals,
                split_px=sizes.split_radius_px, threshold=threshold)
    boxes = np.array([o.box_xyxy for o in objs
                      if max(o.box_xyxy[2] - o.box_xyxy[0], o.box_xyxy[3] - o.box_xyxy[1])
                      <= sizes.overlap_px], np.float32).reshape(-1, 4)
    return boxes_to_prompts(boxes)


def slide_stain_threshold(tiles_rgb: list[np.ndarray], fluorescence: bool) -> float | None:
    """One stain threshold for the slide, from a sample of its tissue tiles (each (H, W, 3)
    uint8): blobs then do not change with the tile that sees them, so neighbouring tiles
    propose the same objects at their seams. None without tiles."""
    if not tiles_rgb:
        return None
    return density_threshold([stain_density(t, fluorescence) for t in tiles_rgb])
