"""Hugging Face MusicGen -> LM conversion: logits parity and greedy generation equality.

Random Hugging Face models are built from small configs, saved with ``save_pretrained``, converted
with ``convert_hf`` and loaded back with ``load_lm``: the real code path, offline.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from transformers import (
    EncodecConfig,
    GenerationConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForCausalLM,
    MusicgenForConditionalGeneration,
    T5Config,
    T5EncoderModel,
)
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.models.musicgen.modeling_musicgen import MusicgenSinusoidalPositionalEmbedding

from musicgen.cli import main
from musicgen.convert import UnsupportedCheckpoint, convert_hf
from musicgen.generate import SamplingConfig, generate
from musicgen.lm import LM, load_lm, sinusoidal_positions

TOL = 1e-4  # max abs logit error, float32
B, L = 2, 5  # batch, text length


@dataclass(frozen=True)
class Case:
    """A small Hugging Face MusicGen: a bare decoder (``causal``) or the composite model."""

    name: str
    kind: str  # causal | conditional
    d_model: int
    n_heads: int
    n_layers: int
    ffn_dim: int
    n_codebooks: int
    card: int
    audio_channels: int = 1
    text_dim: int | None = None  # the T5 width of a conditional model

    def decoder_config(self) -> MusicgenDecoderConfig:
        return MusicgenDecoderConfig(
            hidden_size=self.d_model,
            num_attention_heads=self.n_heads,
            num_hidden_layers=self.n_layers,
            ffn_dim=self.ffn_dim,
            num_codebooks=self.n_codebooks,
            audio_channels=self.audio_channels,
            vocab_size=self.card,
            pad_token_id=self.card,
            bos_token_id=self.card,
            decoder_start_token_id=self.card,
        )

    @property
    def cond_dim(self) -> int:
        return self.text_dim or self.d_model


CASES = [
    Case("causal-4cb", "causal", 32, 4, 2, 64, n_codebooks=4, card=64),
    Case("conditional-3cb", "conditional", 48, 6, 3, 80, n_codebooks=3, card=40, text_dim=24),
    Case("causal-stereo", "causal", 16, 2, 1, 32, n_codebooks=4, card=32, audio_channels=2),
]


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights of unit-scale activations, non-trivial norms and biases, so that errors show."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.dim() >= 2:
            p.data = torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5
        else:  # norms and biases
            p.data = p.data + 0.2 * torch.randn(p.shape, generator=g)


def build_hf(case: Case) -> MusicgenForCausalLM | MusicgenForConditionalGeneration:
    torch.manual_seed(0)
    if case.kind == "causal":
        model = MusicgenForCausalLM(case.decoder_config())
    else:
        text = T5Config(
            vocab_size=50, d_model=case.text_dim, d_kv=8, d_ff=32, num_layers=1, num_heads=3
        )
        audio = EncodecConfig(
            num_filters=4, hidden_size=8, codebook_size=32, upsampling_ratios=[2, 2]
        )
        config = MusicgenConfig(
            text_encoder=text, audio_encoder=audio, decoder=case.decoder_config()
        )
        model = MusicgenForConditionalGeneration(config)
    randomize(model, seed=1)
    return model.eval()


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.name)
def converted(request, tmp_path_factory):
    """(case, the Hugging Face model, the converted LM loaded by ``load_lm``)."""
    case = request.param
    tmp = tmp_path_factory.mktemp(case.name)
    hf = build_hf(case)
    hf.save_pretrained(tmp / "hf")
    convert_hf(str(tmp / "hf"), tmp / "lm")
    return case, hf, load_lm(tmp / "lm")


def hf_decoder(hf) -> MusicgenForCausalLM:
    return hf if isinstance(hf, MusicgenForCausalLM) else hf.decoder


def hf_decoder_states(hf, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The encoder states Hugging Face's decoder attends to: projected and zeroed where masked, as in
    ``MusicgenForConditionalGeneration.forward``; a bare decoder takes them as they are."""
    if isinstance(hf, MusicgenForCausalLM):
        return states
    return hf.enc_to_dec_proj(states) * mask[..., None]


