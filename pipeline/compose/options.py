"""What `dmc generate` and the sample stage decide besides the model, checked before anything is loaded."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from pipeline.compose.decode import TICKS_PER_QUARTER
from pipeline.errors import DmcError

AUTO = "auto"  # quantize: snap to the grid the training data lies on
REPAIR_ROUNDS = 3  # `pipeline.compose.repair`: rounds of writing parallel fifths and octaves again
# The sampler where none is chosen. A note-layout model samples with DDPM's 1000 steps: on the default's
# three trained seeds it scored OA 0.771 against 0.717 for DDIM-20 (benchmarks/README.md); a few-step DDIM
# ends on the network's blend of the durations it hesitates between. The grid models keep DDIM, which
# their windows and repair rounds run many times over.
NOTE_SAMPLER, GRID_SAMPLER = "ddpm", "ddim"


@dataclass
class GenerateOptions:
    """Everything `dmc generate` and the sample stage decide besides the model."""

    n: int = 8
    sampler: str | None = None  # None: the model layout's (NOTE_SAMPLER, GRID_SAMPLER)
    steps: int = 20  # for the samplers other than ddpm, which runs all of the model's timesteps
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
    repair: int = REPAIR_ROUNDS  # grid-layout models: rounds of the voice-leading repair (0: none)
    device: str | None = None
    progress: bool | None = None

    def sampler_for(self, grid: bool) -> str:
        """The chosen sampler, or where none was chosen the one for a model of the grid layout or not."""
        return self.sampler or (GRID_SAMPLER if grid else NOTE_SAMPLER)

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
    from pipeline.compose.sampler import Sampler
    from pipeline.render.audio import FORMATS

    if opts.n <= 0:
        raise DmcError(f"--n must be positive, got {opts.n}")
    if opts.length is not None and opts.length <= 0:
        raise DmcError(f"--length must be positive, got {opts.length}")
    if opts.batch_size <= 0:
        raise DmcError(f"--batch-size must be positive, got {opts.batch_size}")
    if opts.repair < 0:
        raise DmcError(f"--repair must be 0 or more, got {opts.repair}")
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
    Sampler(opts.sampler_for(grid=False), opts.steps, opts.eta, opts.guard)
    if opts.quantize != AUTO:
        parse_quantize(opts.quantize)


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


def grid_ticks(quantize: str, stats: dict[str, Any]) -> int | None:
    """The grid in ticks that `quantize` asks for; `auto` is the training data's own grid (stats.json
    `grid`, in beats; None when the data has none)."""
    if quantize != AUTO:
        return parse_quantize(quantize)
    beats = stats.get("grid")
    return None if not beats else max(1, round(beats * TICKS_PER_QUARTER))
