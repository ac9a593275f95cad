"""Device and precision params: the helpers every compute stage uses."""

import json
import os

import pytest
import torch

from musicgen import device as D
from musicgen.device import autocast, autocast_dtype, inference_dtype, pick_device


def test_auto_is_cuda_when_present_else_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected
    assert pick_device("cpu") == torch.device("cpu")


@pytest.fixture
def gpus(monkeypatch, tmp_path):
    """Three visible GPUs as torch reports them (CUDA needs no GPU here), free memory 1, 3, 2 GB;
    their lock files in ``tmp_path``. ``worker()`` starts another process's claim."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    props = [type("P", (), {"uuid": f"GPU-{i}"})() for i in range(3)]
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props[i])
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: ([1, 3, 2][i] << 30, 8 << 30))
    monkeypatch.setenv(D.GPU_LOCKS_ENV, str(tmp_path))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    claims = []

    def worker() -> dict:  # a new process: its own claim; the earlier ones keep their locks
        claims.append(D._claim)
        monkeypatch.setattr(D, "_claim", {})
        return claims[-1]

    monkeypatch.setattr(D, "_claim", {})
    yield worker
    for claim in claims + [D._claim]:
        if "lock" in claim:
            os.close(claim["lock"])


def test_auto_gives_each_process_its_own_gpu(gpus, monkeypatch, tmp_path):
    """The workers of ``dvc queue start -j 3`` on three GPUs: one GPU each, not all on GPU 0; a
    process keeps its GPU; a fourth worker takes the GPU with the most free memory; a GPU is free
    again once its process has exited (its lock file closed)."""
    got, held = [], []
    for _ in range(3):
        held.append(gpus())
        got.append(pick_device("auto"))
        assert pick_device("auto") == got[-1]  # the stage's later calls
    assert got == [torch.device("cuda", i) for i in range(3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"GPU-{i}.lock" for i in range(3)]
    gpus()
    assert pick_device("auto") == torch.device("cuda", 1)  # all held: the most free memory
    held.append(gpus())
    os.close(held[1].pop("lock"))  # the first worker exits: the system releases its lock
    assert pick_device("auto") == torch.device("cuda", 0)


def test_auto_is_plain_cuda_for_one_gpu_and_under_torchrun(gpus, monkeypatch, tmp_path):
    monkeypatch.setenv("LOCAL_RANK", "1")  # torchrun: each rank takes its local rank's GPU
    assert pick_device("auto") == torch.device("cuda")
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # e.g. CUDA_VISIBLE_DEVICES=2
    assert pick_device("auto") == torch.device("cuda") and not list(tmp_path.iterdir())


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


@pytest.mark.parametrize(
    "capabilities, expected",
    [
        ({0: (7, 0), 1: (8, 0)}, torch.bfloat16),  # current device a V100, cuda:1 an A100
        ({0: (7, 0), 1: (8, 6)}, torch.bfloat16),  # current device a V100, cuda:1 an RTX 3090
        ({0: (8, 0), 1: (7, 5)}, None),  # cuda:1 a T4: bf16 only emulated, T5 runs fp32
        ({0: (9, 0), 1: (7, 0)}, None),  # cuda:1 a V100, though torch says bf16 is "supported"
    ],
)
def test_t5_falls_back_to_fp32_on_gpus_without_native_bf16(monkeypatch, capabilities, expected):
    asked = []

    def capability(device=None):
        index = torch.device(device).index if device is not None else 0
        asked.append(index)
        return capabilities[index or 0]

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # counts emulation
    monkeypatch.setattr(torch.version, "hip", None)
    device = torch.device("cuda:1")
    assert inference_dtype("auto", device, fp16_safe=False) is expected
    assert asked == [1]
    assert inference_dtype("auto", device) is torch.float16  # fp16-safe models: unchanged
    assert not D.native_bf16(torch.device("cpu"))


def test_tokenize_encodes_in_fp32_unless_half_is_asked_for():
    for device in (torch.device("cpu"), torch.device("cuda"), torch.device("cuda:1")):
        assert D.encoding_dtype("auto", device) is None
        assert D.encoding_dtype("fp32", device) is None
    assert D.encoding_dtype("fp16", torch.device("cuda")) is torch.float16
    assert D.encoding_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ValueError, match="precision must be"):
        D.encoding_dtype("half", torch.device("cpu"))


def test_device_scope_makes_the_stage_s_gpu_current(monkeypatch):
    entered = []

    class Current:  # stands for torch.cuda.device, which needs a GPU to enter
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "device", Current)
    with D.device_scope(torch.device("cuda:1")):
        pass
    assert entered == [torch.device("cuda:1")]
    with D.device_scope(torch.device("cpu")):
        pass
    assert entered == [torch.device("cuda:1")]


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


# Each compute stage with device cpu and auto on this machine: the same outputs, byte for byte.
# Where CUDA is present, auto runs the same functions there in fp16/bf16: then the same files come
# out (their values are not expected to be bit-identical to the CPU's).
SMALL = {
    ("data", "synthetic", "n_clips"): 12,
    ("data", "synthetic", "duration_s"): 1,
    ("resample", "duration_s"): 1,
    ("split", "seed"): 1,
    ("codec", "fit", "max_frames"): 400,
    ("codec", "fit", "n_iter"): 2,
    ("codec", "fit", "codes_used"): 64,
    ("text", "tiny", "vocab_size"): 100,
    ("generate", "max_items"): 3,
    ("generate", "batch_size"): 2,
}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Data, codec, text model, tokens, text states and a random tiny LM, all on the CPU."""
    from stage_runner import build_models, encode_text, prepare_data, project_params, tokenize

    from musicgen.lm import LM, save_lm
    from musicgen.pipeline.training import lm_config

    params = project_params(SMALL)
    d = prepare_data(tmp_path_factory.mktemp("device"), params)
    assert all((d.split / f"{name}.txt").read_text().split() for name in ("train", "valid", "test"))
    build_models(d, params)
    tokenize(d, with_device(params, "tokenize", "cpu"), d.tokens, d.metrics / "tokens.json")
    encode_text(d, with_device(params, "encode_text", "cpu"), d.text)
    torch.manual_seed(0)
    cfg = lm_config(params["lm"], params["text"]["tiny"]["d_model"], 2048, 4)
    save_lm(d.lm, LM(cfg).state_dict(), cfg)
    return d, params