def hf_logits(hf, ids, states, mask, step_mask) -> torch.Tensor:
    """Hugging Face's logits (B * K, S, card) on interleaved ``ids`` (B * K, S)."""
    if isinstance(hf, MusicgenForCausalLM):
        out = hf(
            input_ids=ids,
            attention_mask=step_mask,
            encoder_hidden_states=states,
            encoder_attention_mask=mask,
        )
    else:
        out = hf(
            encoder_outputs=(states,),
            attention_mask=mask,
            decoder_input_ids=ids,
            decoder_attention_mask=step_mask,
        )
    return out.logits


def conditioning(case: Case, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Text states (B, L, text_dim) and a mask whose second row is padded."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 3:] = 0
    return torch.randn(B, L, case.cond_dim, generator=g), mask


def test_sinusoidal_positions_equal_hugging_face():
    for dim in (16, 48, 1024):
        hf = MusicgenSinusoidalPositionalEmbedding.get_embedding(2048, dim)
        assert torch.equal(sinusoidal_positions(torch.arange(2048), dim), hf)


def test_config_is_mapped(converted):
    case, hf, model = converted
    cfg = model.cfg
    assert (cfg.d_model, cfg.n_heads, cfg.n_layers, cfg.ffn_dim) == (
        case.d_model,
        case.n_heads,
        case.n_layers,
        case.ffn_dim,
    )
    assert (cfg.n_codebooks, cfg.card, cfg.text_dim) == (case.n_codebooks, case.card, case.cond_dim)
    assert cfg.pattern == "delay"
    assert cfg.delays == [k // case.audio_channels for k in range(case.n_codebooks)]
    if case.kind == "causal":  # no projection: the identity
        assert torch.equal(model.text_proj.weight, torch.eye(case.d_model))
        assert not model.text_proj.bias.any()
    else:
        assert torch.equal(model.text_proj.bias, hf.enc_to_dec_proj.bias)


@torch.no_grad()
def test_logits_on_interleaved_steps_equal_hugging_face(converted):
    """Our ``decode_steps`` vs Hugging Face on the same (B * K, S) ids, with text padding (cross-
    attention mask) and a right-padded decoder mask; padded steps are not compared."""
    case, hf, model = converted
    K, S = case.n_codebooks, 9
    states, mask = conditioning(case)
    ids = torch.randint(0, case.card + 1, (B * K, S), generator=torch.Generator().manual_seed(3))
    step_mask = torch.ones(B, S, dtype=torch.long)
    step_mask[1, S - 2 :] = 0
    expected = hf_logits(hf, ids, states, mask, step_mask).view(B, K, S, -1)
    ours = model.decode_steps(ids.view(B, K, S), *model.condition(states, mask.bool()))
    assert expected.abs().max() > 1  # the comparison is not between near-zero logits
    err = max(
        (ours[0] - expected[0]).abs().max(),
        (ours[1, :, : S - 2] - expected[1, :, : S - 2]).abs().max(),
    )
    assert err <= TOL, f"{case.name}: max abs error {err:.2e}"


@torch.no_grad()
def test_logits_through_the_pattern_equal_hugging_face(converted):
    """Our ``forward`` on codes (B, K, T) vs Hugging Face on its own delayed sequence of them."""
    case, hf, model = converted
    K, T = case.n_codebooks, 7
    states, mask = conditioning(case)
    codes = torch.randint(0, case.card, (B, K, T), generator=torch.Generator().manual_seed(4))
    pattern = model.pattern(T)
    start = torch.full((B * K, 1), case.card)
    _, delayed = hf_decoder(hf).build_delay_pattern_mask(
        torch.cat([start, codes.reshape(B * K, T)], dim=1),
        pad_token_id=case.card,
        max_length=pattern.n_steps + 1,
    )  # (B * K, 1 + S): the start step, then the pattern sequence
    assert torch.equal(delayed[:, 1:].view(B, K, -1), pattern.build(codes, case.card))
    expected = hf_logits(hf, delayed[:, :-1], states, mask, None).view(B, K, pattern.n_steps, -1)
    ours, _ = model(codes, states, mask.bool())
    err = (ours - pattern.revert(expected)).abs().max()
    assert err <= TOL, f"{case.name}: max abs error {err:.2e}"


def hf_generate(hf, case: Case, states, mask, n_steps: int, guidance_scale: float):
    """Hugging Face's greedy ``MusicgenForCausalLM.generate`` with classifier-free guidance.

    Transformers 5.x needs: an explicit encoder-decoder cache (the default one puts cross-attention
    entries in the self-attention slots); an all-ones decoder attention mask (the start token is the
    pad token, so an inferred mask would hide it); the special ids and lengths in a GenerationConfig;
    the encoder states already doubled as [cond; null] with the null rows all zero and masked, as
    ``MusicgenForConditionalGeneration`` builds them.
    """
    K = case.n_codebooks
    config = GenerationConfig(
        decoder_start_token_id=case.card,
        pad_token_id=case.card,
        bos_token_id=case.card,
        eos_token_id=None,
        max_new_tokens=n_steps,
        num_return_sequences=1,
        do_sample=False,
        guidance_scale=guidance_scale,
        use_cache=True,
    )
    decoder_states = hf_decoder_states(hf, states, mask)
    return hf_decoder(hf).generate(
        torch.full((B * K, 1), case.card),
        generation_config=config,
        attention_mask=torch.ones(B * K, 1, dtype=torch.long),
        encoder_hidden_states=torch.cat([decoder_states, torch.zeros_like(decoder_states)]),
        encoder_attention_mask=torch.cat([mask, torch.zeros_like(mask)]),
        cache=EncoderDecoderCache(DynamicCache(), DynamicCache()),
    )


@torch.no_grad()
def test_greedy_generation_with_guidance_equals_hugging_face(converted):
    case, hf, model = converted
    T = 8
    states, mask = conditioning(case)
    n_steps = model.pattern(T).n_steps  # T + max delay: HF's max_new_tokens
    expected = hf_generate(hf, case, states, mask, n_steps, guidance_scale=3.0)
    ours = generate(model, states, mask.bool(), T, SamplingConfig(cfg_coef=3.0, temperature=0))
    assert expected.shape == ours.shape == (B, case.n_codebooks, T)
    assert torch.equal(ours, expected)
    unguided = generate(model, states, mask.bool(), T, SamplingConfig(cfg_coef=1.0, temperature=0))
    assert not torch.equal(unguided, ours)  # guidance changes the tokens: the null rows matter


def test_cli_converts(tmp_path):
    case = CASES[0]
    build_hf(case).save_pretrained(tmp_path / "hf")
    main(["convert-hf", str(tmp_path / "hf"), str(tmp_path / "lm")])
    model = load_lm(tmp_path / "lm")
    assert isinstance(model, LM) and model.cfg.card == case.card


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(activation_function="relu"), "activation"),
        (dict(scale_embedding=True), "scale_embedding"),
        (dict(bos_token_id=0), "bos_token_id"),
    ],
)
def test_unsupported_decoders_are_refused(tmp_path, change, message):
    config = CASES[0].decoder_config()
    for key, value in change.items():
        setattr(config, key, value)
    MusicgenForCausalLM(config).save_pretrained(tmp_path / "hf")
    with pytest.raises(UnsupportedCheckpoint, match=message):
        convert_hf(str(tmp_path / "hf"), tmp_path / "lm")
    assert not (tmp_path / "lm").exists()


def test_other_models_are_refused(tmp_path):
    T5EncoderModel(
        T5Config(vocab_size=10, d_model=8, d_kv=4, d_ff=8, num_layers=1, num_heads=2)
    ).save_pretrained(tmp_path / "t5")
    with pytest.raises(UnsupportedCheckpoint, match="only 'musicgen'"):
        convert_hf(str(tmp_path / "t5"), tmp_path / "lm")
