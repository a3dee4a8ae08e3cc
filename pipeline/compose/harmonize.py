"""Harmonize a melody (and compose from scratch) with a grid-layout model (`pipeline.data.voices`).

The kept voices (the melody: a soprano, or the one track of any tune) are laid on the model's grid and
held fixed while the model denoises the other rows around them: the kept cells are re-noised to the
current level before every step (`GaussianDiffusion.denoise_steps`), as Coconet keeps the soprano and
resamples the rest, and a model trained for inpainting (`diffusion.inpainting`) also reads them clean,
with their mask, at every step. Before that the melody is moved by the smallest shift in
semitones that puts every kept voice inside its train range, and the harmonization is moved back after,
so any key fits; the kept notes are written back as they came, never read from the model.

Long melodies go window by window: each window of seq_len steps starts `hop` steps after the previous
one and re-reads what the previous ones wrote (every voice) as known cells, so the voices run on across
seams. Steps after the melody ends are known rests, as the end of a piece is in the training windows.
Then the voice-leading repair (`pipeline.compose.repair`) writes again the notes of parallel fifths and
octaves. The model and its window denoising live in `pipeline.compose.grid_model`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.compose.grid_model import GridModel, denoise, is_grid, load_grid_model
from pipeline.compose.options import REPAIR_ROUNDS
from pipeline.compose.repair import repair as repair_parallels
from pipeline.data import voices
from pipeline.data.rows import RowNotes
from pipeline.errors import DmcError

BEAT = 1.0  # a piece's grid starts on a beat, so step j has the metric place it had in training


# -- fitting the melody to the model ----------------------------------------------------------------------


def fitting_shift(kept: Mapping[int, RowNotes], pitches: voices.PitchRange, groups: Sequence[str]) -> int:
    """The smallest shift in semitones (ties: upward) that puts every kept voice inside its row's range;
    DmcError when the melody is empty or no shift fits."""
    if not kept or all(not len(r) for r in kept.values()):
        raise DmcError("the melody has no notes")
    lows, highs = [], []
    for h, row in kept.items():
        lo, hi = pitches.rows[h]
        if int(row.pitch.max()) - int(row.pitch.min()) > hi - lo:
            raise DmcError(f"the melody spans {int(row.pitch.max()) - int(row.pitch.min())} semitones, more "
                           f"than the model's {groups[h]} ({hi - lo} semitones, MIDI {lo}-{hi}) in any key")
        lows.append(lo - int(row.pitch.min()))
        highs.append(hi - int(row.pitch.max()))
    low, high = max(lows), min(highs)
    if low > high:
        raise DmcError("the kept voices do not fit the model's ranges together in any key")
    return min(range(low, high + 1), key=lambda k: (abs(k), -k))


@dataclass
class Job:
    """One piece to write: kept rows on the grid (fixed cells), how far it was moved, where it starts."""

    kept: dict[int, RowNotes]
    grid: voices.VoiceGrid  # [H, length] with the kept rows filled in
    fixed: np.ndarray  # [H, length] bool: cells given (kept rows, rests after the end)
    shift: int
    origin: float


def plan(kept: Mapping[int, RowNotes], model: GridModel, steps: int | None = None) -> Job:
    """Lay the kept rows (moved into range) on the grid; a piece of `steps` steps from scratch if none."""
    rows = len(model.groups)
    if kept:
        shift = fitting_shift(kept, model.pitches, model.groups)
        origin = math.floor(min(float(r.onset.min()) for r in kept.values() if len(r)) / BEAT) * BEAT
        moved = [RowNotes.of(kept[h].pitch + shift, kept[h].onset, kept[h].duration) if h in kept else None
                 for h in range(rows)]
        grid = voices.rows_to_grid(moved, model.step, origin, snap=True)
        length = grid.shape[1]
    else:
        shift, origin, length = 0, 0.0, int(steps or model.width)
        grid = voices.rows_to_grid([None] * rows, model.step, 0.0, width=length)
    fixed = np.zeros((rows, length), dtype=bool)
    fixed[list(kept)] = True
    return Job(dict(kept), grid, fixed, shift, origin)


# -- denoising ------------------------------------------------------------------------------------------


def window_starts(length: int, width: int, hop: int) -> list[int]:
    """Where each window starts; the last one ends at or after `length`."""
    return list(range(0, max(length - width, 0) + hop, hop)) if length > width else [0]


def default_hop(width: int) -> int:
    """Each window re-reads the last quarter of the one before (4 beats of the chorales' 16): as consonant
    as re-reading half (0.631 against 0.630 on the test melodies) with 6 windows instead of 8 for 66 beats."""
    return width * 3 // 4


def fill(jobs: Sequence[Job], model: GridModel, hop: int | None = None, seed: int = 0, resample: int = 1,
         repair: int = REPAIR_ROUNDS) -> list[voices.VoiceGrid]:
    """Every job's grid with its free cells written by the model, window by window, all jobs batched; then
    `repair` rounds of writing again the notes of parallel fifths and octaves (`pipeline.compose.repair`)."""
    width = model.width
    hop = hop or default_hop(width)
    pitches = model.pitches
    generator = torch.Generator(device=model.device).manual_seed(seed)
    grids = [voices.VoiceGrid(j.grid.pitch.copy(), j.grid.state.copy()) for j in jobs]
    known = [j.fixed.copy() for j in jobs]  # fixed cells and cells an earlier window wrote
    plans = [window_starts(g.shape[1], width, hop) for g in grids]
    with torch.inference_mode():
        for w in range(max(len(p) for p in plans)):
            active = [i for i, p in enumerate(plans) if w < len(p)]
            x_known, mask = [], []
            for i in active:
                a = plans[i][w]
                x_known.append(voices.encode(grids[i].columns(a, a + width), pitches))
                m = np.ones((len(model.groups), width), dtype=bool)  # past the end: known rests
                inside = known[i][:, a:a + width]
                m[:, :inside.shape[1]] = inside
                mask.append(m)
            known_t = torch.as_tensor(np.stack(x_known), device=model.device)
            mask_t = torch.as_tensor(np.stack(mask)[:, None], device=model.device)
            out = denoise(model, known_t, mask_t, generator, resample).float().cpu().numpy()
            for j, i in enumerate(active):
                a = plans[i][w]
                new = voices.decode(out[j], pitches)
                g, k = grids[i], known[i]
                n = min(width, g.shape[1] - a)
                free = ~k[:, a:a + n]
                g.pitch[:, a:a + n] = np.where(free, new.pitch[:, :n], g.pitch[:, a:a + n])
                g.state[:, a:a + n] = np.where(free, new.state[:, :n], g.state[:, a:a + n])
                k[:, a:a + n] = True
    if repair:
        grids = repair_parallels(grids, [j.fixed for j in jobs], model, generator, repair)
    return grids


def finish(job: Job, grid: voices.VoiceGrid, model: GridModel) -> list[RowNotes]:
    """A filled grid -> every voice's notes in the melody's own key and time; kept voices as they came."""
    rows = voices.grid_to_rows(grid, model.step, job.origin)
    return [job.kept[h] if h in job.kept else RowNotes.of(r.pitch - job.shift, r.onset, r.duration)
            for h, r in enumerate(rows)]


def harmonize(kept_rows: Sequence[Mapping[int, RowNotes]], model: GridModel, seed: int = 0,
              hop: int | None = None, resample: int = 1, repair: int = REPAIR_ROUNDS) -> list[list[RowNotes]]:
    """Harmonize each piece's kept rows (row index -> notes): every row of every piece, kept ones exact."""
    jobs = [plan(k, model) for k in kept_rows]
    grids = fill(jobs, model, hop, seed, resample, repair)
    return [finish(j, g, model) for j, g in zip(jobs, grids, strict=True)]


def covering_length(steps: int, width: int, hop: int) -> int:
    """The fewest steps >= `steps` that windows of `width` every `hop` steps cover exactly."""
    return window_starts(steps, width, hop)[-1] + width


def compose(n: int, steps: int, model: GridModel, seed: int = 0, hop: int | None = None,
            repair: int = REPAIR_ROUNDS) -> list[list[RowNotes]]:
    """`n` pieces of `steps` grid steps from scratch.

    The last window is written whole and cut at `steps`: steps past a piece's end given as rests would tell
    the model the music stops there, and it writes a chorale's last bars (long closing notes) at whatever
    step the windows happen to end (framewise duration consistency of that half: 0.86 against 0.99)."""
    hop = hop or default_hop(model.width)
    jobs = [plan({}, model, covering_length(steps, model.width, hop)) for _ in range(n)]
    grids = [g.columns(0, steps) for g in fill(jobs, model, hop, seed, repair=repair)]
    return [finish(j, g, model) for j, g in zip(jobs, grids, strict=True)]


# -- from a melody file to a folder of files ------------------------------------------------------------


def grid_model_path(choice: str | Path | None, default: str | None = None) -> Path | None:
    """The checkpoint `choice` names (`pipeline.compose.shipped.resolve_model`; None: `default`, a shipped
    model, or else the checkout's), when it is of the grid layout; else None."""
    from pipeline.compose.shipped import resolve_model

    path = resolve_model(choice if choice is not None else default).path
    try:
        stats = torch.load(path, map_location="cpu", weights_only=True).get("stats", {})
    except Exception:  # not a checkpoint at all: the note layout's loader says so in its own words
        return None
    return path if isinstance(stats, dict) and is_grid(stats) else None


def melody_rows(path: str | Path, groups: Sequence[str], keep: Sequence[str]) -> dict[int, RowNotes]:
    """The kept rows of a prompt file (`pipeline.compose.prompts.kept_rows`: a one-track file is the
    melody)."""
    import symusic

    from pipeline.compose.prompts import kept_rows

    try:
        notes = sum(t.note_num() for t in symusic.Score(str(path)).tracks)
    except Exception:  # missing or not MIDI: kept_rows says which, in its own words
        notes = None
    if notes == 0:
        raise DmcError(f"{path}: the melody has no notes")
    rows = kept_rows(path, groups, keep)
    if all(not len(r) for r in rows.values()):
        raise DmcError(f"{path}: the melody has no notes")
    return rows


def write_pieces(out_dir: str | Path, stems: Sequence[str], pieces: Sequence[list[RowNotes]],
                 model: GridModel, opts: Any, log: Any = print) -> list[str]:
    """Write each piece as MIDI (and audio and a piano roll, as `opts` asks) into `out_dir`, all at once:
    files go to a temp folder inside it first, so an error leaves no partial file."""
    import shutil
    import tempfile

    from pipeline.compose.write import programs_for, row_tracks
    from pipeline.compose.write import write_piece as _write_piece

    notices: list[str] = []
    if opts.audio:
        from pipeline.render.audio import missing_tools

        notice = missing_tools(opts.audio)
        if notice:
            notices.append(notice)
            log(notice)
    rows = len(model.groups)
    tracks = row_tracks(list(pieces), range(rows), None, programs_for(model.stats, rows))
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".dmc-harmonize-", dir=out_dir))
    except OSError as err:
        raise DmcError(f"cannot write to output folder {out_dir}: {err.strerror or err}") from None
    names: list[str] = []
    ok = False
    try:
        for stem, piece in zip(stems, tracks, strict=True):
            names += _write_piece(staging, stem, piece, opts, notices, log)
        for name in names:
            (staging / name).replace(out_dir / name)
        ok = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not ok and not any(out_dir.iterdir()):
            out_dir.rmdir()
    return names


