"""``wsisam-export``: torch model → checked ONNX graphs + export report + manifest, atomically.

Everything is written into a staging folder beside the destination and renamed into place only
after the parity gate passed, so a model directory either is complete and checked or does not exist.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from wsisam import __version__
from wsisam.engines.manifest import MANIFEST_NAME, graph_entry, spec_digest, write_manifest
from wsisam.errors import ArtifactError, ParityError, require
from wsisam.registry import ModelSpec, get_model

log = logging.getLogger(__name__)

REPORT_NAME = "export_report.json"
PARITY_TILES = 8


def default_parity_slides() -> list[Path]:
    """The real slides shipped beside the repository (``../shared/data``), when present."""
    root = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    env = os.environ.get("WSISAM_TEST_SLIDES")
    folder = Path(env) if env else root
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".svs", ".ndpi", ".tif",
                                                                        ".tiff", ".mrxs", ".scn"))


def run_export(model: str, out_dir: Path, weights: Path | None = None, random_init: bool = False,
               parity_slides: list[Path] | None = None, parity_tiles: int = PARITY_TILES,
               external_threshold: int | None = None, check: bool = True) -> dict[str, Any]:
    """Export ``model`` into ``out_dir`` (encoder.onnx, decoder.onnx, report, manifest).

    ``parity_slides``: slides to draw real tissue tiles from (default: ``../shared/data``; an empty
    list means random inputs only, which the report states). Raises :class:`ParityError` — and
    writes nothing — when a graph is beyond the registry tolerances.
    """
    require("torch", "export", "wsisam-export")
    require("onnx", "export", "wsisam-export")
    from wsisam.export.onnx_export import PROTOBUF_LIMIT, export_graph
    from wsisam.export.weights import load_model

    spec = get_model(model)
    out_dir = Path(out_dir)
    _check_destination(out_dir)
    t0 = time.perf_counter()
    sam, provenance = load_model(spec, weights, random_init=random_init)
    stage = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
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
        if out_dir.exists():
            shutil.rmtree(out_dir)
        stage.rename(out_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return report


def _check_destination(out_dir: Path) -> None:
    """Refuse to replace a non-empty folder that is not a wsisam model directory."""
    if out_dir.exists() and (not out_dir.is_dir() or (
            any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).exists())):
        raise ArtifactError(
            f"{out_dir} exists and is not a wsisam model directory; choose another -o or remove it"
        )


def _parity(sam, spec: ModelSpec, stage: Path, slides: list[Path] | None,
            n_tiles: int) -> dict[str, Any]:
    from wsisam.calib.tiles import sample_tissue_tiles
    from wsisam.export.parity import GraphPair, gate, random_parity, real_parity

    slides = default_parity_slides() if slides is None else slides
    pair = GraphPair(sam, spec, stage)
    try:
        results: dict[str, Any] = {"random": random_parity(pair, seed=spec.seed)}
        if slides:
            tiles = sample_tissue_tiles(slides, spec.input_px, spec.mpp, n_tiles, seed=0)
            results["real_tissue"] = real_parity(pair, tiles)
        else:
            results["real_tissue"] = "not run: no slides (pass --parity-slides or WSISAM_TEST_SLIDES)"
    finally:
        pair.close()
    results["tolerances"] = vars(spec.tolerances)
    results["failures"] = gate(spec, results)
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
