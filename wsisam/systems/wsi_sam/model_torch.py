"""WSI-SAM in torch: a frozen SAM-family model plus two HQ-SAM-style decoder heads (HR and LR),
with the batched, export-friendly forward passes that become the ONNX graphs.

State-dict layout (:class:`WsiSam`): ``sam.*`` holds the SAM checkpoint's keys (``image_encoder.*``,
``prompt_encoder.*``, ``mask_decoder.*``); ``decoder_high.*`` / ``decoder_low.*`` hold each head
file's keys, as the released ``network.py`` names them (``MaskDecoderHigh`` / ``MaskDecoderLow``):
the 120 SAM decoder keys (``transformer.*``, ``iou_token``, ``mask_tokens``, ``output_upscaling``,
``output_hypernetworks_mlps``, ``iou_prediction_head``) and 25 extras (``hf_token``, ``hf_mlp``,
``compress_vit_feat``, ``embedding_encoder``, ``embedding_maskfeature``).

Shapes: embedding grid (h, w), mask grid (4h, 4w), C = transformer dim, C8 = C // 8, N prompts,
n = input_px. The released fusion (``inference.py``), which :meth:`WsiSam.decode` computes for N
prompts at once:

    token   = hf_mlp_HR(HR token out) + hf_mlp_LR(LR token out)                  (N, 1, C8)
    feat_HR = embedding_maskfeature_HR(upscaled_HR) + embedding_encoder_HR(emb_HR)
              + compress_vit_feat_HR(interm_HR)                                    (N, C8, 4h, 4w)
    logits  = upsample_n(token · feat_HR + SAM token-0 mask of the HR head)        (N, 1, n, n)

The LR head's feature branch (its ``embedding_*``/``compress_vit_feat`` and the LR early feature)
never reaches the output, so it is not computed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsisam.systems.sam.modeling.common import MLP, LayerNorm2d
from wsisam.systems.sam.modeling.mask_decoder import MaskDecoder
from wsisam.systems.sam.modeling.sam import Sam
from wsisam.systems.sam.modeling.transformer import TwoWayTransformer
from wsisam.systems.wsi_sam.spec import WsiSamSpec

EXTRA_PREFIXES = ("hf_token.", "hf_mlp.", "compress_vit_feat.", "embedding_encoder.",
                  "embedding_maskfeature.")


class WsiMaskDecoder(MaskDecoder):
    """SAM's mask decoder plus one WSI-SAM token (``hf_token``) and HQ-SAM's feature fusion.

    The extra token joins the output tokens after the 4 mask tokens: [iou, mask × K, hf].
    """

    def __init__(self, transformer_dim: int, transformer: TwoWayTransformer, vit_dim: int,
                 num_multimask_outputs: int = 3, iou_head_depth: int = 3,
                 iou_head_hidden_dim: int = 256) -> None:
        super().__init__(transformer_dim, transformer, num_multimask_outputs, iou_head_depth,
                         iou_head_hidden_dim)
        dim, c4, c8 = transformer_dim, transformer_dim // 4, transformer_dim // 8
        self.hf_token = nn.Embedding(1, dim)
        self.hf_mlp = MLP(dim, dim, c8, 3)
        self.compress_vit_feat = nn.Sequential(
            nn.ConvTranspose2d(vit_dim, dim, kernel_size=2, stride=2), LayerNorm2d(dim),
            nn.GELU(), nn.ConvTranspose2d(dim, c8, kernel_size=2, stride=2))
        self.embedding_encoder = nn.Sequential(
            nn.ConvTranspose2d(dim, c4, kernel_size=2, stride=2), LayerNorm2d(c4),
            nn.GELU(), nn.ConvTranspose2d(c4, c8, kernel_size=2, stride=2))
        self.embedding_maskfeature = nn.Sequential(
            nn.Conv2d(c8, c4, 3, 1, 1), LayerNorm2d(c4), nn.GELU(), nn.Conv2d(c4, c8, 3, 1, 1))

    @property
    def hf_index(self) -> int:
        """Position of the WSI-SAM token among the transformer's output tokens."""
        return 1 + self.num_mask_tokens

    def wsi_tokens(self) -> Tensor:
        """[iou token, mask tokens, hf token] → (2 + K, C)."""
        return torch.cat([self.iou_token.weight, self.mask_tokens.weight, self.hf_token.weight])

    def wsi_features(self, image_embeddings: Tensor, interm_nchw: Tensor) -> Tensor:
        """HQ-SAM's early+final feature: (B, C, h, w), (B, vit_dim, h, w) → (B, C8, 4h, 4w)."""
        return self.embedding_encoder(image_embeddings) + self.compress_vit_feat(interm_nchw)

    def transformer_out(self, image_embeddings: Tensor, image_pe: Tensor, sparse: Tensor,
                        dense: Tensor) -> tuple[Tensor, Tensor]:
        """All N prompts of one image: tokens (N, 2+K+T, C) and image tokens (N, h·w, C)."""
        n = sparse.shape[0]
        tokens = torch.cat([self.wsi_tokens().unsqueeze(0).expand(n, -1, -1), sparse], dim=1)
        # the image is shared by the prompts, not copied (as in MaskDecoder.predict_masks)
        return self.transformer(image_embeddings + dense, image_pe, tokens)

    def hr_outputs(self, image_embeddings: Tensor, interm_nchw: Tensor, image_pe: Tensor,
                   sparse: Tensor, dense: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The HR head on one image and N prompts.

        Returns SAM's token-0 mask (N, 1, 4h, 4w), the hf hypernetwork vector (N, 1, C8), the
        fused feature ``embedding_maskfeature(upscaled) + wsi_features`` (N, C8, 4h·4w) and the
        IoU prediction of token 0 (N, 1).
        """
        hs, img_tokens = self.transformer_out(image_embeddings, image_pe, sparse, dense)
        h, w = image_embeddings.shape[-2:]
        feats = img_tokens.transpose(1, 2).reshape(-1, self.transformer_dim, h, w)
        upscaled = self.output_upscaling(feats)  # (N, C8, 4h, 4w)
        c8 = self.transformer_dim // 8
        flat = upscaled.reshape(-1, c8, 16 * h * w)
        sam_mask = self.output_hypernetworks_mlps[0](hs[:, 1, :]).unsqueeze(1) @ flat
        fused = self.embedding_maskfeature(upscaled) + self.wsi_features(image_embeddings,
                                                                         interm_nchw)
        hf_vec = self.hf_mlp(hs[:, self.hf_index, :]).unsqueeze(1)
        iou = self.iou_prediction_head(hs[:, 0, :])[:, :1]
        return (sam_mask.reshape(-1, 1, 4 * h, 4 * w), hf_vec, fused.reshape(-1, c8, 16 * h * w),
                iou)

    def token_vector(self, image_embeddings: Tensor, image_pe: Tensor, sparse: Tensor,
                     dense: Tensor) -> Tensor:
        """The LR head's only contribution to the fused output: hf vector (N, 1, C8)."""
        hs, _ = self.transformer_out(image_embeddings, image_pe, sparse, dense)
        return self.hf_mlp(hs[:, self.hf_index, :]).unsqueeze(1)


class WsiSam(nn.Module):
    """SAM (``sam``) + the HR head (``decoder_high``) + the LR head (``decoder_low``)."""

    def __init__(self, spec: WsiSamSpec) -> None:
        super().__init__()
        self.spec = spec
        self.sam = Sam(spec)
        self.decoder_high = build_head(spec)
        self.decoder_low = build_head(spec)

    def encode(self, image_nchw: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, n, n) normalised, padded → embeddings (B, C, h, w), early feature
        (B, vit_dim, h, w) NCHW."""
        emb, interm_nhwc = self.sam.image_encoder.forward_with_interm(image_nchw)
        return emb, interm_nhwc.permute(0, 3, 1, 2)

    def decode(self, hr_embeddings: Tensor, hr_interm: Tensor, lr_embeddings: Tensor,
               hr_point_coords: Tensor, lr_point_coords: Tensor,
               point_labels: Tensor) -> tuple[Tensor, Tensor]:
        """The fused decoder graph.

        Args:
            hr_embeddings, lr_embeddings: (1, C, h, w); hr_interm: (1, vit_dim, h, w).
            hr_point_coords, lr_point_coords: (N, P, 2) the same points in HR / LR model-input px.
            point_labels: (N, P) as for SAM (2/3 box corners, 1/0 points, -1 padding).
        Returns:
            masks (N, 1, n, n) logits in the HR model-input frame, iou_predictions (N, 1).
        """
        pe = self.sam.prompt_encoder
        image_pe, dense = pe.get_dense_pe(), pe.no_mask_dense()
        sam_mask, hr_vec, fused, iou = self.decoder_high.hr_outputs(
            hr_embeddings, hr_interm, image_pe, pe.embed_points(hr_point_coords, point_labels),
            dense)
        lr_vec = self.decoder_low.token_vector(
            lr_embeddings, image_pe, pe.embed_points(lr_point_coords, point_labels), dense)
        mh, mw = sam_mask.shape[-2:]
        low = ((hr_vec + lr_vec) @ fused).reshape(-1, 1, mh, mw) + sam_mask
        # The released chain is upsample → crop to the input size → upsample to n; tiles are read
        # at exactly n px, so the crop and the second resize are identities.
        n = self.spec.input_px
        return F.interpolate(low, (n, n), mode="bilinear", align_corners=False), iou


def build_head(spec: WsiSamSpec) -> WsiMaskDecoder:
    """One WSI-SAM head (randomly initialised) for ``spec``."""
    dec = spec.decoder
    transformer = TwoWayTransformer(dec.transformer_depth, dec.transformer_dim,
                                    dec.transformer_heads, dec.transformer_mlp_dim)
    return WsiMaskDecoder(dec.transformer_dim, transformer, spec.heads.vit_dim,
                          dec.num_multimask_outputs, dec.iou_head_depth, dec.iou_head_hidden_dim)


def build_wsisam(spec: WsiSamSpec, seed: int | None = None) -> WsiSam:
    """A :class:`WsiSam` in eval mode, randomly initialised with ``seed`` (``spec.seed`` when
    None); the global torch RNG is left untouched.

    As in the released code, each head starts from the SAM decoder's (frozen) weights: its base
    keys are copied from ``sam.mask_decoder``; only the 25 extras are random.
    """
    from wsisam.systems.sam.modeling import perturb_defaults

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed if seed is None else seed)
        model = WsiSam(spec)
        perturb_defaults(model)
    base = model.sam.mask_decoder.state_dict()
    for head in (model.decoder_high, model.decoder_low):
        own = head.state_dict()
        head.load_state_dict({**own, **base}, strict=True)  # base keys replaced, extras kept
    return model.eval()


def extra_keys(head: WsiMaskDecoder) -> list[str]:
    """The head's WSI-SAM-only keys (25 for depth-3 MLPs)."""
    return [k for k in head.state_dict() if k.startswith(EXTRA_PREFIXES)]
