"""WSI-SAM on the numpy side: HR crops planned as for SAM, an LR context tile for each (shared
between HR crops where the layout allows), each LR tile encoded once and reused by every HR crop
it serves, prompts mapped HR → LR on the host, one fused decoder call per prompt group; and the
comparison cases of export parity and the precision gate. Geometry: :mod:`.context`.

Unreadable regions: an HR crop that cannot be decoded is skipped (its prompts get status
``"skipped"`` and the reason), as in SAM's prompted mode. An LR tile that cannot be decoded is
re-read block by block and its unreadable blocks left white
(:func:`~wsisam.runtime.slide.read_with_blank_blocks`), because in the shared layout one LR tile
is the context of several HR crops; only an LR tile with no readable block skips its HR crops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from wsisam.errors import TileReadError
from wsisam.runtime.compare import Stats, random_images
from wsisam.runtime.crops import PromptResult, finest_crop_l0
from wsisam.runtime.outputs import OutputSink
from wsisam.runtime.pipeline import Stage
from wsisam.runtime.preprocess import InputGeometry, boxes_to_prompts, preprocess_image
from wsisam.runtime.slide import open_slide, read_region_at, read_with_blank_blocks
from wsisam.runtime.tissue import TissueTile
from wsisam.runtime.writers.geojson import mask_to_polygons
from wsisam.systems.contract import GraphSet, SlideContext, SlideJob, SystemRuntime
from wsisam.systems.sam.jobs import PromptedJob, prompt_arrays
from wsisam.systems.sam.runtime import tile_boxes_in
from wsisam.systems.wsi_sam.context import (LrPlan, concentric_lr_box, hr_to_lr, passes_summary,
                                            plan_lr_tiles)
from wsisam.systems.wsi_sam.spec import WsiSamSpec

REAL_MAX_BOXES = 8  # per tile in parity: the reference decodes one prompt at a time (released)


class WsiSamRuntime(SystemRuntime):
    """A WSI-SAM model: ``encode`` tiles (embedding + early feature), ``decode`` HR/LR pairs."""

    spec: WsiSamSpec
    parity_tiles = 4  # HR/LR pairs: its torch reference decodes prompt by prompt

    def __init__(self, spec: WsiSamSpec, graphs: GraphSet) -> None:
        super().__init__(spec, graphs)
        self.max_prompts = spec.decoder_graph().profile["num_prompts"][2]

    def encode(self, images_nchw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, 3, n, n) float32 preprocessed → embeddings (B, C, h, w) and early features
        (B, vit_dim, h, w)."""
        out = self.graphs.run("encoder", {"image": images_nchw})
        return out["image_embeddings"], out["interm_embeddings"]

    def decode(self, hr_embedding: np.ndarray, hr_interm: np.ndarray, lr_embedding: np.ndarray,
               hr_coords: np.ndarray, lr_coords: np.ndarray,
               labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One HR/LR pair ((1,C,h,w), (1,vit_dim,h,w), (1,C,h,w)) and N prompts (coords (N,P,2)
        in HR px and LR px, labels (N,P)) → logits (N,1,n,n) in the HR frame and IoU (N,1).

        N may exceed the graph's profile: prompts are decoded in chunks of ``max_prompts``.
        """
        masks, ious = [], []
        for s in range(0, len(labels), self.max_prompts):
            e = s + self.max_prompts
            m, i = _decode(self.graphs, hr_embedding, hr_interm, lr_embedding, hr_coords[s:e],
                           lr_coords[s:e], labels[s:e])
            masks.append(m)
            ious.append(i)
        return np.concatenate(masks), np.concatenate(ious)

    def job(self, mode: str, ctx: SlideContext) -> SlideJob:
        return WsiPromptedJob(self, ctx)

    # --- comparison cases --------------------------------------------------------------------

    @classmethod
    def compare_random(cls, spec: WsiSamSpec, ref: GraphSet, test: GraphSet,
                       seed: int) -> dict[str, Any]:
        """Encoder and decoder on seeded random inputs (image 0 is the HR tile, image 1 the LR)."""
        rng, image = random_images(seed, spec.input_px)
        emb, interm = _encode(ref, image)
        got_emb, got_interm = _encode(test, image)
        enc, feat, logits, iou = Stats(), Stats(), Stats(), Stats()
        enc.add(emb, got_emb)
        feat.add(interm, got_interm)
        for _, hc, lc, lab in random_prompt_batches(spec, rng):
            m_ref, s_ref = _decode(ref, emb[:1], interm[:1], emb[1:], hc, lc, lab, interm[1:])
            m_got, s_got = _decode(test, emb[:1], interm[:1], emb[1:], hc, lc, lab, interm[1:])
            logits.add(m_ref, m_got)
            logits.add_ious(list(m_ref[:, 0]), list(m_got[:, 0]))
            iou.add(s_ref, s_got)
        return {"encoder": enc.summary(), "interm_embeddings": feat.summary(),
                "decoder_logits": logits.summary(), "decoder_iou_predictions": iou.summary()}

    @classmethod
    def compare_tiles(cls, spec: WsiSamSpec, ref: GraphSet, test: GraphSet,
                      tiles: list[TissueTile], decoder_only: bool = True) -> dict[str, Any]:
        """HR/LR pairs of real tissue (the HR tile and its concentric LR tile) with box prompts:
        encoder, decoder alone (the reference's embeddings into both) and the whole chain."""
        enc, feat, dec_only, e2e = Stats(), Stats(), Stats(), Stats()
        n_prompts, n = 0, spec.input_px
        for tile, lr_rgb in zip(tiles, lr_tiles_for(tiles, spec)):
            image = np.stack([preprocess_image(rgb, spec.preprocess)[0]
                              for rgb in (tile.rgb, lr_rgb)])
            emb, interm = _encode(ref, image)
            got_emb, got_interm = _encode(test, image)
            enc.add(emb, got_emb)
            feat.add(interm, got_interm)
            boxes = np.floor(tile_boxes_in(tile, 1.0, REAL_MAX_BOXES))
            if not len(boxes):
                continue
            hc, lab = boxes_to_prompts(boxes)
            lc = (np.floor_divide(hc, 2) + n // 4).astype(np.float32)  # the released LR box
            m_ref, _ = _decode(ref, emb[:1], interm[:1], emb[1:], hc, lc, lab, interm[1:])
            if decoder_only:
                dec_only.add(m_ref, _decode(test, emb[:1], interm[:1], emb[1:], hc, lc, lab)[0])
            m_got, _ = _decode(test, got_emb[:1], got_interm[:1], got_emb[1:], hc, lc, lab)
            e2e.add(m_ref, m_got)
            e2e.add_ious(list(m_ref[:, 0]), list(m_got[:, 0]))
            n_prompts += len(boxes)
        out = {"tiles": len(tiles), "prompts": n_prompts, "encoder": enc.summary(),
               "interm_embeddings": feat.summary(), "decoder_logits": dec_only.summary(),
               "end_to_end_logits": e2e.summary(),
               "tile_sources": sorted({Path(t.slide).name for t in tiles}),
               "geometry": f"HR {n} px at {spec.mpp} µm/px, concentric LR at {spec.lr_mpp} "
                           f"µm/px, LR boxes box_hr // 2 + {n // 4}"}
        if not decoder_only:
            del out["decoder_logits"]
        return out


def _encode(graphs: GraphSet, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = graphs.run("encoder", {"image": image})
    return out["image_embeddings"], out["interm_embeddings"]


def _decode(graphs: GraphSet, hr_emb: np.ndarray, hr_interm: np.ndarray, lr_emb: np.ndarray,
            hr_coords: np.ndarray, lr_coords: np.ndarray, labels: np.ndarray,
            lr_interm: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The fused decoder. ``lr_interm`` goes only to a reference that runs the released LR head
    in full (``takes_lr_interm``): the graph has no such input, it cannot affect the output."""
    feed = {"hr_image_embeddings": hr_emb, "hr_interm_embeddings": np.ascontiguousarray(hr_interm),
            "lr_image_embeddings": lr_emb, "hr_point_coords": hr_coords,
            "lr_point_coords": lr_coords, "point_labels": labels}
    if lr_interm is not None and getattr(graphs, "takes_lr_interm", False):
        feed["lr_interm_embeddings"] = lr_interm
    out = graphs.run("decoder", feed)
    return out["masks"], out["iou_predictions"]


def random_prompt_batches(spec: WsiSamSpec, rng: np.random.Generator
                          ) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(kind, HR coords, LR coords, labels) batches in model-input px.

    Concentric integer boxes mapped the released way (``// 2 + n/4``); point sets (2 points and
    SAM's padding point) mapped by ``x/2 + n/4``; boxes on the shared layout's corner offsets.
    """
    n, k = spec.input_px, spec.heads.lr_scale
    xy = np.sort(np.floor(rng.uniform(0, n, (4, 2, 2))), axis=1).astype(np.float32)
    hr_box, labels = boxes_to_prompts(xy.reshape(4, 4))
    lr_box = (np.floor_divide(hr_box, 2) + n // 4).astype(np.float32)
    pts = rng.uniform(0, n, (3, 3, 2)).astype(np.float32)
    pts[:, 2] = 0.0
    pt_labels = np.array([[1, 0, -1], [1, 1, -1], [0, 1, -1]], np.float32)
    conc = (k - 1) * n / 2
    offsets = np.array([[0.0, 0.0], [(k - 1) * n, 0.0], [0.0, (k - 1) * n], [conc, conc]],
                       np.float32)
    shared_lr = np.stack([hr_to_lr(b, o, k) for b, o in zip(hr_box, offsets)])
    return [("boxes", hr_box, lr_box, labels),
            ("points", pts, hr_to_lr(pts, (conc, conc), k), pt_labels),
            ("shared-layout boxes", hr_box, shared_lr, labels)]


def lr_tiles_for(tiles: list[TissueTile], spec: WsiSamSpec) -> list[np.ndarray]:
    """The concentric LR tile (n px at ``lr_scale``× the HR field) of every HR tissue tile."""
    readers: dict[str, Any] = {}
    out = []
    try:
        for t in tiles:
            if t.slide not in readers:
                readers[t.slide] = open_slide(t.slide)
            box = concentric_lr_box(t.box_l0, spec.heads.lr_scale)
            out.append(read_region_at(readers[t.slide], box, spec.input_px))
    finally:
        for reader in readers.values():
            reader.close()
    return out


# --- prompted mode ---------------------------------------------------------------------------

@dataclass
class LrWork:
    """One LR context tile and the HR crops it serves, on their way through the stages."""

    index: int
    hr: list[int]
    lr_rgb: np.ndarray | None = None
    blanked: dict[str, Any] | None = None
    lr_embedding: np.ndarray | None = None
    hr_rgb: dict[int, np.ndarray] = field(default_factory=dict)
    hr_errors: dict[int, str] = field(default_factory=dict)
    hr_encoded: dict[int, tuple[np.ndarray, np.ndarray, InputGeometry]] = field(
        default_factory=dict)
    results: list[PromptResult] = field(default_factory=list)


class WsiPromptedJob(PromptedJob):
    """SAM's prompted job with an LR context tile per HR crop, laid out as option ``lr_layout``
    says (default: the model's, ``shared``); units are the LR tiles."""

    def __init__(self, rt: WsiSamRuntime, ctx: SlideContext) -> None:
        super().__init__(rt, ctx)
        spec = rt.spec
        self.layout = ctx.options.get("lr_layout") or spec.heads.lr_layout
        n, k = spec.input_px, spec.heads.lr_scale
        self.plan: LrPlan = plan_lr_tiles([c.box_l0 for c in self.crops],
                                          finest_crop_l0(spec, ctx.slide_mpp), n, k, self.layout)
        self.passes = {"hr": 0, "lr": 0}
        self.blanked_lr: list[dict[str, Any]] = []
        self._units = [LrWork(i, t.hr_indices) for i, t in enumerate(self.plan.lr_tiles)]

    @property
    def progress_total(self) -> int:
        return len(self.crops)

    def stages(self) -> list[Stage]:
        pipe, q = self.ctx.pipeline, self.ctx.pipeline.queue_size
        return [Stage("read", self._read_lr, workers=pipe.readers, queue_size=q),
                Stage("encode", self._encode_lr, queue_size=q),
                Stage("decode", self._decode_lr, queue_size=q)]

    def _read_lr(self, w: LrWork) -> LrWork:
        n = self.rt.spec.input_px
        w.lr_rgb, w.blanked = read_with_blank_blocks(self.ctx.reader,
                                                     self.plan.lr_tiles[w.index].box_l0, n)
        if w.blanked is not None and w.blanked["blank_blocks"] == w.blanked["blocks"]:
            w.lr_rgb = None
            return w
        for ci in w.hr:
            try:
                w.hr_rgb[ci] = read_region_at(self.ctx.reader, self.crops[ci].box_l0, n)
            except TileReadError as exc:
                w.hr_errors[ci] = str(exc)
        return w

    def _encode_lr(self, w: LrWork) -> LrWork:
        if w.lr_rgb is None:
            return w
        pre = self.rt.spec.preprocess
        lr_image, _ = preprocess_image(w.lr_rgb, pre)
        w.lr_embedding, _ = self.rt.encode(lr_image[None])  # its early feature cannot matter
        for ci, rgb in w.hr_rgb.items():
            image, geom = preprocess_image(rgb, pre)
            emb, interm = self.rt.encode(image[None])
            w.hr_encoded[ci] = (emb, interm, geom)
        w.lr_rgb, w.hr_rgb = None, {}
        return w

    def _decode_lr(self, w: LrWork) -> LrWork:
        n, k = self.rt.spec.input_px, self.rt.spec.heads.lr_scale
        for ci, (emb, interm, geom) in w.hr_encoded.items():
            crop = self.crops[ci]
            px_l0 = crop.side_l0 / n
            members = [self.prompts[i] for i in crop.prompt_indices]
            # crops are read square at n px: level-0 → HR px is one factor (the crop frame)
            for group, coords, labels in prompt_arrays(members, crop, n / crop.side_l0):
                lr_coords = hr_to_lr(coords, self.plan.offsets_hr[ci], k)
                logits, iou = self.rt.decode(emb, interm, w.lr_embedding, coords, lr_coords,
                                             labels)
                for p, lg, s in zip(group, logits[:, 0], iou[:, 0]):
                    mask = _in_crop(lg, geom) > 0
                    poly = mask_to_polygons(mask, (px_l0, px_l0, crop.box_l0[0],
                                                   crop.box_l0[1]))
                    w.results.append(PromptResult(p, poly, float(s), ci,
                                                  "ok" if poly is not None else "empty"))
        w.hr_encoded, w.lr_embedding = {}, None
        return w

    def collect(self, w: LrWork, sink: OutputSink) -> int:
        lr_box = self.plan.lr_tiles[w.index].box_l0
        where = {"lr_box_l0": [round(v, 1) for v in lr_box]}
        if w.blanked is not None:
            self.blanked_lr.append({**where, "hr_crops": w.hr, **w.blanked})
        if w.blanked is not None and w.blanked["blank_blocks"] == w.blanked["blocks"]:
            for ci in w.hr:
                self.skip(ci, f"its LR context tile is unreadable: {w.blanked['reason']}",
                          **where)
            return len(w.hr)
        self.passes["lr"] += 1
        for ci in w.hr:
            if ci in w.hr_errors:
                self.skip(ci, w.hr_errors[ci], **where)
            else:
                self.passes["hr"] += 1
        self.results.update((r.prompt.index, r) for r in w.results)
        return len(w.hr)

    def encoder_passes(self) -> int:
        return self.passes["hr"] + self.passes["lr"]

    def finish(self, sink: OutputSink, seconds: float) -> dict[str, Any]:
        section = super().finish(sink, seconds)
        spec = self.rt.spec
        n, k = spec.input_px, spec.heads.lr_scale
        summary = passes_summary(self.passes["hr"], self.passes["lr"], self.plan, n, k)
        summary.update({"hr_mpp": spec.mpp, "lr_mpp": spec.lr_mpp, "tile_px": n,
                        "lr_mapping": f"x_lr = (x_hr + offset_hr) / {k}",
                        "lr_tiles_with_blank_blocks": self.blanked_lr})
        return {**section, "lr_context": summary}


def _in_crop(logits_in: np.ndarray, geom: InputGeometry) -> np.ndarray:
    """Full-size logits (n, n) in the model-input frame → the crop frame (drop the padding)."""
    rh, rw = geom.resized_hw
    up = logits_in[:rh, :rw]
    if tuple(geom.crop_hw) != (rh, rw):
        up = cv2.resize(up, (geom.crop_hw[1], geom.crop_hw[0]), interpolation=cv2.INTER_LINEAR)
    return up

