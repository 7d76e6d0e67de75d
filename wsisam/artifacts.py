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
from wsisam.registry import SystemSpec, get_model

MANIFEST_NAME = "manifest.json"
REPORT_NAME = "export_report.json"  # beside the manifest: what the export measured
FORMAT_VERSION = 1


PRECISIONS = ("fp32", "fp16", "int8")


def spec_digest(spec: SystemSpec) -> str:
    """A short hash of everything in the spec that changes the FP32 graphs or their inputs (the
    precision policy is hashed apart, by :func:`policy_digest`)."""
    fields = {k: v for k, v in dataclasses.asdict(spec).items() if k != "precision"}
    blob = json.dumps(fields, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def policy_digest(spec: SystemSpec, precision: str) -> str | None:
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


def graph_entry(spec: SystemSpec, graph: str, files: list[Path]) -> dict[str, Any]:
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
    return _write_json_atomic(Path(model_dir) / MANIFEST_NAME,
                              {"format": FORMAT_VERSION, **manifest})


def _write_json_atomic(path: Path, doc: dict[str, Any]) -> Path:
    # not writers.atomic: the runtime package imports this module, so this one cannot import it
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(doc, indent=2, default=str))
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
                   precision: str | None = None, verify_files: bool = True) -> SystemSpec:
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


def _precision_diffs(spec: SystemSpec, manifest: dict[str, Any]) -> list[str]:
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


# --- TensorRT plans -----------------------------------------------------------------------------
# Plans live in their own folder (default ``<model dir>/tensorrt``) with their own manifest,
# ``plans.json``: they are built later than the ONNX export, on the machine that runs them, from
# the graphs of one model directory, and are tied to that GPU and TensorRT version. The model
# directory's ``manifest.json`` is left as export wrote it.

PLAN_DIR_NAME = "tensorrt"
PLAN_MANIFEST_NAME = "plans.json"
PLAN_FORMAT_VERSION = 1


def read_plan_manifest(plan_dir: Path) -> dict[str, Any]:
    """The ``plans.json`` of ``plan_dir`` (:class:`ArtifactError` if absent or not JSON)."""
    path = Path(plan_dir) / PLAN_MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(f"{plan_dir} has no {PLAN_MANIFEST_NAME} (no TensorRT plans, or an "
                            f"unfinished build); build them with wsisam-build")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); rebuild with wsisam-build") from exc