def harmonize_files(melody: str | Path, out_dir: str | Path, opts: Any, model_path: Path,
                    keep: Sequence[str] = ("soprano",), resample: int = 1, log: Any = print
                    ) -> dict[str, Any]:
    """`dmc harmonize`: `opts.n` harmonizations of `melody` by the grid model at `model_path`, written
    into `out_dir` as MELODY_000.mid, ... Returns a summary (files, seconds, consonance of each)."""
    import time

    from pipeline.compose.sampler import Sampler
    from pipeline.evaluate.voice_leading import voice_leading

    sampler = Sampler(opts.sampler_for(grid=True), opts.steps, opts.eta, opts.guard)
    model = load_grid_model(model_path, sampler, opts.device or "cpu")
    kept = melody_rows(melody, model.groups, keep)
    plan(kept, model)  # refuses a melody that does not fit before any denoising
    start = time.perf_counter()
    pieces = []
    for first in range(0, opts.n, opts.batch_size):
        pieces += harmonize([kept] * min(opts.batch_size, opts.n - first), model, opts.seed + first,
                            resample=resample, repair=opts.repair)
    seconds = time.perf_counter() - start
    stem = Path(melody).stem
    stems = [f"{stem}_{i:03d}" for i in range(opts.n)]
    names = write_pieces(out_dir, stems, pieces, model, opts, log)
    return {"files": names, "seconds": seconds, "melody_notes": sum(len(r) for r in kept.values()),
            "consonance": [voice_leading(p)["consonant_fraction"] for p in pieces],
            "steps": model.sampler.n_steps(model.diffusion.timesteps), "sampler": model.sampler.name}


