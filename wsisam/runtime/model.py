"""A model directory opened for inference: encoder + decoder backends checked against the manifest."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from wsisam.engines.manifest import check_manifest, read_manifest
from wsisam.errors import ArtifactError
from wsisam.registry import ModelSpec
from wsisam.runtime.backends import Backend, create_backend

_R = TypeVar("_R", bound="ModelRuntime")


def default_model_dir(model: str, precision: str = "fp32") -> Path:
    """Where a model is exported when no ``--model-dir`` is given (``$WSISAM_HOME`` or ~/.cache)."""
    home = Path(os.environ.get("WSISAM_HOME", Path.home() / ".cache" / "wsisam"))
    return home / "models" / f"{model}-{precision}"


class ModelRuntime:
    """A model directory opened for inference: the manifest checked (``model``: refuse the
    directory unless it was exported for this model name; None: any), the ``encoder`` and
    ``decoder`` backends created and loaded. ``backend_options``: passed to both graphs'
    backends (ORT: ``intra_op_threads``, ``allow_spinning``). Subclasses add ``encode`` and
    ``decode`` for their family's graphs."""

    def __init__(self, model_dir: Path, backend: str = "auto", model: str | None = None,
                 **backend_options: object) -> None:
        self.model_dir = Path(model_dir)
        self.manifest = read_manifest(self.model_dir)
        self.spec: ModelSpec = check_manifest(self.model_dir, self.manifest, model=model)
        self._check_family()
        graphs = self.spec.graphs()
        self.encoder, self.backend_reason = create_backend(
            backend, self.model_dir / "encoder.onnx", graphs["encoder"], **backend_options)
        self.decoder, _ = create_backend(backend, self.model_dir / "decoder.onnx",
                                         graphs["decoder"], **backend_options)
        self.encoder.load()
        self.decoder.load()

    def _check_family(self) -> None:
        """Raise :class:`ArtifactError` when ``self.spec`` is not this runtime's family."""

    def describe(self) -> dict[str, Any]:
        return {**self.encoder.describe(), "choice": self.backend_reason,
                "model_dir": str(self.model_dir), "precision": self.manifest.get("precision"),
                "weights": self.manifest.get("weights"),
                "random_init": self.manifest.get("random_init", False)}

    def close(self) -> None:
        b: Backend
        for b in (self.encoder, self.decoder):
            b.close()

    def __enter__(self: _R) -> _R:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SamRuntime(ModelRuntime):
    """Runs a SAM-family model directory: ``encode`` tiles, ``decode`` batches of prompts."""

    def _check_family(self) -> None:
        if self.spec.family == "wsisam":
            raise ArtifactError(f"{self.model_dir} holds the WSI-SAM model {self.spec.name}, "
                                f"whose graphs take HR and LR tiles; open it with "
                                f"wsisam.runtime.wsisam_model.open_runtime")

    def encode(self, images_nchw: np.ndarray) -> np.ndarray:
        """(B, 3, n, n) float32 preprocessed → (B, C, h, w) image embeddings."""
        return self.encoder.run({"image": images_nchw})["image_embeddings"]

    def decode(self, embedding: np.ndarray, point_coords_in: np.ndarray,
               point_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One embedding (1,C,h,w) and N prompts ((N,P,2) model-input px, (N,P)) →
        low-res logits (N,K,mh,mw) and predicted IoUs (N,K)."""
        out = self.decoder.run({"image_embeddings": embedding, "point_coords": point_coords_in,
                                "point_labels": point_labels})
        return out["low_res_masks"], out["iou_predictions"]
