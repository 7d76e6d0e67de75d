"""The systems contract: what a system folder provides to the generic drivers. Torch-free.

A system is a spec (:class:`wsisam.registry.SystemSpec` subclass, registered in its ``spec.py``)
plus two classes named by its :class:`wsisam.registry.SystemEntry`:

- an :class:`ExportPlan` (torch side, used only by :mod:`wsisam.export`): load the weights by
  role with strict keys, give the graphs to trace with example inputs, and the torch reference
  that parity is measured against;
- a :class:`SystemRuntime` (numpy side): over a :class:`GraphSet` (backends keyed by graph name)
  it makes a :class:`SlideJob` per slide and mode, and holds the comparison cases that export
  parity (ONNX vs the torch reference) and the precision gate (FP16/INT8 vs FP32) both run.

A :class:`SlideJob` is the system's side of one run: the work units it planned over the slide,
the stages each unit flows through (read, prepare, infer, turn outputs into level-0 geometry), and
two caller-thread steps: :meth:`SlideJob.collect` (seams, de-duplication, emitting features and
label pixels as units finish) and :meth:`SlideJob.finish` (slide-level results, extra outputs,
the report section). The one slide driver (:mod:`wsisam.runtime.segment`) runs every job on the
stage pipeline, on every backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from wsisam.registry import SystemSpec
from wsisam.runtime.graphs import ModelGraphs
from wsisam.runtime.outputs import OutputSink
from wsisam.runtime.pipeline import Stage
from wsisam.runtime.segment import SlideContext

__all__ = ["GraphSet", "SlideContext", "SlideJob", "SystemRuntime", "ExportPlan"]


_R = TypeVar("_R", bound="SystemRuntime")


class GraphSet(Protocol):
    """Named graphs of one model: ONNX backends (:class:`wsisam.runtime.graphs.ModelGraphs`),
    or a torch reference with the same inputs and outputs (export parity)."""

    def run(self, graph: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class SlideJob(ABC):
    """One run of a system over one slide in one mode (see the module docstring)."""

    progress_unit = "tile"

    @abstractmethod
    def units(self) -> Sequence[Any]:
        """The planned work units, in the order they are fed to the stages."""

    @abstractmethod
    def stages(self) -> list[Stage]:
        """The stages a unit flows through; the last one's results reach :meth:`collect`."""

    @abstractmethod
    def collect(self, result: Any, sink: OutputSink) -> int:
        """Caller thread, once per finished unit: emit its outputs into ``sink``; returns how
        many progress items (of :attr:`progress_total`) it completed."""

    @abstractmethod
    def finish(self, sink: OutputSink, seconds: float) -> dict[str, Any]:
        """After the last unit (``seconds`` of segmenting so far): slide-level results and
        extra outputs; returns the report section (merged into the run report)."""

    @property
    def progress_total(self) -> int:
        return len(self.units())

    def label_mpp(self) -> float:
        """µm per label-raster pixel the job wants (the driver coarsens it on huge slides)."""
        raise NotImplementedError


class SystemRuntime(ABC):
    """A model directory's system on the numpy side, over its graphs. :meth:`open` makes one
    that owns the backends of a model directory (close it, or use it as a context manager)."""

    _owned: ModelGraphs | None = None

    def __init__(self, spec: SystemSpec, graphs: GraphSet) -> None:
        self.spec = spec
        self.graphs = graphs

    @classmethod
    def open(cls: type[_R], model_dir: Path, backend: str = "auto", model: str | None = None,
             **backend_options: object) -> _R:
        graphs = ModelGraphs(model_dir, backend, model, **backend_options)
        rt = cls(graphs.spec, graphs)
        rt._owned = graphs
        return rt

    def describe(self) -> dict[str, Any]:
        """The backends, as the report records them."""
        return getattr(self.graphs, "inner", self.graphs).describe()

    def system_details(self) -> dict[str, Any]:
        """The manifest's ``system_details`` (what the export recorded for this system); empty
        for graphs without a manifest."""
        manifest = getattr(getattr(self.graphs, "inner", self.graphs), "manifest", {}) or {}
        return manifest.get("system_details", {})

    def close(self) -> None:
        if self._owned is not None:
            self._owned.close()

    def __enter__(self: _R) -> _R:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def job(self, mode: str, ctx: SlideContext) -> SlideJob:
        """The job that runs ``mode`` (one of ``spec.modes``) on ``ctx``'s slide."""

    # --- comparison cases: shared by export parity and the precision gate -------------------
    #: real tissue tiles drawn for export parity (fewer where the reference is slow)
    parity_tiles: int = 8

    @classmethod
    @abstractmethod
    def compare_random(cls, spec: SystemSpec, ref: GraphSet, test: GraphSet,
                       seed: int) -> dict[str, Any]:
        """Every graph of ``test`` against ``ref`` on seeded random inputs: quantity name →
        :meth:`wsisam.runtime.compare.Stats.summary`."""

    @classmethod
    @abstractmethod
    def compare_tiles(cls, spec: SystemSpec, ref: GraphSet, test: GraphSet,
                      tiles: list[Any], decoder_only: bool = True) -> dict[str, Any]:
        """The chain of ``test`` against ``ref`` on real tissue tiles
        (:class:`wsisam.runtime.tissue.TissueTile`): quantity → summary, plus ``tiles`` and
        whatever counts the system reports. ``end_to_end_logits`` carries the mask IoU the gates
        read; ``decoder_only`` False skips comparing later graphs on the reference's inputs."""


class ExportPlan(ABC):
    """The torch side of a system (implemented in its torch files; used by ``wsisam.export``)."""

    def __init__(self, spec: SystemSpec) -> None:
        self.spec = spec

    @abstractmethod
    def load(self, weights: dict[str, Path], random_init: bool) -> tuple[Any, dict[str, Any]]:
        """The torch model (eval mode) and its provenance: ``weights`` maps role → file (roles
        not given are loaded from the spec's sources, or random where allowed). Provenance must
        hold ``random_init`` (bool): whether any part is random."""

    @abstractmethod
    def graphs(self, model: Any) -> dict[str, tuple[Any, tuple[Any, ...]]]:
        """Graph name → (torch module, example inputs) for every graph of ``spec.graphs()``."""

    def reference(self, model: Any) -> GraphSet | None:
        """What parity compares the ONNX graphs with; None: the traced modules themselves, run
        in torch."""
        return None

    def details(self, provenance: dict[str, Any]) -> dict[str, Any]:
        """System-specific facts for the export report and manifest (``system`` entry)."""
        return {}
