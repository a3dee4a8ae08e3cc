"""From a trained model to MIDI files: sample, decode to notes, continue a prompt, grow long pieces.

One sample is a float array [3, H, W]: the encoded (frequency, duration, delta) of W notes on each of
H instrument rows, the layout `pipeline.segments` writes. Decoding inverts that layout:

    clip to the train split's bounds -> `pipeline.encoding` decodes -> pitch = round(69 + 12 log2(f / 440))
    -> deltas under `chord_snap` become 0 -> onset = running sum of delta -> ticks at TICKS_PER_QUARTER
    (optionally snapped to a grid: one given, or the data's own with `auto`) -> `pipeline.midi.write_midi`.

Several rows (multi-instrument mode, `pipeline.instruments`): every row's first delta counts from the
window's shared start, so all rows are shifted by the same amount (the smallest first delta) and stay
aligned. Training masks padding out of the loss, so the model writes a note at every position of every
row; in the data a window ends where its busiest row runs out of room, so decoding ends every row at the
earliest last onset of any row, and notes after it (positions that were padding in training) are not
written. Multi-row pieces of any length, and pieces around kept rows (harmonize a melody), are grown in
time-aligned windows by `pipeline.multirow`; `generate_files` sends every multi-row model there.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline import midi
from pipeline.diffusion import GUARDS, SAMPLERS
from pipeline.errors import DmcError
from pipeline.keys import draw_shift, fitting, key_shift
from pipeline.threads import follow_load

if TYPE_CHECKING:
    from pipeline.multirow import Given, RowNotes

TICKS_PER_QUARTER = 480
AUTO = "auto"  # quantize: snap to the grid the training data lies on
# Shortest note written when no grid is asked for: a 128th note. A decoded duration can round to 0 ticks.
MIN_DURATION_TICKS = TICKS_PER_QUARTER // 32
MODEL_PATH = Path("models/model.pt")

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# -- decoding: normalized features -> notes -----------------------------------------------------------


def parse_quantize(grid: str) -> int | None:
    """A rhythm grid such as "1/16" (a sixteenth note) -> its length in ticks; "" -> None (no grid)."""
    grid = grid.strip()
    if not grid:
        return None
    try:
        value = Fraction(grid)
    except (ValueError, ZeroDivisionError):
        raise DmcError(f"--quantize: expected a note value such as 1/16, got {grid!r}") from None
    ticks = value * 4 * TICKS_PER_QUARTER  # a whole note is four quarters
    if value <= 0 or ticks.denominator != 1:
        raise DmcError(f"--quantize: {grid} is not a whole number of ticks "
                       f"at {TICKS_PER_QUARTER} per quarter note")
    return int(ticks)


def frequency_to_pitch(frequency: np.ndarray) -> np.ndarray:
    """Nearest MIDI pitch in log-frequency (semitones), clipped to 0..127; non-positive Hz maps to 0."""
    f = np.asarray(frequency, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        semitones = 69.0 + 12.0 * np.log2(np.where(f > 0, f, np.nan) / 440.0)
    semitones = np.nan_to_num(np.rint(semitones), nan=0.0, posinf=127.0, neginf=0.0)
    return np.clip(semitones, 0, 127).astype(np.int16)


@dataclass
class DecodedTrack:
    """Notes of one instrument row, times in ticks at TICKS_PER_QUARTER, sorted by (onset, pitch)."""

    pitch: np.ndarray
    onset: np.ndarray
    duration: np.ndarray


def decode_row(frequency: np.ndarray, duration: np.ndarray, delta: np.ndarray,
               grid: int | None = None, start: float | None = None, chord_snap: float = 0.0) -> DecodedTrack:
    """Decoded features of one row -> notes in ticks.

    The first note starts at tick 0 (its delta is the gap to a note before the window); with `start`
    (beats), notes start at the running sum of delta minus `start` instead, which keeps several rows
    aligned. Onsets round the running sum, not each delta, so rounding errors do not accumulate over a
    long piece. Notes that land on the same pitch and tick keep only the first in sequence order (a
    prompt's note wins over a generated one), as the note contract has no duplicates. A delta below
    `chord_snap` beats is taken as 0: the model's near-miss at a chord, whose notes share one onset.
    """
    pitch = frequency_to_pitch(frequency)
    delta = np.maximum(np.asarray(delta, dtype=np.float64), 0.0)
    delta = np.where(delta < chord_snap, 0.0, delta)
    if start is not None:
        beats = np.cumsum(delta) - start
    else:
        beats = np.cumsum(delta) - delta[:1] if len(delta) else delta
    return to_ticks(pitch, beats, duration, grid)


def to_ticks(pitch: np.ndarray, beats: np.ndarray, duration: np.ndarray,
             grid: int | None = None) -> DecodedTrack:
    """Notes with onset and duration in beats -> a DecodedTrack in ticks, on `grid` when one is given."""
    pitch = np.asarray(pitch)
    onset = np.rint(np.asarray(beats, dtype=np.float64) * TICKS_PER_QUARTER).astype(np.int64)
    duration = np.maximum(np.asarray(duration, dtype=np.float64), 0.0)
    length = np.rint(duration * TICKS_PER_QUARTER).astype(np.int64)
    if grid:
        onset = np.rint(onset / grid).astype(np.int64) * grid
        length = np.maximum(np.rint(length / grid).astype(np.int64), 1) * grid
    else:
        length = np.maximum(length, MIN_DURATION_TICKS)
    order = np.lexsort((pitch, onset))  # stable: among equal (onset, pitch) the earlier note comes first
    pitch, onset, length = pitch[order], onset[order], length[order]
    first = np.ones(len(pitch), dtype=bool)
    first[1:] = (onset[1:] != onset[:-1]) | (pitch[1:] != pitch[:-1])
    return DecodedTrack(pitch[first], onset[first], length[first])


def decoded_features(x: np.ndarray, encoding: Any, keep: np.ndarray | None = None) -> np.ndarray:
    """One sample in the model's code [C, H, W] -> raw (frequency, duration, delta) [3, H, W], float64.

    Values are clipped to the encoding's bounds (the train split's range) first, except where `keep`
    (bool, same shape) marks given values such as a prompt, which are decoded exactly as they came. A
    lattice code decodes every value to its lattice (`Encoding.uncode`), where given values are exact.
    """
    if not encoding.scalar:
        return encoding.uncode(np.asarray(x)[None])[0]
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0)  # a diverged model must not crash decoding
    low, high = (b.reshape(3, 1, 1) for b in encoding.bounds)
    clipped = np.clip(x, low, high)
    if keep is not None:
        clipped = np.where(keep, x, clipped)
    return np.asarray(encoding.decode(clipped[None]), dtype=np.float64)[0]


def decode(x: np.ndarray, encoding: Any, grid: int | None = None,
           keep: np.ndarray | None = None, chord_snap: float = 0.0) -> list[DecodedTrack]:
    """One coded sample [C, H, W] -> one DecodedTrack per row (values decoded as `decoded_features`)."""
    features = decoded_features(x, encoding, keep)
    if features.shape[1] == 1:
        return [decode_row(features[0, 0], features[1, 0], features[2, 0], grid, chord_snap=chord_snap)]
    # Several rows: one shared origin, and every row ends where the first one does (module docstring).
    start = float(np.maximum(features[2, :, 0], 0.0).min()) if x.shape[2] else 0.0
    tracks = [decode_row(features[0, h], features[1, h], features[2, h], grid, start, chord_snap)
              for h in range(x.shape[1])]
    end = min((int(t.onset.max()) for t in tracks if len(t.onset)), default=0)
    return [DecodedTrack(t.pitch[t.onset <= end], t.onset[t.onset <= end], t.duration[t.onset <= end])
            for t in tracks]


def encode_notes(pitch: np.ndarray, duration: np.ndarray, delta: np.ndarray, encoding: Any) -> np.ndarray:
    """Notes of one row -> the model's code [C, W], the inverse of `decode` for in-range notes."""
    raw = np.stack([midi.frequency(pitch), np.asarray(duration, np.float64),
                    np.asarray(delta, np.float64)])
    return np.asarray(encoding.code(raw[None, :, None, :]), dtype=np.float32)[0, :, 0, :]


