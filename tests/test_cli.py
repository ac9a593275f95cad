"""``musicgen generate`` and ``musicgen info``, in process through ``musicgen.cli.main``.

A tiny run directory is built the quick way (no DVC): a tiny codec with codebooks fitted on noise,
a word-level tokenizer and a small T5, a random ``tiny`` LM, saved where the pipeline puts them.
A small random ``MusicgenForConditionalGeneration`` (T5, EnCodec with MusicGen's 32 kHz framing,
decoder) saved with ``save_pretrained`` stands in for a published checkpoint.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from transformers import (
    EncodecConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    T5Config,
)

from musicgen import codec as C
from musicgen import text as T
from musicgen.cli import main, slug
from musicgen.generate import SamplingConfig
from musicgen.inference import load_hf, load_run
from musicgen.lm import LM, LMConfig, save_lm

RATE = 32000  # both codecs: MusicGen's framing, hop 640 = 50 frames/s
CAPTIONS = ["calm piano with soft strings", "fast drums and a loud bass", "a sad violin melody"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run directory holding what the codec_model, text_model and train stages write."""
    run = tmp_path_factory.mktemp("run")
    codec = C.build_tiny_codec(C.TinyCodecConfig(num_filters=4, hidden_size=8))
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, (2, RATE)).astype(np.float32)
    C.fit_codebooks(codec, noise, n_iter=2, progress=False, codes_used=16)
    C.save_codec(codec, run / "data/models/codec")
    tokenizer = T.train_tokenizer(CAPTIONS, vocab_size=40)
    t5 = T.build_tiny_t5(T.TinyT5Config(d_model=16, d_ff=32, n_layers=1, n_heads=2), len(tokenizer))
    T.save_text_encoder(tokenizer, t5, run / "data/models/text")
    cfg = LMConfig.from_preset("tiny", d_model=32, n_heads=2, n_layers=1, ffn_dim=64, text_dim=16)
    torch.manual_seed(0)
    save_lm(run / "data/lm", LM(cfg).state_dict(), cfg)
    (run / "params.yaml").write_text("encode_text:\n  max_words: 3\nresample:\n  duration_s: 4\n")
    return run


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return save_hf_musicgen(tmp_path_factory.mktemp("hf"))


