"""The one slide driver: slide + model directory (+ prompts) → the outputs, for every system.

``run_slide`` opens the slide and the model directory's graphs, asks the directory's system
(through the registry) for the job of the run's mode, runs the job's stages on the stage pipeline
(:mod:`wsisam.runtime.pipeline`: concurrent, or one unit at a time, as ``PipelineConfig`` and
the backend say), hands each finished unit to the job in this thread, and writes the outputs:
``OUT/<slide stem>.geojson``, ``.mask.tif`` (tiled pyramidal label TIFF aligned with the slide),
``.overlay.png``, ``.report.json`` and the job's extras, into a staging folder moved into ``OUT``
only when every one is complete.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np

from wsisam import __version__
from wsisam.errors import ConfigError, SlideError
from wsisam.registry import runtime_class
from wsisam.runtime.graphs import ExclusiveGraphs, ModelGraphs
from wsisam.runtime.outputs import THUMB_PX, OutputSet, OutputSink
from wsisam.runtime.pipeline import (Pipeline, PipelineConfig, Stage, choose_concurrency,
                                     in_flight_bound)
from wsisam.runtime.prompt_input import Prompt, load_prompts
from wsisam.runtime.slide import SlideReader, open_slide
from wsisam.runtime.tissue import tissue_mask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    """One run. ``prompts`` None: the model's default mode without prompts (automatic). ``mpp``:
    overrides the slide's µm/px (without it and without metadata a fallback is assumed, warned
    about and written in the report). ``options``: the system's run options by name (checked
    against its spec). ``pipeline``: how the stages run."""

    slide: Path
    out_dir: Path
    model_dir: Path
    prompts: Path | None = None
    model: str | None = None
    backend: str = "auto"
    mpp: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    pipeline: PipelineConfig = PipelineConfig()


@dataclass
class RunResult:
    outputs: dict[str, Path]
    report: dict[str, Any]


@dataclass
class SlideContext:
    """What a job is planned from: the open slide, its µm/px, the thumbnail (longest side
    ``THUMB_PX``), the resolved system options, the pipeline settings and, in prompted mode,
    the prompts (level-0 px)."""

    reader: SlideReader
    slide_mpp: float
    thumb: np.ndarray
    options: dict[str, Any]
    pipeline: PipelineConfig = PipelineConfig()
    prompts: list[Prompt] | None = None
    prompts_path: Path | None = None

    @property
    def level0_wh(self) -> tuple[int, int]:
        return tuple(self.reader.level_dimensions[0])  # type: ignore[return-value]

    @cached_property
    def tissue(self) -> np.ndarray:
        """(H, W) bool tissue mask in the thumbnail frame."""
        return tissue_mask(self.thumb)


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


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (ru_maxrss: KiB on Linux)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / (1 << 20)


class StageRun:
    """A job's stages over its units on the pipeline; per-stage busy/wait time for the report.

    ``exclusive``: the graphs' calls were serialised (:class:`ExclusiveGraphs`); their lock
    waits are taken out of the stages' busy time and reported apart.
    """

    def __init__(self, stages: Sequence[Stage], pipe: PipelineConfig, on_cpu: bool,
                 exclusive: ExclusiveGraphs | None = None) -> None:
        self.stages, self.pipe, self.exclusive = list(stages), pipe, exclusive
        self.concurrent, self.concurrent_reason = choose_concurrency(pipe.concurrent, on_cpu)
        self._pipeline = Pipeline(self.stages)
        self.collect_s = 0.0

    def run(self, units: Iterable[Any]) -> Iterator[Any]:
        run = self._pipeline.run if self.concurrent else self._pipeline.run_sequential
        return run(iter(units))

    def report(self) -> dict[str, Any]:
        stats = self._pipeline.stats()
        stages = {name: {k: (round(v, 3) if isinstance(v, float) else v) for k, v in s.items()}
                  for name, s in stats.items()}
        stages["stitch"] = {"busy_s": round(self.collect_s, 3), "workers": 1}
        waits = self.exclusive.waits if self.exclusive is not None else {}
        for name, wait in waits.items():  # waiting for another stage's call is not work
            if name in stages:
                stages[name]["busy_s"] = round(stages[name]["busy_s"] - wait, 3)
                stages[name]["wait_inference_lock_s"] = round(wait, 3)
        per_worker = {n: s["busy_s"] / s["workers"] for n, s in stages.items() if n != "feeder"}
        return {"stages": stages, "bottleneck": max(per_worker, key=per_worker.get),
                "concurrent": self.concurrent, "concurrent_reason": self.concurrent_reason,
                "readers": self.pipe.readers, "exclusive_inference": self.exclusive is not None,
                "max_tiles_in_flight": in_flight_bound(self.stages) if self.concurrent else 1,
                "encoder_batch": self.pipe.encoder_batch}


def run_slide(cfg: RunConfig, on_progress: Callable[[int, int], None] | None = None,
              on_object: Callable[[Any], None] | None = None,
              graphs: ModelGraphs | None = None,
              engine: Callable[[Any, RunConfig], Any] | None = None) -> RunResult:
    """Run ``cfg.slide`` through its model directory's system; write the outputs into
    ``cfg.out_dir``.

    ``on_progress(done, total)``: after each unit (its progress items: tiles, crops, patches).
    ``on_object(obj)``: each object as soon as it is final, in the calling thread — for software
    that consumes objects while the slide runs (what it is, the system says: SAM's automatic
    mode hands out its Detection objects).
    ``graphs``: an open :class:`ModelGraphs` of ``cfg.model_dir`` to reuse (a batch worker loads
    the model once for all its slides); left open. Without it the run opens and closes its own.
    ``engine(job, cfg)``: what runs the units instead of the stage pipeline here — an object
    with ``run(units)`` (the last stage's results, in unit order), ``report()`` and ``collect_s``
    like :class:`StageRun` (bench/ray_tiles.py: the Ray Data tile fan-out of one slide).
    """
    t0 = time.perf_counter()
    own = (ModelGraphs(cfg.model_dir, cfg.backend, cfg.model) if graphs is None
           else contextlib.nullcontext(graphs))
    with open_slide(cfg.slide) as reader, own as graphs:
        on_cpu = graphs.on_cpu
        exclusive = ExclusiveGraphs.wanted(graphs, cfg.pipeline.exclusive_inference, on_cpu)
        job, ctx, mode, mpp_source = plan_job(cfg, reader, graphs, exclusive)
        mpp = ctx.slide_mpp
        units = job.units()
        runner = (StageRun(job.stages(), cfg.pipeline, on_cpu, exclusive) if engine is None
                  else engine(job, cfg))
        t_open = time.perf_counter() - t0
        with OutputSet(cfg.out_dir, cfg.slide) as outs:
            sink = OutputSink(outs, ctx.level0_wh, mpp, job.label_mpp(), ctx.thumb, on_object)
            done = 0
            for result in runner.run(units):
                t = time.perf_counter()
                done += job.collect(result, sink)
                runner.collect_s += time.perf_counter() - t
                if on_progress:
                    on_progress(done, job.progress_total)
            t_seg = time.perf_counter() - t0 - t_open
            section = job.finish(sink, t_seg)
            report = {**base_report(cfg, reader, graphs, mpp, mpp_source, mode), **section}
            report["pipeline"] = {**runner.report(), **section.get("pipeline", {})}
            report["area_um2_per_class"] = sink.area_um2()
            report["label_mask"] = sink.close()
            t_total = time.perf_counter() - t0
            report["timings_s"] = {"open": round(t_open, 3), "segment": round(t_seg, 3),
                                   "write": round(t_total - t_open - t_seg, 3),
                                   "total": round(t_total, 3)}
            report["throughput"] = {**section.get("throughput", {}),
                                    "units_per_s": round(len(units) / max(t_seg, 1e-9), 3)}
            report["peak_rss_mb"] = round(peak_rss_mb(), 1)
            outputs = outs.commit(report)
    return RunResult(outputs, report)


def plan_job(cfg: RunConfig, reader: SlideReader, graphs: ModelGraphs,
             exclusive: ExclusiveGraphs | None = None
             ) -> tuple[Any, SlideContext, str, str]:
    """The job (a :class:`~wsisam.systems.contract.SlideJob`) of ``cfg``'s mode on the open
    slide (its tile/crop plan made), its context, the
    mode and where the µm/px came from. Deterministic: the same slide and settings plan the same
    units in every process."""
    spec = graphs.spec
    mode = "prompted" if cfg.prompts is not None else spec.default_mode
    if mode not in spec.modes or (mode == "prompted" and cfg.prompts is None):
        raise ConfigError(_mode_refusal(spec, mode, cfg.model_dir))
    options = spec.resolve_options(cfg.options, mode)
    mpp, mpp_source = resolve_mpp(reader, cfg.mpp)
    prompts = (load_prompts(cfg.prompts, reader.level_dimensions[0])
               if cfg.prompts is not None else None)
    ctx = SlideContext(reader, mpp, reader.thumbnail(THUMB_PX), options, cfg.pipeline,
                       prompts, cfg.prompts)
    job = runtime_class(spec)(spec, exclusive or graphs).job(mode, ctx)
    return job, ctx, mode, mpp_source


def _mode_refusal(spec: Any, mode: str, model_dir: Path) -> str:
    if mode == "prompted" and "prompted" not in spec.modes:
        return (f"{spec.name} ({model_dir}) runs without prompts ({', '.join(spec.modes)} "
                f"mode); drop --prompts")
    return (f"{spec.name} ({model_dir}) runs only with prompts (its system {spec.system} has no "
            f"prompt-free mode): pass --prompts FILE.geojson")


def base_report(cfg: RunConfig, reader: SlideReader, graphs: ModelGraphs, mpp: float,
                mpp_source: str, mode: str) -> dict[str, Any]:
    """What every report starts with: versions, mode, slide, model, backend."""
    spec = graphs.spec
    return {
        "wsisam": __version__,
        "mode": mode,
        "slide": {"path": str(cfg.slide), "vendor": reader.vendor,
                  "level0_wh": list(reader.level_dimensions[0]),
                  "levels": len(reader.level_dimensions), "mpp": mpp, "mpp_source": mpp_source},
        "model": {"name": spec.name, "system": spec.system, "mpp": spec.mpp,
                  "input_px": spec.input_px,
                  "random_init": bool(graphs.manifest.get("random_init"))},
        "backend": graphs.describe(),
    }


def open_runtime(model_dir: Path, backend: str = "auto", model: str | None = None,
                 **backend_options: object) -> Any:
    """The system runtime of a model directory (its class through the registry), owning its
    backends: use it as a context manager."""
    from wsisam.artifacts import check_manifest, read_manifest

    spec = check_manifest(Path(model_dir), read_manifest(Path(model_dir)), model=model,
                          verify_files=False)  # ModelGraphs verifies them
    return runtime_class(spec).open(model_dir, backend, model, **backend_options)


def open_runtime(model_dir: Path, backend: str = "auto", model: str | None = None,
                 **backend_options: object) -> Any:
    """The system runtime of a model directory (its class through the registry), owning its
    backends: use it as a context manager."""
    from wsisam.artifacts import check_manifest, read_manifest

    spec = check_manifest(Path(model_dir), read_manifest(Path(model_dir)), model=model,
                          verify_files=False)  # ModelGraphs verifies them
    return runtime_class(spec).open(model_dir, backend, model, **backend_options)
