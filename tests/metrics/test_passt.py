"""PaSST: parity with PyPI hear21passt (front end, network, weights layout, audiocraft's use).

hear21passt is a dev extra installed with ``--no-deps``: its torchaudio and timm imports are served
by the stand-ins of ``hear21passt_shim`` (why, and what they provide, is written there). Its mel
banks come from Kaldi's definition transcribed in the shim, which ``test_mel_banks_are_kaldis``
compares with ours; everything else on their side is hear21passt's code.
"""

import contextlib
import io
import warnings

import numpy as np
import pytest
import torch

from musicgen.metrics import passt as P

pytest.importorskip("hear21passt")  # the dev extra
from hear21passt_shim import import_hear21passt, kaldi_mel_banks_loop  # noqa: E402

SR = P.SAMPLE_RATE
SMALL = P.PasstConfig(embed_dim=64, depth=2, num_heads=4)  # every code path at a tenth of the cost


@contextlib.contextmanager
def quiet():
    """hear21passt prints its model and shape traces, and warns about non-10 s inputs."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@pytest.fixture(scope="module")
def hear21passt():
    return import_hear21passt()  # (models.passt, models.preprocess)


def their_mel(hear21passt) -> torch.nn.Module:
    """``AugmentMelSTFT`` exactly as hear21passt's ``base.get_basic_model`` builds it, in eval."""
    with quiet():
        return hear21passt[1].AugmentMelSTFT(
            n_mels=128, sr=32000, win_length=800, hopsize=320, n_fft=1024, freqm=48, timem=192,
            htk=False, fmin=0.0, fmax=None, norm=1, fmin_aug_range=10, fmax_aug_range=2000,
        ).eval()  # fmt: skip


def their_small_net(hear21passt, seed: int = 3, frames: int = 998) -> torch.nn.Module:
    """hear21passt's PaSST class at SMALL's sizes (10 s of positions, stride 10), spread weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with quiet():
            net = hear21passt[0].PaSST(
                img_size=(128, frames), patch_size=16, stride=10, in_chans=1, num_classes=527,
                embed_dim=SMALL.embed_dim, depth=SMALL.depth, num_heads=SMALL.num_heads,
                distilled=True,
            )  # fmt: skip
        spread(net)
    return net.eval()


def spread(net: torch.nn.Module, scale: float = 0.05) -> None:
    """Adds noise to every parameter: layer norms, biases, positions and the head all count."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn_like(p))
        net.head[1].weight.mul_(10.0)  # logits spread over several nats


def music(seconds: float, seed: int = 0) -> np.ndarray:
    """Tones, a chirp, noise and a near-silent stretch (the log floor), 32 kHz float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SR)) / SR
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1250 * t * (1 + t / 4))
    x = x + 0.05 * rng.normal(size=t.shape)
    x[SR // 2 : SR] *= 1e-4
    return x.astype(np.float32)


@pytest.mark.parametrize("args", [(128, 1024, 32000, 0.0, 15000.0), (64, 512, 16000, 20.0, 7600.0)])
def test_mel_banks_are_kaldis(args):
    expected, _ = kaldi_mel_banks_loop(
        *args, vtln_low=100.0, vtln_high=-500.0, vtln_warp_factor=1.0
    )
    ours = P.kaldi_mel_banks(*args)
    assert ours.shape == (args[0], args[1] // 2 + 1) and (ours[:, -1] == 0).all()
    with default_dtype(torch.float64):
        expected64, _ = kaldi_mel_banks_loop(*args, 100.0, -500.0, 1.0)
    np.testing.assert_allclose(ours[:, :-1], expected64.numpy(), atol=1e-12, rtol=0)
    np.testing.assert_allclose(ours[:, :-1], expected.numpy(), atol=3e-5, rtol=0)  # float32


@pytest.mark.parametrize("seconds", [3.3, 10.0])
def test_front_end_equals_augment_mel_stft(hear21passt, seconds):
    x = torch.from_numpy(np.stack([music(seconds), 0.5 * music(seconds, seed=1)]))
    ours = P.log_mel(x)
    assert ours.shape == (2, 128, 1 + (x.shape[1] - 1) // P.HOP)
    mel = their_mel(hear21passt)
    # its forward draws mel-band edges from the global RNG even in eval (then ignores them)
    with torch.random.fork_rng(devices=[]), torch.no_grad(), quiet():
        theirs32 = mel(x)
        with default_dtype(torch.float64):  # the mel banks come in the default dtype
            theirs64 = mel.double()(x.double())
    assert theirs32.shape == ours.shape
    np.testing.assert_allclose(ours.numpy(), theirs64.numpy(), atol=1e-10, rtol=0)
    np.testing.assert_allclose(ours.numpy(), theirs32.numpy(), atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def their_release_net(hear21passt):
    """hear21passt's ``passt_s_swa_p16_128_ap476``, random weights, no download."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        with quiet():
            net = hear21passt[0].get_model(arch="passt_s_swa_p16_128_ap476", pretrained=False)
        spread(net)
    return net.eval()


