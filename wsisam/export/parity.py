"""The one parity runner: a system's ONNX graphs against its torch reference, gated.

Two kinds of input, both from the system's own comparison cases
(:meth:`~wsisam.systems.contract.SystemRuntime.compare_random` and ``compare_tiles``): seeded
random ones, and real tissue tiles of the slides given (the same cases the precision gate runs
FP16/INT8 against FP32). Every quantity a case reports is held to the spec's
:class:`~wsisam.registry.Tolerances`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from wsisam.calib.tiles import sample_tissue_tiles
from wsisam.registry import SystemSpec, runtime_class
from wsisam.runtime.graphs import ModelGraphs
from wsisam.systems.contract import GraphSet


def run_parity(spec: SystemSpec, reference: GraphSet, onnx_dir: Path, slides: list[Path],
               n_tiles: int) -> dict[str, Any]:
    """Compare the graphs in ``onnx_dir`` (ONNX Runtime, CPU) with ``reference`` on random
    inputs and on up to ``n_tiles`` tissue tiles of ``slides`` (none: random only, said so)."""
    rt = runtime_class(spec)
    with ModelGraphs.unchecked(onnx_dir, spec) as onnx_graphs:
        results: dict[str, Any] = {"random": rt.compare_random(spec, reference, onnx_graphs,
                                                                seed=spec.seed)}
        if slides:
            tiles = sample_tissue_tiles(slides, spec.input_px, spec.mpp,
                                        min(n_tiles, rt.parity_tiles), seed=0)
            results["real_tissue"] = rt.compare_tiles(spec, reference, onnx_graphs, tiles)
        else:
            results["real_tissue"] = ("not run: no slides (pass --parity-slides or "
                                      "WSISAM_TEST_SLIDES)")
    results["tolerances"] = dataclasses.asdict(spec.tolerances)
    results["failures"] = gate(spec, results)
    return results


def gate(spec: SystemSpec, results: dict[str, Any]) -> list[str]:
    """Failures of the spec's tolerances; empty when the export passes: every reported
    quantity's max abs error ≤ its ``max_abs`` limit, and the mean mask IoU of the end-to-end
    masks (else the decoder's) ≥ ``mask_iou_min``."""
    tol = spec.tolerances
    fails = []
    for kind, res in results.items():
        if not isinstance(res, dict):
            continue
        for name, limit in tol.max_abs.items():
            v = res.get(name, {}).get("max_abs") if isinstance(res.get(name), dict) else None
            if v is not None and v > limit:
                fails.append(f"{kind} {name} max abs {v:.2e} > {limit:.0e}")
        masks = res.get("end_to_end_logits", res.get("decoder_logits"))
        iou = masks.get("mask_iou_mean") if isinstance(masks, dict) else None
        if iou is not None and iou < tol.mask_iou_min:
            fails.append(f"{kind} mask IoU mean {iou:.4f} < {tol.mask_iou_min}")
    return fails
