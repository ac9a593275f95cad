"""Device and precision params: the helpers every compute stage uses."""

import pytest
import torch

from musicgen.device import autocast, autocast_dtype, inference_dtype, pick_device


def test_auto_is_cuda_when_present_else_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected
    assert pick_device("cpu") == torch.device("cpu")


def test_bad_device_names_are_refused_clearly():
    with pytest.raises(ValueError, match="device must be"):
        pick_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda")


def test_inference_precision_auto_is_fp32_on_cpu_and_half_on_cuda():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert inference_dtype("auto", cpu) is None
    assert inference_dtype("auto", cpu, fp16_safe=False) is None
    assert inference_dtype("auto", cuda) is torch.float16
    assert inference_dtype("bf16", cpu) is torch.bfloat16
    assert inference_dtype("fp32", cuda) is None


def test_fp16_is_refused_for_models_that_overflow_it():
    with pytest.raises(ValueError, match="overflow"):
        inference_dtype("fp16", torch.device("cpu"), fp16_safe=False)
    with pytest.raises(ValueError, match="precision must be"):
        inference_dtype("half", torch.device("cpu"))


def test_training_precision_auto():
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("auto", torch.device("cuda")) is torch.float16
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16


def test_autocast_none_computes_in_fp32_and_bf16_casts_matmuls():
    a = torch.randn(4, 4)
    with autocast(torch.device("cpu"), None):
        assert (a @ a).dtype is torch.float32
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert (a @ a).dtype is torch.bfloat16
