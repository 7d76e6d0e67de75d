"""Comparing a graph's outputs with a reference: the statistics every system's comparison cases
report, for export parity (ONNX vs torch) and the precision gate (FP16/INT8 vs FP32). Torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wsisam.runtime.postprocess import dice, mask_iou


@dataclass
class Stats:
    """Running errors over all comparisons of one kind: worst absolute error, per-sample cosine
    similarities (flattened), mean absolute error, and per-mask IoU/Dice of thresholded logits."""

    max_abs: float = 0.0
    ref_max: float = 0.0
    cos_min: float = 1.0
    ious: list[float] | None = None
    cosines: list[float] = field(default_factory=list)
    abs_sum: float = 0.0
    count: int = 0
    dices: list[float] = field(default_factory=list)

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        """Arrays of one shape (B, ...): each of the B samples gives one cosine."""
        ref, got = ref.astype(np.float64), got.astype(np.float64)
        self.max_abs = max(self.max_abs, float(np.abs(ref - got).max()))
        self.ref_max = max(self.ref_max, float(np.abs(ref).max()))
        self.abs_sum += float(np.abs(ref - got).sum())
        self.count += ref.size
        for r, g in zip(ref.reshape(len(ref), -1), got.reshape(len(got), -1)):
            denom = float(np.linalg.norm(r) * np.linalg.norm(g)) or 1.0
            self.cosines.append(float(r @ g) / denom)
            self.cos_min = min(self.cos_min, self.cosines[-1])

    def add_ious(self, ref_logits: list[np.ndarray], got_logits: list[np.ndarray]) -> None:
        """Masks (logits > 0) in the crop frame: one IoU and one Dice per pair."""
        pairs = [(r > 0, g > 0) for r, g in zip(ref_logits, got_logits)]
        self.ious = (self.ious or []) + [mask_iou(r, g) for r, g in pairs]
        self.dices += [dice(r, g) for r, g in pairs]

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"max_abs": self.max_abs,
                               "max_rel": self.max_abs / self.ref_max if self.ref_max else 0.0,
                               "cosine_min": self.cos_min}
        if self.count:
            out["mean_abs"] = self.abs_sum / self.count
            out["cosine_mean"] = float(np.mean(self.cosines))
        if self.ious:
            out |= {"mask_iou_mean": float(np.mean(self.ious)),
                    "mask_iou_min": float(np.min(self.ious)),
                    "mask_iou_p05": float(np.percentile(self.ious, 5)),
                    "dice_mean": float(np.mean(self.dices)),
                    "dice_min": float(np.min(self.dices)), "n_masks": len(self.ious)}
        return out


def random_images(seed: int, input_px: int, count: int = 2
                  ) -> tuple[np.random.Generator, np.ndarray]:
    """A seeded generator and ``count`` random model inputs (count, 3, n, n) float32 drawn from
    it first (comparison cases draw their prompts from the same generator afterwards)."""
    rng = np.random.default_rng(seed)
    return rng, rng.standard_normal((count, 3, input_px, input_px)).astype(np.float32)
