"""The tiny codec's round trip on the test clips, today's spectral codec against the one before it.

Runs on a pipeline run's data (``data/audio``, ``data/split``, e.g. after ``dvc repro split``):

* ``spectral``: the codec_model and tokenize stages of ``params.yaml`` (``codec.source: tiny``), each
  timed, tokenize writing the round trip (``metrics/codec.json``'s numbers);
* ``envelope``: the codec before it (``musicgen.codec.build_tiny_codec``: a band-envelope encoder
  with 4 bands, the same residual k-means on the same clips, HF's random decoder), its round trip
  on the same test clips through the same :func:`musicgen.pipeline.codes.codec_round_trip`.

Usage::

    python benchmarks/bench_codec.py --run /path/to/run [--params params.yaml] [--out bench.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from musicgen import codec as C  # noqa: E402
from musicgen.data.audio import load_clips  # noqa: E402
from musicgen.params import load_params  # noqa: E402
from musicgen.pipeline import codes  # noqa: E402
from musicgen.pipeline.common import read_split  # noqa: E402


def spectral(params: dict, run: Path, work: Path) -> dict:
    """The stages as the pipeline runs them: their wall times and the round trip."""
    sr, audio, split = params["resample"]["sample_rate"], run / "data/audio", run / "data/split"
    start = time.perf_counter()
    codes.codec_model(params["codec"], sr, audio, split, work / "codec", progress=False)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    codes.tokenize(
        params["tokenize"],
        sr,
        params["codec"]["n_codebooks"],
        audio,
        work / "codec",
        split,
        work / "tokens",
        work / "tokens.json",
        progress=False,
        codec_metrics_path=work / "codec.json",
    )
    tokenize_s = time.perf_counter() - start
    return {
        **json.loads((work / "codec.json").read_text()),
        "codec_model_s": round(fit_s, 1),
        "tokenize_s": round(tokenize_s, 1),
    }


def envelope(params: dict, run: Path) -> dict:
    """The codec before the spectral one, fitted and measured on the same clips."""
    sr, audio, split = params["resample"]["sample_rate"], run / "data/audio", run / "data/split"
    fit = params["codec"]["fit"]
    cfg = C.TinyCodecConfig(sample_rate=sr, n_codebooks=params["codec"]["n_codebooks"])
    model = C.build_tiny_codec(cfg)
    train = read_split(split, "train")
    frames = C.n_frames(load_clips(audio, train[:1], sr).shape[1], model.config.hop_length)
    ids = codes.fit_clips(train, frames, fit["max_frames"], fit["seed"])
    start = time.perf_counter()
    C.fit_codebooks(
        model,
        load_clips(audio, ids, sr),
        n_iter=fit["n_iter"],
        max_frames=fit["max_frames"],
        seed=fit["seed"],
        codes_used=fit["codes_used"],
        batch_size=2,
        progress=False,
    )
    fit_s = time.perf_counter() - start
    test = read_split(split, "test")[: params["tokenize"]["roundtrip_clips"]]
    test_codes = C.encode(model, load_clips(audio, test, sr), batch_size=2).numpy()
    scores = codes.codec_round_trip(model, audio, test, test_codes, sr, 2, progress=False)
    return {**scores, "codec_model_s": round(fit_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a run with data/audio, data/split")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()
    torch.manual_seed(0)
    params = load_params(args.params)
    with tempfile.TemporaryDirectory() as work:
        result = {
            "torch_threads": torch.get_num_threads(),
            "spectral": spectral(params, args.run, Path(work)),
            "envelope": envelope(params, args.run),
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
