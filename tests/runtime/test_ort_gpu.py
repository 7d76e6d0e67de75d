"""ONNX Runtime GPU backends: provider options (pure), the install-conflict check, and (marked)
I/O binding with a user stream on a GPU machine."""

import numpy as np
import pytest

from wsisam.registry import get_model
from wsisam.runtime.backends.ort_gpu import (
    ort_install_conflict,
    provider_options,
    trt_ep_cache_dir,
)


def test_cuda_provider_options_carry_the_user_stream():
    g = get_model("test-tinyvit").encoder_graph()
    (cuda, opts), cpu = provider_options("ort-cuda", g, 1, 0x7F00)
    assert cuda == "CUDAExecutionProvider" and cpu == "CPUExecutionProvider"
    assert opts == {"device_id": "1", "user_compute_stream": str(0x7F00),
                    "has_user_compute_stream": "1"}
    (_, opts), _ = provider_options("ort-cuda", g, 0, None)
    assert "user_compute_stream" not in opts  # ORT treats 0/None as "use your own"


def test_tensorrt_ep_options_have_profiles_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("WSISAM_HOME", str(tmp_path))
    g = get_model("test-tinyvit").encoder_graph()
    (name, trt), (cuda, _), cpu = provider_options("ort-tensorrt", g, 0, 42)
    assert (name, cuda, cpu) == ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                                 "CPUExecutionProvider")
    assert trt["trt_profile_min_shapes"] == "image:1x3x64x64"
    assert trt["trt_profile_opt_shapes"] == "image:4x3x64x64"
    assert trt["trt_profile_max_shapes"] == "image:16x3x64x64"
    assert trt["trt_engine_cache_path"] == str(tmp_path / "ort-trt-cache") == str(
        trt_ep_cache_dir())
    assert trt["user_compute_stream"] == "42"


def test_install_conflict_check():
    from importlib import metadata

    installed = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.distribution(dist)
            installed.append(dist)
        except metadata.PackageNotFoundError:
            pass
    msg = ort_install_conflict()
    assert (msg is not None) == (len(installed) == 2)
    if msg:
        assert "pip uninstall -y onnxruntime onnxruntime-gpu" in msg


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["ort-cuda", "ort-tensorrt"])
def test_ort_gpu_io_binding_matches_cpu(tiny_model_dir, backend):
    import onnxruntime as ort

    from wsisam.runtime.backends.ort import OrtBackend
    from wsisam.runtime.backends.ort_gpu import OrtGpuBackend

    want = {"ort-cuda": "CUDAExecutionProvider", "ort-tensorrt": "TensorrtExecutionProvider"}
    if want[backend] not in ort.get_available_providers():
        pytest.skip(f"this onnxruntime has no {want[backend]} (install onnxruntime-gpu)")
    if backend == "ort-tensorrt":
        from wsisam.runtime.backends.select import trt_libs_loadable

        if not trt_libs_loadable():
            pytest.skip("ORT's TensorRT EP needs the full TensorRT libraries (libnvinfer)")
    g = get_model("test-tinyvit").encoder_graph()
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    with OrtGpuBackend(tiny_model_dir / "encoder.onnx", g, backend) as gpu, \
            OrtBackend(tiny_model_dir / "encoder.onnx", g) as cpu:
        t1, t2 = gpu.enqueue({"image": x}), gpu.enqueue({"image": x[:1]})
        a, b = gpu.wait(t1), gpu.wait(t2)
        ref = cpu.run({"image": x})["image_embeddings"]
        np.testing.assert_allclose(a["image_embeddings"], ref, atol=1e-3)
        np.testing.assert_allclose(b["image_embeddings"], ref[:1], atol=1e-3)
        assert gpu.describe()["providers"][0] == want[backend]