def read_prompt(path: str | Path, encoding: Any, n_notes: int,
                programs: Sequence[int] | None = None, move: int | None = 0) -> np.ndarray:
    """The first `n_notes` notes of a MIDI file, extracted as the prepare stage does, coded: [C, K].
    `move` transposes them (semitones); None moves them to the common key (`pipeline.keys`).

    Raises DmcError when the file is missing, not MIDI, or has no usable track.
    """
    path = Path(path)
    if not path.is_file():
        raise DmcError(f"--prompt: no such file {path}")
    try:
        notes = midi.extract_notes(path) if programs is None else midi.extract_notes(path, programs)
    except DmcError as err:  # RejectedFile: not MIDI, or no usable track
        raise DmcError(f"--prompt: {path}: {err}") from None
    k = min(n_notes, len(notes.pitch))
    if k == 0:
        raise DmcError(f"--prompt: {path} has no notes to continue")
    if move is None:
        move = key_shift(notes.pitch[:k])
    return encode_notes(notes.pitch[:k] + move, notes.duration[:k], notes.delta[:k], encoding)


# -- sampling -----------------------------------------------------------------------------------------




@dataclass
class Sampler:
    """How to run the reverse process: `ddpm` visits all T steps, the others (`ddim`, `dpm++`, `unipc`)
    visit `steps` of them. `guard` keeps the x_0 estimate in the data's range (`pipeline.diffusion.GUARDS`):
    `clip` (to the train split's bounds, per feature), `step_clip` (to ±1 inside the step), `dynamic`
    (Imagen's percentile thresholding) or `none`."""

    name: str = "ddim"
    steps: int = 50
    eta: float = 0.0
    guard: str = "step_clip"

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            raise DmcError(f"unknown sampler {self.name!r}; choose one of {', '.join(SAMPLERS)}")
        if self.steps <= 0:
            raise DmcError(f"--steps must be positive, got {self.steps}")
        if self.eta < 0:
            raise DmcError(f"--eta must be >= 0, got {self.eta}")
        if self.guard not in GUARDS:
            raise DmcError(f"--guard must be one of {', '.join(GUARDS)}, got {self.guard!r}")

    def n_steps(self, timesteps: int) -> int:
        return timesteps if self.name == "ddpm" else min(self.steps, timesteps)

    def steps_notice(self, timesteps: int) -> str | None:
        """A one-line notice when more steps are asked than the model has timesteps (all are run)."""
        if self.name != "ddpm" and self.steps > timesteps:
            return (f"notice: --steps {self.steps} exceeds the model's {timesteps} diffusion timesteps; "
                    f"running {timesteps}")
        return None

    def diffusion(self, config: dict[str, Any], encoding: Any, device: torch.device | str = "cpu") -> Any:
        """The model's diffusion process (its checkpoint's `config`), with this sampler's x_0 guard."""
        from pipeline.diffusion import GaussianDiffusion

        low, high = encoding.model_bounds
        # diffusers' thresholding: per sample s = the 99.5% quantile of |x_0|, kept within [1, cap]; x_0 is
        # clipped to ±s and divided by s. With the cap at 1 that is a clip to ±1 (`step_clip`); without a
        # cap it is Imagen's dynamic thresholding. Both suit encodings centred on 0 (symmetric, standard).
        guard = {"clip": {"clip_sample": (low.tolist(), high.tolist())},
                 "step_clip": {"dynamic_threshold": (0.995, 1.0)},
                 "dynamic": {"dynamic_threshold": (0.995, math.inf)}, "none": {}}[self.guard]
        codes = encoding.code_groups() if config.get("prediction") == "softmax" else None
        return GaussianDiffusion(**config, **guard, codes=codes).to(device)


