"""Materialize scores from the music21 corpus as one-track piano MIDI files (all voices merged).

Shared by the embedded datasets (`bach`, `renaissance`, and `bach-satb`, which passes its own converter to
keep the voices apart): no network, only the music21 wheel.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.errors import DmcError, ignore_interrupts

# Suffixes of music the corpus holds; `.rntxt` (roman-numeral analyses) is not music.
_SCORE_SUFFIXES = (".mxl", ".xml", ".musicxml", ".krn", ".abc")


def corpus_scores(composer: str) -> list[Path]:
    """The corpus files of one composer, one per piece: where a piece has several encodings the
    MusicXML one wins (e.g. bwv277.mxl over bwv277.krn)."""
    from music21 import corpus

    by_stem: dict[str, Path] = {}
    for path in sorted(corpus.getComposer(composer), key=lambda p: (p.stem, _SCORE_SUFFIXES.index(p.suffix)
                                                                    if p.suffix in _SCORE_SUFFIXES else 99)):
        if path.suffix in _SCORE_SUFFIXES:
            by_stem.setdefault(path.stem, path)
    return [by_stem[stem] for stem in sorted(by_stem)]


def score_to_midi(source: Path, dest: Path) -> bool:
    """Write one score as a program-0 MIDI file at `dest`; False when the score holds no notes."""
    from music21 import converter

    from pipeline.data.midi import TrackNotes, write_midi

    pitch, onset, duration = stream_notes(converter.parse(source).stripTies())
    if not pitch:
        return False
    write_midi(dest, [TrackNotes(pitch=pitch, onset=onset, duration=duration, program=0, name=source.stem)])
    return True


def stream_notes(stream: Any) -> tuple[list[int], list[float], list[float]]:
    """(pitch, onset, duration) in beats of every note of a music21 stream; chords give each pitch."""
    pitch, onset, duration = [], [], []
    for element in stream.flatten().notes:  # flatten() makes offsets absolute
        length = float(element.duration.quarterLength)
        if length <= 0:  # grace notes take no time
            continue
        for p in element.pitches:
            pitch.append(p.midi)
            onset.append(float(element.offset))
            duration.append(length)
    return pitch, onset, duration


def _materialize_one(job: tuple[Path, Path, Callable[[Path, Path], bool]]) -> tuple[str, str | None]:
    source, dest, convert = job
    try:
        return source.name, None if convert(source, dest) else "no notes"
    except Exception as err:  # one unparseable score must not stop the others; it is reported
        return source.name, f"{type(err).__name__}: {err}"


def resolve_jobs(n_jobs: int) -> int:
    """`n_jobs` param -> worker count: 0 means every core."""
    return n_jobs if n_jobs > 0 else (os.cpu_count() or 1)


def materialize(sources: Iterable[Path], dest: Path, n_jobs: int = 0, limit: int | None = None,
                desc: str = "materialize", convert: Callable[[Path, Path], bool] = score_to_midi) -> Path:
    """Write each source score as `dest/<stem>.mid` with `convert(source, dest)` (default: one merged
    track), skipping files already there; return `dest`.

    `limit` takes only the first scores (tests). Runs over `n_jobs` processes with a progress bar.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    sources = list(sources)[:limit]
    todo = [(s, dest / f"{s.stem}.mid", convert) for s in sources if not (dest / f"{s.stem}.mid").is_file()]
    failures: list[str] = []
    jobs = min(resolve_jobs(n_jobs), max(len(todo), 1))
    with tqdm(total=len(todo), desc=desc, unit="score", disable=None) as bar:
        if jobs == 1:
            results: Iterable = map(_materialize_one, todo)
            for name, problem in results:
                bar.update()
                if problem:
                    failures.append(f"{name} ({problem})")
        else:
            with mp.get_context("spawn").Pool(jobs, initializer=ignore_interrupts) as pool:
                for name, problem in pool.imap_unordered(_materialize_one, todo, chunksize=4):
                    bar.update()
                    if problem:
                        failures.append(f"{name} ({problem})")
    if failures:
        print(f"{desc}: skipped {len(failures)} of {len(sources)} scores: {', '.join(failures[:5])}")
    if not any(dest.glob("*.mid")):
        raise DmcError(f"{desc}: no score could be written under {dest}")
    return dest
