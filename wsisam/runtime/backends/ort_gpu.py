"""ONNX Runtime on the GPU: CUDA EP and TensorRT EP with I/O binding on device buffers and a
user compute stream (``user_compute_stream``), on the staged backend's slots and streams.

Without cuda-python the GPU providers still run through the plain :class:`OrtBackend` (ORT
copies host arrays itself each call); :func:`create_ort_gpu` says which one was made and why.
The TensorRT EP needs the full TensorRT libraries (libnvinfer) on the library path, which the
``tensorrt-lean`` wheels do not provide; ORT falls back to its next provider when they are
missing, which this backend refuses instead of running elsewhere silently.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from wsisam.runtime.backends.profiles import ort_trt_profile_options
from wsisam.errors import ConfigError, DependencyError
from wsisam.registry import GraphSpec
from wsisam.runtime.backends.gpu_base import Shape, StagedGpuBackend
from wsisam.runtime.backends.ort import PROVIDERS, OrtBackend

ORT_GPU_FIX = ("pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu")


def ort_install_conflict() -> str | None:
    """A one-line problem when both ``onnxruntime`` and ``onnxruntime-gpu`` are installed: they
    share the module name, files of the one installed last win, and what imports is a mix."""
    have = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.distribution(dist)
            have.append(dist)
        except metadata.PackageNotFoundError:
            pass
    if len(have) < 2:
        return None
    return ("both onnxruntime and onnxruntime-gpu are installed (they share the module name "
            f"'onnxruntime'); keep only the GPU one: {ORT_GPU_FIX}")


def trt_ep_cache_dir() -> Path:
    """Engine and timing caches of ORT's TensorRT EP (it keys its files by model and GPU)."""
    home = Path(os.environ.get("WSISAM_HOME", Path.home() / ".cache" / "wsisam"))
    return home / "ort-trt-cache"


def provider_options(backend: str, spec: GraphSpec, device: int, stream_ptr: int | None
                     ) -> list[Any]:
    """The provider list for ``backend`` with options (pure). ``stream_ptr`` is the user compute
    stream (None: ORT's own); ORT treats 0 as "no stream"."""
    common: dict[str, str] = {"device_id": str(device)}
    if stream_ptr:
        common["user_compute_stream"] = str(stream_ptr)
        common["has_user_compute_stream"] = "1"  # implied since ORT 1.17; older ones need it
    cuda = ("CUDAExecutionProvider", dict(common))
    if backend == "ort-cuda":
        return [cuda, "CPUExecutionProvider"]
    if backend == "ort-tensorrt":
        cache = str(trt_ep_cache_dir())
        trt = {**common, "trt_engine_cache_enable": "True", "trt_engine_cache_path": cache,
               "trt_timing_cache_enable": "True", "trt_timing_cache_path": cache,
               **ort_trt_profile_options(spec)}
        return [("TensorrtExecutionProvider", trt), cuda, "CPUExecutionProvider"]
    raise ConfigError(f"'{backend}' is not an ONNX Runtime GPU backend")


def check_provider_available(backend: str) -> None:
    """The one-line error :class:`OrtBackend` gives, before any CUDA work is done."""
    import onnxruntime as ort

    wanted = PROVIDERS[backend][0]
    have = set(ort.get_available_providers())
    if wanted not in have:
        raise ConfigError(
            f"backend {backend} needs ONNX Runtime's {wanted}, which this install lacks "
            f"(available: {', '.join(sorted(have))}); install onnxruntime-gpu in place of "
            f"onnxruntime ({ORT_GPU_FIX}), or use --backend ort-cpu")


class _Session(OrtBackend):
    """OrtBackend whose providers carry options (device, user stream, TensorRT EP profiles)."""

    def __init__(self, graph_path: Path, spec: GraphSpec, backend: str, providers: list[Any],
                 **ort_options: Any) -> None:
        super().__init__(graph_path, spec, backend, **ort_options)
        self._providers = providers

    def _provider_list(self, wanted: list[str], have: set[str]) -> list:
        return [p for p in self._providers if (p if isinstance(p, str) else p[0]) in have]


