"""WSI-SAM export side: registry graphs, the batched torch model against the step-by-step
reference of the released inference, structure of the fusion, official head-file loading, and the
exported graphs against the reference (ONNX Runtime)."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="WSI-SAM export tests need the export extra (torch)")

from wsisam.artifacts import read_manifest  # noqa: E402
from wsisam.errors import ConfigError, WeightsError  # noqa: E402
from wsisam.systems.wsi_sam.model_torch import (  # noqa: E402
    EXTRA_PREFIXES, WsiSam, build_wsisam, extra_keys)
from wsisam.systems.wsi_sam.reference import (  # noqa: E402
    reference_decode, reference_inference, released_lr_box)
from wsisam.artifacts import REPORT_NAME
from wsisam.export.run import run_export  # noqa: E402
from wsisam.systems.wsi_sam.weights import load_wsisam  # noqa: E402
from wsisam.registry import get_model  # noqa: E402
from wsisam.systems.wsi_sam.spec import WsiSamArch, WsiSamSpec  # noqa: E402

TINY = ("test-wsisam", "test-wsisam-vit")


def _distinct_bases(model: WsiSam, seed: int = 5) -> WsiSam:
    """Give the two heads base decoder weights that differ from each other and from SAM's, so a
    swapped or shared weight would show (trained heads' bases are frozen copies; random tests
    must not rely on that)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in (model.decoder_high, model.decoder_low):
            for name, p in head.named_parameters():
                if not name.startswith(EXTRA_PREFIXES):
                    p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model


def _prompts(n: int, gen: torch.Generator) -> list[tuple[str, torch.Tensor, torch.Tensor,
                                                          torch.Tensor]]:
    """(kind, HR coords, LR coords, labels): concentric boxes (released mapping), point sets with
    SAM's padding point, a box after points, boxes at the shared layout's corner offsets."""
    boxes = torch.sort(torch.floor(torch.rand(3, 2, 2, generator=gen) * n), dim=1).values
    box_labels = torch.tensor([[2.0, 3.0]] * 3)
    pts = torch.rand(2, 3, 2, generator=gen) * n
    pts[:, 2] = 0
    pt_labels = torch.tensor([[1.0, 0.0, -1.0], [1.0, 1.0, -1.0]])
    mixed = torch.cat([pts[:, :2], boxes[:2]], dim=1)
    mixed_labels = torch.tensor([[1.0, 0.0, 2.0, 3.0]] * 2)
    corner = torch.tensor([[0.0, 0.0], [float(n), 0.0], [0.0, float(n)]]).unsqueeze(1)
    return [("boxes", boxes, released_lr_box(boxes, n), box_labels),
            ("points", pts, pts / 2 + n / 4, pt_labels),
            ("points+box", mixed, mixed / 2 + n / 4, mixed_labels),
            ("shared offsets", boxes, (boxes + corner) / 2, box_labels)]


@pytest.fixture(scope="module", params=TINY)
def tiny(request):
    spec = get_model(request.param)
    model = _distinct_bases(build_wsisam(spec))
    gen = torch.Generator().manual_seed(11)
    image = torch.randn(2, 3, spec.input_px, spec.input_px, generator=gen)
    with torch.no_grad():
        emb, interm_nhwc = model.sam.image_encoder.forward_with_interm(image)
    return spec, model, image, emb, interm_nhwc


def test_registry_graphs():
    for name, vit_dim in (("wsisam", 160), ("wsisam-vit-b", 768), ("wsisam-vit-h", 1280),
                          ("test-wsisam", 40), ("test-wsisam-vit", 48)):
        spec = get_model(name)
        assert spec.system == "wsi_sam" and spec.heads.vit_dim == vit_dim
        assert spec.lr_mpp == 2 * spec.mpp
        g = spec.graphs()
        enc, dec = g["encoder"], g["decoder"]
        h, w = spec.embed_hw
        assert enc.output_names == ["image_embeddings", "interm_embeddings"]
        assert enc.outputs[1].shape == ("batch", vit_dim, h, w)
        assert dec.input_names == ["hr_image_embeddings", "hr_interm_embeddings",
                                   "lr_image_embeddings", "hr_point_coords", "lr_point_coords",
                                   "point_labels"]
        assert dec.outputs[0].shape == ("num_prompts", 1, spec.input_px, spec.input_px)
        assert set(dec.profile) == {"num_prompts", "num_points"} and enc.profile["batch"]
    assert get_model("wsisam").input_px == 1024 and get_model("wsisam").mpp == 1.0
    with pytest.raises(ConfigError, match="vit_dim 160 != .* 768"):
        dataclasses.replace(get_model("wsisam-vit-b"), heads=WsiSamArch(vit_dim=160))


