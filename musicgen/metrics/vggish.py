"""VGGish, the embedder of FAD as MusicGen reports it, with torchvggish's weights layout.

The network is Google's VGGish (Hershey et al., 2017) as ported to PyTorch by torchvggish: four
conv blocks (64, 128, 256 256, 512 512 channels, 3x3 convs, 2x2 max-pools) over a (96, 64) log-mel
patch, then three fully connected layers 12288 -> 4096 -> 4096 -> 128. The state-dict keys are
torchvggish's (``features.<i>.weight``, ``embeddings.<i>.weight``), so its release file
``vggish-10086976.pth`` loads as it is. As frechet-audio-distance and fadtk do, the embedding is the
last linear layer's output: no final ReLU and no PCA/quantisation post-processing.

The front end computes what torchvggish's ``vggish_input.waveform_to_examples`` computes on 16 kHz
mono audio (its ``mel_features`` module): frames of 25 ms (400 samples) every 10 ms (160), a
periodic Hann window, the magnitude of a 512-point real FFT, 64 mel bands from 125 to 7500 Hz
(triangles in HTK-mel space, the DC bin left out), ``log(mel + 0.01)``; then non-overlapping
examples of 96 frames (0.96 s). Other rates are resampled to 16 kHz with soxr (torchvggish uses
resampy; the two differ slightly near Nyquist).
"""

from __future__ import annotations

import hashlib
import math
import tempfile
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from musicgen.data.audio import resample

SAMPLE_RATE = 16000
WINDOW = 400  # 25 ms STFT window
HOP = 160  # 10 ms STFT hop
N_FFT = 512  # the next power of two above the window
N_MELS = 64
FMIN, FMAX = 125.0, 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s per example, examples do not overlap
EMBEDDING_DIM = 128
CONV_CHANNELS = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M")

# The release file of torchvggish (v0.1), the weights frechet-audio-distance and fadtk use.
TORCHVGGISH_URL = (
    "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth"
)


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: 1127 ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def vggish_mel_matrix() -> np.ndarray:
    """VGGish's mel weights, (N_FFT // 2 + 1, N_MELS) float64.

    Triangles with edges equally spaced in mel between FMIN and FMAX, evaluated at each FFT bin's
    mel value; the DC bin gets no weight.
    """
    bins_mel = hz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1))[:, None]
    edges = np.linspace(hz_to_mel(FMIN), hz_to_mel(FMAX), N_MELS + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel - lower) / (center - lower)
    falling = (upper - bins_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0] = 0.0
    return weights


def periodic_hann(n: int) -> torch.Tensor:
    """The periodic Hann window (n,) float64 (``np.hanning`` is the symmetric one)."""
    return 0.5 - 0.5 * torch.cos(2 * math.pi / n * torch.arange(n, dtype=torch.float64))


def log_mel(audio: torch.Tensor) -> torch.Tensor:
    """VGGish's log-mel spectrogram.

    Args:
        audio: (B, S) 16 kHz mono samples.

    Returns:
        (B, F, N_MELS) float64 log-mel frames, F = 1 + (S - WINDOW) // HOP.
    """
    x = audio.to(torch.float64)
    frames = x.unfold(-1, WINDOW, HOP) * periodic_hann(WINDOW).to(x.device)  # (B, F, WINDOW)
    magnitude = torch.fft.rfft(frames, n=N_FFT).abs()  # (B, F, N_FFT // 2 + 1)
    mel = magnitude @ torch.from_numpy(vggish_mel_matrix()).to(x.device)
    return torch.log(mel + LOG_OFFSET)


def examples(audio: torch.Tensor) -> torch.Tensor:
    """Cuts 16 kHz audio into VGGish's input examples, as ``waveform_to_examples`` does.

    Args:
        audio: (B, S) 16 kHz mono samples, S >= 0.96 s + one window.

    Returns:
        (B, E, 96, 64) float64 log-mel examples, E = F // 96 (a partial last example is dropped).
    """
    mel = log_mel(audio)  # (B, F, N_MELS)
    if mel.shape[1] < EXAMPLE_FRAMES:
        raise ValueError(
            f"VGGish needs at least {(EXAMPLE_FRAMES - 1) * HOP + WINDOW} samples at 16 kHz "
            f"(0.985 s) per clip, got {audio.shape[-1]}"
        )
    return mel.unfold(1, EXAMPLE_FRAMES, EXAMPLE_FRAMES).transpose(-1, -2)  # (B, E, 96, 64)


def conv_stack() -> nn.Sequential:
    """VGGish's conv layers with torchvggish's indices (conv, ReLU, ..., max-pool)."""
    layers: list[nn.Module] = []
    channels = 1
    for v in CONV_CHANNELS:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU()]
            channels = v
    return nn.Sequential(*layers)


class VGGish(nn.Module):
    """VGGish without its final ReLU and without post-processing (the 128-d pre-PCA embedding)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = conv_stack()
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 6 * 4, 4096),
            nn.ReLU(),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Linear(4096, EMBEDDING_DIM),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 96, 64) log-mel examples -> (N, 128) embeddings."""
        h = self.features(x)  # (N, 512, 6, 4)
        # flattened in (time, frequency, channel) order, the layout of the TensorFlow original
        return self.embeddings(h.permute(0, 2, 3, 1).flatten(1))


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def random_vggish(seed: int) -> VGGish:
    """VGGish with PyTorch's default initialisation, seeded (the embedded default's weights)."""
    with _seeded(seed):
        return VGGish()


