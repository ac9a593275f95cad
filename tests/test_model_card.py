"""A published MusicGen evaluated through the pipeline's own stages, as the model card's numbers are.

A small random ``MusicgenForConditionalGeneration`` (T5, EnCodec with MusicGen's framing, decoder)
saved with its tokenizer stands in for ``facebook/musicgen-small``: ``dvc exp run`` with
``train.init_from``, ``codec.source`` and ``text.source`` all set to it and ``train.steps=0`` runs
every stage on it, and greedy generation gives the codes Hugging Face's ``generate`` gives.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
from hf_musicgen import hf_generate, save_musicgen
from pipeline_repo import SMALL, copy_project, ran_stages, run
from transformers import AutoTokenizer, MusicgenForConditionalGeneration

from musicgen.data.store import load_tokens
from musicgen.pipeline.common import read_metadata
from musicgen.text import caption_variants

CFG_COEF = 3.0  # generate.cfg_coef, Hugging Face's guidance_scale
MAX_WORDS = 6  # encode_text.max_words: the captions are cut, on both sides alike


@pytest.mark.slow
def test_a_published_musicgen_through_dvc_exp_run_generates_what_hugging_face_does(tmp_path):
    repo = copy_project(tmp_path / "repo", SMALL | {("encode_text", "max_words"): MAX_WORDS})
    run(["dvc", "repro", "download"], repo)  # the captions its tokenizer is built from
    captions = read_metadata(repo / "data/raw").set_index("ytid")["caption"]
    hf_dir = save_musicgen(tmp_path / "musicgen", captions.tolist())
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline"], repo)

    sources = ("train.init_from", "codec.source", "text.source")
    keys = [f"{key}={hf_dir}" for key in sources]
    keys += ["train.steps=0", "generate.temperature=0", f"generate.cfg_coef={CFG_COEF}"]
    out = run(["dvc", "exp", "run", *[a for key in keys for a in ("-S", key)]], repo)
    assert {"codec_model", "text_model", "train", "generate", "evaluate"} <= ran_stages(out)
    assert json.loads((repo / "metrics/train.json").read_text())["steps"] == 0

    ids, ours = load_tokens(repo / "data/generated/tokens")  # (N, K, T) greedy codes
    texts = [caption_variants(y, captions[y], 1, 0.0, MAX_WORDS, 0)[0] for y in ids]
    assert any(len(captions[y].split()) > MAX_WORDS for y in ids)  # the cut is exercised
    hf = MusicgenForConditionalGeneration.from_pretrained(hf_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    codes, audio = hf_generate(hf, tokenizer, texts, ours.shape[2], CFG_COEF)
    assert codes.shape == ours.shape and len(ids) == 6
    assert np.array_equal(codes.numpy(), ours)
    assert len({c.tobytes() for c in ours}) > 1  # the captions lead to different music
    for y, expected in zip(ids, np.clip(audio.numpy(), -1, 1), strict=True):  # the same EnCodec
        wav, rate = sf.read(repo / "data/generated/audio" / f"{y}.wav", dtype="float32")
        assert rate == 32000 and np.abs(wav - expected).max() <= 1.5 / 32768  # 16-bit wav

    metrics = json.loads((repo / "metrics/eval.json").read_text())
    # the paper's three numbers: FAD (VGGish), KL (PaSST, a default evaluate.embedders entry), CLAP
    for key in ("fad_vggish", "kl_passt", "clap_score"):
        assert math.isfinite(metrics[key]), key
    assert metrics["fad_vggish"] >= 0 and metrics["kl_passt"] >= 0
