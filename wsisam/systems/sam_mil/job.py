"""SAM-MIL's slide job: one run of the released pipeline over a slide, on the stage pipeline::

    units: tissue contours, then batches of 512 px level-0 patches
      ─► read (contour rendered at its power-of-two downsample; patches at level 0)
      ─► features (patch batches → 1024-d features, written into the bag)
      ─► sam (each contour → SAM automatic masks → compressed groups)
      ─► collect (bag rows and groups kept)  ─► finish: group features, MIL head, outputs

Memory: what is held across the run is the bag (N × D float32, N patches), the patch corners
(N × 2) and each SAM group's compressed mask (cells of ``patch_px/4`` level-0-equivalent px) and
level-0 polygon; patch RGBs and model inputs live only while in flight (bounded by the
pipeline's queues), a contour's rendering (≤ render_px²) only during its SAM stage.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np
from shapely.geometry import box as shapely_box

from wsisam.errors import SlideError, TileReadError
from wsisam.runtime.outputs import OutputSink
from wsisam.runtime.pipeline import Stage
from wsisam.runtime.slide import read_box, read_region_at
from wsisam.runtime.writers.geojson import FeatureStream, feature
from wsisam.systems.contract import SlideContext, SlideJob
from wsisam.systems.sam_mil.groups import (Contour, Group, automatic_masks, contour_patches,
                                           group_features, tissue_contours, to_groups)
from wsisam.systems.sam_mil.patches import feature_input

log = logging.getLogger(__name__)
PATCH_BATCH = 8  # patches per feature-graph call


@dataclass
class ContourWork:
    contour: Contour
    rgb: np.ndarray | None = None
    groups: list[Group] = field(default_factory=list)
    error: str = ""


@dataclass
class PatchWork:
    start: int  # first bag row
    corners_l0: list[tuple[int, int]]
    images: np.ndarray | None = None  # (B, 3, n, n)
    ok: np.ndarray | None = None  # (B,) bool: read
    features: np.ndarray | None = None  # (B, D)
    errors: list[str] = field(default_factory=list)


def random_weights(graphs: Any) -> bool:
    """Whether the model directory was exported with any random weights (its manifest)."""
    inner = getattr(graphs, "inner", graphs)
    return bool(getattr(inner, "manifest", {}).get("random_init"))


class SamMilJob(SlideJob):
    """Slide classification with an attention heatmap (frames: patches and groups level-0);
    ``rt``: the :class:`~wsisam.systems.sam_mil.runtime.SamMilRuntime` of the model."""

    progress_unit = "unit"

    def __init__(self, rt: Any, ctx: SlideContext) -> None:
        self.rt, self.ctx, spec = rt, ctx, rt.spec
        self.membership = ctx.options.get("membership", "corrected")
        self.contours = tissue_contours(ctx.tissue, ctx.level0_wh, spec.patch_px_l0,
                                        spec.amg.render_px)
        corners: list[tuple[int, int]] = []
        seen: set[tuple[int, int]] = set()
        for c in self.contours:  # contour boxes may overlap: a patch is read once
            for xy in contour_patches(c, ctx.tissue, ctx.level0_wh, spec.patch_px_l0):
                if xy not in seen:
                    seen.add(xy)
                    corners.append(xy)
        if not corners:
            raise SlideError(f"no tissue patches on {ctx.reader.path}: the bag would be empty "
                             f"(no {spec.patch_px_l0} px level-0 patch centre lies on the "
                             f"thumbnail tissue mask); check the slide or its tissue")
        self.coords_l0 = np.array(corners, np.int64)  # (N, 2)
        self.bag = np.zeros((len(corners), spec.resnet.out_dim), np.float32)  # (N, D)
        self.read_ok = np.zeros(len(corners), bool)
        self._units: list[Any] = [ContourWork(c) for c in self.contours] + [
            PatchWork(i, corners[i:i + PATCH_BATCH]) for i in range(0, len(corners), PATCH_BATCH)]
        self.groups: list[Group] = []
        self.skipped: list[dict[str, Any]] = []
        self.stage_s = {"read": 0.0, "features": 0.0, "sam": 0.0}
        self._lock = threading.Lock()

    def label_mpp(self) -> float:
        # group outlines at 1/16 patch: enough for masks compressed to 1/4 patch cells
        return self.ctx.slide_mpp * self.rt.spec.patch_px_l0 / 16

    def units(self) -> list[Any]:
        return self._units

    def stages(self) -> list[Stage]:
        pipe = self.ctx.pipeline
        return [Stage("read", self._read, workers=pipe.readers, queue_size=pipe.queue_size),
                Stage("features", self._features, queue_size=pipe.queue_size),
                Stage("sam", self._sam, queue_size=pipe.queue_size)]

    def _book(self, stage: str, t0: float) -> None:
        with self._lock:
            self.stage_s[stage] += time.perf_counter() - t0

    # --- stages ------------------------------------------------------------------------------

    def _read(self, w: Any) -> Any:
        t0, reader, spec = time.perf_counter(), self.ctx.reader, self.rt.spec
        if isinstance(w, ContourWork):
            try:
                w.rgb = read_box(reader, tuple(float(v) for v in w.contour.box_l0),
                                 w.contour.render_wh)
            except TileReadError as exc:
                w.error = str(exc)
        else:
            n, p = spec.feature_px, spec.patch_px_l0
            w.images = np.zeros((len(w.corners_l0), 3, n, n), np.float32)
            w.ok = np.zeros(len(w.corners_l0), bool)
            for i, (x, y) in enumerate(w.corners_l0):
                try:
                    rgb = read_region_at(reader, (x, y, x + p, y + p), p)
                    w.images[i], w.ok[i] = feature_input(rgb, spec), True
                except TileReadError as exc:
                    w.errors.append(f"patch ({x}, {y}): {exc}")
        self._book("read", t0)
        return w

    def _features(self, w: Any) -> Any:
        if isinstance(w, PatchWork) and w.ok is not None and w.ok.any():
            t0 = time.perf_counter()
            w.features = self.rt.features(w.images[w.ok])
            w.images = None
            self._book("features", t0)
        return w

    def _sam(self, w: Any) -> Any:
        if isinstance(w, ContourWork) and w.rgb is not None:
            t0, spec = time.perf_counter(), self.rt.spec
            masks = automatic_masks(w.rgb, self.rt.encode, self.rt.decode, spec.preprocess,
                                    spec.multimask, spec.amg)
            w.groups, w.rgb = to_groups(w.contour, masks), None
            self._book("sam", t0)
        return w

    # --- caller side -------------------------------------------------------------------------

    def collect(self, w: Any, sink: OutputSink) -> int:
        if isinstance(w, ContourWork):
            if w.error:
                self.skipped.append({"contour": w.contour.index, "reason": w.error})
            self.groups.extend(w.groups)
        else:
            rows = w.start + np.nonzero(w.ok)[0]
            if w.features is not None:
                self.bag[rows] = w.features
            self.read_ok[rows] = True
            self.skipped.extend({"patch": e} for e in w.errors)
        return 1

    def finish(self, sink: OutputSink, seconds: float) -> dict[str, Any]:
        spec = self.rt.spec
        ok = self.read_ok
        if not ok.any():
            raise SlideError(f"no patch of {self.ctx.reader.path} could be read: the bag is "
                             f"empty; check the slide file")
        coords, feats = self.coords_l0[ok], self.bag[ok]
        t0 = time.perf_counter()
        gfeats, kept = group_features(self.groups, coords, feats, spec.patch_px_l0,
                                      self.membership)
        t_group = time.perf_counter() - t0
        t0 = time.perf_counter()
        logits, attention = self.rt.classify(np.concatenate([feats, gfeats]))
        t_mil = time.perf_counter() - t0
        e = np.exp(logits - logits.max())
        prob = e / e.sum()
        n, g = len(feats), len(gfeats)
        self._write_groups(sink, kept, attention[n:])
        self._write_tiles(sink, coords, attention[:n])
        self._write_heatmap(sink, coords, attention[:n])
        per_contour = {c.index: {"box_l0": list(c.box_l0), "downsample": c.downsample,
                                 "cell_px": c.scale, "sam_masks": 0}
                       for c in self.contours}
        for grp in self.groups:
            per_contour[grp.contour.index]["sam_masks"] += 1
        t = max(seconds, 1e-9)
        return {
            "slide_result": {"class": int(np.argmax(prob)),
                             "probability": round(float(prob[1 if len(prob) > 1 else 0]), 6),
                             "probabilities": [round(float(p), 6) for p in prob],
                             "logits": [float(v) for v in logits],
                             "random_weights": random_weights(self.rt.graphs)},
            "random_weights": random_weights(self.rt.graphs),
            "instances": {"patches": n, "groups": g, "total": n + g,
                          "patches_planned": len(self.coords_l0),
                          "patches_skipped": int((~ok).sum())},
            "groups": {"membership": self.membership,
                       "first_contour_only": self.membership == "released",
                       "contours": len(self.contours), "sam_masks": len(self.groups),
                       "with_patches": g, "per_contour": list(per_contour.values()),
                       "amg": asdict(spec.amg)},
            "patches": {"px_l0": spec.patch_px_l0, "um": spec.patch_px_l0 * self.ctx.slide_mpp,
                        "feature_px": spec.feature_px},
            "time_per_stage_s": {**{k: round(v, 3) for k, v in self.stage_s.items()},
                                 "group_features": round(t_group, 3), "mil": round(t_mil, 4)},
            "skipped": self.skipped,
            "throughput": {"patches_per_s": round(n / t, 3),
                           "feature_patches_per_s": round(
                               n / max(self.stage_s["features"], 1e-9), 3)},
        }

    def _write_groups(self, sink: OutputSink, kept: list[Group], att: np.ndarray) -> None:
        """Every SAM mask as a GeoJSON annotation and label pixels (label = 1 + index mod 255);
        those that became a group feature carry its attention."""
        att_of = {id(grp): float(a) for grp, a in zip(kept, att)}
        for i, grp in enumerate(self.groups):
            meas = {"SAM score": round(grp.score, 4), "Stability": round(grp.stability, 4),
                    "Patches": 0 if grp.members is None or id(grp) not in att_of
                    else int(len(grp.members))}
            if id(grp) in att_of:
                meas["Attention"] = att_of[id(grp)]
            sink.add(grp.geometry_l0, {"group": i, "contour": grp.contour.index,
                                       "measurements": meas},
                     object_type="annotation", classification="SAM group",
                     label=1 + i % 255)

    def _write_tiles(self, sink: OutputSink, coords: np.ndarray, att: np.ndarray) -> None:
        """``<stem>.tiles.geojson``: one QuPath tile per patch, attention as a measurement."""
        p = self.rt.spec.patch_px_l0
        rank = np.argsort(np.argsort(att)) / max(len(att) - 1, 1)
        with FeatureStream(sink.outs.add_output("tiles", ".tiles.geojson")) as out:
            for (x, y), a, r in zip(coords, att, rank):
                out.add(feature(shapely_box(x, y, x + p, y + p),
                                {"measurements": {"Attention": float(a),
                                                  "Attention rank": round(float(r), 6)}},
                                object_type="tile", classification="Patch"))

    def _write_heatmap(self, sink: OutputSink, coords: np.ndarray, att: np.ndarray) -> None:
        """``<stem>.heatmap.png``: attention (min-max scaled, jet) over the thumbnail."""
        thumb = sink.thumb
        heat = np.zeros(thumb.shape[:2], np.float32)
        hit = np.zeros(thumb.shape[:2], bool)
        s = thumb.shape[1] / self.ctx.level0_wh[0]
        p = self.rt.spec.patch_px_l0
        span = float(att.max() - att.min())
        scaled = (att - att.min()) / span if span > 0 else np.full_like(att, 0.5)
        for (x, y), v in zip(coords, scaled):
            x0, y0 = int(x * s), int(y * s)
            x1, y1 = max(x0 + 1, int((x + p) * s)), max(y0 + 1, int((y + p) * s))
            heat[y0:y1, x0:x1], hit[y0:y1, x0:x1] = v, True
        color = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
        out = thumb.copy()
        out[hit] = (0.45 * thumb[hit] + 0.55 * color[hit]).astype(np.uint8)
        path = sink.outs.add_output("heatmap", ".heatmap.png")
        if not cv2.imwrite(str(path), np.ascontiguousarray(out[..., ::-1])):
            raise SlideError(f"could not write the attention heatmap {path}")