def write_plan_manifest(plan_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write ``plans.json`` atomically (the last file of a build)."""
    return _write_json_atomic(Path(plan_dir) / PLAN_MANIFEST_NAME,
                              {"format": PLAN_FORMAT_VERSION, **manifest})


def version_tuple(v: str) -> tuple[int, ...]:
    """"10.16.1.11" → (10, 16, 1, 11); non-numeric parts end the tuple."""
    out = []
    for part in str(v).split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


def check_plan_compat(entry: dict[str, Any], facts: dict[str, Any]) -> list[str]:
    """Every difference between a plan manifest and the runtime about to load it (pure).

    ``entry``: the ``plans.json`` written by the builder. ``facts``: what the runtime sees —
    ``model``, ``precision``, ``spec_digest`` and ``source_files`` ({graph: {file: sha256}}) from
    the model directory's manifest; ``graphs`` (the graphs it needs); ``plan_sha256``
    ({graph: sha256 of the plan file, or None if missing}; omitted: not checked);
    ``tensorrt_module`` ("tensorrt" or "tensorrt_lean") and ``tensorrt_version`` of the
    importable runtime; ``gpu_name`` and ``compute_capability`` of the device. Facts that are
    absent are not checked (so the model-level part can be checked without a GPU).

    Rules (TensorRT docs): a plain plan runs only on the TensorRT version that built it, with the
    full runtime; a version-compatible plan runs on that version or a later one, also on the lean
    runtime, and one built with the lean runtime excluded needs ``tensorrt_lean`` to load; every
    plan is refused on another GPU (name or compute capability), as TensorRT selects kernels for
    the device it builds on.
    """
    diffs: list[str] = []
    if entry.get("format") != PLAN_FORMAT_VERSION:
        diffs.append(f"plan manifest format {entry.get('format')} != {PLAN_FORMAT_VERSION}")
    for key in ("model", "precision", "spec_digest"):
        if key in facts and entry.get(key) != facts[key]:
            diffs.append(f"plans built for {key} '{entry.get(key)}' != this model directory's "
                         f"'{facts[key]}'")
    plans = entry.get("plans") or {}
    sources = (entry.get("source") or {}).get("files") or {}
    for graph in facts.get("graphs", plans):
        if graph not in plans:
            diffs.append(f"no plan for graph '{graph}'")
            continue
        if "source_files" in facts and sources.get(graph) != facts["source_files"].get(graph):
            diffs.append(f"{graph} plan built from other ONNX files than this model directory's "
                         f"(sha256 differs)")
        if graph in facts.get("plan_sha256", {}):
            have = facts["plan_sha256"][graph]
            fname = plans[graph].get("file", f"{graph}.plan")
            if have is None:
                diffs.append(f"{graph} plan file {fname} missing")
            elif have != plans[graph].get("sha256"):
                diffs.append(f"{graph} plan file {fname} modified or corrupt (sha256 differs)")
    diffs += _trt_diffs(entry.get("tensorrt") or {}, facts)
    diffs += _gpu_diffs(entry.get("gpu") or {}, facts)
    return diffs


def _trt_diffs(trt: dict[str, Any], facts: dict[str, Any]) -> list[str]:
    if "tensorrt_version" not in facts:
        return []
    built, have = str(trt.get("version")), str(facts["tensorrt_version"])
    module = facts.get("tensorrt_module", "tensorrt")
    if not trt.get("version_compatible"):
        diffs = []
        if version_tuple(built)[:3] != version_tuple(have)[:3]:
            diffs.append(f"built with TensorRT {built}, this runtime is {module} {have} (a plan "
                         f"that is not version-compatible runs only on the version that built it)")
        if module != "tensorrt":
            diffs.append(f"plan is not version-compatible, which {module} cannot run (rebuild "
                         f"with --version-compatible, or install the full tensorrt)")
        return diffs
    diffs = []
    if version_tuple(have)[:3] < version_tuple(built)[:3]:
        diffs.append(f"built with TensorRT {built}, newer than this runtime's {module} {have}")
    if trt.get("exclude_lean_runtime") and module != "tensorrt_lean":
        diffs.append("plan excludes the lean runtime, so it loads with tensorrt_lean only "
                     "(pip install 'wsisam[tensorrt]')")
    return diffs


def _gpu_diffs(gpu: dict[str, Any], facts: dict[str, Any]) -> list[str]:
    diffs = []
    if "compute_capability" in facts and gpu.get("compute_capability") != facts[
            "compute_capability"]:
        diffs.append(f"built for compute capability {gpu.get('compute_capability')}, this GPU "
                     f"has {facts['compute_capability']}")
    if "gpu_name" in facts and gpu.get("name") != facts["gpu_name"]:
        diffs.append(f"built on GPU '{gpu.get('name')}', this is '{facts['gpu_name']}'")
    return diffs


# --- graph files ---------------------------------------------------------------------------

PROTOBUF_LIMIT = 2**31 - 1  # a single ONNX protobuf cannot exceed 2 GB


def graph_files(path: Path) -> list[Path]:
    """``<graph>.onnx`` and, when present, its external-data file ``<graph>.onnx.data``."""
    data = path.with_name(path.name + ".data")
    return [path, data] if data.is_file() else [path]


def save_graph(model: Any, path: Path) -> list[Path]:
    """Save ``model`` to ``path``, weights in one ``<name>.data`` file beyond the protobuf limit;
    checks it and returns the files written."""
    import onnx

    if model.ByteSize() <= PROTOBUF_LIMIT:
        onnx.save_model(model, str(path))
    else:
        onnx.save_model(model, str(path), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=path.name + ".data",
                        size_threshold=1024)
    onnx.checker.check_model(str(path))
    return graph_files(path)
