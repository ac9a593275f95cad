"""Fine-tuning from a checkpoint (``train.init_from``) and the train stage's resume key.

The Hugging Face checkpoints are random ``MusicgenForConditionalGeneration`` models built from
small configs and saved with ``save_pretrained``: the real conversion path, offline.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from interrupt import killed_after_first_checkpoint
from safetensors.torch import load_file
from transformers import (
    EncodecConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    T5Config,
)

from musicgen import finetune as F
from musicgen.convert import convert_hf
from musicgen.data.store import CodesAndText, save_text, save_tokens
from musicgen.io import content_hash
from musicgen.lm import LM, LMConfig, load_lm, save_lm
from musicgen.pipeline import training
from musicgen.train import validation_ce

CARD, K, TEXT_DIM, T = 32, 4, 8, 10
LM_PARAMS = {
    "preset": "tiny",
    "pattern": "delay",
    "delays": [0, 1, 2, 3],
    "dropout": 0.0,
    "overrides": {"d_model": 16, "n_heads": 2, "n_layers": 1, "ffn_dim": 32},
}
TRAIN_PARAMS = {
    "steps": 8,
    "batch_size": 4,
    "lr": 3.0e-3,
    "warmup_steps": 2,
    "eval_every": 4,
    "eval_batch_size": 8,
    "checkpoint_every": 4,
    "device": "cpu",
}


def codec_config(**kw) -> EncodecConfig:
    """A small EnCodec config: the codec the run's tokens come from (32 kHz, hop 640)."""
    base = dict(
        num_filters=4,
        hidden_size=8,
        codebook_size=CARD,
        upsampling_ratios=[8, 5, 4, 4],
        sampling_rate=32000,
    )
    return EncodecConfig(**{**base, **kw})


@pytest.fixture
def inputs(tmp_path) -> dict[str, Path]:
    """The train stage's inputs: tokens, cached text states (2 variants), split lists, codec."""
    rng = np.random.default_rng(0)
    n = 20
    ids = [f"clip{i:07d}xx" for i in range(n)]
    offsets = rng.integers(1, 4, n)
    codes = (rng.integers(0, CARD, (n, K, 1)) + offsets[:, None, None] * np.arange(T)) % CARD
    save_tokens(tmp_path / "tokens", ids, codes)
    states = [rng.normal(size=(3, TEXT_DIM)).astype(np.float16) for _ in range(2 * n)]
    save_text(tmp_path / "text", ids, 2, states)
    write_split(tmp_path / "split", ids[:14], ids[14:])
    (tmp_path / "codec").mkdir()
    codec_config().to_json_file(tmp_path / "codec" / "config.json")
    return {name: tmp_path / name for name in ("tokens", "text", "split", "codec")} | {
        "root": tmp_path
    }


def write_split(split_dir: Path, train: list[str], valid: list[str]) -> None:
    split_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / "train.txt").write_text("\n".join(train) + "\n")
    (split_dir / "valid.txt").write_text("\n".join(valid) + "\n")
    (split_dir / "test.txt").write_text("")


def run_stage(inputs, out: str, ckpt: str, **train) -> dict:
    """The train stage's function on ``inputs``; returns its metrics."""
    root = inputs["root"]
    training.train(
        LM_PARAMS,
        {**TRAIN_PARAMS, **train},
        inputs["tokens"],
        inputs["text"],
        inputs["split"],
        inputs["codec"],
        root / out,
        root / ckpt,
        root / f"{out}.json",
        root / f"{out}-plots",
        progress=False,
    )
    return json.loads((root / f"{out}.json").read_text())


