"""Seeded, procedurally generated stand-in for MusicCaps.

MusicCaps audio lives on YouTube, so the pipeline's offline "embedded default" is a synthetic set
with the same shape: 10 s stereo clips at 48 kHz, one ``<ytid>.wav`` per row, and a metadata table
with exactly the columns, dtypes and string formats of ``musiccaps-public.csv``. Every clip is a
short piece of procedural music (a key, a mode, a tempo, a chord progression, a melody, a bass line,
optional drums) and its caption describes those attributes in MusicCaps' style, so a model trained
on it has real text-audio structure to learn.

Everything is derived from ``SyntheticConfig.seed``: clip ``i`` uses
``np.random.SeedSequence([seed, i])`` and does not depend on ``n_clips``, and the same config gives
byte-identical wav files and an identical table on every run.

Example::

    df = make_synthetic_dataset(Path("data/raw"), SyntheticConfig(n_clips=16))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from musicgen.data.audio import write_wav

MUSICCAPS_COLUMNS = [
    "ytid",
    "start_s",
    "end_s",
    "audioset_positive_labels",
    "aspect_list",
    "caption",
    "author_id",
    "is_balanced_subset",
    "is_audioset_eval",
]


@dataclass
class SyntheticConfig:
    """Size and seed of the synthetic dataset.

    Attributes:
        n_clips: Number of clips.
        duration_s: Clip length in seconds (MusicCaps clips are 10 s).
        sample_rate: Sample rate of the written files (the resample stage brings them to 32 kHz).
        channels: Written channels, 1 or 2 (stereo, so the resample stage has real work).
        seed: Root seed; clip ``i`` is generated from ``SeedSequence([seed, i])``.
    """

    n_clips: int = 240
    duration_s: float = 10.0
    sample_rate: int = 48000
    channels: int = 2
    seed: int = 0


# -----------------------------------------------------------------------------
# music theory

SHARP_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
FLAT_NAMES = ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")
# conventional key names (Db major but C# minor, Ab major but G# minor) and the flat keys
KEY_NAMES = {
    "major": ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"),
    "minor": ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B"),
}
FLAT_KEYS = {"major": {1, 3, 5, 8, 10}, "minor": {0, 2, 3, 5, 7, 10}}
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
# chord progressions as 0-based scale degrees, one chord per bar, always starting on the tonic
PROGRESSIONS = {
    "major": ((0, 4, 5, 3), (0, 3, 4, 4), (0, 5, 3, 4), (0, 3, 0, 4), (0, 5, 1, 4), (0, 0, 3, 4)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2), (0, 5, 3, 4), (0, 0, 5, 6)),
}
ROMAN = ("I", "II", "III", "IV", "V", "VI", "VII")
BEATS_PER_BAR = 4
LEAD_OCTAVE, CHORD_OCTAVE, BASS_OCTAVE = 60, 48, 36  # MIDI note of C in each part's register


def tempo_word(bpm: float) -> str:
    """MusicCaps' tempo words: ``slow`` below 90 BPM, ``fast`` from 125 BPM, else ``medium``."""
    return "slow" if bpm < 90 else "fast" if bpm >= 125 else "medium"


def scale_pitch(root: int, mode: str, degree: int) -> int:
    """Semitones above C of a (possibly negative or > 7) scale degree of ``root`` ``mode``."""
    octave, step = divmod(degree, 7)
    return root + SCALES[mode][step] + 12 * octave


def triad(root: int, mode: str, degree: int) -> list[int]:
    """The diatonic triad on ``degree`` as semitones above C (root position)."""
    return [scale_pitch(root, mode, degree + k) for k in (0, 2, 4)]


def chord_name(root: int, mode: str, degree: int) -> tuple[str, str]:
    """Letter name (``"Am"``, spelled with the key's flats or sharps) and roman numeral (``"vi"``)
    of the triad on ``degree``."""
    pitches = triad(root, mode, degree)
    third, fifth = pitches[1] - pitches[0], pitches[2] - pitches[0]
    names = FLAT_NAMES if root in FLAT_KEYS[mode] else SHARP_NAMES
    letter = names[pitches[0] % 12]
    numeral = ROMAN[degree % 7]
    if fifth == 6:
        return letter + "dim", numeral.lower() + "dim"
    if third == 3:
        return letter + "m", numeral.lower()
    return letter, numeral


# -----------------------------------------------------------------------------
# genres, instruments and the vocabulary used to describe them


@dataclass(frozen=True)
class Genre:
    """A style preset: the ranges and pools a clip's attributes are drawn from."""

    nouns: tuple[str, ...]  # how a caption names a piece of this genre
    tempo: tuple[int, int]  # BPM range, inclusive
    drums_p: float  # probability of drums
    drum_patterns: tuple[str, ...]
    lead: tuple[str, ...]  # timbre pools per part
    chords: tuple[str, ...]
    chord_styles: tuple[str, ...]
    bass: tuple[str, ...]
    bass_styles: tuple[str, ...]
    moods: dict[str, tuple[str, ...]]  # per mode
    scenes: tuple[str, ...]
    mids: tuple[str, ...]  # AudioSet ids of the genre


