"""SAM-MIL weights: state dicts in the official layouts (written here) load strictly and round
trip; the MHIM-MIL init checkpoints (``online_encoder.attention.*``), a selfattn head and a
feature checkpoint of another architecture are refused in one line naming the difference."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="weights loading needs the export extra (torch)")

from wsisam import registry  # noqa: E402
from wsisam.errors import WeightsError  # noqa: E402


@pytest.fixture(scope="module")
def spec():
    return registry.get_model("sam-mil")


def _official_mil(spec):
    from wsisam.systems.sam_mil.model_torch import AbMil

    torch.manual_seed(3)
    return AbMil(spec.mil).state_dict()


def _torchvision_resnet50(spec):
    """A full torchvision ``resnet50`` layout: our layer1..3 keys plus layer4.* and fc.*."""
    from wsisam.systems.sam_mil.model_torch import Bottleneck, ResNetBaseline

    torch.manual_seed(4)
    state = ResNetBaseline(spec.resnet).state_dict()
    layer4 = torch.nn.Sequential(Bottleneck(1024, 512, 2), Bottleneck(2048, 512, 1),
                                 Bottleneck(2048, 512, 1))
    state.update({f"layer4.{k}": v for k, v in layer4.state_dict().items()})
    state.update({"fc.weight": torch.randn(1000, 2048), "fc.bias": torch.randn(1000)})
    return state


def test_official_layouts_load_strictly_and_round_trip(spec, tmp_path):
    from wsisam.systems.sam_mil.export import load_role
    from wsisam.systems.sam_mil.model_torch import AbMil, ResNetBaseline

    mil_sd, feat_sd = _official_mil(spec), _torchvision_resnet50(spec)
    assert {"patch_to_emb.0.weight", "patch_to_emb.0.bias",
            "online_encoder.attn_model.attention.attention.0.weight",
            "online_encoder.attn_model.attention.attention.2.weight", "predictor.weight",
            "predictor.bias"} == set(mil_sd)
    ckpt = tmp_path / "fold_0_model_best_auc.pt"
    torch.save({"model": mil_sd, "teacher": mil_sd}, ckpt)  # main.py's layout
    feat = tmp_path / "resnet50-11ad3fa6.pth"
    torch.save(feat_sd, feat)
    mil, net = AbMil(spec.mil), ResNetBaseline(spec.resnet)
    prov_mil = load_role(spec, "mil", mil, ckpt, False)
    prov_feat = load_role(spec, "features", net, feat, False)
    assert prov_mil["source"] == "file" and prov_mil["ignored_keys"] == []
    assert all(k.startswith(("layer4.", "fc.")) for k in prov_feat["ignored_keys"])
    assert len(prov_feat["ignored_keys"]) == sum(k.startswith(("layer4.", "fc."))
                                                 for k in feat_sd)
    for k, v in mil.state_dict().items():
        assert torch.equal(v, mil_sd[k])
    for k, v in net.state_dict().items():
        assert torch.equal(v, feat_sd[k])


def test_mhim_init_checkpoint_is_refused_naming_the_key_difference(spec, tmp_path):
    from wsisam.systems.sam_mil.export import load_role
    from wsisam.systems.sam_mil.model_torch import AbMil

    mhim = {k.replace("online_encoder.attn_model.attention.", "online_encoder.attention."): v
            for k, v in _official_mil(spec).items()}
    path = tmp_path / "mhim_abmil_init.pth"
    torch.save(mhim, path)
    with pytest.raises(WeightsError) as err:
        load_role(spec, "mil", AbMil(spec.mil), path, False)
    msg = str(err.value)
    assert "\n" not in msg
    assert "online_encoder.attn_model.attention.attention.0.weight" in msg  # missing
    assert "online_encoder.attention.attention.0.weight" in msg  # unexpected
    assert "MHIM" in msg


def test_selfattn_head_is_refused_in_one_line(spec, tmp_path):
    from wsisam.systems.sam_mil.export import load_role
    from wsisam.systems.sam_mil.model_torch import AbMil

    path = tmp_path / "fold_0_model_best_auc.pt"
    torch.save({"model": {"online_encoder.cls_token": torch.zeros(1, 1, 512),
                          "online_encoder.layer1.attn.to_qkv.weight": torch.zeros(1536, 512)}},
               path)
    with pytest.raises(WeightsError, match="selfattn.*depends on the number of instances"):
        load_role(spec, "mil", AbMil(spec.mil), path, False)


def test_feature_checkpoint_of_another_architecture_is_refused(spec, tmp_path):
    """A ResNet-18-layout checkpoint (basic blocks: no conv3, 64-wide layer1) as features:
    ``wsisam-export`` prints one ``Error:`` line naming the key differences, writes nothing."""
    from click.testing import CliRunner

    from wsisam.cli import export_main

    sd = {"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.zeros(64),
          "layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3),
          "layer1.0.conv2.weight": torch.zeros(64, 64, 3, 3), "fc.weight": torch.zeros(1000, 512)}
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    res = CliRunner().invoke(export_main, ["--model", "sam-mil", "--weights", f"features={path}",
                                           "--random-init", "-o", str(tmp_path / "out")])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code != 0 and len(lines) == 1, res.output
    msg = lines[0]
    assert msg.startswith("Error: features weights resnet18.pth")
    assert "shape mismatches" in msg and "layer1.0.conv1.weight" in msg
    assert not (tmp_path / "out").exists()
