"""Native TensorRT backend: a plan deserialized by ``tensorrt`` or ``tensorrt_lean``, named I/O
tensors, ``execute_async_v3`` on the backend's compute stream (cuda-python, not pycuda).

Plans come from ``wsisam-build`` (``wsisam/engines/tensorrt_build.py``) and live in
``<model dir>/tensorrt/`` beside ``plans.json``. Loading order, and why:

1. *Preflight* (no TensorRT object yet): cuda-python importable, a CUDA device present (a
   ``tensorrt_lean`` Runtime created without one logs CUDA error 35 and crashes the interpreter
   at exit), a TensorRT module that can run this plan importable, plans present and matching the
   model directory, this GPU and this TensorRT (:func:`~wsisam.artifacts.check_plan_compat`,
   sha256 of every plan included). Every problem found is reported in one line.
2. Streams, then the Runtime and the engine; its I/O names and dtypes are checked against the
   registry, then buffers are allocated once for the profile's largest shapes.

Which module runs a plan (TensorRT docs on version compatibility and the lean runtime): a plain
plan needs the full ``tensorrt`` of the version that built it; a version-compatible plan runs on
``tensorrt_lean`` (preferred: the 45 MB runtime wheel) or the full runtime; one built with
``--exclude-lean-runtime`` only on ``tensorrt_lean``.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from wsisam.artifacts import (
    PLAN_DIR_NAME,
    check_plan_compat,
    read_manifest,
    read_plan_manifest,
    sha256_file,
)
from wsisam.errors import ArtifactError, ConfigError, DependencyError
from wsisam.registry import GraphSpec
from wsisam.runtime.backends.gpu_base import Shape, StagedGpuBackend

log = logging.getLogger(__name__)

TRT_INSTALL = "pip install 'wsisam[tensorrt]'"
MAX_CUDA_GRAPHS = 8  # one per (slot, shape) pair; the static encoder needs `slots` of them


def import_tensorrt(prefer: Sequence[str] = ("tensorrt_lean", "tensorrt")) -> Any:
    """The first importable module of ``prefer``, or a one-line :class:`DependencyError`.

    Importing creates no TensorRT object, so it is safe without a GPU.
    """
    errors = []
    for name in prefer:
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    raise DependencyError(f"the TensorRT backend needs {' or '.join(prefer)}, which is not "
                          f"installed ({'; '.join(errors)}); install it with: {TRT_INSTALL}")


def module_preference(trt_entry: dict[str, Any]) -> tuple[str, ...]:
    """Which TensorRT modules can run a plan with this ``plans.json`` ``tensorrt`` entry."""
    if not trt_entry.get("version_compatible"):
        return ("tensorrt",)
    if trt_entry.get("exclude_lean_runtime"):
        return ("tensorrt_lean",)
    return ("tensorrt_lean", "tensorrt")


def module_name(mod: Any) -> str:
    return str(getattr(mod, "__name__", "tensorrt")).split(".")[0]


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def plan_sha256(path: Path) -> str | None:
    """sha256 of a plan file (None if missing), cached by path, size and mtime: auto selection
    and the backend's own load both check it, and plans can be GBs."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(path)
    return _SHA_CACHE[key]


def runtime_facts(model_dir: Path, plan_dir: Path, entry: dict[str, Any], graphs: Sequence[str],
                  trt: Any = None, device: Any = None) -> dict[str, Any]:
    """The facts :func:`check_plan_compat` compares a ``plans.json`` with (see there); TensorRT
    and GPU facts only when ``trt``/``device`` are given."""
    manifest = read_manifest(model_dir)
    plans = entry.get("plans") or {}
    facts: dict[str, Any] = {
        "model": manifest.get("model"), "precision": manifest.get("precision"),
        "spec_digest": manifest.get("spec_digest"), "graphs": list(graphs),
        "source_files": {g: e.get("files") for g, e in (manifest.get("graphs") or {}).items()},
        "plan_sha256": {g: plan_sha256(plan_dir / plans[g].get("file", f"{g}.plan"))
                        for g in graphs if g in plans},
    }
    if trt is not None:
        facts["tensorrt_module"] = module_name(trt)
        facts["tensorrt_version"] = str(trt.__version__)
    if device is not None:
        facts["gpu_name"] = device.name
        facts["compute_capability"] = device.compute_capability
    return facts


