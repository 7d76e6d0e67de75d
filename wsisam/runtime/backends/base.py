"""The one backend interface every inference backend implements.

A backend runs one graph (``encoder`` or ``decoder``): ``load`` prepares it, ``run`` maps named
numpy inputs to named numpy outputs, ``close`` releases it. Inputs are checked against the
:class:`~wsisam.registry.GraphSpec` before they reach the engine, so a wrong feed gives one line
naming the tensor, what was expected and what was given.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from wsisam.errors import ConfigError
from wsisam.registry import GraphSpec


class Backend(ABC):
    """Runs one exported graph. Use as a context manager or call :meth:`close`."""

    name: str = "abstract"

    def __init__(self, graph_path: Path, spec: GraphSpec) -> None:
        self.graph_path = Path(graph_path)
        self.spec = spec
        self._loaded = False

    def load(self) -> "Backend":
        if not self._loaded:
            self._load_impl()
            self._loaded = True
        return self

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Named inputs → named outputs (all numpy, host memory)."""
        self.load()
        self._check_feed(feed)
        return self._run_impl(feed)

    def close(self) -> None:
        if self._loaded:
            self._close_impl()
            self._loaded = False

    def describe(self) -> dict[str, object]:
        """What the report records about this backend (name, providers, versions)."""
        return {"backend": self.name}

    def __enter__(self) -> "Backend":
        return self.load()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_feed(self, feed: dict[str, np.ndarray]) -> None:
        names = set(feed)
        expected = set(self.spec.input_names)
        if names != expected:
            raise ConfigError(
                f"{self.spec.name} graph: inputs {sorted(names)} given, {sorted(expected)} expected"
            )
        for t in self.spec.inputs:
            arr = feed[t.name]
            if arr.dtype != np.dtype(t.dtype) or arr.ndim != len(t.shape) or any(
                isinstance(d, int) and d != s for d, s in zip(t.shape, arr.shape)
            ):
                raise ConfigError(
                    f"{self.spec.name} graph: input '{t.name}' is {arr.dtype}{list(arr.shape)}, "
                    f"expected {t.dtype}{list(t.shape)}"
                )

    @abstractmethod
    def _load_impl(self) -> None: ...

    @abstractmethod
    def _run_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def _close_impl(self) -> None: ...
