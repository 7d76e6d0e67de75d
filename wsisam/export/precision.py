"""FP16 and INT8 artefacts derived from a checked FP32 export, gated against it on real tissue.

``derive_precision`` turns an FP32 model directory into an FP16 or INT8 one (same file names, one
precision per directory): convert (``engines.fp16``) or calibrate and quantise (``calib.quantize``)
each graph as the registry's :class:`~wsisam.registry.PrecisionPolicy` says, measure it against the
FP32 graphs on held-out real tiles (``engines.accuracy``), and write ``export_report.json`` and
``manifest.json``. Like the FP32 export it works in a staging folder renamed into place only when
the gate passed (or the caller asked to be warned only), so a model directory is complete or absent.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from wsisam.calib.dataset import DEFAULT_CALIB_TILES, DEFAULT_HELDOUT_TILES
from wsisam.artifacts import (
    REPORT_NAME,
    check_manifest,
    graph_entry,
    policy_digest,
    read_manifest,
    write_manifest,
)
from wsisam.errors import AccuracyError, ConfigError

from wsisam.registry import SystemSpec
from wsisam.runtime.writers.atomic import staged_dir
from wsisam.runtime.writers.report import write_json

log = logging.getLogger(__name__)

LOWER_PRECISIONS = ("fp16", "int8")
FP16_ON_ORT_CPU = ("ONNX Runtime's CPU provider runs the FP16 graph: its data-movement ops run in "
                   "FP16, arithmetic ops without an FP16 CPU kernel are wrapped in inserted casts "
                   "(FP16 values between ops, FP32 arithmetic)")


def derive_precision(fp32_dir: Path, out_dir: Path, precision: str, slides: list[Path],
                     calib_tiles: int = DEFAULT_CALIB_TILES,
                     heldout_tiles: int = DEFAULT_HELDOUT_TILES,
                     warn_only: bool = False, keep_float: tuple[str, ...] = (),
                     cache_root: Path | None = None) -> dict[str, Any]:
    """Derive ``precision`` graphs from ``fp32_dir`` into ``out_dir``; returns the report.

    ``slides``: real slides for calibration (INT8) and the held-out accuracy tiles (both);
    ``keep_float``: extra node-name regexes kept float in INT8 (added to the registry's).
    Raises :class:`AccuracyError` (writing nothing) below the gate unless ``warn_only``.
    """
    from wsisam.calib.dataset import SamplerConfig, tile_set

    if precision not in LOWER_PRECISIONS:
        raise ConfigError(f"precision '{precision}' cannot be derived; use one of "
                          f"{', '.join(LOWER_PRECISIONS)}")
    t0 = time.perf_counter()
    fp32_manifest = read_manifest(fp32_dir)
    spec = check_manifest(fp32_dir, fp32_manifest, precision="fp32")
    sampler = SamplerConfig(spec.input_px, spec.mpp, n_heldout=heldout_tiles,
                            n_calib=calib_tiles if precision == "int8" else 0)
    tiles = tile_set(slides, sampler, spec.preprocess, cache_root)
    if precision == "int8" and not len(tiles.calib):
        raise ConfigError(f"no calibration tiles left in {len(slides)} slide(s) beside the "
                          f"held-out tiles; pass more or larger slides to --calib")
    with staged_dir(out_dir) as stage:
        conversion, files = _convert(spec, precision, fp32_dir, stage, tiles, keep_float)
        t_convert = time.perf_counter() - t0
        later = list(conversion)[1:]  # graphs fed by the first one: compared alone too if changed
        accuracy = _gate(spec, precision, fp32_dir, stage, tiles.heldout, warn_only,
                         changed_later=any(conversion[g]["precision"] != "fp32" for g in later))
        failures = accuracy["gate"]["failures"]
        report = _report(spec, precision, fp32_dir, conversion, accuracy, tiles,
                         {"convert": round(t_convert, 2),
                          "total": round(time.perf_counter() - t0, 2)})
        report["keep_float_extra"] = list(keep_float)  # --keep-float, beyond the policy
        write_json(stage / REPORT_NAME, report)
        if failures and not warn_only:
            raise AccuracyError(f"{spec.name} {precision} failed the accuracy gate: "
                                f"{'; '.join(failures)}; pass --accuracy-warn-only to keep it")
        for f in failures:
            log.warning("%s %s kept although below the gate: %s", spec.name, precision, f)
        write_manifest(stage, _manifest(spec, precision, fp32_manifest, files, report))
    return report


def _gate(spec: SystemSpec, precision: str, fp32_dir: Path, stage: Path, heldout: list[Any],
          warn_only: bool, changed_later: bool) -> dict[str, Any]:
    """Accuracy of the staged graphs vs FP32 on the held-out tiles, with the gate's verdict."""
    from wsisam.engines.accuracy import accuracy_vs_fp32, gate_failures

    accuracy = accuracy_vs_fp32(fp32_dir, stage, spec, heldout, changed_later)
    gate_min = getattr(spec.precision, f"{precision}_mask_iou_min")
    failures = gate_failures(accuracy, gate_min)
    accuracy["gate"] = {"mask_iou_mean_min": gate_min, "failures": failures,
                        "passed": not failures, "warn_only": warn_only}
    return accuracy


def _convert(spec: SystemSpec, precision: str, fp32_dir: Path, stage: Path, tiles: Any,
             keep_float: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, list[Path]]]:
    """Write every graph into ``stage``; returns what was done per graph and the files."""
    from wsisam.artifacts import graph_files

    policy = spec.precision
    conversion: dict[str, Any] = {}
    files: dict[str, list[Path]] = {}
    for graph, gspec in spec.graphs().items():
        src, dst = fp32_dir / f"{graph}.onnx", stage / f"{graph}.onnx"
        if precision == "fp16":
            from wsisam.engines.fp16 import convert_fp16

            info = convert_fp16(src, dst, policy.fp16_keep_fp32_ops)
        elif graph in policy.int8_graphs:
            from wsisam.calib.quantize import QuantConfig, quantize_int8

            cfg = QuantConfig(op_types=policy.int8_op_types,
                              keep_float=policy.int8_keep_float + tuple(keep_float),
                              method=policy.int8_calibration, percentile=policy.int8_percentile)
            info = quantize_int8(src, dst, tiles.calib, gspec.input_names[0], cfg,
                                 cache_dir=tiles.folder)
        else:  # measured: this graph stays FP32 in the INT8 artefact (see the registry policy)
            for f in graph_files(src):
                shutil.copy2(f, stage / f.name)
            info = {"files": graph_files(dst), "tool": "copied from the fp32 export"}
        files[graph] = info.pop("files")
        info["precision"] = precision if "copied" not in info["tool"] else "fp32"
        conversion[graph] = info
    return conversion, files