GENRES = {
    "ambient": Genre(
        ("ambient piece", "ambient music piece"),
        (70, 92),
        0.15,
        ("half-time",),
        ("sine", "pad"),
        ("pad", "organ"),
        ("sustained",),
        ("sine",),
        ("whole", "root-fifth"),
        {"major": ("calm", "dreamy", "peaceful"), "minor": ("meditative", "mysterious", "calm")},
        ("at a meditation session", "in a spa", "in a yoga class", "in a nature documentary"),
        ("/m/0fd3y",),
    ),
    "electronic": Genre(
        ("electronic track", "electronic music piece", "EDM track"),
        (110, 140),
        0.95,
        ("four-on-the-floor", "backbeat"),
        ("sawtooth", "square"),
        ("pad", "sawtooth", "square"),
        ("stabs", "arpeggio", "sustained"),
        ("sawtooth", "square"),
        ("eighths", "offbeat"),
        {"major": ("energetic", "uplifting", "upbeat"), "minor": ("energetic", "dark", "intense")},
        ("in a workout video", "in a tech product advertisement", "at a dance party"),
        ("/m/02lkt",),
    ),
    "techno": Genre(
        ("techno track", "techno piece"),
        (124, 140),
        1.0,
        ("four-on-the-floor",),
        ("square", "sawtooth"),
        ("pad", "sawtooth"),
        ("stabs", "arpeggio"),
        ("sawtooth",),
        ("offbeat", "eighths"),
        {"major": ("hypnotic", "energetic"), "minor": ("hypnotic", "dark", "intense")},
        ("at a nightclub", "at a rave", "in an underground club"),
        ("/m/07gxw", "/m/02lkt"),
    ),
    "pop": Genre(
        ("pop song", "pop music piece", "instrumental pop tune"),
        (90, 128),
        0.85,
        ("backbeat", "four-on-the-floor"),
        ("pluck", "sine", "square"),
        ("organ", "pad", "pluck"),
        ("sustained", "arpeggio", "stabs"),
        ("sine", "sawtooth"),
        ("quarters", "root-fifth"),
        {"major": ("happy", "uplifting", "cheerful"), "minor": ("melancholic", "emotional")},
        ("in a shopping mall", "in a radio commercial", "in a teen drama"),
        ("/m/064t9",),
    ),
    "lullaby": Genre(
        ("lullaby", "gentle lullaby"),
        (70, 88),
        0.0,
        ("half-time",),
        ("sine", "pluck"),
        ("pluck", "organ"),
        ("arpeggio", "sustained"),
        ("sine",),
        ("whole",),
        {"major": ("soothing", "tender", "gentle"), "minor": ("tender", "melancholic")},
        ("in a baby's nursery", "during a children's bedtime story", "in a music box"),
        ("/m/07pkxdp",),
    ),
    "chiptune": Genre(
        ("chiptune track", "video game music piece", "8-bit style tune"),
        (120, 160),
        0.8,
        ("backbeat", "four-on-the-floor"),
        ("square",),
        ("square",),
        ("arpeggio",),
        ("square", "sawtooth"),
        ("eighths", "root-fifth"),
        {"major": ("playful", "upbeat", "cheerful"), "minor": ("adventurous", "tense")},
        ("in a retro video game", "at an arcade", "in a platformer game level"),
        ("/m/02lkt",),
    ),
    "folk": Genre(
        ("folk tune", "folk piece", "acoustic folk song"),
        (80, 120),
        0.4,
        ("backbeat", "half-time"),
        ("pluck", "organ"),
        ("pluck",),
        ("arpeggio",),
        ("pluck", "sine"),
        ("root-fifth", "whole"),
        {"major": ("warm", "nostalgic", "cheerful"), "minor": ("nostalgic", "melancholic")},
        ("in a coffee shop", "in a countryside documentary", "at a campfire"),
        ("/m/02w4v",),
    ),
}

TIMBRE_WORDS = {
    "sine": ("sine wave synth", "soft sine tone", "pure sine synth"),
    "sawtooth": ("sawtooth synth", "buzzy sawtooth synth", "bright saw synth"),
    "square": ("square wave synth", "hollow square wave synth", "chiptune-style square synth"),
    "pluck": ("plucked string instrument", "plucked string", "harp-like pluck"),
    "organ": ("organ", "electric organ", "drawbar organ"),
    "pad": ("synth pad", "warm synth pad", "soft pad"),
}
ASPECT_TIMBRES = {
    "sine": "sine",
    "sawtooth": "sawtooth synth",
    "square": "square synth",
    "pluck": "plucked string",
    "organ": "organ",
    "pad": "synth pad",
}
TIMBRE_MIDS = {
    "sine": "/m/0l14qv",
    "sawtooth": "/m/0l14qv",
    "square": "/m/0l14qv",
    "pad": "/m/0l14qv",
    "pluck": "/m/0fx80y",
    "organ": "/m/013y1f",
}
MOOD_MIDS = {
    "happy": "/t/dd00031",
    "cheerful": "/t/dd00031",
    "playful": "/t/dd00032",
    "melancholic": "/t/dd00033",
    "tender": "/t/dd00034",
    "energetic": "/t/dd00035",
    "intense": "/t/dd00035",
    "dark": "/t/dd00037",
    "tense": "/t/dd00037",
}
MUSIC_MID, INSTRUMENT_MID, DRUM_MACHINE_MID = "/m/04rlf", "/m/04szw", "/m/0l14_3"