def save_hf_musicgen(out):
    """A random MusicGen (T5 24 wide, EnCodec 32 kHz 4 x 64 codes, decoder 32 wide) and its
    tokenizer, saved in ``out`` as a processor would save them."""
    tokenizer = T.train_tokenizer(CAPTIONS, vocab_size=40)
    text = T5Config(
        vocab_size=len(tokenizer), d_model=24, d_kv=8, d_ff=32, num_layers=1, num_heads=3
    )
    audio = EncodecConfig(
        sampling_rate=RATE,
        upsampling_ratios=[8, 5, 4, 4],
        codebook_size=64,
        target_bandwidths=[2.2],  # 4 codebooks at 50 frames/s
        num_filters=4,
        hidden_size=8,
        use_causal_conv=False,
    )
    decoder = MusicgenDecoderConfig(
        hidden_size=32,
        num_attention_heads=2,
        num_hidden_layers=2,
        ffn_dim=64,
        num_codebooks=4,
        vocab_size=64,
        pad_token_id=64,
        bos_token_id=64,
        decoder_start_token_id=64,
    )
    torch.manual_seed(0)
    config = MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder)
    MusicgenForConditionalGeneration(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def run_cli(argv: list, capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``musicgen argv``."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_from_a_run_writes_a_wav_at_the_codec_rate_and_a_sidecar(
    tiny_run, tmp_path, capsys
):
    wav = tmp_path / "x.wav"
    code, out, err = run_cli(
        ["generate", "calm piano", "--model", tiny_run, "--seconds", 2, "--out", wav], capsys
    )
    assert code == 0, err
    info = sf.info(str(wav))
    assert (info.samplerate, info.frames, info.channels, info.subtype) == (
        RATE,
        2 * RATE,
        1,
        "PCM_16",
    )
    assert np.abs(sf.read(str(wav))[0]).max() > 0
    sidecar = json.loads(wav.with_suffix(".json").read_text())
    assert sidecar["prompt"] == "calm piano"
    assert sidecar["model"] == f"run:{tiny_run.resolve()}"
    assert (sidecar["seconds"], sidecar["seed"], sidecar["sample_rate"]) == (2.0, 0, RATE)
    assert sidecar["sampling"] == {"cfg_coef": 3.0, "top_k": 250, "top_p": 0.0, "temperature": 1.0}
    assert str(wav) in out


def test_generate_several_prompts_into_a_directory(tiny_run, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# a comment\nsad violin\n\nFast Drums & bass!\n")
    args = ["generate", "calm piano", "--prompts", prompts, "--model", tiny_run, "--seconds", 0.5]
    args += ["--batch-size", 2, "--seed", 3, "--top-k", 10]
    code, _, err = run_cli([*args, "--out", tmp_path / "a"], capsys)
    assert code == 0, err
    names = ["01_calm_piano", "02_sad_violin", "03_fast_drums_bass"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(
        f"{n}.{ext}" for n in names for ext in ("json", "wav")
    )
    for i, n in enumerate(names):
        sidecar = json.loads((tmp_path / "a" / f"{n}.json").read_text())
        assert (sidecar["index"], sidecar["seed"], sidecar["batch_size"]) == (i, 3, 2)
        assert sidecar["sampling"]["top_k"] == 10
        assert sf.info(str(tmp_path / "a" / f"{n}.wav")).frames == RATE // 2

    # never overwritten silently; the same command gives the same audio
    code, _, err = run_cli([*args, "--out", tmp_path / "a"], capsys)
    assert code == 1 and "exists: pass --overwrite" in err
    code, _, err = run_cli([*args, "--out", tmp_path / "a", "--overwrite"], capsys)
    assert code == 0, err
    code, _, err = run_cli([*args, "--out", tmp_path / "b"], capsys)
    assert code == 0, err
    for n in names:
        a, b = (sf.read(str(tmp_path / d / f"{n}.wav"))[0] for d in ("a", "b"))
        assert np.array_equal(a, b)


def test_generate_from_a_hugging_face_musicgen_directory(hf_dir, tmp_path, capsys):
    wav = tmp_path / "hf.wav"
    code, _, err = run_cli(
        ["generate", "calm piano", "--hf", hf_dir, "--seconds", 1, "--out", wav], capsys
    )
    assert code == 0, err
    info = sf.info(str(wav))
    assert (info.samplerate, info.frames) == (RATE, RATE)
    assert json.loads(wav.with_suffix(".json").read_text())["model"] == f"hf:{hf_dir}"


def test_hugging_face_model_keeps_the_text_projection_and_t5_states(hf_dir):
    """The LM takes the T5 states through ``enc_to_dec_proj``; the states are HF's T5 output."""
    m = load_hf(str(hf_dir), torch.device("cpu"))
    hf = MusicgenForConditionalGeneration.from_pretrained(hf_dir).eval()
    assert m.lm.cfg.text_dim == 24 and m.lm.cfg.d_model == 32
    assert torch.equal(m.lm.text_proj.weight, hf.enc_to_dec_proj.weight)
    cond, mask = m.condition(["calm piano", "a sad violin melody"])
    tokens = m.tokenizer(["calm piano", "a sad violin melody"], return_tensors="pt", padding=True)
    with torch.no_grad():
        states = hf.text_encoder(**tokens).last_hidden_state * tokens["attention_mask"][..., None]
    assert torch.equal(mask, tokens["attention_mask"].bool())
    torch.testing.assert_close(
        cond, states, atol=2e-3, rtol=1e-3
    )  # float16 storage, as in training


def test_hugging_face_model_generates_what_hugging_face_generates(hf_dir):
    """Greedy with guidance 3: the codes of ``load_hf(...).sample`` (tokenizer, T5, projection,
    converted decoder) are those ``MusicgenForConditionalGeneration.generate`` decodes."""
    m = load_hf(str(hf_dir), torch.device("cpu"))
    hf = MusicgenForConditionalGeneration.from_pretrained(hf_dir).eval()
    texts, steps = ["calm piano", "a sad violin melody"], 30
    decoded = []
    decode = hf.audio_encoder.decode
    hf.audio_encoder.decode = lambda codes, *a, **kw: (
        decoded.append(codes) or decode(codes, *a, **kw)
    )
    tokens = m.tokenizer(texts, return_tensors="pt", padding=True)
    hf.generate(**tokens, do_sample=False, guidance_scale=3.0, max_new_tokens=steps)
    expected = decoded[0][0]  # (B, K, steps - max delay)
    ours = m.sample(texts, steps, SamplingConfig(temperature=0), torch.Generator())
    assert expected.shape == (2, 4, steps - 3)
    assert torch.equal(ours[:, :, : expected.shape[2]], expected)


def test_continue_starts_with_the_prompt_audio_codes(tiny_run, tmp_path, capsys):
    rng = np.random.default_rng(1)
    prompt = tmp_path / "prompt.wav"
    sf.write(str(prompt), rng.uniform(-0.3, 0.3, (8000, 2)), 16000)  # 0.5 s stereo at 16 kHz
    m = load_run(tiny_run, torch.device("cpu"))
    codes = m.encode_audio(prompt)
    assert codes.shape == (1, 4, 25)
    out = m.sample(
        ["calm piano"] * 2, 40, SamplingConfig(), torch.Generator().manual_seed(0), codes
    )
    assert out.shape == (2, 4, 40) and len(codes.unique()) > 1
    assert torch.equal(out[:, :, :25], codes.expand(2, -1, -1))

    wav = tmp_path / "cont.wav"
    code, _, err = run_cli(
        [
            "generate",
            "calm",
            "--model",
            tiny_run,
            "--seconds",
            1,
            "--continue",
            prompt,
            "--out",
            wav,
        ],
        capsys,
    )
    assert code == 0, err
    assert sf.info(str(wav)).frames == 25 * 640 + RATE
    assert json.loads(wav.with_suffix(".json").read_text())["continue_frames"] == 25


def test_generate_past_the_runs_window_continues_in_sliding_windows(tiny_run, tmp_path, capsys):
    """A run trained on 4 s clips asked for 7 s writes 7 s: a 4 s window, then one moved on by
    the stride; the first window's codes are those of plain 4 s generation with the seed."""
    from musicgen.extend import Windowing

    wav = tmp_path / "long.wav"
    argv = ["generate", "calm", "--model", tiny_run, "--seconds", 7, "--out", wav]
    code, _, err = run_cli([*argv, "--extend-stride", 3], capsys)
    assert code == 0, err
    assert sf.info(str(wav)).frames == 7 * RATE
    sidecar = json.loads(wav.with_suffix(".json").read_text())
    assert (sidecar["window_frames"], sidecar["extend_stride_frames"]) == (200, 150)
    m = load_run(tiny_run, torch.device("cpu"))
    windowing = Windowing.from_seconds(m.frame_rate, 4.0, 3.0)
    long = m.sample(
        ["calm"], 350, SamplingConfig(), torch.Generator().manual_seed(0), None, windowing
    )
    plain = m.sample(["calm"], 200, SamplingConfig(), torch.Generator().manual_seed(0))
    assert long.shape == (1, 4, 350) and torch.equal(long[:, :, :200], plain)


def test_a_run_defaults_to_its_clip_length_and_cuts_captions(tiny_run):
    m = load_run(tiny_run, torch.device("cpu"))
    assert (m.trained_seconds, m.max_words) == (4.0, 3)
    long, short = m.condition(["calm piano with soft strings", "calm piano with"])[0]
    assert torch.equal(long, short)  # only the first 3 words count


def test_a_run_conditions_the_lm_as_the_encode_text_stage_did(tiny_run, tmp_path):
    """The CLI's T5 states of a caption are the states the LM was trained on (variant 0)."""
    from musicgen.data.store import CodesAndText, save_tokens
    from musicgen.pipeline.captions import encode_text

    ids = ["a", "b", "c"]
    (tmp_path / "raw").mkdir()
    pd.DataFrame({"ytid": ids, "caption": CAPTIONS}).to_csv(
        tmp_path / "raw/metadata.csv", index=False
    )
    (tmp_path / "split").mkdir()
    for name, rows in {"train": "a\nb\n", "valid": "c\n", "test": ""}.items():
        (tmp_path / f"split/{name}.txt").write_text(rows)
    params = {"n_variants": 2, "word_dropout": 0.5, "max_words": 3, "seed": 0, "batch_size": 32}
    params |= {"device": "cpu", "precision": "auto"}
    encode_text(
        params,
        tmp_path / "raw",
        tmp_path / "split",
        tiny_run / "data/models/text",
        tmp_path / "text",
        progress=False,
    )
    save_tokens(tmp_path / "tokens", ids, np.zeros((3, 4, 1), dtype=np.int16))
    stored = CodesAndText(tmp_path / "tokens", tmp_path / "text", ids).batch(np.arange(3))
    cond, mask = load_run(tiny_run, torch.device("cpu")).condition(CAPTIONS)
    assert torch.equal(mask, stored.cond_mask)
    torch.testing.assert_close(cond, stored.cond, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "{tmp}/nowhere"], "does not exist"),
        (["--model", "{tmp}"], "no trained LM at {tmp}/data/lm: run `dvc repro train`"),
        (["--hf", "{tmp}"], "not a Hugging Face checkpoint directory"),
        (["--hf", "{run}/data/models/codec"], "'encodec' checkpoint, not MusicGen"),
        (["--hf", "{tmp}/nowhere"], "nowhere: no such directory"),
        (["--model", "{run}", "--continue", "{tmp}/missing.wav"], "no such file"),
        (["--model", "{run}", "--continue", "{tmp}/bad.wav"], "cannot read the audio to continue"),
        (["--model", "{run}", "--continue", "{tmp}/silent.wav"], "is unusable: silent"),
        (["--model", "{run}", "--window", "2", "--extend-stride", "2"], "less than the window"),
    ],
)
def test_generate_errors_say_what_to_do(tiny_run, tmp_path, capsys, args, message):
    (tmp_path / "bad.wav").write_text("not audio")
    sf.write(str(tmp_path / "silent.wav"), np.zeros(1600), 16000)
    fill = {"tmp": tmp_path, "run": tiny_run}
    argv = ["generate", "calm piano", "--out", tmp_path / "out.wav"] + [
        a.format(**fill) for a in args
    ]
    code, _, err = run_cli(argv, capsys)
    assert code == 1
    assert message.format(**fill) in err
    assert not (tmp_path / "out.wav").exists()


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["x", "--seconds", "0"], 2, "--seconds must be > 0"),
        (["x", "--seconds", "nan"], 2, "--seconds must be > 0"),
        (["x", "--top-p", "1.5"], 2, "--top-p must be >= 0"),
        (["x", "--batch-size", "0"], 2, "--batch-size must be >= 1"),
        (["  "], 1, "prompt 1 is empty"),
        ([], 1, "no prompt"),
        (["a", "b"], 1, "is one file but there are 2 prompts"),
        (["x", "--device", "tpu"], 1, "device must be auto, cpu, cuda"),
        (["x", "--out", "{tmp}/x.flac"], 1, "only WAV is written"),
        (["x", "--out", "{tmp}/file"], 1, "is a file, not a directory"),
    ],
)
def test_bad_arguments_are_refused_before_loading(tmp_path, capsys, args, code, message):
    (tmp_path / "file").write_text("")
    args = [a.format(tmp=tmp_path) for a in args]
    out = [] if "--out" in args else ["--out", tmp_path / "x.wav"]
    got, _, err = run_cli(["generate", *args, *out], capsys)
    assert (got, message in err) == (code, True), err


