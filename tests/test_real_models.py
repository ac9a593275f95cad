"""The real run's models: EnCodec 32 kHz and t5-base configurations through every stage.

The hub is offline here, so the test builds an ``EncodecModel`` with the exact configuration of
``facebook/encodec_32khz`` and a ``T5EncoderModel`` with that of ``t5-base`` (random weights),
saves both with ``save_pretrained`` and gives their directories to ``codec.source`` and
``text.source``: the stages load them through the code that loads the hub ids. The real run's
shapes come out: codes (N, 4, 500) for 10 s clips, text states 768 wide.

The tokenizer is the project's word-level one (``musicgen.text.train_tokenizer``, T5's special
ids ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2), built from the clips' captions: t5-base's SentencePiece
vocabulary is a download. Its ids fit in t5-base's 32,128 embedding rows.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from stage_runner import encode_text, prepare_data, project_params, tokenize

from musicgen.hub_configs import ENCODEC_32KHZ, T5_BASE

# 4 clips of 10 s: 1 train, 1 valid, 2 test (split seed 7 puts them there; the reference set of
# evaluate needs 2 or more), a tiny LM trained for 2 steps, both test captions generated.
REAL = {
    ("data", "synthetic", "n_clips"): 4,
    ("data", "synthetic", "duration_s"): 10,
    ("resample", "duration_s"): 10,
    ("split", "fractions"): [0.4, 0.2, 0.4],
    ("split", "seed"): 7,
    ("tokenize", "batch_size"): 4,  # one encoder call for the 4 clips
    ("encode_text", "n_variants"): 2,
    ("train", "steps"): 2,
    ("train", "warmup_steps"): 1,
    ("train", "batch_size"): 2,
    ("train", "eval_every"): 2,
    ("train", "checkpoint_every"): 2,
    ("generate", "max_items"): 2,
}


def build_real_models(root, captions: list[str]) -> tuple:
    """EnCodec 32 kHz and t5-base (random weights) saved with save_pretrained; their dirs."""
    from transformers import EncodecConfig, EncodecModel, T5Config, T5EncoderModel

    from musicgen.codec import save_codec
    from musicgen.text import save_text_encoder, train_tokenizer

    torch.manual_seed(0)
    codec_dir, t5_dir = root / "encodec_32khz", root / "t5-base"
    save_codec(EncodecModel(EncodecConfig(**ENCODEC_32KHZ)).eval(), codec_dir)
    tokenizer = train_tokenizer(captions, T5_BASE["vocab_size"])
    save_text_encoder(tokenizer, T5EncoderModel(T5Config(**T5_BASE)).eval(), t5_dir)
    return codec_dir, t5_dir


@pytest.mark.slow
def test_the_real_configurations_run_every_stage(tmp_path):
    from musicgen.data.store import load_tokens
    from musicgen.lm import load_lm
    from musicgen.pipeline import captions, codes, evaluation, generation, references, training
    from musicgen.pipeline.common import read_metadata, used_ids

    params = project_params(REAL)
    d = prepare_data(tmp_path / "run", params)
    ids = used_ids(d.split)
    sizes = [len((d.split / f"{s}.txt").read_text().split()) for s in ("train", "valid", "test")]
    assert sizes == [1, 1, 2]
    metadata = read_metadata(d.raw).set_index("ytid")
    codec_dir, t5_dir = build_real_models(tmp_path, metadata.loc[ids, "caption"].tolist())
    params["codec"]["source"], params["text"]["source"] = str(codec_dir), str(t5_dir)
    sr = params["resample"]["sample_rate"]

    # codec_model: a directory codec is loaded and saved; no audio is read (none is given)
    missing = tmp_path / "no-audio"
    codes.codec_model(params["codec"], sr, missing, missing, d.codec, progress=False)
    captions.text_model(params["text"], d.raw, d.split, d.text_model)

    tokenize(d, params, d.tokens, d.metrics / "tokens.json")
    token_ids, token_codes = load_tokens(d.tokens)
    assert token_ids == ids and token_codes.shape == (4, 4, 500)

    encode_text(d, params, d.text)
    states = np.load(d.text / "embeddings.npy")
    assert states.shape[1] == 768 and np.isfinite(states).all()

    training.train(
        params["lm"],
        params["train"],
        d.tokens,
        d.text,
        d.split,
        d.codec,
        d.lm,
        d.checkpoint,
        d.metrics / "train.json",
        d.plots / "train",
        progress=False,
    )
    assert load_lm(d.lm).cfg.text_dim == 768

    generation.generate(
        params["generate"], d.lm, d.codec, d.text, d.tokens, d.split, d.generated, progress=False
    )
    gen_ids, gen_codes = load_tokens(d.generated / "tokens")
    assert gen_codes.shape == (2, 4, 500) and gen_codes.max() < 2048
    assert len(list((d.generated / "audio").glob("*.wav"))) == 2

    # evaluate with the embedded default's eval models (seeded VGGish, tiny CLAP: no download)
    models, reference = d.root / "data/models/eval", d.root / "data/reference"
    references.eval_models(params["evaluate"], models)
    references.reference_stats(params["evaluate"], sr, d.raw, d.audio, d.split, models, reference)
    evaluation.evaluate(
        params,
        d.lm,
        d.tokens,
        d.text,
        d.split,
        d.audio,
        d.generated,
        models,
        reference,
        d.metrics / "eval.json",
        d.root / "reports/eval/details.json",
        d.metrics / "eval_per_clip.csv",
        d.root / "reports/gallery",
        d.plots / "spectrograms",
        d.plots / "train",  # the training curves of the gallery
    )
    metrics = json.loads((d.metrics / "eval.json").read_text())
    details = json.loads((d.root / "reports/eval/details.json").read_text())
    assert details["fd_clips"] == 2 and np.isfinite(metrics["test_ce"])
    assert (d.root / "reports/gallery/index.html").is_file()
