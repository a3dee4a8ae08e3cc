"""Piano-roll pictures of generated pieces (matplotlib's Agg canvas: no display, no global pyplot state)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from pipeline.files import atomic_path


class _Track(Protocol):
    pitch: np.ndarray
    onset: np.ndarray
    duration: np.ndarray
    name: str


def write_piano_roll(path: str | Path, tracks: Sequence[_Track], title: str = "") -> Path:
    """Draw each note as a bar (x: beats, y: MIDI pitch), one colour per track, and save a PNG atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    lo, hi, end = 127, 0, 0.0
    for i, track in enumerate(tracks):
        pitch = np.asarray(track.pitch, dtype=float)
        if not len(pitch):
            continue
        x0 = np.asarray(track.onset, dtype=float)
        x1 = x0 + np.asarray(track.duration, dtype=float)
        # One polygon per note, drawn in a single collection: thousands of notes stay fast.
        boxes = np.stack([np.stack([x0, pitch - 0.4], 1), np.stack([x1, pitch - 0.4], 1),
                          np.stack([x1, pitch + 0.4], 1), np.stack([x0, pitch + 0.4], 1)], axis=1)
        ax.add_collection(PolyCollection(boxes, facecolors=f"C{i % 10}", edgecolors="none",
                                         label=track.name or f"track {i}"))
        lo, hi, end = min(lo, int(pitch.min())), max(hi, int(pitch.max())), max(end, float(x1.max()))
    if hi < lo:  # no notes at all: an empty but valid picture
        lo, hi = 60, 72
    ax.set_xlim(0, max(end, 1.0))
    ax.set_ylim(lo - 2, hi + 2)
    ax.set_xlabel("beats")
    ax.set_ylabel("MIDI pitch")
    if title:
        ax.set_title(title)
    if len(tracks) > 1:
        ax.legend(loc="upper right", fontsize="small")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
