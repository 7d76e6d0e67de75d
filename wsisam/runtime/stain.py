"""Classical nucleus-like objects on H&E tiles: box prompts and reference masks without a model.

Used where real prompts are needed on real tissue and no annotations exist: export parity (box
prompts on real tiles), accuracy gates of quantised artefacts, and tests that compare a model's
box-prompted masks with an independent reference. Hematoxylin optical density from colour
deconvolution (Ruifrok & Johnston stain vectors), Otsu threshold, opening, connected components.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Ruifrok & Johnston H&E(+DAB) optical-density stain vectors (rows: H, E, residual)
STAINS = np.array([[0.650, 0.704, 0.286], [0.072, 0.990, 0.105], [0.268, 0.570, 0.776]])
STAINS = STAINS / np.linalg.norm(STAINS, axis=1, keepdims=True)
UNMIX = np.linalg.inv(STAINS)  # optical density (…, 3) @ UNMIX → stain amounts (…, 3)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """(…, 3) uint8 RGB → (…, 3) float32 optical density −ln((I + 1) / 256)."""
    return -np.log((rgb.astype(np.float32) + 1.0) / 256.0)


@dataclass(frozen=True)
class StainedObject:
    """One object: ``box_xyxy`` in tile pixels (x1, y1 exclusive) and its boolean ``mask`` (H, W)."""

    box_xyxy: tuple[int, int, int, int]
    mask: np.ndarray
    area_px: int


def stain_densities(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB → (H, W, 3) float32 optical densities of H, E and residual (≥ 0)."""
    od = optical_density(rgb)
    return np.clip(od.reshape(-1, 3) @ UNMIX.astype(np.float32), 0, None).reshape(
        *rgb.shape[:2], 3
    )


