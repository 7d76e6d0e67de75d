"""The outputs of a run, written into a staging folder and moved into place together.

``OUT/<slide stem>.geojson``, ``.mask.tif``, ``.overlay.png``, ``.report.json`` and any extra
files a system adds (e.g. a heatmap). Nothing appears in ``OUT`` until every file is complete;
the report moves last, so its presence marks a finished run. An exception or Ctrl-C inside the
``with`` block removes the staging folder.

:class:`OutputSink` is what jobs write into: each object once, as a GeoJSON feature (streamed,
so memory does not grow with the number of objects) and as label pixels in the label raster and
its thumbnail (bounded by ``LABEL_MAX_PX``).
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from wsisam.runtime.raster import paint
from wsisam.runtime.writers.geojson import FeatureStream, feature
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
        self.suffixes = dict(SUFFIXES)

    def add_output(self, key: str, suffix: str) -> Path:
        """Register an extra output (e.g. ``"heatmap"``, ``".heatmap.png"``); its staged path."""
        self.suffixes[key] = suffix
        return self.staged(key)

    def staged(self, key: str) -> Path:
        return self.stage / f"{self.stem}{self.suffixes[key]}"

    def final(self, key: str) -> Path:
        return self.out_dir / f"{self.stem}{self.suffixes[key]}"

    def __enter__(self) -> "OutputSet":
        self.out_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.stage, ignore_errors=True)
        self.stage.mkdir()
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)

    def commit(self, report: dict[str, Any]) -> dict[str, Path]:
        """Write the report and move every file into ``out_dir`` (report last)."""
        keys = [k for k in self.suffixes if k != "report"] + ["report"]
        report["outputs"] = {k: str(self.final(k)) for k in keys}
        write_json(self.staged("report"), report)
        for key in keys:
            os.replace(self.staged(key), self.final(key))
        return {k: self.final(k) for k in keys}


class OutputSink:
    """Features and label pixels of one run (see the module docstring).

    ``label_mpp``: µm per label pixel wanted (the model's resolution); ``on_object(geometry,
    properties)`` is called for every object added, in the caller's thread.
    """

    def __init__(self, outs: OutputSet, level0_wh: tuple[int, int], slide_mpp: float,
                 label_mpp: float, thumb: np.ndarray,
                 on_object: Callable[[Any], None] | None = None) -> None:
        self.outs, self.slide_mpp, self.thumb = outs, slide_mpp, thumb
        self.downsample = label_downsample(level0_wh, slide_mpp, label_mpp)
        self.label = np.zeros(label_shape(level0_wh, self.downsample), np.uint8)
        self.label_thumb = np.zeros(thumb.shape[:2], np.uint8)
        self.thumb_downsample = level0_wh[0] / thumb.shape[1]
        self.features = FeatureStream(outs.staged("geojson"))
        self.on_object = on_object
        self.area_l0: dict[str, float] = {}
        self.classes: dict[str, int] = {}

    def add(self, geometry: Any, properties: dict[str, Any], *, object_type: str,
            classification: Any, label: int, id: Any = None, obj: Any = None) -> None:
        """One object: a feature (``geometry`` level-0, may be None) and, where it has a
        geometry, ``label`` painted into the rasters; its area is booked to its class.
        ``obj`` is what ``on_object`` receives (default: the feature)."""
        feat = feature(geometry, properties, id=id, object_type=object_type,
                       classification=classification)
        self.features.add(feat)
        name = feat["properties"].get("classification", {}).get("name", "")
        self.classes.setdefault(name, label)
        if geometry is not None and not geometry.is_empty:
            paint(self.label, geometry, label, self.downsample)
            paint(self.label_thumb, geometry, label, self.thumb_downsample)
            self.area_l0[name] = self.area_l0.get(name, 0.0) + geometry.area
        if self.on_object is not None:
            self.on_object(feat if obj is None else obj)

    def area_um2(self) -> dict[str, float]:
        return {k: round(v * self.slide_mpp**2, 1) for k, v in self.area_l0.items()}

    def close(self) -> dict[str, Any]:
        """Finish the GeoJSON, write the label TIFF and overlay; what the report says of them."""
        self.features.close()
        ds = self.downsample
        write_label_pyramid(self.outs.staged("mask"), self.label, (self.slide_mpp * ds,) * 2)
        write_overlay_png(self.outs.staged("overlay"), self.thumb, self.label_thumb)
        return {"downsample": ds, "mpp": self.slide_mpp * ds, "shape_hw": list(self.label.shape),
                "classes": dict(self.classes)}
