"""EP-SAM model specs: a ResNet-50+ADL patch classifier (4-channel input: RGB in [0, 1] and the
high-frequency channel computed in the graph) whose CAM seeds 50 point prompts for SAM ViT-B with a
fine-tuned mask decoder (seed-systems.md §2). Torch-free."""

from __future__ import annotations

from dataclasses import dataclass

from wsisam.errors import ConfigError
from wsisam.registry import (SAM_MEAN, SAM_STD, GraphSpec, OptionSpec, Preprocess, SystemEntry,
                             TensorSpec, Tolerances, WeightsSource, register, register_system)
from wsisam.systems.sam.spec import SAM_1024, SAM_VITS, TINY_DECODER, SamSpec, ViTArch

SYSTEM = register_system(SystemEntry(
    "ep_sam", runtime="wsisam.systems.ep_sam.runtime:EpSamRuntime",
    export="wsisam.systems.ep_sam.export:EpSamExportPlan"))

ROLES = ("sam", "classifier", "decoder")
VARIANTS = ("camelyon16", "camelyon17")


@dataclass(frozen=True)
class ResNetAdlArch:
    """``ResNetAdl`` (``code/patch_classifier/resnet_adl.py``): Bottleneck blocks ``layers``,
    stem width ``width`` (64 for ResNet-50), 4 input channels, layer3 stride 2, layer4 stride 1
    (output stride 16), ``fc`` Linear(8·width → 1). ADL (no parameters) after layer3 block 0 and
    after layer4 blocks 0 and 2, which leaves index gaps in the state-dict keys."""

    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    width: int = 64
    in_chans: int = 4

    @property
    def feat_dim(self) -> int:
        return self.width * 8 * 4  # bottleneck expansion 4 on layer4's planes (8·width)


@dataclass(frozen=True)
class EpSamSpec(SamSpec):
    """EP-SAM: ``patch_px`` level-0 patches (512 released), the classifier at that size, SAM at
    ``input_px`` (2× the patch: ``ResizeLongestSide(1024)``)."""

    classifier: ResNetAdlArch | None = None
    patch_px: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.classifier is None or self.classifier.layers[3] < 3 or self.classifier.layers[2] < 1:
            raise ConfigError(f"{self.name}: EP-SAM needs a ResNetAdlArch with ≥ 3 layer4 blocks "
                              f"(ADL sits after layer4 block 2)")
        if self.patch_px % 16:
            raise ConfigError(f"{self.name}: patch_px must be a multiple of 16 (output stride)")

    @property
    def cam_hw(self) -> tuple[int, int]:
        """CAM grid of one patch (output stride 16: 32×32 for 512 px)."""
        return (self.patch_px // 16, self.patch_px // 16)

    def classifier_graph(self) -> GraphSpec:
        """``image`` (batch, 3, p, p) RGB in [0, 1] → ``logits`` (batch, 1) (full layer4 + fc)
        and ``cam`` (batch, p/16, p/16): fc.weight · layer4[0] features, before ReLU."""
        p, (h, w) = self.patch_px, self.cam_hw
        return GraphSpec(
            name="classifier",
            inputs=(TensorSpec("image", "float32", ("batch", 3, p, p)),),
            outputs=(TensorSpec("logits", "float32", ("batch", 1)),
                     TensorSpec("cam", "float32", ("batch", h, w))),
            profile={"batch": (1, 4, 16)},
        )

    def graphs(self) -> dict[str, GraphSpec]:
        return {"classifier": self.classifier_graph(), "encoder": self.encoder_graph(),
                "decoder": self.decoder_graph()}


EPSAM_TOLERANCES = Tolerances(max_abs={"logits": 1e-4, "cam": 1e-4, "encoder": 1e-3,
                                       "decoder_logits": 1e-3, "end_to_end_logits": 1e-3},
                              mask_iou_min=0.999)
EPSAM_OPTIONS = (
    OptionSpec("threshold", 0.5, "patch tumour probability (sigmoid of the classifier logit) "
               "above which CAM → points → SAM runs", kind="float"),
    OptionSpec("variant", "camelyon17", "CAM mask post-processing of the released code: "
               "camelyon16 (resize, 10th percentile, 21×21 opening) or camelyon17 (30th "
               "percentile, 5×5 opening on the CAM grid, then resize)", choices=VARIANTS),
    OptionSpec("tta", "rot4", "rotation TTA of the CAM: rot4 (0/90/180/270 as released) or none",
               choices=("rot4", "none")),
    OptionSpec("cam_quantise", "uint8", "CAMs quantised to uint8 before averaging (released) or "
               "kept float", choices=("uint8", "float")),
    OptionSpec("resize", "bilinear", "CAM resize: bilinear (what the released cv2 call really "
               "does) or nearest", choices=("bilinear", "nearest")),
    OptionSpec("num_points", 50, "positive points sampled ∝ the normalised CAM", kind="int"),
    OptionSpec("seed", 21, "point-sampling seed (released: seed_everything(21)), per patch "
               "offset by its index", kind="int"),
    OptionSpec("coords", "patch", "point frame fed to the prompt encoder: patch (512-px "
               "coordinates unscaled into the 1024 frame, as released and trained) or scaled",
               choices=("patch", "scaled")),
)
USER = {"sam": WeightsSource(kind="user", filename="sam_vit_b_01ec64.pth"),
        "classifier": WeightsSource(kind="user", filename="camelyon17_resnet_adl.pth"),
        "decoder": WeightsSource(kind="user", filename="camelyon17_decoder_iter3.pth")}
RANDOM = {r: WeightsSource(kind="random") for r in ROLES}


def epsam_spec(**kw: object) -> EpSamSpec:
    defaults = dict(system="ep_sam", tolerances=EPSAM_TOLERANCES, options=EPSAM_OPTIONS,
                    modes=("slide",), multimask=False)
    return EpSamSpec(**{**defaults, **kw})  # type: ignore[arg-type]


_size, _dim, _depth, _heads, _glob = SAM_VITS[0]
register(epsam_spec(
    name="epsam",
    description="EP-SAM (ResNet-50+ADL CAM classifier → 50 points → SAM ViT-B, fine-tuned "
                "decoder), level-0 512 px patches; weights: sam_vit_b_01ec64.pth + "
                "camelyon17_resnet_adl.pth + camelyon17_decoder_iter3.pth",
    encoder=ViTArch(img_size=1024, embed_dim=_dim, depth=_depth, num_heads=_heads,
                    global_attn_indexes=_glob),
    preprocess=SAM_1024, mpp=0.25, weights=USER, classifier=ResNetAdlArch(), patch_px=512,
))
# Tiny seeded config: the same code paths (ADL gaps, stride-1 layer4, 2× patch → SAM input).
register(epsam_spec(
    name="test-epsam",
    description="test config: EP-SAM with a tiny ResNet-ADL (128 px patches: an 8×8 CAM) and a "
                "tiny SAM ViT at 256 px, random seeded weights",
    encoder=ViTArch(img_size=256, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,),
                    window_size=4, out_chans=32),
    decoder=TINY_DECODER,
    preprocess=Preprocess(input_px=256, pixel_mean=SAM_MEAN, pixel_std=SAM_STD),
    mpp=0.25, weights=RANDOM, seed=1362, classifier=ResNetAdlArch(layers=(1, 1, 2, 3), width=8),
    patch_px=128,
))
