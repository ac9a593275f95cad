"""Stage evaluate: the quality metrics of the generated audio, the LM's CE, the gallery.

FAD, FAD∞ and KAD per embedder against the reference statistics of the reference_stats stage
(:mod:`musicgen.pipeline.references`), KL with PaSST, the CLAP score, a per-clip table, the LM's
per-codebook cross-entropy and perplexity, and the listening gallery.

Two JSON files: the DVC metrics (``metrics/eval.json``, :data:`HEADLINE`: the numbers ``dvc exp
show`` and ``dvc metrics diff`` list) and the details beside them (``reports/eval/details.json``,
a stage output but not a DVC metric: weights sources, sizes, FAD∞ fits, KAD bandwidths, KL's
segment count, per-codebook CE and perplexity).
"""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from musicgen.data.audio import audio_problem, normalise_loudness
from musicgen.data.store import CodesAndText, load_tokens
from musicgen.io import atomic_path
from musicgen.lm import load_lm
from musicgen.metrics import embedders as E
from musicgen.params import write_json
from musicgen.pipeline.common import AUDIO, read_split
from musicgen.pipeline.references import CAPTIONS, REFERENCE_SUMMARY, ROUNDTRIP, load_npz

log = logging.getLogger(__name__)

SCORES = ("fad", "fad_inf", "kad")  # per embedder: metrics/eval.json's <score>_<embedder>
KL_KEYS = {"kld": "kl_passt", "kld_qp": "kl_passt_qp", "kld_both": "kl_passt_both"}
CE_SPLITS = ("valid", "test")
CLAP_KEYS = ("clap_score", "clap_score_reference")
PAPER_KEYS = ("fad_vggish", "kl_passt", "clap_score")  # MusicGen's table: FAD, KL, CLAP


def headline_keys(embedders: list[str]) -> list[str]:
    """The keys of ``metrics/eval.json`` for these embedders: CE, FAD/FAD∞/KAD per embedder, KL
    (with ``passt``) and the CLAP scores (with ``clap``); everything else goes to the details."""
    keys = [f"{split}_ce" for split in CE_SPLITS]
    keys += [f"{score}_{name}" for name in embedders for score in SCORES]
    keys += list(KL_KEYS.values()) if "passt" in embedders else []
    return keys + (list(CLAP_KEYS) if "clap" in embedders else [])


def loudness_normalised(clips: np.ndarray, target_db: float, peak_db: float) -> np.ndarray:
    """Each (N, S) clip scaled to ``target_db`` RMS dBFS, peak at most ``peak_db``; silent or
    broken clips are left as they are."""
    out = clips.copy()
    for i, clip in enumerate(clips):
        if audio_problem(clip) is None:
            out[i] = normalise_loudness(clip, target_db, peak_db)[0]
    return out


def score_embedder(
    reference: dict[str, np.ndarray], generated: np.ndarray, fad_inf_params: dict
) -> tuple[dict, np.ndarray | None]:
    """FAD, FAD∞ and KAD of generated embeddings (N, E, D) against one embedder's reference.

    Returns:
        the metrics and each clip's own Fréchet distance (None with one embedding per clip).
    """
    from musicgen.metrics.frechet import (
        FAD_INF_MIN_EMBEDDINGS,
        fad_inf,
        frechet_distance,
        gaussian,
        per_clip_fd,
    )
    from musicgen.metrics.kad import KadReference, kad

    flat = generated.reshape(-1, generated.shape[-1])
    mu, cov = reference["mu"], reference["cov"]
    fit = {}
    if len(flat) >= FAD_INF_MIN_EMBEDDINGS:
        inf = fad_inf(mu, cov, flat, **fad_inf_params)
        fit = {
            "fad_inf_intercept": inf.intercept,
            "fad_inf_slope": inf.slope,
            "fad_inf_r2": inf.r2,
            "fad_inf_n_min": inf.ns[0],
            "fad_inf_n_max": inf.ns[-1],
        }
    else:  # e.g. CLAP (one embedding per clip) on a handful of clips: FAD∞ is left out, said why
        log.warning("FAD∞ left out: %d embeddings, it needs %d", len(flat), FAD_INF_MIN_EMBEDDINGS)
    ref_kad = KadReference(
        reference["embeddings"].reshape(-1, flat.shape[1]),
        float(reference["kad_bandwidth"]),
        float(reference["kad_self_kernel"]),
    )
    metrics = {
        "fad": frechet_distance(mu, cov, *gaussian(flat)),
        "fad_inf": inf.value if fit else None,  # null: too few embeddings
        **fit,
        "kad": kad(ref_kad, flat),
        "kad_bandwidth": ref_kad.bandwidth,
        "n_ref": int(ref_kad.embeddings.shape[0]),
        "n_gen": int(flat.shape[0]),
        "clips_ref": int(reference["embeddings"].shape[0]),
        "clips_gen": int(generated.shape[0]),
        "dim": int(flat.shape[1]),
    }
    per_clip = per_clip_fd(mu, cov, generated) if generated.shape[1] >= 2 else None
    return metrics, per_clip


