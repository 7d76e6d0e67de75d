"""Instance segmentation metrics on (H,W) integer label images (0 = background; torch-free).

- detection precision / recall / F1: one-to-one matches at IoU > 0.5 (unique by construction);
- PQ = DQ × SQ (Kirillov et al.): DQ = TP / (TP + FP/2 + FN/2), SQ = mean IoU of the matches;
- AJI (Kumar et al. 2017): each ground-truth object takes the prediction of highest IoU with it,
  C += |G∩S|, U += |G∪S| (U += |G| when nothing overlaps); every prediction never taken adds
  its area to U; AJI = C / U;
- Dice of the foregrounds (label > 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from skimage.segmentation import relabel_sequential

MATCH_IOU = 0.5


def _overlaps(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersections (G+1, P+1) px (row/col 0 = background), GT areas (G,), pred areas (P,)."""
    g = relabel_sequential(gt.astype(np.int64))[0]
    p = relabel_sequential(pred.astype(np.int64))[0]
    ng, np_ = int(g.max()), int(p.max())
    inter = np.bincount((g * (np_ + 1) + p).ravel(), minlength=(ng + 1) * (np_ + 1))
    inter = inter.reshape(ng + 1, np_ + 1)
    return inter, inter[1:].sum(1), inter[:, 1:].sum(0)


def _iou(inter: np.ndarray, area_g: np.ndarray, area_p: np.ndarray) -> np.ndarray:
    """(G,P) IoU matrix of the objects from :func:`_overlaps`."""
    i = inter[1:, 1:].astype(np.float64)
    union = area_g[:, None] + area_p[None, :] - i
    return np.divide(i, union, out=np.zeros_like(i), where=union > 0)


def aji(inter: np.ndarray, area_g: np.ndarray, area_p: np.ndarray) -> float:
    """Aggregated Jaccard Index from :func:`_overlaps` (1.0 when both images are empty)."""
    if len(area_g) == 0:
        return 1.0 if len(area_p) == 0 else 0.0
    iou = _iou(inter, area_g, area_p)
    c = u = 0.0
    used = np.zeros(len(area_p), bool)
    for gi in range(len(area_g)):
        if len(area_p) == 0 or iou[gi].max() <= 0:
            u += area_g[gi]
            continue
        pj = int(iou[gi].argmax())
        i = inter[gi + 1, pj + 1]
        c += i
        u += area_g[gi] + area_p[pj] - i
        used[pj] = True
    u += area_p[~used].sum()
    return float(c / u) if u > 0 else 1.0


def score(gt: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """All metrics for one (H,W) ground-truth / prediction pair of instance label images."""
    if gt.shape != pred.shape:
        raise ValueError(f"label images differ in shape: {gt.shape} vs {pred.shape}")
    inter, area_g, area_p = _overlaps(gt, pred)
    iou = _iou(inter, area_g, area_p)
    matched = iou[iou > MATCH_IOU]
    tp = int(matched.size)
    fp, fn = len(area_p) - tp, len(area_g) - tp
    prec = tp / (tp + fp) if tp + fp else 1.0 if not len(area_g) else 0.0
    rec = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0
    dq = tp / (tp + 0.5 * fp + 0.5 * fn) if (tp + fp + fn) else 1.0
    sq = float(matched.mean()) if tp else 0.0
    fg_g, fg_p = gt > 0, pred > 0
    denom = fg_g.sum() + fg_p.sum()
    dice = 2 * (fg_g & fg_p).sum() / denom if denom else 1.0
    return {"precision": prec, "recall": rec, "f1": f1, "pq": dq * sq, "dq": dq, "sq": sq,
            "aji": aji(inter, area_g, area_p), "dice": float(dice), "tp": tp, "fp": fp, "fn": fn,
            "n_gt": len(area_g), "n_pred": len(area_p)}


METRIC_KEYS = ("precision", "recall", "f1", "pq", "dq", "sq", "aji", "dice")


def mean_scores(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Per-image mean of :data:`METRIC_KEYS` over a list of :func:`score` results."""
    return {k: float(np.mean([r[k] for r in rows])) for k in METRIC_KEYS}
