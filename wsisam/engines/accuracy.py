"""Accuracy gate of a lower-precision artefact against the FP32 graphs it was derived from.

On held-out real tissue tiles (never used for calibration), both model directories run through the
runtime's own code: ``preprocess_image``, the ONNX Runtime backend, box prompts around stained
objects (``calib.objects.stained_objects``), and ``logits_to_crop`` to the crop frame. Measured:
embedding cosine similarity and error, mask-logit error (token 0, the box output), and per-prompt
mask IoU and Dice of the thresholded masks. When the decoders differ, the decoder is also compared
alone (the same FP32 embedding into both), so that each graph's share of the error is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsisam.calib.tiles import TissueTile
from wsisam.engines.compare import Stats, tile_boxes_in
from wsisam.registry import ModelSpec
from wsisam.runtime.backends import OrtBackend
from wsisam.runtime.postprocess import logits_to_crop
from wsisam.runtime.preprocess import boxes_to_prompts, preprocess_image

MAX_BOXES = 16  # box prompts per held-out tile (largest stained objects first)


@dataclass
class _Graphs:
    """The encoder and decoder of one model directory on the ONNX Runtime CPU backend."""

    enc: OrtBackend
    dec: OrtBackend

    @classmethod
    def open(cls, model_dir: Path, spec: ModelSpec) -> _Graphs:
        g = spec.graphs()
        return cls(OrtBackend(Path(model_dir) / "encoder.onnx", g["encoder"]).load(),
                   OrtBackend(Path(model_dir) / "decoder.onnx", g["decoder"]).load())

    def encode(self, image: np.ndarray) -> np.ndarray:
        """(1, 3, n, n) → (1, C, h, w)."""
        return self.enc.run({"image": image})["image_embeddings"]

    def masks(self, emb: np.ndarray, coords: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Token-0 (box) low-res logits (N, mh, mw)."""
        return self.dec.run({"image_embeddings": emb, "point_coords": coords,
                             "point_labels": labels})["low_res_masks"][:, 0]

    def close(self) -> None:
        self.enc.close()
        self.dec.close()


def accuracy_vs_fp32(fp32_dir: Path, test_dir: Path, spec: ModelSpec, tiles: list[TissueTile],
                     compare_decoder: bool = True, max_boxes: int = MAX_BOXES) -> dict[str, Any]:
    """Compare ``test_dir`` with ``fp32_dir`` on ``tiles``; returns the numbers of the gate."""
    ref, test = _Graphs.open(fp32_dir, spec), _Graphs.open(test_dir, spec)
    emb, e2e, dec_only = Stats(), Stats(), Stats()
    n_prompts = 0
    try:
        for tile in tiles:
            image, geom = preprocess_image(tile.rgb, spec.preprocess)
            e_ref, e_test = ref.encode(image[None]), test.encode(image[None])
            emb.add(e_ref, e_test)
            boxes = tile_boxes_in(tile, geom.scale, max_boxes)
            if not len(boxes):
                continue
            coords, labels = boxes_to_prompts(boxes)
            m_ref, m_test = ref.masks(e_ref, coords, labels), test.masks(e_test, coords, labels)
            e2e.add(m_ref, m_test)
            if compare_decoder:
                dec_only.add(m_ref, test.masks(e_ref, coords, labels))
            crops = [logits_to_crop(m, geom, spec.input_px) for m in (*m_ref, *m_test)]
            e2e.add_ious(crops[: len(boxes)], crops[len(boxes):])
            n_prompts += len(boxes)
    finally:
        ref.close()
        test.close()
    import onnxruntime

    out: dict[str, Any] = {
        "executed_by": f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider",
        "tiles": len(tiles), "prompts": n_prompts,
        "tile_sources": sorted({Path(t.slide).name for t in tiles}),
        "embedding": emb.summary(), "mask_logits": e2e.summary()}
    if compare_decoder:
        out["decoder_only_logits"] = dec_only.summary()
    return out


def gate_failures(result: dict[str, Any], mask_iou_min: float) -> list[str]:
    """What fails the gate (empty: passes): mean mask IoU vs FP32 below ``mask_iou_min``."""
    iou = result["mask_logits"].get("mask_iou_mean")
    if iou is None:
        return ["no box prompts on the held-out tiles: the gate could not be measured"]
    if iou < mask_iou_min:
        return [(f"mean mask IoU vs fp32 {iou:.4f} < {mask_iou_min} on {result['prompts']} "
                 f"prompts of {result['tiles']} held-out tiles")]
    return []