class OrtGpuBackend(StagedGpuBackend):
    """``ort-cuda`` / ``ort-tensorrt`` with inputs and outputs bound to the slots' device buffers
    and ORT's kernels on this backend's compute stream."""

    def __init__(self, graph_path: Path, spec: GraphSpec, backend: str = "ort-cuda",
                 device: int = 0, slots: int = 2, **ort_options: Any) -> None:
        super().__init__(graph_path, spec, device=device, slots=slots)
        if backend not in ("ort-cuda", "ort-tensorrt"):
            raise ConfigError(f"'{backend}' is not an ONNX Runtime GPU backend")
        self.name = backend
        self._ort_options = ort_options
        self._inner: _Session | None = None
        self._run_options: Any = None

    def _load_impl(self) -> None:
        conflict = ort_install_conflict()
        if conflict:
            raise DependencyError(conflict)
        check_provider_available(self.name)
        super()._load_impl()  # device check, streams, _open_engine, buffers

    def _open_engine(self) -> None:
        import onnxruntime as ort

        providers = provider_options(self.name, self.spec, self.device_index,
                                     self._streams["compute"].ptr)
        self._inner = _Session(self.graph_path, self.spec, self.name, providers,
                               **self._ort_options)
        self._inner.load()
        actual = self._inner._session.get_providers()
        wanted = PROVIDERS[self.name][0]
        if not actual or actual[0] != wanted:
            raise ConfigError(
                f"ONNX Runtime could not start {wanted} for {self.graph_path.name} (it fell back "
                f"to {', '.join(actual)}); "
                + ("the TensorRT EP needs the full TensorRT libraries (libnvinfer) on the "
                   "library path; or use --backend ort-cuda" if self.name == "ort-tensorrt"
                   else "check the CUDA/cuDNN versions onnxruntime-gpu needs"))
        self._run_options = ort.RunOptions()
        # Return once the work is queued on our stream; wait() synchronises on its events.
        self._run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")

    def _execute(self, slot: int, shapes: dict[str, Shape], addrs: dict[str, int],
                 stream: Any) -> None:
        sess = self._inner._session
        io = sess.io_binding()
        for t in self.spec.inputs:
            io.bind_input(t.name, "cuda", self.device_index, np.dtype(t.dtype).type,
                          list(shapes[t.name]), addrs[t.name])
        for t in self.spec.outputs:
            io.bind_output(t.name, "cuda", self.device_index, np.dtype(t.dtype).type,
                           list(shapes[t.name]), addrs[t.name])
        sess.run_with_iobinding(io, self._run_options)

    def _close_engine(self) -> None:
        if self._inner is not None:
            self._inner.close()
        self._inner = None

    def describe(self) -> dict[str, object]:
        inner = self._inner.describe() if self._inner is not None else {"backend": self.name}
        return {**super().describe(), **inner, "io_binding": "device buffers, user stream"}


def create_ort_gpu(backend: str, graph_path: Path, spec: GraphSpec,
                   **options: Any) -> tuple[Any, str]:
    """The GPU ORT backend: with I/O binding when cuda-python is installed, else the plain
    session (ORT copies host arrays each call). Returns (backend, note for the report)."""
    from wsisam.runtime.backends import cuda

    gpu_keys = ("device", "slots")
    try:
        cuda.cudart()
    except DependencyError:
        ort_opts = {k: v for k, v in options.items() if k not in gpu_keys}
        return (OrtBackend(graph_path, spec, backend, **ort_opts),
                "host I/O (cuda-python not installed: no I/O binding or user stream)")
    return OrtGpuBackend(graph_path, spec, backend, **options), "I/O binding on device buffers"
