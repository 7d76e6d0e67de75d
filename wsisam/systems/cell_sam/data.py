"""Annotated images for CellSAM training and evaluation (torch-free).

A data folder holds images (``.tif``/``.tiff``/``.png``/``.jpg``) each with its annotations beside
it under the same stem: Aperio ImageScope ``.xml`` or QuPath ``.geojson``. Images are resampled
to the work frame (``work_mpp`` µm/px); labels are rasterised in the image frame and resampled
with nearest neighbour, so an instance keeps its id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tifffile

from wsisam.systems.cell_sam.annotations import AnnotationError, load_instances, read_aperio_xml

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
ANNOTATION_SUFFIXES = (".xml", ".geojson", ".json")
DEFAULT_MPP = 0.25  # MoNuSeg's 40× scans; used only when a file states none and --mpp is absent


@dataclass
class AnnotatedImage:
    """One image in the image frame: ``rgb`` (H,W,3) uint8, ``labels`` (H,W) int32 instances,
    ``mpp`` µm per image px, ``stem`` its name."""

    stem: str
    rgb: np.ndarray
    labels: np.ndarray
    mpp: float

    def work_hw(self, work_mpp: float) -> tuple[int, int]:
        """(h, w) of the image resampled to ``work_mpp``."""
        s = self.mpp / work_mpp
        h, w = self.labels.shape
        return max(1, round(h * s)), max(1, round(w * s))

    def at(self, work_mpp: float) -> tuple[np.ndarray, np.ndarray]:
        """(rgb, labels) resampled to ``work_mpp`` (area for the image, nearest for labels)."""
        h, w = self.work_hw(work_mpp)
        if (h, w) == self.labels.shape:
            return self.rgb, self.labels
        shrink = self.mpp < work_mpp
        rgb = cv2.resize(self.rgb, (w, h),
                         interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        return rgb, resize_labels(self.labels, (h, w))


def resize_labels(labels: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(H,W) labels → (h,w) by nearest neighbour on pixel centres, the frame ``cv2.resize``'s
    area/linear modes use for the image. (``INTER_NEAREST`` samples ``floor(x·s)``, up to one px
    off that frame: the shared annotations taken to 0.25 µm/px and back kept SQ 0.81–0.87.)"""
    return cv2.resize(labels, hw[::-1], interpolation=cv2.INTER_NEAREST_EXACT)


def read_rgb(path: Path) -> np.ndarray:
    """An image file → (H,W,3) uint8 RGB (alpha dropped, grey expanded)."""
    try:
        img = tifffile.imread(path) if path.suffix.lower() in (".tif", ".tiff") else \
            cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    except Exception as exc:  # noqa: BLE001 — any decoder failure is the same user error
        raise AnnotationError(f"cannot read image '{path}': {exc}") from None
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] < 3 or img.dtype != np.uint8:
        raise AnnotationError(f"'{path}': expected an 8-bit RGB image, got {img.shape} {img.dtype}")
    return np.ascontiguousarray(img[..., :3])


def annotation_for(image: Path) -> Path | None:
    for suffix in ANNOTATION_SUFFIXES:
        p = image.with_suffix(suffix)
        if p.is_file():
            return p
    return None


def find_pairs(data_dir: Path) -> list[tuple[Path, Path]]:
    """(image, annotation) pairs of ``data_dir``, sorted by stem. Raises one-line errors for a
    missing folder, a folder without images, or one whose images have no annotations."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise AnnotationError(f"data folder '{data_dir}' does not exist")
    images = sorted(p for p in data_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise AnnotationError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in '{data_dir}'")
    pairs = [(p, a) for p in images if (a := annotation_for(p)) is not None]
    if not pairs:
        raise AnnotationError(f"none of the {len(images)} images in '{data_dir}' has annotations "
                              f"beside it (same stem, {' / '.join(ANNOTATION_SUFFIXES)})")
    stray = sorted({p.stem for p in data_dir.iterdir() if p.suffix.lower()
                    in ANNOTATION_SUFFIXES} - {p.stem for p in images})
    if stray:
        raise AnnotationError(f"annotations without an image of the same stem in '{data_dir}': "
                              f"{', '.join(stray[:5])}")
    return pairs


def load_image(image: Path, annotation: Path, mpp: float | None = None) -> AnnotatedImage:
    """One annotated image; µm/px from ``mpp``, else the Aperio header, else :data:`DEFAULT_MPP`."""
    rgb = read_rgb(image)
    labels = load_instances(annotation, rgb.shape[:2])
    if mpp is None and annotation.suffix.lower() == ".xml":
        mpp = read_aperio_xml(annotation)[1]
    return AnnotatedImage(image.stem, rgb, labels, float(mpp or DEFAULT_MPP))


def load_folder(data_dir: Path, mpp: float | None = None) -> list[AnnotatedImage]:
    return [load_image(i, a, mpp) for i, a in find_pairs(data_dir)]