def window_starts(length: int, seq_len: int, overlap: int) -> list[int]:
    """Where each window's new notes begin in a piece of `length` notes.

    The first window makes notes [0, seq_len); every later one re-reads the last `overlap` notes as its
    prompt and adds seq_len - overlap new ones, until `length` notes exist.
    """
    starts, made = [0], seq_len
    while made < length:
        starts.append(made)
        made += seq_len - overlap
    return starts


def check_prompt(k: int, seq_len: int, length: int) -> None:
    """A prompt must leave room in the first window and in the piece."""
    if k >= seq_len:
        raise DmcError(f"--prompt-notes must be below the model's {seq_len} notes per window, got {k}")
    if k >= length:
        raise DmcError(f"--length ({length}) must exceed the prompt's {k} notes")


def generate(model: Denoiser, diffusion: Any, n: int, rows: int, seq_len: int, length: int,
             sampler: Sampler, batch_size: int = 8, seed: int = 0, device: torch.device | str = "cpu",
             prompt: np.ndarray | None = None, overlap: int | None = None,
             progress: bool | None = None, channels: int = 3) -> np.ndarray:
    """Draw `n` pieces of `length` notes: float32 [n, channels, rows, length] in the model's code (not yet
    clipped or decoded).

    `prompt` [channels, K] (K < seq_len) is kept as the first K notes of row 0 by inpainting. Pieces longer
    than seq_len grow window by window, each window continuing the previous one's last `overlap` notes
    (default seq_len // 2). The same seed, arguments and device give the same numbers.
    """
    return np.concatenate(list(generate_batches(model, diffusion, n, rows, seq_len, length, sampler,
                                                batch_size, seed, device, prompt, overlap, progress,
                                                channels)))


