"""Automatic segmentation of a whole slide as a pipeline of concurrent stages.

    tile plan ─► read (pool of OpenSlide readers) ─► prepare (preprocess + prompts)
              ─► encode (batched) ─► decode (all prompts of a tile) ─► filter (masks → objects)
              ─► caller: seam de-duplication, objects handed out as they are produced

Each stage runs on its own thread(s) with a bounded input queue (:mod:`wsisam.runtime.pipeline`);
OpenSlide reads and ONNX Runtime calls release the GIL, so reading, numpy work and inference
overlap. Every tile is encoded once; its embedding feeds every decoder call of the tile and is
dropped after decoding.

Memory bound: at most :func:`~wsisam.runtime.pipeline.in_flight_bound` tiles are in flight
(queues full, every worker busy), each at most one RGB tile, one model input, one embedding and
the logits of its prompts (LiteMedSAM: 0.2 + 0.8 + 4 MiB + 256 KiB per prompt), plus the seam
de-duplicator's objects near not-yet-finished rows — independent of the slide's size.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from wsisam.errors import TileReadError
from wsisam.runtime.automatic import (AutoConfig, Detection, SeamDeduper, TileSizes,
                                      decode_prompts,
                                      filter_masks, mask_nms, near_core, open_sides,
                                      owned_detections, propose, slide_stain_threshold)
from wsisam.runtime.model import SamRuntime
from wsisam.runtime.pipeline import Pipeline, Stage, in_flight_bound
from wsisam.runtime.preprocess import InputGeometry, preprocess_image
from wsisam.runtime.slide import SlideReader, read_region_at
from wsisam.runtime.tiling import TileRequest, plan_tiles
from wsisam.runtime.tissue import is_fluorescence, tissue_mask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineConfig:
    """How the stages run: reader threads, encoder batch, queue bound.

    ``concurrent``: True runs the stages on their threads; False runs the same stages one tile
    at a time in the caller's thread (the sequential baseline); None (default) chooses:
    sequential when inference runs on the CPU and this process has at most
    ``SEQUENTIAL_MAX_CORES`` cores, concurrent otherwise. Measured on 2 cores
    (docs/benchmarks.md, "Automatic mode"): one ONNX Runtime call already keeps both busy, and
    the host stages running beside it slow it more than they overlap (pipeline 0.92× the loop).

    ``exclusive_inference``: encoder and decoder calls never overlap (None: when the backend runs
    on the CPU). ONNX Runtime already spreads one call over every core, with spinning worker
    threads; two calls at once oversubscribe the cores (measured: docs/benchmarks.md,
    "Automatic mode"). The other stages still overlap with inference. On a GPU the calls
    overlap: that is what the pipeline is for.
    """

    readers: int = 2
    encoder_batch: int = 1
    queue_size: int = 2
    concurrent: bool | None = None
    exclusive_inference: bool | None = None


SEQUENTIAL_MAX_CORES = 2


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass
class TileWork:
    """One tile on its way through the stages; fields fill in stage by stage and are dropped
    once used, so a tile holds at most what the next stage needs."""

    tile: TileRequest
    rgb: np.ndarray | None = None  # (n, n, 3) uint8
    image: np.ndarray | None = None  # (3, n, n) float32, preprocessed
    geom: InputGeometry | None = None
    coords: np.ndarray | None = None  # (K, P, 2) model-input px
    labels: np.ndarray | None = None  # (K, P)
    embedding: np.ndarray | None = None  # (1, C, h, w)
    logits: np.ndarray | None = None  # (K, mh, mw)
    scores: np.ndarray | None = None  # (K,)
    detections: list[Detection] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    error: str = ""


class AutoSegmentation:
    """Iterate over the objects of one slide, produced by the stage pipeline.

    Frames: objects are level-0 polygons (:class:`~wsisam.runtime.automatic.Detection`). The
    tissue mask and tile plan are computed from the thumbnail at construction; iterating runs
    the pipeline (once). ``on_tile(done, total)`` is called in the iterating thread.
    """

    def __init__(self, reader: SlideReader, runtime: SamRuntime, slide_mpp: float,
                 auto: AutoConfig = AutoConfig(), pipe: PipelineConfig = PipelineConfig(),
                 thumb: np.ndarray | None = None,
                 on_tile: Callable[[int, int], None] | None = None) -> None:
        self.reader, self.rt, self.auto, self.pipe = reader, runtime, auto, pipe
        self.on_tile = on_tile
        spec = runtime.spec
        self.thumb = reader.thumbnail(1024) if thumb is None else thumb
        self.fluorescence = is_fluorescence(self.thumb)
        self.tissue = tissue_mask(self.thumb)
        self.level0_wh = tuple(reader.level_dimensions[0])
        self.sizes = TileSizes.of(auto, spec.mpp)
        self.tiles = plan_tiles(self.level0_wh, slide_mpp, spec.mpp, spec.input_px,
                                self.sizes.overlap_px, tissue_mask=self.tissue,
                                min_tissue=auto.min_tissue,
                                level_downsamples=tuple(reader.level_downsamples))
        self.stain_threshold = self._stain_threshold()
        self.skipped: list[dict[str, Any]] = []
        self.counts = {"tiles": 0, "tiles_without_prompts": 0, "prompts": 0,
                       "passed_filters": 0, "after_nms": 0, "owned": 0, "seam_duplicates": 0,
                       "objects": 0}
        self.seconds: dict[str, float] = {}
        on_cpu = runtime.describe().get("backend") == "ort-cpu"
        self.concurrent, self.concurrent_reason = _choose_concurrency(pipe.concurrent, on_cpu)
        exclusive = on_cpu if pipe.exclusive_inference is None else pipe.exclusive_inference
        self.exclusive_inference = bool(exclusive)
        self._infer_lock = threading.Lock() if exclusive else None
        self._lock_wait_s = {"encode": 0.0, "decode": 0.0}  # inside the stages' busy time
        self.stages = self._stages()
        self._pipeline = Pipeline(self.stages)

    def _stain_threshold(self) -> float | None:
        """The slide-wide blob threshold from up to ``threshold_tiles`` tiles spread over the
        plan (unreadable ones are left out); None when none is asked for or readable."""
        n = min(self.auto.threshold_tiles, len(self.tiles))
        if self.auto.prompt_scheme != "boxes" or n == 0:
            return None
        sample = []
        for i in np.linspace(0, len(self.tiles) - 1, n).round().astype(int):
            work = self._read(self.tiles[i])
            if not work.error:
                sample.append(work.rgb)
        return slide_stain_threshold(sample, self.fluorescence)

    # --- stages (each runs on pipeline threads) ---------------------------------------------

    def _stages(self) -> list[Stage]:
        q = self.pipe.queue_size
        return [Stage("read", self._read, workers=self.pipe.readers, queue_size=q),
                Stage("prepare", self._prepare, queue_size=q),
                Stage("encode", self._encode, queue_size=max(q, self.pipe.encoder_batch),
                      batch_size=self.pipe.encoder_batch),
                Stage("decode", self._decode, queue_size=q),
                Stage("filter", self._filter, queue_size=q)]

    def _read(self, tile: TileRequest) -> TileWork:
        work = TileWork(tile)
        box = tuple(float(v) for v in tile.box_l0)
        try:
            work.rgb = read_region_at(self.reader, box, tile.size_px)
        except TileReadError as exc:
            work.error = str(exc)
        return work

    def _prepare(self, work: TileWork) -> TileWork:
        if work.error:
            return work
        coords, labels = propose(work.rgb, self.fluorescence, self.auto, self.sizes,
                                 self.stain_threshold)
        keep = near_core(coords, labels, work.tile, self.sizes.core_margin_px)
        work.coords, work.labels = coords[keep], labels[keep]
        if len(work.coords):
            work.image, work.geom = preprocess_image(work.rgb, self.rt.spec.preprocess)
        work.rgb = None
        return work

    def _encode(self, batch: list[TileWork]) -> list[TileWork]:
        todo = [w for w in batch if w.image is not None]
        if todo:
            with self._inference("encode"):
                emb = self.rt.encode(np.stack([w.image for w in todo]))
            for w, e in zip(todo, emb):
                w.embedding, w.image = e[None], None
        return batch

    def _decode(self, work: TileWork) -> TileWork:
        if work.embedding is not None:
            work.logits, work.scores = decode_prompts(
                self._decode_call, work.embedding, work.coords, work.labels,
                self.rt.spec.multimask, self.auto.prompt_batch)
            work.embedding = None
        return work

    def _decode_call(self, *args: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._inference("decode"):
            return self.rt.decode(*args)

    @contextlib.contextmanager
    def _inference(self, stage: str) -> Iterator[None]:
        """Hold the inference lock (if any) around one call; the wait is booked to ``stage``."""
        if self._infer_lock is None:
            yield
            return
        t0 = time.perf_counter()
        with self._infer_lock:
            self._lock_wait_s[stage] += time.perf_counter() - t0
            yield

    def _filter(self, work: TileWork) -> TileWork:
        n = 0 if work.coords is None else len(work.coords)
        work.counts = {"prompts": n}
        if work.logits is not None:
            sides = open_sides(work.tile, self.level0_wh)
            cands = filter_masks(work.logits, work.scores, work.geom, self.rt.spec.input_px,
                                 sides, self.auto, self.sizes)
            kept = mask_nms(cands, self.auto.nms_iou)
            work.detections = owned_detections(work.tile, kept)
            work.counts.update(passed_filters=len(cands), after_nms=len(kept),
                               owned=len(work.detections))
        work.logits = work.scores = work.coords = work.labels = None
        return work

    # --- caller side -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Detection]:
        """Run the pipeline; yield each object once, as soon as its tile is stitched."""
        t0 = time.perf_counter()
        side_l0 = (self.tiles[0].box_l0[2] - self.tiles[0].box_l0[0]) if self.tiles else 1
        margin_l0 = side_l0 * self.sizes.overlap_px / max(self.rt.spec.input_px, 1)
        dedup = SeamDeduper(cell_l0=side_l0, margin_l0=margin_l0)
        pending = _PendingRows(self.tiles)
        run = self._pipeline.run if self.concurrent else self._pipeline.run_sequential
        stitch_s = 0.0
        for done, work in enumerate(run(iter(self.tiles)), 1):
            t = time.perf_counter()
            found = self._stitch(work, dedup)
            pending.done(work.tile.index)
            dedup.evict_above(pending.min_y0() - margin_l0)
            stitch_s += time.perf_counter() - t
            yield from found
            if self.on_tile:
                self.on_tile(done, len(self.tiles))
        self.counts["seam_duplicates"] = dedup.removed
        self.seconds = {"total": time.perf_counter() - t0, "stitch": stitch_s}

    def _stitch(self, work: TileWork, dedup: SeamDeduper) -> list[Detection]:
        c = self.counts
        c["tiles"] += 1
        if work.error:
            self.skipped.append({"tile": work.tile.index, "box_l0": list(work.tile.box_l0),
                                 "reason": work.error})
            log.warning("skipped tile %d: %s", work.tile.index, work.error)
            return []
        if not work.counts.get("prompts"):
            c["tiles_without_prompts"] += 1
        for key in ("prompts", "passed_filters", "after_nms", "owned"):
            c[key] += work.counts.get(key, 0)
        kept = [d for d in work.detections if dedup.keep(d, work.tile.core_l0)]
        c["objects"] += len(kept)
        return kept

    def report(self) -> dict[str, Any]:
        """Counts, skipped tiles and per-stage busy/wait seconds of the finished run."""
        stats = self._pipeline.stats()
        stages = {name: {k: (round(v, 3) if isinstance(v, float) else v) for k, v in s.items()}
                  for name, s in stats.items()}
        stages["stitch"] = {"busy_s": round(self.seconds.get("stitch", 0.0), 3), "workers": 1}
        for name, wait in self._lock_wait_s.items():  # waiting for the other's call is not work
            stages[name]["busy_s"] = round(stages[name]["busy_s"] - wait, 3)
            stages[name]["wait_inference_lock_s"] = round(wait, 3)
        per_worker = {n: s["busy_s"] / s["workers"] for n, s in stages.items() if n != "feeder"}
        return {"counts": dict(self.counts), "skipped": self.skipped,
                "stages": stages, "bottleneck": max(per_worker, key=per_worker.get),
                "concurrent": self.concurrent, "concurrent_reason": self.concurrent_reason,
                "readers": self.pipe.readers,
                "exclusive_inference": self.exclusive_inference,
                "max_tiles_in_flight": in_flight_bound(self.stages) if self.concurrent else 1,
                "encoder_batch": self.pipe.encoder_batch,
                "tiles_planned": len(self.tiles), "sizes_px": asdict(self.sizes),
                "fluorescence": self.fluorescence,
                "stain_threshold": self.stain_threshold}


def _choose_concurrency(asked: bool | None, on_cpu: bool) -> tuple[bool, str]:
    """(run the stages concurrently?, why) for :attr:`PipelineConfig.concurrent`."""
    if asked is not None:
        return asked, "requested"
    cores = usable_cores()
    if on_cpu and cores <= SEQUENTIAL_MAX_CORES:
        return False, (f"auto: inference on the CPU with {cores} cores, which one ONNX Runtime "
                       f"call already keeps busy: one tile at a time is faster here")
    return True, (f"auto: inference on {'the CPU' if on_cpu else 'an accelerator'} with "
                  f"{cores} CPU cores: stages overlap")


class _PendingRows:
    """Tiles not yet stitched, to know the top edge (level-0 y) no later tile reaches above."""

    def __init__(self, tiles: list[TileRequest]) -> None:
        self._y0 = [t.box_l0[1] for t in tiles]  # row-major: non-decreasing
        self._pos = {t.index: i for i, t in enumerate(tiles)}
        self._done = [False] * len(tiles)
        self._first = 0

    def done(self, index: int) -> None:
        self._done[self._pos[index]] = True
        while self._first < len(self._done) and self._done[self._first]:
            self._first += 1

    def min_y0(self) -> float:
        return float(self._y0[self._first]) if self._first < len(self._y0) else float("inf")


__all__ = ["AutoSegmentation", "PipelineConfig", "TileWork"]