def test_slug_is_a_safe_file_name():
    assert slug("Calm piano, 90 BPM; rm -rf / && echo") == "calm_piano_90_bpm_rm_rf_echo"
    assert slug("Café à la plage") == "cafe_a_la_plage"
    assert slug("ピアノ") == ""
    assert len(slug("word " * 50)) <= 40


def test_help_shows_the_defaults(capsys):
    code, out, _ = run_cli(["generate", "--help"], capsys)
    assert code == 0
    flat = " ".join(out.split())
    for text in (
        "--cfg C",
        "(default: 3.0)",
        "(default: 250)",
        "(default: auto)",
        "--hf ID_OR_DIR",
    ):
        assert text in flat
    for command in ("info", "convert-hf"):
        assert run_cli([command, "--help"], capsys)[0] == 0


def test_info_on_a_run(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "data/raw").mkdir()
    (run / "data/raw/status.csv").write_text(
        "ytid,status,reason\na,ok,\nb,ok,\nc,failed,HTTP 500\n"
    )
    (run / "data/split").mkdir()
    for name, ids in {"train": "a\nb\n", "valid": "", "test": "c\n"}.items():
        (run / f"data/split/{name}.txt").write_text(ids)
    (run / "metrics").mkdir()
    (run / "metrics/train.json").write_text(json.dumps({"steps": 300, "val_ce": 7.1234}))
    usage = {f"codebook_{k}_distinct": 100 + k for k in range(4)}
    (run / "metrics/codec.json").write_text(json.dumps(usage))
    code, out, err = run_cli(["info", run], capsys)
    assert code == 0, err
    n_params = sum(
        p.numel()
        for p in LM(LMConfig(**json.loads((run / "data/lm/config.json").read_text()))).parameters()
    )
    for text in (
        "3 clips (ok 2, failed 1)",
        "train 2, valid 0, test 1",
        "distinct codes 100 101 102 103",
        "d_model 32, heads 2, layers 1",
        f"{n_params:,} parameters",
        "300 steps",
        "val_ce 7.1234",
        "data/audio/manifest.csv (stage resample)",  # missing parts are listed
        "data/generated/audio (stage generate)",
    ):
        assert text in out, out


