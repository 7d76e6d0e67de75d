"""Few-shot SAM on the numpy side: tiles over the tissue → encoder → decoder with the baked-in
support tokens → foreground; per-tile cores merged into seamless polygons at the end; the
modality check against the support set; the comparison cases of parity and precision."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from shapely.geometry import box
from shapely.ops import unary_union

from wsisam.errors import ConfigError, TileReadError
from wsisam.runtime.compare import Stats, random_images
from wsisam.runtime.pipeline import Stage
from wsisam.runtime.preprocess import preprocess_image
from wsisam.runtime.slide import read_region_at
from wsisam.runtime.stain_norm import as_reference, describe, lab_stats, normalise
from wsisam.runtime.tiling import TileRequest, plan_tiles, spread
from wsisam.runtime.writers.geojson import mask_to_polygons
from wsisam.systems.contract import GraphSet, SlideContext, SlideJob, SystemRuntime
from wsisam.systems.few_shot.spec import FewShotSpec
from wsisam.systems.few_shot.support import modality, stain_prompt

CLASS_NAME = "Support structure"
OVERLAP_PX = 32  # model-input px of context shared by neighbouring tiles
STAIN_SAMPLE_TILES = 16  # tiles spread over the plan whose tissue gives the slide's colour


class FewShotRuntime(SystemRuntime):
    spec: FewShotSpec

    def support_modality(self) -> str | None:
        return self.system_details().get("modality")

    def stain_reference(self) -> np.ndarray | None:
        """The support set's colour statistics (2, 3) that slides are normalised to, or None."""
        return as_reference(self.system_details().get("stain_ref"))

    def logit_threshold(self) -> float:
        """The decoder logit above which a pixel is the structure (the recipe's; 0 for models
        trained before it was recorded)."""
        return float(self.system_details().get("logit_threshold") or 0.0)

    def prompt(self, rgb: np.ndarray) -> np.ndarray | None:
        """(n,n,3) uint8 model-input tile → its (1,1,4h,4w) stain prompt, or None when the
        decoder takes none."""
        if not self.spec.stain_prompt:
            return None
        fluo = self.support_modality() == "fluorescence"
        return stain_prompt(rgb, self.spec.mask_hw, self.spec.mpp, fluo)[None]

    def fg_logits(self, image_nchw: np.ndarray, prompt: np.ndarray | None = None) -> np.ndarray:
        """(B,3,n,n) preprocessed [, (B,1,4h,4w) stain prompt] → (B,4h,4w) foreground logits
        (model-input frame)."""
        emb = self.graphs.run("encoder", {"image": image_nchw})["image_embeddings"]
        return self.graphs.run("decoder", decoder_feed(emb, prompt))["fg_logits"][:, 0]

    def job(self, mode: str, ctx: SlideContext) -> SlideJob:
        want = self.support_modality()
        got = modality(ctx.thumb)  # whole thumbnail: background is white or black
        if want and got != want:
            raise ConfigError(f"slide is {got} but the support set was {want}; train a "
                              f"few-shot model on {got} support images for this slide")
        return FewShotJob(self, ctx)

    @classmethod
    def compare_random(cls, spec: FewShotSpec, ref: GraphSet, test: GraphSet,
                       seed: int) -> dict[str, Any]:
        rng, image = random_images(seed, spec.input_px)
        emb = ref.run("encoder", {"image": image})["image_embeddings"]
        prompt = (4 * rng.standard_normal((len(image), 1, *spec.mask_hw))).astype(np.float32) \
            if spec.stain_prompt else None
        enc, dec = Stats(), Stats()
        enc.add(emb, test.run("encoder", {"image": image})["image_embeddings"])
        dec.add(ref.run("decoder", decoder_feed(emb, prompt))["fg_logits"],
                test.run("decoder", decoder_feed(emb, prompt))["fg_logits"])
        return {"encoder": enc.summary(), "decoder_logits": dec.summary()}

    @classmethod
    def compare_tiles(cls, spec: FewShotSpec, ref: GraphSet, test: GraphSet,
                      tiles: list[Any], decoder_only: bool = True) -> dict[str, Any]:
        enc, dec, e2e = Stats(), Stats(), Stats()
        for t in tiles:
            image = preprocess_image(t.rgb, spec.preprocess)[0][None]
            e_ref = ref.run("encoder", {"image": image})["image_embeddings"]
            e_got = test.run("encoder", {"image": image})["image_embeddings"]
            enc.add(e_ref, e_got)
            # parity tiles are brightfield H&E (calib.tiles): the hematoxylin prompt
            p = stain_prompt(t.rgb, spec.mask_hw, spec.mpp)[None] if spec.stain_prompt else None
            m_ref = ref.run("decoder", decoder_feed(e_ref, p))["fg_logits"]
            if decoder_only:
                dec.add(m_ref, test.run("decoder", decoder_feed(e_ref, p))["fg_logits"])
            m_got = test.run("decoder", decoder_feed(e_got, p))["fg_logits"]
            e2e.add(m_ref, m_got)
            e2e.add_ious([m_ref[0, 0]], [m_got[0, 0]])
        out = {"tiles": len(tiles), "prompts": len(tiles), "encoder": enc.summary(),
               "decoder_logits": dec.summary(),
               "end_to_end_logits": e2e.summary(),
               "tile_sources": sorted({Path(t.slide).name for t in tiles})}
        if not decoder_only:
            del out["decoder_logits"]
        return out