def headline_metrics(metrics: dict, details: dict, embedders: list[str]) -> dict:
    """The gallery's summary: the paper's three numbers (FAD with VGGish, KL with PaSST, CLAP)
    and CE first, then per embedder its weights, FAD, FAD∞, KAD and sizes, then KL both ways with
    its weights and segments.

    Args:
        metrics: ``metrics/eval.json``'s values.
        details: ``reports/eval/details.json``'s.
        embedders: in the order to show.
    """
    first = (*PAPER_KEYS, "clap_score_reference", "valid_ce", "test_ce")
    out: dict = {k: metrics[k] for k in first if k in metrics}
    for name in embedders:
        info = details["embedders"][name]
        out[name] = {
            "weights": info["weights"],
            **{k: metrics[f"{k}_{name}"] for k in SCORES},
            **{k: info[k] for k in ("n_ref", "n_gen", "clips_ref", "clips_gen")},
        }
    if "kl_passt" in details:
        out["KL (PaSST)"] = {k: metrics[k] for k in KL_KEYS.values()} | details["kl_passt"]
    return out


def reference_rows(reference_ids: list[str], ids: list[str]) -> np.ndarray:
    """The row of each of ``ids`` in a reference file listing ``reference_ids``."""
    row = {clip: i for i, clip in enumerate(reference_ids)}
    return np.array([row[clip] for clip in ids], dtype=np.int64)


def score_kl(
    reference: dict[str, np.ndarray], gen_probs: np.ndarray, gen_ids: list[str]
) -> tuple[dict, np.ndarray]:
    """KL with PaSST of the generated clips against their references, segment by segment.

    audiocraft pairs the i-th segment of a reference with the i-th of its generated clip and needs
    both clips of one length. Generated clips of another length than their references (e.g.
    ``generate.seconds`` past the test clips', with sliding windows) are compared on the segments
    both have: the first ones, where the generated clip answers the same caption from its start.

    Args:
        reference: ``passt.npz`` of reference_stats (``ids``, ``probs`` (N_ref, E_ref, C)).
        gen_probs: (N, E, C) class probabilities of the generated clips.
        gen_ids: their ids (each a reference clip: the caption it was generated from).

    Returns:
        ``kl_passt``, ``kl_passt_qp``, ``kl_passt_both``, ``n_segments`` (the segment pairs
        averaged over) and ``segments_per_clip`` (min(E_ref, E)), and each clip's
        KL(reference || generated), (N,).
    """
    from musicgen.metrics.kl import kl_scores, per_clip_kl

    ref_probs = reference["probs"][reference_rows(list(reference["ids"]), gen_ids)]
    paired = min(ref_probs.shape[1], gen_probs.shape[1])
    if ref_probs.shape[1] != gen_probs.shape[1]:
        log.warning(
            "KL with PaSST: generated clips have %d segments and their references %d; comparing "
            "the first %d of each",
            gen_probs.shape[1],
            ref_probs.shape[1],
            paired,
        )
    ref_probs, gen_probs = ref_probs[:, :paired], gen_probs[:, :paired]
    scores = kl_scores(ref_probs, gen_probs)
    out = {key: getattr(scores, field) for field, key in KL_KEYS.items()}
    counts = {"n_segments": scores.n_segments, "segments_per_clip": paired}
    return out | counts, per_clip_kl(ref_probs, gen_probs)


def gallery_curves(curves: pd.DataFrame) -> pd.DataFrame | None:
    """The training loss and validation CE of dvclive's curves (both in nats), or None."""
    columns = [c for c in ("train/loss", "val/ce") if c in curves.columns]
    return curves[["step", *columns]] if columns else None


