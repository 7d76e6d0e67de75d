"""SAM-MIL on the numpy side: features of patches and the MIL head over a model's graphs, the
SAM model's automatic masks (through :class:`~wsisam.systems.sam.runtime.SamRuntime`), the
slide job, and the comparison cases of export parity and the precision gate."""

from __future__ import annotations

from typing import Any

import numpy as np

from wsisam.errors import ConfigError
from wsisam.runtime.compare import Stats
from wsisam.runtime.tissue import TissueTile
from wsisam.systems.contract import GraphSet, SlideContext, SlideJob
from wsisam.systems.sam.runtime import SamRuntime
from wsisam.systems.sam_mil.job import SamMilJob
from wsisam.systems.sam_mil.patches import feature_input
from wsisam.systems.sam_mil.spec import SamMilSpec

#: bag sizes the random comparison runs the MIL head on (a small and a whole-slide-sized bag)
PARITY_BAGS = (10, 20_000)


class SamMilRuntime(SamRuntime):
    """``encode``/``decode`` (SAM), ``features`` and ``classify`` over a model's graphs."""

    spec: SamMilSpec
    parity_tiles = 4

    def features(self, images_nchw: np.ndarray) -> np.ndarray:
        """(B, 3, n, n) → (B, D) patch features."""
        return self.graphs.run("features", {"image": images_nchw})["features"]

    def classify(self, bag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, D) bag → slide logits (C,) and attention (N,)."""
        out = self.graphs.run("mil", {"bag": np.ascontiguousarray(bag, np.float32)})
        return out["slide_logits"][0], out["attention"]

    def job(self, mode: str, ctx: SlideContext) -> SlideJob:
        if ctx.options.get("baseline", "attn") != "attn":
            raise ConfigError("baseline=selfattn (TransMIL-like) is not available: its PPEG "
                              "reshapes the bag to a square grid whose size depends on the "
                              "number of instances, so it has no fixed-shape graph; use "
                              "baseline=attn")
        return SamMilJob(self, ctx)

    @classmethod
    def compare_random(cls, spec: SamMilSpec, ref: GraphSet, test: GraphSet,
                       seed: int) -> dict[str, Any]:
        """SAM's encoder/decoder cases, the feature graph on random images, and the MIL head on
        random bags of :data:`PARITY_BAGS` instances."""
        out = super().compare_random(spec, ref, test, seed)
        rng = np.random.default_rng(seed + 1)
        img = rng.standard_normal((3, 3, spec.feature_px, spec.feature_px)).astype(np.float32)
        feats = Stats()
        feats.add(ref.run("features", {"image": img})["features"],
                  test.run("features", {"image": img})["features"])
        out["features"] = feats.summary()
        logits, att = Stats(), Stats()
        for n in PARITY_BAGS:
            bag = rng.standard_normal((n, spec.resnet.out_dim)).astype(np.float32)
            r, t = ref.run("mil", {"bag": bag}), test.run("mil", {"bag": bag})
            logits.add(r["slide_logits"], t["slide_logits"])
            att.add(r["attention"][None], t["attention"][None])
        out["mil_logits"], out["mil_attention"] = logits.summary(), att.summary()
        out["mil_bags"] = list(PARITY_BAGS)
        return out

    @classmethod
    def compare_tiles(cls, spec: SamMilSpec, ref: GraphSet, test: GraphSet,
                      tiles: list[TissueTile], decoder_only: bool = True) -> dict[str, Any]:
        """SAM's chain on the real tiles, then their features and the MIL head on the bag of
        them (the reference's features into both, and each side's own)."""
        out = super().compare_tiles(spec, ref, test, tiles, decoder_only)
        if not tiles:
            return out
        img = np.stack([feature_input(t.rgb, spec) for t in tiles])
        f_ref = ref.run("features", {"image": img})["features"]
        f_got = test.run("features", {"image": img})["features"]
        e2e = Stats()
        e2e.add(f_ref, f_got)
        out["end_to_end_features"] = e2e.summary()
        lg = Stats()
        lg.add(ref.run("mil", {"bag": f_ref})["slide_logits"],
               test.run("mil", {"bag": f_got})["slide_logits"])
        out["end_to_end_mil_logits"] = lg.summary()
        return out