def preflight(model_dir: Path, plan_dir: Path, graphs: Sequence[str],
              device_index: int = 0) -> tuple[list[str], dict[str, Any]]:
    """Everything that stops TensorRT plans from running here, found without creating any
    TensorRT object: (problems, found) where ``found`` has ``entry``, ``trt``, ``device``.

    Problems are ordered as a user fixes them: install, GPU, plans, match."""
    from wsisam.runtime.backends import cuda

    problems: list[str] = []
    found: dict[str, Any] = {"entry": None, "trt": None, "device": None}
    need_install = False
    try:
        cuda.cudart()
        found["device"], why = cuda.probe_device(device_index)
        if found["device"] is None:
            problems.append(why)
    except DependencyError:
        problems.append("cuda-python is not installed")
        need_install = True
    entry = None
    try:
        entry = read_plan_manifest(plan_dir)
        found["entry"] = entry
    except ArtifactError:
        pass
    prefer = module_preference((entry or {}).get("tensorrt") or {}) if entry else (
        "tensorrt_lean", "tensorrt")
    try:
        found["trt"] = import_tensorrt(prefer)
    except DependencyError:
        problems.append(f"TensorRT ({' or '.join(prefer)}) is not installed")
        need_install = True
    if need_install:
        problems.append(f"install with: {TRT_INSTALL}")
    if entry is None:
        problems.append(f"no TensorRT plans in {plan_dir} (build them on the GPU machine with: "
                        f"wsisam-build {model_dir})")
    else:
        diffs = check_plan_compat(entry, runtime_facts(model_dir, plan_dir, entry, graphs,
                                                       found["trt"], found["device"]))
        if diffs:
            problems.append(f"the plans in {plan_dir} do not match: {'; '.join(diffs)} (rebuild "
                            f"with: wsisam-build {model_dir})")
    return problems, found


def default_plan_dir(model_dir: Path) -> Path:
    return Path(model_dir) / PLAN_DIR_NAME


