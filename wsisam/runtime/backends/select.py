"""``--backend auto``: which backend runs a model directory here, and why (one line).

:func:`choose_backend` is a pure function of :class:`Facts` (tested in CI without a GPU);
:func:`gather_facts` collects them without creating any TensorRT object. Order: TensorRT plans
that are present and loadable (a CUDA device, an importable TensorRT that can run them, a
``plans.json`` matching this model directory, GPU and TensorRT) → ONNX Runtime's TensorRT EP
(it needs the full TensorRT libraries) → its CUDA EP → its CPU EP. The reason names what the
better choices lacked, so a CPU run on a GPU machine says why.
"""

from __future__ import annotations

import ctypes.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from wsisam.errors import DependencyError


@dataclass(frozen=True)
class Facts:
    """What selection depends on.

    ``plan_problems``: why the TensorRT plans cannot run here (empty: they can);
    ``device``: the CUDA device's name, None when there is none or it could not be checked;
    ``device_known``: whether cuda-python could check (without it ORT's GPU providers are tried
    on trust, as ORT reports them by build, not by device);
    ``providers``: ``onnxruntime.get_available_providers()``;
    ``trt_libs``: whether the full TensorRT libraries (libnvinfer) are loadable, which ORT's
    TensorRT EP needs (the lean wheels do not provide them).
    """

    plan_problems: tuple[str, ...] = ("no TensorRT plans",)
    device: str | None = None
    device_known: bool = False
    device_reason: str = "cuda-python not installed"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    trt_libs: bool = False
    notes: tuple[str, ...] = field(default=())


def choose_backend(requested: str, f: Facts) -> tuple[str, str]:
    """(backend name, one-line reason). An explicit request is honoured as it is (the backend
    itself refuses, in one line, if it cannot run): never a silent switch."""
    if requested != "auto":
        return requested, f"requested {requested}"
    if not f.plan_problems:
        return "tensorrt", f"auto: TensorRT plans match this GPU ({f.device}) and TensorRT"
    why = [f"TensorRT plans: {'; '.join(f.plan_problems)}"]
    gpu_ok = f.device is not None or not f.device_known
    if "TensorrtExecutionProvider" in f.providers:
        if gpu_ok and f.trt_libs:
            return "ort-tensorrt", _reason("TensorrtExecutionProvider", f, why)
        why.append("ORT TensorRT EP: " + (f.device_reason if not gpu_ok
                                          else "TensorRT libraries (libnvinfer) not found"))
    if "CUDAExecutionProvider" in f.providers:
        if gpu_ok:
            return "ort-cuda", _reason("CUDAExecutionProvider", f, why)
        why.append(f"ORT CUDA EP: {f.device_reason}")
    else:
        why.append("no ORT GPU execution provider installed")
    return "ort-cpu", f"auto: CPU ({'; '.join(why)})"


def _reason(provider: str, f: Facts, why: list[str]) -> str:
    device = f.device if f.device else "device not checked: cuda-python not installed"
    return f"auto: ONNX Runtime {provider} on {device} ({'; '.join(why)})"


def trt_libs_loadable() -> bool:
    """Whether the full TensorRT runtime library is on the loader path or importable."""
    if ctypes.util.find_library("nvinfer"):
        return True
    import importlib.util

    return importlib.util.find_spec("tensorrt_libs") is not None


def gather_facts(model_dir: Path, plan_dir: Path | None, graphs: Sequence[str],
                 device_index: int = 0) -> Facts:
    """Collect :class:`Facts` for ``model_dir`` (creates no TensorRT or CUDA object)."""
    from wsisam.runtime.backends import cuda
    from wsisam.runtime.backends.ort import available_providers
    from wsisam.runtime.backends.tensorrt import default_plan_dir, preflight

    plan_dir = Path(plan_dir) if plan_dir else default_plan_dir(model_dir)
    try:
        cuda.cudart()
        device, why = cuda.probe_device(device_index)
        known = True
    except DependencyError:
        device, why, known = None, "cuda-python not installed", False
    problems, _ = preflight(model_dir, plan_dir, graphs, device_index)
    problems = [p for p in problems if not p.startswith("install with")]
    return Facts(plan_problems=tuple(problems), device=device.name if device else None,
                 device_known=known, device_reason=why,
                 providers=tuple(available_providers()), trt_libs=trt_libs_loadable())
