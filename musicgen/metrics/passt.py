"""PaSST, the AudioSet classifier of MusicGen's KL, with hear21passt's state-dict layout.

The network is ``passt_s_swa_p16_128_ap476`` (Koutini et al., 2022, "Efficient Training of Audio
Transformers with Patchout") as the PyPI package hear21passt builds it for audiocraft's KL: a ViT-B
(768 wide, 12 blocks, 12 heads, MLP 3072, pre-norm, LayerNorm eps 1e-6, exact GELU, qkv with bias)
over 16x16 patches of a (128 mel, T frame) log-mel spectrogram taken every 10 bins and 10 frames
(12 x 99 patches for 10 s); positional information is one learned vector per frequency row and one
per time column (``freq_new_pos_embed`` (1, 768, 12, 1), ``time_new_pos_embed`` (1, 768, 1, 99), cut
to the input's columns), plus ``new_pos_embed`` for the class (``cls_token``) and distillation
(``dist_token``) tokens. The output is ``head`` (LayerNorm eps 1e-5, then Linear(768, 527)) of the
mean of the two tokens after the final norm; ``head_dist`` is in the weights but unused, as in
hear21passt's forward. Patchout (dropping patches) happens only in training and so not here.
The keys are hear21passt's, so the release file ``passt-s-f128-p16-s10-ap.476-swa.pt`` loads as it
is. The input may be shorter than 10 s (fewer time columns), not longer.

Outputs per segment: the softmax over the 527 logits (the distribution audiocraft's KL compares,
:mod:`musicgen.metrics.kl`) and a 768-d embedding for FAD/KAD: the mean of the class and
distillation tokens, the input of ``head`` (hear21passt's ``mode="embed_only"`` output; fadtk's
``passt-base-10s`` embeds ``mode="all"``, these 768 numbers after the 527 logits, once per clip
padded to 10 s).

The front end is hear21passt's ``AugmentMelSTFT`` as its ``base`` module configures it, in eval
mode (no masking, no random mel-band edges): 32 kHz audio; pre-emphasis ``x[n+1] - 0.97 x[n]``
(a valid convolution: one sample fewer); STFT with n_fft 1024, a symmetric 800-sample Hann window,
hop 320, centred with reflect padding; power; 128 Kaldi mel bins from 0 to 15 kHz (the Nyquist bin
gets no weight); ``log(mel + 1e-5)``, then ``(x + 4.5) / 5``. 10 s give 1000 frames. We compute it
in float64 (with hear21passt's float32 window and filter values) and run the network in float32.

Clips are cut as audiocraft's KL cuts them (:func:`musicgen.metrics.kl.segment_bounds`): 10 s
segments without padding, segments of 0.15 s or less dropped.
"""

from __future__ import annotations

import json
import tempfile
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from musicgen.data.audio import resample
from musicgen.metrics.kl import MIN_SEGMENT_S, SEGMENT_S, segment_bounds
from musicgen.metrics.vggish import file_sha256, hz_to_mel

SAMPLE_RATE = 32000
N_FFT = 1024
WINDOW = 800  # symmetric Hann, zero-padded to N_FFT by the STFT
HOP = 320  # 10 ms
N_MELS = 128
FMIN, FMAX = 0.0, 15000.0  # hear21passt: fmax = sr // 2 - fmax_aug_range // 2 = 16000 - 1000
PREEMPHASIS = float(np.float32(0.97))  # as hear21passt's float32 filter holds it
LOG_OFFSET = 1e-5
N_CLASSES = 527  # AudioSet
EMBEDDING_DIM = 768

# The release file hear21passt downloads for passt_s_swa_p16_128_ap476 (audiocraft's KL model).
PASST_URL = (
    "https://github.com/kkoutini/PaSST/releases/download/v0.0.1-audioset/"
    "passt-s-f128-p16-s10-ap.476-swa.pt"
)
# The 20 s variant (hear21passt's base20sec, ``PasstConfig(max_frames=2000)`` with 20 s segments):
# audiocraft's MusicGen solver config asks for it (``metrics.kld.passt.pretrained_length: 20``).
PASST_20S_URL = (
    "https://github.com/kkoutini/PaSST/releases/download/v0.0.5/"
    "passt-s-f128-20sec-p16-s10-ap.474-swa.pt"
)


