"""Stages eval_models and reference_stats: the evaluation embedders and the reference side.

- ``eval_models``: the embedders' weights as a DVC output (VGGish from torchvggish's release file or
  seeded random weights; a CLAP checkpoint or a tiny random one; PaSST from its release file or
  seeded random weights), with ``sources.json`` naming them.
- ``reference_stats``: the test split's real audio embedded once per embedder (embeddings, mean,
  covariance, KAD bandwidth; CLAP text embeddings of the captions; PaSST's class probabilities
  per segment, the reference side of KL); the stage also writes the codec round trip of the test
  clips the gallery shows (:mod:`musicgen.pipeline.roundtrip`, into ``roundtrip/``). It reads no
  training or generation param, so ``dvc exp run -S train.lr=...`` embeds only the generated side
  (the evaluate stage, :mod:`musicgen.pipeline.evaluation`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from musicgen.io import atomic_path
from musicgen.metrics import embedders as E
from musicgen.params import write_json
from musicgen.pipeline.common import read_metadata, read_split

CAPTIONS = "captions.csv"  # id, caption of the reference (test) clips
REFERENCE_SUMMARY = "stats.json"
ROUNDTRIP = "roundtrip"  # <id>.wav: the test clips through the codec (musicgen.pipeline.roundtrip)


def eval_models(params: dict, out_dir: Path) -> None:
    """The eval_models stage: weights of every embedder in ``params['embedders']``.

    Writes ``vggish.safetensors``, ``clap/`` (a ``save_pretrained`` directory) and/or
    ``passt.safetensors``, and ``sources.json`` into ``out_dir``.
    """
    from musicgen.metrics import clap as C
    from musicgen.metrics import vggish as V

    names = params["embedders"]
    E.check_embedders(names)
    models = params["models"]
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = {}
    if "vggish" in names:
        state, sources["vggish"] = V.vggish_weights(
            str(models["vggish"]["source"]), models["vggish"]["seed"]
        )
        V.save_vggish(state, out_dir / E.VGGISH_FILE)
    if "clap" in names:
        source = str(models["clap"]["source"])
        if source == "tiny":
            tiny = C.TinyClapConfig(**models["clap"]["tiny"])
            C.save_tiny_clap(tiny, out_dir / E.CLAP_DIR)
            sources["clap"] = f"tiny-random(seed={tiny.seed})"
        else:
            sources["clap"] = C.save_hub_clap(source, out_dir / E.CLAP_DIR)
    if "passt" in names:
        sources["passt"] = save_passt_weights(models["passt"], out_dir / E.PASST_FILE)
    write_json(out_dir / E.SOURCES, sources)


def save_passt_weights(params: dict, path: Path) -> str:
    """PaSST's weights as ``evaluate.models.passt`` names them, saved at ``path``; returns their
    source (``random(seed=0, depth=2)``, or the URL or file name with its SHA-256).

    ``params``: ``source`` (``random``, the release URL or a local ``.pt``), ``seed`` (of
    ``random``) and ``depth`` (transformer blocks: the release weights need 12).
    """
    from musicgen.metrics import passt as P

    cfg = P.PasstConfig(depth=int(params["depth"]))
    try:
        state, source = P.passt_weights(str(params["source"]), cfg, int(params["seed"]))
    except ValueError as e:
        raise ValueError(
            f"{e}\nevaluate.models.passt.depth is {cfg.depth}; the release weights "
            f"(e.g. {P.PASST_URL}) need {P.PasstConfig.depth}"
        ) from None
    P.save_passt(state, cfg, path)
    return source


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def reference_stats(
    params: dict,
    sample_rate: int,
    raw_dir: Path,
    audio_dir: Path,
    split_dir: Path,
    models_dir: Path,
    out_dir: Path,
) -> None:
    """The reference_stats stage: the test split's audio embedded by each embedder.

    Writes per embedder ``<name>.npz`` (``ids``, ``embeddings`` (N, E, D), ``mu`` (D,), ``cov``
    (D, D), ``kad_bandwidth``, ``kad_self_kernel``; for CLAP also ``text_embeddings`` (N, D) of the
    captions; for PaSST also ``probs`` (N, E, 527), each segment's class probabilities, the
    reference side of KL: the references are not loudness-normalised, as in audiocraft),
    ``captions.csv`` and ``stats.json`` (n, weights source, the CLAP score of the real clips,
    PaSST's segments per clip). The clips are read ``embed_batch_size`` at a time (``embedders.embed_files``), so
    memory does not grow with the number of clips.
    """
    from musicgen.device import pick_device
    from musicgen.metrics.clap import clap_scores
    from musicgen.metrics.frechet import gaussian
    from musicgen.metrics.kad import KadReference

    E.check_embedders(params["embedders"])
    device = pick_device(params["device"])
    ids = read_split(split_dir, "test")
    if len(ids) < 2:
        raise ValueError(f"{split_dir / 'test.txt'}: the reference set needs 2 clips or more")
    meta = read_metadata(raw_dir).set_index("ytid")
    captions = pd.DataFrame({"id": ids, "caption": [str(meta.at[i, "caption"]) for i in ids]})
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {"clips": len(ids)}
    for name in params["embedders"]:
        embedder = E.build_embedder(name, models_dir, device, params["embed_batch_size"])
        embedded = E.embed_files_with_probs(  # (N, E, D), the audio read a batch at a time
            embedder, audio_dir, ids, sample_rate, params["embed_batch_size"]
        )
        emb = embedded.embeddings
        flat = emb.reshape(-1, emb.shape[-1])
        mu, cov = gaussian(flat)
        kad_ref = KadReference.fit(flat)
        extra = {}
        summary[name] = {"weights": E.weights_source(name, models_dir), "n": len(flat)}
        if name == "clap":
            extra["text_embeddings"] = embedder.embed_texts(list(captions["caption"]))
            summary[name]["clap_score"] = float(
                clap_scores(emb[:, 0], extra["text_embeddings"]).mean()
            )
        if embedded.probs is not None:  # PaSST: the reference side of KL
            extra["probs"] = embedded.probs
            summary[name]["segments_per_clip"] = int(embedded.probs.shape[1])
        save_npz(
            out_dir / f"{name}.npz",
            ids=np.array(ids),
            embeddings=emb,
            mu=mu,
            cov=cov,
            kad_bandwidth=np.float64(kad_ref.bandwidth),
            kad_self_kernel=np.float64(kad_ref.self_kernel),
            **extra,
        )
    with atomic_path(out_dir / CAPTIONS) as tmp:
        captions.to_csv(tmp, index=False)
    write_json(out_dir / REFERENCE_SUMMARY, summary)
