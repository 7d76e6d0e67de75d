"""ONNX Runtime backend: CPU everywhere, CUDA / TensorRT execution providers where installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsisam.errors import ArtifactError, ConfigError
from wsisam.registry import GraphSpec
from wsisam.runtime.backends.base import Backend

# wsisam backend name → ONNX Runtime provider list (first available wins inside ORT)
PROVIDERS = {
    "ort-cpu": ["CPUExecutionProvider"],
    "ort-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "ort-tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


class OrtBackend(Backend):
    """Runs an ONNX graph in an ``onnxruntime.InferenceSession``.

    ``backend`` picks the provider list; asking for a GPU provider that this onnxruntime build does
    not have is an error (never a silent CPU run).
    """

    def __init__(self, graph_path: Path, spec: GraphSpec, backend: str = "ort-cpu",
                 intra_op_threads: int = 0, allow_spinning: bool = True) -> None:
        """``intra_op_threads`` 0: ORT's default (one per physical core). ``allow_spinning``
        False: idle ORT threads sleep instead of busy-waiting, which matters when several
        sessions share the cores (the pipelined runtime runs encoder and decoder at once)."""
        super().__init__(graph_path, spec)
        if backend not in PROVIDERS:
            raise ConfigError(f"unknown ONNX Runtime backend '{backend}'; use one of {list(PROVIDERS)}")
        self.name = backend
        self.intra_op_threads = intra_op_threads
        self.allow_spinning = allow_spinning
        self._session = None

    def _load_impl(self) -> None:
        import onnxruntime as ort

        wanted = PROVIDERS[self.name]
        have = set(ort.get_available_providers())
        if wanted[0] not in have:
            raise ConfigError(
                f"backend {self.name} needs ONNX Runtime's {wanted[0]}, which this install lacks "
                f"(available: {', '.join(sorted(have))}); install onnxruntime-gpu in place of "
                f"onnxruntime, or use --backend ort-cpu"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.intra_op_threads
        if not self.allow_spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(self.graph_path), sess_options=opts, providers=self._provider_list(wanted, have)
            )
        except Exception as exc:  # ORT raises several private exception types for bad files
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ArtifactError(
                f"cannot load ONNX graph {self.graph_path}: {first[:200]}; re-export it with "
                f"wsisam-export"
            ) from exc

    def _provider_list(self, wanted: list[str], have: set[str]) -> list:
        """Providers passed to the session: names, or (name, options) pairs (GPU backends)."""
        return [p for p in wanted if p in have]

    def _run_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self._session.run(self.spec.output_names, feed)
        return dict(zip(self.spec.output_names, outs))

    def _close_impl(self) -> None:
        self._session = None

    def describe(self) -> dict[str, object]:
        import onnxruntime as ort

        providers = self._session.get_providers() if self._session is not None else []
        return {"backend": self.name, "onnxruntime": ort.__version__, "providers": providers}
