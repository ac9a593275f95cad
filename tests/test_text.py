import numpy as np
import pytest

from musicgen import text as T

CAPTIONS = [
    "This is an upbeat pop song with a sine lead in D minor. The tempo is fast.",
    "A calm ambient piece with warm pads and no percussion, in the key of C major.",
    "The drums play a steady beat while a plucked string melody rises.",
]


def test_tiny_encoder_round_trips_through_the_real_loader(tmp_path):
    tokenizer = T.train_tokenizer(CAPTIONS * 5, vocab_size=80)
    model = T.build_tiny_t5(
        T.TinyT5Config(d_model=32, d_ff=64, n_layers=1, n_heads=2), len(tokenizer)
    )
    T.save_text_encoder(tokenizer, model, tmp_path)
    tok2, model2 = T.load_text_encoder(tmp_path)
    a = T.encode_texts(tokenizer, model, CAPTIONS, progress=False)
    b = T.encode_texts(tok2, model2, CAPTIONS, progress=False)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert a[0].dtype == np.float16 and a[0].shape[1] == 32
    ids = tok2(CAPTIONS[0]).input_ids
    assert ids[-1] == 1 and len(a[0]) == len(ids)  # ends with </s>, no padding kept


def test_batching_does_not_change_the_states():
    tokenizer = T.train_tokenizer(CAPTIONS * 5, vocab_size=80)
    model = T.build_tiny_t5(
        T.TinyT5Config(d_model=32, d_ff=64, n_layers=1, n_heads=2), len(tokenizer)
    )
    one = T.encode_texts(tokenizer, model, CAPTIONS, batch_size=1, progress=False)
    many = T.encode_texts(tokenizer, model, CAPTIONS, batch_size=3, progress=False)
    for x, y in zip(one, many, strict=True):
        assert np.allclose(x.astype(np.float32), y.astype(np.float32), atol=2e-3)


def test_caption_variants_are_seeded_per_clip():
    words = " ".join(f"w{i}" for i in range(300))
    v = T.caption_variants("abc", words, 4, 0.2, 250, seed=0)
    assert v[0].split() == words.split()[:250]
    assert all(set(x.split()) <= set(v[0].split()) for x in v[1:])
    kept = np.mean([len(x.split()) / 250 for x in v[1:]])
    assert 0.7 < kept < 0.9
    assert v == T.caption_variants("abc", words, 4, 0.2, 250, seed=0)
    assert v[1:] != T.caption_variants("abd", words, 4, 0.2, 250, seed=0)[1:]


def test_word_dropout_keeps_at_least_one_word():
    rng = np.random.default_rng(0)
    assert len(T.word_dropout(["only"], 0.999, rng)) == 1


def test_tokenizer_is_reproducible_and_knows_caption_words():
    a = T.train_tokenizer(CAPTIONS * 5, vocab_size=40)
    b = T.train_tokenizer(list(reversed(CAPTIONS * 5)), vocab_size=40)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert len(a) == 40
    ids = a("The tempo is fast.").input_ids
    assert 2 not in ids  # no <unk>: every word is in the vocabulary
    assert a("zyzzyva").input_ids == [2, 1]


def test_a_musicgen_gives_its_t5_encoder_and_tokenizer(tmp_path):
    """``text.source`` = a MusicgenForConditionalGeneration: the stage saves its T5 encoder and the
    tokenizer saved beside it; the states are those of Hugging Face's composite model."""
    from hf_musicgen import save_musicgen
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration

    from musicgen.pipeline.captions import text_model

    src = save_musicgen(tmp_path / "hf", CAPTIONS * 5)
    text_model({"source": str(src)}, tmp_path / "no-raw", tmp_path / "no-split", tmp_path / "text")
    tokenizer, model = T.load_text_encoder(tmp_path / "text")  # the stage's output
    saved = AutoTokenizer.from_pretrained(src)
    assert tokenizer(CAPTIONS).input_ids == saved(CAPTIONS).input_ids
    assert 2 not in tokenizer(CAPTIONS[0]).input_ids  # the captions' words, not <unk>
    expected = MusicgenForConditionalGeneration.from_pretrained(src).text_encoder.eval()
    ours = T.encode_texts(tokenizer, model, CAPTIONS, progress=False)
    theirs = T.encode_texts(saved, expected, CAPTIONS, progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_a_musicgen_without_its_tokenizer_is_refused(tmp_path):
    from hf_musicgen import build_musicgen

    build_musicgen(vocab_size=40).save_pretrained(tmp_path)
    with pytest.raises(OSError, match="with its tokenizer") as err:
        T.load_text_encoder(tmp_path)
    assert "no tokenizer_config.json" in str(err.value.__cause__)  # not an empty T5 tokenizer
