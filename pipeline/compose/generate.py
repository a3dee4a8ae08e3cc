"""From a trained model to a folder of MIDI files: `dmc generate` and the sample stage.

One path for any number of rows (`pipeline.compose.rows`): the model's instrument groups are its rows, a
prompt gives the start of every row or the parts to keep, and the pieces grow window by window. A model
of the grid layout (`pipeline.data.voices`) composes in `pipeline.compose.harmonize` instead.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.compose.options import GenerateOptions, check_options, grid_ticks
from pipeline.compose.prompts import given_of
from pipeline.compose.rows import check_length, generate_rows
from pipeline.compose.sampler import Denoiser, Sampler
from pipeline.compose.write import Track, pieces_into, programs_for, row_tracks, write_piece
from pipeline.data.keys import draw_shift, fitting, key_shift
from pipeline.errors import DmcError


@dataclass
class LoadedModel:
    """A trained model ready to sample: the network, its data's stats and encoding, its diffusion process
    with the chosen sampler's guard, on `device`."""

    model: Denoiser
    stats: dict[str, Any]
    encoding: Any
    diffusion: Any
    sampler: Sampler
    device: torch.device


def load_sampler(checkpoint: str | Path | None, opts: GenerateOptions,
                 log: Callable[[str], None] = print) -> LoadedModel:
    """Load `checkpoint` (a path, a shipped model's name, or None for the checkout's model falling back to
    the shipped default, `pipeline.compose.shipped.resolve_model`) for sampling with `opts`' sampler."""
    from pipeline.compose.shipped import resolve_model
    from pipeline.data.encoding import Encoding
    from pipeline.model.unet import default_device, load_trained

    sampler = Sampler(opts.sampler_for(grid=False), opts.steps, opts.eta, opts.guard)
    chosen = resolve_model(checkpoint)
    if chosen.notice:
        log(chosen.notice)
    device = device_of(opts.device) if opts.device else default_device()
    model, stats, diffusion_kwargs = load_trained(chosen.path, device)
    encoding = Encoding.from_stats(stats)
    return LoadedModel(model, stats, encoding, sampler.diffusion(diffusion_kwargs, encoding, device), sampler,
                       device)


def device_of(name: str) -> torch.device:
    """The torch device `--device` names; a one-line error where it is unknown or absent."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DmcError(f"--device: unknown device {name!r}; use cpu, cuda or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DmcError("--device cuda: no CUDA GPU is available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DmcError("--device mps: Apple's MPS is not available here")
    return device


def generate_files(out_dir: str | Path, opts: GenerateOptions, checkpoint: str | Path | None = None,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Sample `opts.n` pieces with a model and write sample_000.mid, ... into `out_dir`.

    `checkpoint`: a path, a shipped model's name, or None for the checkout's model falling back to the
    shipped default (`pipeline.compose.shipped.resolve_model`).

    All or nothing (`pipeline.compose.write.pieces_into`): the pieces are written into a temp folder
    inside `out_dir`, then replace its earlier pieces in one step; an error or Ctrl-C leaves `out_dir` as
    it was, and a second writer into the same folder is refused. Returns a summary (files, seconds,
    notices).
    """
    from pipeline.compose.harmonize import generate_grid_files, grid_model_path

    check_options(opts)
    grid_model = grid_model_path(checkpoint)  # a model of the grid layout (pipeline.data.voices)
    if grid_model is not None:
        return generate_grid_files(out_dir, opts, grid_model, log)
    loaded = load_sampler(checkpoint, opts, log)
    model, stats, encoding, diffusion, sampler, device = (loaded.model, loaded.stats, loaded.encoding,
                                                          loaded.diffusion, loaded.sampler, loaded.device)
    grid = grid_ticks(opts.quantize, stats)
    seq_len = int(stats["seq_len"])
    groups = list(stats.get("instruments") or ["piano"])
    tracks_of = programs_for(stats, len(groups))
    common = stats.get("key") == "common"  # the model composes in one key (`pipeline.data.keys`)
    given = given_of(opts, groups, seq_len, opts.length)
    prompt_move = 0  # semitones the given notes were moved into the common key
    if common and not given.empty:
        given_pitch = np.concatenate([r.pitch for r in (*given.kept.values(), *(given.prompt or []))])
        prompt_move = key_shift(given_pitch) if len(given_pitch) else 0
        given = given.moved(prompt_move)
    # Harmonizing, a piece is as long as its kept parts by default; otherwise, one window.
    length = opts.length or max((len(r) for r in given.kept.values()), default=seq_len)
    check_length(given, length, groups)
    batches = (row_tracks(pieces, given.kept, grid, tracks_of) for pieces in generate_rows(
        model, diffusion, sampler, encoding, opts.n, len(groups), seq_len, length, given, opts.batch_size,
        opts.seed, device, chord_snap=opts.chord_snap, progress=opts.progress))
    if common:
        batches = _out_of_common_key(batches, stats, encoding.pitch_range, opts.seed,
                                     None if opts.prompt is None else -prompt_move)
    notices = [n for n in (sampler.steps_notice(diffusion.timesteps),) if n]
    for notice in notices:
        log(notice)
    if opts.audio:
        from pipeline.render.audio import missing_tools

        notice = missing_tools(opts.audio)
        if notice:
            notices.append(notice)
            log(notice)
    names: list[str] = []
    with pieces_into(out_dir, log) as staging:
        start = time.perf_counter()
        sampling = 0.0
        index = 0
        # One batch at a time, written before the next is drawn: memory stays bounded for any --n.
        batch_start = time.perf_counter()
        for tracks in batches:
            sampling += time.perf_counter() - batch_start
            for piece in tracks:
                names += write_piece(staging, f"sample_{index:03d}", piece, opts, notices, log)
                index += 1
            batch_start = time.perf_counter()
        seconds = time.perf_counter() - start
    return {"files": names, "seconds": sampling, "total_seconds": seconds, "pieces": opts.n,
            "pieces_per_s": opts.n / sampling if sampling > 0 else math.inf, "notes_per_piece": length,
            "sampler": sampler.name, "steps": sampler.n_steps(diffusion.timesteps), "notices": notices}


def _out_of_common_key(batches: Iterator[list[Track]], stats: dict[str, Any], pitch_range: tuple[int, int],
                       seed: int, move: int | None) -> Iterator[list[Track]]:
    """Pieces composed in the common key, each moved to a key of the data: back by `move` where the notes
    were given (a prompt, kept parts), else by `pipeline.data.keys.draw_shift`, an octave the other way where
    that keeps the piece inside the train split's range."""
    rng = np.random.default_rng([seed, 12])
    low, high = pitch_range
    for tracks in batches:
        moved = []
        for piece in tracks:
            shift = move
            if shift is None:
                pitch = np.concatenate([t.pitch for t in piece] or [np.zeros(0, dtype=np.int64)])
                drawn = draw_shift(stats, rng)
                shift = (fitting(drawn, low, high, int(pitch.min()), int(pitch.max())) or 0) if len(pitch) \
                    else drawn
            moved.append([dataclasses.replace(t, pitch=np.asarray(t.pitch) + shift) for t in piece])
        yield moved
