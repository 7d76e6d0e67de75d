"""Few-shot SAM specs: the fewshot model family over a registry SAM encoder. Torch-free."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from wsisam.registry import (GraphSpec, SystemEntry, TensorSpec, Tolerances, WeightsSource,
                             get_model, register, register_system)
from wsisam.systems.sam.spec import SamSpec

SYSTEM = register_system(SystemEntry(
    "few_shot", runtime="wsisam.systems.few_shot.runtime:FewShotRuntime",
    export="wsisam.systems.few_shot.export:FewShotExportPlan",
    train="wsisam.systems.few_shot.train:train_command"))

#: support tokens the decoder takes in place of prompts: [foreground, background]
NUM_SUPPORT_TOKENS = 2


@dataclass(frozen=True)
class FewShotSpec(SamSpec):
    """A SAM model whose decoder holds support tokens (T, C) as constants instead of taking
    point prompts (the bank, trained by ``wsisam-train fewshot``, is baked into the graph and
    also kept as ``support_bank.npz`` in the model directory)."""

    base: str = "litemedsam"
    # the decoder also takes each tile's stain map (support.stain_prompt: hematoxylin density,
    # or brightness on fluorescence) through SAM's dense mask-prompt path
    stain_prompt: bool = False

    def decoder_graph(self) -> GraphSpec:
        """``image_embeddings`` (B,C,h,w) [+ ``dense_prompt`` (B,1,mh,mw) when
        ``stain_prompt``] → foreground logits (B,1,mh,mw) in the model-input frame (4× the
        embedding grid); the support tokens are graph constants."""
        (h, w), (mh, mw) = self.embed_hw, self.mask_hw
        inputs = (TensorSpec("image_embeddings", "float32", ("batch", self.embed_dim, h, w)),)
        if self.stain_prompt:
            inputs += (TensorSpec("dense_prompt", "float32", ("batch", 1, mh, mw)),)
        return GraphSpec(
            name="decoder",
            inputs=inputs,
            outputs=(TensorSpec("fg_logits", "float32", ("batch", 1, mh, mw)),),
            profile={"batch": (1, 4, 16)})


def fewshot_spec(base: str, name: str, mpp: float | None = None,
                 stain_prompt: bool = False) -> FewShotSpec:
    """The few-shot model ``name`` over the registered SAM model ``base``, encoding tiles at
    ``mpp`` µm/px (default: the base model's), with or without the stain dense prompt."""
    b = get_model(base)
    fields = {f.name: getattr(b, f.name) for f in dataclasses.fields(b)}
    trained = WeightsSource(kind="random" if b.weights[b.default_role].kind == "random"
                            else "user", filename="decoder.pt")
    fields.update(name=name, system="few_shot", base=base, modes=("slide",), options=(),
                  stain_prompt=stain_prompt,
                  mpp=b.mpp if mpp is None else mpp,
                  weights={**b.weights, "fewshot": trained},
                  tolerances=Tolerances(max_abs={"encoder": 1e-3, "decoder_logits": 1e-4,
                                                 "end_to_end_logits": 1e-3}),
                  description=f"few-shot SAM over {base}: support tokens, fine-tuned decoder")
    return FewShotSpec(**fields)


def register_family() -> None:
    """Register ``fewshot`` (LiteMedSAM at 0.25 µm/px) and ``test-fewshot`` (tiny seeded
    TinyViT at its base µm/px)."""
    # 0.25 µm/px, not LiteMedSAM's 0.5: nuclei are ~6-10 µm, and at 0.25 the 64×64 embedding
    # cell is 1 µm; held-out support Dice 0.780 vs 0.759 (docs/benchmarks.md "Few-shot SAM")
    # stain prompt on: mean held-out Dice of the five support-only folds 0.747 against 0.718
    # without it (docs/benchmarks.md "Few-shot SAM", fifth round)
    for base, name, mpp in (("litemedsam", "fewshot", 0.25), ("test-tinyvit", "test-fewshot",
                                                              None)):
        register(fewshot_spec(base, name, mpp, stain_prompt=True))
register_family()
