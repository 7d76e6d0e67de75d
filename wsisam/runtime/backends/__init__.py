"""Inference backends behind one interface (:class:`Backend`)."""

from wsisam.runtime.backends.base import Backend
from wsisam.runtime.backends.ort import OrtBackend, available_providers

__all__ = ["Backend", "OrtBackend", "available_providers", "create_backend", "BACKENDS"]

BACKENDS = ("auto", "ort-cpu", "ort-cuda", "ort-tensorrt", "tensorrt")

# Option names by kind of backend; create_backend passes each backend only its own.
_ORT_OPTIONS = ("intra_op_threads", "allow_spinning")
_GPU_OPTIONS = ("device", "slots")
_TRT_OPTIONS = ("plan_dir", "cuda_graph")


def _only(options: dict, keys: tuple[str, ...]) -> dict:
    return {k: v for k, v in options.items() if k in keys}


def create_backend(name: str, graph_path, spec, **options) -> tuple[Backend, str]:
    """Create the backend ``name`` for one graph (``graph_path``: its ONNX file in the model
    directory); ``auto`` picks TensorRT plans if present and loadable, else ONNX Runtime's
    TensorRT/CUDA EP, else its CPU EP (:mod:`~wsisam.runtime.backends.select`). ``options`` go to
    the backend that takes them (ORT: ``intra_op_threads``, ``allow_spinning``; GPU: ``device``,
    ``slots``; TensorRT: ``plan_dir``, ``cuda_graph``).
    Returns the backend and a one-line reason for the choice (recorded in the report)."""
    from pathlib import Path

    if name not in BACKENDS:
        from wsisam.errors import ConfigError

        raise ConfigError(f"unknown backend '{name}'; use one of {', '.join(BACKENDS)}")
    reason = f"requested {name}"
    if name == "auto":
        from wsisam.runtime.backends.select import choose_backend, gather_facts

        facts = gather_facts(Path(graph_path).parent, options.get("plan_dir"), [spec.name],
                             options.get("device", 0))
        name, reason = choose_backend("auto", facts)
    if name == "tensorrt":
        from wsisam.runtime.backends.tensorrt import TensorRTBackend

        return (TensorRTBackend(graph_path, spec,
                                **_only(options, _GPU_OPTIONS + _TRT_OPTIONS)), reason)
    if name in ("ort-cuda", "ort-tensorrt"):
        from wsisam.runtime.backends.ort_gpu import create_ort_gpu

        backend, note = create_ort_gpu(name, graph_path, spec,
                                       **_only(options, _ORT_OPTIONS + _GPU_OPTIONS))
        return backend, f"{reason}; {note}"
    return OrtBackend(graph_path, spec, name, **_only(options, _ORT_OPTIONS)), reason