ROLE_NOUNS = {
    "lead": ("the melody", "the main melody", "the lead melody"),
    "sustained": ("the sustained chords", "the harmony"),
    "arpeggio": ("arpeggiated chords", "the chord arpeggios"),
    "stabs": ("short chord stabs", "rhythmic chord stabs"),
    "bass": ("the bass line", "a simple bass line"),
}
PLAY_VERBS = ("plays", "is playing", "performs")
DRUM_PHRASES = {
    "four-on-the-floor": ("a four on the floor beat", "a steady four on the floor kick pattern"),
    "backbeat": ("a simple backbeat with the snare on two and four", "a straight rock beat"),
    "half-time": ("a laid-back half-time beat", "a sparse half-time groove"),
}
NO_DRUM_SENTENCES = (
    "There is no percussion in this piece.",
    "There are no drums.",
    "The piece has no percussion at all.",
)


# -----------------------------------------------------------------------------
# attribute sampling


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    """One element of ``options`` drawn uniformly with ``rng``."""
    return options[int(rng.integers(len(options)))]


def sample_attributes(rng: np.random.Generator, cfg: SyntheticConfig) -> dict:
    """Draw the musical attributes of one clip (everything ``render_clip`` and captions need).

    Args:
        rng: The clip's generator.
        cfg: Dataset config (unused today, kept so attributes may depend on the clip length).

    Returns:
        A JSON-serialisable dict: genre, mood, tempo_bpm, tempo_word, key, key_root, mode,
        progression (roman numerals), chords (letter names), parts (role -> timbre), instruments,
        chord_style, bass_style, has_drums, drum_pattern, drums.
    """
    del cfg
    genre_name = _pick(rng, tuple(GENRES))
    genre = GENRES[genre_name]
    root, mode = int(rng.integers(12)), _pick(rng, ("major", "minor"))
    bpm = int(rng.integers(genre.tempo[0], genre.tempo[1] + 1))
    degrees = PROGRESSIONS[mode][int(rng.integers(len(PROGRESSIONS[mode])))]
    names = [chord_name(root, mode, d) for d in degrees]
    parts = {
        "lead": _pick(rng, genre.lead),
        "chords": _pick(rng, genre.chords),
        "bass": _pick(rng, genre.bass),
    }
    has_drums = bool(rng.random() < genre.drums_p)
    return {
        "genre": genre_name,
        "mood": _pick(rng, genre.moods[mode]),
        "tempo_bpm": bpm,
        "tempo_word": tempo_word(bpm),
        "key": KEY_NAMES[mode][root],
        "key_root": root,
        "mode": mode,
        "degrees": list(degrees),
        "progression": [numeral for _, numeral in names],
        "chords": [letter for letter, _ in names],
        "parts": parts,
        "instruments": list(dict.fromkeys(parts.values())),
        "chord_style": _pick(rng, genre.chord_styles),
        "bass_style": _pick(rng, genre.bass_styles),
        "has_drums": has_drums,
        "drum_pattern": _pick(rng, genre.drum_patterns) if has_drums else None,
        "drums": ["kick", "snare", "hi-hat"] if has_drums else [],
    }


# -----------------------------------------------------------------------------
# note sequences: a monophonic line is a list of contiguous (beats, midi, velocity) events,
# velocity 0 being a rest, that tiles the clip from t = 0

Event = tuple[float, float, float]
RHYTHMS = (
    (1, 1, 1, 1),
    (2, 1, 1),
    (1, 1, 2),
    (0.5, 0.5, 1, 1, 1),
    (1.5, 0.5, 2),
    (0.5,) * 8,
    (1, 0.5, 0.5, 1, 1),
    (3, 1),
    (2, 2),
)


def _n_bars(attrs: dict, cfg: SyntheticConfig) -> int:
    """Bars needed to cover the clip at the clip's tempo."""
    spb = samples_per_beat(attrs["tempo_bpm"], cfg.sample_rate)
    return int(np.ceil(cfg.duration_s * cfg.sample_rate / spb / BEATS_PER_BAR))


def _bar_chords(attrs: dict, n_bars: int) -> list[list[int]]:
    """Triad pitch classes (semitones above C, root first) of every bar, cycling the progression."""
    degrees = attrs["degrees"]
    return [
        triad(attrs["key_root"], attrs["mode"], degrees[b % len(degrees)]) for b in range(n_bars)
    ]


