"""Accuracy gate of a lower-precision artefact against the FP32 graphs it was derived from.

On held-out real tissue tiles (never used for calibration), both model directories run on ONNX
Runtime's CPU provider through the system's own comparison cases
(:meth:`~wsisam.systems.contract.SystemRuntime.compare_tiles`, the same cases as export parity):
for SAM, box prompts around stained objects, post-processed to the crop frame. Reported:
``embedding`` (the first graph's output), ``mask_logits`` (the whole chain, with per-prompt mask
IoU and Dice of the thresholded masks) and, when later graphs differ too, ``decoder_only_logits``
(the FP32 embedding into both), so that each graph's share of the error is known.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wsisam.registry import SystemSpec, runtime_class
from wsisam.runtime.graphs import ModelGraphs
from wsisam.runtime.tissue import TissueTile

# the system's names for the compared quantities → the gate's
RENAMED = {"encoder": "embedding", "end_to_end_logits": "mask_logits",
           "decoder_logits": "decoder_only_logits"}


def accuracy_vs_fp32(fp32_dir: Path, test_dir: Path, spec: SystemSpec, tiles: list[TissueTile],
                     compare_decoder: bool = True) -> dict[str, Any]:
    """Compare ``test_dir`` with ``fp32_dir`` on ``tiles``; returns the numbers of the gate."""
    import onnxruntime

    rt = runtime_class(spec)
    with ModelGraphs.unchecked(fp32_dir, spec) as ref, \
            ModelGraphs.unchecked(test_dir, spec) as test:
        res = rt.compare_tiles(spec, ref, test, tiles, decoder_only=compare_decoder)
    return {"executed_by": f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider",
            **{RENAMED.get(k, k): v for k, v in res.items()}}


def gate_failures(result: dict[str, Any], mask_iou_min: float) -> list[str]:
    """What fails the gate (empty: passes): mean mask IoU vs FP32 below ``mask_iou_min``."""
    iou = result["mask_logits"].get("mask_iou_mean")
    if iou is None:
        return ["no box prompts on the held-out tiles: the gate could not be measured"]
    if iou < mask_iou_min:
        on = f"{result['prompts']} prompts of " if "prompts" in result else ""
        return [f"mean mask IoU vs fp32 {iou:.4f} < {mask_iou_min} on {on}{result['tiles']} "
                f"held-out tiles"]
    return []
