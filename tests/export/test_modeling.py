"""The torch SAM models: shapes per the registry graphs, the exported decode path against the
plain SAM formulation, checkpoint key layouts, and real LiteMedSAM weights on real tissue."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="model tests need the export extra (torch)")

from wsisam.errors import ConfigError, WeightsError  # noqa: E402
from wsisam.systems.sam.modeling import build_sam  # noqa: E402
from wsisam.systems.sam.modeling.common import window_partition, window_unpartition  # noqa: E402
from wsisam.systems.sam.modeling.tiny_vit import relative_offset_index  # noqa: E402
from wsisam.registry import get_model  # noqa: E402

TEST_MODELS = ("test-tinyvit", "test-vit")


def _resolve(shape: tuple, sizes: dict[str, int]) -> tuple[int, ...]:
    return tuple(sizes[d] if isinstance(d, str) else d for d in shape)


def _box_prompts(n_px: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """3 boxes as (top-left, bottom-right) point pairs labelled 2, 3."""
    corners = torch.sort(torch.rand(3, 2, 2, generator=gen) * n_px, dim=1).values
    return corners, torch.tensor([[2.0, 3.0]] * 3)


def _mixed_prompts(n_px: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """3 point sets of 3 points with fg/bg points and padding."""
    coords = torch.rand(3, 3, 2, generator=gen) * n_px
    labels = torch.tensor([[1.0, 0.0, -1.0], [1.0, -1.0, -1.0], [0.0, 1.0, 1.0]])
    return coords, labels


@pytest.fixture(scope="module", params=TEST_MODELS)
def tiny(request):
    spec = get_model(request.param)
    return spec, build_sam(spec)


def test_encode_shapes_match_graph(tiny):
    spec, sam = tiny
    image = torch.randn(2, 3, spec.input_px, spec.input_px)
    with torch.no_grad():
        emb = sam.encode(image)
        emb2, interm = sam.image_encoder.forward_with_interm(image)
    assert emb.shape == _resolve(spec.encoder_graph().outputs[0].shape, {"batch": 2})
    assert torch.equal(emb, emb2)
    assert interm.shape[:3] == (2, *spec.embed_hw)
    assert torch.isfinite(emb).all() and emb.std() > 0.1


@pytest.mark.parametrize("prompts", [_box_prompts, _mixed_prompts], ids=["boxes", "mixed"])
def test_decode_matches_reference(tiny, prompts):
    spec, sam = tiny
    gen = torch.Generator().manual_seed(7)
    emb = torch.randn(1, spec.embed_dim, *spec.embed_hw, generator=gen)
    coords, labels = prompts(spec.input_px, gen)
    with torch.no_grad():
        masks, iou = sam.decode(emb, coords, labels)
        ref_masks, ref_iou = sam.decode_reference(emb, coords, labels)
    sizes = {"num_prompts": 3, "num_points": coords.shape[1]}
    out = spec.decoder_graph().outputs
    assert masks.shape == _resolve(out[0].shape, sizes)
    assert iou.shape == _resolve(out[1].shape, sizes)
    assert (masks - ref_masks).abs().max() <= 1e-5
    assert (iou - ref_iou).abs().max() <= 1e-5
    # Random weights must still give varied logits, or the comparison proves little.
    assert masks.std() > 1e-3 and (masks > 0).any() and (masks < 0).any()
    assert not torch.allclose(masks[0], masks[1])


def test_decode_single_prompt_matches_batch(tiny):
    spec, sam = tiny
    gen = torch.Generator().manual_seed(3)
    emb = torch.randn(1, spec.embed_dim, *spec.embed_hw, generator=gen)
    coords, labels = _box_prompts(spec.input_px, gen)
    with torch.no_grad():
        batch, _ = sam.decode(emb, coords, labels)
        one, _ = sam.decode(emb, coords[1:2], labels[1:2])
    assert (batch[1:2] - one).abs().max() <= 1e-5


def test_sam_style_prompt_encoder_matches_points(tiny):
    """SAM's forward(boxes=…) and (points, with its appended pad) equal the label encoding."""
    spec, sam = tiny
    pe = sam.prompt_encoder
    gen = torch.Generator().manual_seed(5)
    corners, labels = _box_prompts(spec.input_px, gen)
    pts = torch.rand(3, 2, 2, generator=gen) * spec.input_px
    pt_labels = torch.tensor([[1.0, 0.0]] * 3)
    with torch.no_grad():
        sparse, dense = pe(None, corners.reshape(3, 4), None)
        assert torch.equal(sparse, pe.embed_points(corners, labels))
        assert torch.equal(dense, pe.no_mask_dense().expand(3, -1, -1, -1))
        sparse, _ = pe((pts, pt_labels), None, None)
        padded = torch.cat([pts, torch.zeros(3, 1, 2)], 1)
        padded_labels = torch.cat([pt_labels, -torch.ones(3, 1)], 1)
        assert torch.equal(sparse, pe.embed_points(padded, padded_labels))
        assert pe.get_dense_pe().shape == (1, spec.embed_dim, *spec.embed_hw)