def melody_line(attrs: dict, rng: np.random.Generator, n_bars: int) -> list[Event]:
    """A scale-degree random walk that lands on a chord tone at every bar line."""
    root, mode, degrees = attrs["key_root"], attrs["mode"], attrs["degrees"]
    events, degree = [], 7
    for bar in range(n_bars):
        chord_degree = degrees[bar % len(degrees)]
        for i, beats in enumerate(RHYTHMS[int(rng.integers(len(RHYTHMS)))]):
            if i == 0:  # nearest chord tone (root, third or fifth) in the lead register
                tones = np.array([chord_degree + k + 7 * o for k in (0, 2, 4) for o in (0, 1, 2)])
                degree = int(tones[np.argmin(np.abs(tones - degree))])
            else:
                degree += int(rng.choice([-2, -1, -1, 0, 1, 1, 2, 3, -3]))
            degree = int(np.clip(degree, 4, 14))
            rest = i > 0 and rng.random() < 0.1
            velocity = 0.0 if rest else (1.0 if i == 0 else float(rng.uniform(0.6, 0.9)))
            events.append((beats, LEAD_OCTAVE + scale_pitch(root, mode, degree), velocity))
    return events


def chord_lines(attrs: dict, rng: np.random.Generator, n_bars: int) -> list[list[Event]]:
    """The harmony part as one (arpeggio) or three (sustained chords, stabs) monophonic lines."""
    chords = _bar_chords(attrs, n_bars)
    style = attrs["chord_style"]
    if style == "arpeggio":
        step = 0.5 if attrs["tempo_bpm"] >= 100 else 0.25 * float(rng.choice([1, 2]))
        order = (0, 1, 2, 1) if rng.random() < 0.5 else (0, 1, 2, 3)
        line = []
        for chord in chords:
            tones = [*chord, chord[0] + 12]
            n = int(round(BEATS_PER_BAR / step))
            line += [(step, CHORD_OCTAVE + tones[order[k % 4]], 0.8) for k in range(n)]
        return [line]
    lines = []
    for voice in range(3):
        line = []
        for chord in chords:
            pitch = CHORD_OCTAVE + chord[voice]
            if style == "sustained":
                line.append((BEATS_PER_BAR, pitch, 0.7))
            else:  # stabs on the off-beats
                line += [(0.5, pitch, 0.0), (0.5, pitch, 0.8)] * BEATS_PER_BAR
        lines.append(line)
    return lines


def bass_line(attrs: dict, n_bars: int) -> list[Event]:
    """Chord roots (and fifths) in the bass register, in the clip's bass style."""
    patterns = {
        "whole": ((4, 0, 1.0),),
        "quarters": ((1, 0, 1.0),) * 4,
        "root-fifth": ((2, 0, 1.0), (2, 2, 0.8)),
        "eighths": ((0.5, 0, 0.9),) * 8,
        "offbeat": ((0.5, 0, 0.0), (0.5, 0, 1.0)) * 4,
    }
    line = []
    for chord in _bar_chords(attrs, n_bars):
        root = chord[0] % 12
        line += [
            (beats, BASS_OCTAVE + root + (chord[tone] - chord[0]), velocity)
            for beats, tone, velocity in patterns[attrs["bass_style"]]
        ]
    return line


def drum_hits(attrs: dict, rng: np.random.Generator, n_bars: int) -> list[tuple[float, str, float]]:
    """Drum hits as (beat, drum, velocity) for the clip's drum pattern."""
    kick = {"four-on-the-floor": (0, 1, 2, 3), "backbeat": (0, 2, 2.5), "half-time": (0,)}
    snare = {"four-on-the-floor": (1, 3), "backbeat": (1, 3), "half-time": (2,)}
    pattern = attrs["drum_pattern"]
    hat_step = 0.5 if attrs["tempo_bpm"] < 130 else 1.0
    hats = np.arange(0, BEATS_PER_BAR, hat_step)
    if pattern == "four-on-the-floor":  # open off-beat hats
        hats = hats[hats % 1 == 0.5] if hat_step == 0.5 else hats + 0.5
    hits = []
    for bar in range(n_bars):
        start = bar * BEATS_PER_BAR
        hits += [(start + b, "kick", 1.0) for b in kick[pattern]]
        hits += [(start + b, "snare", 0.9) for b in snare[pattern]]
        hits += [(start + float(b), "hi-hat", float(rng.uniform(0.4, 0.7))) for b in hats]
    return hits


# -----------------------------------------------------------------------------
# synthesis (vectorised over whole lines: one float32 numpy pass per operation and line)


def _frac(x: np.ndarray) -> np.ndarray:
    """``x mod 1`` (``np.floor`` is several times faster than ``%`` on float32)."""
    return x - np.floor(x)


def _poly_blep(phase: np.ndarray, dt: float) -> np.ndarray:
    """PolyBLEP residual that band-limits a unit step at phase 0 (for saw and square waves)."""
    out = np.zeros_like(phase)
    lo, hi = phase < dt, phase > 1 - dt
    x = phase[lo] / dt
    out[lo] = x + x - x * x - 1
    x = (phase[hi] - 1) / dt
    out[hi] = x * x + x + x + 1
    return out


