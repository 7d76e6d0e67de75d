"""CellSAM: nucleus instances from a frozen SAM-family encoder fused with a small trained
encoder and a nucleus-map head, instances by seeded watershed (``docs/design.md``, "CellSAM").

Torch-free: ``spec`` (registration), ``runtime`` (the nuclei job), ``data``/``annotations``
(annotated images), ``instances`` (targets, watershed), ``segment`` (whole images), ``metrics``,
``baseline`` (classical watershed). Torch: ``model_torch``, ``train`` (``wsisam-train
cellsam``), ``export``. The fixed split of the 13 shared MoNuSeg images is below: the shipped
head is trained on ``TRAIN_IMAGES`` only and every reported figure is on ``EVAL_IMAGES``.
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