def test_window_partition_roundtrip_with_padding():
    x = torch.randn(2, 5, 7, 3)
    windows, padded = window_partition(x, 3, (5, 7))
    assert windows.shape == (2 * 2 * 3, 3, 3, 3) and padded == (6, 9)
    assert torch.equal(windows[0], x[0, :3, :3])
    assert torch.equal(window_unpartition(windows, 3, padded, (5, 7)), x)


def test_relative_offset_index_matches_first_appearance_order():
    """Biases are numbered by first appearance of each |dy|,|dx| offset over row-major pairs."""
    window = 4
    points = list(itertools.product(range(window), range(window)))
    seen: dict[tuple[int, int], int] = {}
    expected = [[seen.setdefault((abs(a[0] - b[0]), abs(a[1] - b[1])), len(seen)) for b in points]
                for a in points]
    assert torch.equal(relative_offset_index(window), torch.tensor(expected))


def test_inconsistent_spec_is_config_error():
    spec = get_model("test-tinyvit")
    three_stages = dataclasses.replace(spec.encoder, embed_dims=(16, 24, 32), depths=(1, 1, 1),
                                       num_heads=(1, 2, 2), window_sizes=(4, 4, 4))
    with pytest.raises(ConfigError, match="embed_hw"):  # a 32×32 grid, not the spec's 16×16
        build_sam(dataclasses.replace(spec, encoder=three_stages))
    with pytest.raises(ConfigError, match="img_size"):
        build_sam(dataclasses.replace(spec, encoder=dataclasses.replace(spec.encoder, img_size=96)))


def test_build_is_seeded():
    spec = get_model("test-tinyvit")
    key = "mask_decoder.iou_token.weight"
    a, b = build_sam(spec).state_dict()[key], build_sam(spec).state_dict()[key]
    c = build_sam(spec, seed=1).state_dict()[key]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_mobilesam_checkpoint_layout():
    sd = build_sam(get_model("mobilesam")).state_dict()
    assert "image_encoder.norm_head.weight" in sd
    assert sd["image_encoder.head.weight"].shape == (1000, 320)
    assert sd["image_encoder.patch_embed.seq.0.c.weight"].shape == (32, 3, 3, 3)
    assert sd["image_encoder.layers.2.downsample.conv2.c.weight"].shape == (320, 1, 3, 3)
    assert not any("attention_bias_idxs" in k for k in sd)  # non-persistent, as in checkpoints


def test_vit_b_checkpoint_layout_on_meta():
    with torch.device("meta"):
        sam = build_sam(get_model("sam-vit-b"))
    sd = sam.state_dict()
    # segment-anything's sam_vit_b has 314 tensors (pixel_mean/std are not persistent).
    assert len(sd) == 314
    assert sd["image_encoder.blocks.2.attn.rel_pos_h"].shape == (2 * 64 - 1, 64)
    assert sd["image_encoder.blocks.0.attn.rel_pos_h"].shape == (27, 64)
    assert sd["image_encoder.pos_embed"].shape == (1, 64, 64, 768)
    assert sd["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"].shape == (2, 128)


# -- real LiteMedSAM weights ------------------------------------------------------------------


@pytest.fixture(scope="module")
def litemedsam():
    from wsisam.export.weights import find_wheel_weights, load_checkpoint, load_weights

    spec = get_model("litemedsam")
    try:
        path = find_wheel_weights(spec, spec.weights["sam"])
    except WeightsError as exc:
        pytest.skip(f"LiteMedSAM weights absent: {exc}")
    sam = build_sam(spec)
    report = load_weights(sam, load_checkpoint(path), spec)
    return spec, sam, report


def test_litemedsam_strict_load(litemedsam):
    _, sam, report = litemedsam
    assert report.ok and not report.ignored
    assert len(sam.state_dict()) == 435


def test_litemedsam_box_mask_on_real_tissue(litemedsam, cmu_slide):
    openslide = pytest.importorskip("openslide")
    spec, sam, _ = litemedsam
    with openslide.OpenSlide(str(cmu_slide)) as slide:
        rgb = np.asarray(slide.read_region((1000, 1000), 0, (256, 256)).convert("RGB"))
    pre = spec.preprocess
    x = (rgb.astype(np.float32) - np.float32(pre.pixel_mean)) / np.float32(pre.pixel_std)
    image = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))
    x0, y0, x1, y1 = 64, 64, 192, 192
    with torch.no_grad():
        box = torch.tensor([[[x0, y0], [x1, y1]]], dtype=torch.float32)
        masks, iou = sam.decode(sam.encode(image), box, torch.tensor([[2.0, 3.0]]))
    assert masks.shape == (1, 4, *spec.mask_hw) and torch.isfinite(iou).all()
    fg = masks[0, 0].numpy() > 0  # token 0: SAM's single-mask output for a box
    scale = spec.mask_hw[0] / spec.input_px
    inside = fg[int(y0 * scale):int(y1 * scale), int(x0 * scale):int(x1 * scale)]
    assert 0.02 < inside.mean() < 0.98, f"box mask covers {inside.mean():.3f} of the box"
    assert inside.sum() >= 0.9 * fg.sum(), "the box mask should lie mostly inside the box"