def generate_grid_files(out_dir: str | Path, opts: Any, model_path: Path, log: Any = print) -> dict[str, Any]:
    """`dmc generate` with a grid model: harmonize `--prompt` around its `--keep` rows, or compose
    `--length` grid steps (default: one window) from scratch. Writes sample_000.mid, ..."""
    import time

    from pipeline.compose.prompts import check_keep
    from pipeline.compose.sampler import Sampler

    sampler = Sampler(opts.sampler_for(grid=True), opts.steps, opts.eta, opts.guard)
    model = load_grid_model(model_path, sampler, opts.device or "cpu")
    if opts.prompt is not None and not opts.keep:
        raise DmcError("--prompt with a grid-layout model needs --keep GROUPS (the parts to keep, e.g. "
                       "soprano); continuing a prompt is the note layout's")
    if opts.keep:
        check_keep(model.groups, opts.keep)
        kept = melody_rows(opts.prompt, model.groups, opts.keep)
        plan(kept, model)
    start = time.perf_counter()
    pieces = []
    for first in range(0, opts.n, opts.batch_size):
        b = min(opts.batch_size, opts.n - first)
        pieces += harmonize([kept] * b, model, opts.seed + first, repair=opts.repair) if opts.keep else \
            compose(b, opts.length or model.width, model, opts.seed + first, repair=opts.repair)
    seconds = time.perf_counter() - start
    names = write_pieces(out_dir, [f"sample_{i:03d}" for i in range(opts.n)], pieces, model, opts, log)
    steps = model.sampler.n_steps(model.diffusion.timesteps)
    return {"files": names, "seconds": seconds, "total_seconds": seconds, "pieces": opts.n,
            "pieces_per_s": opts.n / seconds if seconds > 0 else math.inf,
            "notes_per_piece": max(len(r) for p in pieces for r in p), "sampler": model.sampler.name,
            "steps": steps, "notices": []}
