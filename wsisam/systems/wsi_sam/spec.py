"""WSI-SAM model specs: a SAM-family encoder run on HR and LR tiles and one fused decoder graph
(HR head + LR head, fused as the released ``inference.py`` does), and their registration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from wsisam.errors import ConfigError
from wsisam.registry import (SAM_MEAN, SAM_STD, GraphSpec, OptionSpec, Preprocess, SystemEntry,
                             TensorSpec, Tolerances, WeightsSource, register, register_system)
from wsisam.systems.sam.spec import (SAM_1024, SAM_OPTIONS, SAM_VITS, TINY_DECODER, TINYVIT_5M,
                                     SamSpec, TinyViTArch, ViTArch)

SYSTEM = register_system(SystemEntry(
    "wsi_sam", runtime="wsisam.systems.wsi_sam.runtime:WsiSamRuntime",
    export="wsisam.systems.wsi_sam.export:WsiSamExportPlan"))

LR_LAYOUTS = ("shared", "concentric")
HEAD_ROLES = ("head_high", "head_low")  # net_high.pth (HR token), net_low.pth (LR token)


@dataclass(frozen=True)
class WsiSamArch:
    """WSI-SAM's two HQ-SAM-style decoder heads (HR and LR) on a frozen SAM-family model.

    ``vit_dim``: channels of the encoder's early feature (``interm_embeddings``), which sizes
    ``compress_vit_feat.0`` of both heads: TinyViT ``embed_dims[2]`` (output of ``layers[1]``),
    ViT ``embed_dim`` (output of the first global-attention block); checked against the encoder.
    ``lr_scale``: LR µm/px ÷ HR µm/px; the released pairs are HR 10×, LR 5× (2). An integer, so
    that a shared LR tile holds whole HR tiles.
    ``lr_layout``: the runtime's default LR geometry (``"shared"`` or ``"concentric"``).
    """

    vit_dim: int
    lr_scale: int = 2
    lr_layout: str = "shared"


def early_feature_dim(encoder: Union[TinyViTArch, ViTArch]) -> int:
    """Channels of the encoder's early feature (see :class:`WsiSamArch`)."""
    return encoder.embed_dims[2] if isinstance(encoder, TinyViTArch) else encoder.embed_dim


@dataclass(frozen=True)
class WsiSamSpec(SamSpec):
    """WSI-SAM: ``mpp`` is the HR working resolution; the LR tile is ``input_px`` px at
    ``heads.lr_scale`` × that, so it sees ``lr_scale``× the field of view."""

    heads: WsiSamArch | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.heads is None:
            raise ConfigError(f"{self.name}: a WSI-SAM spec needs its heads (WsiSamArch)")
        if self.heads.vit_dim != early_feature_dim(self.encoder):
            raise ConfigError(f"{self.name}: heads.vit_dim {self.heads.vit_dim} != the encoder's "
                              f"early-feature channels {early_feature_dim(self.encoder)}")
        if self.heads.lr_layout not in LR_LAYOUTS or self.heads.lr_scale < 2:
            raise ConfigError(f"{self.name}: lr_layout must be one of {LR_LAYOUTS} and lr_scale an "
                              f"integer ≥ 2")

    @property
    def lr_mpp(self) -> float:
        """µm per LR model-input pixel."""
        return self.mpp * self.heads.lr_scale

    def encoder_graph(self) -> GraphSpec:
        """``image`` → ``image_embeddings`` and ``interm_embeddings`` (batch, vit_dim, h, w):
        the early feature, NCHW (the released code's (B, h, w, C) permuted, so the decoder's
        ``compress_vit_feat`` transposed conv reads it directly)."""
        n, h, w = self.input_px, *self.embed_hw
        return GraphSpec(
            name="encoder",
            inputs=(TensorSpec("image", "float32", ("batch", 3, n, n)),),
            outputs=(TensorSpec("image_embeddings", "float32", ("batch", self.embed_dim, h, w)),
                     TensorSpec("interm_embeddings", "float32",
                                ("batch", self.heads.vit_dim, h, w))),
            profile={"batch": (1, 4, 16)},
        )

    def decoder_graph(self) -> GraphSpec:
        """HR head + LR head fused → mask logits in the HR model-input frame.

        Prompts as in the SAM decoder (boxes = two points labelled 2, 3; points 1/0; padding -1),
        one label set for both resolutions; ``hr_point_coords`` in HR model-input px and
        ``lr_point_coords`` the same points in LR model-input px (mapped on the host). The LR
        early feature is not an input: in the released fusion it cannot affect the output.
        Outputs: ``masks`` (num_prompts, 1, n, n) logits (> 0 is the mask) and
        ``iou_predictions`` (num_prompts, 1), the frozen SAM IoU head's score of SAM's own HR mask.
        """
        (h, w), c, n = self.embed_hw, self.embed_dim, self.input_px
        prompts = ("num_prompts", "num_points")
        return GraphSpec(
            name="decoder",
            inputs=(
                TensorSpec("hr_image_embeddings", "float32", (1, c, h, w)),
                TensorSpec("hr_interm_embeddings", "float32", (1, self.heads.vit_dim, h, w)),
                TensorSpec("lr_image_embeddings", "float32", (1, c, h, w)),
                TensorSpec("hr_point_coords", "float32", (*prompts, 2)),
                TensorSpec("lr_point_coords", "float32", (*prompts, 2)),
                TensorSpec("point_labels", "float32", prompts),
            ),
            outputs=(
                TensorSpec("masks", "float32", ("num_prompts", 1, n, n)),
                TensorSpec("iou_predictions", "float32", ("num_prompts", 1)),
            ),
            # full-size logits are n² floats per prompt (4 MiB at 1024): a smaller max batch
            profile={"num_prompts": (1, 16, 64), "num_points": (1, 2, 64)},
        )


