"""Few-shot SAM specs: the fewshot model family over a registry SAM encoder. Torch-free."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from wsisam.registry import (GraphSpec, SystemEntry, TensorSpec, get_model, register,
                             register_system)
from wsisam.systems.sam.spec import SamSpec

SYSTEM = register_system(SystemEntry(
    "few_shot", runtime="wsisam.systems.sam.runtime:SamRuntime",
    export="wsisam.systems.sam.export:SamExportPlan",
    train="wsisam.systems.few_shot.train:train_command"))

#: support tokens the decoder takes in place of prompts: [foreground, background]
NUM_SUPPORT_TOKENS = 2


@dataclass(frozen=True)
class FewShotSpec(SamSpec):
    """A SAM model whose decoder takes support tokens (T, C) instead of point prompts."""

    base: str = "litemedsam"

    def decoder_graph(self) -> GraphSpec:
        """``image_embeddings`` (B,C,h,w) + ``support_tokens`` (T,C) → foreground logits
        (B,1,mh,mw) in the model-input frame (4× the embedding grid)."""
        (h, w), (mh, mw) = self.embed_hw, self.mask_hw
        return GraphSpec(
            name="decoder",
            inputs=(TensorSpec("image_embeddings", "float32", ("batch", self.embed_dim, h, w)),
                    TensorSpec("support_tokens", "float32", (NUM_SUPPORT_TOKENS,
                                                             self.embed_dim))),
            outputs=(TensorSpec("fg_logits", "float32", ("batch", 1, mh, mw)),),
            profile={"batch": (1, 4, 16)})


def fewshot_spec(base: str, name: str) -> FewShotSpec:
    """The few-shot model ``name`` over the registered SAM model ``base``."""
    b = get_model(base)
    fields = {f.name: getattr(b, f.name) for f in dataclasses.fields(b)}
    fields.update(name=name, system="few_shot", base=base, modes=("slide",), options=(),
                  description=f"few-shot SAM over {base}: support tokens, fine-tuned decoder")
    return FewShotSpec(**fields)


def register_family() -> None:
    """Register ``fewshot`` (LiteMedSAM) and ``test-fewshot`` (tiny seeded TinyViT)."""
    for base, name in (("litemedsam", "fewshot"), ("test-tinyvit", "test-fewshot")):
        register(fewshot_spec(base, name))
register_family()
