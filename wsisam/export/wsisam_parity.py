"""WSI-SAM export parity: the ONNX graphs (ONNX Runtime) against the torch reference of the
released inference (:mod:`wsisam.export.modeling.wsisam_reference`).

Inputs: seeded random images and prompts (integer boxes mapped to LR the released way, point sets
with SAM's padding point, and boxes at the offsets of the shared LR layout), and real HR/LR tile
pairs from slides (HR tissue tiles at the HR µm/px, the concentric LR tile at ``lr_scale``× that)
with box prompts around stained objects. Compared: the encoder (embedding and early feature), the
decoder alone (the reference's embeddings into both) and the whole chain (ORT encoder → ORT decoder
vs reference encoder → reference decoder), the last also as mask IoU in the HR frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsisam.calib.tiles import TissueTile
from wsisam.engines.compare import Stats, tile_boxes_in
from wsisam.export import parity
from wsisam.export.modeling.wsisam import WsiSam
from wsisam.export.modeling.wsisam_reference import reference_decode, released_lr_box
from wsisam.registry import WsiSamSpec
from wsisam.runtime.backends import OrtBackend
from wsisam.runtime.preprocess import boxes_to_prompts, preprocess_image
from wsisam.runtime.slide import open_slide, read_region_at
from wsisam.runtime.wsisam_geometry import concentric_lr_box, hr_to_lr

REAL_MAX_BOXES = 8  # per tile: the reference decodes one prompt at a time (released path)


class WsiGraphPair:
    """The torch model (reference) and the two ONNX graphs, run side by side on host arrays."""

    def __init__(self, model: WsiSam, spec: WsiSamSpec, model_dir: Path) -> None:
        self.model, self.spec = model, spec
        graphs = spec.graphs()
        self.enc = OrtBackend(Path(model_dir) / "encoder.onnx", graphs["encoder"]).load()
        self.dec = OrtBackend(Path(model_dir) / "decoder.onnx", graphs["decoder"]).load()

    def encode_ref(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B,3,n,n) → torch embedding (B,C,h,w) and early feature (B,h,w,vit_dim) NHWC, as the
        released encoder returns it."""
        with torch.no_grad():
            emb, interm = self.model.sam.image_encoder.forward_with_interm(torch.from_numpy(image))
        return emb.numpy(), interm.numpy()

    def encode_ort(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B,3,n,n) → ORT embedding (B,C,h,w) and early feature (B,vit_dim,h,w) NCHW."""
        out = self.enc.run({"image": image})
        return out["image_embeddings"], out["interm_embeddings"]

    def decode_ref(self, hr: tuple[np.ndarray, np.ndarray], lr: tuple[np.ndarray, np.ndarray],
                   hr_coords: np.ndarray, lr_coords: np.ndarray,
                   labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reference logits (N,1,n,n) and IoU (N,1) from (embedding, NHWC early feature) pairs."""
        t = [torch.from_numpy(np.ascontiguousarray(a)) for a in (*hr, *lr, hr_coords, lr_coords,
                                                                 labels)]
        m, s = reference_decode(self.model, *t)
        return m.numpy(), s.numpy()

    def decode_ort(self, hr_emb: np.ndarray, hr_interm_nchw: np.ndarray, lr_emb: np.ndarray,
                   hr_coords: np.ndarray, lr_coords: np.ndarray,
                   labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.dec.run({"hr_image_embeddings": hr_emb,
                            "hr_interm_embeddings": np.ascontiguousarray(hr_interm_nchw),
                            "lr_image_embeddings": lr_emb, "hr_point_coords": hr_coords,
                            "lr_point_coords": lr_coords, "point_labels": labels})
        return out["masks"], out["iou_predictions"]

    def close(self) -> None:
        self.enc.close()
        self.dec.close()


def _nchw(nhwc: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))


