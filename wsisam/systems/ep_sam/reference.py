"""A torch reference of EP-SAM written from the released code, step by step, for parity: the FFT
high-frequency channel (``patch_classifier/fft.py``), the CAM from ``layer4[0]`` read through a
forward hook (``ResNetAdl.generate_cam_masks``), the released host post-processing redone in torch
(rotations, uint8, percentile, opening as min/max pooling, bilinear ``F.interpolate``) and SAM's
own ``postprocess_masks`` chain. It shares no code with the exported graphs or the numpy host side
except the point-sampling RNG call (the random stream is the spec)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wsisam.runtime.preprocess import preprocess_image
from wsisam.systems.ep_sam.model_torch import EpSam


def fft_high_frequency(rgb: Tensor) -> Tensor:
    """fftshift(fft2(x, norm="forward")), centre 2×2 zeroed, inverse, real, abs, mean over RGB."""
    f = torch.fft.fftshift(torch.fft.fft2(rgb, norm="forward"), dim=(-2, -1))
    h, w = rgb.shape[-2:]
    f[..., h // 2 - 1: h // 2 + 1, w // 2 - 1: w // 2 + 1] = 0
    back = torch.fft.ifft2(torch.fft.ifftshift(f, dim=(-2, -1)), norm="forward")
    return back.real.abs().mean(dim=1, keepdim=True)


def reference_classify(model: EpSam, rgb: Tensor) -> tuple[Tensor, Tensor]:
    """(B, 3, p, p) RGB [0, 1] → logits (B, 1), raw CAM (B, h, w) as the released forward."""
    net = model.classifier
    feats: list[Tensor] = []
    hook = net.layer4[0].register_forward_hook(lambda m, i, o: feats.append(o))
    try:
        x = torch.cat([rgb, fft_high_frequency(rgb.double()).float()], dim=1)
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
        logits = net.fc(torch.flatten(net.avgpool(x), 1))
    finally:
        hook.remove()
    cam = (net.fc.weight[0][None, :, None, None] * feats[0]).sum(dim=1)
    return logits, cam


class ReferenceGraphs:
    """The reference as a graph set (same feeds and outputs as the exported graphs)."""

    def __init__(self, model: EpSam) -> None:
        self.model = model

    def run(self, graph: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feed.items()}
        with torch.no_grad():
            if graph == "classifier":
                logits, cam = reference_classify(self.model, t["image"])
                return {"logits": logits.numpy(), "cam": cam.numpy()}
            if graph == "encoder":
                return {"image_embeddings": self.model.sam.encode(t["image"]).numpy()}
            m, s = self.model.sam.decode_reference(t["image_embeddings"], t["point_coords"],
                                                   t["point_labels"])
            return {"low_res_masks": m.numpy(), "iou_predictions": s.numpy()}


def _open(m: Tensor, k: int) -> Tensor:
    # cv2 morphology ignores the border (max/min over the in-image part): pad with ∓inf
    x = m[None, None].float()
    er = -F.max_pool2d(F.pad(-x, [k // 2] * 4, value=-float("inf")), k, 1)
    di = F.max_pool2d(F.pad(er, [k // 2] * 4, value=-float("inf")), k, 1)
    return di[0, 0]


def _bilinear(x: Tensor, p: int) -> Tensor:
    return F.interpolate(x[None, None].float(), (p, p), mode="bilinear", align_corners=False)[0, 0]


@torch.no_grad()
def reference_patch(model: EpSam, rgb_u8: np.ndarray, variant: str = "camelyon17",
                    num_points: int = 50, seed: int = 21) -> dict[str, np.ndarray]:
    """One released-inference patch: (p, p, 3) uint8 → {"prob", "points" (P, 2) x,y in the patch
    frame, "mask" (p, p) bool}, with the released defaults (TTA, uint8, bilinear, 512-frame
    coordinates)."""
    spec = model.sam.spec
    p = rgb_u8.shape[0]
    x = torch.from_numpy(rgb_u8.astype(np.float32) / 255).permute(2, 0, 1)
    cams = []
    logits = None
    for k in range(4):
        lg, cam = reference_classify(model, torch.rot90(x, k, dims=(1, 2))[None])
        logits = lg if logits is None else logits
        c = cam[0].clamp(min=0)
        c = c - c.min()
        c = c / c.max() if c.max() > 0 else c
        cams.append(torch.rot90((c * 255).to(torch.uint8), -k, dims=(0, 1)))
    avg = torch.stack(cams).float().mean(0).to(torch.uint8)
    a = avg.float()
    norm = _bilinear((a - a.min()) / (a.max() - a.min()) if a.max() > a.min() else a * 0, p)
    nz = a[a > 0]
    if not nz.numel():
        mask = torch.zeros(p, p, dtype=torch.bool)
    elif variant == "camelyon16":
        thr = torch.quantile(nz.double(), 0.10).float()
        big = _bilinear(a, p).round()  # cv2 resizes the uint8 CAM in fixed point, rounding
        mask = _open((big > thr).float(), 21) > 0
    else:
        thr = torch.quantile(nz.double(), 0.30).float()
        small = _open((a > thr).float(), 5)
        mask = _bilinear(small, p).round() > 0
    prob = np.where(mask.numpy(), norm.numpy(), 0).astype(np.float64).ravel()
    if (prob > 0).sum() < num_points:
        pts = np.zeros((1, 2), np.float32)
    else:
        idx = np.random.RandomState(seed).choice(prob.size, num_points, replace=False,
                                                 p=prob / prob.sum())
        pts = np.stack([idx % p, idx // p], axis=1).astype(np.float32)
    image, geom = preprocess_image(rgb_u8, spec.preprocess)
    emb = model.sam.encode(torch.from_numpy(image)[None])
    coords = torch.cat([torch.from_numpy(pts), torch.zeros(1, 2)])[None]
    labels = torch.cat([torch.ones(len(pts)), -torch.ones(1)])[None]
    low, _ = model.sam.decode_reference(emb, coords, labels)
    n = spec.input_px
    up = F.interpolate(low[:, :1], (n, n), mode="bilinear", align_corners=False)
    up = up[..., : geom.resized_hw[0], : geom.resized_hw[1]]
    up = F.interpolate(up, (p, p), mode="bilinear", align_corners=False)[0, 0]
    return {"prob": torch.sigmoid(logits[0, 0]).numpy(), "points": pts,
            "mask": (up > 0).numpy(), "cam_mask": mask.numpy(), "avg_cam": avg.numpy()}