def read_torchvggish(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads torchvggish's ``.pth`` state dict (tensors only: ``weights_only=True``).

    Raises:
        ValueError: if its keys or shapes are not VGGish's, naming them.
    """
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    check_state_dict(state, str(path))
    return {k: v.float().contiguous() for k, v in state.items()}


def check_state_dict(state: dict[str, torch.Tensor], origin: str) -> None:
    """Raises ValueError unless ``state`` has exactly VGGish's keys and shapes."""
    with torch.device("meta"):  # shapes only, no memory
        expected = {k: tuple(v.shape) for k, v in VGGish().state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected = sorted(expected.keys() - found), sorted(found.keys() - expected)
    wrong = sorted(k for k in expected.keys() & found if expected[k] != found[k])
    if missing or unexpected or wrong:
        raise ValueError(
            f"{origin}: not a torchvggish VGGish state dict (missing {missing}, unexpected "
            f"{unexpected}, wrong shapes {[(k, found[k], expected[k]) for k in wrong]})"
        )


def save_vggish(state: dict[str, torch.Tensor], path: Path) -> None:
    """Writes a VGGish state dict as safetensors, atomically."""
    from safetensors.torch import save_file

    from musicgen.io import atomic_path

    check_state_dict(state, str(path))
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))


def load_vggish(path: str | Path) -> VGGish:
    """VGGish from a safetensors file written by :func:`save_vggish`."""
    from safetensors.torch import load_file

    model = VGGish()
    state = load_file(str(path))
    check_state_dict(state, str(path))
    model.load_state_dict(state)
    return model.eval()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def vggish_weights(source: str, seed: int = 0) -> tuple[dict[str, torch.Tensor], str]:
    """VGGish weights and a description of where they came from.

    Args:
        source: ``random`` (seeded PyTorch initialisation: the embedded default), the URL of
            torchvggish's release file (:data:`TORCHVGGISH_URL`, downloaded once), or a local path
            to such a ``.pth``.
        seed: the seed of ``random``.

    Returns:
        the state dict and its description (``random(seed=0)``, or the URL or file name with the
        file's SHA-256), which every metric computed with it records.
    """
    if source == "random":
        return random_vggish(seed).state_dict(), f"random(seed={seed})"
    if source.startswith(("http://", "https://")):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(urllib.parse.urlparse(source).path).name
            torch.hub.download_url_to_file(source, str(path), progress=True)
            return read_torchvggish(path), f"{source} sha256:{file_sha256(path)}"
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(
            f"VGGish source {source!r} is neither 'random', an http(s) URL nor an existing file"
        )
    return read_torchvggish(path), f"{path.name} sha256:{file_sha256(path)}"


class VGGishEmbedder:
    """Audio clips -> VGGish embeddings, batched, on a device.

    Args:
        model: The network (its weights decide what the numbers mean).
        device: Where the network runs (the front end runs there too).
        batch_size: Examples per network call; the front end (float64, about 13 MB per 10 s clip)
            takes as many clips at a time as make ``batch_size`` examples (at least one clip), so
            memory, host and device, does not grow with the number of clips.
    """

    name = "vggish"
    dim = EMBEDDING_DIM

    def __init__(self, model: VGGish, device: torch.device, batch_size: int = 64) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.batch_size = batch_size

    def clips_per_call(self, n_samples: int, sample_rate: int) -> int:
        """Clips of ``n_samples`` at ``sample_rate`` whose examples fill one network call."""
        examples_per_clip = max(
            1, int(n_samples / sample_rate / (EXAMPLE_FRAMES * HOP / SAMPLE_RATE))
        )
        return max(1, self.batch_size // examples_per_clip)

    @torch.no_grad()
    def embed_clips(self, clips: np.ndarray, sample_rate: int) -> np.ndarray:
        """Embeds clips of equal length, :meth:`clips_per_call` clips at a time.

        Args:
            clips: (N, S) mono audio at ``sample_rate``.

        Returns:
            (N, E, 128) float64: one embedding per 0.96 s example of each clip.
        """
        step = self.clips_per_call(clips.shape[-1], sample_rate)
        return np.concatenate(
            [self._embed(clips[i : i + step], sample_rate) for i in range(0, len(clips), step)]
        )

    def _embed(self, clips: np.ndarray, sample_rate: int) -> np.ndarray:
        """(n, S) clips -> (n, E, 128) float64 embeddings, ``batch_size`` examples per call."""
        audio = np.stack([resample(c, sample_rate, SAMPLE_RATE) for c in clips])
        x = examples(torch.from_numpy(audio).to(self.device))  # (n, E, 96, 64) float64
        n, e = x.shape[:2]
        flat = x.reshape(n * e, 1, EXAMPLE_FRAMES, N_MELS).float()
        del x
        out = [
            self.model(flat[i : i + self.batch_size]) for i in range(0, len(flat), self.batch_size)
        ]
        return torch.cat(out).reshape(n, e, EMBEDDING_DIM).double().cpu().numpy()