def test_interm_is_layers1_or_first_global_block(tiny):
    """The early feature: TinyViT ``layers[1]`` output, ViT first global-attention block output."""
    spec, model, image, _, interm_nhwc = tiny
    enc = model.sam.image_encoder
    seen = {}
    target = enc.layers[1] if hasattr(enc, "layers") else enc.blocks[min(enc.global_attn_indexes)]
    hook = target.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    with torch.no_grad():
        enc(image)
    hook.remove()
    out = seen["out"]
    out_nhwc = out.permute(0, 2, 3, 1) if hasattr(enc, "layers") else out
    assert torch.equal(out_nhwc, interm_nhwc)
    assert interm_nhwc.shape == (2, *spec.embed_hw, spec.heads.vit_dim)


@pytest.mark.parametrize("kind", ["boxes", "points", "points+box", "shared offsets"])
def test_batched_decode_matches_released_reference(tiny, kind):
    spec, model, _, emb, interm = tiny
    gen = torch.Generator().manual_seed(3)
    _, hc, lc, lab = next(p for p in _prompts(spec.input_px, gen) if p[0] == kind)
    with torch.no_grad():
        masks, iou = model.decode(emb[:1], interm[:1].permute(0, 3, 1, 2), emb[1:], hc, lc, lab)
    ref, ref_iou = reference_decode(model, emb[:1], interm[:1], emb[1:], interm[1:], hc, lc, lab)
    assert masks.shape == (len(lab), 1, spec.input_px, spec.input_px) and iou.shape == (len(lab), 1)
    assert (masks - ref).abs().max() <= 1e-5
    assert (iou - ref_iou).abs().max() <= 1e-6
    assert ref.std() > 1e-2 and (ref > 0).any() and (ref < 0).any()
    assert not torch.allclose(ref[0], ref[1])


def test_end_to_end_reference_is_encoder_then_decoder(tiny):
    spec, model, image, emb, interm = tiny
    box = torch.tensor([[3.0, 5.0, spec.input_px - 9.0, spec.input_px / 2]])
    whole, _ = reference_inference(model, image[:1], image[1:], box)
    hc = box.reshape(1, 2, 2)
    parts, _ = reference_decode(model, emb[:1], interm[:1], emb[1:], interm[1:], hc,
                                released_lr_box(hc, spec.input_px), torch.tensor([[2.0, 3.0]]))
    assert (whole - parts).abs().max() <= 1e-5


def _zero_hf_mlp(model: WsiSam) -> WsiSam:
    for head in (model.decoder_high, model.decoder_low):
        last = head.hf_mlp.layers[-1]
        last.weight.data.zero_()
        last.bias.data.zero_()
    return model


def test_zero_heads_give_sams_own_mask(tiny):
    """Structure: with both hf_mlp outputs zeroed the fused logits are SAM's token-0 mask of the HR
    head, upsampled. That mask is the plain SAM decoder's with the HR token as one more token: the
    extra token takes part in the transformer's attention, so it is not the mask SAM gives without
    it (checked below too)."""
    spec, model, _, emb, interm = tiny
    model = _zero_hf_mlp(build_wsisam(spec))  # heads' bases = the SAM decoder, as released
    gen = torch.Generator().manual_seed(4)
    _, hc, lc, lab = _prompts(spec.input_px, gen)[0]
    pe = model.sam.prompt_encoder
    with torch.no_grad():
        fused, _ = model.decode(emb[:1], interm[:1].permute(0, 3, 1, 2), emb[1:], hc, lc, lab)
        sparse = pe.embed_points(hc, lab)
        hf = model.decoder_high.hf_token.weight.expand(len(lab), 1, -1)
        with_token, _ = model.sam.mask_decoder.predict_masks(
            emb[:1], pe.get_dense_pe(), torch.cat([hf, sparse], 1), pe.no_mask_dense())
        plain, _ = model.sam.mask_decoder.predict_masks(emb[:1], pe.get_dense_pe(), sparse,
                                                        pe.no_mask_dense())
    n = spec.input_px
    up = torch.nn.functional.interpolate(with_token[:, :1], (n, n), mode="bilinear",
                                         align_corners=False)
    assert (fused - up).abs().max() <= 1e-5
    plain_up = torch.nn.functional.interpolate(plain[:, :1], (n, n), mode="bilinear",
                                               align_corners=False)
    assert (fused - plain_up).abs().max() > 1e-3, "the HR token should change SAM's own mask"


