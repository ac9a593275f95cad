"""Text-to-music inference: a trained run of this pipeline or a published MusicGen checkpoint.

Two sources, one :class:`MusicGen` (a text encoder and its tokenizer, the LM, the codec):

- :func:`load_run`: a run directory of this pipeline; the LM at ``data/lm``, the codec at
  ``data/models/codec``, the text encoder at ``data/models/text`` (the DVC outputs of the train,
  codec_model and text_model stages) and ``encode_text.max_words`` from the run's ``params.yaml``.
- :func:`load_hf`: a Hugging Face ``MusicgenForConditionalGeneration`` by hub id (e.g.
  ``facebook/musicgen-small``) or ``save_pretrained`` directory: its T5 encoder and tokenizer, its
  EnCodec audio encoder, and its decoder converted by :mod:`musicgen.convert` (with
  ``enc_to_dec_proj``, so the LM takes the T5 states). Hub ids and directories go through the same
  ``from_pretrained`` calls.

Captions are encoded as the encode_text stage encodes them (:func:`musicgen.text.encode_texts`,
states rounded to float16 as the LM saw them in training), sampled with
:func:`musicgen.generate.generate` and decoded by the codec, as the generate stage does: every model
on one device, in one ``precision`` (:mod:`musicgen.device`; ``auto``: fp32 on the CPU, where the
numba decoding step runs; on CUDA fp16 autocast for the LM and the codec, bf16 for T5).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from musicgen.extend import PUBLISHED_WINDOW_S
from musicgen.lm import LM

log = logging.getLogger(__name__)

LM_DIR = Path("data/lm")
CODEC_DIR = Path("data/models/codec")
TEXT_DIR = Path("data/models/text")
TOKENS = Path("data/tokens/codes.npy")
PARAMS = Path("params.yaml")
MAX_WORDS = 250  # encode_text.max_words when a run's params.yaml does not say


class ModelError(ValueError):
    """A model source that cannot be used for generation; the message says what to do."""


class PromptAudioError(ValueError):
    """Audio to continue that cannot be read or used; the message names the file."""


@dataclass
class MusicGen:
    """Everything generation needs, loaded from one source.

    Attributes:
        lm: the LM, in eval mode, on the device.
        codec: the ``EncodecModel``, on the device.
        tokenizer: the text encoder's tokenizer.
        text_encoder: a frozen ``T5EncoderModel``, on the device.
        source: where it came from, e.g. ``run:/path/to/run`` or ``hf:facebook/musicgen-small``.
        max_words: captions are cut to their first ``max_words`` words (None: no limit).
        trained_seconds: length of the clips the LM was trained on (None: unknown; a published
            MusicGen: 30 s), its window for long generation (:mod:`musicgen.extend`).
        precision: ``auto`` | ``fp32`` | ``fp16`` | ``bf16``: the autocast of the LM and the codec;
            T5 takes the same but never fp16 (it overflows; ``fp16`` and ``auto`` give bf16 on
            CUDA).
    """

    lm: LM
    codec: object
    tokenizer: object
    text_encoder: object
    source: str
    max_words: int | None = None
    trained_seconds: float | None = None
    precision: str = "auto"

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    @property
    def dtype(self) -> torch.dtype | None:
        """Autocast dtype of the LM and the codec (None: float32)."""
        from musicgen.device import inference_dtype

        return inference_dtype(self.precision, self.device)

    @property
    def text_dtype(self) -> torch.dtype | None:
        """Autocast dtype of T5 (None: float32)."""
        from musicgen.device import inference_dtype

        precision = "auto" if self.precision == "fp16" else self.precision
        return inference_dtype(precision, self.device, fp16_safe=False)

    @property
    def sample_rate(self) -> int:
        return int(self.codec.config.sampling_rate)

    @property
    def hop(self) -> int:
        return int(self.codec.config.hop_length)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop

    def condition(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 states of ``texts``, padded, on the LM's device.

        Returns:
            cond (B, L, text_dim) float32, zero past each text's tokens, and cond_mask (B, L) bool.
        """
        from musicgen.text import encode_texts, first_words

        if self.max_words is not None:
            texts = [" ".join(first_words(t, self.max_words)) for t in texts]
        states = encode_texts(
            self.tokenizer, self.text_encoder, texts, progress=False, dtype=self.text_dtype
        )
        cond, mask = pad_states(states)
        return cond.to(self.device), mask.to(self.device)

    def encode_audio(self, path: Path) -> torch.Tensor:
        """Codes of an audio file to continue: mixed to mono and resampled to the codec's rate.

        Returns:
            (1, K, Tp) int64 codes on the LM's device.

        Raises:
            PromptAudioError: if the file cannot be read, is empty, silent or not finite.
        """
        from musicgen.codec import encode
        from musicgen.data.audio import audio_problem, read_audio, resample, to_mono

        try:
            audio, rate = read_audio(path)
        except Exception as err:  # libsndfile raises several types for unreadable files
            raise PromptAudioError(
                f"cannot read the audio to continue, {path}: {err} (give a WAV, FLAC, OGG or MP3 "
                "file)"
            ) from err
        mono = to_mono(audio)
        problem = audio_problem(mono)
        if problem:
            raise PromptAudioError(f"the audio to continue, {path}, is unusable: {problem}")
        mono = resample(mono, rate, self.sample_rate)
        from musicgen.device import encoding_dtype

        dtype = encoding_dtype(self.precision, self.device)  # auto: fp32, as tokenize encodes
        return encode(self.codec, mono[None], self.lm.cfg.n_codebooks, dtype=dtype).to(self.device)

    def sample(
        self,
        texts: list[str],
        n_frames: int,
        sampling,
        generator: torch.Generator,
        prompt: torch.Tensor | None = None,
        windowing=None,
    ) -> torch.Tensor:
        """Codes for each text (see :func:`musicgen.generate.generate`).

        Args:
            texts: B captions.
            n_frames: T, frames of the output, the prompt's included.
            sampling: a :class:`musicgen.generate.SamplingConfig`.
            generator: the torch RNG on the LM's device.
            prompt: (1, K, Tp) or (B, K, Tp) codes that every output starts with, or None.
            windowing: a :class:`musicgen.extend.Windowing`: past its window, sliding windows
                (:func:`musicgen.extend.generate_long`); None: one window of T frames.

        Returns:
            (B, K, T) int64 codes on the LM's device.
        """
        from musicgen.device import autocast
        from musicgen.extend import generate_long
        from musicgen.generate import generate

        cond, mask = self.condition(texts)
        if prompt is not None:
            prompt = prompt.expand(len(texts), -1, -1)
        with autocast(self.device, self.dtype):
            if windowing is None:
                return generate(self.lm, cond, mask, n_frames, sampling, generator, prompt=prompt)
            return generate_long(
                self.lm, cond, mask, n_frames, sampling, windowing, generator, prompt
            )

    def generate(
        self,
        texts: list[str],
        seconds: float,
        sampling,
        generator: torch.Generator,
        prompt: torch.Tensor | None = None,
        windowing=None,
    ) -> np.ndarray:
        """Audio for each text: ``seconds`` of new audio after the prompt, if any, past the
        window of ``windowing`` (a :class:`musicgen.extend.Windowing`) in sliding windows.

        Returns:
            (B, S) float32 audio at :attr:`sample_rate`: the prompt's Tp frames re-synthesised
            by the codec, then ``seconds`` (S = Tp * hop + round(seconds * sample_rate)).
        """
        from musicgen.codec import decode

        if seconds <= 0:
            raise ValueError(f"seconds must be > 0, got {seconds}")
        n_prompt = 0 if prompt is None else prompt.shape[2]
        n_frames = n_prompt + math.ceil(seconds * self.frame_rate)
        codes = self.sample(texts, n_frames, sampling, generator, prompt, windowing)
        audio = decode(self.codec, codes, dtype=self.dtype).numpy()  # (B, n_frames * hop)
        return audio[:, : n_prompt * self.hop + round(seconds * self.sample_rate)]