def test_release_architecture_state_dict_loads_with_no_missing_or_unexpected_key(
    their_release_net,
):
    state = their_release_net.state_dict()
    P.check_state_dict(state, P.PasstConfig(), "hear21passt")
    result = P.Passt().load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert state["time_new_pos_embed"].shape == (1, 768, 1, 99)  # 10 s
    assert state["head.1.weight"].shape == (527, 768) and "head_dist.weight" in state


def test_release_architecture_logits_match(their_release_net):
    ours = P.Passt()
    ours.load_state_dict(their_release_net.state_dict())
    mel = P.log_mel(torch.from_numpy(np.stack([music(1.2), music(1.2, seed=1)]))).float()[:, None]
    with torch.no_grad(), quiet():
        logits, features = their_release_net(mel)
        got_logits, got_features = ours.eval()(mel)
    assert logits.std() > 1  # weights spread: a wrong norm, order or position would show
    np.testing.assert_allclose(got_logits.numpy(), logits.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(got_features.numpy(), features.numpy(), atol=1e-4, rtol=0)


def audiocraft_probs(wrapper: torch.nn.Module, clip: np.ndarray, seconds: int = 10) -> np.ndarray:
    """audiocraft's ``PasstKLDivergenceMetric`` on one 32 kHz clip: (segments, 527) softmax."""
    wav = torch.from_numpy(clip)[None]
    split = torch.split(wav, int(seconds * SR), dim=-1)
    segments = [s for s in split if s.size(-1) > int(0.15 * SR)]
    with torch.no_grad(), quiet(), torch.random.fork_rng(devices=[]):
        return np.stack([torch.softmax(wrapper(s), dim=-1).mean(0).numpy() for s in segments])


def test_embedder_equals_hear21passt_as_audiocraft_runs_it(hear21passt, seconds=25.0):
    """Segments of 10, 10 and 5 s: the time positions whole and cut."""
    from hear21passt.wrapper import PasstBasicWrapper  # imports torch only

    net = their_small_net(hear21passt)
    wrapper = PasstBasicWrapper(mel=their_mel(hear21passt), net=net, mode="logits").eval()
    ours = P.Passt(SMALL)
    ours.load_state_dict(net.state_dict())
    embedder = P.PasstEmbedder(ours, torch.device("cpu"), batch_size=2)
    clips = np.stack([music(seconds), music(seconds, seed=1)])
    out = embedder.outputs(clips, SR)
    assert out.probs.shape == (2, len(out.bounds), 527) and out.embeddings.shape[-1] == 64
    for i, clip in enumerate(clips):
        expected = audiocraft_probs(wrapper, clip)
        np.testing.assert_allclose(out.probs[i], expected, atol=1e-6, rtol=1e-4)
    wrapper.mode = "embed_only"
    with torch.no_grad(), quiet(), torch.random.fork_rng(devices=[]):
        first = wrapper(torch.from_numpy(clips[:, : 10 * SR])).numpy()
    np.testing.assert_allclose(out.embeddings[:, 0], first, atol=1e-4, rtol=0)


def test_the_20_s_variant_runs_20_s_segments(hear21passt):
    """hear21passt's base20sec layout (200 time columns), as audiocraft's pretrained_length: 20."""
    from hear21passt.wrapper import PasstBasicWrapper

    net = their_small_net(hear21passt, frames=2000)
    wrapper = PasstBasicWrapper(mel=their_mel(hear21passt), net=net, mode="logits").eval()
    ours = P.Passt(P.PasstConfig(embed_dim=64, depth=2, num_heads=4, max_frames=2000))
    ours.load_state_dict(net.state_dict())
    out = P.PasstEmbedder(ours, torch.device("cpu"), segment_s=20).outputs(music(25.0)[None], SR)
    assert out.bounds == [(0, 20 * SR), (20 * SR, 25 * SR)]
    expected = audiocraft_probs(wrapper, music(25.0), seconds=20)
    np.testing.assert_allclose(out.probs[0], expected, atol=1e-6, rtol=1e-4)


def test_other_rates_are_resampled_and_batches_stay_bounded():
    model = P.random_passt(SMALL, seed=0)
    calls = []
    model.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    embedder = P.PasstEmbedder(model, torch.device("cpu"), batch_size=2)
    clips = np.stack([music(3.0, seed=s)[::2] for s in range(5)])  # 16 kHz
    out = embedder.outputs(clips, SR // 2)
    assert out.probs.shape == (5, 1, 527) and max(calls) == 2 and len(calls) == 3
    np.testing.assert_allclose(out.probs.sum(-1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(embedder.embed_clips(clips, SR // 2), out.embeddings)


def test_too_short_and_too_long_inputs_are_clear_errors():
    model = P.random_passt(SMALL, seed=0)
    embedder = P.PasstEmbedder(model, torch.device("cpu"))
    with pytest.raises(ValueError, match="too short for PaSST"):
        embedder.outputs(np.zeros((1, 4800), np.float32), SR)
    with pytest.raises(ValueError, match="longer than the 99 columns"):
        embedder.run(torch.zeros(1, 11 * SR))


def test_weights_sources_round_trip_through_safetensors(tmp_path, hear21passt):
    state, source = P.passt_weights("random", SMALL, seed=4)
    assert source == "random(seed=4, depth=2)"
    again, _ = P.passt_weights("random", SMALL, seed=4)
    assert all(torch.equal(state[k], again[k]) for k in state)
    P.save_passt(state, SMALL, tmp_path / "passt.safetensors")
    loaded = P.load_passt(tmp_path / "passt.safetensors")
    assert loaded.cfg == SMALL and not loaded.training
    assert all(torch.equal(loaded.state_dict()[k], state[k]) for k in state)
    # a hear21passt .pt checkpoint (keys without a wrapper prefix), read with weights_only=True
    pt = tmp_path / "passt-small.pt"
    torch.save(their_small_net(hear21passt).state_dict(), pt)
    theirs, described = P.passt_weights(str(pt), SMALL)
    assert described.startswith("passt-small.pt sha256:") and len(described.split(":")[1]) == 64
    assert set(theirs) == set(state)


def test_a_foreign_state_dict_is_refused_with_its_keys(tmp_path):
    pt = tmp_path / "other.pt"
    torch.save({"net.cls_token": torch.zeros(1, 1, 768)}, pt)
    with pytest.raises(
        ValueError, match="(?s)not a hear21passt PaSST state dict.*Unexpected.*net.cls_token"
    ):
        P.passt_weights(str(pt))
    with pytest.raises(FileNotFoundError):
        P.passt_weights(str(tmp_path / "missing.pt"))
