"""EP-SAM: graphs vs a torch reference of the released code, whole-patch parity (same 50 points,
mask IoU), strict weights by role in the official layouts, a whole-slide run writing every
output, and one-line refusals."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from tests.conftest import CMU, need

torch = pytest.importorskip("torch", reason="EP-SAM export tests need torch (export extra)")
torch.set_num_threads(1)

from wsisam.errors import SlideError, WeightsError  # noqa: E402
from wsisam.export.weights import WeightsMismatchError  # noqa: E402
from wsisam.registry import get_model  # noqa: E402
from wsisam.systems.ep_sam.export import load_epsam  # noqa: E402
from wsisam.systems.ep_sam.model_torch import HighFrequency, ResNetAdl  # noqa: E402
from wsisam.systems.ep_sam.reference import fft_high_frequency, reference_patch  # noqa: E402
from wsisam.systems.ep_sam.spec import ResNetAdlArch  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from wsisam.export.run import run_export

    out = tmp_path_factory.mktemp("epsam") / "model"
    report = run_export("test-epsam", out, parity_slides=[need(CMU)], parity_tiles=2)
    return out, report


def test_high_frequency_closed_form_matches_fft():
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    got = HighFrequency(64)(x)
    assert (got - fft_high_frequency(x.double()).float()).abs().max() <= 1e-5


def test_resnet50_adl_has_the_released_320_keys_with_gaps():
    with torch.device("meta"):
        sd = ResNetAdl(ResNetAdlArch()).state_dict()
    assert len(sd) == 320 and tuple(sd["conv1.weight"].shape) == (64, 4, 7, 7)
    assert tuple(sd["fc.weight"].shape) == (1, 2048)
    assert sorted({k.split(".")[1] for k in sd if k.startswith("layer3.")}) == list("023456")
    assert sorted({k.split(".")[1] for k in sd if k.startswith("layer4.")}) == list("023")


def test_export_parity_logits_cams_and_patch_chain(exported):
    _, report = exported
    par = report["parity"]
    assert par["failures"] == []
    assert par["random"]["logits"]["max_abs"] <= 1e-4
    assert par["random"]["cam"]["max_abs"] <= 1e-4
    assert par["real_tissue"]["same_points"] == par["real_tissue"]["tiles"] == 2
    assert par["real_tissue"]["end_to_end_logits"]["mask_iou_min"] >= 0.999
    assert report["random_init"] is True or report.get("manifest", {}).get("random_init", True)


def test_whole_patch_parity_against_the_reference_pipeline(exported):
    """ORT graphs + numpy host side vs the torch reference of the released inference (its own
    CAM post-processing in torch): the same 50 points and the same mask."""
    from wsisam.runtime.slide import open_slide, read_region_at
    from wsisam.systems.ep_sam.runtime import EpSamRuntime

    model_dir, _ = exported
    spec = get_model("test-epsam")
    model, _ = load_epsam(spec, {}, random_init=True)
    with open_slide(need(CMU)) as reader:
        patches = [read_region_at(reader, (x, y, x + 128, y + 128), 128)
                   for x, y in ((1000, 1500), (1400, 900), (600, 2000))]
    with EpSamRuntime.open(model_dir, backend="ort-cpu") as rt:
        for rgb in patches:
            ref = reference_patch(model, rgb)
            got = rt.patch(rgb)
            assert got.points.shape == ref["points"].shape
            assert np.array_equal(got.points, ref["points"])
            assert np.array_equal(got.cam_mask, ref["cam_mask"])
            inter = np.logical_and(got.mask, ref["mask"]).sum()
            union = np.logical_or(got.mask, ref["mask"]).sum()
            assert union == 0 or inter / union >= 0.999
            assert abs(got.prob - float(ref["prob"])) <= 1e-5


def _save_official(model, tmp_path, wrap_decoder=True):
    paths = {"sam": tmp_path / "sam_vit_b_01ec64.pth",
             "classifier": tmp_path / "camelyon17_resnet_adl.pth",
             "decoder": tmp_path / "camelyon17_decoder_iter3.pth"}
    torch.save(model.sam.state_dict(), paths["sam"])
    torch.save(model.classifier.state_dict(), paths["classifier"])
    dec = {f"mask_decoder.{k}": v for k, v in model.sam.mask_decoder.state_dict().items()}
    torch.save({"model": dec} if wrap_decoder else dec, paths["decoder"])
    return paths


def test_round_trip_official_layouts_and_strict_errors(tmp_path):
    spec = get_model("test-epsam")
    src, _ = load_epsam(spec, {}, random_init=True)
    with torch.no_grad():  # a fine-tuned decoder differs from the base SAM's
        for p in src.sam.mask_decoder.parameters():
            p.add_(0.01)
    paths = _save_official(src, tmp_path)
    base = dict(paths)
    torch.save(load_epsam(spec, {}, random_init=True)[0].sam.state_dict(), base["sam"])
    got, prov = load_epsam(spec, paths, random_init=False)
    assert prov["random_parts"] == [] and prov["roles"]["classifier"]["keys"] == len(
        src.classifier.state_dict())
    for a, b in ((src.classifier, got.classifier), (src.sam.mask_decoder, got.sam.mask_decoder)):
        for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(v, w), k

    sd = src.classifier.state_dict()
    bad = dict(sd)
    bad["layer4.1.conv1.weight"] = bad.pop("layer4.2.conv1.weight")  # an ADL gap filled
    torch.save(bad, tmp_path / "badkey.pth")
    with pytest.raises(WeightsMismatchError) as e:
        load_epsam(spec, {**paths, "classifier": tmp_path / "badkey.pth"}, False)
    assert "layer4.1.conv1.weight" in str(e.value) and "\n" not in str(e.value)
    bad = dict(sd)
    bad["fc.weight"] = torch.zeros(2, bad["fc.weight"].shape[1])
    torch.save(bad, tmp_path / "badshape.pth")
    with pytest.raises(WeightsMismatchError, match="fc.weight"):
        load_epsam(spec, {**paths, "classifier": tmp_path / "badshape.pth"}, False)


def test_classifier_checkpoint_given_as_decoder_is_one_line(tmp_path):
    spec = get_model("test-epsam")
    paths = _save_official(load_epsam(spec, {}, random_init=True)[0], tmp_path)
    with pytest.raises(WeightsError) as e:
        load_epsam(spec, {**paths, "decoder": paths["classifier"]}, False)
    msg = str(e.value)
    assert "classifier" in msg and "--weights classifier=" in msg and "\n" not in msg


def test_whole_slide_run_writes_every_output(exported, tmp_path):
    import tifffile

    from wsisam.runtime import RunConfig, run_slide

    model_dir, _ = exported
    # threshold 0: random weights give p ≈ 0.5 either side, so every patch goes through SAM
    res = run_slide(RunConfig(slide=need(CMU), out_dir=tmp_path / "out", model_dir=model_dir,
                              backend="ort-cpu", options={"threshold": 0.0}))
    rep = res.report
    assert rep["model"]["random_init"] is True and rep["model"]["system"] == "ep_sam"
    assert set(res.outputs) == {"geojson", "mask", "overlay", "heatmap", "heatmap_geojson",
                                "report"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in res.outputs.values())
    pt = rep["patches"]
    assert pt["classified"] == pt["planned"] > 50 and pt["segmented"] == pt["classified"]
    assert rep["slide_result"]["tumour_area_mm2"] > 0
    assert 0 < rep["throughput"]["classifier_share"] < 1
    heat = json.loads(res.outputs["heatmap_geojson"].read_text())["features"]
    assert len(heat) == pt["classified"]
    assert all(0 <= f["properties"]["measurements"]["tumour_probability"] <= 1 for f in heat)
    from shapely.geometry import shape
    tum = [shape(f["geometry"]) for f in json.loads(res.outputs["geojson"].read_text())[
        "features"] if f["geometry"]]
    assert tum and len(tum) == rep["slide_result"]["tumour_regions"]
    # merged across patches: no two regions share an edge (a seam would; touching at a corner
    # pixel is two regions)
    from shapely.strtree import STRtree
    tree = STRtree(tum)
    for i, g in enumerate(tum):
        for j in tree.query(g):
            assert j == i or g.intersection(tum[j]).length == 0
    label = tifffile.imread(res.outputs["mask"])
    assert label.max() == 1 and label.dtype == np.uint8
    saved = json.loads(res.outputs["report"].read_text())
    assert saved["model"]["random_init"] is True


def test_slide_smaller_than_one_patch_is_one_line(exported, tmp_path):
    import tifffile

    from wsisam.cli import run_main

    model_dir, _ = exported
    tiny = tmp_path / "tiny.tif"
    img = np.full((64, 64, 3), 180, np.uint8)
    tifffile.imwrite(tiny, img, tile=(16, 16), photometric="rgb", compression="zlib")
    out = tmp_path / "out"
    old = sys.argv
    sys.argv = ["wsisam-run", str(tiny), "--model-dir", str(model_dir), "-o", str(out)]
    try:
        with pytest.raises(SystemExit) as e:
            run_main()
    finally:
        sys.argv = old
    assert e.value.code != 0
    assert not out.exists() or not any(p for p in out.iterdir() if not p.name.startswith("."))


def test_slide_smaller_than_one_patch_message(exported, tmp_path):
    import tifffile

    from wsisam.runtime import RunConfig, run_slide

    model_dir, _ = exported
    tiny = tmp_path / "tiny.tif"
    tifffile.imwrite(tiny, np.full((64, 64, 3), 180, np.uint8), tile=(16, 16),
                     photometric="rgb", compression="zlib")
    with pytest.raises(SlideError, match="smaller than one 128-px EP-SAM patch") as e:
        run_slide(RunConfig(slide=tiny, out_dir=tmp_path / "o", model_dir=model_dir,
                            backend="ort-cpu"))
    assert "\n" not in str(e.value)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("WSISAM_SLOW"), reason="slow: set WSISAM_SLOW=1")
def test_real_sized_random_parity():
    """ResNet-50 (512 px) + SAM ViT-B (1024 px), random weights: graphs vs reference ≤ 1e-4
    on logits and CAMs (torch-traced classifier graph vs the FFT reference)."""
    from wsisam.systems.ep_sam.reference import reference_classify

    spec = get_model("epsam")
    model, prov = load_epsam(spec, {}, random_init=True)
    x = torch.rand(2, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lg, cam = model.graph(x)
        rlg, rcam = reference_classify(model, x)
    assert (lg - rlg).abs().max() <= 1e-4 and (cam - rcam).abs().max() <= 1e-4
