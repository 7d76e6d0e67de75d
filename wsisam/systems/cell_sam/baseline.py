"""Classical nucleus baseline: hematoxylin (colour deconvolution) + Otsu + distance watershed."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.color import rgb2hed
from skimage.feature import peak_local_max
from skimage.filters import gaussian, threshold_otsu
from skimage.morphology import remove_small_holes, remove_small_objects
from skimage.segmentation import watershed


def classical_nuclei(rgb: np.ndarray, mpp: float, min_area_um2: float = 10.0,
                     seed_radius_um: float = 2.0) -> np.ndarray:
    """(H,W,3) uint8 H&E at ``mpp`` µm/px → (H,W) int32 nucleus instance labels.

    Hematoxylin channel, smoothed (σ 0.5 µm), Otsu foreground, holes/specks removed; seeds are
    distance-transform maxima ≥ ``seed_radius_um`` apart; watershed on −distance inside the mask.
    """
    hema = gaussian(rgb2hed(rgb)[..., 0], sigma=0.5 / mpp)
    fg = hema > threshold_otsu(hema)
    min_px = max(1, round(min_area_um2 / mpp**2))
    fg = remove_small_holes(remove_small_objects(fg, max_size=min_px), max_size=min_px)
    dist = ndi.distance_transform_edt(fg)
    peaks = peak_local_max(dist, min_distance=max(1, round(seed_radius_um / mpp)),
                           labels=ndi.label(fg)[0], exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-dist, markers, mask=fg)
    return remove_small_objects(labels, max_size=min_px).astype(np.int32)
