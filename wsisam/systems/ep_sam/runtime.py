"""EP-SAM on the numpy side: per level-0 patch the classifier (rotation TTA in one batch) gives
the tumour probability and the CAMs; patches above the threshold get CAM → 50 points → SAM mask.
The slide job, and the comparison cases of export parity and the precision gate."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from shapely.geometry import box as shapely_box
from shapely.ops import unary_union

from wsisam.errors import SlideError, TileReadError
from wsisam.runtime.compare import Stats
from wsisam.runtime.pipeline import Stage
from wsisam.runtime.postprocess import logits_to_crop, mask_iou
from wsisam.runtime.preprocess import preprocess_image
from wsisam.runtime.slide import read_region_at
from wsisam.runtime.tiling import TileRequest, plan_tiles
from wsisam.runtime.writers.geojson import feature, mask_to_polygons, write_feature_collection
from wsisam.systems.contract import GraphSet, SlideContext, SlideJob, SystemRuntime
from wsisam.systems.ep_sam.cam import (CamOptions, average_cam, cam_mask, normalised_cam,
                                       prompt_coords, sample_points, tta_batch)
from wsisam.systems.ep_sam.spec import EpSamSpec

TUMOUR = ("Tumor", (200, 0, 0))


@dataclass
class PatchResult:
    """One patch through the chain: ``prob`` sigmoid(logit of the unrotated patch), ``points``
    (P, 2) x, y patch px, ``mask`` (p, p) bool, ``cam_mask`` (p, p) bool."""

    prob: float
    points: np.ndarray | None = None
    mask: np.ndarray | None = None
    cam_mask: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)


class EpSamRuntime(SystemRuntime):
    spec: EpSamSpec
    parity_tiles = 2

    def classify(self, rgb_u8: np.ndarray, opts: CamOptions) -> tuple[float, np.ndarray]:
        """(p, p, 3) uint8 → (probability, raw CAMs (R, h, w) of the TTA rotations)."""
        out = self.graphs.run("classifier",
                              {"image": tta_batch(rgb_u8.astype(np.float32) / 255, opts.tta)})
        return float(1 / (1 + np.exp(-out["logits"][0, 0]))), out["cam"]

    def segment(self, rgb_u8: np.ndarray, cams: np.ndarray, opts: CamOptions,
                seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CAMs → points (P, 2) patch px → SAM mask (p, p) bool; also the CAM mask."""
        spec, p = self.spec, self.spec.patch_px
        avg = average_cam(cams, opts.cam_quantise)
        cmask = cam_mask(avg, p, opts.variant, opts.resize)
        pts = sample_points(normalised_cam(avg, p, opts.resize), cmask, opts.num_points, seed)
        image, geom = preprocess_image(rgb_u8, spec.preprocess)
        emb = self.graphs.run("encoder", {"image": image[None]})["image_embeddings"]
        coords, labels = prompt_coords(pts, p, spec.input_px, opts.coords)
        low = self.graphs.run("decoder", {"image_embeddings": emb, "point_coords": coords,
                                          "point_labels": labels})["low_res_masks"]
        return pts, logits_to_crop(low[0, 0], geom, spec.input_px) > 0, cmask

    def patch(self, rgb_u8: np.ndarray, opts: CamOptions = CamOptions(),
              threshold: float = -1.0, seed: int | None = None) -> PatchResult:
        """The whole chain on one patch (``threshold`` < 0: always segment)."""
        t0 = time.perf_counter()
        prob, cams = self.classify(rgb_u8, opts)
        res = PatchResult(prob, timings={"classifier_s": time.perf_counter() - t0})
        if prob > threshold:
            t1 = time.perf_counter()
            res.points, res.mask, res.cam_mask = self.segment(
                rgb_u8, cams, opts, opts.seed if seed is None else seed)
            res.timings["sam_s"] = time.perf_counter() - t1
        return res

    def job(self, mode: str, ctx: SlideContext) -> SlideJob:
        return EpSamJob(self, ctx)

    # --- comparison cases --------------------------------------------------------------------

    @classmethod
    def compare_random(cls, spec: EpSamSpec, ref: GraphSet, test: GraphSet,
                       seed: int) -> dict[str, Any]:
        """Classifier logits and CAMs on seeded random patches, then SAM's two graphs."""
        from wsisam.systems.sam.runtime import SamRuntime

        rng = np.random.default_rng(seed)
        img = rng.uniform(0, 1, (2, 3, spec.patch_px, spec.patch_px)).astype(np.float32)
        logits, cam = Stats(), Stats()
        r, t = ref.run("classifier", {"image": img}), test.run("classifier", {"image": img})
        logits.add(r["logits"], t["logits"])
        cam.add(r["cam"], t["cam"])
        return {"logits": logits.summary(), "cam": cam.summary(),
                **SamRuntime.compare_random(spec, ref, test, seed)}

    @classmethod
    def compare_tiles(cls, spec: EpSamSpec, ref: GraphSet, test: GraphSet,
                      tiles: list[Any], decoder_only: bool = True) -> dict[str, Any]:
        """The whole patch chain (host side shared) on real tissue tiles: same points, mask IoU."""
        e2e, same_points = Stats(), 0
        for tile in tiles:
            rgb = cv2.resize(tile.rgb, (spec.patch_px, spec.patch_px),
                             interpolation=cv2.INTER_AREA)
            a = cls(spec, ref).patch(rgb)
            b = cls(spec, test).patch(rgb)
            same_points += int(np.array_equal(a.points, b.points))
            e2e.add(a.mask[None].astype(np.float32), b.mask[None].astype(np.float32))
            e2e.add_ious([a.mask.astype(np.float32) - 0.5], [b.mask.astype(np.float32) - 0.5])
        return {"tiles": len(tiles), "same_points": same_points,
                "end_to_end_logits": e2e.summary(),
                "tile_sources": sorted({Path(t.slide).name for t in tiles})}


