"""The whole SAM model: image encoder, prompt encoder and mask decoder under the checkpoint's
key prefixes, with the two entry points that become the exported graphs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsisam.errors import ConfigError
from wsisam.systems.sam.modeling.mask_decoder import MaskDecoder
from wsisam.systems.sam.modeling.prompt_encoder import PromptEncoder
from wsisam.systems.sam.modeling.tiny_vit import TinyViT
from wsisam.systems.sam.modeling.transformer import TwoWayTransformer
from wsisam.systems.sam.modeling.vit import ImageEncoderViT
from wsisam.systems.sam.spec import SamSpec, TinyViTArch, ViTArch


def build_image_encoder(spec: SamSpec) -> TinyViT | ImageEncoderViT:
    """The spec's encoder; its output grid must be ``spec.embed_hw`` (else ConfigError)."""
    arch = spec.encoder
    if isinstance(arch, TinyViTArch):
        encoder: TinyViT | ImageEncoderViT = TinyViT(arch)
        out_chans = arch.out_chans
    elif isinstance(arch, ViTArch):
        encoder = ImageEncoderViT(arch)
        out_chans = arch.out_chans
    else:
        raise ConfigError(f"{spec.name}: unsupported encoder architecture {type(arch).__name__}")
    if arch.img_size != spec.input_px:
        raise ConfigError(f"{spec.name}: encoder img_size {arch.img_size} != input_px "
                          f"{spec.input_px}")
    if tuple(encoder.grid_hw) != tuple(spec.embed_hw):
        raise ConfigError(f"{spec.name}: encoder produces a {encoder.grid_hw} grid but the spec "
                          f"says embed_hw={spec.embed_hw}")
    if out_chans != spec.embed_dim:
        raise ConfigError(f"{spec.name}: encoder out_chans {out_chans} != decoder "
                          f"transformer_dim {spec.embed_dim}")
    return encoder


class Sam(nn.Module):
    """SAM v1 (ViT / TinyViT encoder) built from a :class:`~wsisam.registry.SamSpec`.

    Images are normalised and padded host-side (``spec.preprocess``); prompt coordinates are in
    the model-input frame (pixels of the ``input_px``×``input_px`` encoder input).
    """

    def __init__(self, spec: SamSpec) -> None:
        super().__init__()
        self.spec = spec
        dec = spec.decoder
        self.image_encoder = build_image_encoder(spec)
        self.prompt_encoder = PromptEncoder(dec.transformer_dim, spec.embed_hw,
                                            (spec.input_px, spec.input_px), dec.mask_in_chans)
        transformer = TwoWayTransformer(dec.transformer_depth, dec.transformer_dim,
                                        dec.transformer_heads, dec.transformer_mlp_dim)
        self.mask_decoder = MaskDecoder(dec.transformer_dim, transformer,
                                        dec.num_multimask_outputs, dec.iou_head_depth,
                                        dec.iou_head_hidden_dim)

    def encode(self, image_nchw: Tensor) -> Tensor:
        """(B, 3, S, S) normalised, padded image → embeddings (B, C, h, w)."""
        return self.image_encoder(image_nchw)

    def decode(self, embeddings: Tensor, point_coords: Tensor,
               point_labels: Tensor) -> tuple[Tensor, Tensor]:
        """Masks for N prompts on one image, in one batch (the exported decoder graph).

        Args:
            embeddings: (1, C, h, w) image embedding.
            point_coords: (N, P, 2) float, model-input px (x, y).
            point_labels: (N, P) float: 1/0 fg/bg point, 2/3 box corners, -1 padding. Used as
                given: for a points-only prompt SAM's extra padding point is the caller's job.
        Returns:
            low_res_masks (N, K, 4h, 4w) logits and iou_predictions (N, K), all K mask tokens.
        """
        pe = self.prompt_encoder
        sparse = pe.embed_points(point_coords, point_labels)
        return self.mask_decoder.predict_masks(embeddings, pe.get_dense_pe(), sparse,
                                               pe.no_mask_dense())

    def decode_reference(self, embeddings: Tensor, point_coords: Tensor,
                         point_labels: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`decode` computed the straightforward SAM way, for tests.

        One prompt at a time (batch 1), boolean-indexed label embedding, the image embedding
        copied with ``repeat_interleave``. Same arguments and results as :meth:`decode`.
        """
        pe = self.prompt_encoder
        image_pe, dense = pe.get_dense_pe(), pe.no_mask_dense()
        masks, ious = [], []
        for coords, labels in zip(point_coords, point_labels):
            sparse = pe.embed_points_reference(coords[None], labels[None])
            m, s = self.mask_decoder.predict_masks_reference(embeddings, image_pe, sparse, dense)
            masks.append(m)
            ious.append(s)
        return torch.cat(masks), torch.cat(ious)
