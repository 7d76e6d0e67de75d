"""CellSAM model specs: a frozen SAM-family encoder, a small trainable full-resolution encoder
fused with it, and a nucleus-map head; nucleus instances come from a host-side seeded watershed.

Graphs: ``encoder`` (the SAM encoder, unchanged) and ``head`` (``image`` + ``image_embeddings``
→ ``maps``). Weight roles: ``sam`` (the SAM-family checkpoint) and ``head`` (the trained
head, shipped in the package for ``cellsam``; ``wsisam-train cellsam`` makes a new one).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from wsisam.errors import ConfigError
from wsisam.registry import (GraphSpec, OptionSpec, Preprocess, SystemEntry, TensorSpec,
                             Tolerances, WeightsSource, get_model, register, register_system)
from wsisam.systems.sam.spec import SamSpec

SYSTEM = register_system(SystemEntry(
    "cell_sam", runtime="wsisam.systems.cell_sam.runtime:CellSamRuntime",
    export="wsisam.systems.cell_sam.export:CellSamExportPlan",
    train="wsisam.systems.cell_sam.train:train_command"))

HEAD_FILE = "cellsam_head.pt"


@dataclass(frozen=True)
class HeadArch:
    """The trainable part: small-encoder widths per stride (1, 2, 4, …), the channels the large
    embedding is reduced to before fusion, whether it is fused at all (the ablation), and
    ``upscale``: head-input px per large-encoder-input px (2: the small encoder and the maps at
    twice the large encoder's resolution, e.g. 0.25 µm/px beside LiteMedSAM's 0.5);
    ``context``: residual dilated 3×3 layers (dilation 2, 4, …) after the fusion, widening the
    receptive field at the embedding's stride (0: none)."""

    widths: tuple[int, ...] = (16, 32, 48, 64)
    fuse_dim: int = 32
    use_embedding: bool = True
    upscale: int = 1
    context: int = 0


@dataclass(frozen=True)
class CellSamSpec(SamSpec):
    """``mpp``/``preprocess``/``encoder`` are the SAM model's; ``head`` the trainable part."""

    head: HeadArch = HeadArch()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.input_px % self.embed_stride:
            raise ConfigError(f"{self.name}: input {self.input_px} px is not a multiple of the "
                              f"embedding stride {self.embed_stride}")

    @property
    def embed_stride(self) -> int:
        """Model-input px per embedding cell."""
        return self.input_px // self.embed_hw[0]

    @property
    def head_px(self) -> int:
        """Side of the head's input and maps: the tile px of the nuclei runtime."""
        return self.input_px * self.head.upscale

    @property
    def head_mpp(self) -> float:
        """µm/px of the head's input and maps (the work frame of nuclei)."""
        return self.mpp / self.head.upscale

    @property
    def head_stride(self) -> int:
        """Head-input px per embedding cell."""
        return self.embed_stride * self.head.upscale

    @property
    def head_preprocess(self) -> Preprocess:
        """The SAM preprocessing at the head's input size."""
        return replace(self.preprocess, input_px=self.head_px)

    def head_graph(self) -> GraphSpec:
        n, (h, w) = self.head_px, self.embed_hw
        return GraphSpec(
            name="head",
            inputs=(TensorSpec("image", "float32", ("batch", 3, n, n)),
                    TensorSpec("image_embeddings", "float32", ("batch", self.embed_dim, h, w))),
            outputs=(TensorSpec("maps", "float32", ("batch", 3, n, n)),),
            profile={"batch": (1, 4, 16)},
        )

    def graphs(self) -> dict[str, GraphSpec]:
        # SAM's decoder rides along for mask fusion (-O fusion=…)
        return {"encoder": self.encoder_graph(), "head": self.head_graph(),
                "decoder": self.decoder_graph()}


CELLSAM_OPTIONS = (
    OptionSpec("fg_thresh", None, "foreground threshold (default: the trained model's)", "float"),
    OptionSpec("centre_thresh", None, "seed threshold on the centre-distance map", "float"),
    OptionSpec("boundary_thresh", None, "seed threshold on the boundary-distance map", "float"),
    OptionSpec("fusion", "off", "fuse each nucleus's mask with SAM's decoder mask prompted with "
               "its box: off, sam or mean (one decoder pass per nucleus)",
               choices=("off", "sam", "mean")),
)
CELLSAM_TOLERANCES = Tolerances(max_abs={"encoder": 1e-4, "head": 1e-4, "maps": 1e-4,
                                         "decoder_logits": 1e-3},
                                mask_iou_min=0.99)


def cellsam_spec(sam: SamSpec, **kw: object) -> CellSamSpec:
    """A CellSAM spec on ``sam``'s encoder, preprocessing and µm/px."""
    base = dict(system="cell_sam", encoder=sam.encoder, decoder=sam.decoder,
                preprocess=sam.preprocess, mpp=sam.mpp, multimask=sam.multimask,
                tolerances=CELLSAM_TOLERANCES, options=CELLSAM_OPTIONS, modes=("automatic",))
    return CellSamSpec(**{**base, **kw})  # type: ignore[arg-type]


HEAD_RESOURCE = f"systems/cell_sam/weights/{HEAD_FILE}"
_LITE, _TINY = get_model("litemedsam"), get_model("test-tinyvit")

register(cellsam_spec(
    _LITE, name="cellsam",
    description="CellSAM nuclei: LiteMedSAM encoder + a small fused encoder/head trained on "
                "MoNuSeg (non-commercial, CC BY-NC-SA 4.0 derived weights)",
    # the head works at 0.25 µm/px beside LiteMedSAM's 0.5, four stages (a five-stage wide
    # head scored 0.011 PQ more at ~20 % less throughput; docs/benchmarks.md, CellSAM)
    head=HeadArch(upscale=2),
    weights={"sam": _LITE.weights["sam"],
             "head": WeightsSource(kind="wheel", package="wsisam", resource=HEAD_RESOURCE,
                                   sha256_prefix="cc3c56e0",
                                   install_hint="pip install wsisam (the head ships inside it)",
                                   filename=HEAD_FILE)},
))
register(cellsam_spec(
    _TINY, name="test-cellsam",
    description="test config: CellSAM head on the test TinyViT, random seeded weights",
    head=HeadArch(widths=(8, 12, 16), fuse_dim=8),
    weights={"sam": WeightsSource(kind="random"), "head": WeightsSource(kind="random")},
    seed=2468,
))
register(cellsam_spec(
    _TINY, name="test-cellsam-x2",
    description="test config: CellSAM head at twice the test TinyViT's resolution, random weights",
    head=HeadArch(widths=(8, 12, 16, 16), fuse_dim=8, upscale=2),
    weights={"sam": WeightsSource(kind="random"), "head": WeightsSource(kind="random")},
    seed=2469,
))
