"""Build TensorRT plans from a model directory's ONNX graphs (``wsisam-build``).

Written against the documented TensorRT ≥ 10 Python API; the full builder (``tensorrt`` with
libnvinfer and the ONNX parser) is not installable on this project's machines, so this module
was not run here (see ``docs/design.md``, "TensorRT and GPU"). What the build does, and why:

- **Strongly typed networks**: the precision is the ONNX graph's own (FP32, FP16 with explicit
  casts, INT8 as explicit Q/DQ — ``wsisam-export --precision``); no FP16/INT8 builder flags,
  which TensorRT 10.12 deprecated and 11 removed. On 10.x ``STRONGLY_TYPED`` must be passed to
  ``create_network``; on 11.x it is accepted and ignored (strong typing is always on).
- **One optimisation profile** per graph, (min, opt, max) from the registry
  (:mod:`wsisam.runtime.backends.profiles`): the encoder's batch, the decoder's prompt and point axes.
- **Timing cache** loaded from and saved to ``timing.cache`` beside the plans (shared by the
  graphs of one build, reused by the next build on the same GPU/TensorRT).
- **Version-compatible** plans (``--version-compatible``) run on later TensorRT versions and on
  the lean runtime (``tensorrt_lean``); ``--exclude-lean-runtime`` leaves the lean runtime out of
  the plan (smaller; then only ``tensorrt_lean`` loads it).
- **Manifest** ``plans.json`` (:func:`~wsisam.artifacts.check_plan_compat`): TensorRT
  version and flags, GPU name, compute capability, CUDA driver/runtime versions, sha256 of every
  plan and of the ONNX files it came from, the profile shapes, and each plan's outputs against
  ONNX Runtime (CPU) on seeded random inputs.
- A build goes to a staging folder renamed into place at the end: the plan folder is complete or
  absent. The CUDA device is checked before any TensorRT object is created.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsisam.artifacts import (
    PLAN_DIR_NAME,
    check_manifest,
    read_manifest,
    sha256_file,
    version_tuple,
    write_plan_manifest,
)
from wsisam.runtime.backends.profiles import input_profiles
from wsisam.errors import ArtifactError, ConfigError, DependencyError
from wsisam.registry import GraphSpec, SystemSpec
from wsisam.runtime.writers.atomic import staged_dir

log = logging.getLogger(__name__)

TIMING_CACHE_NAME = "timing.cache"
BUILDER_INSTALL = ("pip install tensorrt-cu12 cuda-python (or tensorrt-cu13; the tensorrt wheel "
                   "downloads the builder libraries from NVIDIA's package index)")


@dataclass(frozen=True)
class BuildConfig:
    """How plans are built. ``workspace_bytes`` None: TensorRT's default (the device's memory).
    ``timing_cache`` None: ``<plan dir>/timing.cache``. ``verify``: compare each plan with ONNX
    Runtime on the CPU on seeded random inputs (recorded in ``plans.json``)."""

    version_compatible: bool = False
    exclude_lean_runtime: bool = False
    workspace_bytes: int | None = None
    timing_cache: Path | None = None
    device: int = 0
    optimization_level: int | None = None
    verify: bool = True

    def __post_init__(self) -> None:
        if self.exclude_lean_runtime and not self.version_compatible:
            raise ConfigError("--exclude-lean-runtime applies to version-compatible plans only; "
                              "add --version-compatible")
        if self.workspace_bytes is not None and self.workspace_bytes <= 0:
            raise ConfigError(f"workspace must be positive, got {self.workspace_bytes} bytes")
        if self.optimization_level is not None and not 0 <= self.optimization_level <= 5:
            raise ConfigError(f"builder optimisation level must be 0..5, got "
                              f"{self.optimization_level}")


def profile_record(graph: GraphSpec) -> dict[str, list[list[int]]]:
    """The profile of ``graph`` as recorded in ``plans.json``: input → [min, opt, max]."""
    return {name: r.as_lists() for name, r in input_profiles(graph).items()}


def import_builder() -> Any:
    """The full ``tensorrt`` module with its builder (the lean runtime has none), TRT ≥ 10, and
    cuda-python; one :class:`DependencyError` line naming everything that is missing."""
    from wsisam.runtime.backends import cuda

    missing = []
    try:
        cuda.cudart()
    except DependencyError:
        missing.append("cuda-python is not installed")
    trt = None
    try:
        import tensorrt as trt
    except ImportError as exc:
        missing.append(f"the full TensorRT is not installed ({exc})")
    if trt is not None and not (hasattr(trt, "Builder") and hasattr(trt, "OnnxParser")):
        missing.append(f"this tensorrt ({trt.__version__}) has no builder/ONNX parser")
    elif trt is not None and version_tuple(trt.__version__) < (10,):
        missing.append(f"TensorRT {trt.__version__} is too old (strongly typed networks and "
                       f"execute_async_v3 need TensorRT ≥ 10)")
    if missing:
        raise DependencyError(f"building TensorRT plans needs cuda-python and TensorRT ≥ 10 with "
                              f"its builder: {'; '.join(missing)}; install on the GPU machine "
                              f"with: {BUILDER_INSTALL}")
    return trt


def network_flags(trt: Any) -> int:
    """``create_network`` flags: STRONGLY_TYPED where the enum has it (10.x needs it; 11.x
    accepts and ignores it)."""
    flag = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def build_plans(model_dir: Path, out_dir: Path | None = None,
                config: BuildConfig = BuildConfig()) -> dict[str, Any]:
    """Build one plan per graph of ``model_dir`` into ``out_dir`` (default
    ``<model_dir>/tensorrt``); returns the written ``plans.json`` content."""
    from wsisam.runtime.backends import cuda
    from wsisam.runtime.backends.tensorrt import collecting_logger

    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    spec = check_manifest(model_dir, manifest)
    out_dir = Path(out_dir) if out_dir else model_dir / PLAN_DIR_NAME
    trt = import_builder()  # importing creates no TensorRT object
    device = cuda.require_device(config.device)  # checked before any TensorRT object exists
    t0 = time.perf_counter()
    with staged_dir(out_dir) as stage:
        logger = collecting_logger(trt)
        builder = trt.Builder(logger)
        cache_path = config.timing_cache or out_dir / TIMING_CACHE_NAME
        cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
        plans: dict[str, Any] = {}
        cache = None
        for name, graph in spec.graphs().items():
            t = time.perf_counter()
            plan, cache, flags = _build_one(trt, builder, logger, model_dir / f"{name}.onnx",
                                            graph, config, cache, cache_bytes)
            (stage / f"{name}.plan").write_bytes(plan)
            plans[name] = {"file": f"{name}.plan", "sha256": sha256_file(stage / f"{name}.plan"),
                           "bytes": len(plan), "profile": profile_record(graph),
                           "seconds": round(time.perf_counter() - t, 2)}
        (stage / TIMING_CACHE_NAME).write_bytes(bytes(cache.serialize()))
        if config.timing_cache:
            config.timing_cache.write_bytes(bytes(cache.serialize()))
        entry = _manifest(spec, manifest, model_dir, trt, device, config, plans, flags)
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        write_plan_manifest(stage, entry)
        if config.verify:
            entry["parity_vs_ort_cpu"] = _verify(model_dir, stage, spec, config.device)
            write_plan_manifest(stage, entry)
    return entry


def _build_one(trt: Any, builder: Any, logger: Any, onnx_path: Path, graph: GraphSpec,
               config: BuildConfig, cache: Any, cache_bytes: bytes) -> tuple[bytes, Any, dict]:
    """Parse ``onnx_path`` into a strongly typed network and build its plan."""
    flags = network_flags(trt)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads external data beside the file
        raise ArtifactError(f"TensorRT's ONNX parser rejected {onnx_path}: "
                            f"{_parser_errors(parser)}")
    cfg = builder.create_builder_config()
    if config.workspace_bytes:
        cfg.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_bytes)
    if config.version_compatible:
        cfg.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if config.exclude_lean_runtime:
        cfg.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)
    if config.optimization_level is not None:
        cfg.builder_optimization_level = config.optimization_level
    if cache is None:
        cache = cfg.create_timing_cache(cache_bytes)
    if not cfg.set_timing_cache(cache, False):
        # a cache from another GPU/TensorRT version: start afresh rather than mix timings
        log.warning("timing cache does not match this GPU/TensorRT; starting a new one")
        cache = cfg.create_timing_cache(b"")
        cfg.set_timing_cache(cache, False)
    profile = builder.create_optimization_profile()
    for name, r in input_profiles(graph).items():
        profile.set_shape(name, r.min, r.opt, r.max)
    if cfg.add_optimization_profile(profile) < 0:
        raise ArtifactError(f"TensorRT refused the optimisation profile of {graph.name}: "
                            f"{logger.last_error()}")
    plan = builder.build_serialized_network(network, cfg)
    if plan is None:
        raise ArtifactError(f"TensorRT could not build the {graph.name} plan: "
                            f"{logger.last_error()}")
    record = {"network_flags": flags, "tf32": bool(cfg.get_flag(trt.BuilderFlag.TF32)),
              "optimization_level": int(cfg.builder_optimization_level)}
    return bytes(plan), cache, record


def _parser_errors(parser: Any) -> str:
    """The first ONNX-parser error in one line, with the node it names and the count."""
    n = parser.num_errors
    if not n:
        return "no error reported"
    e = parser.get_error(0)
    node = getattr(e, "node_name", lambda: "")() or f"node {e.node()}"
    op = getattr(e, "node_operator", lambda: "")()
    where = f" at {node}" + (f" ({op})" if op else "")
    more = f" (+{n - 1} more)" if n > 1 else ""
    return f"{' '.join(str(e.desc()).split())[:300]}{where}{more}"


def _manifest(spec: SystemSpec, manifest: dict[str, Any], model_dir: Path, trt: Any, device: Any,
              config: BuildConfig, plans: dict[str, Any], flags: dict) -> dict[str, Any]:
    return {
        "model": spec.name, "precision": manifest.get("precision"),
        "spec_digest": manifest.get("spec_digest"),
        "source": {"model_dir": str(model_dir.resolve()),
                   "files": {g: e.get("files") for g, e in manifest.get("graphs", {}).items()}},
        "tensorrt": {"version": str(trt.__version__), "module": "tensorrt",
                     "version_compatible": config.version_compatible,
                     "exclude_lean_runtime": config.exclude_lean_runtime,
                     "strongly_typed": True, **flags,
                     "workspace_bytes": config.workspace_bytes},
        "gpu": {"name": device.name, "compute_capability": device.compute_capability,
                **{k: v for k, v in device.as_dict().items() if k.startswith("cuda_")}},
        "timing_cache": TIMING_CACHE_NAME,
        "plans": plans,
        "random_init": manifest.get("random_init", False),
    }


def random_feed(graph: GraphSpec, input_px: int, rng: np.random.Generator,
                shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Seeded inputs for a parity check: prompt coordinates inside the model-input frame,
    labels 0/1 (background/foreground points), anything else standard normal."""
    feed = {}
    for t in graph.inputs:
        shape = shapes[t.name]
        if "coords" in t.name:
            feed[t.name] = rng.uniform(0, input_px, shape).astype(t.dtype)
        elif "labels" in t.name:
            feed[t.name] = rng.integers(0, 2, shape).astype(t.dtype)
        else:
            feed[t.name] = rng.standard_normal(shape).astype(t.dtype)
    return feed


