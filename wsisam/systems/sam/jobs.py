"""SAM's slide jobs: automatic mode (every object on the tissue) and prompted mode.

Automatic::

    tile plan ─► read (pool of OpenSlide readers) ─► prepare (preprocess + prompts)
              ─► encode (batched) ─► decode (all prompts of a tile) ─► filter (masks → objects)
              ─► collect: seam de-duplication, objects handed out as they are produced

Every tile is encoded once; its embedding feeds every decoder call of the tile and is dropped
after decoding. Memory bound: at most :func:`~wsisam.runtime.pipeline.in_flight_bound` tiles are
in flight, each at most one RGB tile, one model input, one embedding and the logits of its
prompts (LiteMedSAM: 0.2 + 0.8 + 4 MiB + 256 KiB per prompt), plus the seam de-duplicator's
objects near not-yet-finished rows — independent of the slide's size.

Prompted: prompts grouped into crops (:func:`wsisam.runtime.crops.plan_crops`), each crop read
and encoded once and its prompts decoded in batched calls, masks mapped back to level-0 polygons.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from wsisam.errors import SlideError, TileReadError
from wsisam.runtime.crops import (Crop, PromptResult, emit_results, plan_crops, prompts_report,
                                  skipped_crop)
from wsisam.runtime.outputs import OutputSink
from wsisam.runtime.pipeline import PipelineConfig, Stage
from wsisam.runtime.postprocess import logits_to_crop, select_mask_token
from wsisam.runtime.preprocess import (InputGeometry, boxes_to_prompts, points_to_prompts,
                                       preprocess_image)
from wsisam.runtime.prompt_input import Prompt
from wsisam.runtime.slide import read_region_at
from wsisam.runtime.tiling import TileRequest, plan_tiles, spread
from wsisam.runtime.tissue import is_fluorescence
from wsisam.runtime.writers.geojson import mask_to_polygons
from wsisam.systems.contract import SlideContext, SlideJob
from wsisam.systems.sam.automatic import (AutoConfig, Detection, SeamDeduper, TileSizes,
                                          decode_prompts, describe, filter_masks, mask_nms,
                                          near_core, open_sides, owned_detections)
from wsisam.systems.sam.prompts import propose, slide_stain_threshold

log = logging.getLogger(__name__)


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


def auto_config(options: dict[str, Any]) -> AutoConfig:
    """The automatic-mode settings from the system's run options."""
    return AutoConfig(prompt_scheme=options.get("scheme", AutoConfig.prompt_scheme),
                      pred_iou_thresh=options.get("min_score", AutoConfig.pred_iou_thresh),
                      prompt_batch=options.get("prompt_batch", AutoConfig.prompt_batch))


