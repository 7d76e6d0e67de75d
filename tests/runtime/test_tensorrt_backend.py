"""The native TensorRT backend and the cuda-python helpers: they import without TensorRT or
cuda-python, refuse in one line where those or a GPU are missing (before any TensorRT object
exists), and (marked) run on a GPU machine."""

import importlib.util
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from tests.test_cli import assert_one_line_error, box_file
from wsisam.cli import run_main

GPU_MODULES = ["wsisam.runtime.backends.cuda", "wsisam.runtime.backends.gpu_base",
               "wsisam.runtime.backends.slots", "wsisam.runtime.backends.tensorrt",
               "wsisam.runtime.backends.ort_gpu", "wsisam.runtime.backends.select",
               "wsisam.engines.tensorrt_build",
               "wsisam.runtime.backends.profiles", "wsisam.cli"]


def run_py(code: str, block: tuple[str, ...]) -> subprocess.CompletedProcess:
    prelude = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in block)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=300)


def test_modules_import_without_tensorrt_cuda_or_torch():
    res = run_py(f"""
        import importlib
        for m in {GPU_MODULES!r}:
            importlib.import_module(m)
        print('ok')
    """, ("tensorrt", "tensorrt_lean", "cuda", "cuda.bindings", "torch"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_missing_cuda_python_is_one_dependency_line():
    res = run_py("""
        from wsisam.runtime.backends import cuda
        from wsisam.errors import DependencyError
        facts, why = cuda.probe_device()
        assert facts is None
        print(why)
        try:
            cuda.require_device()
        except DependencyError as exc:
            print('raised', exc)
    """, ("cuda", "cuda.bindings"))
    assert res.returncode == 0, res.stderr
    why, raised = res.stdout.strip().splitlines()
    assert "need cuda-python" in why and "pip install 'wsisam[tensorrt]'" in why
    assert raised.startswith("raised ")


def test_backend_tensorrt_here_is_one_clear_line(tmp_path, tiny_model_dir, cmu_slide):
    """`wsisam-run --backend tensorrt` where it cannot run: one Error line naming what is
    missing and how to install it, exit 1, no outputs."""
    from tests.conftest import _gpu_missing, _tensorrt_missing

    if not (_gpu_missing() or _tensorrt_missing(False)):
        pytest.skip("this machine has a GPU and TensorRT; the refusal is for machines without")
    out = tmp_path / "out"
    res = CliRunner().invoke(run_main, [str(cmu_slide), "--prompts", str(box_file(tmp_path)),
                                        "--model-dir", str(tiny_model_dir), "--backend",
                                        "tensorrt", "-o", str(out)])
    assert_one_line_error(res, "backend tensorrt cannot run here: ")
    line = res.stderr.strip().splitlines()[-1]
    if importlib.util.find_spec("cuda") is None:
        assert "cuda-python is not installed" in line
    if _tensorrt_missing(False):
        assert "TensorRT (tensorrt_lean or tensorrt) is not installed" in line
        assert "install with: pip install 'wsisam[tensorrt]'" in line
    assert f"no TensorRT plans in {tiny_model_dir / 'tensorrt'}" in line
    assert f"wsisam-build {tiny_model_dir}" in line
    assert not out.exists() or not list(out.iterdir())


def test_no_gpu_with_lean_runtime_installed_exits_cleanly(tiny_model_dir):
    """With cuda-python and tensorrt_lean installed but no GPU the backend refuses before any
    TensorRT object exists, and the interpreter exits normally (a lean Runtime created without
    a GPU logs CUDA error 35 and crashes at exit)."""
    if importlib.util.find_spec("tensorrt_lean") is None or importlib.util.find_spec(
            "cuda") is None:
        pytest.skip("needs tensorrt_lean and cuda-python installed (pip install "
                    "'wsisam[tensorrt]') on a machine without a GPU")
    from tests.conftest import _gpu_missing

    if not _gpu_missing():
        pytest.skip("this machine has a GPU")
    res = run_py(f"""
        from pathlib import Path
        from wsisam.systems.sam.runtime import SamRuntime
        from wsisam.errors import WsisamError
        import tensorrt_lean
        try:
            SamRuntime.open(Path({str(tiny_model_dir)!r}), 'tensorrt')
        except WsisamError as exc:
            print(exc)
    """, ())
    assert res.returncode == 0, (res.returncode, res.stderr)
    assert "no CUDA device" in res.stdout


def test_profile_and_shape_helpers():
    from wsisam.errors import ConfigError
    from wsisam.registry import get_model
    from wsisam.runtime.backends.gpu_base import check_profile, feed_axes, resolve_shape

    g = get_model("test-tinyvit").decoder_graph()
    shapes = {"image_embeddings": (1, 32, 16, 16), "point_coords": (5, 2, 2),
              "point_labels": (5, 2)}
    axes = feed_axes(g, shapes)
    assert axes == {"num_prompts": 5, "num_points": 2}
    assert [resolve_shape(t, axes) for t in g.outputs] == [(5, 4, 64, 64), (5, 4)]
    check_profile(g, shapes)
    with pytest.raises(ConfigError, match=r"outside the optimisation profile \[1, 1, 2\]"):
        check_profile(g, {**shapes, "point_coords": (300, 2, 2), "point_labels": (300, 2)})
    with pytest.raises(ConfigError, match="axis 'num_prompts' is 5 in one input and 4"):
        feed_axes(g, {**shapes, "point_labels": (4, 2)})


def test_device_tensor_sizes():
    from wsisam.runtime.backends.gpu_base import DeviceTensor

    t = DeviceTensor(1000, (4, 2, 8), np.float32)
    assert t.nbytes == 4 * 2 * 8 * 4 and t.ndim == 3


@pytest.mark.gpu
@pytest.mark.tensorrt(builder=True)
def test_tensorrt_backend_async_matches_ort(tmp_path, tiny_model_dir):
    """Plans of the tiny model: enqueue/wait with two slots in flight, device-resident encoder
    outputs feeding the decoder, CUDA-graph replay; all equal ONNX Runtime on the CPU."""
    import shutil

    from wsisam.engines.tensorrt_build import BuildConfig, build_plans
    from wsisam.registry import get_model
    from wsisam.runtime.backends.ort import OrtBackend
    from wsisam.runtime.backends.tensorrt import TensorRTBackend

    mdir = tmp_path / "m"
    shutil.copytree(tiny_model_dir, mdir)
    build_plans(mdir, config=BuildConfig(verify=False))
    spec = get_model("test-tinyvit")
    g = spec.graphs()
    rng = np.random.default_rng(0)
    images = [rng.standard_normal((2, 3, 64, 64)).astype(np.float32) for _ in range(4)]
    with TensorRTBackend(mdir / "encoder.onnx", g["encoder"], cuda_graph=True) as enc, \
            TensorRTBackend(mdir / "decoder.onnx", g["decoder"]) as dec, \
            OrtBackend(mdir / "encoder.onnx", g["encoder"]) as ref_enc, \
            OrtBackend(mdir / "decoder.onnx", g["decoder"]) as ref_dec:
        tickets = [enc.enqueue({"image": im}) for im in images[:2]]
        assert not enc.free_slot()
        outs = [enc.wait(t) for t in tickets]
        for im, out in zip(images[:2], outs):
            ref = ref_enc.run({"image": im})["image_embeddings"]
            np.testing.assert_allclose(out["image_embeddings"], ref, atol=1e-3)
        coords = rng.uniform(0, 64, (3, 2, 2)).astype(np.float32)
        labels = np.tile(np.array([[2, 3]], np.float32), (3, 1))
        for im in images:  # the stage pipeline's synchronous calls, each on its own streams
            emb = enc.run({"image": im[:1]})["image_embeddings"]
            got = dec.run({"image_embeddings": emb, "point_coords": coords,
                           "point_labels": labels})
            ref = ref_dec.run({"image_embeddings": ref_enc.run({"image": im[:1]})[
                "image_embeddings"], "point_coords": coords, "point_labels": labels})
            np.testing.assert_allclose(got["low_res_masks"], ref["low_res_masks"], atol=1e-2)
        assert enc.describe()["cuda_graph"].startswith("on")
