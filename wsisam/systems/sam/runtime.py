"""SAM on the numpy side: encode tiles and decode batches of prompts over a model's graphs, the
slide jobs of its modes, and the comparison cases of export parity and the precision gate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from wsisam.runtime.compare import Stats, random_images
from wsisam.runtime.postprocess import logits_to_crop
from wsisam.runtime.preprocess import boxes_to_prompts, preprocess_image
from wsisam.runtime.stain import stained_objects
from wsisam.runtime.tissue import TissueTile
from wsisam.systems.contract import GraphSet, SlideContext, SlideJob, SystemRuntime
from wsisam.systems.sam.spec import SamSpec

MAX_BOXES = 16  # box prompts per real tile (largest stained objects first)


class SamRuntime(SystemRuntime):
    """A SAM-family model: ``encode`` tiles, ``decode`` batches of prompts."""

    spec: SamSpec

    def encode(self, images_nchw: np.ndarray) -> np.ndarray:
        """(B, 3, n, n) float32 preprocessed → (B, C, h, w) image embeddings."""
        return self.graphs.run("encoder", {"image": images_nchw})["image_embeddings"]

    def decode(self, embedding: np.ndarray, point_coords_in: np.ndarray,
               point_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One embedding (1,C,h,w) and N prompts ((N,P,2) model-input px, (N,P)) →
        low-res logits (N,K,mh,mw) and predicted IoUs (N,K)."""
        out = self.graphs.run("decoder", {"image_embeddings": embedding,
                                          "point_coords": point_coords_in,
                                          "point_labels": point_labels})
        return out["low_res_masks"], out["iou_predictions"]

    def job(self, mode: str, ctx: SlideContext) -> SlideJob:
        from wsisam.systems.sam.jobs import AutomaticJob, PromptedJob

        return PromptedJob(self, ctx) if mode == "prompted" else AutomaticJob(self, ctx)

    # --- comparison cases --------------------------------------------------------------------

    @classmethod
    def compare_random(cls, spec: SamSpec, ref: GraphSet, test: GraphSet,
                       seed: int) -> dict[str, Any]:
        """Encoder and decoder on seeded random inputs (every prompt label kind)."""
        rng, image = random_images(seed, spec.input_px)
        emb = ref.run("encoder", {"image": image})["image_embeddings"]
        enc, logits, iou = Stats(), Stats(), Stats()
        enc.add(emb, test.run("encoder", {"image": image})["image_embeddings"])
        for coords, labels in random_prompts(spec, rng):
            m_ref, s_ref = _decode(ref, emb[:1], coords, labels)
            m_got, s_got = _decode(test, emb[:1], coords, labels)
            logits.add(m_ref, m_got)
            logits.add_ious(list(m_ref.reshape(-1, *m_ref.shape[2:])),
                            list(m_got.reshape(-1, *m_got.shape[2:])))
            iou.add(s_ref, s_got)
        return {"encoder": enc.summary(), "decoder_logits": logits.summary(),
                "decoder_iou_predictions": iou.summary()}

    @classmethod
    def compare_tiles(cls, spec: SamSpec, ref: GraphSet, test: GraphSet,
                      tiles: list[TissueTile], decoder_only: bool = True) -> dict[str, Any]:
        """Encoder, decoder alone (the reference embedding into both) and the whole chain on real
        tiles with box prompts around stained objects; masks post-processed by the runtime's own
        code on both sides, so what is measured is the graphs."""
        enc, dec_only, e2e = Stats(), Stats(), Stats()
        n_prompts = 0
        for tile in tiles:
            image, geom = preprocess_image(tile.rgb, spec.preprocess)
            e_ref = ref.run("encoder", {"image": image[None]})["image_embeddings"]
            e_got = test.run("encoder", {"image": image[None]})["image_embeddings"]
            enc.add(e_ref, e_got)
            boxes = tile_boxes_in(tile, geom.scale, MAX_BOXES)
            if not len(boxes):
                continue
            coords, labels = boxes_to_prompts(boxes)
            m_ref = _decode(ref, e_ref, coords, labels)[0][:, 0]
            if decoder_only:
                dec_only.add(m_ref, _decode(test, e_ref, coords, labels)[0][:, 0])
            m_got = _decode(test, e_got, coords, labels)[0][:, 0]
            e2e.add(m_ref, m_got)
            crops = [logits_to_crop(m, geom, spec.input_px) for m in (*m_ref, *m_got)]
            e2e.add_ious(crops[: len(boxes)], crops[len(boxes):])
            n_prompts += len(boxes)
        out = {"tiles": len(tiles), "prompts": n_prompts, "encoder": enc.summary(),
               "decoder_logits": dec_only.summary(), "end_to_end_logits": e2e.summary(),
               "tile_sources": sorted({Path(t.slide).name for t in tiles})}
        if not decoder_only:
            del out["decoder_logits"]
        return out


def _decode(graphs: GraphSet, emb: np.ndarray, coords: np.ndarray,
            labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = graphs.run("decoder", {"image_embeddings": emb, "point_coords": coords,
                                 "point_labels": labels})
    return out["low_res_masks"], out["iou_predictions"]


def random_prompts(spec: SamSpec, rng: np.random.Generator
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two prompt batches in the model-input frame: 4 boxes, and 3 mixed point sets with padding."""
    n = spec.input_px
    xy = np.sort(rng.uniform(0, n, (4, 2, 2)).astype(np.float32), axis=1)
    boxes = boxes_to_prompts(xy.reshape(4, 4))
    pts = rng.uniform(0, n, (3, 4, 2)).astype(np.float32)
    labels = np.array([[1, 1, 0, -1], [1, 0, -1, -1], [1, -1, -1, -1]], np.float32)
    return [boxes, (pts, labels)]


def tile_boxes_in(tile: TissueTile, scale: float, max_boxes: int) -> np.ndarray:
    """Box prompts (K, 4) in model-input px around stained objects of a tile (≤ ``max_boxes``)."""
    objs = stained_objects(tile.rgb, max_objects=max_boxes)
    return np.array([o.box_xyxy for o in objs], np.float32).reshape(-1, 4) * scale
