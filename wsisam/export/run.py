"""``wsisam-export``: torch model → checked ONNX graphs + export report + manifest, atomically.

Everything is written into a staging folder beside the destination and renamed into place only
after the parity gate passed, so a model directory either is complete and checked or does not exist.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import shutil
import time
from pathlib import Path
from typing import Any

from wsisam import __version__
from wsisam.calib.dataset import DEFAULT_CALIB_TILES
from wsisam.calib.tiles import SLIDE_SUFFIXES
from wsisam.engines.manifest import MANIFEST_NAME, graph_entry, spec_digest, write_manifest
from wsisam.errors import ArtifactError, ConfigError, ParityError, require
from wsisam.registry import ModelSpec, get_model
from wsisam.runtime.writers.atomic import staged_dir

log = logging.getLogger(__name__)

REPORT_NAME = "export_report.json"
PARITY_TILES = 8
PARITY_TILES_WSISAM = 4  # HR/LR pairs: its torch reference decodes prompt by prompt


def default_parity_slides() -> list[Path]:
    """The real slides shipped beside the repository (``../shared/data``), when present."""
    root = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    env = os.environ.get("WSISAM_TEST_SLIDES")
    folder = Path(env) if env else root
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SLIDE_SUFFIXES)


def run_export(model: str, out_dir: Path, weights: Path | None = None, random_init: bool = False,
               parity_slides: list[Path] | None = None, parity_tiles: int = PARITY_TILES,
               external_threshold: int | None = None, check: bool = True,
               precision: str = "fp32", calib: list[Path] | None = None,
               calib_tiles: int = DEFAULT_CALIB_TILES, accuracy_warn_only: bool = False,
               keep_float: tuple[str, ...] = (),
               heads: tuple[Path, Path] | None = None) -> dict[str, Any]:
    """Export ``model`` into ``out_dir`` (encoder.onnx, decoder.onnx, report, manifest).

    ``heads``: WSI-SAM's two head files (HR, LR); WSI-SAM models go to
    :func:`wsisam.export.wsisam_export.run_wsisam_export`.

    ``parity_slides``: slides to draw real tissue tiles from (default: ``../shared/data``; an empty
    list means random inputs only, which the report states). Raises :class:`ParityError` — and
    writes nothing — when a graph is beyond the registry tolerances.

    ``precision`` fp16/int8: the FP32 export (checked as above) goes to a staging folder and the
    graphs of ``out_dir`` are derived from it (:func:`wsisam.export.precision.derive_precision`),
    with calibration (INT8) and held-out accuracy tiles from the slides ``calib`` (files or
    folders; FP16 defaults to the parity slides). Raises :class:`AccuracyError` below the gate
    unless ``accuracy_warn_only``.
    """
    require("torch", "export", "wsisam-export")
    require("onnx", "export", "wsisam-export")
    if get_model(model).family == "wsisam":
        from wsisam.export.wsisam_export import run_wsisam_export

        return run_wsisam_export(model, Path(out_dir), weights, heads, random_init,
                                 parity_slides, min(parity_tiles, PARITY_TILES_WSISAM),
                                 external_threshold, check, precision)
    if heads:
        raise ConfigError(f"--heads applies to WSI-SAM models only, not {model}")
    if precision == "fp32" and (calib or keep_float):
        raise ConfigError("--calib and --keep-float apply to --precision fp16/int8 only; drop "
                          "them or choose a precision")
    if precision != "fp32":
        return _export_lower(model, Path(out_dir), precision, calib, calib_tiles,
                             accuracy_warn_only, keep_float,
                             {"weights": weights, "random_init": random_init,
                              "parity_slides": parity_slides, "parity_tiles": parity_tiles,
                              "external_threshold": external_threshold, "check": check})
    from wsisam.export.onnx_export import PROTOBUF_LIMIT, export_graph
    from wsisam.export.weights import load_model

    spec = get_model(model)
    out_dir = Path(out_dir)
    _check_destination(out_dir)
    t0 = time.perf_counter()
    sam, provenance = load_model(spec, weights, random_init=random_init)
    with staged_dir(out_dir) as stage:
        files = {g: export_graph(sam, spec, g, stage, external_threshold or PROTOBUF_LIMIT)
                 for g in ("encoder", "decoder")}
        t_export = time.perf_counter() - t0
        parity = _parity(sam, spec, stage, parity_slides, parity_tiles) if check else {}
        report = _report(spec, provenance, files, parity, t_export, time.perf_counter() - t0)
        from wsisam.runtime.writers.report import write_json

        write_json(stage / REPORT_NAME, report)
        if report["parity"].get("failures"):
            raise ParityError(f"{model} export failed parity: {'; '.join(report['parity']['failures'])}")
        write_manifest(stage, _manifest(spec, provenance, files, report))
    return report


def _export_lower(model: str, out_dir: Path, precision: str, calib: list[Path] | None,
                  calib_tiles: int, warn_only: bool, keep_float: tuple[str, ...],
                  fp32_args: dict[str, Any]) -> dict[str, Any]:
    """FP32 export into a staging folder, then the ``precision`` graphs derived from it."""
    from wsisam.calib.dataset import resolve_slides
    from wsisam.export.precision import LOWER_PRECISIONS, derive_precision

    if precision not in LOWER_PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}'; use fp32, fp16 or int8")
    if precision == "int8" and not calib:
        raise ConfigError("--precision int8 needs calibration slides: pass --calib SLIDE "
                          "[SLIDE ...] or a folder of slides")
    if calib_tiles < 1:
        raise ConfigError(f"--calib-tiles must be at least 1, got {calib_tiles}")
    for pattern in keep_float:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"--keep-float '{pattern}' is not a valid regular expression "
                              f"({exc}); pass a Python regex matching node names") from None
    slides = resolve_slides(list(calib)) if calib else default_parity_slides()
    if not slides:
        raise ConfigError(f"--precision {precision} needs real slides for its accuracy gate: "
                          f"pass --calib SLIDE [SLIDE ...] or a folder of slides")
    _check_destination(out_dir)
    fp32_dir = out_dir.parent / f".{out_dir.name}.fp32-{os.getpid()}"
    shutil.rmtree(fp32_dir, ignore_errors=True)
    try:
        run_export(model, fp32_dir, **fp32_args)
        return derive_precision(fp32_dir, out_dir, precision, slides, calib_tiles=calib_tiles,
                                warn_only=warn_only, keep_float=keep_float)
    finally:
        shutil.rmtree(fp32_dir, ignore_errors=True)


def _check_destination(out_dir: Path) -> None:
    """Refuse to replace a non-empty folder that is not a wsisam model directory."""
    if out_dir.exists() and (not out_dir.is_dir() or (
            any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).exists())):
        raise ArtifactError(
            f"{out_dir} exists and is not a wsisam model directory; choose another -o or remove it"
        )


def _parity(sam, spec: ModelSpec, stage: Path, slides: list[Path] | None,
            n_tiles: int) -> dict[str, Any]:
    from wsisam.export.parity import GraphPair, gate, random_parity, real_parity

    results = _parity_results(GraphPair(sam, spec, stage), spec, slides, n_tiles,
                              random_parity, real_parity)
    results["tolerances"] = vars(spec.tolerances)
    results["failures"] = gate(spec, results)
    return results


def _parity_results(pair: Any, spec: ModelSpec, slides: list[Path] | None, n_tiles: int,
                    random_fn: Any, real_fn: Any) -> dict[str, Any]:
    """``random_fn(pair, seed)`` and, on tissue tiles of ``slides`` (default: the test slides),
    ``real_fn(pair, tiles)``; closes ``pair`` (a graph pair of ``export/parity.py`` or
    ``export/wsisam_parity.py``)."""
    from wsisam.calib.tiles import sample_tissue_tiles

    slides = default_parity_slides() if slides is None else slides
    try:
        results: dict[str, Any] = {"random": random_fn(pair, seed=spec.seed)}
        if slides:
            tiles = sample_tissue_tiles(slides, spec.input_px, spec.mpp, n_tiles, seed=0)
            results["real_tissue"] = real_fn(pair, tiles)
        else:
            results["real_tissue"] = "not run: no slides (pass --parity-slides or WSISAM_TEST_SLIDES)"
    finally:
        pair.close()
    return results


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    from wsisam.export.onnx_export import OPSET

    return {"wsisam": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "opset": str(OPSET),
            "exporter": "torch.onnx TorchScript (dynamo=False)", "python": platform.python_version()}


def _report(spec: ModelSpec, provenance: dict[str, Any], files: dict[str, list[Path]],
            parity: dict[str, Any], t_export: float, t_total: float) -> dict[str, Any]:
    return {
        "model": spec.name, "description": spec.description, "precision": "fp32",
        "weights": provenance,
        "random_init": provenance.get("source") == "random-init",
        "graphs": {g: {"files": [p.name for p in fs],
                       "bytes": sum(p.stat().st_size for p in fs)} for g, fs in files.items()},
        "parity": parity, "versions": _versions(),
        "seconds": {"export": round(t_export, 2), "total": round(t_total, 2)},
    }


def _manifest(spec: ModelSpec, provenance: dict[str, Any], files: dict[str, list[Path]],
              report: dict[str, Any]) -> dict[str, Any]:
    parity = report["parity"]
    return {
        "model": spec.name, "family": spec.family, "spec_digest": spec_digest(spec),
        "precision": "fp32", "weights": provenance, "random_init": report["random_init"],
        "preprocess": vars(spec.preprocess), "mpp": spec.mpp,
        "graphs": {g: graph_entry(spec, g, fs) for g, fs in files.items()},
        "versions": report["versions"],
        "accuracy_vs_torch": {k: v for k, v in parity.items() if k in ("random", "real_tissue")},
        "calibration": None,
    }