def save_hf_musicgen(
    path: Path, card: int = CARD, n_codebooks: int = K, text_dim: int = TEXT_DIM, **codec
) -> Path:
    """A random ``MusicgenForConditionalGeneration`` with a small T5 of width ``text_dim``."""
    torch.manual_seed(0)
    decoder = MusicgenDecoderConfig(
        hidden_size=16,
        num_attention_heads=2,
        num_hidden_layers=2,
        ffn_dim=32,
        num_codebooks=n_codebooks,
        vocab_size=card,
        pad_token_id=card,
        bos_token_id=card,
        decoder_start_token_id=card,
    )
    text = T5Config(vocab_size=40, d_model=text_dim, d_kv=4, d_ff=16, num_layers=1, num_heads=2)
    config = MusicgenConfig(text_encoder=text, audio_encoder=codec_config(**codec), decoder=decoder)
    MusicgenForConditionalGeneration(config).save_pretrained(path)
    return path


def test_step_zero_ce_of_a_finetune_equals_the_converted_checkpoint(inputs):
    hf = save_hf_musicgen(inputs["root"] / "hf")
    metrics = run_stage(inputs, "lm", "ckpt", init_from=str(hf))
    convert_hf(str(hf), inputs["root"] / "converted")
    converted = load_lm(inputs["root"] / "converted")
    valid = training.read_split(inputs["split"], "valid")
    data = CodesAndText(inputs["tokens"], inputs["text"], valid)
    expected = validation_ce(converted, data, 8, torch.device("cpu")).mean()
    assert metrics["val_ce_init"] == pytest.approx(expected, rel=1e-6)
    trained = json.loads((inputs["root"] / "lm" / "config.json").read_text())
    assert trained["n_layers"] == 2 and trained["d_model"] == 16  # the checkpoint's, not lm's
    start, ema = converted.state_dict(), weights(inputs["root"] / "lm")
    assert any(not torch.equal(ema[k], start[k]) for k in start)  # and it trained from there


def test_a_converted_checkpoint_is_used_in_place_and_a_conversion_is_cached(inputs, monkeypatch):
    hf = save_hf_musicgen(inputs["root"] / "hf")
    cache = inputs["root"] / "cache"
    first = F.resolve_init(str(hf), cache)
    assert first.lm_dir.parent == cache and first.codec == F.CodecSpec(CARD, 32000, 640)
    monkeypatch.setattr("musicgen.convert.convert_hf", lambda *a: pytest.fail("converted twice"))
    again = F.resolve_init(str(hf), cache)
    assert again.lm_dir == first.lm_dir and again.digest == first.digest
    in_place = F.resolve_init(str(first.lm_dir), inputs["root"] / "unused")
    assert in_place.lm_dir == first.lm_dir and in_place.digest == first.digest
    assert not (inputs["root"] / "unused").exists()


def test_the_ranks_of_a_node_convert_one_at_a_time(inputs, monkeypatch):
    """Two processes (here threads, each with its own lock file handle) resolving the same Hugging
    Face checkpoint at once: one converts, the other waits and uses its result."""
    import musicgen.convert as C

    hf, cache = save_hf_musicgen(inputs["root"] / "hf"), inputs["root"] / "cache"
    real_convert, conversions = C.convert_hf, []

    def slow_convert(src, dst):
        conversions.append(src)
        time.sleep(0.5)  # a large checkpoint: long enough for the other to arrive meanwhile
        return real_convert(src, dst)

    monkeypatch.setattr(C, "convert_hf", slow_convert)
    found = []
    ranks = [threading.Thread(target=lambda: found.append(F.resolve_init(str(hf), cache)))]
    ranks.append(threading.Thread(target=ranks[0]._target))
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join()
    assert len(conversions) == 1
    assert len(found) == 2 and found[0].digest == found[1].digest


MAPPED_PROBE = """
import json, sys
from pathlib import Path
import torch
from musicgen import finetune as F

def anon_kib():
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith("RssAnon:")).split()[1])

init = F.resolve_init(sys.argv[1], Path(sys.argv[2]))
torch.nn.init.normal_(torch.empty(1, device="meta"))  # torch's first meta op: ~70 MB of imports
before = anon_kib()
model = F.load_init_lm(init, init.config)
with torch.no_grad():
    total = sum(float(p.sum()) for p in model.parameters())  # every page read
    grown = anon_kib() - before
    model.heads[0].weight.add_(1.0)  # a training step writes the parameters in place
print(json.dumps({"grown_kib": grown, "total": total}))
"""


