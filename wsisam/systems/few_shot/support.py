"""Support sets: images with annotations beside them → RGB and foreground at the model's µm/px,
cut into model-input tiles; modality of an image. Torch-free; every user error is one line."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from wsisam.errors import ConfigError
from wsisam.runtime.stain import hematoxylin_density
from wsisam.systems.cell_sam.annotations import AnnotationError, load_instances, read_aperio_xml
from wsisam.systems.cell_sam.data import resize_labels

ANNOTATION_SUFFIXES = (".geojson", ".json", ".xml")


@dataclass(frozen=True)
class SupportImage:
    """One support image at the model's µm/px: ``rgb`` (H,W,3) uint8, ``fg`` (H,W) bool."""

    stem: str
    rgb: np.ndarray
    fg: np.ndarray
    digest: str


def annotation_for(image: Path) -> Path:
    """The annotation file beside ``image`` under the same stem (one line if none)."""
    for suf in ANNOTATION_SUFFIXES:
        p = image.with_suffix(suf)
        if p.exists():
            return p
    raise AnnotationError(f"no annotations beside '{image}' (expected {image.stem}.geojson or "
                          f"{image.stem}.xml)")


def read_rgb(path: Path) -> np.ndarray:
    """An RGB image file → (H,W,3) uint8."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ConfigError(f"cannot read image '{path}'; give a TIFF/PNG/JPEG support image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def load_support(paths: list[Path], target_mpp: float,
                 mpp: float | None = None) -> list[SupportImage]:
    """Support images (annotations beside each) resampled to ``target_mpp`` µm/px.

    ``mpp``: the images' µm/px when given; otherwise read from each Aperio XML header, and the
    images must agree. Raises a one-line ConfigError on every bad input, before anything is written.
    """
    if not paths:
        raise ConfigError("no support images given; pass one or more annotated images")
    raw = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise ConfigError(f"support image '{p}' does not exist")
        ann = annotation_for(p)
        rgb = read_rgb(p)
        labels = load_instances(ann, rgb.shape[:2])
        file_mpp = read_aperio_xml(ann)[1] if ann.suffix.lower() == ".xml" else None
        raw.append((p, rgb, labels, file_mpp))
    if mpp is None:
        mpps = {round(m, 4) for *_, m in raw if m is not None}
        if len(mpps) > 1:
            raise ConfigError(f"support images are at different µm/px ({sorted(mpps)}); pass "
                              f"--mpp, or give images of one resolution")
        if not mpps:
            raise ConfigError("the support images' µm/px is unknown; pass --mpp")
        mpp = mpps.pop()
    out = []
    for p, rgb, labels, _ in raw:
        s = mpp / target_mpp
        hw = (max(1, round(rgb.shape[1] * s)), max(1, round(rgb.shape[0] * s)))
        rgb_t = cv2.resize(rgb, hw, interpolation=cv2.INTER_AREA)
        fg = resize_labels((labels > 0).astype(np.uint8), hw[::-1]) > 0
        out.append(SupportImage(p.stem, rgb_t, fg, hashlib.sha256(rgb.tobytes()).hexdigest()))
    return out


def tile_origins(size: int, tile: int, stride: int | None = None) -> list[int]:
    """Tile starts covering ``size`` px with ``tile``-px tiles at most ``stride`` px apart
    (default ``tile``: as few tiles as cover it), spread evenly."""
    if size <= tile:
        return [0]
    n = int(np.ceil((size - tile) / (stride or tile))) + 1
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def tiles(img: np.ndarray, tile: int, stride: int | None = None
          ) -> list[tuple[int, int, np.ndarray]]:
    """(H,W,...) → [(y0, x0, (tile,tile,...) zero-padded crop)] covering the image, origins at
    most ``stride`` px apart (default ``tile``)."""
    out = []
    for y in tile_origins(img.shape[0], tile, stride):
        for x in tile_origins(img.shape[1], tile, stride):
            crop = img[y:y + tile, x:x + tile]
            pad = [(0, tile - crop.shape[0]), (0, tile - crop.shape[1])] + [(0, 0)] * (crop.ndim - 2)
            out.append((y, x, np.pad(crop, pad)))
    return out


def stain_prompt(rgb: np.ndarray, out_hw: tuple[int, int], mpp: float,
                 fluorescence: bool = False) -> np.ndarray:
    """(n,n,3) uint8 model-input tile at ``mpp`` µm/px → (1, *out_hw) float32 dense prompt in
    SAM's mask-input frame: the tile's nuclear stain (hematoxylin density, or brightness on
    fluorescence), smoothed (σ 0.5 µm), over the tile's Otsu cut minus one (> 0 above the cut),
    clipped to [-1, 2] and scaled like mask logits (× 4). The per-tile cut gives the prompt the
    classical threshold's adaptivity to pale or dark staining."""
    from skimage.filters import threshold_otsu

    signal = rgb.astype(np.float32).mean(-1) / 255.0 if fluorescence else hematoxylin_density(rgb)
    signal = cv2.GaussianBlur(signal, (0, 0), 0.5 / mpp)
    cut = float(threshold_otsu(signal)) if np.ptp(signal) > 1e-6 else 1.0
    x = np.clip(signal / max(cut, 0.05) - 1.0, -1.0, 2.0) * 4.0
    return cv2.resize(x, out_hw[::-1], interpolation=cv2.INTER_AREA)[None].astype(np.float32)


def modality(rgb: np.ndarray) -> str:
    """``"fluorescence"`` (dark background) or ``"brightfield"`` (bright background) from the
    median brightness of an (H,W,3) uint8 image."""
    return "fluorescence" if float(np.median(rgb.mean(-1))) < 100 else "brightfield"