def hematoxylin_density(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB → (H, W) float32 hematoxylin optical density (≥ 0)."""
    od = optical_density(rgb)
    return np.clip(od.reshape(-1, 3) @ UNMIX[:, 0].astype(np.float32), 0, None).reshape(
        rgb.shape[:2]
    )


def stained_objects(rgb: np.ndarray, min_area_px: int = 30, max_area_frac: float = 0.05,
                    border_px: int = 2, max_objects: int = 64, split_px: float = 0.0,
                    threshold: float | None = None) -> list[StainedObject]:
    """Hematoxylin-dense blobs of an H&E tile (H, W, 3) uint8, largest first.

    Objects touching the tile border (within ``border_px``) are dropped since their extent is
    unknown; ``max_area_frac`` drops merged clumps larger than that fraction of the tile.
    ``split_px`` > 0 splits touching objects first (:func:`split_clumps`). ``threshold``: a
    fixed optical-density threshold (e.g. the slide's, :func:`density_threshold`) instead of the
    tile's own Otsu threshold.
    """
    return dense_objects(hematoxylin_density(rgb), min_area_px, max_area_frac, border_px,
                         max_objects, split_px, threshold)


def fluorescent_objects(rgb: np.ndarray, min_area_px: int = 30, max_area_frac: float = 0.05,
                        border_px: int = 2, max_objects: int = 64, split_px: float = 0.0,
                        threshold: float | None = None) -> list[StainedObject]:
    """Bright blobs (e.g. DAPI nuclei) of a fluorescence tile on a dark background; as
    :func:`stained_objects`, with brightness (max over channels) as the density."""
    return dense_objects(fluorescence_density(rgb), min_area_px, max_area_frac, border_px,
                         max_objects, split_px, threshold)


def fluorescence_density(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 → (H, W) float32 brightness (max over channels), the fluorescence
    counterpart of :func:`hematoxylin_density`."""
    return rgb.max(axis=2).astype(np.float32)


def stain_density(rgb: np.ndarray, fluorescence: bool) -> np.ndarray:
    """(H, W, 3) uint8 → (H, W) float32 density of what the blobs are made of: brightness on
    fluorescence, hematoxylin optical density on brightfield (H&E)."""
    return fluorescence_density(rgb) if fluorescence else hematoxylin_density(rgb)


def density_threshold(densities: list[np.ndarray]) -> float:
    """One Otsu threshold for several (H, W) density maps (tiles of one slide), on their
    common scale: the lowest density counted as stained (Otsu on 256 levels: the first level
    above Otsu's). Used slide-wide, a blob does not change with the tile that sees it."""
    values = np.concatenate([d.reshape(-1) for d in densities])
    top = max(float(values.max()), 1e-6)
    scaled = np.clip(values / top * 255.0, 0, 255).astype(np.uint8).reshape(1, -1)
    thr, _ = cv2.threshold(scaled, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return (float(thr) + 1.0) / 255.0 * top


def dense_objects(density: np.ndarray, min_area_px: int = 30, max_area_frac: float = 0.05,
                  border_px: int = 2, max_objects: int = 64, split_px: float = 0.0,
                  threshold: float | None = None) -> list[StainedObject]:
    """Blobs of a (H, W) float density map: at least ``threshold`` (default: the map's own,
    :func:`density_threshold`), 3×3 opening, connected components (split at necks when ``split_px`` > 0) with
    at least ``min_area_px`` px, not touching the border, largest first."""
    if threshold is None:
        threshold = density_threshold([density])
    fg = (density >= threshold).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    if split_px > 0:
        labels = split_clumps(fg, split_px)
        n = int(labels.max()) + 1
        stats = _label_stats(labels, n)
    else:
        n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    hh, ww = fg.shape
    objects = []
    for i in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[i])
        if area < min_area_px or area > max_area_frac * hh * ww:
            continue
        if x < border_px or y < border_px or x + w > ww - border_px or y + h > hh - border_px:
            continue
        objects.append(StainedObject((x, y, x + w, y + h), labels == i, area))
    objects.sort(key=lambda o: -o.area_px)
    return objects[:max_objects]


def split_clumps(fg: np.ndarray, min_radius_px: float) -> np.ndarray:
    """Split touching blobs of a (H, W) 0/1 mask at their necks; returns (H, W) int32 labels
    (0 = background, and the 1-px watershed lines between split parts).

    Seeds are the maxima of the distance transform at least ``min_radius_px`` deep, merged when
    closer than that radius (one seed per roughly round object); a marker watershed on the
    inverted distance grows them back to the mask. A blob without a deep enough seed stays whole.
    """
    fg = (fg > 0).astype(np.uint8)
    dist = cv2.distanceTransform(fg, cv2.DIST_L2, 5)
    r = max(1, int(np.ceil(min_radius_px)))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    peaks = ((dist >= min_radius_px) & (dist >= cv2.dilate(dist, disk) - 1e-3)).astype(np.uint8)
    n_seed, markers = cv2.connectedComponents(cv2.dilate(peaks, disk) & fg)
    n_cc, cc = cv2.connectedComponents(fg, connectivity=8)
    unseeded = np.setdiff1d(np.arange(1, n_cc), cc[markers > 0])
    lut = np.zeros(n_cc, np.int32)
    lut[unseeded] = np.arange(n_seed, n_seed + len(unseeded))
    markers = np.where(markers > 0, markers, lut[cc]).astype(np.int32)
    # the background stays unknown (0): floods meet there, outside the mask, so only the lines
    # between parts of one blob are cut out of it
    relief = (255 - dist * (255.0 / max(float(dist.max()), 1e-6))).astype(np.uint8)
    cv2.watershed(cv2.merge([relief] * 3), markers)
    return np.where((fg > 0) & (markers > 0), markers, 0)


def _label_stats(labels: np.ndarray, n: int) -> np.ndarray:
    """(n, 5) x, y, w, h, area per label (as cv2.connectedComponentsWithStats)."""
    stats = np.zeros((n, 5), np.int64)
    for i in range(1, n):
        ys, xs = np.nonzero(labels == i)
        if len(xs):
            stats[i] = (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1,
                        len(xs))
    return stats
