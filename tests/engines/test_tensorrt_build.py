"""TensorRT plan building: profile shapes from the registry (pure), build options, the one-line
refusals where TensorRT or a GPU is missing, and (marked) a real build on a GPU machine."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from tests.test_cli import assert_one_line_error
from wsisam.cli import build_main
from wsisam.runtime.backends.profiles import (
    input_profiles,
    ort_trt_profile_options,
    output_max_shapes,
    shape_in_range,
    tensor_range,
)
from wsisam.engines.tensorrt_build import BuildConfig, profile_record, random_feed
from wsisam.errors import ConfigError
from wsisam.registry import TensorSpec, get_model, list_models


@pytest.mark.parametrize("name", list_models())
def test_profiles_of_every_registered_model(name):
    spec = get_model(name)
    for graph in spec.graphs().values():
        prof = input_profiles(graph)
        assert list(prof) == graph.input_names
        for t in graph.inputs:
            r = prof[t.name]
            for d, lo, opt, hi in zip(t.shape, r.min, r.opt, r.max):
                if isinstance(d, int):  # fixed dims stay as they are
                    assert lo == opt == hi == d
                else:  # dynamic dims take the registry's (min, opt, max)
                    assert (lo, opt, hi) == graph.profile[d]
        outs = output_max_shapes(graph)
        assert list(outs) == graph.output_names
        assert all(isinstance(d, int) and d >= 1 for s in outs.values() for d in s)
        assert profile_record(graph) == {n: r.as_lists() for n, r in prof.items()}


def test_sam_profile_values():
    """The encoder's batch axis and the decoder's prompt axes, as TensorRT will see them."""
    spec = get_model("litemedsam")
    enc = input_profiles(spec.encoder_graph())["image"]
    assert (enc.min, enc.opt, enc.max) == ((1, 3, 256, 256), (4, 3, 256, 256), (16, 3, 256, 256))
    dec = input_profiles(spec.decoder_graph())
    assert dec["image_embeddings"].max == (1, 256, 64, 64)
    assert (dec["point_coords"].min, dec["point_coords"].max) == ((1, 1, 2), (256, 64, 2))
    assert output_max_shapes(spec.decoder_graph())["low_res_masks"] == (256, 4, 256, 256)
    assert shape_in_range((3, 2, 2), dec["point_coords"])
    assert not shape_in_range((300, 2, 2), dec["point_coords"])


def test_ort_trt_ep_profile_strings():
    opts = ort_trt_profile_options(get_model("test-tinyvit").decoder_graph())
    assert opts["trt_profile_min_shapes"] == (
        "image_embeddings:1x32x16x16,point_coords:1x1x2,point_labels:1x1")
    assert opts["trt_profile_max_shapes"].endswith("point_labels:256x64")


def test_profile_errors_are_one_line():
    with pytest.raises(ConfigError, match="dynamic axis 'n' without a profile"):
        tensor_range(TensorSpec("x", "float32", ("n", 3)), {})
    with pytest.raises(ConfigError, match="1 <= min <= opt <= max"):
        tensor_range(TensorSpec("x", "float32", ("n",)), {"n": (4, 2, 8)})


def test_build_config_checks():
    with pytest.raises(ConfigError, match="--exclude-lean-runtime applies to version-compatible"):
        BuildConfig(exclude_lean_runtime=True)
    with pytest.raises(ConfigError, match="workspace must be positive"):
        BuildConfig(workspace_bytes=0)
    with pytest.raises(ConfigError, match="0..5"):
        BuildConfig(optimization_level=7)
    BuildConfig(version_compatible=True, exclude_lean_runtime=True)


def test_random_feed_keeps_prompts_in_the_input_frame():
    spec = get_model("test-tinyvit")
    g = spec.decoder_graph()
    shapes = {n: r.opt for n, r in input_profiles(g).items()}
    feed = random_feed(g, spec.input_px, np.random.default_rng(0), shapes)
    assert feed["point_coords"].shape == (16, 2, 2) and feed["point_coords"].dtype == np.float32
    assert 0 <= feed["point_coords"].min() and feed["point_coords"].max() < spec.input_px
    assert set(np.unique(feed["point_labels"])) <= {0.0, 1.0}


def test_build_without_tensorrt_is_one_line(tmp_path, tiny_model_dir):
    import importlib.util

    if importlib.util.find_spec("tensorrt") and importlib.util.find_spec("cuda"):
        pytest.skip("TensorRT and cuda-python are installed: the missing-dependency path is for "
                    "machines without them")
    res = CliRunner().invoke(build_main, [str(tiny_model_dir), "-o", str(tmp_path / "plans")])
    assert_one_line_error(res, "building TensorRT plans needs")
    assert "install on the GPU machine with: pip install tensorrt-cu12" in res.stderr
    assert not (tmp_path / "plans").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".plans")]


def test_build_option_misuse_is_one_line(tiny_model_dir):
    res = CliRunner().invoke(build_main, [str(tiny_model_dir), "--exclude-lean-runtime"])
    assert_one_line_error(res, "add --version-compatible")


def test_build_missing_model_dir_is_one_line(tmp_path):
    res = CliRunner().invoke(build_main, [str(tmp_path / "none")])
    assert_one_line_error(res, "model directory not found")


# --- on a GPU machine with the full TensorRT ----------------------------------------------------

@pytest.mark.gpu
@pytest.mark.tensorrt(builder=True)
@pytest.mark.parametrize("version_compatible", [False, True])
def test_build_and_run_plans(tmp_path, tiny_model_dir, version_compatible):
    """Build the tiny model's plans, run them, compare with ONNX Runtime on the CPU; a second
    build reuses the timing cache; a plans.json claiming another GPU is refused at load."""
    from wsisam.engines.tensorrt_build import build_plans
    from wsisam.errors import ArtifactError
    from wsisam.systems.sam.runtime import SamRuntime

    mdir = tmp_path / "m"
    shutil.copytree(tiny_model_dir, mdir)
    entry = build_plans(mdir, config=BuildConfig(version_compatible=version_compatible))
    pdir = mdir / "tensorrt"
    assert (pdir / "timing.cache").stat().st_size > 0
    assert entry["tensorrt"]["version_compatible"] is version_compatible
    for graph, rec in entry["parity_vs_ort_cpu"].items():
        assert rec["verified"], rec
        assert max(rec["max_abs"].values()) < 1e-2, (graph, rec)
    with SamRuntime.open(mdir, "auto") as rt:
        assert rt.describe()["backend"] == "tensorrt", rt.describe()["choice"]
    m = json.loads((pdir / "plans.json").read_text())
    m["gpu"]["name"] = "Some Other GPU"
    (pdir / "plans.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="built on GPU 'Some Other GPU'"):
        SamRuntime.open(mdir, "tensorrt")
    with SamRuntime.open(mdir, "auto") as rt:  # auto falls back and says why
        assert "built on GPU 'Some Other GPU'" in rt.describe()["choice"]