def write_gallery_outputs(
    params: dict,
    all_params: dict,
    metrics: dict,
    details: dict,
    table: pd.DataFrame,
    audio_dir: Path,
    generated_dir: Path,
    gallery_dir: Path,
    spectrograms_dir: Path,
    curves: pd.DataFrame | None = None,
    roundtrip_dir: Path | None = None,
) -> None:
    """The listening gallery of the first ``gallery_items`` clips and a few spectrogram plots;
    with ``roundtrip_dir`` (reference_stats' ``roundtrip/``) each item's codec round trip too."""
    from musicgen.report.gallery import (
        GalleryItem,
        gallery_params,
        write_gallery,
        write_spectrogram_pairs,
    )

    rows = table if not params["gallery_items"] else table.head(params["gallery_items"])
    score_cols = [c for c in table.columns if c not in ("id", "caption")]
    items = [
        GalleryItem(
            row.id,
            row.caption,
            audio_dir / f"{row.id}.wav",
            generated_dir / AUDIO / f"{row.id}.wav",
            {c: float(getattr(row, c)) for c in score_cols},
            None if roundtrip_dir is None else roundtrip_dir / f"{row.id}.wav",
        )
        for row in rows.itertuples(index=False)
    ]
    write_gallery(
        gallery_dir,
        metrics=headline_metrics(metrics, details, params["embedders"]),
        params=gallery_params(all_params),
        items=items,
        curves=curves,
    )
    spectrograms_dir.mkdir(parents=True, exist_ok=True)
    write_spectrogram_pairs(spectrograms_dir, items[: params["spectrogram_plots"]])


def lm_cross_entropy(
    lm_dir: Path, tokens_dir: Path, text_dir: Path, split_dir: Path, batch_size: int, device
) -> tuple[dict, dict]:
    """The LM's CE on the valid and test splits: (``<split>_ce``, and the details: perplexity
    ``<split>_ppl`` and per codebook ``<split>_ce_cb<k>``, ``<split>_ppl_cb<k>``)."""
    from musicgen.train import validation_ce

    model = load_lm(lm_dir).to(device)
    headline, details = {}, {}
    for split in CE_SPLITS:
        data = CodesAndText(tokens_dir, text_dir, read_split(split_dir, split))
        ce = validation_ce(model, data, batch_size, device)
        headline[f"{split}_ce"] = float(ce.mean())
        details[f"{split}_ppl"] = float(np.exp(ce.mean()))
        for k, v in enumerate(ce):
            details[f"{split}_ce_cb{k}"] = float(v)
            details[f"{split}_ppl_cb{k}"] = float(np.exp(v))
    return headline, details


