"""Harmonizing one melody with the shipped four-voice model: seconds, and consonance of tunes that are not
chorales.

Times `pipeline.compose.harmonize.harmonize` (what `dmc harmonize` runs between reading the file and writing
MIDI) on a chorale melody of about 50 notes, the best of `--repeat` runs, with and without the
voice-leading repair (`pipeline.compose.repair`), next to the time of the network's forward passes alone in
the same run (windows x denoising steps calls at batch 1), so a slow machine shows in all three. Then
harmonizes melodies written here, that are not chorales (a folk tune, a major scale, a minor tune in 6/8),
and prints the consonant fraction and parallels of each harmonization (`pipeline.evaluate.voice_leading`)
and whether the melody came back exact.

    python benchmarks/harmonize_bench.py --threads 2
    python benchmarks/harmonize_bench.py --model models/model.pt --melody data/raw/bach-satb/bwv11.6.mid
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def tunes() -> dict[str, tuple[list[int], list[float]]]:
    """Melodies that are not chorales: MIDI pitches and durations in beats."""
    # "Twinkle, twinkle, little star" (a French folk tune), in D major, crotchets and minims.
    twinkle = [62, 62, 69, 69, 71, 71, 69, 67, 67, 66, 66, 64, 64, 62,
               69, 69, 67, 67, 66, 66, 64, 69, 69, 67, 67, 66, 66, 64,
               62, 62, 69, 69, 71, 71, 69, 67, 67, 66, 66, 64, 64, 62]
    twinkle_beats = ([1.0] * 6 + [2.0] + [1.0] * 6 + [2.0]) * 3
    scale = [60, 62, 64, 65, 67, 69, 71, 72, 72, 71, 69, 67, 65, 64, 62, 60]
    scale_beats = [1.0] * 15 + [2.0]
    # A minor tune in 6/8 (eighths and dotted quarters: 1/2 and 3/2 beats), written for this benchmark.
    minor = [69, 72, 71, 69, 68, 69, 71, 64, 69, 72, 76, 74, 72, 71, 69]
    minor_beats = [0.5, 1.0, 0.5, 1.0, 0.5, 1.5, 1.5, 1.5, 0.5, 1.0, 0.5, 1.0, 0.5, 1.5, 3.0]
    return {"folk tune (Twinkle, twinkle)": (twinkle, twinkle_beats), "C major scale up and down":
            (scale, scale_beats), "minor tune in 6/8": (minor, minor_beats)}


def row_of(pitch: list[int], beats: list[float]):
    from pipeline.data.rows import RowNotes

    onset = np.concatenate([[0.0], np.cumsum(beats)[:-1]])
    return RowNotes.of(pitch, onset, beats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bach-satb", help="a shipped grid model or a checkpoint")
    parser.add_argument("--melody", help="a four-voice MIDI file whose soprano is timed (default: a test "
                        "chorale of the shipped data, bwv11.6, materialized from music21's corpus)")
    parser.add_argument("--steps", type=int, default=16)  # dmc harmonize's
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import torch

    from pipeline.compose.grid_model import load_grid_model
    from pipeline.compose.harmonize import (
        default_hop,
        grid_model_path,
        harmonize,
        window_starts,
    )
    from pipeline.compose.options import REPAIR_ROUNDS
    from pipeline.compose.sampler import Sampler
    from pipeline.data.rows import read_rows
    from pipeline.evaluate.voice_leading import voice_leading

    torch.set_num_threads(args.threads)
    model = load_grid_model(grid_model_path(args.model), Sampler("ddim", args.steps))
    if args.melody:
        melody = read_rows(args.melody, model.groups)[0]
    else:
        import tempfile

        from music21 import corpus

        from pipeline.data.datasets.bach_satb import score_to_voice_midi

        path = Path(tempfile.mkdtemp()) / "bwv11.6.mid"
        score_to_voice_midi(corpus.getWork("bwv11.6"), path)
        melody = read_rows(path, model.groups)[0]
    harmonize([{0: melody}], model)  # warm-up: first-call allocations
    times: dict[int, list[float]] = {REPAIR_ROUNDS: [], 0: []}
    for _ in range(args.repeat):
        for rounds, runs in times.items():
            start = time.perf_counter()
            harmonize([{0: melody}], model, repair=rounds)
            runs.append(time.perf_counter() - start)
    length = int(np.ceil((melody.onset + melody.duration).max() / model.step))
    windows = len(window_starts(length, model.width, default_hop(model.width)))
    config = model.model.config  # a network may read its x_0 estimate and the given cells too
    x = torch.randn(1, config.features + config.cond_features, len(model.groups), model.width)
    t = torch.full((1,), 500)
    with torch.inference_mode():
        model.model(x, t)
        start = time.perf_counter()
        for _ in range(windows * args.steps):
            model.model(x, t)
        forward = time.perf_counter() - start
    print(json.dumps({"melody_notes": len(melody), "grid_steps": length, "windows": windows,
                      "sampler": f"ddim-{args.steps}", "threads": torch.get_num_threads(),
                      "harmonize_s": round(min(times[REPAIR_ROUNDS]), 3),
                      "without_repair_s": round(min(times[0]), 3), "forward_passes_s": round(forward, 3)}))
    for name, (pitch, beats) in tunes().items():
        row = row_of(pitch, beats)
        scores = []
        for seed in range(4):
            piece = harmonize([{0: row}], model, seed=seed)[0]
            assert piece[0] is row
            scores.append(voice_leading(piece))
        means = {k: round(float(np.mean([s[k] for s in scores])), 3) for k in scores[0]}
        print(json.dumps({"melody": name, "notes": len(pitch), "seeds": 4, "melody_exact": True, **means}))


if __name__ == "__main__":
    main()