def pad_states(states: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pads ragged text states (L_i, D) into cond (B, L, D) float32 and cond_mask (B, L) bool."""
    L = max(len(s) for s in states)
    cond = torch.zeros(len(states), L, states[0].shape[1])
    mask = torch.zeros(len(states), L, dtype=torch.bool)
    for i, s in enumerate(states):
        cond[i, : len(s)] = torch.from_numpy(s.astype(np.float32))
        mask[i, : len(s)] = True
    return cond, mask


def check_compatible(m: MusicGen) -> None:
    """Raises ModelError if the text encoder, LM and codec do not fit together."""
    cfg, codec = m.lm.cfg, m.codec.config
    text_dim = m.text_encoder.config.d_model
    problems = []
    if cfg.text_dim != text_dim:
        problems.append(
            f"the LM takes {cfg.text_dim}-wide text states, the encoder gives {text_dim}"
        )
    if cfg.card != codec.codebook_size:
        problems.append(
            f"the LM has {cfg.card} codes per codebook, the codec {codec.codebook_size}"
        )
    if cfg.n_codebooks > m.codec.quantizer.num_quantizers:
        problems.append(
            f"the LM has {cfg.n_codebooks} codebooks, the codec {m.codec.quantizer.num_quantizers}"
        )
    if problems:
        raise ModelError(f"{m.source}: the models do not fit together: " + "; ".join(problems))


def _need(path: Path, what: str, stage: str) -> Path:
    if not (path / "config.json").is_file():
        raise ModelError(
            f"no {what} at {path}: run `dvc repro {stage}` (or `dvc repro`) in the run first, or "
            "pass --hf facebook/musicgen-small"
        )
    return path


def run_max_words(run_dir: Path) -> int:
    """``encode_text.max_words`` of the run's ``params.yaml`` (250 if it does not say)."""
    from musicgen.params import load_params

    if not (run_dir / PARAMS).is_file():
        return MAX_WORDS
    return int(load_params(run_dir / PARAMS).get("encode_text", {}).get("max_words", MAX_WORDS))


def run_trained_seconds(run_dir: Path, frame_rate: float) -> float | None:
    """Length of the run's training clips: its tokens' frames, else ``resample.duration_s``."""
    from musicgen.params import load_params

    if (run_dir / TOKENS).is_file():
        return np.load(run_dir / TOKENS, mmap_mode="r").shape[2] / frame_rate
    if (run_dir / PARAMS).is_file():
        duration = load_params(run_dir / PARAMS).get("resample", {}).get("duration_s")
        return float(duration) if duration else None
    return None


def load_run(run_dir: Path, device: torch.device, precision: str = "auto") -> MusicGen:
    """The LM, codec and text encoder of a trained run of this pipeline.

    Args:
        run_dir: the run (the directory holding ``dvc.yaml``, ``params.yaml`` and ``data/``).
        device: where the models run.
        precision: see :class:`MusicGen`.

    Raises:
        ModelError: if the directory or one of its models is missing, or they do not fit.
    """
    from musicgen.codec import load_codec
    from musicgen.lm import load_lm
    from musicgen.text import load_text_encoder

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ModelError(f"run directory {run_dir} does not exist (give --model RUN_DIR or --hf)")
    lm_dir = _need(run_dir / LM_DIR, "trained LM", "train")
    codec_dir = _need(run_dir / CODEC_DIR, "codec", "codec_model")
    text_dir = _need(run_dir / TEXT_DIR, "text encoder", "text_model")
    tokenizer, text_encoder = load_text_encoder(text_dir)
    m = MusicGen(
        load_lm(lm_dir, device),
        load_codec(str(codec_dir)).to(device),
        tokenizer,
        text_encoder.to(device),
        f"run:{run_dir.resolve()}",
        max_words=run_max_words(run_dir),
        precision=precision,
    )
    m.trained_seconds = run_trained_seconds(run_dir, m.frame_rate)
    check_compatible(m)
    return m


def hf_config(src: str):
    """The ``MusicgenConfig`` of a hub id or ``save_pretrained`` directory.

    Raises:
        ModelError: if it cannot be found, or is not a ``MusicgenForConditionalGeneration``.
    """
    from transformers import AutoConfig

    from musicgen.convert import CAUSAL, CONDITIONAL

    path = Path(src)
    looks_local = path.is_absolute() or src.startswith(".") or src.count("/") > 1
    if looks_local and not path.exists():
        raise ModelError(f"{src}: no such directory (give a save_pretrained directory or a hub id)")
    if path.exists() and not (path / "config.json").is_file():
        raise ModelError(
            f"{src} is not a Hugging Face checkpoint directory (no config.json); give a "
            "MusicgenForConditionalGeneration.save_pretrained directory or a hub id such as "
            "facebook/musicgen-small"
        )
    try:
        config = AutoConfig.from_pretrained(src)
    except (OSError, ValueError) as err:
        raise ModelError(
            f"cannot load {src!r}: not a local directory and not a hub id in the Hugging Face cache "
            f"(offline? set HF_HUB_OFFLINE=0 to download). {err}"
        ) from err
    if config.model_type == CAUSAL:
        raise ModelError(
            f"{src} is a MusicgenForCausalLM (the decoder alone): generation also needs the T5 "
            "encoder and EnCodec; give the MusicgenForConditionalGeneration checkpoint"
        )
    if config.model_type != CONDITIONAL:
        raise ModelError(
            f"{src} is a '{config.model_type}' checkpoint, not MusicGen ('{CONDITIONAL}', "
            "MusicgenForConditionalGeneration, e.g. facebook/musicgen-small)"
        )
    if config.decoder.audio_channels != 1:
        raise ModelError(f"{src} is a stereo MusicGen; only mono checkpoints are supported")
    return config


def load_hf(src: str, device: torch.device, precision: str = "auto") -> MusicGen:
    """A published MusicGen: T5 and tokenizer, EnCodec, and the decoder converted to the LM.

    Args:
        src: a hub id (``facebook/musicgen-small``) or a ``save_pretrained`` directory of a
            ``MusicgenForConditionalGeneration`` (with its tokenizer, as a processor saves it).
        device: where the models run.
        precision: see :class:`MusicGen`.

    Raises:
        ModelError: if ``src`` is missing, not MusicGen, has no tokenizer, or cannot be converted.
    """
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration

    from musicgen.convert import (
        UnsupportedCheckpoint,
        conditional_decoder,
        convert_weights,
        lm_config_from_hf,
    )

    hf_config(src)
    try:
        tokenizer = AutoTokenizer.from_pretrained(src)
    except (OSError, ValueError) as err:
        raise ModelError(
            f"{src} has no tokenizer: save it beside the model (e.g. "
            "MusicgenProcessor.save_pretrained or tokenizer.save_pretrained into the same directory)"
        ) from err
    model = MusicgenForConditionalGeneration.from_pretrained(src, dtype=torch.float32)
    try:
        hf = conditional_decoder(model, src)
        cfg = lm_config_from_hf(hf.config, hf.text_dim)
        weights = convert_weights(hf, cfg)
    except UnsupportedCheckpoint as err:
        raise ModelError(f"{src}: {err}") from err
    lm = LM(cfg)
    lm.load_state_dict(weights)
    m = MusicGen(
        lm.to(device).eval(),
        model.audio_encoder.to(device).eval(),
        tokenizer,
        model.text_encoder.to(device).eval().requires_grad_(False),
        f"hf:{src}",
        trained_seconds=PUBLISHED_WINDOW_S,
        precision=precision,
    )
    check_compatible(m)
    return m