def evaluate(
    all_params: dict,
    lm_dir: Path,
    tokens_dir: Path,
    text_dir: Path,
    split_dir: Path,
    audio_dir: Path,
    generated_dir: Path,
    models_dir: Path,
    reference_dir: Path,
    metrics_path: Path,
    details_path: Path,
    per_clip_path: Path,
    gallery_dir: Path,
    spectrograms_dir: Path,
    live_dir: Path | None = None,
) -> None:
    """The evaluate stage.

    Writes ``metrics_path`` (the DVC metrics, :func:`headline_keys`): ``valid_ce``, ``test_ce``;
    per embedder ``fad_<name>``, ``fad_inf_<name>``, ``kad_<name>``; with PaSST ``kl_passt`` (KL of
    the reference's class distribution to the generated one's, the paper's KL), ``kl_passt_qp``
    (the reverse) and ``kl_passt_both`` (their sum); ``clap_score`` (and ``clap_score_reference``,
    the real clips' score). ``details_path`` holds the rest: ``fd_clips``; under
    ``embedders.<name>`` its weights source, the sizes (``n_ref``/``n_gen`` embeddings,
    ``clips_ref``/``clips_gen``, ``dim``), the FAD∞ fit and the KAD bandwidth (for ``mel`` also
    the Fréchet distance of each of its blocks: ``fad_logmel``, ``fad_chroma``, ``fad_onset``); under ``kl_passt``
    the weights, ``n_segments`` (segment pairs) and ``segments_per_clip``; the perplexities and
    per-codebook CE of the valid and test splits. Also the per-clip table (id, caption,
    ``fd_<name>`` per multi-window embedder, ``clap``, ``kl_passt``), the gallery (with the
    training loss and validation CE from the train stage's dvclive folder ``live_dir``, when
    given, and the codec round trips of reference_stats when it wrote them) and spectrogram plots. The generated clips are loudness-normalised (the references
    are not, as in audiocraft) and read and embedded ``embed_batch_size`` at a time: memory does
    not grow with the number of clips.
    """
    from musicgen.device import pick_device
    from musicgen.metrics.clap import clap_scores
    from musicgen.train import read_live_curves

    params = all_params["evaluate"]
    sample_rate = all_params["resample"]["sample_rate"]
    E.check_embedders(params["embedders"])
    device = pick_device(params["device"])
    gen_ids, _ = load_tokens(generated_dir / "tokens")
    prepare = None
    if params["loudness_db"] is not None:
        prepare = partial(
            loudness_normalised, target_db=params["loudness_db"], peak_db=params["peak_db"]
        )
    captions = pd.read_csv(reference_dir / CAPTIONS, dtype=str).set_index("id")["caption"]
    missing = [i for i in gen_ids if i not in captions.index]
    if missing:
        raise ValueError(f"{generated_dir}: clips not in the reference (test) set: {missing[:5]}")
    table = pd.DataFrame({"id": gen_ids, "caption": [captions[i] for i in gen_ids]})
    summary = json.loads((reference_dir / REFERENCE_SUMMARY).read_text())
    metrics: dict = {}
    details: dict = {"fd_clips": len(gen_ids), "embedders": {}}
    for name in params["embedders"]:
        weights = E.weights_source(name, models_dir)
        if name not in summary or summary[name]["weights"] != weights:
            raise ValueError(
                f"{reference_dir}: no reference stats of {name} made with {weights}: rerun "
                "reference_stats"
            )
        reference = load_npz(reference_dir / f"{name}.npz")
        embedder = E.build_embedder(name, models_dir, device, params["embed_batch_size"])
        generated = E.embed_files_with_probs(  # (N, E, D), the audio read a batch at a time
            embedder,
            generated_dir / AUDIO,
            gen_ids,
            sample_rate,
            params["embed_batch_size"],
            prepare,
        )
        scores, per_clip = score_embedder(reference, generated.embeddings, params["fad_inf"])
        metrics.update({f"{k}_{name}": scores.pop(k) for k in SCORES})
        details["embedders"][name] = {"embedder": name, "weights": weights, **scores}
        if name == "mel":  # timbre, pitch and rhythm apart: fad_logmel, fad_chroma, fad_onset
            blocks = E.block_distances(reference["embeddings"], generated.embeddings)
            details["embedders"][name] |= {f"fad_{k}": v for k, v in blocks.items()}
        if per_clip is not None:
            table[f"fd_{name}"] = per_clip
        if name == "clap":
            text = reference["text_embeddings"][reference_rows(list(reference["ids"]), gen_ids)]
            table["clap"] = clap_scores(generated.embeddings[:, 0], text)
            metrics["clap_score"] = float(table["clap"].mean())
            metrics["clap_score_reference"] = summary["clap"]["clap_score"]
        if name == "passt":
            kl, table["kl_passt"] = score_kl(reference, generated.probs, gen_ids)
            n_segments, paired = kl.pop("n_segments"), kl.pop("segments_per_clip")
            metrics.update(kl)
            details["kl_passt"] = {
                "weights": weights,
                "n_segments": n_segments,
                "segments_per_clip": paired,
                "generated_segments_per_clip": int(generated.probs.shape[1]),
                "segment_s": embedder.segment_s,
            }
    ce, ce_details = lm_cross_entropy(
        lm_dir, tokens_dir, text_dir, split_dir, params["batch_size"], device
    )
    metrics.update(ce)
    details.update(ce_details)
    assert set(metrics) == set(headline_keys(params["embedders"])), sorted(metrics)
    with atomic_path(per_clip_path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    write_json(metrics_path, metrics)
    write_json(details_path, details)
    write_gallery_outputs(
        params,
        all_params,
        metrics,
        details,
        table,
        audio_dir,
        generated_dir,
        gallery_dir,
        spectrograms_dir,
        gallery_curves(read_live_curves(live_dir)) if live_dir is not None else None,
        reference_dir / ROUNDTRIP if (reference_dir / ROUNDTRIP).is_dir() else None,
    )
