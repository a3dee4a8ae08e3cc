"""Score a folder of generated MIDI files against a prepared dataset: the evaluate stage's measurement,
also run by `benchmarks/quality.py` for every configuration it trains.

Every set (generated, the Markov and shuffle baselines, real train segments) is measured against the
test split with `pipeline.evaluate.metrics`. With several instrument rows, every set is measured twice
over: the mix (all rows merged, the same keys as single-row runs, e.g. `generated.pitch_range.mean`) and each
instrument on its own (`generated.soprano.pitch_range.mean`), against the test segments where that
instrument plays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.encoding import Encoding
from pipeline.data.midi import pitch_of
from pipeline.data.prepared import load_mask, load_split, load_stats
from pipeline.errors import DmcError
from pipeline.evaluate import metrics
from pipeline.evaluate.baselines import baseline_sets, choose, masked_baseline_sets
from pipeline.evaluate.pieces import (
    Piece,
    from_zero,
    merged_notes,
    mix,
    pieces_from_segments,
    read_pieces,
    read_rows,
    segment_rows,
)

SETS = ("generated", "markov", "shuffle", "real")  # `real`: train segments, the real-vs-real ceiling


@dataclass
class Evaluation:
    flat: dict[str, float]  # `metrics.flat_metrics` keys, plus edge and chord fractions per set
    reports: dict[str, metrics.SetReport]
    rejected: list[str]  # sample files without a usable track (counted as empty pieces)
    per_instrument: dict[str, str]  # group -> why it has no figures (too few test segments)


def evaluate_samples(prepared_dir: str | Path, samples_dir: str | Path, seed: int = 0, n_baseline: int = 64,
                     frame_beats: float = 16.0, hop_beats: float = 8.0,
                     notes_per_piece: int | None = None) -> Evaluation:
    """Measure the *.mid files in `samples_dir` and the baselines against the test split.

    `notes_per_piece`: how many notes each single-row sample was generated with, so that the notes its
    file lacks (merged at decoding: one pitch twice at one onset) are counted in `generated.merged_notes`.
    """
    stats = load_stats(prepared_dir)
    groups = list(stats["instruments"])
    encoding = Encoding.from_stats(stats)
    test = load_split(prepared_dir, "test")
    if len(test) < 2:
        raise DmcError(f"the test split holds {len(test)} segment(s), 2 or more are needed; "
                       "use a larger dataset or a larger 'prepare.split.test'")
    test_rng, train_rng = np.random.default_rng(seed).spawn(2)
    pick = choose(len(test), n_baseline, test_rng)
    rows: dict[str, list[list[Piece]]] = {}  # set -> piece -> instrument row (several rows only)
    if len(groups) == 1:
        generated, rejected = read_pieces(samples_dir)
        reference = pieces_from_segments(test[pick], encoding)
        train_sets = baseline_sets(load_split(prepared_dir, "train"), encoding, n_baseline, train_rng)
        sets = {"generated": generated,
                **{k: pieces_from_segments(v, encoding) for k, v in train_sets.items()}}
    else:
        rows["generated"], rejected = read_rows(samples_dir, groups)
        rows["test"] = segment_rows(test[pick], encoding, load_mask(prepared_dir, "test")[pick])
        for k, (x, mask) in masked_baseline_sets(load_split(prepared_dir, "train"),
                                                 load_mask(prepared_dir, "train"), encoding, n_baseline,
                                                 train_rng).items():
            rows[k] = segment_rows(x, encoding, mask)
        sets = {k: [mix(r) for r in v] for k, v in rows.items()}
        generated, reference = sets["generated"], sets.pop("test")
    if not generated:
        raise DmcError(f"no {samples_dir}/*.mid; run the sample stage first (dvc repro sample)")
    reports = metrics.evaluate_sets({k: sets[k] for k in SETS}, reference, frame_beats=frame_beats,
                                    hop_beats=hop_beats)
    flat = {**metrics.flat_metrics(reports), "generated.rejected": len(rejected)}
    low, high = (int(pitch_of(stats["normalization"]["frequency"][k])) for k in ("min", "max"))
    for name, pieces in {"test": reference, **sets}.items():
        expected = notes_per_piece if name == "generated" and len(groups) == 1 else None
        flat[f"{name}.merged_notes"] = float(merged_notes(pieces, expected))
        grid = metrics.grid_fraction(pieces, stats["grid"]) if stats.get("grid") else math.nan
        for key, value in (("edge_fraction", metrics.edge_fraction(pieces, low, high)),
                           ("chord_fraction", metrics.chord_fraction(pieces)), ("grid_fraction", grid)):
            if not math.isnan(value):
                flat[f"{name}.{key}"] = value
    missing = {}
    for h, group in enumerate(groups if rows else []):
        # One instrument: its rows where it plays in the test segments, every piece of the other sets.
        ref = [from_zero(r[h]) for r in rows["test"] if len(r[h])]
        if len(ref) < 2:
            missing[group] = f"plays in {len(ref)} test segment(s)"
            continue
        own = metrics.evaluate_sets({k: [from_zero(r[h]) for r in rows[k]] for k in SETS}, ref,
                                    frame_beats=frame_beats, hop_beats=hop_beats)
        for key, value in metrics.flat_metrics(own).items():
            name, rest = key.split(".", 1)
            flat[f"{name}.{group}.{rest}"] = value
    flat = {k: v for k, v in flat.items() if not (isinstance(v, float) and math.isnan(v))}  # JSON has no NaN
    return Evaluation(flat=flat, reports=reports, rejected=rejected, per_instrument=missing)


# -- the grid layout ---------------------------------------------------------------------------------------

VOICE_LEADING = ("consonant_fraction", "parallel_fifths", "parallel_octaves")


def evaluate_grid_samples(prepared_dir: str | Path, samples_dir: str | Path, seed: int = 0,
                          n_baseline: int = 64, frame_beats: float = 16.0,
                          hop_beats: float = 8.0) -> Evaluation:
    """The evaluate stage of a grid-layout model (`pipeline.data.voices`): its samples (every voice composed,
    as the sample stage writes them) against the test split's grid windows, the data it was trained on.

    Every set is measured in windows of the model's width (`seq_len` steps), as the test split is cut:
    each sample is laid on the grid and cut into whole windows, as prepare cuts a file. Sets: `generated`;
    `markov`, each voice drawn from its own Markov chain fitted on the train windows (the voices never
    hear each other); `shuffle`, train windows with each voice's pitches permuted among its notes (rhythm
    and register kept, harmony lost); `real`, train windows. Besides the note layout's keys (the mix and
    `{set}.{voice}.*`), `{set}.consonant_fraction`, `.parallel_fifths` and `.parallel_octaves`
    (`pipeline.evaluate.voice_leading`, mean over windows) say how the voices sound together.
    """
    from pipeline.data import voices
    from pipeline.data.rows import RowNotes, read_rows
    from pipeline.evaluate.harmony import markov_voice, voice_chains
    from pipeline.evaluate.voice_leading import voice_leading
    from pipeline.model.voice_training import load_grid_data, load_grid_split, window_starts

    data = load_grid_data(prepared_dir)
    stats, groups = data.stats, list(data.stats["instruments"])
    step, width = float(stats["grid"]), int(stats["seq_len"])
    test = load_grid_split(prepared_dir, "test")
    if test is None or len(test) < 2:
        raise DmcError(f"the test split holds {0 if test is None else len(test)} grid window(s), 2 or more "
                       "are needed; use a larger dataset or a larger 'prepare.split.test'")

    def window_rows(windows, index) -> list[list[RowNotes]]:
        return [voices.grid_to_rows(voices.VoiceGrid(windows.pitch[i].astype(np.int64), windows.state[i]),
                                    step) for i in index]

    def cut(rows: list[RowNotes | None]) -> list[list[RowNotes]]:
        grid = voices.rows_to_grid(rows, step, 0.0, snap=True)
        return [voices.grid_to_rows(grid.columns(a, a + width), step)
                for a in window_starts(max(grid.shape[1], 1), width, width)]

    test_rng, train_rng = np.random.default_rng(seed).spawn(2)
    rows: dict[str, list[list[RowNotes]]] = {
        "test": window_rows(test, choose(len(test), n_baseline, test_rng))}
    rows["generated"], rejected = [], []
    for path in sorted(Path(samples_dir).glob("*.mid")):
        try:
            found = read_rows(path, groups, "evaluate")
        except DmcError:
            rejected.append(path.name)
            rows["generated"].append([RowNotes.of([], [], [])] * len(groups))
            continue
        origin = min((float(r.onset.min()) for r in found if r is not None and len(r)), default=0.0)
        rows["generated"] += cut([None if r is None else RowNotes.of(r.pitch, r.onset - origin, r.duration)
                                  for r in found])
    if not rows["generated"]:
        raise DmcError(f"no {samples_dir}/*.mid; run the sample stage first (dvc repro sample)")
    train = window_rows(data.train, np.arange(len(data.train)))
    rows["real"] = [train[i] for i in choose(len(train), n_baseline, train_rng)]
    rows["shuffle"] = [[RowNotes.of(train_rng.permutation(r.pitch), r.onset, r.duration) for r in piece]
                       for piece in (train[i] for i in choose(len(train), n_baseline, train_rng))]
    chains = voice_chains(train, len(groups))
    end = (width - 1) * step
    rows["markov"] = [cut([None if c is None else markov_voice(c, 0.0, end, train_rng) for c in chains])[0]
                      for _ in range(n_baseline)]

    def pieces(name: str, h: int | None = None) -> list[Piece]:
        as_piece = [[Piece.from_notes(r.pitch, r.onset, r.duration) for r in p] for p in rows[name]]
        return [mix(p) if h is None else from_zero(p[h]) for p in as_piece]

    reference = pieces("test")
    reports = metrics.evaluate_sets({k: pieces(k) for k in SETS}, reference, frame_beats=frame_beats,
                                    hop_beats=hop_beats)
    flat = {**metrics.flat_metrics(reports), "generated.rejected": len(rejected)}
    low, high = int(stats["pitch_range"]["low"]), int(stats["pitch_range"]["high"])
    for name in ("test", *SETS):
        mixed = reference if name == "test" else pieces(name)
        flat[f"{name}.merged_notes"] = float(merged_notes(mixed))
        flat[f"{name}.edge_fraction"] = metrics.edge_fraction(mixed, low, high)
        flat[f"{name}.grid_fraction"] = metrics.grid_fraction(mixed, step)
        flat[f"{name}.chord_fraction"] = metrics.chord_fraction(mixed)
        scores = [voice_leading([r for r in p if len(r)]) for p in rows[name]]
        for column in VOICE_LEADING:
            values = np.array([s[column] for s in scores], dtype=float)
            flat[f"{name}.{column}"] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
    missing = {}
    for h, group in enumerate(groups):
        ref = [p for p in pieces("test", h) if len(p)]
        if len(ref) < 2:
            missing[group] = f"sings in {len(ref)} test window(s)"
            continue
        own = metrics.evaluate_sets({k: pieces(k, h) for k in SETS}, ref, frame_beats=frame_beats,
                                    hop_beats=hop_beats)
        for key, value in metrics.flat_metrics(own).items():
            name, rest = key.split(".", 1)
            flat[f"{name}.{group}.{rest}"] = value
    flat = {k: v for k, v in flat.items() if not (isinstance(v, float) and math.isnan(v))}  # JSON has no NaN
    return Evaluation(flat=flat, reports=reports, rejected=rejected, per_instrument=missing)
