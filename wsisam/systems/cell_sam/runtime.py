"""CellSAM on the numpy side: nucleus instances over a slide with no decoder pass per nucleus.

::

    tile plan (head µm/px) ─► read ─► prepare (head input + the large encoder's, area-
    reduced) ─► encode (batched) ─► head (batched)
              ─► instances (seeded watershed, tile px) ─► collect: seam ownership as in SAM's
              automatic mode, nuclei out as QuPath detections

The tile plan, seam ownership (object centroid in the tile's core, then a seam de-duplicator)
and the outputs are SAM automatic mode's (:class:`wsisam.systems.sam.jobs.AutomaticJob`); only
the stages between reading and collecting differ.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np
from scipy import ndimage as ndi

from wsisam.errors import SlideError
from wsisam.runtime.compare import Stats, random_images
from wsisam.runtime.outputs import OutputSink
from wsisam.runtime.pipeline import PipelineConfig, Stage
from wsisam.runtime.stain_norm import as_reference, describe, lab_stats, normalise
from wsisam.runtime.tissue import TissueTile
from wsisam.systems.cell_sam.instances import WatershedConfig, maps_to_instances
from wsisam.systems.cell_sam.fusion import TERRITORY_UM, fuse, sam_masks
from wsisam.systems.cell_sam.segment import tile_inputs
from wsisam.systems.cell_sam.spec import CellSamSpec
from wsisam.systems.contract import GraphSet, SlideContext, SlideJob
from wsisam.systems.sam.automatic import AutoConfig, Candidate, owned_detections
from wsisam.systems.sam.jobs import AutomaticJob, TileWork
from wsisam.systems.sam.runtime import SamRuntime

METHOD = "cellsam-head-watershed"
STAIN_SAMPLE_TILES = 16  # tiles spread over the plan whose tissue gives the slide's colour


class CellSamRuntime(SamRuntime):
    """``encode`` tiles with the SAM encoder, ``maps`` from the head, instances by watershed;
    SAM's ``decode`` for mask fusion."""

    spec: CellSamSpec

    def maps(self, images_nchw: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        """(B, 3, n, n) preprocessed tiles and their embeddings → (B, 3, n, n) maps in [0, 1]."""
        return self.graphs.run("head", {"image": images_nchw,
                                        "image_embeddings": embeddings})["maps"]

    def watershed(self, options: dict[str, Any] | None = None) -> WatershedConfig:
        """The trained model's thresholds (manifest), overridden by run options given."""
        trained = self.system_details().get("watershed", {})
        given = {k: v for k, v in (options or {}).items() if v is not None}
        return replace(WatershedConfig(), **{**trained, **given})

    def stain_reference(self) -> np.ndarray | None:
        """The training set's colour statistics (2, 3) that tiles are normalised to, or None
        for a head trained without normalisation."""
        return as_reference(self.system_details().get("stain_ref"))

    def job(self, mode: str, ctx: SlideContext) -> SlideJob:
        return NucleiJob(self, ctx)

    # --- comparison cases --------------------------------------------------------------------

    @classmethod
    def compare_random(cls, spec: CellSamSpec, ref: GraphSet, test: GraphSet,
                       seed: int) -> dict[str, Any]:
        """SAM's encoder and decoder cases, and the head on the reference embedding, on seeded
        random images."""
        out = SamRuntime.compare_random(spec, ref, test, seed)
        rng, image = random_images(seed, spec.input_px)
        emb = ref.run("encoder", {"image": image})["image_embeddings"]
        head = Stats()
        head_image = image if spec.head.upscale == 1 else rng.standard_normal(
            (len(image), 3, spec.head_px, spec.head_px)).astype(np.float32)
        feed = {"image": head_image, "image_embeddings": emb}
        head.add(ref.run("head", feed)["maps"], test.run("head", feed)["maps"])
        return {**out, "head": head.summary()}

    @classmethod
    def compare_tiles(cls, spec: CellSamSpec, ref: GraphSet, test: GraphSet,
                      tiles: list[TissueTile], decoder_only: bool = True) -> dict[str, Any]:
        """Real tissue tiles: encoder, head alone (reference embedding into both) and the chain
        (``maps``; its mask IoU is the foreground's, maps[0] > 0.5). Tiles come at the model
        input's µm/px; for a finer head they are upsampled to ``head_px`` (bilinear)."""
        enc, head_only, chain = Stats(), Stats(), Stats()
        for tile in tiles:
            rgb = tile.rgb if spec.head.upscale == 1 else cv2.resize(
                tile.rgb, (spec.head_px, spec.head_px), interpolation=cv2.INTER_LINEAR)
            image, enc_image = (a[None] for a in tile_inputs(rgb, spec))
            e_ref = ref.run("encoder", {"image": enc_image})["image_embeddings"]
            e_got = test.run("encoder", {"image": enc_image})["image_embeddings"]
            enc.add(e_ref, e_got)
            m_ref = ref.run("head", {"image": image, "image_embeddings": e_ref})["maps"]
            if decoder_only:
                head_only.add(m_ref, test.run("head", {"image": image,
                                                       "image_embeddings": e_ref})["maps"])
            m_got = test.run("head", {"image": image, "image_embeddings": e_got})["maps"]
            chain.add(m_ref, m_got)
            chain.add_ious([m_ref[0, 0] - 0.5], [m_got[0, 0] - 0.5])
        out = {"tiles": len(tiles), "encoder": enc.summary(), "head": head_only.summary(),
               "end_to_end_logits": chain.summary()}
        if not decoder_only:
            del out["head"]
        return out


@dataclass
class NucleusWork(TileWork):
    encoder_image: np.ndarray | None = None  # (3, n, n) large-encoder input
    maps: np.ndarray | None = None  # (3, head_px, head_px) head output


def tile_candidates(labels: np.ndarray, maps: np.ndarray) -> list[Candidate]:
    """(n, n) nuclei labels and (3, n, n) maps of one tile → its nuclei (tile px), scored by
    mean foreground."""
    cands = []
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        m = labels[sl] == i
        s = float(maps[0][sl][m].mean())
        cands.append(Candidate(m, (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop), s, s))
    return cands


class NucleiJob(AutomaticJob):
    """Nuclei of every tissue tile from the head's maps (frames as in :class:`AutomaticJob`)."""

    work_type = NucleusWork

    def __init__(self, rt: CellSamRuntime, ctx: SlideContext) -> None:
        # SAM's automatic settings give the tile plan and seams (nuclei ≤ 32 µm); no prompts
        super().__init__(rt, ctx, AutoConfig(prompt_scheme="points", threshold_tiles=0))
        if self.fluorescence:
            raise SlideError(f"{ctx.reader.path} looks like fluorescence; the CellSAM head was "
                             f"trained on H&E brightfield: use --model litemedsam")
        self.ws = rt.watershed({k: ctx.options.get(k) for k in
                                ("fg_thresh", "centre_thresh", "boundary_thresh")})
        self.fusion = ctx.options.get("fusion") or "off"
        self.stain_ref = rt.stain_reference()
        self.slide_stain = None if self.stain_ref is None else lab_stats(
            self.sample_tiles(STAIN_SAMPLE_TILES))

    def stages(self) -> list[Stage]:
        pipe: PipelineConfig = self.ctx.pipeline
        q, b = pipe.queue_size, pipe.encoder_batch
        return [Stage("read", self._read, workers=pipe.readers, queue_size=q),
                Stage("prepare", self._prepare, queue_size=q),
                Stage("encode", self._encode, queue_size=max(q, b), batch_size=b),
                Stage("head", self._head, queue_size=max(q, b), batch_size=b),
                Stage("instances", self._instances, queue_size=q)]

    def tile_frame(self) -> tuple[float, int]:
        return self.rt.spec.head_mpp, self.rt.spec.head_px

    def _prepare(self, work: NucleusWork) -> NucleusWork:  # type: ignore[override]
        if not work.error:
            rgb = normalise(work.rgb, self.slide_stain, self.stain_ref)
            work.image, work.encoder_image = tile_inputs(rgb, self.rt.spec)
        work.rgb = None
        return work

    def _encode(self, batch: list[NucleusWork]) -> list[NucleusWork]:  # type: ignore[override]
        todo = [w for w in batch if w.encoder_image is not None]
        if todo:
            for w, e in zip(todo, self.rt.encode(np.stack([w.encoder_image for w in todo]))):
                w.embedding, w.encoder_image = e, None
        return batch

    def _head(self, batch: list[NucleusWork]) -> list[NucleusWork]:
        todo = [w for w in batch if w.embedding is not None]
        if todo:
            maps = self.rt.maps(np.stack([w.image for w in todo]),
                                np.stack([w.embedding for w in todo]))
            for w, m in zip(todo, maps):
                w.maps, w.image = m, None
                if self.fusion == "off":
                    w.embedding = None
        return batch

    def _instances(self, work: NucleusWork) -> NucleusWork:
        if work.maps is not None:
            labels = maps_to_instances(work.maps, self.work_mpp, self.ws)
            if self.fusion != "off":
                labels = self._fused(labels, work)
            cands = tile_candidates(labels, work.maps)
            work.detections = owned_detections(work.tile, cands)
            work.counts = {"prompts": 1, "passed_filters": len(cands), "after_nms": len(cands),
                           "owned": len(work.detections)}
            work.maps = work.embedding = None
        return work

    def _fused(self, labels: np.ndarray, work: NucleusWork) -> np.ndarray:
        """The tile's nuclei with SAM decoder masks fused in (:mod:`.fusion`)."""
        emb = work.embedding[None]
        ids, logits, scores = sam_masks(
            labels, lambda c, lab: self.rt.decode(emb, c, lab), 1 / self.rt.spec.head.upscale)
        return fuse(labels, work.maps[0], ids, logits, scores, TERRITORY_UM / self.work_mpp,
                    self.fusion)

    def finish(self, sink: OutputSink, seconds: float) -> dict[str, Any]:
        out = super().finish(sink, seconds)
        c = self.counts
        out["automatic"] = {"method": METHOD, "object_class": self.auto.object_class,
                            "watershed": {k: getattr(self.ws, k) for k in
                                          ("fg_thresh", "centre_thresh", "boundary_thresh",
                                           "min_object_um2")},
                            "work_mpp": self.work_mpp, "fusion": self.fusion,
                            "stain_norm": describe(self.slide_stain, self.stain_ref,
                                                   "head trained without a reference")}
        out["objects"] = {"class": self.auto.object_class, "count": c["objects"],
                          "nuclei": c["objects"], "instances_in_tiles": c["passed_filters"],
                          "owned": c["owned"], "seam_duplicates_removed": c["seam_duplicates"]}
        out["tiles"].pop("without_prompts", None)
        out["pipeline"].pop("stain_threshold", None)
        return out
