"""Tiled pyramidal label TIFF that OpenSlide (generic-tiff), QuPath and tifffile open.

Layout, checked against OpenSlide 4.0.1: single-channel uint8 (MinIsBlack), 256×256 tiles,
Deflate (Adobe, tag 8), pyramid levels as *successive top-level IFDs* with NewSubfileType = 1
on the reduced ones. OpenSlide's generic-tiff driver reads only top-level IFDs: with the levels
in SubIFDs it opens the file with a single level. OpenSlide returns the label value in R, G and B.
Resolution tags are pixels per centimetre (10 000 / mpp) on every level.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile

from wsisam.runtime.writers.atomic import atomic_path


def write_label_pyramid(path: str | os.PathLike[str], label: np.ndarray,
                        mpp_xy: tuple[float, float] | None, tile: int = 256,
                        min_level_px: int = 512) -> Path:
    """Write ``label`` as a tiled pyramidal TIFF, atomically; returns the path.

    Args:
        label: (H, W) uint8, level 0 of the pyramid (class or probability×255 values).
        mpp_xy: (µm/px x, µm/px y) of ``label``'s pixels, or None (no resolution tags).
        tile: tile side, a multiple of 16 (TIFF requirement).
        min_level_px: halve until the longest side is below this.
    """
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(f"expected an (H, W) uint8 label image, got {label.dtype} {label.shape}")
    if tile <= 0 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    levels = label_levels(label, min_level_px)
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=label.size > 2**31) as tw:
            for i, level in enumerate(levels):
                factor = 2**i
                tw.write(
                    level,
                    photometric=tifffile.PHOTOMETRIC.MINISBLACK,
                    tile=(tile, tile),
                    compression=tifffile.COMPRESSION.ADOBE_DEFLATE,
                    subfiletype=tifffile.FILETYPE.REDUCEDIMAGE if i else 0,
                    **_resolution(mpp_xy, factor),
                    metadata=None,
                )
    return Path(path)


def label_levels(label: np.ndarray, min_level_px: int = 512) -> list[np.ndarray]:
    """[label, label/2, label/4, ...] until the longest side is < ``min_level_px``.

    Each level halves with :func:`mode_downsample2`, so class values stay class values.
    """
    levels = [label]
    while max(levels[-1].shape) >= min_level_px and min(levels[-1].shape) >= 2:
        levels.append(mode_downsample2(levels[-1]))
    return levels


def mode_downsample2(label: np.ndarray, strip_rows: int = 1024) -> np.ndarray:
    """(H, W) → (ceil(H/2), ceil(W/2)): the most frequent value of each 2×2 block.

    Ties go to the top-left pixel (plain nearest decimation), so a thin class is not
    swallowed by the background more than nearest decimation would. Works in strips of
    ``strip_rows`` output rows, so its temporaries stay a few MiB whatever the raster's size
    (done in one go they were ~5× the raster: 1.3 GiB for a 16384² one).
    """
    h, w = label.shape
    out = np.empty((-(-h // 2), -(-w // 2)), label.dtype)
    for r in range(0, out.shape[0], strip_rows):
        out[r:r + strip_rows] = _mode_block2(label[2 * r:2 * (r + strip_rows)])
    return out


def _mode_block2(label: np.ndarray) -> np.ndarray:
    h, w = label.shape
    padded = np.pad(label, ((0, h % 2), (0, w % 2)), mode="edge")
    quad = [padded[0::2, 0::2], padded[0::2, 1::2], padded[1::2, 0::2], padded[1::2, 1::2]]
    counts = np.stack([sum((a == b).astype(np.uint8) for b in quad) for a in quad])
    pick = counts.argmax(axis=0).astype(np.uint8)  # first maximum: top-left wins ties
    return np.choose(pick, quad).astype(label.dtype)


def _resolution(mpp_xy: tuple[float, float] | None, factor: int) -> dict:
    """tifffile resolution arguments: pixels per cm at this level, or none without an mpp."""
    if mpp_xy is None:
        return {}
    mx, my = (float(v) * factor for v in mpp_xy)
    if not (mx > 0 and my > 0):
        raise ValueError(f"mpp must be positive, got {mpp_xy}")
    return {"resolution": (1e4 / mx, 1e4 / my),
            "resolutionunit": tifffile.RESUNIT.CENTIMETER}
