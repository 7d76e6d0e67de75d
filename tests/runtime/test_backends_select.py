"""``--backend auto``: the choice is a pure function of what the machine has, with the reason."""

import pytest

from wsisam.errors import ConfigError
from wsisam.runtime.backends import BACKENDS, create_backend
from wsisam.runtime.backends.select import Facts, choose_backend, gather_facts

GPU = dict(device="NVIDIA L4", device_known=True, device_reason="")
NO_GPU = dict(device=None, device_known=True, device_reason="no CUDA device: driver says 0")
ORT_GPU = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def test_tensorrt_is_a_backend():
    assert BACKENDS == ("auto", "ort-cpu", "ort-cuda", "ort-tensorrt", "tensorrt")


def test_loadable_plans_win():
    name, why = choose_backend("auto", Facts(plan_problems=(), providers=ORT_GPU, **GPU))
    assert name == "tensorrt" and "plans match this GPU (NVIDIA L4)" in why


def test_unloadable_plans_fall_back_to_ort_tensorrt_then_cuda():
    problems = ("the plans in X do not match: built on GPU 'A100', this is 'NVIDIA L4'",)
    f = Facts(plan_problems=problems, providers=ORT_GPU, trt_libs=True, **GPU)
    name, why = choose_backend("auto", f)
    assert name == "ort-tensorrt"
    assert "TensorrtExecutionProvider on NVIDIA L4" in why and "built on GPU 'A100'" in why
    # the lean wheels do not give ORT's TensorRT EP its libnvinfer: CUDA EP, saying why
    name, why = choose_backend("auto", Facts(plan_problems=problems, providers=ORT_GPU,
                                             trt_libs=False, **GPU))
    assert name == "ort-cuda" and "TensorRT libraries (libnvinfer) not found" in why


def test_no_device_means_cpu_even_with_ort_gpu_installed():
    name, why = choose_backend("auto", Facts(providers=ORT_GPU, trt_libs=True, **NO_GPU))
    assert name == "ort-cpu"
    assert why.startswith("auto: CPU (") and "ORT CUDA EP: no CUDA device" in why


def test_without_cuda_python_ort_gpu_providers_are_tried_on_trust():
    f = Facts(providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    name, why = choose_backend("auto", f)
    assert name == "ort-cuda" and "device not checked: cuda-python not installed" in why


def test_cpu_only_machine():
    name, why = choose_backend("auto", Facts(plan_problems=("no TensorRT plans in M/tensorrt",)))
    assert name == "ort-cpu"
    assert why == ("auto: CPU (TensorRT plans: no TensorRT plans in M/tensorrt; no ORT GPU "
                   "execution provider installed)")


@pytest.mark.parametrize("name", ["ort-cpu", "ort-cuda", "ort-tensorrt", "tensorrt"])
def test_explicit_requests_are_honoured(name):
    assert choose_backend(name, Facts(plan_problems=(), **GPU)) == (name, f"requested {name}")


def test_unknown_backend():
    with pytest.raises(ConfigError, match="unknown backend 'cuda'"):
        create_backend("cuda", "x/encoder.onnx", None)


def test_auto_on_this_machine_records_why(tiny_model_dir):
    """Whatever this machine has, auto picks a backend that can run and says why."""
    from wsisam.systems.sam.runtime import SamRuntime

    with SamRuntime.open(tiny_model_dir, "auto") as rt:
        d = rt.describe()
    assert d["choice"].startswith("auto: ")
    if d["backend"] == "ort-cpu":
        assert "TensorRT plans:" in d["choice"]
        assert "wsisam-build" in d["choice"]  # no plans here: the fix is named


def test_gather_facts_without_plans(tiny_model_dir):
    f = gather_facts(tiny_model_dir, None, ["encoder"])
    assert any("no TensorRT plans in" in p for p in f.plan_problems)
    assert "CPUExecutionProvider" in f.providers
    assert not any(p.startswith("install with") for p in f.plan_problems)