def with_device(params: dict, section: str, device: str) -> dict:
    return {**params, section: {**params[section], "device": device}}


def assert_same_outputs(a, b) -> None:
    """The same files under ``a`` and ``b``; the same bytes unless ``auto`` ran on CUDA."""
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert names and names == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    if torch.cuda.is_available():
        return
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.slow
def test_tokenize_on_cpu_and_auto(small, tmp_path):
    from stage_runner import tokenize

    d, params = small
    for device in ("cpu", "auto"):
        out = tmp_path / device
        tokenize(d, with_device(params, "tokenize", device), out / "tokens", out / "tokens.json")
    assert_same_outputs(tmp_path / "cpu", tmp_path / "auto")
    usage = json.loads((tmp_path / "cpu" / "tokens.json").read_text())
    assert usage["clips"] == len((d.split / "train.txt").read_text().split())
    assert 1 < usage["distinct_mean"] <= 64  # the fit's 64 codes, more than one of them used


@pytest.mark.slow
def test_encode_text_on_cpu_and_auto(small, tmp_path):
    from stage_runner import encode_text

    d, params = small
    for device in ("cpu", "auto"):
        encode_text(d, with_device(params, "encode_text", device), tmp_path / device)
    assert_same_outputs(tmp_path / "cpu", tmp_path / "auto")


@pytest.mark.slow
def test_generate_on_cpu_and_auto(small, tmp_path):
    from musicgen.pipeline.generation import generate

    d, params = small
    for device in ("cpu", "auto"):
        generate(
            with_device(params, "generate", device)["generate"],
            d.lm,
            d.codec,
            d.text,
            d.tokens,
            d.split,
            tmp_path / device,
            progress=False,
        )
    assert_same_outputs(tmp_path / "cpu", tmp_path / "auto")
    n_test = len((d.split / "test.txt").read_text().split())
    assert len(list((tmp_path / "cpu" / "audio").glob("*.wav"))) == min(3, n_test)


def test_codec_encode_equals_hugging_faces_and_runs_under_autocast():
    """encode() splits HF's encode into the encoder (under autocast) and the float32 quantizer:
    in float32 the codes are HF's; in bf16 the decoded audio stays close."""
    import numpy as np

    from musicgen.codec import TinyCodecConfig, build_tiny_codec, decode, encode, fit_codebooks

    model = build_tiny_codec(TinyCodecConfig(codebook_size=64))
    rng = np.random.default_rng(0)
    audio = (0.3 * rng.standard_normal((3, 6400))).astype(np.float32)
    fit_codebooks(model, audio, n_iter=2, codes_used=16, progress=False)
    codes = encode(model, audio, batch_size=3)
    with torch.inference_mode():
        hf = model.encode(
            torch.from_numpy(audio)[:, None], bandwidth=model.config.target_bandwidths[0]
        )
    assert torch.equal(codes, hf.audio_codes[0])
    half = encode(model, audio, batch_size=3, dtype=torch.bfloat16)
    assert (half == codes).double().mean() > 0.9  # bf16 latents: a few codes may flip
    wave = decode(model, codes, dtype=torch.bfloat16)
    assert wave.dtype == torch.float32
    reference = decode(model, codes)  # peaks ~0.2: bf16's 8-bit mantissa keeps it within 1e-2
    assert 0 < (wave - reference).abs().max() < 1e-2