def generate_batches(model: Denoiser, diffusion: Any, n: int, rows: int, seq_len: int, length: int,
                     sampler: Sampler, batch_size: int = 8, seed: int = 0, device: torch.device | str = "cpu",
                     prompt: np.ndarray | None = None, overlap: int | None = None,
                     progress: bool | None = None, channels: int = 3) -> Iterator[np.ndarray]:
    """`generate`, a batch at a time, so that a caller writing files holds one batch in memory."""
    if n <= 0:
        raise DmcError(f"--n must be positive, got {n}")
    if length <= 0:
        raise DmcError(f"--length must be positive, got {length}")
    if batch_size <= 0:
        raise DmcError(f"--batch-size must be positive, got {batch_size}")
    overlap = seq_len // 2 if overlap is None else overlap
    if not 0 < overlap < seq_len:
        raise ValueError(f"overlap must be in (0, {seq_len}), got {overlap}")
    k = 0 if prompt is None else prompt.shape[-1]
    check_prompt(k, seq_len, length)
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    starts = window_starts(length, seq_len, overlap)
    n_batches = math.ceil(n / batch_size)
    total = n_batches * len(starts) * sampler.n_steps(diffusion.timesteps)
    with torch.inference_mode(), tqdm(total=total, desc="denoising", unit="step", disable=None
                                      if progress is None else not progress) as bar:
        for first in range(0, n, batch_size):
            b = min(batch_size, n - first)
            known = torch.zeros(b, channels, rows, seq_len, device=device)
            mask = torch.zeros(1, 1, rows, seq_len, dtype=torch.bool, device=device)
            if prompt is not None:
                known[:, :, 0, :k] = torch.as_tensor(prompt, dtype=torch.float32, device=device)
                mask[..., 0, :k] = True
            piece = denoise_window(model, diffusion, sampler, known, mask if k else None, generator, bar)
            for _ in starts[1:]:
                known = torch.zeros_like(known)
                known[..., :overlap] = piece[..., -overlap:]
                mask = torch.zeros_like(mask)
                mask[..., :overlap] = True
                new = denoise_window(model, diffusion, sampler, known, mask, generator, bar)
                piece = torch.cat([piece, new[..., overlap:]], dim=-1)
            yield piece[..., :length].float().cpu().numpy()


def denoise_window(model: Denoiser, diffusion: Any, sampler: Sampler, known: torch.Tensor,
                   mask: torch.Tensor | None, generator: torch.Generator, bar: tqdm | None) -> torch.Tensor:
    """One window of samples, grown around `known` where `mask` is set (each piece may have its own)."""
    x = torch.randn(known.shape, device=known.device, generator=generator)
    steps = sampler.n_steps(diffusion.timesteps)
    for step in diffusion.denoise_steps(model, x, sampler.name, steps, sampler.eta, generator,
                                        known if mask is not None else None, mask):
        x = step
        follow_load()
        if bar is not None:
            bar.update()
    return x


# -- from a checkpoint to a folder of files ---------------------------------------------------------


def find_model(start: str | Path | None = None) -> Path:
    """models/model.pt of the project: under the nearest folder above `start` (default: the cwd) that
    holds dvc.yaml, else under the checkout this package lives in."""
    here = Path.cwd() if start is None else Path(start)
    for folder in (here.resolve(), *here.resolve().parents):
        if (folder / "dvc.yaml").is_file():
            return folder / MODEL_PATH
    return Path(__file__).resolve().parents[1] / MODEL_PATH