def _verify(model_dir: Path, plan_dir: Path, spec: SystemSpec, device: int) -> dict[str, Any]:
    """Each plan vs ONNX Runtime (CPU) on the same ONNX graph, at the profile's opt shapes."""
    from wsisam.runtime.backends.ort import OrtBackend
    from wsisam.runtime.backends.tensorrt import TensorRTBackend

    rng = np.random.default_rng(spec.seed)
    out: dict[str, Any] = {}
    for name, graph in spec.graphs().items():
        shapes = {n: r.opt for n, r in input_profiles(graph).items()}
        feed = random_feed(graph, spec.input_px, rng, shapes)
        try:
            with TensorRTBackend(model_dir / f"{name}.onnx", graph, plan_dir=plan_dir,
                                 device=device) as trt_b:
                got = trt_b.run(feed)
        except (DependencyError, ArtifactError) as exc:  # e.g. a lean-only plan, no lean here
            out[name] = {"verified": False, "reason": str(exc)}
            continue
        with OrtBackend(model_dir / f"{name}.onnx", graph, "ort-cpu") as ort_b:
            ref = ort_b.run(feed)
        out[name] = {"verified": True, "inputs": {n: list(s) for n, s in shapes.items()},
                     "max_abs": {k: float(np.max(np.abs(got[k] - ref[k]))) for k in ref}}
    return out