def random_prompt_batches(spec: WsiSamSpec, rng: np.random.Generator
                          ) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(kind, HR coords, LR coords, labels) batches in model-input px.

    Concentric integer boxes mapped the released way (``// 2 + n/4``); point sets (2 points and
    SAM's padding point) mapped by ``x/2 + n/4``; boxes on the shared layout's corner offsets.
    """
    n, k = spec.input_px, spec.heads.lr_scale
    xy = np.sort(np.floor(rng.uniform(0, n, (4, 2, 2))), axis=1).astype(np.float32)
    hr_box, labels = boxes_to_prompts(xy.reshape(4, 4))
    lr_box = released_lr_box(torch.from_numpy(hr_box), n).numpy()
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


def random_parity(pair: WsiGraphPair, seed: int = 0) -> dict[str, Any]:
    """Encoder and decoder on seeded random inputs (image 0 is the HR tile, image 1 the LR)."""
    rng = np.random.default_rng(seed)
    n = pair.spec.input_px
    image = rng.standard_normal((2, 3, n, n)).astype(np.float32)
    emb, interm = pair.encode_ref(image)
    got_emb, got_interm = pair.encode_ort(image)
    enc, feat, logits, iou = Stats(), Stats(), Stats(), Stats()
    enc.add(emb, got_emb)
    feat.add(_nchw(interm), got_interm)
    hr, lr = (emb[:1], interm[:1]), (emb[1:], interm[1:])
    for _, hc, lc, lab in random_prompt_batches(pair.spec, rng):
        m_ref, s_ref = pair.decode_ref(hr, lr, hc, lc, lab)
        m_got, s_got = pair.decode_ort(emb[:1], _nchw(interm[:1]), emb[1:], hc, lc, lab)
        logits.add(m_ref, m_got)
        logits.add_ious(list(m_ref[:, 0]), list(m_got[:, 0]))
        iou.add(s_ref, s_got)
    return {"encoder": enc.summary(), "interm_embeddings": feat.summary(),
            "decoder_logits": logits.summary(), "decoder_iou_predictions": iou.summary()}


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


def real_parity(pair: WsiGraphPair, tiles: list[TissueTile],
                max_boxes: int = REAL_MAX_BOXES) -> dict[str, Any]:
    """HR/LR pairs of real tissue with box prompts: encoder, decoder-only and end-to-end."""
    spec = pair.spec
    enc, feat, dec_only, e2e = Stats(), Stats(), Stats(), Stats()
    n_prompts = 0
    for tile, lr_rgb in zip(tiles, lr_tiles_for(tiles, spec)):
        image = np.stack([preprocess_image(rgb, spec.preprocess)[0] for rgb in (tile.rgb, lr_rgb)])
        emb, interm = pair.encode_ref(image)
        got_emb, got_interm = pair.encode_ort(image)
        enc.add(emb, got_emb)
        feat.add(_nchw(interm), got_interm)
        boxes = np.floor(tile_boxes_in(tile, 1.0, max_boxes))
        if not len(boxes):
            continue
        hc, lab = boxes_to_prompts(boxes)
        lc = released_lr_box(torch.from_numpy(hc), spec.input_px).numpy()
        m_ref, _ = pair.decode_ref((emb[:1], interm[:1]), (emb[1:], interm[1:]), hc, lc, lab)
        m_dec, _ = pair.decode_ort(emb[:1], _nchw(interm[:1]), emb[1:], hc, lc, lab)
        dec_only.add(m_ref, m_dec)
        m_got, _ = pair.decode_ort(got_emb[:1], got_interm[:1], got_emb[1:], hc, lc, lab)
        e2e.add(m_ref, m_got)
        e2e.add_ious(list(m_ref[:, 0]), list(m_got[:, 0]))
        n_prompts += len(boxes)
    return {"tiles": len(tiles), "prompts": n_prompts, "encoder": enc.summary(),
            "interm_embeddings": feat.summary(), "decoder_logits": dec_only.summary(),
            "end_to_end_logits": e2e.summary(),
            "tile_sources": sorted({Path(t.slide).name for t in tiles}),
            "geometry": f"HR {spec.input_px} px at {spec.mpp} µm/px, concentric LR at "
                        f"{spec.lr_mpp} µm/px, LR boxes box_hr // 2 + {spec.input_px // 4}"}


def gate(spec: WsiSamSpec, results: dict[str, Any]) -> list[str]:
    """Failures of the tolerances (:func:`wsisam.export.parity.gate`); the whole chain is held to
    ``heads.end_to_end_logits_max_abs``, the decoder alone to ``logits_max_abs`` (1e-4)."""
    return parity.gate(spec, results, spec.heads.end_to_end_logits_max_abs)