def test_info_on_an_empty_directory(tmp_path, capsys):
    code, out, err = run_cli(["info", tmp_path], capsys)
    assert code == 0, err
    assert (
        "missing" in out
        and "data/lm (stage train)" in out
        and "metrics/train.json (stage train)" in out
    )
    assert run_cli(["info", tmp_path / "nowhere"], capsys)[0] == 1


def test_console_script(tiny_run):
    exe = shutil.which("musicgen")
    assert exe, "the musicgen console script is not installed (pip install -e .)"
    done = subprocess.run([exe, "info", str(tiny_run)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "d_model 32" in done.stdout


def test_info_shows_the_evaluation_as_a_table(tmp_path, capsys):
    """The paper's three numbers first with their weights, then FAD, FAD∞ and KAD per embedder
    (from metrics/eval.json and reports/eval/details.json); no dict printed on one line."""
    (tmp_path / "metrics").mkdir()
    (tmp_path / "reports/eval").mkdir(parents=True)
    names = {"mel": "none (weight-free)", "vggish": "random(seed=0)", "passt": "random(seed=0)"}
    metrics = {"valid_ce": 7.25, "test_ce": 7.5, "kl_passt": 1.42, "kl_passt_qp": 1.5}
    metrics |= {"kl_passt_both": 2.92, "clap_score": 0.27, "clap_score_reference": 0.3}
    for i, name in enumerate(names):
        metrics |= {f"fad_{name}": 4.88 + i, f"fad_inf_{name}": 4.5 + i, f"kad_{name}": 0.25 + i}
    details = {
        "embedders": {n: {"weights": w, "n_gen": 10, "n_ref": 12} for n, w in names.items()},
        "kl_passt": {"weights": "random(seed=0)", "n_segments": 30, "segments_per_clip": 1},
        "valid_ppl_cb0": 700.0,
        "valid_ce_cb0": 6.5,
        "valid_ce_cb1": 7.25,
    }
    (tmp_path / "metrics/eval.json").write_text(json.dumps(metrics))
    (tmp_path / "reports/eval/details.json").write_text(json.dumps(details))
    (tmp_path / "metrics/train.json").write_text(json.dumps({"steps": 3, "nested": {"a": 1}}))
    code, out, err = run_cli(["info", tmp_path], capsys)
    assert code == 0, err
    lines = out.splitlines()
    paper = lines.index("  the paper's numbers")
    assert lines[paper + 1].split() == [
        "FAD", "(VGGish)", "5.88", "(10", "vs", "12", "embeddings);", "weights", "random(seed=0)"
    ]  # fmt: skip
    assert "KL (PaSST)    1.42 over 30 segments (1 per clip); weights random(seed=0)" in out
    assert "CLAP score    0.27 (reference clips 0.3); weights unknown" in out  # no clap details
    table = lines.index("  per embedder")
    assert lines[table + 1].split() == ["embedder", "FAD", "FAD∞", "KAD", "n", "gen/ref", "weights"]
    rows = {line.split()[0]: line.split() for line in lines[table + 2 : table + 5]}
    assert rows["vggish"] == ["vggish", "5.88", "5.5", "1.25", "10/12", "random(seed=0)"]
    assert rows["mel"][-3:] == ["10/12", "none", "(weight-free)"]
    assert "ref||gen 1.42, gen||ref 1.5, both 2.92" in out and "valid 7.25, test 7.5 nats" in out
    assert "per codebook  valid 6.5000 7.2500" in out
    assert "nested.a" in out and "{" not in out  # nested values with dotted keys, no raw dict
    assert paper < table < lines.index("other metrics")


def test_info_without_passt_says_kl_was_not_computed(tmp_path, capsys):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/eval.json").write_text(json.dumps({"fad_vggish": 1.0, "valid_ce": 7.0}))
    code, out, err = run_cli(["info", tmp_path], capsys)
    assert code == 0, err
    assert "KL (PaSST)    not computed (passt is not in evaluate.embedders)" in out
    assert "FAD (VGGish)  1; weights unknown" in out
