"""Torch reference of the released WSI-SAM inference, step by step, for parity checks.

Written from the facts of the released code (``network.py`` per-decoder forward,
``inference.py`` fusion; ``/work/shared/design/seed-systems.md`` §1.4-1.5), not from the batched
export path in :mod:`wsisam.systems.wsi_sam.model_torch`, and kept in the released shape on purpose:

- each head computes its HQ feature for the whole image batch, then loops over the images with
  *per-image Python lists* of positional encodings, sparse and dense prompt embeddings;
- the image embedding and its PE are copied per prompt with ``repeat_interleave``;
- the stock prompt encoder (boolean-indexed label embedding, box → two corner tokens, a padding
  point appended to points-only prompts);
- both heads run completely — the LR head's HQ feature from the LR early feature included — and
  only then are the two hypernetwork vectors summed;
- the LR box of a concentric pair is ``box_hr // 2 + n / 4`` (``inference.py``: ``// 2 + 256`` at
  n = 1024), an integer floor;
- the fused 4h×4w mask is upsampled to n, cropped to the input size, upsampled to n again.

``inference.py`` decodes one box per image; its ``view(1, -1, 256, 256)`` would broadcast
wrongly for several boxes, so :func:`reference_decode` runs the released one-box path once per
prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from wsisam.systems.wsi_sam.model_torch import WsiMaskDecoder, WsiSam


@dataclass
class HeadOutputs:
    """What one released decoder's forward returns (multimask off).

    masks_sam (B, 1, 4h, 4w) SAM token-0 logits; masks_wsi (B, 1, 4h, 4w) the head's own mask;
    mask_wsi_token (B, 1, C8) hf_mlp output; wsi_image_embedding (B, C8, 16hw) the fused feature,
    flattened; iou_pred (B, K) of SAM's IoU head.
    """

    masks_sam: Tensor
    masks_wsi: Tensor
    mask_wsi_token: Tensor
    wsi_image_embedding: Tensor
    iou_pred: Tensor


def _predict_masks(head: WsiMaskDecoder, image_embeddings: Tensor, image_pe: Tensor,
                   sparse: Tensor, dense: Tensor, wsi_feature: Tensor
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The released ``predict_masks`` of one image: (1, C, h, w) embedding, (B_p, T, C) prompts."""
    k = head.num_mask_tokens
    output_tokens = torch.cat([head.iou_token.weight, head.mask_tokens.weight,
                               head.hf_token.weight], dim=0)
    output_tokens = output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1)
    tokens = torch.cat((output_tokens, sparse), dim=1)
    src = torch.repeat_interleave(image_embeddings, tokens.shape[0], dim=0) + dense
    pos_src = torch.repeat_interleave(image_pe, tokens.shape[0], dim=0)
    b, c, h, w = src.shape
    hs, src = head.transformer(src, pos_src, tokens)
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1:(1 + k + 1), :]
    src = src.transpose(1, 2).reshape(b, c, h, w)
    upscaled_sam = head.output_upscaling(src)
    upscaled_ours = head.embedding_maskfeature(upscaled_sam) + wsi_feature.repeat(b, 1, 1, 1)
    hyper_in_list = []
    for i in range(k + 1):
        mlp = head.output_hypernetworks_mlps[i] if i < k else head.hf_mlp
        hyper_in_list.append(mlp(mask_tokens_out[:, i, :]))
    hyper_in = torch.stack(hyper_in_list, dim=1)
    b, c, h, w = upscaled_sam.shape
    masks_sam = (hyper_in[:, :k] @ upscaled_sam.reshape(b, c, h * w)).reshape(b, -1, h, w)
    masks_ours = (hyper_in[:, k:] @ upscaled_ours.reshape(b, c, h * w)).reshape(b, -1, h, w)
    masks = torch.cat([masks_sam, masks_ours], dim=1)
    iou_pred = head.iou_prediction_head(iou_token_out)
    return masks, iou_pred, hyper_in[:, k:], upscaled_ours.reshape(b, c, h * w)


def head_forward(head: WsiMaskDecoder, image_embeddings: Tensor, image_pe: list[Tensor],
                 sparse: list[Tensor], dense: list[Tensor],
                 interm_embeddings: list[Tensor]) -> HeadOutputs:
    """The released decoder ``forward`` with ``multimask_output=False``.

    image_embeddings (B, C, h, w); per-image lists of PE (1, C, h, w), sparse (B_p, T, C) and
    dense (1, C, h, w); ``interm_embeddings[0]`` (B, h, w, vit_dim) NHWC, as the encoder returns.
    """
    vit_features = interm_embeddings[0].permute(0, 3, 1, 2)
    wsi_features = (head.embedding_encoder(image_embeddings)
                    + head.compress_vit_feat(vit_features))
    masks, ious, tokens, feats = [], [], [], []
    for i in range(len(image_embeddings)):
        m, s, t, f = _predict_masks(head, image_embeddings[i].unsqueeze(0), image_pe[i],
                                    sparse[i], dense[i], wsi_features[i].unsqueeze(0))
        masks.append(m)
        ious.append(s)
        tokens.append(t)
        feats.append(f)
    masks_t = torch.cat(masks, 0)
    k = head.num_mask_tokens
    return HeadOutputs(masks_sam=masks_t[:, 0:1], masks_wsi=masks_t[:, k:k + 1],
                       mask_wsi_token=torch.cat(tokens, 0), wsi_image_embedding=torch.cat(feats, 0),
                       iou_pred=torch.cat(ious, 0))


