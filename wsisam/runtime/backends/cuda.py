"""CUDA through ``cuda-python`` (``cuda.bindings.runtime``): device query, streams, events, pinned
host buffers, device buffers, async copies, CUDA graphs. Imported lazily; never pycuda.

Every CUDA call returns ``(cudaError_t, *outputs)``; :func:`check` turns an error into one
:class:`CudaError` line naming the call and CUDA's own error name and text. Without a driver,
``cuda.bindings`` still imports, the runtime calls return ``cudaErrorInsufficientDriver`` (35) and
the driver-API calls raise ``DynamicLibNotFoundError`` (checked on the dev machine with
cuda-bindings 13.4.4): :func:`probe_device` turns both into "no CUDA device: …" before anything
else — in particular before any TensorRT object exists (a ``tensorrt_lean`` Runtime created
without a GPU logs CUDA error 35 and crashes the interpreter at exit).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsisam.errors import DependencyError, WsisamError

CUDA_HINT = "pip install 'wsisam[tensorrt]' (or 'wsisam[gpu]'), which brings cuda-python"


class CudaError(WsisamError):
    """A CUDA call failed, or there is no usable CUDA device."""


def cudart() -> Any:
    """The ``cuda.bindings.runtime`` module (cuda-python ≥ 12.8), or a one-line install hint."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:  # cuda-python < 12.8 named it cuda.cudart
            from cuda import cudart as runtime  # type: ignore[no-redef]
        except ImportError as exc:
            raise DependencyError(f"the GPU backends need cuda-python (cuda.bindings) ({exc}); "
                                  f"install it with: {CUDA_HINT}") from None
    return runtime


def _error_text(rt: Any, err: Any) -> str:
    try:
        name = rt.cudaGetErrorName(err)[1].decode()
        text = rt.cudaGetErrorString(err)[1].decode()
        return f"{name}: {text}"
    except Exception:  # a failed lookup must not hide the original error
        return str(err)


def check(result: Any, what: str) -> Any:
    """Unpack a cuda-python result tuple; raise :class:`CudaError` unless it succeeded.

    Returns the single output, a tuple of outputs, or None when there is none.
    """
    rt = cudart()
    err, *out = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        raise CudaError(f"{what} failed: {_error_text(rt, err)}")
    if not out:
        return None
    return out[0] if len(out) == 1 else tuple(out)


@dataclass(frozen=True)
class DeviceFacts:
    """What a plan manifest records about, and is checked against, the GPU it runs on."""

    index: int
    name: str
    compute_capability: str  # "8.6"
    total_memory_bytes: int
    driver_version: int  # CUDA version the driver supports, e.g. 12040 for 12.4
    runtime_version: int  # CUDA runtime of cuda-python's bindings

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name,
                "compute_capability": self.compute_capability,
                "total_memory_bytes": self.total_memory_bytes,
                "cuda_driver_version": cuda_version_str(self.driver_version),
                "cuda_runtime_version": cuda_version_str(self.runtime_version)}


def cuda_version_str(v: int) -> str:
    """CUDA's integer version (1000·major + 10·minor) as "major.minor"."""
    return f"{v // 1000}.{(v % 1000) // 10}"


def probe_device(index: int = 0) -> tuple[DeviceFacts | None, str]:
    """(facts, "") for CUDA device ``index``, or (None, why not) — never raises for a missing
    driver, device or cuda-python, so backend selection can record the reason."""
    try:
        return device_facts(index), ""
    except (CudaError, DependencyError) as exc:
        return None, str(exc)


