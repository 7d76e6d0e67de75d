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
from wsisam.artifacts import MANIFEST_NAME, REPORT_NAME, graph_entry, spec_digest, write_manifest
from wsisam.errors import ArtifactError, ConfigError, ParityError, require
from wsisam.registry import SystemSpec, export_plan, get_model
from wsisam.runtime.writers.report import write_json
from wsisam.runtime.writers.atomic import staged_dir

log = logging.getLogger(__name__)


PARITY_TILES = 8


def default_parity_slides() -> list[Path]:
    """The real slides shipped beside the repository (``../shared/data``), when present."""
    root = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    env = os.environ.get("WSISAM_TEST_SLIDES")
    folder = Path(env) if env else root
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SLIDE_SUFFIXES)


def weight_files(spec: SystemSpec, weights: Path | dict[str, Path] | None,
                 heads: tuple[Path, Path] | None = None) -> dict[str, Path]:
    """Role → file from ``--weights PATH`` (the spec's first role), ``--weights ROLE=PATH``
    (a dict) and ``--heads HIGH LOW`` (roles ``head_high``, ``head_low``); unknown roles are a
    one-line :class:`ConfigError` naming the spec's roles."""
    files = dict(weights) if isinstance(weights, dict) else (
        {} if weights is None else {spec.default_role: Path(weights)})
    if heads:
        if len(heads) != 2:
            raise ConfigError("--heads takes two files: the HR head then the LR head")
        if not {"head_high", "head_low"} <= set(spec.weights):
            raise ConfigError(f"--heads sets the weight roles head_high and head_low, which "
                              f"{spec.name} does not have (its roles: {', '.join(spec.weights)})")
        files.update(head_high=Path(heads[0]), head_low=Path(heads[1]))
    unknown = [r for r in files if r not in spec.weights]
    if unknown:
        raise ConfigError(f"{spec.name} has no weight role {', '.join(unknown)}; its roles: "
                          f"{', '.join(spec.weights)} (--weights ROLE=PATH)")
    return {r: Path(p) for r, p in files.items()}


def run_export(model: str, out_dir: Path, weights: Path | dict[str, Path] | None = None,
               random_init: bool = False, parity_slides: list[Path] | None = None,
               parity_tiles: int = PARITY_TILES, external_threshold: int | None = None,
               check: bool = True, precision: str = "fp32", calib: list[Path] | None = None,
               calib_tiles: int = DEFAULT_CALIB_TILES, accuracy_warn_only: bool = False,
               keep_float: tuple[str, ...] = (),
               heads: tuple[Path, Path] | None = None) -> dict[str, Any]:
    """Export ``model`` into ``out_dir`` (one ONNX file per graph, report, manifest), for any
    registered system: its export plan (through the registry) loads the weights by role and
    gives the graphs; :func:`~wsisam.export.parity.run_parity` checks them.

    ``weights``: a file for the first weight role, or role → file; ``heads``: two files for the
    roles ``head_high``/``head_low``. ``parity_slides``: slides to draw real tissue tiles from
    (default: ``../shared/data``; an empty list means random inputs only, which the report
    states). Raises :class:`ParityError` — and writes nothing — when a graph is beyond the
    registry tolerances.

    ``precision`` fp16/int8: the FP32 export (checked as above) goes to a staging folder and the
    graphs of ``out_dir`` are derived from it (:func:`wsisam.export.precision.derive_precision`),
    with calibration (INT8) and held-out accuracy tiles from the slides ``calib`` (files or
    folders; FP16 defaults to the parity slides). Raises :class:`AccuracyError` below the gate
    unless ``accuracy_warn_only``.
    """
    require("torch", "export", "wsisam-export")
    require("onnx", "export", "wsisam-export")
    spec = get_model(model)
    files_by_role = weight_files(spec, weights, heads)
    if precision == "fp32" and (calib or keep_float):
        raise ConfigError("--calib and --keep-float apply to --precision fp16/int8 only; drop "
                          "them or choose a precision")
    if precision != "fp32":
        return _export_lower(model, Path(out_dir), precision, calib, calib_tiles,
                             accuracy_warn_only, keep_float,
                             {"weights": files_by_role, "random_init": random_init,
                              "parity_slides": parity_slides, "parity_tiles": parity_tiles,
                              "external_threshold": external_threshold, "check": check})
    from wsisam.export.onnx_export import PROTOBUF_LIMIT, export_graph
    from wsisam.export.parity import run_parity
    from wsisam.export.torch_graphs import TorchGraphs

    out_dir = Path(out_dir)
    _check_destination(out_dir)
    plan = export_plan(spec)
    t0 = time.perf_counter()
    module, provenance = plan.load(files_by_role, random_init)
    random = bool(provenance.pop("random_init"))
    graphs = plan.graphs(module)
    with staged_dir(out_dir) as stage:
        gspecs = spec.graphs()
        files = {g: export_graph(m, gspecs[g], inputs, stage,
                                 external_threshold or PROTOBUF_LIMIT)
                 for g, (m, inputs) in graphs.items()}
        t_export = time.perf_counter() - t0
        parity: dict[str, Any] = {}
        if check:
            reference = plan.reference(module) or TorchGraphs(
                spec, {g: m for g, (m, _) in graphs.items()})
            slides = default_parity_slides() if parity_slides is None else parity_slides
            parity = run_parity(spec, reference, stage, slides, parity_tiles)
        report = _report(spec, provenance, random, files, parity, t_export,
                         time.perf_counter() - t0)
        details = plan.details(provenance)
        if details:
            report["system_details"] = details
        write_json(stage / REPORT_NAME, report)
        if parity.get("failures"):
            raise ParityError(f"{model} export failed parity: {'; '.join(parity['failures'])}")
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


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    from wsisam.export.onnx_export import OPSET

    return {"wsisam": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "opset": str(OPSET),
            "exporter": "torch.onnx TorchScript (dynamo=False)", "python": platform.python_version()}


def _report(spec: SystemSpec, provenance: dict[str, Any], random_init: bool,
            files: dict[str, list[Path]], parity: dict[str, Any], t_export: float,
            t_total: float) -> dict[str, Any]:
    return {
        "model": spec.name, "system": spec.system, "description": spec.description,
        "precision": "fp32", "weights": provenance, "random_init": random_init,
        "graphs": {g: {"files": [p.name for p in fs],
                       "bytes": sum(p.stat().st_size for p in fs)} for g, fs in files.items()},
        "parity": parity, "versions": _versions(),
        "seconds": {"export": round(t_export, 2), "total": round(t_total, 2)},
    }


def _manifest(spec: SystemSpec, provenance: dict[str, Any], files: dict[str, list[Path]],
              report: dict[str, Any]) -> dict[str, Any]:
    parity = report["parity"]
    return {
        "model": spec.name, "system": spec.system, "spec_digest": spec_digest(spec),
        "precision": "fp32", "weights": provenance, "random_init": report["random_init"],
        "preprocess": vars(spec.preprocess), "mpp": spec.mpp,
        "graphs": {g: graph_entry(spec, g, fs) for g, fs in files.items()},
        **({"system_details": report["system_details"]} if "system_details" in report else {}),
        "versions": report["versions"],
        "accuracy_vs_torch": {k: v for k, v in parity.items() if k in ("random", "real_tissue")},
        "calibration": None,
    }