def _versions() -> dict[str, str]:
    """The tools of the derivation: ONNX, and ONNX Runtime (its FP16 converter and quantizer)."""
    import importlib.metadata as md

    return {n: md.version(n) for n in ("onnx", "onnxruntime")}


def _report(spec: SystemSpec, precision: str, fp32_dir: Path, conversion: dict[str, Any],
            accuracy: dict[str, Any], tiles: Any, seconds: dict[str, float]) -> dict[str, Any]:
    fp32_report = json.loads((fp32_dir / REPORT_NAME).read_text()) \
        if (fp32_dir / REPORT_NAME).is_file() else {}
    return {
        "model": spec.name, "precision": precision, "description": spec.description,
        "weights": fp32_report.get("weights"), "random_init": fp32_report.get("random_init"),
        "graphs": conversion, "accuracy_vs_fp32": accuracy,
        "calibration": _calibration_record(precision, tiles),
        "parity_fp32_vs_torch": fp32_report.get("parity"),
        "versions": {**fp32_report.get("versions", {}), **_versions()},
        "seconds": seconds,
    } | ({"fp16_execution": FP16_ON_ORT_CPU} if precision == "fp16" else {})


def _calibration_record(precision: str, tiles: Any) -> dict[str, Any]:
    m = tiles.manifest
    return {"digest": tiles.digest if precision == "int8" else None, "tile_set": tiles.digest,
            "folder": str(tiles.folder), "counts": m["counts"], "warnings": m["warnings"],
            "slides": [s["name"] for s in m["slides"]], "sampler": m["sampler"]}


def _manifest(spec: SystemSpec, precision: str, fp32_manifest: dict[str, Any],
              files: dict[str, list[Path]], report: dict[str, Any]) -> dict[str, Any]:
    keep = ("model", "system", "spec_digest", "weights", "random_init", "preprocess", "mpp",
            "accuracy_vs_torch")
    return {
        **{k: fp32_manifest.get(k) for k in keep}, "precision": precision,
        "policy_digest": policy_digest(spec, precision),
        "graphs": {g: graph_entry(spec, g, fs) | {"precision": report["graphs"][g]["precision"]}
                   for g, fs in files.items()},
        "versions": report["versions"], "calibration": report["calibration"],
        # a system without prompts (nuclei maps) has no "prompts" count
        "accuracy_vs_fp32": {k: report["accuracy_vs_fp32"][k] for k in
                             ("tiles", "prompts", "embedding", "mask_logits", "gate")
                             if k in report["accuracy_vs_fp32"]},
        "derived_from": {g: e["files"] for g, e in fp32_manifest["graphs"].items()},
        "keep_float_extra": report["keep_float_extra"],
    }


