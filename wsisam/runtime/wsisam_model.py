"""A WSI-SAM model directory opened for inference: the encoder (embedding + early feature) and the
fused HR/LR decoder, checked against the manifest like :class:`~wsisam.runtime.model.SamRuntime`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsisam.engines.manifest import read_manifest
from wsisam.errors import ArtifactError
from wsisam.registry import WsiSamSpec
from wsisam.runtime.model import ModelRuntime, SamRuntime


class WsiSamRuntime(ModelRuntime):
    """Runs a ``wsisam``-family model directory (:class:`~wsisam.runtime.model.ModelRuntime`:
    the same manifest checks and backends as :class:`~wsisam.runtime.model.SamRuntime`)."""

    spec: WsiSamSpec

    def _check_family(self) -> None:
        if not isinstance(self.spec, WsiSamSpec):
            raise ArtifactError(f"{self.model_dir} holds {self.spec.name} ({self.spec.family} "
                                f"family), not a WSI-SAM model; open it with SamRuntime")
        self.max_prompts = self.spec.decoder_graph().profile["num_prompts"][2]

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


def open_runtime(model_dir: Path, backend: str = "auto", model: str | None = None,
                 **backend_options: object) -> SamRuntime | WsiSamRuntime:
    """The runtime for a model directory's family: :class:`WsiSamRuntime` for ``wsisam``,
    :class:`SamRuntime` otherwise."""
    family = read_manifest(Path(model_dir)).get("family")
    cls = WsiSamRuntime if family == "wsisam" else SamRuntime
    return cls(model_dir, backend, model, **backend_options)