def released_lr_box(box_hr: Tensor, input_px: int) -> Tensor:
    """``inference.py``'s LR box of a concentric pair: ``box_hr // 2 + 256`` at 1024 px."""
    return box_hr // 2 + input_px // 4


def postprocess(mask_low: Tensor, input_px: int, input_hw: tuple[int, int]) -> Tensor:
    """SAM's postprocessing as ``inference.py`` calls it: bilinear to n, crop, bilinear to n."""
    up = F.interpolate(mask_low, (input_px, input_px), mode="bilinear", align_corners=False)
    up = up[..., :input_hw[0], :input_hw[1]]
    return F.interpolate(up, (input_px, input_px), mode="bilinear", align_corners=False)


def fuse(hr: HeadOutputs, lr: HeadOutputs, mask_hw: tuple[int, int]) -> Tensor:
    """``inference.py``: sum of the two token vectors applied to the HR feature, plus SAM's HR
    mask; one box per image, (1, 1, 4h, 4w)."""
    token = hr.mask_wsi_token + lr.mask_wsi_token
    return (token @ hr.wsi_image_embedding).view(1, -1, *mask_hw) + hr.masks_sam


@torch.no_grad()
def reference_one(model: WsiSam, hr_emb: Tensor, hr_interm_nhwc: Tensor, lr_emb: Tensor,
                  lr_interm_nhwc: Tensor, hr_prompt: dict[str, Tensor],
                  lr_prompt: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """One prompt on one HR/LR pair → logits (1, 1, n, n) in the HR frame and IoU (1, 1).

    Prompts as the stock prompt encoder takes them: ``{"boxes": (1, 4)}`` and/or
    ``{"points": (1, P, 2), "labels": (1, P)}`` in model-input px of their resolution.
    """
    pe = model.sam.prompt_encoder
    outs = []
    for head, emb, interm, prompt in ((model.decoder_high, hr_emb, hr_interm_nhwc, hr_prompt),
                                      (model.decoder_low, lr_emb, lr_interm_nhwc, lr_prompt)):
        points = (prompt["points"], prompt["labels"]) if "points" in prompt else None
        sparse, dense = pe(points=points, boxes=prompt.get("boxes"), masks=None)
        outs.append(head_forward(head, emb, [pe.get_dense_pe()], [sparse], [dense], [interm]))
    hr, lr = outs
    n = model.spec.input_px
    fused = fuse(hr, lr, tuple(hr.masks_sam.shape[-2:]))
    return postprocess(fused, n, (n, n)), hr.iou_pred[:, :1]


@torch.no_grad()
def reference_decode(model: WsiSam, hr_emb: Tensor, hr_interm_nhwc: Tensor, lr_emb: Tensor,
                     lr_interm_nhwc: Tensor, hr_coords: Tensor, lr_coords: Tensor,
                     labels: Tensor) -> tuple[Tensor, Tensor]:
    """The graph's contract computed the released way, one prompt at a time.

    hr_coords/lr_coords (N, P, 2) and labels (N, P) as fed to the decoder graph: a prompt whose
    labels are (2, 3) is a box; otherwise labels 0/1 are points, -1 the padding point SAM's prompt
    encoder appends itself (the graph gets it from the host), and trailing (2, 3) a box after the
    points. Returns logits (N, 1, n, n) and IoU (N, 1).
    """
    masks, ious = [], []
    for hc, lc, lab in zip(hr_coords, lr_coords, labels):
        m, s = reference_one(model, hr_emb, hr_interm_nhwc, lr_emb, lr_interm_nhwc,
                             _stock_prompt(hc, lab), _stock_prompt(lc, lab))
        masks.append(m)
        ious.append(s)
    return torch.cat(masks), torch.cat(ious)


def _stock_prompt(coords: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """Graph-style point set (P, 2), (P,) → the stock prompt encoder's points/boxes arguments."""
    is_box = labels >= 2
    out: dict[str, Tensor] = {}
    if bool(is_box.any()):
        out["boxes"] = coords[is_box].reshape(1, 4)
    pts = ~is_box & (labels != -1)
    if bool(pts.any()):
        # points-only: the stock encoder appends the padding point the graph was given
        out["points"] = coords[pts].unsqueeze(0)
        out["labels"] = labels[pts].unsqueeze(0)
    return out


@torch.no_grad()
def reference_inference(model: WsiSam, hr_image: Tensor, lr_image: Tensor,
                        box_hr: Tensor) -> tuple[Tensor, Tensor]:
    """``inference.py`` end to end for one concentric HR/LR pair and one box.

    hr_image, lr_image (1, 3, n, n) normalised and padded; box_hr (1, 4) xyxy HR model px.
    Both images go through the same frozen encoder; the LR box is :func:`released_lr_box`.
    """
    enc = model.sam.image_encoder
    hr_emb, hr_interm = enc.forward_with_interm(hr_image)
    lr_emb, lr_interm = enc.forward_with_interm(lr_image)
    box_lr = released_lr_box(box_hr, model.spec.input_px)
    return reference_one(model, hr_emb, hr_interm, lr_emb, lr_interm, {"boxes": box_hr},
                         {"boxes": box_lr})
