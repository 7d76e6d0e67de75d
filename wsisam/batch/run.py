"""``run_batch``: every slide of the inputs through the one slide driver, locally or on Ray."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from wsisam.batch.inputs import expand_inputs
from wsisam.batch.slides import (DiskFullError, Outcome, clean_stale_stages, process_slide,
                                 run_digest)
from wsisam.runtime.graphs import ModelGraphs
from wsisam.runtime.segment import RunConfig
from wsisam.runtime.writers.report import write_json

log = logging.getLogger(__name__)

Progress = Callable[[str, Any], None]  # ("slide", Outcome) after each slide; ("tiles", (d, n))


@dataclass
class BatchResult:
    outcomes: list[Outcome] = field(default_factory=list)
    digest: str = ""
    seconds: float = 0.0
    workers: str = "local"

    def by_status(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def ok(self) -> bool:
        return not self.by_status("failed")

    def summary(self) -> dict[str, Any]:
        return {"digest": self.digest, "seconds": round(self.seconds, 3), "workers": self.workers,
                "counts": {s: len(self.by_status(s)) for s in ("done", "skipped", "failed")},
                **{s: [o.as_dict() for o in self.by_status(s)]
                   for s in ("done", "skipped", "failed")}}

    def lines(self) -> list[str]:
        """The printed summary: one line per slide, then the counts."""
        out = [f"{o.status:7s} {o.slide}" + (f": {o.error}" if o.error else
                                             f" → {o.out}" + (f" ({o.seconds} s)" if o.seconds
                                                              else ""))
               for o in self.outcomes]
        c = self.summary()["counts"]
        out.append(f"{c['done']} done, {c['skipped']} skipped, {c['failed']} failed "
                   f"in {self.seconds:.1f} s")
        return out


def run_batch(inputs: Iterable[Path | str], out_dir: Path | str, template: RunConfig,
              force: bool = False, ray: str | None = None, workers: int | None = None,
              cpus_per_worker: int = 1, max_attempts: int = 3,
              on_event: Progress | None = None) -> BatchResult:
    """Run every slide of ``inputs`` (files, folders, .txt/.csv lists) into
    ``out_dir/<stem>/`` with ``template``'s model and settings (its ``slide``/``out_dir`` are
    replaced). Complete output sets of the same digest are skipped unless ``force``. ``ray``:
    None runs here, one slide after another; ``local``/``auto``/an address runs on Ray actors
    (one per GPU, else one per ``cpus_per_worker`` cores, at most ``workers``). Writes
    ``out_dir/batch.json``; a failed slide is listed there, not raised. A full output disk
    stops the batch: :class:`DiskFullError` (``batch.json`` then lists what was finished)."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    slides = expand_inputs(Path(p) for p in inputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in clean_stale_stages(out_dir):
        log.info("removed %s, left by a run that was killed", stale.name)
    digest = run_digest(template)
    result = BatchResult(digest=digest)
    try:
        if ray is None:
            _run_here(slides, out_dir, template, digest, force, on_event, result.outcomes)
        else:
            from wsisam.batch.ray_pool import run_on_ray

            result.outcomes, result.workers = run_on_ray(
                slides, out_dir, template, digest, force, ray, workers, cpus_per_worker,
                max_attempts, on_event)
    except DiskFullError as exc:
        result.seconds = time.perf_counter() - t0
        _write_stopped(out_dir, result, exc)
        raise
    result.seconds = time.perf_counter() - t0
    write_json(out_dir / "batch.json", result.summary())
    return result


def _write_stopped(out_dir: Path, result: BatchResult, exc: DiskFullError) -> None:
    """batch.json of a batch the full disk stopped: the slides finished so far and why it
    stopped. Written atomically, so when even that does not fit, the previous batch.json (or
    none) stays as it was, never a truncated one."""
    summary = {**result.summary(), "stopped": str(exc)}
    try:
        write_json(out_dir / "batch.json", summary)
    except OSError as err:
        log.warning("batch.json not updated (%s); the slide folders are what counts",
                    err.strerror)


def _run_here(slides: Sequence[Path], out_dir: Path, template: RunConfig, digest: str,
              force: bool, on_event: Progress | None, outcomes: list[Outcome]) -> None:
    """One slide after another in this process, the model loaded once (lazily: a batch that
    skips everything never opens it); each outcome appended to ``outcomes`` as it comes (so a
    batch stopped by a full disk still knows what it finished)."""
    graphs: ModelGraphs | None = None
    tiles = (lambda d, n: on_event("tiles", (d, n))) if on_event else None
    try:
        for slide in slides:
            if graphs is None and not _skippable(slide, out_dir, digest, force):
                graphs = ModelGraphs(template.model_dir, template.backend, template.model)
            o = process_slide(template, slide, out_dir, digest, force, graphs=graphs,
                              on_progress=tiles)
            log.info("%s %s%s", o.status, slide, f": {o.error}" if o.error else "")
            outcomes.append(o)
            if on_event:
                on_event("slide", o)
    finally:
        if graphs is not None:
            graphs.close()


def _skippable(slide: Path, out_dir: Path, digest: str, force: bool) -> bool:
    from wsisam.batch.slides import done_digest

    return not force and done_digest(out_dir, slide) == digest