@dataclass
class PasstConfig:
    """PaSST's sizes; the defaults are ``passt_s_swa_p16_128_ap476``'s (its weights need them).

    Attributes:
        embed_dim: token width.
        depth: transformer blocks (fewer make a faster random stand-in; real weights need 12).
        num_heads: attention heads.
        mlp_ratio: MLP width over ``embed_dim``.
        n_classes: classifier outputs.
        n_mels: input mel bins.
        max_frames: input frames the time embeddings were made for (hear21passt's ``input_tdim``):
            ``max_frames // stride`` time columns (99: 10 s; 2000 for the 20 s variant: 200).
        patch: patch side.
        stride: patch stride over frequency and time.
    """

    embed_dim: int = EMBEDDING_DIM
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    n_classes: int = N_CLASSES
    n_mels: int = N_MELS
    max_frames: int = 998
    patch: int = 16
    stride: int = 10

    @property
    def grid(self) -> tuple[int, int]:
        """(frequency rows, time columns) of the positional embeddings, as hear21passt sizes them."""
        return self.n_mels // self.stride, self.max_frames // self.stride


# ---------------------------------------------------------------------------------------------
# front end


def kaldi_mel_banks(
    n_mels: int = N_MELS,
    n_fft: int = N_FFT,
    sample_rate: int = SAMPLE_RATE,
    fmin: float = FMIN,
    fmax: float = FMAX,
) -> np.ndarray:
    """Kaldi's mel filterbank (no VTLN), with a zero column for the Nyquist bin.

    Kaldi's triangles (``MelBanks`` in mel-computations.cc; torchaudio's
    ``compliance.kaldi.get_mel_banks``): ``n_mels + 2`` edges equally spaced on the HTK mel scale
    between ``fmin`` and ``fmax``; bin k of the FFT (frequency ``k * sample_rate / n_fft``, k below
    ``n_fft / 2``) weighs ``max(0, min(rising, falling))`` in mel. No area normalisation.

    Returns:
        (n_mels, n_fft // 2 + 1) float64 weights.
    """
    edges = np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2)
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bins_mel = hz_to_mel(np.arange(n_fft // 2) * (sample_rate / n_fft))[None]
    rising = (bins_mel - lower) / (center - lower)
    falling = (upper - bins_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return np.pad(weights, ((0, 0), (0, 1)))  # the Nyquist bin: no weight


def log_mel(audio: torch.Tensor) -> torch.Tensor:
    """PaSST's normalised log-mel spectrogram (``AugmentMelSTFT`` in eval mode).

    Args:
        audio: (B, S) 32 kHz mono samples, S >= 2.

    Returns:
        (B, N_MELS, 1 + (S - 1) // HOP) float64.
    """
    x = audio.to(torch.float64)
    x = x[:, 1:] - PREEMPHASIS * x[:, :-1]  # the valid conv with [-0.97, 1]
    # float32 values, as hear21passt's buffer: its rounding moves the log-mel of quiet bands beside
    # loud tones (sidelobe leakage) by up to 3e-5
    window = torch.hann_window(WINDOW, periodic=False, device=x.device).to(torch.float64)
    spec = torch.stft(
        x, N_FFT, HOP, WINDOW, window, center=True, pad_mode="reflect", return_complex=True
    )  # (B, N_FFT // 2 + 1, F)
    power = spec.real.square() + spec.imag.square()
    mel = torch.from_numpy(kaldi_mel_banks()).to(x.device) @ power  # (B, N_MELS, F)
    return (torch.log(mel + LOG_OFFSET) + 4.5) / 5.0


# ---------------------------------------------------------------------------------------------
# network


class PatchEmbed(nn.Module):
    """16x16 patches every ``stride`` bins and frames, projected by a conv (key ``proj``)."""

    def __init__(self, cfg: PasstConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, cfg.embed_dim, kernel_size=cfg.patch, stride=cfg.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, N_MELS, T) -> (B, D, rows, columns)."""
        return self.proj(x)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, L, D), full (unmasked) self-attention."""
        b, n, d = x.shape
        heads = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = heads.permute(2, 0, 3, 1, 4)  # each (B, heads, L, D / heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (keys norm1, attn, norm2, mlp)."""

    def __init__(self, cfg: PasstConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.attn = Attention(cfg.embed_dim, cfg.num_heads)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.mlp = Mlp(cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Passt(nn.Module):
    """PaSST in eval form: log-mel (B, 1, 128, T) -> logits (B, 527) and embedding (B, 768)."""

    def __init__(self, cfg: PasstConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or PasstConfig()
        rows, cols = cfg.grid
        d = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, d))
        self.new_pos_embed = nn.Parameter(torch.zeros(1, 2, d))  # for the two tokens
        self.freq_new_pos_embed = nn.Parameter(torch.zeros(1, d, rows, 1))
        self.time_new_pos_embed = nn.Parameter(torch.zeros(1, d, 1, cols))
        self.blocks = nn.Sequential(*[Block(cfg) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, cfg.n_classes))
        self.head_dist = nn.Linear(d, cfg.n_classes)  # trained by distillation, unused at inference

    def init_weights(self) -> None:
        """ViT initialisation: truncated normal (std 0.02) tokens, positions and linear weights."""
        for p in (self.cls_token, self.dist_token, self.new_pos_embed):
            nn.init.trunc_normal_(p, std=0.02, a=-2.0, b=2.0)
        for p in (self.freq_new_pos_embed, self.time_new_pos_embed):
            nn.init.trunc_normal_(p, std=0.02, a=-2.0, b=2.0)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
                nn.init.zeros_(m.bias)

    def tokens(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, 1, N_MELS, T) -> (B, 2 + rows * columns, D): the tokens before the first block."""
        x = self.patch_embed(mel)  # (B, D, rows, columns)
        columns = x.shape[-1]
        if columns > self.time_new_pos_embed.shape[-1]:
            raise ValueError(
                f"PaSST input of {mel.shape[-1]} frames ({columns} patch columns) is longer than "
                f"the {self.time_new_pos_embed.shape[-1]} columns its time embeddings cover"
            )
        if columns == 0:
            raise ValueError(f"PaSST needs {self.cfg.patch} frames or more, got {mel.shape[-1]}")
        x = x + self.time_new_pos_embed[..., :columns] + self.freq_new_pos_embed
        x = x.flatten(2).transpose(1, 2)  # (B, rows * columns, D), frequency-major
        special = torch.cat([self.cls_token, self.dist_token], dim=1) + self.new_pos_embed
        return torch.cat([special.expand(len(x), -1, -1), x], dim=1)

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, N_MELS, T) log-mel -> (logits (B, n_classes), embedding (B, embed_dim))."""
        x = self.norm(self.blocks(self.tokens(mel)))
        embedding = (x[:, 0] + x[:, 1]) / 2
        return self.head(embedding), embedding


def random_passt(cfg: PasstConfig, seed: int) -> Passt:
    """PaSST with seeded ViT initialisation (the embedded default's weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Passt(cfg)
        model.init_weights()
    return model


# ---------------------------------------------------------------------------------------------
# weights


def check_state_dict(state: dict[str, torch.Tensor], cfg: PasstConfig, origin: str) -> None:
    """Raises ValueError unless ``state`` has exactly PaSST's keys and shapes for ``cfg``.

    Loads ``state`` strictly into a shapes-only (meta) PaSST, so torch names every missing or
    unexpected key and every shape that differs.
    """
    with torch.device("meta"):  # shapes only, no memory
        model = Passt(cfg)
    try:
        model.load_state_dict({k: v.to("meta") for k, v in state.items()}, assign=True)
    except RuntimeError as e:
        raise ValueError(f"{origin}: not a hear21passt PaSST state dict for {cfg}: {e}") from None


def read_passt_checkpoint(path: str | Path, cfg: PasstConfig) -> dict[str, torch.Tensor]:
    """Reads a hear21passt ``.pt`` state dict (tensors only: ``weights_only=True``), checked."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    check_state_dict(state, cfg, str(path))
    return {k: v.float().contiguous() for k, v in state.items()}


def passt_weights(
    source: str, cfg: PasstConfig | None = None, seed: int = 0
) -> tuple[dict[str, torch.Tensor], str]:
    """PaSST weights and a description of where they came from.

    Args:
        source: ``random`` (seeded ViT initialisation of ``cfg``: the embedded default), the URL
            of the release file (:data:`PASST_URL`, downloaded once into a temporary directory)
            or a local path to such a ``.pt``.
        cfg: the sizes (default: ``passt_s_swa_p16_128_ap476``'s, which real weights need).
        seed: the seed of ``random``.

    Returns:
        the state dict and its description (``random(seed=0, depth=12)`` or the URL or file name
        with the file's SHA-256), which every metric computed with it records.
    """
    cfg = cfg or PasstConfig()
    if source == "random":
        sizes = f", depth={cfg.depth}" if cfg.depth != PasstConfig.depth else ""
        return random_passt(cfg, seed).state_dict(), f"random(seed={seed}{sizes})"
    if source.startswith(("http://", "https://")):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(urllib.parse.urlparse(source).path).name
            torch.hub.download_url_to_file(source, str(path), progress=True)
            return read_passt_checkpoint(path, cfg), f"{source} sha256:{file_sha256(path)}"
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(
            f"PaSST source {source!r} is neither 'random', an http(s) URL nor an existing file"
        )
    return read_passt_checkpoint(path, cfg), f"{path.name} sha256:{file_sha256(path)}"


def save_passt(state: dict[str, torch.Tensor], cfg: PasstConfig, path: Path) -> None:
    """Writes PaSST weights as safetensors, atomically, with ``cfg`` in the file's metadata."""
    from safetensors.torch import save_file

    from musicgen.io import atomic_path

    check_state_dict(state, cfg, str(path))
    with atomic_path(path) as tmp:
        tensors = {k: v.contiguous() for k, v in state.items()}
        save_file(tensors, str(tmp), metadata={"passt_config": json.dumps(asdict(cfg))})


def load_passt(path: str | Path) -> Passt:
    """PaSST from a safetensors file written by :func:`save_passt` (eval mode)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "passt_config" not in meta:
        raise ValueError(f"{path}: no passt_config in its metadata (not written by save_passt)")
    cfg = PasstConfig(**json.loads(meta["passt_config"]))
    state = load_file(str(path))
    check_state_dict(state, cfg, str(path))
    model = Passt(cfg)
    model.load_state_dict(state)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# embedding clips


@dataclass
class PasstOutputs:
    """PaSST's outputs for clips cut into segments.

    Attributes:
        probs: (N, E, n_classes) float64 softmax over the logits, per clip and segment.
        embeddings: (N, E, embed_dim) float64 embeddings (mean of the class and distillation
            tokens).
        bounds: the E segments' [start, end) in samples at 32 kHz (the same for every clip).
    """

    probs: np.ndarray
    embeddings: np.ndarray
    bounds: list[tuple[int, int]]


class PasstEmbedder:
    """Audio clips -> PaSST class probabilities and embeddings per segment, batched, on a device.

    Memory is bounded by ``batch_size``: clips are resampled and run ``batch_size`` at a time
    (each up to one 10 s segment per network call), whatever the number of clips.

    Args:
        model: The network (its weights decide what the numbers mean).
        device: Where the front end and the network run.
        batch_size: Clips per call.
        segment_s: Segment length (the model's input length, 10 s).
        min_segment_s: Segments this short or shorter are dropped.
    """

    name = "passt"

    def __init__(
        self,
        model: Passt,
        device: torch.device,
        batch_size: int = 8,
        segment_s: float = SEGMENT_S,
        min_segment_s: float = MIN_SEGMENT_S,
    ) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.batch_size = batch_size
        self.segment_s = segment_s
        self.min_segment_s = min_segment_s
        self.dim = model.cfg.embed_dim

    def segments(self, n_samples: int) -> list[tuple[int, int]]:
        """Segment bounds of a clip of ``n_samples`` at 32 kHz."""
        return segment_bounds(n_samples, SAMPLE_RATE, self.segment_s, self.min_segment_s)

    @torch.no_grad()
    def run(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One network call: (B, S) 32 kHz audio -> (probs (B, C), embeddings (B, D)) float64."""
        mel = log_mel(audio.to(self.device)).float()[:, None]  # (B, 1, N_MELS, F)
        logits, embedding = self.model(mel)
        return torch.softmax(logits.double(), dim=-1), embedding.double()

    @torch.no_grad()
    def outputs(self, clips: np.ndarray, sample_rate: int) -> PasstOutputs:
        """Class probabilities and embeddings of each segment of each clip.

        Args:
            clips: (N, S) mono audio of equal length at ``sample_rate``, N >= 1.

        Returns:
            probs (N, E, C) and embeddings (N, E, D), E segments per clip.

        Raises:
            ValueError: if there are no clips or they are too short for one segment.
        """
        if len(clips) == 0:
            raise ValueError("PaSST: no clips to embed")
        n, cfg = len(clips), self.model.cfg
        probs = embeddings = bounds = None
        for i in range(0, n, self.batch_size):
            chunk = [resample(c, sample_rate, SAMPLE_RATE) for c in clips[i : i + self.batch_size]]
            audio = torch.from_numpy(np.stack(chunk))  # (b, S at 32 kHz)
            if bounds is None:
                bounds = self.segments(audio.shape[1])
                if not bounds:
                    raise ValueError(
                        f"clips of {audio.shape[1]} samples at 32 kHz are too short for PaSST: "
                        f"a segment needs more than {self.min_segment_s} s"
                    )
                probs = np.empty((n, len(bounds), cfg.n_classes))
                embeddings = np.empty((n, len(bounds), cfg.embed_dim))
            for j, (start, end) in enumerate(bounds):
                p, e = self.run(audio[:, start:end])
                probs[i : i + len(chunk), j] = p.cpu().numpy()
                embeddings[i : i + len(chunk), j] = e.cpu().numpy()
        return PasstOutputs(probs, embeddings, bounds)

    def embed_clips(self, clips: np.ndarray, sample_rate: int) -> np.ndarray:
        """(N, S) clips -> (N, E, 768) float64 embeddings, one per segment (for FAD/KAD)."""
        return self.outputs(clips, sample_rate).embeddings
