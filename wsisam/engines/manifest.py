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


def spec_digest(spec: ModelSpec) -> str:
    """A short hash of everything in the spec that changes the graphs or their inputs."""
    blob = json.dumps(dataclasses.asdict(spec), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


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
    precision, a spec that changed since export, a missing or modified graph file.
    """
    diffs: list[str] = []
    if manifest.get("format") != FORMAT_VERSION:
        diffs.append(f"format {manifest.get('format')} != {FORMAT_VERSION}")
    name = manifest.get("model")
    if model is not None and name != model:
        diffs.append(f"model '{name}' != requested '{model}'")
    if precision is not None and manifest.get("precision") != precision:
        diffs.append(f"precision '{manifest.get('precision')}' != requested '{precision}'")
    spec = get_model(str(name))
    if manifest.get("spec_digest") != spec_digest(spec):
        diffs.append(
            f"spec digest {manifest.get('spec_digest')} != this wsisam's {spec_digest(spec)} "
            f"(exported by another wsisam version)"
        )
    if verify_files:
        diffs += _file_diffs(Path(model_dir), manifest)
    if diffs:
        raise ArtifactError(f"{model_dir} does not match: {'; '.join(diffs)}; re-run wsisam-export")
    return spec


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