@dataclass
class Work:
    tile: TileRequest
    rgb: np.ndarray | None = None
    result: PatchResult | None = None
    error: str = ""


class EpSamJob(SlideJob):
    """Level-0 ``patch_px`` patches over the tissue → probability per patch; tumour masks merged
    across patches at :meth:`finish` (a union of level-0 polygons: no seams)."""

    progress_unit = "patch"

    def __init__(self, rt: EpSamRuntime, ctx: SlideContext) -> None:
        self.rt, self.ctx, spec = rt, ctx, rt.spec
        w, h = ctx.level0_wh
        p = spec.patch_px
        if w < p or h < p:
            raise SlideError(f"{ctx.reader.path} is {w}×{h} px at level 0, smaller than one "
                             f"{p}-px EP-SAM patch; use a larger slide or region")
        self.opts = CamOptions.from_options(ctx.options)
        self.threshold = float(ctx.options.get("threshold", 0.5))
        # level-0 patches, as released: the model frame is the slide's own µm/px
        self.tiles = plan_tiles(ctx.level0_wh, ctx.slide_mpp, ctx.slide_mpp, p, 0,
                                tissue_mask=ctx.tissue,
                                level_downsamples=tuple(ctx.reader.level_downsamples))
        self.polys: list[Any] = []
        self.probs: list[tuple[TileRequest, float]] = []
        self.skipped = 0
        self.segmented = 0
        self.time = {"classifier_s": 0.0, "sam_s": 0.0}

    def label_mpp(self) -> float:
        return self.ctx.slide_mpp * 4

    def units(self) -> list[TileRequest]:
        return self.tiles

    def stages(self) -> list[Stage]:
        return [Stage("read", self._read), Stage("infer", self._infer)]

    def _read(self, tile: TileRequest) -> Work:
        w = Work(tile)
        try:
            w.rgb = read_region_at(self.ctx.reader, tile.box_l0, self.rt.spec.patch_px)
        except TileReadError as exc:
            w.error = str(exc)
        return w

    def _infer(self, w: Work) -> Work:
        if not w.error:
            w.result = self.rt.patch(w.rgb, self.opts, self.threshold,
                                     seed=self.opts.seed + w.tile.index)
            w.rgb = None
        return w

    def collect(self, w: Work, sink: Any) -> int:
        if w.error:
            self.skipped += 1
            return 1
        r = w.result
        for k, v in r.timings.items():
            self.time[k] += v
        self.probs.append((w.tile, r.prob))
        if r.mask is not None:
            self.segmented += 1
            x0, y0, x1, y1 = w.tile.box_l0
            px = (x1 - x0) / r.mask.shape[1]
            geom = mask_to_polygons(r.mask, (px, px, x0, y0))
            if geom is not None:
                self.polys.append(geom.intersection(shapely_box(*w.tile.core_l0)))
        return 1

    def finish(self, sink: Any, seconds: float) -> dict[str, Any]:
        merged = unary_union(self.polys) if self.polys else None
        n_regions = 0
        if merged is not None and not merged.is_empty:
            for i, g in enumerate(getattr(merged, "geoms", [merged])):
                if g.area > 0:
                    sink.add(g, {"measurements": {"area_um2": g.area * self.ctx.slide_mpp ** 2}},
                             object_type="annotation", classification=TUMOUR, label=1)
                    n_regions += 1
        area_mm2 = (merged.area if merged is not None else 0.0) * self.ctx.slide_mpp ** 2 / 1e6
        self._write_heatmap(sink)
        n = len(self.probs)
        cls_s, sam_s = self.time["classifier_s"], self.time["sam_s"]
        return {
            "slide_result": {"tumour_area_mm2": round(area_mm2, 6), "tumour_regions": n_regions,
                             "max_probability": round(max((p for _, p in self.probs),
                                                          default=0.0), 4)},
            "patches": {"planned": len(self.tiles), "classified": n, "skipped": self.skipped,
                        "above_threshold": sum(p > self.threshold for _, p in self.probs),
                        "segmented": self.segmented, "patch_px": self.rt.spec.patch_px,
                        "threshold": self.threshold},
            "options": {k: getattr(self.opts, k) for k in CamOptions.__dataclass_fields__},
            "throughput": {"patches_per_s": round(n / max(seconds, 1e-9), 3),
                           "classifier_s": round(cls_s, 3), "sam_s": round(sam_s, 3),
                           "classifier_share": round(cls_s / max(cls_s + sam_s, 1e-9), 4)},
        }

    def _write_heatmap(self, sink: Any) -> None:
        """Probability per patch: GeoJSON tiles (QuPath measurement ``tumour_probability``) and
        an overlay PNG on the thumbnail."""
        feats = [feature(shapely_box(*t.core_l0), {"measurements": {"tumour_probability": p}},
                         object_type="tile", id=int(t.index)) for t, p in self.probs]
        write_feature_collection(sink.outs.add_output("heatmap_geojson", ".heatmap.geojson"),
                                 feats)
        thumb = sink.thumb
        ds = self.ctx.level0_wh[0] / thumb.shape[1]
        heat = np.zeros(thumb.shape[:2], np.float32)
        cover = np.zeros(thumb.shape[:2], bool)
        for t, p in self.probs:
            x0, y0, x1, y1 = (int(round(v / ds)) for v in t.core_l0)
            heat[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)] = p
            cover[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)] = True
        colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
        out = thumb.astype(np.float32)
        out[cover] = 0.5 * out[cover] + 0.5 * colour[cover]
        path = sink.outs.add_output("heatmap", ".heatmap.png")
        cv2.imwrite(str(path), out.astype(np.uint8)[..., ::-1])


__all__ = ["EpSamRuntime", "EpSamJob", "PatchResult"]
