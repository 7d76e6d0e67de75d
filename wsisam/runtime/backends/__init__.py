"""Inference backends behind one interface (:class:`Backend`)."""

from wsisam.runtime.backends.base import Backend
from wsisam.runtime.backends.ort import PROVIDERS, OrtBackend, available_providers

__all__ = ["Backend", "OrtBackend", "available_providers", "create_backend", "BACKENDS"]

BACKENDS = ("auto", "ort-cpu", "ort-cuda", "ort-tensorrt")


def create_backend(name: str, graph_path, spec) -> tuple[Backend, str]:
    """Create the backend ``name`` for one graph; ``auto`` picks the best available ONNX Runtime
    provider. Returns the backend and a one-line reason for the choice (recorded in the report)."""
    if name == "auto":
        have = available_providers()
        for candidate in ("ort-tensorrt", "ort-cuda"):
            if PROVIDERS[candidate][0] in have:
                return OrtBackend(graph_path, spec, candidate), f"auto: {PROVIDERS[candidate][0]} available"
        return OrtBackend(graph_path, spec, "ort-cpu"), "auto: no GPU execution provider installed"
    return OrtBackend(graph_path, spec, name), f"requested {name}"