def programs_for(stats: dict[str, Any], rows: int) -> list[tuple[int, bool, str]]:
    """(GM program, is_drum, name) for each model row, from the training data's stats. Tracks are named
    after their instrument group, which is how `pipeline.instruments` finds them again."""
    names = list(stats.get("instruments") or ["piano"])[:rows]
    names += [f"row {h}" for h in range(len(names), rows)]
    # stats["row_programs"] (one GM program per row) is written by multi-instrument prepare; piano is 0.
    programs = stats.get("row_programs")
    if not (isinstance(programs, list) and len(programs) >= rows):
        programs = [0] * rows
    return [(int(programs[h]), names[h] == "drums", names[h]) for h in range(rows)]


@dataclass
class GenerateOptions:
    """Everything `dmc generate` and the sample stage decide besides the model."""

    n: int = 8
    sampler: str = "ddim"
    steps: int = 20  # DDIM-20 scored as well as DDPM-1000 on the default model (benchmarks/README.md)
    eta: float = 0.0
    length: int | None = None  # notes per piece; None means the model's seq_len
    batch_size: int = 8
    seed: int = 0
    tempo: float = 120.0
    quantize: str = ""  # "" (none), a note value such as 1/16, or "auto" (the training data's grid)
    guard: str = "step_clip"  # clip | step_clip | dynamic | none: what keeps x_0 estimates in range (Sampler)
    chord_snap: float = 0.0  # beats: shorter deltas become 0 (a chord)
    audio: str = ""  # "" | wav | ogg | mp3
    plot: bool = False
    prompt: Path | None = None
    prompt_notes: int = 32
    keep: tuple[str, ...] = ()  # instrument groups taken whole from `prompt` (multi-row models)
    device: str | None = None
    progress: bool | None = None

    @classmethod
    def from_params(cls, params: dict[str, Any], **overrides: Any) -> GenerateOptions:
        """The sample stage's options from params.yaml's `sample` section and `seed`."""
        p = params["sample"]
        opts = {"n": p["n"], "sampler": p["sampler"], "steps": p["steps"], "eta": p["eta"],
                "length": p["length"], "batch_size": min(p["n"], 64), "seed": params["seed"],
                "tempo": p["tempo"], "quantize": p["quantize"], "guard": p["guard"],
                "chord_snap": p["chord_snap"], "audio": p["audio"], "plot": p["plot"]}
        return cls(**{**opts, **overrides})


def check_options(opts: GenerateOptions) -> None:
    """Refuse bad options before any model is loaded or any file is touched."""
    from pipeline.audio import FORMATS

    if opts.n <= 0:
        raise DmcError(f"--n must be positive, got {opts.n}")
    if opts.length is not None and opts.length <= 0:
        raise DmcError(f"--length must be positive, got {opts.length}")
    if opts.batch_size <= 0:
        raise DmcError(f"--batch-size must be positive, got {opts.batch_size}")
    if opts.keep and opts.prompt is None:
        raise DmcError("--keep needs --prompt FILE.mid: the file the kept parts come from")
    if opts.prompt_notes <= 0:
        raise DmcError(f"--prompt-notes must be positive, got {opts.prompt_notes}")
    if not opts.tempo > 0:
        raise DmcError(f"--tempo must be positive, got {opts.tempo}")
    if opts.audio and opts.audio not in FORMATS:
        raise DmcError(f"--audio must be one of {', '.join(FORMATS)}, got {opts.audio!r}")
    if not opts.chord_snap >= 0:
        raise DmcError(f"--chord-snap must be >= 0 beats, got {opts.chord_snap}")
    Sampler(opts.sampler, opts.steps, opts.eta, opts.guard)
    if opts.quantize != AUTO:
        parse_quantize(opts.quantize)


def grid_ticks(quantize: str, stats: dict[str, Any]) -> int | None:
    """The grid in ticks that `quantize` asks for; `auto` is the training data's own grid (stats.json
    `grid`, in beats; None when the data has none)."""
    if quantize != AUTO:
        return parse_quantize(quantize)
    beats = stats.get("grid")
    return None if not beats else max(1, round(beats * TICKS_PER_QUARTER))


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
    the shipped default, `pipeline.pretrained.resolve_model`) for sampling with `opts`' sampler."""
    from pipeline.encoding import Encoding
    from pipeline.model import default_device, load_trained
    from pipeline.pretrained import resolve_model

    sampler = Sampler(opts.sampler, opts.steps, opts.eta, opts.guard)
    chosen = resolve_model(checkpoint)
    if chosen.notice:
        log(chosen.notice)
    device = _device(opts.device) if opts.device else default_device()
    model, stats, diffusion_kwargs = load_trained(chosen.path, device)
    encoding = Encoding.from_stats(stats)
    return LoadedModel(model, stats, encoding, sampler.diffusion(diffusion_kwargs, encoding, device), sampler,
                       device)


