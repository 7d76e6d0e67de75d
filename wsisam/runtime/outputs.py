"""The four outputs of a run, written into a staging folder and moved into place together.

``OUT/<slide stem>.geojson``, ``.mask.tif``, ``.overlay.png``, ``.report.json``. Nothing appears in
``OUT`` until every file is complete; the report moves last, so its presence marks a finished run.
An exception or Ctrl-C inside the ``with`` block removes the staging folder.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from wsisam.runtime.writers.overlay import write_overlay_png
from wsisam.runtime.writers.report import write_json
from wsisam.runtime.writers.tiff import write_label_pyramid

KEYS = ("geojson", "mask", "overlay", "report")
SUFFIXES = {"geojson": ".geojson", "mask": ".mask.tif", "overlay": ".overlay.png",
            "report": ".report.json"}
LABEL_MAX_PX = 16384  # longest side of the label raster: ≤ 256 MiB whatever the slide size
THUMB_PX = 1024


def label_downsample(level0_wh: tuple[int, int], slide_mpp: float, model_mpp: float) -> int:
    """Level-0 px per label px: about the model's resolution, coarser on huge slides."""
    by_model = max(1, round(model_mpp / slide_mpp))
    return max(by_model, math.ceil(max(level0_wh) / LABEL_MAX_PX))


def label_shape(level0_wh: tuple[int, int], downsample: int) -> tuple[int, int]:
    """(H, W) of a label raster covering the slide at ``downsample``."""
    return (-(-level0_wh[1] // downsample), -(-level0_wh[0] // downsample))


class OutputSet:
    """Staged output files of one slide; use as a context manager and call :meth:`commit`."""

    def __init__(self, out_dir: Path, slide: Path) -> None:
        self.out_dir = Path(out_dir)
        self.stem = Path(slide).stem
        self.stage = self.out_dir / f".wsisam-partial-{os.getpid()}"

    def staged(self, key: str) -> Path:
        return self.stage / f"{self.stem}{SUFFIXES[key]}"

    def final(self, key: str) -> Path:
        return self.out_dir / f"{self.stem}{SUFFIXES[key]}"

    def __enter__(self) -> "OutputSet":
        self.out_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.stage, ignore_errors=True)
        self.stage.mkdir()
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)

    def write_rasters(self, label: np.ndarray, downsample: int, slide_mpp: float,
                      thumb: np.ndarray, label_thumb: np.ndarray) -> dict[str, Any]:
        """Label TIFF and overlay; returns what the report says about the label."""
        write_label_pyramid(self.staged("mask"), label, (slide_mpp * downsample,) * 2)
        write_overlay_png(self.staged("overlay"), thumb, label_thumb)
        return {"downsample": downsample, "mpp": slide_mpp * downsample,
                "shape_hw": list(label.shape)}

    def commit(self, report: dict[str, Any]) -> dict[str, Path]:
        """Write the report and move every file into ``out_dir`` (report last)."""
        report["outputs"] = {k: str(self.final(k)) for k in KEYS}
        write_json(self.staged("report"), report)
        for key in KEYS:
            os.replace(self.staged(key), self.final(key))
        return {k: self.final(k) for k in KEYS}
