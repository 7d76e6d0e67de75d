"""Check exported graphs against the torch model they came from.

Two kinds of input: seeded random ones (every prompt label kind: boxes, positive/negative points,
padding) and real tissue tiles with box prompts around stained objects. On real tiles both the
decoder alone (same torch embedding into both) and the whole chain (ORT encoder → ORT decoder vs
torch → torch) are compared; masks are post-processed by the runtime's own numpy code on both
sides, so what is measured is the graphs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsisam.calib.tiles import TissueTile
from wsisam.engines.compare import Stats, tile_boxes_in
from wsisam.registry import ModelSpec
from wsisam.runtime.backends import OrtBackend
from wsisam.runtime.postprocess import logits_to_crop
from wsisam.runtime.preprocess import boxes_to_prompts, preprocess_image


class GraphPair:
    """The torch model and the two ONNX graphs, run side by side on host arrays."""

    def __init__(self, sam: torch.nn.Module, spec: ModelSpec, model_dir: Path) -> None:
        self.sam, self.spec = sam, spec
        graphs = spec.graphs()
        self.enc = OrtBackend(Path(model_dir) / "encoder.onnx", graphs["encoder"]).load()
        self.dec = OrtBackend(Path(model_dir) / "decoder.onnx", graphs["decoder"]).load()

    def encode(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B,3,n,n) → torch and ORT embeddings (B,C,h,w)."""
        with torch.no_grad():
            ref = self.sam.encode(torch.from_numpy(image)).numpy()
        return ref, self.enc.run({"image": image})["image_embeddings"]

    def decode_torch(self, emb: np.ndarray, coords: np.ndarray, labels: np.ndarray):
        with torch.no_grad():
            m, s = self.sam.decode(*(torch.from_numpy(a) for a in (emb, coords, labels)))
        return m.numpy(), s.numpy()

    def decode_ort(self, emb: np.ndarray, coords: np.ndarray, labels: np.ndarray):
        out = self.dec.run({"image_embeddings": emb, "point_coords": coords,
                            "point_labels": labels})
        return out["low_res_masks"], out["iou_predictions"]

    def close(self) -> None:
        self.enc.close()
        self.dec.close()


def random_prompts(spec: ModelSpec, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two prompt batches in the model-input frame: 4 boxes, and 3 mixed point sets with padding."""
    n = spec.input_px
    xy = np.sort(rng.uniform(0, n, (4, 2, 2)).astype(np.float32), axis=1)
    boxes = boxes_to_prompts(xy.reshape(4, 4))
    pts = rng.uniform(0, n, (3, 4, 2)).astype(np.float32)
    labels = np.array([[1, 1, 0, -1], [1, 0, -1, -1], [1, -1, -1, -1]], np.float32)
    return [boxes, (pts, labels)]


def random_parity(pair: GraphPair, seed: int = 0) -> dict[str, Any]:
    """Encoder and decoder on seeded random inputs."""
    rng = np.random.default_rng(seed)
    n = pair.spec.input_px
    image = rng.standard_normal((2, 3, n, n)).astype(np.float32)
    ref, got = pair.encode(image)
    enc = Stats()
    enc.add(ref, got)
    logits, iou = Stats(), Stats()
    for coords, labels in random_prompts(pair.spec, rng):
        m_ref, s_ref = pair.decode_torch(ref[:1], coords, labels)
        m_got, s_got = pair.decode_ort(ref[:1], coords, labels)
        logits.add(m_ref, m_got)
        logits.add_ious(list(m_ref.reshape(-1, *m_ref.shape[2:])),
                        list(m_got.reshape(-1, *m_got.shape[2:])))
        iou.add(s_ref, s_got)
    return {"encoder": enc.summary(), "decoder_logits": logits.summary(),
            "decoder_iou_predictions": iou.summary()}


def real_parity(pair: GraphPair, tiles: list[TissueTile], max_boxes: int = 16) -> dict[str, Any]:
    """Encoder, decoder-only and end-to-end comparisons on real tissue tiles with box prompts."""
    enc, dec_only, e2e = Stats(), Stats(), Stats()
    n_prompts = 0
    for tile in tiles:
        image, geom = preprocess_image(tile.rgb, pair.spec.preprocess)
        ref, got = pair.encode(image[None])
        enc.add(ref, got)
        boxes = tile_boxes_in(tile, geom.scale, max_boxes)
        if not len(boxes):
            continue
        coords, labels = boxes_to_prompts(boxes)
        m_ref, _ = pair.decode_torch(ref, coords, labels)
        dec_only.add(m_ref[:, 0], pair.decode_ort(ref, coords, labels)[0][:, 0])
        m_got, _ = pair.decode_ort(got, coords, labels)
        e2e.add(m_ref[:, 0], m_got[:, 0])
        to_crop = [logits_to_crop(m, geom, pair.spec.input_px) for m in (*m_ref[:, 0], *m_got[:, 0])]
        e2e.add_ious(to_crop[: len(boxes)], to_crop[len(boxes):])
        n_prompts += len(boxes)
    return {"tiles": len(tiles), "prompts": n_prompts, "encoder": enc.summary(),
            "decoder_logits": dec_only.summary(), "end_to_end_logits": e2e.summary(),
            "tile_sources": sorted({Path(t.slide).name for t in tiles})}


def gate(spec: ModelSpec, results: dict[str, Any],
         end_to_end_max_abs: float | None = None) -> list[str]:
    """Failures of the registry tolerances; empty when the export passes.

    Encoder outputs (the embedding, and the early feature where the graph has one) ≤
    ``embedding_max_abs``; decoder alone ≤ ``logits_max_abs``; the whole chain ≤
    ``end_to_end_max_abs`` (default ``logits_max_abs``) and mask IoU ≥ ``mask_iou_min``.
    """
    tol = spec.tolerances
    e2e_limit = tol.logits_max_abs if end_to_end_max_abs is None else end_to_end_max_abs
    fails = []
    for kind, res in results.items():
        if not isinstance(res, dict) or "encoder" not in res:
            continue
        checks = [("encoder max abs", res["encoder"]["max_abs"], tol.embedding_max_abs)]
        if "interm_embeddings" in res:
            checks.append(("interm max abs", res["interm_embeddings"]["max_abs"],
                           tol.embedding_max_abs))
        checks.append(("decoder logits max abs", res["decoder_logits"]["max_abs"],
                       tol.logits_max_abs))
        if "end_to_end_logits" in res:
            checks.append(("end-to-end logits max abs", res["end_to_end_logits"]["max_abs"],
                           e2e_limit))
        fails += [f"{kind} {name} {v:.2e} > {lim:.0e}" for name, v, lim in checks if v > lim]
        iou = res.get("end_to_end_logits", res["decoder_logits"]).get("mask_iou_mean")
        if iou is not None and iou < tol.mask_iou_min:
            fails.append(f"{kind} mask IoU mean {iou:.4f} < {tol.mask_iou_min}")
    return fails