class AutomaticJob(SlideJob):
    """Every object on the tissue of ``ctx``'s slide (frames: objects are level-0 polygons,
    :class:`~wsisam.systems.sam.automatic.Detection`). The tissue mask and tile plan are
    computed from the thumbnail at construction."""

    #: what a tile carries through the stages (a subclass may add fields)
    work_type: type[TileWork] = TileWork

    def __init__(self, rt: Any, ctx: SlideContext, auto: AutoConfig | None = None) -> None:
        self.rt, self.ctx = rt, ctx
        self.auto = auto or auto_config(ctx.options)
        self.fluorescence = is_fluorescence(ctx.thumb)
        self.work_mpp, self.tile_px = self.tile_frame()
        self.sizes = TileSizes.of(self.auto, self.work_mpp)
        self.tiles = plan_tiles(ctx.level0_wh, ctx.slide_mpp, self.work_mpp, self.tile_px,
                                self.sizes.overlap_px, tissue_mask=ctx.tissue,
                                min_tissue=self.auto.min_tissue,
                                level_downsamples=tuple(ctx.reader.level_downsamples))
        self.stain_threshold = self._stain_threshold()
        self.skipped: list[dict[str, Any]] = []
        self.counts = {"tiles": 0, "tiles_without_prompts": 0, "prompts": 0,
                       "passed_filters": 0, "after_nms": 0, "owned": 0, "seam_duplicates": 0,
                       "objects": 0}
        side_l0 = (self.tiles[0].box_l0[2] - self.tiles[0].box_l0[0]) if self.tiles else 1
        self.margin_l0 = side_l0 * self.sizes.overlap_px / max(self.tile_px, 1)
        self.dedup = SeamDeduper(cell_l0=side_l0, margin_l0=self.margin_l0)
        self.pending = _PendingRows(self.tiles)

    def tile_frame(self) -> tuple[float, int]:
        """(µm/px, side px) of the tiles: the model input's (a subclass may work finer)."""
        return self.rt.spec.mpp, self.rt.spec.input_px

    def label_mpp(self) -> float:
        return self.work_mpp

    def units(self) -> list[TileRequest]:
        return self.tiles

    def _stain_threshold(self) -> float | None:
        """The slide-wide blob threshold from up to ``threshold_tiles`` tiles spread over the
        plan (unreadable ones are left out); None when none is asked for or readable."""
        if self.auto.prompt_scheme != "boxes" or self.auto.threshold_tiles == 0:
            return None
        return slide_stain_threshold(self.sample_tiles(self.auto.threshold_tiles),
                                     self.fluorescence)

    def sample_tiles(self, n: int) -> list[np.ndarray]:
        """RGB (tile_px, tile_px, 3) uint8 of up to ``n`` tiles spread evenly over the plan, for
        slide-wide statistics (unreadable ones left out)."""
        works = [self._read(t) for t in spread(self.tiles, n)]
        return [w.rgb for w in works if not w.error]

    # --- stages (each runs on pipeline threads) ---------------------------------------------

    def stages(self) -> list[Stage]:
        pipe: PipelineConfig = self.ctx.pipeline
        q = pipe.queue_size
        return [Stage("read", self._read, workers=pipe.readers, queue_size=q),
                Stage("prepare", self._prepare, queue_size=q),
                Stage("encode", self._encode, queue_size=max(q, pipe.encoder_batch),
                      batch_size=pipe.encoder_batch),
                Stage("decode", self._decode, queue_size=q),
                Stage("filter", self._filter, queue_size=q)]

    def _read(self, tile: TileRequest) -> TileWork:
        work = self.work_type(tile)
        box = tuple(float(v) for v in tile.box_l0)
        try:
            work.rgb = read_region_at(self.ctx.reader, box, tile.size_px)
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
            emb = self.rt.encode(np.stack([w.image for w in todo]))
            for w, e in zip(todo, emb):
                w.embedding, w.image = e[None], None
        return batch

    def _decode(self, work: TileWork) -> TileWork:
        if work.embedding is not None:
            work.logits, work.scores = decode_prompts(
                self.rt.decode, work.embedding, work.coords, work.labels,
                self.rt.spec.multimask, self.auto.prompt_batch)
            work.embedding = None
        return work

    def _filter(self, work: TileWork) -> TileWork:
        n = 0 if work.coords is None else len(work.coords)
        work.counts = {"prompts": n}
        if work.logits is not None:
            sides = open_sides(work.tile, self.ctx.level0_wh)
            cands = filter_masks(work.logits, work.scores, work.geom, self.rt.spec.input_px,
                                 sides, self.auto, self.sizes)
            kept = mask_nms(cands, self.auto.nms_iou)
            work.detections = owned_detections(work.tile, kept)
            work.counts.update(passed_filters=len(cands), after_nms=len(kept),
                               owned=len(work.detections))
        work.logits = work.scores = work.coords = work.labels = None
        return work

    # --- caller side -------------------------------------------------------------------------

    def stitch(self, work: TileWork) -> list[Detection]:
        """The tile's objects that no neighbour already gave (seams), in the caller's thread."""
        c = self.counts
        c["tiles"] += 1
        self.pending.done(work.tile.index)
        if work.error:
            self.skipped.append({"tile": work.tile.index, "box_l0": list(work.tile.box_l0),
                                 "reason": work.error})
            log.warning("skipped tile %d: %s", work.tile.index, work.error)
            kept: list[Detection] = []
        else:
            if not work.counts.get("prompts"):
                c["tiles_without_prompts"] += 1
            for key in ("prompts", "passed_filters", "after_nms", "owned"):
                c[key] += work.counts.get(key, 0)
            kept = [d for d in work.detections if self.dedup.keep(d, work.tile.core_l0)]
            c["objects"] += len(kept)
        self.dedup.evict_above(self.pending.min_y0() - self.margin_l0)
        self.counts["seam_duplicates"] = self.dedup.removed
        return kept

    def collect(self, work: TileWork, sink: OutputSink) -> int:
        for det in self.stitch(work):
            sink.add(det.geometry, {"score": round(det.score, 4),
                                    "stability": round(det.stability, 4),
                                    "tile": det.tile_index},
                     object_type="detection", classification=self.auto.object_class, label=1,
                     obj=det)
        return 1

    def pipeline_extras(self) -> dict[str, Any]:
        return {"tiles_planned": len(self.tiles), "sizes_px": asdict(self.sizes),
                "fluorescence": self.fluorescence, "stain_threshold": self.stain_threshold}

    def finish(self, sink: OutputSink, seconds: float) -> dict[str, Any]:
        if not self.tiles:
            raise SlideError(f"no tissue found on {self.ctx.reader.path} (thumbnail tissue "
                             f"detection); nothing to segment: check the slide, or pass --prompts")
        c, t = self.counts, max(seconds, 1e-9)
        cores = sum((x.core_l0[2] - x.core_l0[0]) * (x.core_l0[3] - x.core_l0[1])
                    for x in self.tiles)
        return {
            "automatic": describe(self.auto),
            "tissue": {"fluorescence": self.fluorescence,
                       "thumbnail_fraction": round(float(self.ctx.tissue.mean()), 4)},
            "tiles": {"planned": len(self.tiles), "processed": c["tiles"],
                      "without_prompts": c["tiles_without_prompts"], "skipped": self.skipped,
                      "tile_px": self.tile_px, "overlap_px": self.sizes.overlap_px},
            "objects": {"class": self.auto.object_class, "count": c["objects"],
                        "prompts_decoded": c["prompts"], "passed_filters": c["passed_filters"],
                        "after_nms": c["after_nms"], "owned": c["owned"],
                        "seam_duplicates_removed": c["seam_duplicates"]},
            "pipeline": self.pipeline_extras(),
            "throughput": {"tiles_per_s": round(c["tiles"] / t, 3),
                           "objects_per_s": round(c["objects"] / t, 2),
                           "tissue_mm2_per_s": round(cores * self.ctx.slide_mpp**2 / 1e6 / t, 4)},
        }


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


