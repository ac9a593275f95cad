"""CLAP (transformers' ``ClapModel``): audio and caption embeddings, the CLAP score.

The real run loads a hub id such as ``laion/larger_clap_music`` (the checkpoint audiocraft's
CLAP score uses is a LAION music CLAP); the embedded default builds a small ``ClapConfig`` with
seeded random weights and a processor that needs no download (the default
``ClapFeatureExtractor`` and a byte-level tokenizer). Both are saved with ``save_pretrained`` into
the eval-models output and loaded back through :func:`load_clap`, one code path.

CLAP score: the cosine similarity of each generated clip's audio embedding with its caption's text
embedding, averaged over clips (audiocraft's ``CLAPTextConsistencyMetric``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from musicgen.data.audio import resample

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0..3, RoBERTa's order (bos, pad, eos)


@dataclass
class TinyClapConfig:
    hidden_size: int = 32  # text width (larger_clap_music: 768)
    audio_hidden_size: int = 32  # the audio Swin's last stage width
    n_layers: int = 1  # text layers
    n_heads: int = 2
    projection_dim: int = 32  # the joint embedding (larger_clap_music: 512)
    seed: int = 0


def byte_tokenizer(max_length: int = 512):
    """A byte-level tokenizer that needs no training data: each UTF-8 byte is a token.

    Returns:
        a fast tokenizer with RoBERTa's special tokens (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2,
        ``<unk>`` 3) that wraps each text in ``<s> ... </s>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=max_length,
    )


def save_tiny_clap(cfg: TinyClapConfig, out_dir: Path) -> None:
    """Writes a small CLAP with seeded random weights and its processor to ``out_dir``."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor

    tokenizer = byte_tokenizer()
    config = ClapConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads,
            intermediate_size=4 * cfg.hidden_size,
            projection_dim=cfg.projection_dim,
        ),
        audio_config=dict(
            depths=[1, 1],
            num_attention_heads=[cfg.n_heads, cfg.n_heads],
            patch_embeds_hidden_size=cfg.audio_hidden_size // 2,
            hidden_size=cfg.audio_hidden_size,
            projection_dim=cfg.projection_dim,
        ),
        projection_dim=cfg.projection_dim,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = ClapModel(config)
    # no fusion (as larger_clap_music): clips longer than 10 s are cropped, shorter ones repeated
    processor = ClapProcessor(
        feature_extractor=ClapFeatureExtractor(truncation="rand_trunc"), tokenizer=tokenizer
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


def save_hub_clap(source: str, out_dir: Path) -> str:
    """Copies a CLAP checkpoint (hub id or directory) and its processor into ``out_dir``.

    Returns:
        its description: ``source``, with ``@<commit>`` when it came from the hub.
    """
    from transformers import AutoProcessor, ClapModel

    model = ClapModel.from_pretrained(source)
    model.save_pretrained(out_dir)
    AutoProcessor.from_pretrained(source).save_pretrained(out_dir)
    commit = getattr(model.config, "_commit_hash", None)
    return f"{source}@{commit}" if commit else source


def _pooled(out) -> torch.Tensor:
    """transformers 5 returns an output object (pooler_output), 4.x the tensor itself."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClapEmbedder:
    """Audio clips and captions -> unit-norm CLAP embeddings, batched, on a device.

    Args:
        model_dir: A ``save_pretrained`` directory with the model and its processor.
        device: Where the model runs.
        batch_size: Clips or captions per model call.
    """

    name = "clap"

    def __init__(self, model_dir: str | Path, device: torch.device, batch_size: int = 16) -> None:
        from transformers import AutoProcessor, ClapModel

        self.model = ClapModel.from_pretrained(str(model_dir)).to(device).eval()
        self.processor = AutoProcessor.from_pretrained(str(model_dir))
        self.sample_rate = int(self.processor.feature_extractor.sampling_rate)
        self.dim = int(self.model.config.projection_dim)
        self.device = device
        self.batch_size = batch_size

    @torch.no_grad()
    def embed_clips(self, clips: np.ndarray, sample_rate: int) -> np.ndarray:
        """Embeds clips (N, S) at ``sample_rate``.

        Returns:
            (N, 1, D) float64 unit vectors: one embedding per clip.
        """
        out = []
        for i in range(0, len(clips), self.batch_size):
            audio = [
                resample(c, sample_rate, self.sample_rate) for c in clips[i : i + self.batch_size]
            ]
            inputs = self.processor(
                audio=audio, sampling_rate=self.sample_rate, return_tensors="pt"
            ).to(self.device)
            out.append(_pooled(self.model.get_audio_features(**inputs)))
        emb = torch.nn.functional.normalize(torch.cat(out).double(), dim=-1)
        return emb.cpu().numpy()[:, None]

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Embeds captions: (N, D) float64 unit vectors (long captions are truncated)."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            inputs = self.processor(
                text=texts[i : i + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
            ).to(self.device)
            out.append(_pooled(self.model.get_text_features(**inputs)))
        return torch.nn.functional.normalize(torch.cat(out).double(), dim=-1).cpu().numpy()


def clap_scores(audio: np.ndarray, text: np.ndarray) -> np.ndarray:
    """Per-clip cosine similarity of (N, D) audio and (N, D) caption embeddings, (N,) float64."""
    a = audio / np.linalg.norm(audio, axis=-1, keepdims=True)
    t = text / np.linalg.norm(text, axis=-1, keepdims=True)
    return np.sum(a * t, axis=-1)
