"""CellSAM (in progress, not registered yet): the torch-free groundwork — annotation readers
(Aperio XML, QuPath GeoJSON → instance labels), instance metrics (F1, PQ, AJI, Dice), the
classical hematoxylin watershed baseline, and the seeded watershed that turns predicted maps into
instances — and the fixed split of the 13 shared MoNuSeg images. The model and its first
measurements: ``docs/cellsam-rnd.md``.
"""

from __future__ import annotations

EVAL_IMAGES: tuple[str, ...] = (
    "TCGA-E2-A1B5-01Z-00-DX1",  # breast (BRCA, site E2)
    "TCGA-B0-5710-01Z-00-DX1",  # kidney (KIRC, site B0)
    "TCGA-21-5786-01Z-00-DX1",  # lung (LUSC, site 21)
)
TRAIN_IMAGES: tuple[str, ...] = (
    "TCGA-21-5784-01Z-00-DX1",  # lung
    "TCGA-50-5931-01Z-00-DX1",  # lung
    "TCGA-A7-A13E-01Z-00-DX1",  # breast
    "TCGA-AR-A1AK-01Z-00-DX1",  # breast
    "TCGA-AR-A1AS-01Z-00-DX1",  # breast
    "TCGA-B0-5698-01Z-00-DX1",  # kidney
    "TCGA-B0-5711-01Z-00-DX1",  # kidney
    "TCGA-CH-5767-01Z-00-DX1",  # prostate
    "TCGA-G9-6362-01Z-00-DX1",  # prostate
    "TCGA-NH-A8F7-01A-01-TS1",  # colon
)
