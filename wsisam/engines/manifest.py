"""The manifest written beside every exported artefact, and the check the runtime makes against it.

``manifest.json`` in a model directory records what the graphs are (model, spec digest, precision,
tensor specs, file hashes), where the weights came from, which tools made them and how they
measured against torch. The runtime refuses a directory whose manifest does not match the model it
is asked to run, naming every difference.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from wsisam.errors import ArtifactError
from wsisam.registry import ModelSpec, get_model

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


PRECISIONS = ("fp32", "fp16", "int8")


def spec_digest(spec: ModelSpec) -> str:
    """A short hash of everything in the spec that changes the FP32 graphs or their inputs (the
    precision policy is hashed apart, by :func:`policy_digest`)."""
    fields = {k: v for k, v in dataclasses.asdict(spec).items() if k != "precision"}
    blob = json.dumps(fields, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def policy_digest(spec: ModelSpec, precision: str) -> str | None:
    """A short hash of the spec's policy for ``precision`` (None for fp32, which has none)."""
    if precision == "fp32":
        return None
    policy = {k: v for k, v in dataclasses.asdict(spec.precision).items()
              if k.startswith(precision)}
    return hashlib.sha256(json.dumps(policy, sort_keys=True).encode()).hexdigest()[:16]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def graph_entry(spec: ModelSpec, graph: str, files: list[Path]) -> dict[str, Any]:
    """Manifest entry of one graph: its files (ONNX + external data) with hashes and tensor specs."""
    g = spec.graphs()[graph]
    return {
        "files": {p.name: sha256_file(p) for p in files},
        "inputs": [dataclasses.asdict(t) for t in g.inputs],
        "outputs": [dataclasses.asdict(t) for t in g.outputs],
        "profile": g.profile,
    }


def write_manifest(model_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` atomically (it is the last file written: its presence means done)."""
    path = Path(model_dir) / MANIFEST_NAME
    tmp = path.with_name(f".{MANIFEST_NAME}.partial")
    tmp.write_text(json.dumps({"format": FORMAT_VERSION, **manifest}, indent=2, default=str))
    tmp.replace(path)
    return path


def read_manifest(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / MANIFEST_NAME
    if not Path(model_dir).is_dir():
        raise ArtifactError(f"model directory not found: {model_dir}; create it with wsisam-export")
    if not path.is_file():
        raise ArtifactError(
            f"{model_dir} has no {MANIFEST_NAME} (an unfinished or foreign export); "
            f"re-run wsisam-export into it"
        )
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); re-run wsisam-export") from exc


def check_manifest(model_dir: Path, manifest: dict[str, Any], model: str | None = None,
                   precision: str | None = None, verify_files: bool = True) -> ModelSpec:
    """Validate a model directory; return the registry spec it was built for.

    Refuses, with every difference named in one line: another model than ``model``, another
    precision, a spec that changed since export, a missing or modified graph file, and for FP16/INT8
    a precision policy that changed since, or a missing calibration (INT8) or accuracy record.
    """
    diffs: list[str] = []
    if manifest.get("format") != FORMAT_VERSION:
        diffs.append(f"format {manifest.get('format')} != {FORMAT_VERSION}")
    name = manifest.get("model")
    if model is not None and name != model:
        diffs.append(f"model '{name}' != requested '{model}'")
    have = manifest.get("precision")
    if precision is not None and have != precision:
        diffs.append(f"precision '{have}' != requested '{precision}'")
    spec = get_model(str(name))
    if manifest.get("spec_digest") != spec_digest(spec):
        diffs.append(
            f"spec digest {manifest.get('spec_digest')} != this wsisam's {spec_digest(spec)} "
            f"(exported by another wsisam version)"
        )
    diffs += _precision_diffs(spec, manifest)
    if verify_files:
        diffs += _file_diffs(Path(model_dir), manifest)
    if diffs:
        raise ArtifactError(f"{model_dir} does not match: {'; '.join(diffs)}; re-run wsisam-export")
    return spec


def _precision_diffs(spec: ModelSpec, manifest: dict[str, Any]) -> list[str]:
    """A lower-precision artefact must have been derived under this wsisam's policy, calibrated
    (INT8) and measured against FP32."""
    have = manifest.get("precision")
    if have not in PRECISIONS:
        return [f"precision '{have}' unknown (expected one of {', '.join(PRECISIONS)})"]
    if have == "fp32":
        return []
    diffs = []
    if manifest.get("policy_digest") != policy_digest(spec, have):
        diffs.append(f"{have} policy digest {manifest.get('policy_digest')} != this wsisam's "
                     f"{policy_digest(spec, have)} (derived under another precision policy)")
    if have == "int8" and not (manifest.get("calibration") or {}).get("digest"):
        diffs.append("int8 artefact without a calibration record")
    if not isinstance(manifest.get("accuracy_vs_fp32"), dict):
        diffs.append(f"{have} artefact without an accuracy record vs fp32")
    return diffs


def _file_diffs(model_dir: Path, manifest: dict[str, Any]) -> list[str]:
    diffs = []
    for graph, entry in manifest.get("graphs", {}).items():
        for fname, digest in entry.get("files", {}).items():
            p = model_dir / fname
            if not p.is_file():
                diffs.append(f"{graph} file {fname} missing")
            elif sha256_file(p) != digest:
                diffs.append(f"{graph} file {fname} modified or corrupt (sha256 differs)")
    return diffs