def generate_files(out_dir: str | Path, opts: GenerateOptions, checkpoint: str | Path | None = None,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Sample `opts.n` pieces with a model and write sample_000.mid, ... into `out_dir`.

    `checkpoint`: a path, a shipped model's name, or None for the checkout's model falling back to the
    shipped default (`pipeline.pretrained.resolve_model`).

    All or nothing (`pipeline.writing.pieces_into`): the pieces are written into a temp folder inside
    `out_dir`, then replace its earlier pieces in one step; an error or Ctrl-C leaves `out_dir` as it
    was, and a second writer into the same folder is refused. Returns a summary (files, seconds, notices).
    """
    from pipeline.multirow import check_keep, check_length, generate_rows
    from pipeline.writing import pieces_into

    check_options(opts)
    from pipeline.harmonize import generate_grid_files, grid_model_path

    grid_model = grid_model_path(checkpoint)  # a model of the grid layout (pipeline.voices) composes there
    if grid_model is not None:
        return generate_grid_files(out_dir, opts, grid_model, log)
    loaded = load_sampler(checkpoint, opts, log)
    model, stats, encoding, diffusion, sampler, device = (loaded.model, loaded.stats, loaded.encoding,
                                                          loaded.diffusion, loaded.sampler, loaded.device)
    grid = grid_ticks(opts.quantize, stats)
    seq_len = int(stats["seq_len"])
    groups = list(stats.get("instruments") or ["piano"])
    rows = len(groups)
    tracks_of = programs_for(stats, rows)
    common = stats.get("key") == "common"  # the model composes in one key (`pipeline.keys`)
    prompt_move = 0  # semitones the given notes were moved into the common key
    if rows > 1:
        given = _given(opts, groups)
        if common and not given.empty:
            given_pitch = np.concatenate([r.pitch for r in (*given.kept.values(), *(given.prompt or []))])
            prompt_move = key_shift(given_pitch) if len(given_pitch) else 0
            given = given.moved(prompt_move)
        # Harmonizing, a piece is as long as its kept parts by default; from scratch, one window.
        length = opts.length or max((len(r) for r in given.kept.values()), default=seq_len)
        check_length(given, length, groups)
        batches = (row_tracks(pieces, given.kept, grid, tracks_of) for pieces in generate_rows(
            model, diffusion, sampler, encoding, opts.n, rows, seq_len, length, given, opts.batch_size,
            opts.seed, device, chord_snap=opts.chord_snap, progress=opts.progress))
    else:
        if opts.keep:
            check_keep(groups, opts.keep)  # refuses: one row
        if common and opts.prompt is not None:
            prompt_move = key_shift(midi.extract_notes(opts.prompt).pitch[:opts.prompt_notes])
        prompt = None if opts.prompt is None else read_prompt(opts.prompt, encoding, opts.prompt_notes,
                                                              move=prompt_move)
        length = opts.length or seq_len
        k = 0 if prompt is None else prompt.shape[-1]
        check_prompt(k, seq_len, length)
        keep = None
        if prompt is not None:
            keep = np.zeros((encoding.channels, 1, length), dtype=bool)
            keep[:, 0, :k] = True
        arrays = generate_batches(model, diffusion, opts.n, rows, seq_len, length, sampler, opts.batch_size,
                                  opts.seed, device, prompt, progress=opts.progress,
                                  channels=encoding.channels)
        batches = (_array_tracks(x, encoding, grid, keep, opts.chord_snap, tracks_of) for x in arrays)
    if common:
        batches = _out_of_common_key(batches, stats, encoding.pitch_range, opts.seed,
                                     None if opts.prompt is None else -prompt_move)
    notices = [n for n in (sampler.steps_notice(diffusion.timesteps),) if n]
    for notice in notices:
        log(notice)
    if opts.audio:
        from pipeline.audio import missing_tools

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
                names += _write_piece(staging, f"sample_{index:03d}", piece, opts, notices, log)
                index += 1
            batch_start = time.perf_counter()
        seconds = time.perf_counter() - start
    return {"files": names, "seconds": sampling, "total_seconds": seconds, "pieces": opts.n,
            "pieces_per_s": opts.n / sampling if sampling > 0 else math.inf, "notes_per_piece": length,
            "sampler": sampler.name, "steps": sampler.n_steps(diffusion.timesteps), "notices": notices}


def _given(opts: GenerateOptions, groups: list[str]) -> Given:
    """What a multi-row piece starts from: the kept parts of the prompt, or its start to continue."""
    from pipeline.multirow import Given, kept_rows, prompt_rows

    if opts.keep:
        return Given(kept_rows(opts.prompt, groups, opts.keep))
    if opts.prompt is not None:
        rows, end = prompt_rows(opts.prompt, groups, opts.prompt_notes)
        return Given({}, rows, end)
    return Given({})


Track = list[midi.TrackNotes]


def _array_tracks(x: np.ndarray, encoding: Any, grid: int | None, keep: np.ndarray | None, chord_snap: float,
                  tracks_of: list[tuple[int, bool, str]]) -> list[Track]:
    """Single-row samples [B, C, 1, W] -> one list of tracks per piece."""
    beats = 1 / TICKS_PER_QUARTER
    return [[midi.TrackNotes(pitch=t.pitch, onset=t.onset * beats, duration=t.duration * beats,
                             program=program, is_drum=drum, name=name)
             for t, (program, drum, name) in zip(decode(sample, encoding, grid, keep, chord_snap), tracks_of,
                                                 strict=True)]
            for sample in x]


def _out_of_common_key(batches: Iterator[list[Track]], stats: dict[str, Any], pitch_range: tuple[int, int],
                       seed: int, move: int | None) -> Iterator[list[Track]]:
    """Pieces composed in the common key, each moved to a key of the data: back by `move` where the notes
    were given (a prompt, kept parts), else by `pipeline.keys.draw_shift`, an octave the other way where
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


def on_grid(row: RowNotes, grid: int | None) -> RowNotes:
    """A generated row as it is written: onsets and durations in whole ticks (on `grid`, if given), no note
    shorter than MIN_DURATION_TICKS, none twice on one pitch and tick (`to_ticks`)."""
    from pipeline.multirow import RowNotes

    t = to_ticks(row.pitch, row.onset, row.duration, grid)
    return RowNotes.of(t.pitch, t.onset / TICKS_PER_QUARTER, t.duration / TICKS_PER_QUARTER)


def row_tracks(pieces: list[list[RowNotes]], kept: Collection[int], grid: int | None,
               tracks_of: list[tuple[int, bool, str]]) -> list[Track]:
    """Multi-row pieces -> tracks. Kept rows are written as they came; generated ones `on_grid`."""
    out = []
    for rows in pieces:
        written = [row if h in kept else on_grid(row, grid) for h, row in enumerate(rows)]
        out.append([midi.TrackNotes(pitch=r.pitch, onset=r.onset, duration=r.duration, program=program,
                                    is_drum=drum, name=name)
                    for r, (program, drum, name) in zip(written, tracks_of, strict=True)])
    return out


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DmcError(f"--device: unknown device {name!r}; use cpu, cuda or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DmcError("--device cuda: no CUDA GPU is available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DmcError("--device mps: Apple's MPS is not available here")
    return device


def _write_piece(folder: Path, stem: str, tracks: Track, opts: GenerateOptions, notices: list[str],
                 log: Callable[[str], None]) -> list[str]:
    """Write one piece's MIDI (and audio, piano roll) into `folder`; returns the file names."""
    from pipeline import audio

    midi.write_midi(folder / f"{stem}.mid", tracks, tempo=opts.tempo, ticks_per_quarter=TICKS_PER_QUARTER)
    names = [f"{stem}.mid"]
    if opts.audio and audio.can_render():
        try:
            names.append(audio.render_audio_file(folder / f"{stem}.mid", folder / f"{stem}.{opts.audio}",
                                                 opts.audio).name)
        except RuntimeError as err:  # the MIDI is the product; a failed rendering is only noted
            notices.append(f"notice: no audio for {stem}: {err}")
            log(notices[-1])
    if opts.plot:
        from pipeline.plots import write_piano_roll

        names.append(write_piano_roll(folder / f"{stem}.png", tracks, title=stem).name)
    return names