def test_lr_early_feature_cannot_affect_output(tiny):
    """The released fusion uses only the LR head's token vector: its HQ feature branch (and the
    LR early feature) never reaches the output, which is why the graph has no LR interm input."""
    spec, model, _, emb, interm = tiny
    gen = torch.Generator().manual_seed(8)
    _, hc, lc, lab = _prompts(spec.input_px, gen)[0]
    args = (model, emb[:1], interm[:1], emb[1:])
    a, _ = reference_decode(*args, interm[1:], hc, lc, lab)
    b, _ = reference_decode(*args, torch.randn(interm[1:].shape, generator=gen) * 10, hc, lc, lab)
    assert torch.equal(a, b)
    c, _ = reference_decode(model, emb[:1], interm[:1], emb[1:] * 0.5, interm[1:], hc, lc, lab)
    assert (a - c).abs().max() > 1e-4, "the LR embedding must matter"


# -- official head files -------------------------------------------------------------------


def _official_files(tmp_path, spec: WsiSamSpec, layout: str = "full", prefix: str = ""):
    """SAM checkpoint + net_high.pth/net_low.pth in the released layout, from reference modules."""
    model = _distinct_bases(build_wsisam(spec, seed=77), seed=9)
    torch.save(model.sam.state_dict(), tmp_path / "sam.pth")
    paths = []
    for role, head in (("high", model.decoder_high), ("low", model.decoder_low)):
        state = head.state_dict()
        if layout == "extras":
            state = {k: v for k, v in state.items() if k in extra_keys(head)}
        torch.save({"model": {prefix + k: v for k, v in state.items()}, "epoch": 12},
                   tmp_path / f"net_{role}.pth")
        paths.append(tmp_path / f"net_{role}.pth")
    return model, tmp_path / "sam.pth", tuple(paths)


@pytest.mark.parametrize("layout,prefix", [("full", ""), ("full", "module."), ("extras", "")])
def test_official_layout_round_trips(tmp_path, layout, prefix):
    spec = get_model("test-wsisam")
    src, sam_path, heads = _official_files(tmp_path, spec, layout, prefix)
    model, prov = load_wsisam(spec, sam_path, heads)
    got, want = model.state_dict(), src.state_dict()
    assert set(got) == set(want)
    if layout == "full":
        assert all(torch.equal(got[k], want[k]) for k in want)
        assert prov["heads"]["high"]["layout"] == "full (145 keys)"
        assert prov["heads"]["high"]["base_decoder"]["equal_to_sam_checkpoint"] is False
    else:  # extras only: the base decoder is the SAM checkpoint's
        for role in ("high", "low"):
            head = getattr(model, f"decoder_{role}")
            for k, v in head.state_dict().items():
                ref = (getattr(src, f"decoder_{role}").state_dict()[k] if k in extra_keys(head)
                       else src.sam.mask_decoder.state_dict()[k])
                assert torch.equal(v, ref), k
        assert prov["heads"]["low"]["layout"] == "extras only (25 keys)"
    assert prov["random_parts"] == [] and prov["source"] == "file"
    assert len(src.decoder_high.state_dict()) == 145 and len(extra_keys(src.decoder_high)) == 25


@pytest.mark.parametrize("layout,change,key,what", [
    ("full", "delete", "hf_mlp.layers.2.bias", "1 missing (hf_mlp.layers.2.bias)"),
    ("full", "add", "hf_token2.weight", "1 unexpected (hf_token2.weight)"),
    ("extras", "delete", "embedding_maskfeature.3.weight", "1 missing"),
    ("extras", "reshape", "compress_vit_feat.0.weight",
     "compress_vit_feat.0.weight file (768, 32, 2, 2) vs model (40, 32, 2, 2)"),
    ("full", "reshape", "transformer.layers.0.norm1.weight", "transformer.layers.0.norm1.weight"),
])
def test_wrong_head_key_or_shape_names_it(tmp_path, layout, change, key, what):
    spec = get_model("test-wsisam")
    _, sam_path, (high, low) = _official_files(tmp_path, spec, layout)
    ckpt = torch.load(low)
    state = ckpt["model"]
    if change == "delete":
        del state[key]
    elif change == "add":
        state[key] = torch.zeros(1, 32)
    else:
        state[key] = torch.zeros(768, *state[key].shape[1:]) if key.startswith("compress") \
            else torch.zeros(7)
    torch.save(ckpt, low)
    with pytest.raises(WeightsError) as exc:
        load_wsisam(spec, sam_path, (high, low))
    msg = str(exc.value)
    assert what in msg and key in msg and "net_low.pth" in msg and "low-resolution" in msg
    assert "\n" not in msg