def _saw(phase: np.ndarray, dt: float) -> np.ndarray:
    """Band-limited sawtooth in [-1, 1]."""
    return 2 * phase - 1 - _poly_blep(phase, dt)


def _square(phase: np.ndarray, dt: float) -> np.ndarray:
    """Band-limited square wave in [-1, 1] (a saw minus a half-cycle-shifted saw)."""
    naive = np.where(phase < 0.5, np.float32(1), np.float32(-1))
    return naive + _poly_blep(phase, dt) - _poly_blep(_frac(phase + np.float32(0.5)), dt)


def _harmonics(
    phase: np.ndarray, weights: tuple[float, ...], damping: np.ndarray | None = None
) -> np.ndarray:
    """Sum of partials ``weights[k-1] * sin(2 pi k phase)`` (times ``damping**k`` if given).

    Uses the Chebyshev recurrence ``sin(kx) = 2 cos(x) sin((k-1)x) - sin((k-2)x)`` so only one
    sin and one cos are evaluated however many partials there are.
    """
    x = np.float32(2 * np.pi) * phase
    two_cos, prev, cur = 2 * np.cos(x), np.zeros_like(x), np.sin(x)
    gain = damping if damping is not None else np.float32(1)
    out = weights[0] * gain * cur
    for weight in weights[1:]:
        prev, cur = cur, two_cos * cur - prev
        if damping is not None:
            gain = gain * damping
        if weight:
            out += weight * gain * cur
    return out


def oscillator(timbre: str, phase: np.ndarray, dt: float, t: np.ndarray) -> np.ndarray:
    """One sample per phase value of ``timbre``.

    Args:
        timbre: One of ``TIMBRE_WORDS``.
        phase: Phase in cycles, in [0, 1).
        dt: Phase increment per sample (frequency / sample rate), for band-limiting.
        t: Seconds since the start of the note (for the pluck's partial decay).
    """
    if timbre == "sine":
        return np.sin(np.float32(2 * np.pi) * phase)
    if timbre == "sawtooth":
        return _saw(phase, dt)
    if timbre == "square":
        return _square(phase, dt)
    if timbre == "pluck":  # decaying-harmonic string model: partial k decays as exp(-3 k t)
        return _harmonics(phase, (1.0, 0.5, 0.33, 0.25, 0.2, 0.12), damping=np.exp(-3 * t))
    if timbre == "organ":
        return _harmonics(phase, (1.0, 0.6, 0.4, 0.25, 0, 0.15))
    if timbre == "pad":  # two detuned triangles
        tri = [np.abs(2 * _frac(phase * np.float32(r)) - 1) for r in (0.996, 1.004)]
        return 2 * (tri[0] + tri[1]) - 2
    raise ValueError(f"unknown timbre {timbre!r}")


# attack, release (s) and exponential decay time constant (s, 0 = sustained) per timbre
ENVELOPES = {
    "sine": (0.02, 0.05, 0.0),
    "sawtooth": (0.005, 0.05, 1.5),
    "square": (0.005, 0.03, 2.0),
    "pluck": (0.002, 0.03, 0.6),
    "organ": (0.01, 0.04, 0.0),
    "pad": (0.15, 0.2, 0.0),
}


def samples_per_beat(tempo_bpm: float, sample_rate: int) -> int:
    """Samples per beat, rounded to a multiple of 4 so every 16th note is a whole number of samples.

    The grid makes equal notes bit-identical (``render_line`` caches them); the tempo error is
    below 0.01 BPM at 48 kHz.
    """
    return 4 * round(sample_rate * 60 / tempo_bpm / 4)


def render_note(timbre: str, midi: float, n_samples: int, sample_rate: int) -> np.ndarray:
    """One note of ``timbre``: oscillator (phase restarted at the onset) times its envelope."""
    n = np.arange(n_samples, dtype=np.float32)
    t = n / np.float32(sample_rate)
    dt = 440.0 * 2.0 ** ((midi - 69) / 12) / sample_rate
    phase = _frac(n * np.float32(dt))
    attack, release, decay = ENVELOPES[timbre]
    env = np.minimum(t * np.float32(1 / attack), np.float32(1))
    env *= np.minimum(
        (np.float32(n_samples / sample_rate) - t) * np.float32(1 / release), np.float32(1)
    )
    if decay:
        env *= np.exp(t * np.float32(-1 / decay))
    return oscillator(timbre, phase, dt, t) * env


def render_line(
    events: list[Event], timbre: str, spb: int, sample_rate: int, n_samples: int
) -> np.ndarray:
    """Render a monophonic line, laid out contiguously from t = 0, to ``n_samples`` (float32).

    Repeated notes (same length, pitch and velocity: bass ostinatos, arpeggios, repeated chords)
    are rendered once and reused.

    Args:
        events: ``(beats, midi, velocity)`` notes, velocity 0 being a rest.
        timbre: One of ``TIMBRE_WORDS``.
        spb: Samples per beat (from ``samples_per_beat``).
        sample_rate: Sample rate in Hz.
        n_samples: Output length; the line must be at least this long.
    """
    cache: dict[tuple[int, float, float], np.ndarray] = {}
    pieces, total = [], 0
    for beats, midi, velocity in events:
        if total >= n_samples:
            break
        key = (int(round(beats * spb)), midi, velocity)
        if key not in cache:
            cache[key] = (
                np.float32(velocity) * render_note(timbre, midi, key[0], sample_rate)
                if velocity
                else np.zeros(key[0], dtype=np.float32)
            )
        pieces.append(cache[key])
        total += key[0]
    if total < n_samples:
        raise ValueError("line is shorter than the clip")
    return np.concatenate(pieces)[:n_samples]