def decoder_feed(emb: np.ndarray, prompt: np.ndarray | None) -> dict[str, np.ndarray]:
    """The decoder graph's inputs: embeddings (B,C,h,w) [and the stain prompt (B,1,4h,4w)]."""
    return {"image_embeddings": emb} if prompt is None else \
        {"image_embeddings": emb, "dense_prompt": prompt}


@dataclass
class Work:
    tile: TileRequest
    image: np.ndarray | None = None
    prompt: np.ndarray | None = None
    fg: np.ndarray | None = None
    error: str = ""


class FewShotJob(SlideJob):
    """Tiles over the tissue (overlapping by ``OVERLAP_PX``); each tile's foreground clipped to
    the core it owns, so the union of cores is seamless; merged into polygons at the end."""

    def __init__(self, rt: FewShotRuntime, ctx: SlideContext) -> None:
        self.rt, self.ctx = rt, ctx
        n = rt.spec.input_px
        self.tiles = plan_tiles(ctx.level0_wh, ctx.slide_mpp, rt.spec.mpp, n, OVERLAP_PX,
                                tissue_mask=ctx.tissue,
                                level_downsamples=tuple(ctx.reader.level_downsamples))
        self.parts: list[Any] = []
        self.skipped: list[int] = []
        self.stain_ref = rt.stain_reference()
        self.threshold = rt.logit_threshold()
        self.slide_stain = None if self.stain_ref is None else lab_stats(self._sample_rgbs())

    def label_mpp(self) -> float:
        return self.rt.spec.mpp

    def units(self) -> list[TileRequest]:
        return self.tiles

    def stages(self) -> list[Stage]:
        return [Stage("read", self._read), Stage("infer", self._infer)]

    def _sample_rgbs(self) -> list[np.ndarray]:
        """Up to ``STAIN_SAMPLE_TILES`` readable tiles spread over the plan (slide colour)."""
        out = []
        for t in spread(self.tiles, STAIN_SAMPLE_TILES):
            try:
                out.append(read_region_at(self.ctx.reader, t.box_l0, self.rt.spec.input_px))
            except TileReadError:
                pass
        return out

    def _read(self, tile: TileRequest) -> Work:
        w = Work(tile)
        try:
            rgb = read_region_at(self.ctx.reader, tile.box_l0, self.rt.spec.input_px)
            rgb = normalise(rgb, self.slide_stain, self.stain_ref)
            w.image = preprocess_image(rgb, self.rt.spec.preprocess)[0][None]
            w.prompt = self.rt.prompt(rgb)
        except TileReadError as exc:
            w.error = str(exc)
        return w

    def _infer(self, w: Work) -> Work:
        if not w.error:
            w.fg = self.rt.fg_logits(w.image, w.prompt)[0] > self.threshold
            w.image = w.prompt = None
        return w

    def collect(self, w: Work, sink: Any) -> int:
        if w.error:
            self.skipped.append(w.tile.index)
            return 1
        x0, y0, x1, _ = w.tile.box_l0
        px_l0 = (x1 - x0) / w.fg.shape[1]
        geom = mask_to_polygons(w.fg, (px_l0, px_l0, x0, y0))
        if geom is not None and not geom.is_empty:
            core = geom.intersection(box(*w.tile.core_l0))
            if not core.is_empty:
                self.parts.append(core)
        return 1

    def finish(self, sink: Any, seconds: float) -> dict[str, Any]:
        merged = unary_union(self.parts) if self.parts else None
        polys = [] if merged is None or merged.is_empty else (
            list(merged.geoms) if hasattr(merged, "geoms") else [merged])
        for i, p in enumerate(polys):
            if p.geom_type in ("Polygon", "MultiPolygon") and p.area > 0:
                sink.add(p, {"region": i}, object_type="annotation", classification=CLASS_NAME,
                         label=1)
        stain = describe(self.slide_stain, self.stain_ref, "trained without --stain-norm")
        return {"few_shot": {"regions": len(polys), "support_modality":
                             self.rt.support_modality(), "area_um2": sink.area_um2(),
                             "stain_norm": stain, "logit_threshold": self.threshold,
                             "stain_prompt": self.rt.spec.stain_prompt},
                "objects": {"count": len(polys), "class": CLASS_NAME,
                            "area_um2": sink.area_um2()},
                "throughput": {"tiles_per_s": round(len(self.tiles) / max(seconds, 1e-9), 3)},
                "tiles": {"planned": len(self.tiles), "processed": len(self.tiles) - len(
                    self.skipped), "skipped": self.skipped}}