def test_wrong_head_stops_export_without_output(tmp_path):
    spec = get_model("test-wsisam")
    _, sam_path, (high, low) = _official_files(tmp_path, spec)
    ckpt = torch.load(high)
    del ckpt["model"]["hf_token.weight"]
    torch.save(ckpt, high)
    with pytest.raises(WeightsError, match=r"net_high\.pth .*1 missing \(hf_token\.weight\)"):
        run_export("test-wsisam", tmp_path / "out", weights=sam_path, heads=(high, low))
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_heads_required_without_random_init(tmp_path):
    with pytest.raises(WeightsError, match="--weights mobile_sam.pt --heads net_high.pth"):
        run_export("wsisam", tmp_path / "a")
    with pytest.raises(WeightsError, match="--heads net_high.pth net_low.pth.*--random-init"):
        run_export("wsisam", tmp_path / "b", weights=tmp_path / "mobile_sam.pt")
    with pytest.raises(ConfigError, match="--heads sets the weight roles head_high and head_low"):
        run_export("test-tinyvit", tmp_path / "c", heads=(tmp_path / "h", tmp_path / "l"))
    with pytest.raises(ConfigError, match="either --heads or --random-init"):
        load_wsisam(get_model("wsisam"), None, (tmp_path / "h", tmp_path / "l"), random_init=True)
    assert list(tmp_path.iterdir()) == []


def test_random_init_is_recorded():
    spec = get_model("test-wsisam")
    _, prov = load_wsisam(spec)
    assert prov["random_parts"] == ["sam", "heads"]
    assert prov["heads"]["high"] == {"source": "random-init"}


# -- exported graphs -----------------------------------------------------------------------


def test_tiny_export_matches_reference(wsisam_tiny_dir):
    import onnx

    names = sorted(p.name for p in wsisam_tiny_dir.iterdir())
    assert names == ["decoder.onnx", "encoder.onnx", REPORT_NAME, "manifest.json"]
    report = json.loads((wsisam_tiny_dir / REPORT_NAME).read_text())
    parity = report["parity"]
    assert parity["failures"] == []
    for kind in ("random", "real_tissue"):
        res = parity[kind]
        if isinstance(res, str):
            assert kind == "real_tissue", res
            continue
        assert res["decoder_logits"]["max_abs"] <= 1e-4
        assert res["encoder"]["max_abs"] <= 1e-3 and res["interm_embeddings"]["max_abs"] <= 1e-3
    assert parity["random"]["decoder_logits"]["mask_iou_mean"] >= 0.99
    assert report["random_init"] is True and report["system_details"]["random_parts"] == ["sam", "heads"]
    manifest = read_manifest(wsisam_tiny_dir)
    assert manifest["random_init"] is True and manifest["system"] == "wsi_sam"
    dec = onnx.load(str(wsisam_tiny_dir / "decoder.onnx"))
    ops = {n.op_type for n in dec.graph.node}
    assert not ops & {"ScatterND", "NonZero"}, "prompt embedding must be arithmetic"
    assert [i.name for i in dec.graph.input] == get_model("test-wsisam").decoder_graph().input_names
    dims = [d.dim_param for d in dec.graph.input[3].type.tensor_type.shape.dim]
    assert dims[:2] == ["num_prompts", "num_points"] and dec.opset_import[0].version == 17


def test_onnx_decoder_batches_prompts(wsisam_tiny_dir):
    """N prompts in one call give what N one-prompt calls give (the real prompt axis)."""
    from wsisam.systems.wsi_sam.runtime import WsiSamRuntime

    spec = get_model("test-wsisam")
    rng = np.random.default_rng(0)
    h, w = spec.embed_hw
    emb = rng.standard_normal((2, spec.embed_dim, h, w)).astype(np.float32)
    interm = rng.standard_normal((1, spec.heads.vit_dim, h, w)).astype(np.float32)
    hc = np.sort(rng.uniform(0, spec.input_px, (5, 2, 2)), axis=1).astype(np.float32)
    lab = np.tile(np.float32([2, 3]), (5, 1))
    with WsiSamRuntime.open(wsisam_tiny_dir, backend="ort-cpu") as rt:
        rt.max_prompts = 2  # exercise chunking too
        masks, iou = rt.decode(emb[:1], interm, emb[1:], hc, hc / 2 + 32, lab)
        one = [rt.decode(emb[:1], interm, emb[1:], hc[i:i + 1], hc[i:i + 1] / 2 + 32, lab[:1])[0]
               for i in range(5)]
    assert masks.shape == (5, 1, 128, 128) and iou.shape == (5, 1)
    assert np.abs(masks - np.concatenate(one)).max() <= 1e-5


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("WSISAM_SLOW"),
                    reason="MobileSAM-sized WSI-SAM export (minutes on 2 cores): set WSISAM_SLOW=1")
def test_mobilesam_sized_export_parity(tmp_path):
    report = run_export("wsisam", tmp_path / "wsisam", random_init=True)
    parity = report["parity"]
    assert parity["failures"] == []
    assert parity["random"]["decoder_logits"]["max_abs"] <= 1e-4
    if isinstance(parity["real_tissue"], dict):
        assert parity["real_tissue"]["decoder_logits"]["max_abs"] <= 1e-4
    assert report["random_init"] is True
