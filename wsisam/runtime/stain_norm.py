"""Colour normalisation of brightfield tiles to a reference stain (Reinhard et al. 2001).

A model trained on a few sites' H&E sees another site's stain as a shift in colour; mapping each
slide's tissue colour statistics (per-channel mean and standard deviation in CIE L*a*b*) onto
the training set's is the classic, cheap remedy. Statistics are taken over tissue pixels only
(not the white glass), per slide or image, never per tile: a stroma-only tile normalised to
statistics of nucleus-rich tissue would be pushed towards hematoxylin.
"""

from __future__ import annotations

from typing import Iterable

import cv2
import numpy as np

from wsisam.runtime.stain import STAINS, UNMIX, optical_density

#: L* above this (0-100) with low chroma is glass, not tissue
GLASS_L = 88.0
GLASS_CHROMA = 8.0
MIN_TISSUE_PX = 256


def to_lab(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB → (H, W, 3) float32 L*a*b* (L 0-100, a/b about ±100)."""
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def tissue_lab(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) float32 L*a*b* of the tissue pixels of an RGB image (glass dropped)."""
    lab = to_lab(rgb).reshape(-1, 3)
    glass = (lab[:, 0] > GLASS_L) & (np.hypot(lab[:, 1], lab[:, 2]) < GLASS_CHROMA)
    return lab[~glass]


def lab_stats(rgbs: Iterable[np.ndarray]) -> np.ndarray | None:
    """Pooled tissue statistics of RGB images → (2, 3) float32 [mean, std] per L*a*b* channel,
    or None when there are fewer than ``MIN_TISSUE_PX`` tissue pixels."""
    px = [tissue_lab(rgb) for rgb in rgbs]
    pooled = np.concatenate(px) if px else np.zeros((0, 3), np.float32)
    if len(pooled) < MIN_TISSUE_PX:
        return None
    return np.stack([pooled.mean(0), pooled.std(0) + 1e-3]).astype(np.float32)


def normalise(rgb: np.ndarray, source: np.ndarray | None, reference: np.ndarray | None
              ) -> np.ndarray:
    """(H, W, 3) uint8 RGB with stats ``source`` mapped onto ``reference`` (each (2, 3) from
    :func:`lab_stats`); unchanged when either is None."""
    if source is None or reference is None:
        return rgb
    lab = to_lab(rgb)
    lab = (lab - source[0]) * (reference[1] / source[1]) + reference[0]
    lab[..., 0] = np.clip(lab[..., 0], 0, 100)
    out = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB)
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


def as_reference(stats: np.ndarray | list | None) -> np.ndarray | None:
    """Stored statistics → (2, 3) float32 reference, or None (absent or all zeros: a model
    trained without normalisation)."""
    if stats is None:
        return None
    ref = np.asarray(stats, np.float32).reshape(2, 3)
    return None if not ref.any() else ref


def normalise_to(rgb: np.ndarray, reference: np.ndarray | None, stats_scale: float = 1.0
                 ) -> np.ndarray:
    """A whole image normalised to ``reference`` with its own statistics, taken on the image
    resized by ``stats_scale`` (the frame the reference was measured in); unchanged when None."""
    if reference is None:
        return rgb
    small = rgb if stats_scale == 1.0 else cv2.resize(
        rgb, None, fx=stats_scale, fy=stats_scale, interpolation=cv2.INTER_AREA)
    return normalise(rgb, lab_stats([small]), reference)


#: half-ranges of the random L*a*b* mean shift and the std scale of :func:`random_target`;
#: about the spread of the MoNuSeg sites' tissue means (L* 37-68, a* 13-34, b* −23 to −6)
SHIFT_LAB = (10.0, 8.0, 5.0)
STD_SCALE = (0.8, 1.25)


def random_target(stats: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(2, 3) statistics near ``stats``: means shifted by U(±SHIFT_LAB), stds scaled by
    U(STD_SCALE). Normalising an image to it imitates another site's stain (as RandStainNA,
    Shen et al. 2022, does with fitted distributions)."""
    mean = stats[0] + rng.uniform(-1, 1, 3) * np.asarray(SHIFT_LAB)
    std = stats[1] * rng.uniform(*STD_SCALE, 3)
    return np.stack([mean, std]).astype(np.float32)


def hed_jitter(rgb: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 RGB with its haematoxylin, eosin and residual amounts (the Ruifrok-Johnston
    deconvolution of :mod:`wsisam.runtime.stain`) each scaled by U(1 ± sigma) and shifted by
    U(± sigma) OD: Tellez et al. 2018's HED augmentation, stain amount and hue as they vary
    between sites. No clipping before the inverse, so sigma = 0 returns the image."""
    od = optical_density(rgb).reshape(-1, 3)
    hed = od @ UNMIX.astype(np.float32)
    hed = hed * rng.uniform(1 - sigma, 1 + sigma, 3) + rng.uniform(-sigma, sigma, 3)
    out = np.exp(-(hed @ STAINS.astype(np.float32))) * 256 - 1
    return np.clip(out + 0.5, 0, 255).astype(np.uint8).reshape(rgb.shape)


def describe(slide: np.ndarray | None, reference: np.ndarray | None, off_reason: str
             ) -> dict[str, object] | str:
    """What a run's report says about normalisation: the method and both statistics, or why
    it was off (``off_reason`` when the model has no reference)."""
    if reference is None:
        return f"off ({off_reason})"
    if slide is None:
        return "off (too little tissue in the sampled tiles)"
    return {"method": "reinhard-lab", "slide_lab_mean_std": slide.round(2).tolist(),
            "reference_lab_mean_std": reference.round(2).tolist()}
