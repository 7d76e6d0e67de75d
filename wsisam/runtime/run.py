"""``wsisam-run`` as a library call: slide (+ prompts) + model directory → the four outputs.

With prompts, each prompt is segmented (:mod:`wsisam.runtime.prompted`); without, every object on
the tissue is (automatic mode, :mod:`wsisam.runtime.run_automatic`).

Outputs (``OUT/<slide stem>.*``): ``.geojson`` (one feature per prompt, level-0 px, QuPath
properties), ``.mask.tif`` (tiled pyramidal label TIFF aligned with the slide), ``.overlay.png``
(thumbnail with masks), ``.report.json``. All four are written into a staging folder and moved into
``OUT`` only when every one is complete, so an interrupted or failed run leaves no output that looks
finished.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from wsisam import __version__
from wsisam.errors import SlideError
from wsisam.runtime.auto_pipeline import PipelineConfig
from wsisam.runtime.automatic import AutoConfig, Detection
from wsisam.runtime.model import SamRuntime
from wsisam.runtime.prompted import DEFAULT_CONTEXT, PromptResult, segment_prompts
from wsisam.runtime.prompts import load_prompts
from wsisam.runtime.raster import rasterize
from wsisam.runtime.slide import SlideReader, open_slide
from wsisam.runtime.outputs import THUMB_PX, OutputSet, label_downsample, label_shape
from wsisam.runtime.writers.geojson import feature, write_feature_collection
from wsisam.runtime.wsisam_model import open_runtime
from wsisam.runtime.wsisam_prompted import segment_prompts_wsisam

log = logging.getLogger(__name__)

DEFAULT_CLASS = "SAM object"
_PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60)]


@dataclass(frozen=True)
class RunConfig:
    """One run. ``prompts`` None: automatic mode with ``auto`` settings, its stages run as
    ``pipeline`` says. ``mpp``: overrides the slide's µm/px (required information when the slide
    has none; without it a fallback is assumed, warned about and written in the report)."""

    slide: Path
    out_dir: Path
    model_dir: Path
    prompts: Path | None = None
    model: str | None = None
    backend: str = "auto"
    mpp: float | None = None
    context: float = DEFAULT_CONTEXT
    lr_layout: str | None = None  # WSI-SAM only: "shared"/"concentric" (None: the model's)
    auto: AutoConfig = AutoConfig()
    pipeline: PipelineConfig = PipelineConfig()


@dataclass
class RunResult:
    outputs: dict[str, Path]
    report: dict[str, Any]
    results: list[PromptResult] = field(repr=False, default_factory=list)


def resolve_mpp(reader: SlideReader, override: float | None) -> tuple[float, str]:
    """The slide's µm/px and where it came from: ``--mpp``, metadata, or an assumption."""
    if override is not None:
        if override <= 0:
            raise SlideError(f"--mpp must be positive, got {override}")
        return float(override), "--mpp"
    if reader.mpp:
        return float(reader.mpp), "slide metadata"
    power = getattr(reader, "objective_power", None)
    assumed = 10.0 / power if power else 0.5
    why = f"objective power {power}×" if power else "no objective power either"
    log.warning("slide %s has no MPP metadata; assuming %.3f µm/px (%s). Pass --mpp to set it.",
                reader.path, assumed, why)
    return assumed, f"assumed {assumed:.3f} µm/px: no MPP in the slide ({why}); pass --mpp"


def run_slide(cfg: RunConfig, on_progress: Callable[[int, int], None] | None = None,
              on_object: Callable[[Detection], None] | None = None) -> RunResult:
    """Segment ``cfg.slide`` and write the outputs into ``cfg.out_dir``.

    ``on_progress(done, total)``: after each crop (prompted) or tile (automatic).
    ``on_object(detection)``: automatic mode, each object as soon as it is final (level-0
    polygon), in the calling thread — for software that consumes objects while the slide runs.
    """
    if cfg.prompts is None:
        from wsisam.runtime.run_automatic import run_automatic

        return run_automatic(cfg, on_progress, on_object)
    return _run_prompted(cfg, on_progress)


def _run_prompted(cfg: RunConfig, on_progress: Callable[[int, int], None] | None) -> RunResult:
    t0 = time.perf_counter()
    with open_slide(cfg.slide) as reader, open_runtime(cfg.model_dir, cfg.backend, cfg.model) as rt:
        mpp, mpp_source = resolve_mpp(reader, cfg.mpp)
        prompts = load_prompts(cfg.prompts, reader.level_dimensions[0])
        t_open = time.perf_counter() - t0
        wsi = None
        if rt.spec.family == "wsisam":  # HR crops + shared LR context tiles, fused decoder
            results, crops, skipped, times, wsi = segment_prompts_wsisam(
                reader, rt, prompts, mpp, cfg.context, on_progress, layout=cfg.lr_layout)
        else:
            results, crops, skipped, times = segment_prompts(reader, rt, prompts, mpp,
                                                             cfg.context, on_progress)
        t_seg = time.perf_counter() - t0
        report = _report(cfg, reader, rt, mpp, mpp_source, prompts, results, crops, skipped)
        if wsi is not None:  # HR passes + LR passes, not one pass per crop
            report["crops"]["encoder_passes"] = wsi["encoder_passes"]
            report["wsisam"] = wsi
        report["timings_s"] = {"open": round(t_open, 3),
                               **{k: round(v, 3) for k, v in asdict(times).items()},
                               "segment_total": round(t_seg - t_open, 3)}
        report["throughput"] = {"prompts_per_s": round(len(results) / max(t_seg - t_open, 1e-9), 2),
                                "crops_per_s": round(len(crops) / max(t_seg - t_open, 1e-9), 2)}
        outputs = _write_outputs(cfg, reader, results, mpp, report)
    return RunResult(outputs, report, results)


