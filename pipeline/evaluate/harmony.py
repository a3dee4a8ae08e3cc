"""`dmc evaluate-harmony`: harmonize the test split's melodies and measure the result against Bach.

For every test file of a multi-row dataset (the chorales as `bach-satb`), the kept parts (default: the
first row, the soprano) are taken whole from the file and the model writes the other rows
(`pipeline.compose.rows`), as `dmc generate --prompt FILE --keep soprano` does. Three sets are measured:
- `model`: the model's harmonizations;
- `markov`: the same kept parts, each other voice drawn from its own first-order Markov chain fitted on the
  train split's notes of that voice. It never looks at the melody: the bar any harmonizer must clear;
- `bach`: the test files as written.

Per generated voice, against the real voices of the test files: OA (the mean over Yang & Lerch's features)
and framewise consistency and variance (`pipeline.evaluate.metrics`); `bach` there is the train files'
voices, the real-vs-real ceiling. Per piece, all voices together: the consonant fraction of vertical
intervals and parallel fifths and octaves per 100 notes (`pipeline.evaluate.voice_leading`), averaged over
pieces.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipeline.compose.options import REPAIR_ROUNDS
from pipeline.compose.prompts import check_keep
from pipeline.compose.rows import Given, generate_rows
from pipeline.compose.write import on_grid
from pipeline.data.prepared import SEGMENTS_FILE
from pipeline.data.rows import NO_NOTES, RowNotes, read_rows
from pipeline.errors import DmcError
from pipeline.evaluate.baselines import MarkovChain
from pipeline.evaluate.metrics import QUANTUM, evaluate_sets, flat_metrics
from pipeline.evaluate.pieces import Piece, from_zero
from pipeline.evaluate.voice_leading import voice_leading

SETS = ("model", "markov", "bach")
VOICE_COLUMNS = ("oa_mean", "framewise.pitch.consistency", "framewise.pitch.variance",
                 "framewise.duration.consistency", "framewise.duration.variance")
PIECE_COLUMNS = ("consonant_fraction", "parallel_fifths", "parallel_octaves")


@dataclass
class HarmonyReport:
    metrics: dict[str, float]  # `{set}.{voice}.{VOICE_COLUMNS}` and `{set}.{PIECE_COLUMNS}`
    files: list[str]  # the test files harmonized
    kept: list[str]
    generated: list[list[RowNotes]]  # the model's pieces, one RowNotes per row

    def table(self, groups: Sequence[str]) -> str:
        """The report as two Markdown tables: per generated voice, and per piece."""
        m = self.metrics
        lines = ["| voice | set | OA | pitch cons | pitch var | dur cons | dur var |",
                 "|---|---|---|---|---|---|---|"]
        for voice in (g for g in groups if g not in self.kept):
            for name in SETS:
                cells = [m.get(f"{name}.{voice}.{c}", float("nan")) for c in VOICE_COLUMNS]
                lines.append(f"| {voice} | {name} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")
        lines += ["", "| set | consonant | parallel 5ths / 100 notes | parallel 8ves / 100 notes |",
                  "|---|---|---|---|"]
        for name in SETS:
            cells = [m.get(f"{name}.{c}", float("nan")) for c in PIECE_COLUMNS]
            lines.append(f"| {name} | {cells[0]:.3f} | {cells[1]:.2f} | {cells[2]:.2f} |")
        return "\n".join(lines)


def split_files(prepared_dir: str | Path, split: str) -> list[str]:
    """The files (relative to the dataset's root) that gave segments of `split`, in sorted order."""
    from pipeline.model.voice_training import FILES_FILE

    grid_files = Path(prepared_dir) / FILES_FILE  # the grid layout's prepare lists its files' splits
    if grid_files.is_file():
        return sorted(name for name, s in json.loads(grid_files.read_text()).items() if s == split)
    table = pq.read_table(Path(prepared_dir) / SEGMENTS_FILE, columns=["file", "split"],
                          filters=[("split", "==", split)])
    return sorted(set(table.column("file").to_pylist()))


def voice_chains(rows: Sequence[Sequence[RowNotes | None]], n_rows: int) -> list[MarkovChain | None]:
    """One Markov chain per row, fitted on that row's notes of every file (None: the row never plays)."""
    chains: list[MarkovChain | None] = []
    for h in range(n_rows):
        lines = [r[h] for r in rows if r[h] is not None and len(r[h]) >= 2]
        if not lines:
            chains.append(None)
            continue
        width = max(len(r) for r in lines)
        pitch, duration, delta = (np.zeros((len(lines), width)) for _ in range(3))
        mask = np.zeros((len(lines), width), dtype=bool)
        for i, r in enumerate(lines):
            k = len(r)
            pitch[i, :k], duration[i, :k] = r.pitch, r.duration
            delta[i, :k], mask[i, :k] = np.diff(r.onset, prepend=r.onset[0]), True
        chains.append(MarkovChain.fit(pitch, duration, delta, mask=mask))
    return chains


def markov_voice(chain: MarkovChain, start: float, until: float, rng: np.random.Generator,
                 block: int = 256) -> RowNotes:
    """A line drawn from `chain`, its first note at beat `start`, with every note up to `until`."""
    line, onset = NO_NOTES, start
    while onset <= until:  # a block of notes at a time, until the line reaches the end
        pitch, duration, delta = chain.sample(1, block, rng)
        onsets = onset + np.cumsum(delta[0]) - delta[0, 0]
        line = line.then(RowNotes.of(pitch[0], onsets, duration[0]))
        onset = float(onsets[-1]) + max(float(delta[0].mean()), QUANTUM)
    return line.where(line.onset <= until)


def _piece(row: RowNotes | None) -> Piece:
    """One voice as a metrics Piece starting at beat 0 (an absent voice: no notes)."""
    r = NO_NOTES if row is None else row
    return from_zero(Piece.from_notes(r.pitch, r.onset, r.duration))


def evaluate_harmony(model: Any, diffusion: Any, sampler: Any, encoding: Any, stats: dict[str, Any],
                     prepared_dir: str | Path, root: str | Path, keep: Sequence[str] | None = None,
                     limit: int | None = None, seed: int = 0, batch_size: int = 16,
                     device: str = "cpu", frame_beats: float = 16.0, hop_beats: float = 8.0,
                     n_reference: int = 64, grid: int | None = None,
                     progress: bool | None = None, grid_model: Any = None,
                     n_unconditional: int = 16, resample: int = 1, repair: int = REPAIR_ROUNDS
                     ) -> HarmonyReport:
    """Harmonize every test file's kept parts with the model and with Markov voices; measure all three.
    `grid` (ticks) puts the generated voices on a rhythm grid, as `dmc generate --quantize` does.
    `grid_model` (a `pipeline.compose.grid_model.GridModel`) harmonizes instead of the note-layout model.
    `n_unconditional` pieces composed from scratch (one window each) give `unconditional.*`. `resample`:
    RePaint's repeats per step for a grid model (`pipeline.compose.grid_model.denoise`); `repair`: its
    rounds of writing parallel fifths and octaves again (`pipeline.compose.repair`)."""
    from pipeline.compose import harmonize
    groups = list(stats["instruments"])
    if len(groups) < 2:
        raise DmcError(f"evaluate-harmony: the model has one row ({groups[0]}); it needs several instrument "
                       "rows, e.g. a model trained with dataset=bach-satb and instruments=[soprano, alto, "
                       "tenor, bass]")
    keep = list(keep or groups[:1])
    check_keep(groups, keep)
    kept_index = [groups.index(k) for k in keep]
    root = Path(root)
    files, real = [], []
    for name in split_files(prepared_dir, "test")[:limit]:
        rows = read_rows(root / name, groups, "evaluate-harmony")
        if all(rows[h] is not None and len(rows[h]) for h in kept_index):
            files.append(name)
            real.append(rows)
    if len(files) < 2:
        raise DmcError(f"evaluate-harmony: {len(files)} test file(s) with the kept parts "
                       f"({', '.join(keep)}); 2 or more are needed")
    givens = [Given({h: rows[h] for h in kept_index}) for rows in real]
    if grid_model is not None:
        model_rows, scratch = [], []
        for first in range(0, len(givens), batch_size):
            model_rows += harmonize.harmonize([g.kept for g in givens[first:first + batch_size]], grid_model,
                                              seed + first, resample=resample, repair=repair)
        if n_unconditional:
            scratch = harmonize.compose(n_unconditional, grid_model.width, grid_model, seed, repair=repair)
    else:
        model_rows = [p for batch in generate_rows(model, diffusion, sampler, encoding, len(givens),
                                                   len(groups), int(stats["seq_len"]), None, givens,
                                                   batch_size, seed, device, progress=progress)
                      for p in batch]
        scratch = [p for batch in generate_rows(model, diffusion, sampler, encoding, n_unconditional,
                                                len(groups), int(stats["seq_len"]), int(stats["seq_len"]),
                                                None, batch_size, seed, device, progress=progress)
                   for p in batch] if n_unconditional else []
    if grid and grid_model is None:
        model_rows = [[r if h in kept_index else on_grid(r, grid) for h, r in enumerate(rows)]
                      for rows in model_rows]
    train = [read_rows(root / name, groups, "evaluate-harmony")
             for name in split_files(prepared_dir, "train")]
    chains = voice_chains(train, len(groups))
    rng = np.random.default_rng(seed)
    markov_rows = []
    for given in givens:
        rows = []
        for h in range(len(groups)):
            if h in given.kept or chains[h] is None:
                rows.append(given.kept.get(h, NO_NOTES))
            else:
                rows.append(markov_voice(chains[h], given.origin, given.kept_until, rng))
        markov_rows.append(rows)
    reference_rows = [train[i] for i in np.sort(rng.choice(len(train), min(n_reference, len(train)),
                                                           replace=False))]
    metrics: dict[str, float] = {"files": len(files)}
    if scratch:  # all voices composed: how consonant the model is on its own
        scores = [voice_leading([r for r in rows if len(r)]) for rows in scratch]
        metrics["unconditional.pieces"] = len(scratch)
        for column in PIECE_COLUMNS:
            metrics[f"unconditional.{column}"] = float(np.nanmean([s[column] for s in scores]))
    sets = {"model": model_rows, "markov": markov_rows, "bach": real}
    for name, pieces in sets.items():
        scores = [voice_leading([r for r in rows if r is not None]) for rows in pieces]
        for column in PIECE_COLUMNS:
            values = np.array([s[column] for s in scores], dtype=float)
            metrics[f"{name}.{column}"] = float(np.nanmean(values))
    for h, voice in enumerate(groups):
        if h in kept_index:
            continue
        ref = [_piece(rows[h]) for rows in real if rows[h] is not None]
        voice_sets = {"model": [_piece(r[h]) for r in model_rows],
                      "markov": [_piece(r[h]) for r in markov_rows],
                      "bach": [_piece(r[h]) for r in reference_rows if r[h] is not None]}
        flat = flat_metrics(evaluate_sets(voice_sets, ref, frame_beats=frame_beats,
                                          hop_beats=hop_beats))
        for name in SETS:
            for column in VOICE_COLUMNS:
                if f"{name}.{column}" in flat:
                    metrics[f"{name}.{voice}.{column}"] = flat[f"{name}.{column}"]
    return HarmonyReport(metrics, files, keep, model_rows)


def harmonize_checkout(checkpoint: str | Path | None, opts: Any, prepared_dir: str | Path,
                       manifest: str | Path, keep: Sequence[str] | None = None, limit: int | None = None,
                       out: str | Path | None = None, samples_dir: str | Path | None = None,
                       frame_beats: float = 16.0, hop_beats: float = 8.0,
                       log: Any = print, resample: int = 1) -> tuple[HarmonyReport, list[str]]:
    """`dmc evaluate-harmony`: load the model, harmonize the test files, write the metrics to `out` (JSON)
    and, with `samples_dir`, each harmonization as MIDI and a piano roll named after its test file.
    Returns the report and the model's instrument groups."""
    from pipeline.compose.generate import LoadedModel, load_sampler
    from pipeline.compose.grid_model import load_grid_model
    from pipeline.compose.harmonize import grid_model_path
    from pipeline.compose.options import grid_ticks
    from pipeline.compose.sampler import Sampler
    from pipeline.compose.write import programs_for, row_tracks
    from pipeline.data import midi
    from pipeline.data.datasets import read_manifest
    from pipeline.files import atomic_path, write_json
    from pipeline.render.plots import write_piano_roll

    _, root, _ = read_manifest(Path(manifest))
    if not root.is_absolute():  # the download stage writes it relative to the project: above data/
        root = Path(manifest).resolve().parent.parent / root
    grid_path = grid_model_path(checkpoint)
    grid_model = None
    if grid_path is not None:
        sampler = Sampler(opts.sampler_for(grid=True), opts.steps, opts.eta, opts.guard)
        grid_model = load_grid_model(grid_path, sampler, opts.device or "cpu")
        loaded = LoadedModel(grid_model.model, grid_model.stats, None, grid_model.diffusion,
                             grid_model.sampler, grid_model.device)
    else:
        loaded = load_sampler(checkpoint, opts, log)
    groups = list(loaded.stats["instruments"])
    report = evaluate_harmony(loaded.model, loaded.diffusion, loaded.sampler, loaded.encoding, loaded.stats,
                              prepared_dir, root, keep, limit, opts.seed, opts.batch_size, loaded.device,
                              frame_beats, hop_beats, grid=grid_ticks(opts.quantize, loaded.stats),
                              progress=opts.progress, grid_model=grid_model, resample=resample,
                              repair=opts.repair)
    if out is not None:
        write_json(out, {"kept": report.kept, "sampler": loaded.sampler.name, "quantize": opts.quantize,
                         "resample": resample, "repair": opts.repair,
                         "steps": loaded.sampler.n_steps(loaded.diffusion.timesteps), **report.metrics})
    if samples_dir is not None:
        kept = [groups.index(k) for k in report.kept]
        pieces = row_tracks(report.generated, kept, None, programs_for(loaded.stats, len(groups)))
        with atomic_path(samples_dir) as tmp:
            tmp.mkdir(parents=True)
            for name, tracks in zip(report.files, pieces, strict=True):
                stem = Path(name).stem
                midi.write_midi(tmp / f"{stem}.mid", tracks, tempo=opts.tempo)
                write_piano_roll(tmp / f"{stem}.png", tracks, title=f"{stem}: {', '.join(report.kept)} kept")
    return report, groups
