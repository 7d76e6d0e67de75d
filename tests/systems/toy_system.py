"""A toy system that only the tests register: three graphs (``stem`` image → features,
``head`` features → a score map, ``pool`` an instance bag with a dynamic axis → slide logits and
attention) and a slide-level result. Numpy side only (its torch side: ``toy_export.py``); it
shows that the contract covers what the next systems need without touching the drivers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsisam.errors import TileReadError
from wsisam.registry import (SAM_MEAN, SAM_STD, GraphSpec, Preprocess, SystemEntry, SystemSpec,
                             TensorSpec, Tolerances, WeightsSource)
from wsisam.runtime.compare import Stats
from wsisam.runtime.pipeline import Stage
from wsisam.runtime.preprocess import preprocess_image
from wsisam.runtime.slide import read_region_at
from wsisam.runtime.tiling import TileRequest, plan_tiles
from wsisam.runtime.writers.geojson import mask_to_polygons
from wsisam.systems.contract import SlideJob, SystemRuntime

ENTRY = SystemEntry("toy", runtime="tests.systems.toy_system:ToyRuntime",
                    export="tests.systems.toy_export:ToyExportPlan")
C, N = 8, 32  # feature channels, tile px


@dataclass(frozen=True)
class ToySpec(SystemSpec):
    def graphs(self) -> dict[str, GraphSpec]:
        g = N // 4
        return {
            "stem": GraphSpec("stem", (TensorSpec("image", "float32", ("batch", 3, N, N)),),
                              (TensorSpec("features", "float32", ("batch", C, g, g)),),
                              {"batch": (1, 4, 16)}),
            "head": GraphSpec("head", (TensorSpec("features", "float32", ("batch", C, g, g)),),
                              (TensorSpec("scores", "float32", ("batch", 1, g, g)),),
                              {"batch": (1, 4, 16)}),
            "pool": GraphSpec("pool", (TensorSpec("bag", "float32", ("instances", C)),),
                              (TensorSpec("slide_logits", "float32", (1, 2)),
                               TensorSpec("attention", "float32", ("instances",))),
                              {"instances": (1, 64, 100000)}),
        }


SPEC = ToySpec(name="test-toy", system="toy", description="test: three-graph toy system",
               preprocess=Preprocess(N, SAM_MEAN, SAM_STD), mpp=16.0,
               weights={"toy": WeightsSource(kind="random")}, seed=7, modes=("slide",),
               tolerances=Tolerances(max_abs={"stem": 1e-4, "head": 1e-4, "pool": 1e-5,
                                              "end_to_end_logits": 1e-4}))


class ToyRuntime(SystemRuntime):
    def job(self, mode: str, ctx: Any) -> SlideJob:
        return ToyJob(self, ctx)

    @classmethod
    def compare_random(cls, spec, ref, test, seed):
        rng = np.random.default_rng(seed)
        img = rng.standard_normal((2, 3, N, N)).astype(np.float32)
        bag = rng.standard_normal((10, C)).astype(np.float32)
        out = {}
        for graph, feed in (("stem", {"image": img}), ("pool", {"bag": bag})):
            st = Stats()
            for k, v in ref.run(graph, feed).items():
                st.add(v[None], test.run(graph, feed)[k][None])
            out[graph] = st.summary()
        feats = ref.run("stem", {"image": img})["features"]
        st = Stats()
        st.add(ref.run("head", {"features": feats})["scores"],
               test.run("head", {"features": feats})["scores"])
        out["head"] = st.summary()
        return out

    @classmethod
    def compare_tiles(cls, spec, ref, test, tiles, decoder_only=True):
        e2e = Stats()
        for t in tiles:
            image = preprocess_image(t.rgb, spec.preprocess)[0][None]
            s_ref = ref.run("head", ref.run("stem", {"image": image}))["scores"]
            s_got = test.run("head", test.run("stem", {"image": image}))["scores"]
            e2e.add(s_ref, s_got)
            e2e.add_ious([s_ref[0, 0]], [s_got[0, 0]])
        return {"tiles": len(tiles), "end_to_end_logits": e2e.summary(),
                "tile_sources": sorted({Path(t.slide).name for t in tiles})}


@dataclass
class Work:
    tile: TileRequest
    image: np.ndarray | None = None
    scores: np.ndarray | None = None
    feature: np.ndarray | None = None
    error: str = ""


class ToyJob(SlideJob):
    """Tiles → stem → head (regions where the score is > 0) and a bag of mean tile features →
    pool → slide label."""

    def __init__(self, rt: ToyRuntime, ctx: Any) -> None:
        self.rt, self.ctx = rt, ctx
        self.tiles = plan_tiles(ctx.level0_wh, ctx.slide_mpp, rt.spec.mpp, N, 0,
                                tissue_mask=ctx.tissue,
                                level_downsamples=tuple(ctx.reader.level_downsamples))
        self.bag: list[np.ndarray] = []
        self.skipped = 0

    def label_mpp(self) -> float:
        return self.rt.spec.mpp

    def units(self):
        return self.tiles

    def stages(self):
        return [Stage("read", self._read), Stage("infer", self._infer)]

    def _read(self, tile: TileRequest) -> Work:
        w = Work(tile)
        try:
            w.image = preprocess_image(read_region_at(self.ctx.reader, tile.box_l0, N),
                                       self.rt.spec.preprocess)[0][None]
        except TileReadError as exc:
            w.error = str(exc)
        return w

    def _infer(self, w: Work) -> Work:
        if not w.error:
            feats = self.rt.graphs.run("stem", {"image": w.image})["features"]
            w.scores = self.rt.graphs.run("head", {"features": feats})["scores"][0, 0]
            w.feature, w.image = feats[0].mean(axis=(1, 2)), None
        return w

    def collect(self, w: Work, sink) -> int:
        if w.error:
            self.skipped += 1
            return 1
        self.bag.append(w.feature)
        px_l0 = (w.tile.box_l0[2] - w.tile.box_l0[0]) / w.scores.shape[1]
        geom = mask_to_polygons(w.scores > 0, (px_l0, px_l0, *w.tile.box_l0[:2]))
        if geom is not None:
            sink.add(geom, {"tile": w.tile.index}, object_type="annotation",
                     classification="Toy region", label=1)
        return 1

    def finish(self, sink, seconds):
        out = self.rt.graphs.run("pool", {"bag": np.stack(self.bag).astype(np.float32)})
        logits = out["slide_logits"][0]
        prob = float(np.exp(logits[1]) / np.exp(logits).sum())
        return {"slide_result": {"label": int(prob > 0.5), "probability": round(prob, 4),
                                 "instances": len(self.bag),
                                 "attention_sum": round(float(out["attention"].sum()), 4)},
                "tiles": {"planned": len(self.tiles), "skipped": self.skipped}}