class TensorRTBackend(StagedGpuBackend):
    """Runs one graph's TensorRT plan. ``graph_path`` is the model directory's ONNX file (as
    for every backend); the plan is ``plan_dir/<graph>.plan``. ``cuda_graph``: capture the
    execution once per (slot, shape) and replay it (worth it for the static-shape encoder)."""

    name = "tensorrt"

    def __init__(self, graph_path: Path, spec: GraphSpec, plan_dir: Path | None = None,
                 device: int = 0, slots: int = 2, cuda_graph: bool = False) -> None:
        super().__init__(graph_path, spec, device=device, slots=slots)
        self.model_dir = Path(graph_path).parent
        self.plan_dir = Path(plan_dir) if plan_dir else default_plan_dir(self.model_dir)
        self.cuda_graph = cuda_graph
        self._cuda_graph_note = "off" if not cuda_graph else "on"
        self._trt: Any = None
        self._entry: dict[str, Any] = {}
        self._logger: Any = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._set_shapes: dict[str, Shape] = {}
        self._set_addrs: dict[str, int] = {}
        self._graphs: dict[Any, Any] = {}

    @property
    def plan_path(self) -> Path:
        entry = (self._entry.get("plans") or {}).get(self.spec.name) or {}
        return self.plan_dir / entry.get("file", f"{self.spec.name}.plan")

    def _load_impl(self) -> None:
        problems, found = preflight(self.model_dir, self.plan_dir, [self.spec.name],
                                    self.device_index)
        if problems:
            raise (DependencyError if any(p.startswith("install with") for p in problems)
                   else ArtifactError)(f"backend tensorrt cannot run here: {'; '.join(problems)}")
        self._trt, self._entry = found["trt"], found["entry"]
        super()._load_impl()  # device, streams, then _open_engine, then buffers

    def _open_engine(self) -> None:
        trt = self._trt
        self._logger = collecting_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        if (self._entry.get("tensorrt") or {}).get("version_compatible"):
            # A version-compatible plan carries host code; it is trusted because its sha256 was
            # just checked against plans.json, written by wsisam-build.
            self._runtime.engine_host_code_allowed = True
        self._engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self._engine is None:
            raise ArtifactError(f"TensorRT could not load {self.plan_path}: "
                                f"{self._logger.last_error()}; rebuild it with wsisam-build "
                                f"{self.model_dir}")
        self._check_io()
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise ArtifactError(f"TensorRT could not create an execution context for "
                                f"{self.plan_path}: {self._logger.last_error()}")

    def _check_io(self) -> None:
        trt, eng = self._trt, self._engine
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        want = {**{t.name: ("in", t.dtype) for t in self.spec.inputs},
                **{t.name: ("out", t.dtype) for t in self.spec.outputs}}
        have = {}
        for n in names:
            mode = "in" if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT else "out"
            have[n] = (mode, np.dtype(trt.nptype(eng.get_tensor_dtype(n))).name)
        if have != want:
            raise ArtifactError(f"{self.plan_path} has I/O tensors {sorted(have.items())}, the "
                                f"registry's {self.spec.name} graph {sorted(want.items())}; "
                                f"rebuild it with wsisam-build {self.model_dir}")

    def _execute(self, slot: int, shapes: dict[str, Shape], addrs: dict[str, int],
                 stream: Any) -> None:
        ctx = self._context
        in_shapes = tuple(shapes[t.name] for t in self.spec.inputs)
        changed = False
        for t in self.spec.inputs:  # touch shapes and addresses only when they change
            if self._set_shapes.get(t.name) != shapes[t.name]:
                if not ctx.set_input_shape(t.name, shapes[t.name]):
                    raise ConfigError(f"TensorRT refused input '{t.name}' shape "
                                      f"{list(shapes[t.name])}: {self._logger.last_error()}")
                self._set_shapes[t.name] = shapes[t.name]
                changed = True
        if changed:
            self._check_output_shapes(shapes)
        for name, ptr in addrs.items():
            if self._set_addrs.get(name) != ptr:
                if not ctx.set_tensor_address(name, ptr):
                    raise ConfigError(f"TensorRT refused the address of '{name}': "
                                      f"{self._logger.last_error()}")
                self._set_addrs[name] = ptr
        key = (tuple(sorted(addrs.items())), in_shapes)
        if key in self._graphs:
            self._graphs[key].launch()
            return
        self._enqueue_v3(stream)
        if self.cuda_graph and len(self._graphs) < MAX_CUDA_GRAPHS:
            self._capture(key, stream)  # the call above was the warm-up TensorRT asks for

    def _enqueue_v3(self, stream: Any) -> None:
        from wsisam.runtime.backends.cuda import CudaError

        if not self._context.execute_async_v3(stream.ptr):
            raise CudaError(f"TensorRT execute_async_v3 failed: {self._logger.last_error()}")

    def _capture(self, key: Any, stream: Any) -> None:
        from wsisam.runtime.backends.cuda import CudaError, CudaGraph

        graph = CudaGraph(stream)
        try:
            graph.begin()
            try:
                self._enqueue_v3(stream)
            finally:
                graph.end()  # always leave capture mode, or the stream stays unusable
        except CudaError as exc:
            graph.close()
            self.cuda_graph = False
            self._cuda_graph_note = f"disabled: capture failed ({exc})"
            log.warning("CUDA graph capture of the %s plan failed, running without: %s",
                        self.spec.name, exc)
            return
        self._graphs[key] = graph
        self._cuda_graph_note = f"on ({len(self._graphs)} captured)"

    def _check_output_shapes(self, shapes: dict[str, Shape]) -> None:
        for t in self.spec.outputs:
            got = tuple(self._context.get_tensor_shape(t.name))
            if got != shapes[t.name]:
                raise ArtifactError(f"{self.plan_path}: output '{t.name}' would be {list(got)}, "
                                    f"the registry says {list(shapes[t.name])}; rebuild it")

    def _close_engine(self) -> None:
        for g in self._graphs.values():
            g.close()
        self._graphs = {}
        # Destroy in reverse order of creation (context, engine, runtime).
        self._context = self._engine = self._runtime = None
        self._set_shapes, self._set_addrs = {}, {}

    def describe(self) -> dict[str, object]:
        trt_entry = self._entry.get("tensorrt") or {}
        return {**super().describe(),
                "tensorrt": f"{module_name(self._trt)} {self._trt.__version__}" if self._trt
                else None,
                "plan": str(self.plan_path), "built_with": trt_entry.get("version"),
                "version_compatible": bool(trt_entry.get("version_compatible")),
                "cuda_graph": self._cuda_graph_note}


def collecting_logger(trt: Any) -> Any:
    """A TensorRT ILogger that keeps errors (for one-line messages) and forwards warnings."""

    class Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg.strip())
            elif severity == trt.ILogger.Severity.WARNING and os.environ.get(
                    "WSISAM_TRT_WARNINGS"):
                log.warning("TensorRT: %s", msg)

        def last_error(self) -> str:
            return self.errors[-1].splitlines()[0][:300] if self.errors else "no error logged"

    return Logger()