def _classes(results: list[PromptResult]) -> dict[str, int]:
    """Class name → label value (1..254) in order of first appearance."""
    names: dict[str, int] = {}
    for r in results:
        names.setdefault(_class_name(r), len(names) + 1)
    return names


def _class_name(r: PromptResult) -> str:
    cls = r.prompt.properties.get("classification")
    return str(cls.get("name")) if isinstance(cls, dict) and cls.get("name") else DEFAULT_CLASS


def _features(results: list[PromptResult], classes: dict[str, int]) -> list[dict[str, Any]]:
    out = []
    for r in results:
        props = dict(r.prompt.properties)
        props["score"] = None if r.score is None else round(r.score, 4)
        props["status"] = r.status
        if r.reason:
            props["reason"] = r.reason
        cls = props.get("classification")
        if not isinstance(cls, dict):
            value = classes[_class_name(r)]
            cls = {"name": DEFAULT_CLASS, "color": list(_PALETTE[(value - 1) % len(_PALETTE)])}
        object_type = props.pop("objectType", "annotation")
        props.pop("classification", None)
        out.append(feature(r.geometry, props, id=r.prompt.feature_id, object_type=object_type,
                           classification=cls))
    return out


def _write_outputs(cfg: RunConfig, reader: SlideReader, results: list[PromptResult], mpp: float,
                   report: dict[str, Any]) -> dict[str, Path]:
    with OutputSet(cfg.out_dir, cfg.slide) as outs:
        classes = _classes(results)
        geoms = [r.geometry for r in results]
        values = [classes[_class_name(r)] for r in results]
        write_feature_collection(outs.staged("geojson"), _features(results, classes))
        ds = label_downsample(reader.level_dimensions[0], mpp, report["model"]["mpp"])
        label = rasterize(geoms, values, label_shape(reader.level_dimensions[0], ds), ds)
        thumb = reader.thumbnail(THUMB_PX)
        label_thumb = rasterize(geoms, values, thumb.shape[:2],
                                reader.level_dimensions[0][0] / thumb.shape[1])
        report["label_mask"] = {**outs.write_rasters(label, ds, mpp, thumb, label_thumb),
                                "classes": classes}
        report["peak_rss_mb"] = round(peak_rss_mb(), 1)
        return outs.commit(report)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (ru_maxrss: KiB on Linux)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / (1 << 20)


def base_report(cfg: RunConfig, reader: SlideReader, rt: SamRuntime, mpp: float,
                mpp_source: str, mode: str) -> dict[str, Any]:
    """What every report starts with: versions, mode, slide, model, backend."""
    return {
        "wsisam": __version__,
        "mode": mode,
        "slide": {"path": str(cfg.slide), "vendor": reader.vendor,
                  "level0_wh": list(reader.level_dimensions[0]),
                  "levels": len(reader.level_dimensions), "mpp": mpp, "mpp_source": mpp_source},
        "model": {"name": rt.spec.name, "mpp": rt.spec.mpp, "input_px": rt.spec.input_px,
                  "random_init": bool(rt.manifest.get("random_init"))},
        "backend": rt.describe(),
    }


def _report(cfg: RunConfig, reader: SlideReader, rt: SamRuntime, mpp: float, mpp_source: str,
            prompts: list, results: list[PromptResult], crops: list, skipped: list
            ) -> dict[str, Any]:
    area_um2: dict[str, float] = {}
    for r in results:
        if r.geometry is not None:
            area_um2[_class_name(r)] = area_um2.get(_class_name(r), 0.0) + r.geometry.area * mpp**2
    return {
        **base_report(cfg, reader, rt, mpp, mpp_source, "prompted"),
        "prompts": {"file": str(cfg.prompts), "count": len(prompts),
                    **{k: sum(r.status == s for r in results) for k, s in
                       (("segmented", "ok"), ("empty", "empty"), ("skipped", "skipped"))}},
        "crops": {"count": len(crops), "encoder_passes": len(crops) - len(skipped),
                  "context": cfg.context, "skipped": skipped},
        "area_um2_per_class": {k: round(v, 1) for k, v in area_um2.items()},
    }