def test_init_weights_are_mapped_from_the_file_and_training_never_writes_it(tmp_path):
    """``load_init_lm`` in a fresh process: reading every weight of a ~70 MB checkpoint grows the
    process's private memory by less than a quarter of the file (the pages are the file's, shared
    by a node's ranks through the page cache; ``LM(cfg)`` + ``load_state_dict`` made a private
    copy), the weights are the file's, and writing a parameter leaves the file unchanged."""
    cfg = LMConfig(d_model=512, n_heads=8, n_layers=4, ffn_dim=2048, card=32, text_dim=8)
    torch.manual_seed(0)
    weights = LM(cfg).state_dict()
    save_lm(tmp_path / "lm", weights, cfg)
    file = tmp_path / "lm" / "model.safetensors"
    digest = content_hash([file])
    probe = [sys.executable, "-c", MAPPED_PROBE, str(tmp_path / "lm"), str(tmp_path / "cache")]
    out = subprocess.run(probe, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["grown_kib"] * 1024 < file.stat().st_size / 4, result
    assert result["total"] == pytest.approx(sum(float(v.sum()) for v in weights.values()))
    assert content_hash([file]) == digest


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"card": 64}, "card 64 but the codec has 32"),
        ({"n_codebooks": 2}, "2 codebooks but the tokens have 4"),
        ({"text_dim": 12}, "text width 12 but the text states are 8 wide"),
        ({"pattern": "parallel"}, "pattern 'parallel' but lm.pattern is 'delay'"),
        ({"delays": [0, 2, 4, 6]}, "delays [0, 2, 4, 6] but lm.delays is [0, 1, 2, 3]"),
        ({"hop": 320}, "codec hop_length 320 samples per frame but the codec has 640"),
        ({"rate": 24000}, "codec sampling_rate 24000 Hz but the codec has 32000"),
    ],
)
def test_each_mismatch_is_named(changes, message):
    codec = F.CodecSpec(CARD, changes.pop("rate", 32000), changes.pop("hop", 640))
    config = LMConfig(**{"card": CARD, "n_codebooks": K, "text_dim": TEXT_DIM, **changes})
    init = F.InitCheckpoint("ckpt", Path("ckpt"), config, codec, "digest")
    with pytest.raises(F.IncompatibleCheckpoint, match="'ckpt' does not fit this run") as err:
        F.check_compatible(init, F.CodecSpec(CARD, 32000, 640), K, TEXT_DIM, LM_PARAMS)
    assert message in str(err.value)


def test_the_stage_refuses_a_checkpoint_that_does_not_fit(inputs, monkeypatch):
    hf = save_hf_musicgen(inputs["root"] / "hf", card=64, upsampling_ratios=[8, 5, 4, 2])
    monkeypatch.setattr(training, "lm_config", lambda *a: pytest.fail("built the preset"))
    with pytest.raises(F.IncompatibleCheckpoint) as err:
        run_stage(inputs, "lm", "ckpt", init_from=str(hf))
    assert "it has card 64 but the codec has 32" in str(err.value)
    assert "hop_length 320 samples per frame but the codec has 640" in str(err.value)
    assert not (inputs["root"] / "lm").exists()


