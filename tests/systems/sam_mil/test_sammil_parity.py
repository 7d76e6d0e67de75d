"""SAM-MIL parity: the ONNX graphs (through the one export driver) against torch references
written from the released code — features ≤ 1e-4, slide logits ≤ 1e-5, bags of 10 and 20,000
instances — and the exported modules against those references at the real sizes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="parity needs the export extra (torch)")

from wsisam import registry  # noqa: E402


def test_export_parity_features_and_slide_logits(sammil_export):
    out, report = sammil_export
    parity = report["parity"]
    assert parity["failures"] == []
    rnd = parity["random"]
    assert rnd["mil_bags"] == [10, 20_000]
    assert rnd["features"]["max_abs"] <= 1e-4
    assert rnd["mil_logits"]["max_abs"] <= 1e-5
    assert rnd["mil_attention"]["max_abs"] <= 1e-5
    real = parity["real_tissue"]
    assert real["tiles"] == 2 and real["end_to_end_features"]["max_abs"] <= 1e-4
    assert real["end_to_end_mil_logits"]["max_abs"] <= 1e-5
    assert sorted(p.name for p in out.glob("*.onnx")) == [
        "decoder.onnx", "encoder.onnx", "features.onnx", "mil.onnx"]
    assert report["random_init"] is True


@pytest.mark.parametrize("n", [10, 20_000])
def test_real_size_abmil_matches_released_forward_test(n):
    """The exported ABMIL module (1024 → 512 → 128 → 1, predictor 512 → 2) against the
    functional ``forward_test`` written from the released code."""
    from wsisam.systems.sam_mil.model_torch import AbMil
    from wsisam.systems.sam_mil.reference import forward_test

    spec = registry.get_model("sam-mil")
    torch.manual_seed(n)
    mil = AbMil(spec.mil).eval()
    assert sum(p.numel() for p in mil.parameters()) == 591_490  # the released count
    bag = torch.randn(n, 1024)
    with torch.no_grad():
        logits, att = mil(bag)
        r_logits, r_att = forward_test(mil.state_dict(), bag[None])
    assert logits.shape == (1, 2) and att.shape == (n,)
    assert (logits - r_logits).abs().max() <= 1e-5
    assert (att - r_att[0]).abs().max() <= 1e-6
    assert abs(float(att.sum()) - 1) < 1e-4


def test_real_size_resnet50_baseline_matches_reference():
    """ResNet-50 to layer3 + GAP (1024-d) against the functional CLAM ``resnet50_baseline``."""
    from wsisam.systems.sam_mil.export import seeded_module
    from wsisam.systems.sam_mil.model_torch import ResNetBaseline
    from wsisam.systems.sam_mil.reference import resnet50_baseline

    torch.set_num_threads(1)
    spec = registry.get_model("sam-mil")
    net = seeded_module(spec, 1, lambda: ResNetBaseline(spec.resnet))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        got, ref = net(x), resnet50_baseline(net.state_dict(), spec.resnet, x)
    assert got.shape == (1, 1024)
    assert (got - ref).abs().max() <= 1e-4
