"""Stage `sample`: a fixed, seeded set of pieces from the trained model, for evaluation and listening."""

from __future__ import annotations

from pathlib import Path

from pipeline.compose.generate import generate_files
from pipeline.compose.options import GenerateOptions
from pipeline.compose.shipped import MODEL_PATH
from pipeline.files import atomic_path, write_json
from pipeline.params import load_params
from stages import run

SAMPLES = Path("samples")
METRICS = Path("metrics/sample.json")


def main() -> None:
    params = load_params()
    opts = GenerateOptions.from_params(params)
    # The whole folder is replaced at once: evaluation never sees a mix of two runs.
    with atomic_path(SAMPLES) as tmp:
        summary = generate_files(tmp, opts, MODEL_PATH)
    write_json(METRICS, {
        "pieces": summary["pieces"],
        "notes_per_piece": summary["notes_per_piece"],
        "sampler": summary["sampler"],
        "steps": summary["steps"],
        "seconds": round(summary["seconds"], 3),
        "seconds_per_piece": round(summary["seconds"] / summary["pieces"], 4),
    })
    print(f"sample: {summary['pieces']} pieces of {summary['notes_per_piece']} notes in {SAMPLES}/ "
          f"({summary['sampler']}-{summary['steps']}, {summary['seconds']:.1f} s)")


if __name__ == "__main__":
    run("sample", main)
