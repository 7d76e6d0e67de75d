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
_STAINS = np.array([[0.650, 0.704, 0.286], [0.072, 0.990, 0.105], [0.268, 0.570, 0.776]])
_STAINS = _STAINS / np.linalg.norm(_STAINS, axis=1, keepdims=True)
_UNMIX = np.linalg.inv(_STAINS)


@dataclass(frozen=True)
class StainedObject:
    """One object: ``box_xyxy`` in tile pixels (x1, y1 exclusive) and its boolean ``mask`` (H, W)."""

    box_xyxy: tuple[int, int, int, int]
    mask: np.ndarray
    area_px: int


def stain_densities(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB → (H, W, 3) float32 optical densities of H, E and residual (≥ 0)."""
    od = -np.log((rgb.astype(np.float32) + 1.0) / 256.0)
    return np.clip(od.reshape(-1, 3) @ _UNMIX.astype(np.float32), 0, None).reshape(
        *rgb.shape[:2], 3
    )


def hematoxylin_density(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB → (H, W) float32 hematoxylin optical density (≥ 0)."""
    od = -np.log((rgb.astype(np.float32) + 1.0) / 256.0)
    return np.clip(od.reshape(-1, 3) @ _UNMIX[:, 0].astype(np.float32), 0, None).reshape(
        rgb.shape[:2]
    )


def stained_objects(rgb: np.ndarray, min_area_px: int = 30, max_area_frac: float = 0.05,
                    border_px: int = 2, max_objects: int = 64) -> list[StainedObject]:
    """Hematoxylin-dense blobs of a tile, largest first.

    Objects touching the tile border (within ``border_px``) are dropped since their extent is
    unknown; ``max_area_frac`` drops merged clumps larger than that fraction of the tile.
    """
    h_od = hematoxylin_density(rgb)
    scaled = np.clip(h_od / max(float(h_od.max()), 1e-6) * 255.0, 0, 255).astype(np.uint8)
    _, fg = cv2.threshold(scaled, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
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