def test_init_from_that_is_no_checkpoint_is_refused(inputs, tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(F.IncompatibleCheckpoint, match="neither an LM directory"):
        F.resolve_init(str(tmp_path / "junk"), tmp_path / "cache")


def test_a_hub_id_that_cannot_be_fetched_says_so(tmp_path):
    with pytest.raises(OSError, match="not loadable from the hub"):
        F.resolve_init("no-such-org-h4/no-such-musicgen", tmp_path / "cache")
    with pytest.raises(F.IncompatibleCheckpoint, match="no such directory"):
        F.resolve_init(str(tmp_path / "missing"), tmp_path / "cache")
    left = [p.name for p in (tmp_path / "cache").glob("*")]
    assert left in ([], [".hub-no-such-org-h4--no-such-musicgen.lock"])  # nothing half-converted


def interrupt_after_first_checkpoint(monkeypatch, inputs, ckpt: str) -> None:
    """Runs the stage until its first checkpoint is written, then kills it."""
    with killed_after_first_checkpoint(monkeypatch):
        run_stage(inputs, "killed", ckpt)


def weights(lm_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(lm_dir / "model.safetensors"))


def test_changing_the_split_between_a_kill_and_the_rerun_starts_over(inputs, monkeypatch, caplog):
    root = inputs["root"]
    interrupt_after_first_checkpoint(monkeypatch, inputs, "ckpt")
    assert json.loads((root / "ckpt" / "meta.json").read_text())["step"] == 4
    train = training.read_split(inputs["split"], "train")
    valid = training.read_split(inputs["split"], "valid")
    write_split(inputs["split"], train[:-2], valid + train[-2:])  # no train param changes
    with caplog.at_level(logging.INFO):
        run_stage(inputs, "rerun", "ckpt")
    assert "another run (split changed); this run starts over" in caplog.text
    assert "resuming" not in caplog.text
    shutil.rmtree(root / "fresh-ckpt", ignore_errors=True)
    run_stage(inputs, "fresh", "fresh-ckpt")
    rerun, fresh = weights(root / "rerun"), weights(root / "fresh")
    assert all(torch.equal(rerun[k], fresh[k]) for k in fresh)


def test_same_inputs_resume_and_the_key_ignores_cadence(inputs, monkeypatch, caplog):
    interrupt_after_first_checkpoint(monkeypatch, inputs, "ckpt")
    with caplog.at_level(logging.INFO):
        run_stage(inputs, "rerun", "ckpt", eval_every=2, checkpoint_every=3)
    assert "resuming from step 4" in caplog.text
    assert "starts over" not in caplog.text


@pytest.fixture(scope="module")
def finetune_repo(tmp_path_factory) -> tuple[Path, Path]:
    """A git + DVC copy of the project with the small params (4 steps) after ``dvc repro train``,
    committed, and a random Hugging Face MusicGen that fits its codec, tokens and text states:
    (repo, the MusicGen's directory). Shared by the ``dvc exp run`` fine-tuning tests."""
    from pipeline_repo import SMALL, copy_project, run

    tmp_path = tmp_path_factory.mktemp("finetune")
    small = {**SMALL, ("train", "steps"): 4, ("train", "eval_every"): 2}
    repo = copy_project(tmp_path / "repo", small | {("train", "checkpoint_every"): 2})
    run(["dvc", "repro", "train"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline"], repo)
    codec = json.loads((repo / "data/models/codec/config.json").read_text())
    text_dim = np.load(repo / "data/text/embeddings.npy", mmap_mode="r").shape[1]
    hf = save_hf_musicgen(
        tmp_path / "hf",
        card=codec["codebook_size"],
        n_codebooks=np.load(repo / "data/tokens/codes.npy", mmap_mode="r").shape[1],
        text_dim=text_dim,
        codebook_size=codec["codebook_size"],
        sampling_rate=codec["sampling_rate"],
        upsampling_ratios=codec["upsampling_ratios"],
    )
    return repo, hf


@pytest.mark.slow
def test_finetune_and_text_on_the_fly_through_dvc_exp_run(finetune_repo, tmp_path):
    from pipeline_repo import ran_stages, run

    repo, hf = finetune_repo
    run(["git", "checkout", "-q", "--", "params.yaml"], repo)  # the baseline's params
    out = run(["dvc", "exp", "run", "train", "-S", f"train.init_from={hf}"], repo)
    assert ran_stages(out) == {"train"}
    convert_hf(str(hf), tmp_path / "converted")
    valid = training.read_split(repo / "data/split", "valid")
    data = CodesAndText(repo / "data/tokens", repo / "data/text", valid)
    expected = validation_ce(load_lm(tmp_path / "converted"), data, 16, torch.device("cpu"))
    metrics = json.loads((repo / "metrics/train.json").read_text())
    assert metrics["val_ce_init"] == pytest.approx(expected.mean(), rel=1e-6)

    run(["git", "checkout", "-q", "--", "params.yaml"], repo)
    out = run(["dvc", "exp", "run", "train", "-S", "train.text_on_the_fly=true"], repo)
    assert ran_stages(out) == {"train"}
    assert "text_on_the_fly" in out  # named among the changed parts of the resume key
    on_the_fly = json.loads((repo / "metrics/train.json").read_text())
    assert on_the_fly["steps"] == 4 and on_the_fly["val_ce_raw"] < on_the_fly["val_ce_init"]


@pytest.mark.slow
def test_lora_finetune_through_dvc_exp_run_and_musicgen_generate(finetune_repo, tmp_path):
    """``train.lora.r=8`` on the random MusicGen: the adapters lower the validation CE, are < 5 %
    of the LM, and ``musicgen generate --model`` plays the run (its merged LM)."""
    import soundfile as sf
    from pipeline_repo import ran_stages, run

    from musicgen.cli import main as musicgen
    from musicgen.info import info_lines

    repo, hf = finetune_repo
    run(["git", "checkout", "-q", "--", "params.yaml"], repo)  # the baseline's params
    keys = [f"train.init_from={hf}", "train.lora.r=8", "train.lr=1.0e-2"]
    out = run(["dvc", "exp", "run", "train", *[a for k in keys for a in ("-S", k)]], repo)
    assert ran_stages(out) == {"train"}
    metrics = json.loads((repo / "metrics/train.json").read_text())
    assert metrics["val_ce_raw"] < metrics["val_ce_init"] - 0.01
    adapter = repo / "data/lm/adapter/adapter_model.safetensors"
    assert adapter.stat().st_size < 0.05 * (repo / "data/lm/model.safetensors").stat().st_size
    assert 0 < metrics["lora_parameters"] < 0.05 * metrics["parameters"]
    wav = tmp_path / "lora.wav"
    musicgen(["generate", "calm piano", "--model", str(repo), "--seconds", "1", "--out", str(wav)])
    audio, rate = sf.read(wav)
    assert rate == 32000 and len(audio) == rate and np.abs(audio).max() > 0
    assert any("LoRA r 8" in line for line in info_lines(repo))  # musicgen info


def test_zero_steps_writes_the_converted_checkpoint_as_it_is(inputs):
    """``train.init_from`` with ``train.steps=0``: the stage's LM is the published model itself,
    its step-0 validation CE in the metrics, so it is evaluated as a trained run is."""
    hf = save_hf_musicgen(inputs["root"] / "hf")
    metrics = run_stage(inputs, "lm", "ckpt", init_from=str(hf), steps=0)
    convert_hf(str(hf), inputs["root"] / "converted")
    converted = load_lm(inputs["root"] / "converted")
    start, written = converted.state_dict(), weights(inputs["root"] / "lm")
    assert start.keys() == written.keys()
    assert all(torch.equal(written[k], start[k]) for k in start)
    assert metrics["steps"] == 0 and metrics["tokens_seen"] == 0
    assert metrics["val_ce"] == pytest.approx(metrics["val_ce_init"], rel=1e-6)
    assert metrics["val_ce_raw"] == pytest.approx(metrics["val_ce_init"], rel=1e-6)
    assert "train_loss_final" not in metrics  # no step was trained
