"""A WSI-SAM model directory opened for inference: the encoder (embedding + early feature) and the
fused HR/LR decoder, checked against the manifest like :class:`~wsisam.runtime.model.SamRuntime`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from wsisam.engines.manifest import check_manifest, read_manifest
from wsisam.errors import ArtifactError
from wsisam.registry import WsiSamSpec
from wsisam.runtime.backends import create_backend
from wsisam.runtime.model import SamRuntime


class WsiSamRuntime:
    """Runs a ``wsisam``-family model directory.

    ``model``: refuse the directory unless it was exported for this model name (None: any
    WSI-SAM model). ``backend_options``: passed to both graphs' backends, as for
    :class:`~wsisam.runtime.model.SamRuntime`.
    """

    def __init__(self, model_dir: Path, backend: str = "auto", model: str | None = None,
                 **backend_options: object) -> None:
        self.model_dir = Path(model_dir)
        self.manifest = read_manifest(self.model_dir)
        spec = check_manifest(self.model_dir, self.manifest, model=model)
        if not isinstance(spec, WsiSamSpec):
            raise ArtifactError(f"{self.model_dir} holds {spec.name} ({spec.family} family), not "
                                f"a WSI-SAM model; open it with SamRuntime")
        self.spec: WsiSamSpec = spec
        graphs = spec.graphs()
        self.encoder, self.backend_reason = create_backend(
            backend, self.model_dir / "encoder.onnx", graphs["encoder"], **backend_options)
        self.decoder, _ = create_backend(backend, self.model_dir / "decoder.onnx",
                                         graphs["decoder"], **backend_options)
        self.max_prompts = graphs["decoder"].profile["num_prompts"][2]
        self.encoder.load()
        self.decoder.load()

    def encode(self, images_nchw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, 3, n, n) float32 preprocessed → embeddings (B, C, h, w) and early features
        (B, vit_dim, h, w)."""
        out = self.encoder.run({"image": images_nchw})
        return out["image_embeddings"], out["interm_embeddings"]

    def decode(self, hr_embedding: np.ndarray, hr_interm: np.ndarray, lr_embedding: np.ndarray,
               hr_coords: np.ndarray, lr_coords: np.ndarray,
               labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One HR/LR pair ((1,C,h,w), (1,vit_dim,h,w), (1,C,h,w)) and N prompts (coords (N,P,2)
        in HR px and LR px, labels (N,P)) → logits (N,1,n,n) in the HR frame and IoU (N,1).

        N may exceed the graph's profile: prompts are decoded in chunks of ``max_prompts``.
        """
        masks, ious = [], []
        for s in range(0, len(labels), self.max_prompts):
            e = s + self.max_prompts
            out = self.decoder.run({"hr_image_embeddings": hr_embedding,
                                    "hr_interm_embeddings": hr_interm,
                                    "lr_image_embeddings": lr_embedding,
                                    "hr_point_coords": hr_coords[s:e],
                                    "lr_point_coords": lr_coords[s:e],
                                    "point_labels": labels[s:e]})
            masks.append(out["masks"])
            ious.append(out["iou_predictions"])
        return np.concatenate(masks), np.concatenate(ious)

    def describe(self) -> dict[str, Any]:
        return {**self.encoder.describe(), "choice": self.backend_reason,
                "model_dir": str(self.model_dir), "precision": self.manifest.get("precision"),
                "weights": self.manifest.get("weights"),
                "random_init": self.manifest.get("random_init", False)}

    def close(self) -> None:
        for b in (self.encoder, self.decoder):
            b.close()

    def __enter__(self) -> "WsiSamRuntime":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_runtime(model_dir: Path, backend: str = "auto", model: str | None = None,
                 **backend_options: object) -> SamRuntime | WsiSamRuntime:
    """The runtime for a model directory's family: :class:`WsiSamRuntime` for ``wsisam``,
    :class:`SamRuntime` otherwise."""
    family = read_manifest(Path(model_dir)).get("family")
    cls = WsiSamRuntime if family == "wsisam" else SamRuntime
    return cls(model_dir, backend, model, **backend_options)