def device_facts(index: int = 0) -> DeviceFacts:
    """Facts of CUDA device ``index``; :class:`CudaError` "no CUDA device: …" when there is none."""
    rt = cudart()
    try:
        count = check(rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
        driver = check(rt.cudaDriverGetVersion(), "cudaDriverGetVersion")
    except CudaError as exc:
        raise CudaError(f"no CUDA device: {exc} (no NVIDIA driver, or one older than the CUDA "
                        f"runtime of the installed cuda-python)") from None
    except Exception as exc:  # cuda-pathfinder raises its own errors when libcuda is absent
        raise CudaError(f"no CUDA device: {type(exc).__name__}: {exc}") from None
    if not count:
        raise CudaError("no CUDA device: the driver reports 0 devices")
    if not 0 <= index < count:
        raise CudaError(f"no CUDA device {index}: the driver reports {count} device(s)")
    prop = check(rt.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    runtime = check(rt.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return DeviceFacts(index, name.rstrip("\0").strip(), f"{prop.major}.{prop.minor}",
                       int(prop.totalGlobalMem), int(driver), int(runtime))


def require_device(index: int = 0) -> DeviceFacts:
    """Select device ``index`` for this thread; raises before any CUDA object is created."""
    facts = device_facts(index)
    check(cudart().cudaSetDevice(index), f"cudaSetDevice({index})")
    return facts


class Stream:
    """A non-blocking CUDA stream (does not synchronise with the legacy default stream)."""

    def __init__(self) -> None:
        rt = cudart()
        self.handle = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking),
                            "cudaStreamCreateWithFlags")

    @property
    def ptr(self) -> int:
        """The ``cudaStream_t`` as an integer (what TensorRT and ONNX Runtime take)."""
        return int(self.handle)

    def wait(self, event: "Event") -> None:
        """Work queued on this stream after this call waits until ``event`` has completed."""
        check(cudart().cudaStreamWaitEvent(self.handle, event.handle, 0), "cudaStreamWaitEvent")

    def synchronize(self) -> None:
        check(cudart().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.handle is not None:
            check(cudart().cudaStreamDestroy(self.handle), "cudaStreamDestroy")
            self.handle = None


class Event:
    """A CUDA event; ``timing=False`` (the default) is the cheap kind for ordering only."""

    def __init__(self, timing: bool = False) -> None:
        rt = cudart()
        flags = rt.cudaEventDefault if timing else rt.cudaEventDisableTiming
        self.handle = check(rt.cudaEventCreateWithFlags(flags), "cudaEventCreateWithFlags")

    def record(self, stream: Stream) -> "Event":
        check(cudart().cudaEventRecord(self.handle, stream.handle), "cudaEventRecord")
        return self

    def done(self) -> bool:
        """True once all work captured by the last :meth:`record` has completed."""
        rt = cudart()
        err = rt.cudaEventQuery(self.handle)[0]
        if err == rt.cudaError_t.cudaErrorNotReady:
            return False
        check((err,), "cudaEventQuery")
        return True

    def synchronize(self) -> None:
        check(cudart().cudaEventSynchronize(self.handle), "cudaEventSynchronize")

    def elapsed_ms(self, since: "Event") -> float:
        """Milliseconds between ``since`` and this event (both created with ``timing=True``)."""
        return float(check(cudart().cudaEventElapsedTime(since.handle, self.handle),
                           "cudaEventElapsedTime"))

    def close(self) -> None:
        if self.handle is not None:
            check(cudart().cudaEventDestroy(self.handle), "cudaEventDestroy")
            self.handle = None


class PinnedBuffer:
    """Page-locked host memory (``cudaMallocHost``): async copies from/to it really overlap
    compute, and the driver does not stage them through its own bounce buffer."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(check(cudart().cudaMallocHost(self.nbytes), f"cudaMallocHost({nbytes})"))
        self._raw = (ctypes.c_ubyte * self.nbytes).from_address(self.ptr)

    def view(self, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        """A numpy array over the first bytes of the buffer (no copy; valid until close)."""
        dt = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        if n > self.nbytes:
            raise CudaError(f"pinned buffer of {self.nbytes} B cannot hold {dt}{list(shape)}")
        return np.frombuffer(self._raw, dtype=np.uint8, count=n).view(dt).reshape(shape)

    def close(self) -> None:
        if self.ptr:
            self._raw = None
            check(cudart().cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = 0


class DeviceBuffer:
    """Device memory (``cudaMalloc``), allocated once and reused for every call."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(check(cudart().cudaMalloc(self.nbytes), f"cudaMalloc({nbytes})"))

    def close(self) -> None:
        if self.ptr:
            check(cudart().cudaFree(self.ptr), "cudaFree")
            self.ptr = 0


def copy_h2d(dst: DeviceBuffer | int, src: PinnedBuffer | int, nbytes: int,
             stream: Stream) -> None:
    """Queue a host→device copy of ``nbytes`` on ``stream``."""
    _copy(dst, src, nbytes, stream, "HostToDevice")


def copy_d2h(dst: PinnedBuffer | int, src: DeviceBuffer | int, nbytes: int,
             stream: Stream) -> None:
    """Queue a device→host copy of ``nbytes`` on ``stream``."""
    _copy(dst, src, nbytes, stream, "DeviceToHost")


def copy_d2d(dst: DeviceBuffer | int, src: DeviceBuffer | int, nbytes: int,
             stream: Stream) -> None:
    _copy(dst, src, nbytes, stream, "DeviceToDevice")


def _copy(dst: DeviceBuffer | PinnedBuffer | int, src: DeviceBuffer | PinnedBuffer | int,
          nbytes: int, stream: Stream, kind: str) -> None:
    rt = cudart()
    check(rt.cudaMemcpyAsync(_ptr(dst), _ptr(src), nbytes,
                             getattr(rt.cudaMemcpyKind, f"cudaMemcpy{kind}"), stream.handle),
          f"cudaMemcpyAsync({kind})")


def _ptr(x: DeviceBuffer | PinnedBuffer | int) -> int:
    return x if isinstance(x, int) else x.ptr


class CudaGraph:
    """Work captured once from a stream and replayed with one launch (static shapes and buffer
    addresses only: a replay reads and writes exactly the memory the capture saw)."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self._graph: Any = None
        self._exec: Any = None

    def begin(self) -> None:
        rt = cudart()
        # thread-local: CUDA calls made by other threads meanwhile are not forbidden
        check(rt.cudaStreamBeginCapture(
            self.stream.handle, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
            "cudaStreamBeginCapture")

    def end(self) -> None:
        rt = cudart()
        self._graph = check(rt.cudaStreamEndCapture(self.stream.handle), "cudaStreamEndCapture")
        self._exec = check(rt.cudaGraphInstantiate(self._graph, 0), "cudaGraphInstantiate")

    def launch(self) -> None:
        check(cudart().cudaGraphLaunch(self._exec, self.stream.handle), "cudaGraphLaunch")

    def close(self) -> None:
        rt = cudart()
        if self._exec is not None:
            check(rt.cudaGraphExecDestroy(self._exec), "cudaGraphExecDestroy")
            self._exec = None
        if self._graph is not None:
            check(rt.cudaGraphDestroy(self._graph), "cudaGraphDestroy")
            self._graph = None

