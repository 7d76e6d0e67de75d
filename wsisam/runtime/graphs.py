"""A model directory opened for inference: one backend per graph, checked against the manifest.

:class:`ModelGraphs` is the one helper for a set of backends: every graph of the directory's
spec (any number, any names), created with the same backend choice and loaded; ``run(graph,
feed)`` is the :class:`~wsisam.systems.contract.GraphSet` that system runtimes call.
:class:`ExclusiveGraphs` serialises the calls of several pipeline stages (ONNX Runtime on the CPU
already spreads one call over every core) and books each wait to the waiting stage.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from wsisam.artifacts import check_manifest, read_manifest
from wsisam.registry import SystemSpec
from wsisam.runtime.backends import Backend, create_backend
from wsisam.runtime.pipeline import current_stage

_G = TypeVar("_G", bound="ModelGraphs")


def default_model_dir(model: str, precision: str = "fp32") -> Path:
    """Where a model is exported when no ``--model-dir`` is given (``$WSISAM_HOME`` or ~/.cache)."""
    home = Path(os.environ.get("WSISAM_HOME", Path.home() / ".cache" / "wsisam"))
    return home / "models" / f"{model}-{precision}"


class ModelGraphs:
    """The graphs of a model directory: the manifest checked (``model``: refuse the directory
    unless it was exported for this model name; None: any), one backend per graph created and
    loaded. ``backend_options`` go to every graph's backend (ORT: ``intra_op_threads``,
    ``allow_spinning``)."""

    def __init__(self, model_dir: Path, backend: str = "auto", model: str | None = None,
                 **backend_options: object) -> None:
        manifest = read_manifest(Path(model_dir))
        self._open(Path(model_dir), check_manifest(Path(model_dir), manifest, model=model),
                   manifest, backend, backend_options)

    @classmethod
    def unchecked(cls: type[_G], model_dir: Path, spec: SystemSpec,
                  backend: str = "ort-cpu") -> _G:
        """The graphs of a folder that has no manifest yet (an export being checked)."""
        graphs = cls.__new__(cls)
        graphs._open(Path(model_dir), spec, {}, backend, {})
        return graphs

    def _open(self, model_dir: Path, spec: SystemSpec, manifest: dict[str, Any], backend: str,
              backend_options: dict[str, Any]) -> None:
        self.model_dir, self.spec, self.manifest = model_dir, spec, manifest
        self.backends: dict[str, Backend] = {}
        self.backend_reason = ""
        try:
            for name, gspec in self.spec.graphs().items():
                b, reason = create_backend(backend, self.model_dir / f"{name}.onnx", gspec,
                                           **backend_options)
                self.backends[name] = b
                self.backend_reason = self.backend_reason or reason
                b.load()
        except BaseException:
            self.close()
            raise

    def run(self, graph: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.backends[graph].run(feed)

    @property
    def on_cpu(self) -> bool:
        return self.describe().get("backend") == "ort-cpu"

    def describe(self) -> dict[str, Any]:
        first = next(iter(self.backends.values()))
        return {**first.describe(), "choice": self.backend_reason,
                "model_dir": str(self.model_dir), "precision": self.manifest.get("precision"),
                "weights": self.manifest.get("weights"),
                "random_init": self.manifest.get("random_init", False)}

    def close(self) -> None:
        for b in self.backends.values():
            b.close()

    def __enter__(self: _G) -> _G:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ExclusiveGraphs:
    """``graphs.run`` one call at a time; ``waits`` maps stage name → seconds spent waiting."""

    def __init__(self, graphs: Any) -> None:
        self.inner = graphs
        self._lock = threading.Lock()
        self.waits: dict[str, float] = {}

    @classmethod
    def wanted(cls, graphs: Any, asked: bool | None, on_cpu: bool) -> "ExclusiveGraphs | None":
        """``graphs`` serialised when asked (``PipelineConfig.exclusive_inference``), or by
        default when inference runs on the CPU; None otherwise."""
        return cls(graphs) if (on_cpu if asked is None else asked) else None

    def run(self, graph: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        with self._lock:
            stage = current_stage()
            self.waits[stage] = self.waits.get(stage, 0.0) + time.perf_counter() - t0
            return self.inner.run(graph, feed)