def drum_sample(drum: str, rng: np.random.Generator, sr: int) -> np.ndarray:
    """One-shot drum: kick = falling sine sweep, snare = noise burst + tone, hi-hat = HF noise."""
    length = {"kick": 0.35, "snare": 0.2, "hi-hat": 0.06}[drum]
    t = np.arange(int(length * sr), dtype=np.float32) / np.float32(sr)
    if drum == "kick":  # exponential sweep 150 Hz -> 45 Hz
        f0, f1, tau = 150.0, 45.0, 0.04
        phase = f1 * t + (f0 - f1) * tau * (1 - np.exp(-t / tau))
        return np.sin(2 * np.pi * phase) * np.exp(-t / 0.12)
    noise = rng.standard_normal(len(t) + 2).astype(np.float32)
    if drum == "snare":  # once-differenced noise is a gentle high-pass
        body = 0.5 * np.sin(2 * np.pi * 185 * t) * np.exp(-t / 0.04)
        return 0.35 * np.diff(noise)[1:] * np.exp(-t / 0.06) + body
    return 0.25 * np.diff(noise, 2) * np.exp(-t / 0.015)  # hi-hat: twice differenced


def render_drums(
    attrs: dict, rng: np.random.Generator, spb: int, sample_rate: int, n_bars: int, n_samples: int
) -> np.ndarray:
    """Mono drum track: each hit adds a (scaled) one-shot at its beat position."""
    samples = {drum: drum_sample(drum, rng, sample_rate) for drum in ("kick", "snare", "hi-hat")}
    out = np.zeros(n_samples, dtype=np.float32)
    for beat, drum, velocity in drum_hits(attrs, rng, n_bars):
        start = int(round(beat * spb))
        if start >= n_samples:
            continue
        sample = samples[drum][: n_samples - start]
        out[start : start + len(sample)] += np.float32(velocity) * sample
    return out


def _pan_gains(pan: float, channels: int) -> tuple[float, ...]:
    """Constant-power gains (-1 left, +1 right) for ``channels`` (1 or 2)."""
    if channels == 1:
        return (1.0,)
    angle = (pan + 1) * np.pi / 4
    return float(np.cos(angle)), float(np.sin(angle))


def _fade_edges(audio: np.ndarray, n_fade: int) -> None:
    """In-place linear fade-in and fade-out of ``n_fade`` samples (no clicks at the cut)."""
    ramp = np.linspace(0, 1, n_fade, endpoint=False, dtype=np.float32)
    audio[:, :n_fade] *= ramp
    audio[:, -n_fade:] *= ramp[::-1]