class AutoSegmentation:
    """Iterate over the objects of one slide as the stage pipeline produces them (the embedding
    API of SAM's automatic mode, without writing outputs): :class:`AutomaticJob` on the one
    slide driver's :class:`~wsisam.runtime.segment.StageRun`.

    ``runtime``: an open :class:`~wsisam.systems.sam.runtime.SamRuntime`. ``on_tile(done,
    total)`` is called in the iterating thread.
    """

    def __init__(self, reader: Any, runtime: Any, slide_mpp: float,
                 auto: AutoConfig = AutoConfig(), pipe: PipelineConfig = PipelineConfig(),
                 thumb: np.ndarray | None = None,
                 on_tile: Callable[[int, int], None] | None = None) -> None:
        from wsisam.runtime.graphs import ExclusiveGraphs
        from wsisam.runtime.segment import StageRun

        on_cpu = runtime.describe().get("backend") == "ort-cpu"
        self._exclusive = ExclusiveGraphs.wanted(runtime.graphs, pipe.exclusive_inference, on_cpu)
        rt = type(runtime)(runtime.spec, self._exclusive) if self._exclusive else runtime
        ctx = SlideContext(reader, slide_mpp, reader.thumbnail(1024) if thumb is None else thumb,
                           {}, pipe)
        self.job = AutomaticJob(rt, ctx, auto)
        self.tiles = self.job.tiles
        self.tissue = ctx.tissue
        self._engine = StageRun(self.job.stages(), pipe, on_cpu, self._exclusive)
        self.on_tile = on_tile

    def __iter__(self) -> Iterator[Detection]:
        for done, work in enumerate(self._engine.run(self.job.tiles), 1):
            t = time.perf_counter()
            found = self.job.stitch(work)
            self._engine.collect_s += time.perf_counter() - t
            yield from found
            if self.on_tile:
                self.on_tile(done, len(self.tiles))

    def report(self) -> dict[str, Any]:
        """Counts, skipped tiles and per-stage busy/wait seconds of the finished run."""
        return {"counts": dict(self.job.counts), "skipped": self.job.skipped,
                **self._engine.report(), **self.job.pipeline_extras()}


# --- prompted mode ---------------------------------------------------------------------------

def prompt_arrays(prompts: list[Prompt], crop: Crop, scale_in: float
                  ) -> Iterator[tuple[list[Prompt], np.ndarray, np.ndarray]]:
    """Decoder inputs for a crop's prompts, grouped by point count (a batch needs one P).

    Level-0 → model-input px: subtract the crop origin, multiply by ``scale_in``.
    """
    ox, oy = crop.box_l0[:2]
    boxes = [p for p in prompts if p.box_l0 is not None and not len(p.points_l0)]
    if boxes:
        xyxy = np.array([p.box_l0 for p in boxes], np.float32) - np.float32([ox, oy, ox, oy])
        yield (boxes, *boxes_to_prompts(xyxy * scale_in))
    by_len: dict[int, list[Prompt]] = defaultdict(list)
    for p in prompts:
        if len(p.points_l0):
            by_len[len(p.points_l0) + (2 if p.box_l0 else 0)].append(p)
    for group in by_len.values():
        sets = []
        labels = []
        for p in group:
            pts = (p.points_l0 - np.float32([ox, oy])) * scale_in
            lab = p.labels
            if p.box_l0 is not None:  # box + points: box corners labelled 2, 3 after the points
                pts = np.concatenate([pts, (np.float32(p.box_l0).reshape(2, 2)
                                            - np.float32([ox, oy])) * scale_in])
                lab = np.concatenate([lab, np.float32([2, 3])])
            sets.append(pts)
            labels.append(lab)
        yield (group, *points_to_prompts(sets, labels))


