"""``wsisam-run SLIDE`` without prompts: every object on the tissue → the four outputs.

Objects stream from the stage pipeline (:class:`~wsisam.runtime.auto_pipeline.AutoSegmentation`)
straight into the staged GeoJSON and into the label rasters, so memory does not grow with the
number of objects; the rasters are bounded by ``outputs.LABEL_MAX_PX``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from wsisam.engines.manifest import read_manifest
from wsisam.errors import ConfigError, SlideError
from wsisam.runtime.auto_pipeline import AutoSegmentation
from wsisam.runtime.automatic import Detection, describe
from wsisam.runtime.model import SamRuntime
from wsisam.runtime.outputs import THUMB_PX, OutputSet, label_downsample, label_shape
from wsisam.runtime.raster import paint
from wsisam.runtime.run import RunConfig, RunResult, base_report, peak_rss_mb, resolve_mpp
from wsisam.runtime.slide import open_slide
from wsisam.runtime.writers.geojson import FeatureStream, feature

log = logging.getLogger(__name__)

LABEL_VALUE = 1  # one class in automatic mode


def run_automatic(cfg: RunConfig, on_progress: Callable[[int, int], None] | None = None,
                  on_object: Callable[[Detection], None] | None = None) -> RunResult:
    """Segment every object on ``cfg.slide``'s tissue; write the outputs into ``cfg.out_dir``."""
    t0 = time.perf_counter()
    family = read_manifest(Path(cfg.model_dir)).get("family")
    if family != "sam":
        raise ConfigError(f"automatic mode runs SAM-family models; {cfg.model_dir} holds a "
                          f"'{family}' model: pass --prompts FILE.geojson")
    with open_slide(cfg.slide) as reader, SamRuntime(cfg.model_dir, cfg.backend, cfg.model) as rt:
        mpp, mpp_source = resolve_mpp(reader, cfg.mpp)
        thumb = reader.thumbnail(THUMB_PX)
        seg = AutoSegmentation(reader, rt, mpp, cfg.auto, cfg.pipeline, thumb=thumb,
                               on_tile=on_progress)
        if not seg.tiles:
            raise SlideError(f"no tissue found on {cfg.slide} (thumbnail tissue detection); "
                             f"nothing to segment: check the slide, or pass --prompts")
        level0_wh = tuple(reader.level_dimensions[0])
        ds = label_downsample(level0_wh, mpp, rt.spec.mpp)
        label = np.zeros(label_shape(level0_wh, ds), np.uint8)
        label_thumb = np.zeros(thumb.shape[:2], np.uint8)
        thumb_ds = level0_wh[0] / thumb.shape[1]
        t_open = time.perf_counter() - t0
        area_l0 = 0.0
        with OutputSet(cfg.out_dir, cfg.slide) as outs:
            with FeatureStream(outs.staged("geojson")) as features:
                for det in seg:
                    features.add(_feature(det, cfg.auto.object_class))
                    paint(label, det.geometry, LABEL_VALUE, ds)
                    paint(label_thumb, det.geometry, LABEL_VALUE, thumb_ds)
                    area_l0 += det.geometry.area
                    if on_object is not None:
                        on_object(det)
            t_seg = time.perf_counter() - t0 - t_open
            report = _report(cfg, reader, rt, mpp, mpp_source, seg, area_l0 * mpp**2)
            report["label_mask"] = {**outs.write_rasters(label, ds, mpp, thumb, label_thumb),
                                    "classes": {cfg.auto.object_class: LABEL_VALUE}}
            t_total = time.perf_counter() - t0
            report["timings_s"] = {"open": round(t_open, 3), "segment": round(t_seg, 3),
                                   "write": round(t_total - t_open - t_seg, 3),
                                   "total": round(t_total, 3)}
            n_tiles = seg.counts["tiles"]
            report["throughput"] = {
                "tiles_per_s": round(n_tiles / max(t_seg, 1e-9), 3),
                "objects_per_s": round(seg.counts["objects"] / max(t_seg, 1e-9), 2),
                "tissue_mm2_per_s": round(_tiles_mm2(seg, mpp) / max(t_seg, 1e-9), 4)}
            report["peak_rss_mb"] = round(peak_rss_mb(), 1)
            outputs = outs.commit(report)
    return RunResult(outputs, report)


def _feature(det: Detection, object_class: str) -> dict[str, Any]:
    """A QuPath detection: the object's level-0 polygon, predicted IoU, stability, tile."""
    return feature(det.geometry, {"score": round(det.score, 4),
                                  "stability": round(det.stability, 4), "tile": det.tile_index},
                   object_type="detection", classification=object_class)


def _tiles_mm2(seg: AutoSegmentation, mpp: float) -> float:
    """Slide area owned by the processed tiles (their cores), mm²."""
    cores = sum((t.core_l0[2] - t.core_l0[0]) * (t.core_l0[3] - t.core_l0[1]) for t in seg.tiles)
    return cores * mpp**2 / 1e6


def _report(cfg: RunConfig, reader: Any, rt: SamRuntime, mpp: float, mpp_source: str,
            seg: AutoSegmentation, area_um2: float) -> dict[str, Any]:
    auto = seg.report()
    counts = auto.pop("counts")
    return {
        **base_report(cfg, reader, rt, mpp, mpp_source, "automatic"),
        "automatic": describe(cfg.auto),
        "tissue": {"fluorescence": auto.pop("fluorescence"),
                   "thumbnail_fraction": round(float(seg.tissue.mean()), 4)},
        "tiles": {"planned": auto.pop("tiles_planned"), "processed": counts["tiles"],
                  "without_prompts": counts["tiles_without_prompts"],
                  "skipped": auto.pop("skipped"), "tile_px": rt.spec.input_px,
                  "overlap_px": auto["sizes_px"]["overlap_px"]},
        "objects": {"class": cfg.auto.object_class, "count": counts["objects"],
                    "prompts_decoded": counts["prompts"],
                    "passed_filters": counts["passed_filters"],
                    "after_nms": counts["after_nms"], "owned": counts["owned"],
                    "seam_duplicates_removed": counts["seam_duplicates"]},
        "pipeline": auto,
        "area_um2_per_class": {cfg.auto.object_class: round(area_um2, 1)},
    }
