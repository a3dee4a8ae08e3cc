"""Score a folder of generated MIDI files against a prepared dataset: the evaluate stage's measurement,
also run by `benchmarks/quality.py` for every configuration it trains.

Every set (generated, the Markov and shuffle baselines, real train segments) is measured against the
test split with `pipeline.metrics`. With several instrument rows, every set is measured twice over: the
mix (all rows merged, the same keys as single-row runs, e.g. `generated.pitch_range.mean`) and each
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
    rows: dict[str, list[list[metrics.Piece]]] = {}  # set -> piece -> instrument row (several rows only)
    if len(groups) == 1:
        generated, rejected = metrics.read_pieces(samples_dir)
        reference = metrics.pieces_from_segments(test[pick], encoding)
        train_sets = baseline_sets(load_split(prepared_dir, "train"), encoding, n_baseline, train_rng)
        sets = {"generated": generated,
                **{k: metrics.pieces_from_segments(v, encoding) for k, v in train_sets.items()}}
    else:
        rows["generated"], rejected = metrics.read_rows(samples_dir, groups)
        rows["test"] = metrics.segment_rows(test[pick], encoding, load_mask(prepared_dir, "test")[pick])
        for k, (x, mask) in masked_baseline_sets(load_split(prepared_dir, "train"),
                                                 load_mask(prepared_dir, "train"), encoding, n_baseline,
                                                 train_rng).items():
            rows[k] = metrics.segment_rows(x, encoding, mask)
        sets = {k: [metrics.mix(r) for r in v] for k, v in rows.items()}
        generated, reference = sets["generated"], sets.pop("test")
    if not generated:
        raise DmcError(f"no {samples_dir}/*.mid; run the sample stage first (dvc repro sample)")
    reports = metrics.evaluate_sets({k: sets[k] for k in SETS}, reference, frame_beats=frame_beats,
                                    hop_beats=hop_beats)
    flat = {**metrics.flat_metrics(reports), "generated.rejected": len(rejected)}
    low, high = (int(pitch_of(stats["normalization"]["frequency"][k])) for k in ("min", "max"))
    for name, pieces in {"test": reference, **sets}.items():
        expected = notes_per_piece if name == "generated" and len(groups) == 1 else None
        flat[f"{name}.merged_notes"] = float(metrics.merged_notes(pieces, expected))
        grid = metrics.grid_fraction(pieces, stats["grid"]) if stats.get("grid") else math.nan
        for key, value in (("edge_fraction", metrics.edge_fraction(pieces, low, high)),
                           ("chord_fraction", metrics.chord_fraction(pieces)), ("grid_fraction", grid)):
            if not math.isnan(value):
                flat[f"{name}.{key}"] = value
    missing = {}
    for h, group in enumerate(groups if rows else []):
        # One instrument: its rows where it plays in the test segments, every piece of the other sets.
        ref = [metrics.from_zero(r[h]) for r in rows["test"] if len(r[h])]
        if len(ref) < 2:
            missing[group] = f"plays in {len(ref)} test segment(s)"
            continue
        own = metrics.evaluate_sets({k: [metrics.from_zero(r[h]) for r in rows[k]] for k in SETS}, ref,
                                    frame_beats=frame_beats, hop_beats=hop_beats)
        for key, value in metrics.flat_metrics(own).items():
            name, rest = key.split(".", 1)
            flat[f"{name}.{group}.{rest}"] = value
    return Evaluation(flat=flat, reports=reports, rejected=rejected, per_instrument=missing)