def render_clip(attrs: dict, rng: np.random.Generator, cfg: SyntheticConfig) -> np.ndarray:
    """Render a clip's attributes to audio.

    Args:
        attrs: Attributes from ``sample_attributes`` (may be edited, e.g. to force timbres).
        rng: Generator for the melody, drum noise and mix.
        cfg: Dataset config (duration, sample rate, channels).

    Returns:
        float32 array of shape (channels, samples), peak in [0.5, 0.9].
    """
    if cfg.channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {cfg.channels}")
    n_samples = int(round(cfg.duration_s * cfg.sample_rate))
    sr, parts = cfg.sample_rate, attrs["parts"]
    n_bars, spb = _n_bars(attrs, cfg), samples_per_beat(attrs["tempo_bpm"], sr)
    chords = chord_lines(attrs, rng, n_bars)
    tracks = [  # (events or None for drums, timbre, gain, pan)
        (melody_line(attrs, rng, n_bars), parts["lead"], 0.5, float(rng.uniform(-0.3, 0.3))),
        (bass_line(attrs, n_bars), parts["bass"], 0.55, 0.0),
        *[
            (line, parts["chords"], 0.45 / len(chords), float(rng.uniform(-0.4, 0.4)))
            for line in chords
        ],
    ]
    if attrs["has_drums"]:
        tracks.append((None, "drums", 0.6, float(rng.uniform(-0.1, 0.1))))
    mix = np.zeros((cfg.channels, n_samples), dtype=np.float32)
    for events, timbre, gain, pan in tracks:
        signal = (
            render_drums(attrs, rng, spb, sr, n_bars, n_samples)
            if events is None
            else render_line(events, timbre, spb, sr, n_samples)
        )
        for channel, pan_gain in enumerate(_pan_gains(pan, cfg.channels)):
            mix[channel] += np.float32(gain * pan_gain) * signal
    _fade_edges(mix, min(n_samples // 2, int(0.005 * cfg.sample_rate)) or 1)
    peak = float(np.max(np.abs(mix))) or 1.0
    mix *= np.float32(rng.uniform(0.5, 0.9) / peak)
    return mix


def make_clip(rng: np.random.Generator, cfg: SyntheticConfig) -> tuple[np.ndarray, dict]:
    """Draw attributes and render one clip.

    Args:
        rng: The clip's generator (all randomness of the clip comes from it).
        cfg: Dataset config.

    Returns:
        Audio of shape (channels, samples), float32 in [-1, 1], and its attributes dict.
    """
    attrs = sample_attributes(rng, cfg)
    return render_clip(attrs, rng, cfg), attrs


# -----------------------------------------------------------------------------
# text: captions, aspect lists and AudioSet labels


def _article(phrase: str) -> str:
    """``phrase`` with its indefinite article (``an organ``, ``an 8-bit tune``, ``a pad``)."""
    return ("an " if phrase[0].lower() in "aeiou8" else "a ") + phrase


def _capitalise(sentence: str) -> str:
    """Upper-case the first character only (``str.capitalize`` would lower ``C#``, ``BPM``)."""
    return sentence[0].upper() + sentence[1:]


def _join(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _instrument_sentence(attrs: dict, rng: np.random.Generator) -> str:
    """Who plays what; a timbre playing several parts is named once (``... plays A and B``)."""
    parts = attrs["parts"]
    words = {timbre: _pick(rng, TIMBRE_WORDS[timbre]) for timbre in attrs["instruments"]}
    if len(words) == 3 and rng.random() < 0.4:  # noun list
        nouns = [
            f"{_article(words[parts['lead']])} lead",
            f"{_article(words[parts['chords']])} playing chords",
            f"{_article(words[parts['bass']])} bass",
        ]
        opening = _pick(rng, ("This song features", "The music features", "It consists of"))
        return f"{opening} {_join(nouns)}."
    roles = {"lead": "lead", "chords": attrs["chord_style"], "bass": "bass"}
    jobs: dict[str, list[str]] = {}
    for part, timbre in parts.items():
        jobs.setdefault(timbre, []).append(_pick(rng, ROLE_NOUNS[roles[part]]))
    clauses = [
        f"{_article(words[timbre])} {_pick(rng, PLAY_VERBS)} {_join(nouns)}"
        for timbre, nouns in jobs.items()
    ]
    tail = " while " + _join(clauses[1:]) if len(clauses) > 1 else ""
    return _capitalise(clauses[0] + tail + ".")


def _drum_sentence(attrs: dict, rng: np.random.Generator) -> str:
    """The drum pattern and kit, or the absence of percussion."""
    if not attrs["has_drums"]:
        return _pick(rng, NO_DRUM_SENTENCES)
    beat = _pick(rng, DRUM_PHRASES[attrs["drum_pattern"]])
    kit = _pick(rng, ("kick, snare and hi-hats", "electronic kick, snare and hi-hat sounds"))
    return _pick(
        rng,
        (
            f"The drums play {beat} with {kit}.",
            f"A drum machine provides {beat}.",
            f"The percussion consists of {kit} playing {beat}.",
        ),
    )


def _tempo_key_sentences(attrs: dict, rng: np.random.Generator) -> list[str]:
    """Tempo word (sometimes with the BPM) and key, as one or two sentences."""
    word, key = attrs["tempo_word"], f"{attrs['key']} {attrs['mode']}"
    bpm = _pick(
        rng,
        (
            "",
            f" at {attrs['tempo_bpm']} BPM",
            f" with around {attrs['tempo_bpm']} beats per minute",
        ),
    )
    style = int(rng.integers(3))
    if style == 0:
        return [f"The tempo is {word}{bpm} and the piece is in the key of {key}."]
    if style == 1:
        return [
            f"The tempo is {word}{bpm}.",
            _pick(rng, (f"The song is in the key of {key}.", f"It is played in {key}.")),
        ]
    return [f"This piece is in {key} and has a {word} tempo{bpm}."]


def caption_for(attrs: dict, rng: np.random.Generator) -> str:
    """A MusicCaps-style caption (3-5 sentences) describing ``attrs``.

    Instruments, drums (or their absence), the tempo word and the key/mode are always described;
    an opening genre sentence, the chord progression, the mood and a use case are added at random.
    """
    genre = GENRES[attrs["genre"]]
    noun, mood = _pick(rng, genre.nouns), attrs["mood"]
    required = [
        _instrument_sentence(attrs, rng),
        _drum_sentence(attrs, rng),
        *_tempo_key_sentences(attrs, rng),
    ]
    optional = {
        "opening": _pick(
            rng,
            (
                f"This is an instrumental {noun}.",
                f"This is {_article(mood)} {noun} with no vocals.",
                f"The song is an instrumental {noun}.",
            ),
        ),
        "chords": _pick(
            rng,
            (
                f"The chord progression is {', '.join(attrs['chords'])}.",
                f"The harmony follows a {'-'.join(attrs['progression'])} progression.",
            ),
        ),
        "mood": _pick(
            rng,
            (
                f"The mood of this piece is {mood}.",
                f"It has {_article(mood)} atmosphere.",
                f"The song sounds {mood}.",
            ),
        ),
        "scene": _pick(
            rng,
            (
                "This song may be playing ",
                "This piece could be used ",
                "This music would fit well ",
            ),
        )
        + _pick(rng, genre.scenes)
        + ".",
    }
    n_optional = int(rng.integers(0, 5 - len(required) + 1))
    chosen = set(rng.choice(list(optional), size=n_optional, replace=False).tolist())
    head = [optional["opening"]] if "opening" in chosen else []
    tail = [optional[k] for k in ("chords", "mood", "scene") if k in chosen]
    return " ".join(head + required + tail)


def aspect_list_for(attrs: dict, rng: np.random.Generator) -> str:
    """MusicCaps ``aspect_list``: the repr of a Python list of short aspect strings."""
    parts = attrs["parts"]
    chords = {"sustained": "chords", "arpeggio": "arpeggio", "stabs": "stabs"}[attrs["chord_style"]]
    names = {role: ASPECT_TIMBRES[timbre] for role, timbre in parts.items()}
    aspects = [
        attrs["genre"],
        "instrumental",
        f"{names['lead']} lead",
        f"{names['chords']} {chords}",
        f"{names['bass']} bass",
    ]
    if attrs["has_drums"]:
        aspects += ["drum machine", attrs["drum_pattern"].replace("-", " ")]
    else:
        aspects.append("no percussion")
    aspects += [f"{attrs['tempo_word']} tempo", f"{attrs['mode']} key", attrs["mood"]]
    if rng.random() < 0.5:
        aspects.append("no voice")
    return str(aspects)


def audioset_labels_for(attrs: dict, rng: np.random.Generator) -> str:
    """Sorted, comma-joined AudioSet ids as in the CSV: music, genre, maybe instruments, mood."""
    mids = {MUSIC_MID, *GENRES[attrs["genre"]].mids}
    if rng.random() < 0.4:
        mids |= {INSTRUMENT_MID, *(TIMBRE_MIDS[t] for t in attrs["instruments"])}
    if attrs["has_drums"] and rng.random() < 0.4:
        mids.add(DRUM_MACHINE_MID)
    if attrs["mood"] in MOOD_MIDS and rng.random() < 0.3:
        mids.add(MOOD_MIDS[attrs["mood"]])
    return ",".join(sorted(mids))


# -----------------------------------------------------------------------------
# dataset

YTID_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
N_AUTHORS = 6


def random_ytid(rng: np.random.Generator) -> str:
    """An 11-character YouTube-like id over ``[A-Za-z0-9_-]``."""
    return "".join(YTID_ALPHABET[rng.integers(len(YTID_ALPHABET), size=11)])


def _seconds(value: float) -> int | float:
    """Integral seconds as int (as in the CSV), else float."""
    return int(value) if float(value).is_integer() else float(value)


def make_synthetic_dataset(
    out_dir: Path, cfg: SyntheticConfig, progress: bool = True
) -> pd.DataFrame:
    """Write ``out_dir/<ytid>.wav`` (PCM_16) for every clip and return the metadata table.

    Clip ``i`` splits ``SeedSequence([cfg.seed, i])`` into independent streams for its metadata
    (id, author, subset flags), audio and text, so e.g. a caption template change leaves the audio
    untouched and clip ``i`` never depends on ``n_clips``.

    Args:
        out_dir: Output directory (created if missing).
        cfg: Dataset config.
        progress: Show a tqdm progress bar.

    Returns:
        A DataFrame with exactly ``MUSICCAPS_COLUMNS`` and the real CSV's dtypes and formats.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, seen = [], set()
    for i in tqdm(range(cfg.n_clips), desc="synthetic clips", unit="clip", disable=not progress):
        meta_rng, audio_rng, text_rng = (
            np.random.default_rng(s) for s in np.random.SeedSequence([cfg.seed, i]).spawn(3)
        )
        ytid = random_ytid(meta_rng)
        while ytid in seen:  # ~never; redraws come from the meta stream so audio is unaffected
            ytid = random_ytid(meta_rng)
        seen.add(ytid)
        audio, attrs = make_clip(audio_rng, cfg)
        write_wav(out_dir / f"{ytid}.wav", audio, cfg.sample_rate)
        rows.append(
            {
                "ytid": ytid,
                "start_s": _seconds(0),
                "end_s": _seconds(cfg.duration_s),
                "audioset_positive_labels": audioset_labels_for(attrs, text_rng),
                "aspect_list": aspect_list_for(attrs, text_rng),
                "caption": caption_for(attrs, text_rng),
                "author_id": int(meta_rng.integers(N_AUTHORS)),
                "is_balanced_subset": bool(meta_rng.random() < 0.2),
                "is_audioset_eval": bool(meta_rng.random() < 0.5),
            }
        )
    return pd.DataFrame(rows, columns=MUSICCAPS_COLUMNS)