# The decoder graph alone must match the torch reference of the released fusion to 1e-4; the
# whole chain (ORT encoder → ORT decoder) to 1e-3.
WSISAM_TOLERANCES = Tolerances(max_abs={"encoder": 1e-3, "interm_embeddings": 1e-3,
                                        "decoder_logits": 1e-4, "end_to_end_logits": 1e-3})
WSISAM_OPTIONS = (
    OptionSpec("lr_layout", None, "LR context tiles shared by the HR tiles they cover, or "
               "concentric with each HR tile as in the released code (default: the model's)",
               choices=LR_LAYOUTS, modes=("prompted",)),
    *(o for o in SAM_OPTIONS if o.name == "context"),
)
USER_HEADS = {"head_high": WeightsSource(kind="user", filename="net_high.pth"),
              "head_low": WeightsSource(kind="user", filename="net_low.pth")}
RANDOM_HEADS = {r: WeightsSource(kind="random") for r in HEAD_ROLES}


def wsisam_spec(**kw: object) -> WsiSamSpec:
    """A :class:`WsiSamSpec` with the system's defaults (prompted mode only: no trained heads
    are available to make automatic mode meaningful)."""
    defaults = dict(system="wsi_sam", tolerances=WSISAM_TOLERANCES, options=WSISAM_OPTIONS,
                    modes=("prompted",), multimask=False)
    return WsiSamSpec(**{**defaults, **kw})  # type: ignore[arg-type]


# The released model is MobileSAM (TinyViT-5M at 1024 px) + two heads (net_high.pth,
# net_low.pth), HR 10× (~1.0 µm/px) with LR 5× context.
_MOBILE = TinyViTArch(img_size=1024, patch_embed="conv3x3s2", with_head=True, **TINYVIT_5M)
register(wsisam_spec(
    name="wsisam",
    description="WSI-SAM (MobileSAM TinyViT-5M at 1024 px, HR ~1.0 µm/px + LR 2× context); "
                "weights: mobile_sam.pt + net_high.pth net_low.pth",
    encoder=_MOBILE, preprocess=SAM_1024, mpp=1.0,
    weights={"sam": WeightsSource(kind="user", filename="mobile_sam.pt"), **USER_HEADS},
    heads=WsiSamArch(vit_dim=early_feature_dim(_MOBILE)),
))
for _size, _dim, _depth, _heads, _glob in SAM_VITS:
    _vit = ViTArch(img_size=1024, embed_dim=_dim, depth=_depth, num_heads=_heads,
                   global_attn_indexes=_glob)
    register(wsisam_spec(
        name=f"wsisam-{_size}",
        description=f"WSI-SAM heads on SAM {_size[4:].upper()} (1024 px; the release ships heads "
                    f"for MobileSAM only); weights: sam_vit_* + --heads",
        encoder=_vit, preprocess=SAM_1024, mpp=1.0,
        weights={"sam": WeightsSource(kind="user",
                                      filename=f"sam_{_size.replace('-', '_')}.pth"),
                 **USER_HEADS},
        heads=WsiSamArch(vit_dim=early_feature_dim(_vit)),
    ))

# Toy WSI-SAM configs: the same code paths (MobileSAM's stride-2 patch embedding, window padding,
# interm at layers[1] / the first global block) at sizes that run in milliseconds. The HR field
# is 1024 µm as for the real model, so tile layouts on a slide are the same.
_TEST_TINYVIT = TinyViTArch(img_size=128, embed_dims=(16, 24, 40, 48), depths=(1, 1, 2, 1),
                            num_heads=(1, 2, 2, 2), window_sizes=(4, 3, 5, 3),
                            patch_embed="conv3x3s2", out_chans=32, with_head=True,
                            num_classes=10)
_TEST_VIT = ViTArch(img_size=64, embed_dim=48, depth=3, num_heads=2, global_attn_indexes=(1,),
                    window_size=3, out_chans=32)
for _name, _enc, _px, _mpp, _seed in (("test-wsisam", _TEST_TINYVIT, 128, 8.0, 2403),
                                      ("test-wsisam-vit", _TEST_VIT, 64, 16.0, 9257)):
    register(wsisam_spec(
        name=_name,
        description=f"test config: WSI-SAM on a {type(_enc).__name__[:-4]} at {_px} px, random "
                    f"seeded weights",
        encoder=_enc, decoder=TINY_DECODER,
        preprocess=Preprocess(input_px=_px, pixel_mean=SAM_MEAN, pixel_std=SAM_STD),
        mpp=_mpp, weights={"sam": WeightsSource(kind="random"), **RANDOM_HEADS}, seed=_seed,
        heads=WsiSamArch(vit_dim=early_feature_dim(_enc)),
    ))
