"""`bach-satb`: the Bach chorales as four-voice MIDI, one named track per part (Soprano, Alto, Tenor, Bass).

The multi-instrument mode's embedded data: with `instruments: [soprano, alto, tenor, bass]` each voice
is one model row (see `pipeline.data.instruments`, which finds voices by track name). Every part becomes a
program-0 track named after the part, so a few chorales also bring instrument parts (Trumpet 1, Oboe,
Continuo...) that the voice groups leave out. The default `bach` dataset (all voices merged) is
unchanged. Source and licence as `bach`: music21's corpus, BSD-3-Clause encodings, public-domain music.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.data.datasets import Dataset
from pipeline.data.datasets.corpus import corpus_scores, materialize, stream_notes


def score_to_voice_midi(source: Path, dest: Path) -> bool:
    """Write one score as a MIDI file with a track per part, named after it; False when it has no notes."""
    from music21 import converter

    from pipeline.data.midi import TrackNotes, write_midi

    score = converter.parse(source).stripTies()
    tracks = []
    for number, part in enumerate(score.parts, 1):
        pitch, onset, duration = stream_notes(part)
        if pitch:
            tracks.append(TrackNotes(pitch=pitch, onset=onset, duration=duration, program=0,
                                     name=(part.partName or f"Part {number}").strip()))
    if not tracks:
        return False
    write_midi(dest, tracks)
    return True


def fetch(dest: Path, params: dict[str, Any], limit: int | None = None) -> Path:
    """Materialize the chorales under `dest` (idempotent); `limit` takes only the first few (tests)."""
    return materialize(corpus_scores("bach"), dest, params["prepare"]["n_jobs"], limit, desc="bach-satb",
                       convert=score_to_voice_midi)


DATASET = Dataset(
    name="bach-satb",
    source="music21 corpus (bach): Bach chorales, one program-0 track per voice, named after it",
    licence="BSD-3-Clause encodings (music21); public-domain music",
    size="~410 files, ~1 MB",
    fetch=fetch,
    embedded=True,
)