@dataclass
class CropWork:
    """One crop on its way through the prompted stages."""

    index: int
    crop: Crop
    rgb: np.ndarray | None = None
    image: np.ndarray | None = None
    geom: InputGeometry | None = None
    embedding: Any = None
    results: list[PromptResult] = field(default_factory=list)
    error: str = ""


class PromptedJob(SlideJob):
    """Every prompt of ``ctx.prompts`` segmented in the crops that
    :func:`~wsisam.runtime.crops.plan_crops` plans: read → encode → decode."""

    progress_unit = "crop"

    def __init__(self, rt: Any, ctx: SlideContext) -> None:
        self.rt, self.ctx = rt, ctx
        self.prompts: list[Prompt] = ctx.prompts or []
        self.context = float(ctx.options.get("context", 2.0))
        self.crops = plan_crops(self.prompts, rt.spec, ctx.slide_mpp, self.context)
        self.results: dict[int, PromptResult] = {}
        self.skipped: list[dict[str, Any]] = []
        self._units = [CropWork(i, c) for i, c in enumerate(self.crops)]

    def label_mpp(self) -> float:
        return self.rt.spec.mpp

    def units(self) -> list[Any]:
        return self._units

    def stages(self) -> list[Stage]:
        pipe, q = self.ctx.pipeline, self.ctx.pipeline.queue_size
        return [Stage("read", self._read, workers=pipe.readers, queue_size=q),
                Stage("encode", self._encode, queue_size=q),
                Stage("decode", self._decode, queue_size=q)]

    def _read(self, w: CropWork) -> CropWork:
        try:
            w.rgb = read_region_at(self.ctx.reader, w.crop.box_l0, self.rt.spec.input_px)
        except TileReadError as exc:
            w.error = str(exc)
        return w

    def _encode(self, w: CropWork) -> CropWork:
        if not w.error:
            w.image, w.geom = preprocess_image(w.rgb, self.rt.spec.preprocess)
            w.embedding, w.rgb = self.rt.encode(w.image[None]), None
        return w

    def _decode(self, w: CropWork) -> CropWork:
        if w.error:
            return w
        spec, crop = self.rt.spec, w.crop
        # crops are read square at input_px, so geom.scale == 1 and level-0 → input is one factor
        members = [self.prompts[i] for i in crop.prompt_indices]
        px_l0 = crop.side_l0 / spec.input_px
        for group, coords, labels in prompt_arrays(members, crop, spec.input_px / crop.side_l0):
            low_res, iou = self.rt.decode(w.embedding, coords, labels)
            multi = np.array([p.multimask and spec.multimask for p in group])
            logits, scores = select_mask_token(low_res, iou, multi)
            for p, lg, s in zip(group, logits, scores):
                mask = logits_to_crop(lg, w.geom, spec.input_px) > 0
                poly = mask_to_polygons(mask, (px_l0, px_l0, crop.box_l0[0], crop.box_l0[1]))
                w.results.append(PromptResult(p, poly, float(s), w.index,
                                              "ok" if poly is not None else "empty"))
        w.embedding = w.image = None
        return w

    def skip(self, ci: int, why: str, **extra: Any) -> None:
        entry, results = skipped_crop(ci, self.crops[ci], self.prompts, why, **extra)
        self.skipped.append(entry)
        log.warning("skipped crop %d: %s", ci, why)
        self.results.update((r.prompt.index, r) for r in results)

    def collect(self, w: CropWork, sink: OutputSink) -> int:
        if w.error:
            self.skip(w.index, w.error)
        self.results.update((r.prompt.index, r) for r in w.results)
        return 1

    def encoder_passes(self) -> int:
        return len(self.crops) - len(self.skipped)

    def finish(self, sink: OutputSink, seconds: float) -> dict[str, Any]:
        results = [self.results[i] for i in sorted(self.results)]
        emit_results(results, sink)
        t = max(seconds, 1e-9)
        return {"prompts": prompts_report(self.prompts, results, self.ctx.prompts_path),
                "crops": {"count": len(self.crops), "encoder_passes": self.encoder_passes(),
                          "context": self.context, "skipped": self.skipped},
                "throughput": {"prompts_per_s": round(len(results) / t, 2),
                               "crops_per_s": round(len(self.crops) / t, 2)}}
