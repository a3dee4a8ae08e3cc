"""Stage `download`: make the chosen dataset's raw MIDI files present and list them in a manifest."""

from __future__ import annotations

from pathlib import Path

from pipeline.data import datasets
from pipeline.params import load_params
from stages import run

MANIFEST = Path("data/manifest.json")


def main() -> None:
    params = load_params()
    dataset = datasets.get(params["dataset"])
    dest = Path(params["raw_dir"]) / dataset.name
    root = dataset.fetch(dest, params)
    manifest = datasets.write_manifest(MANIFEST, dataset.name, root)
    print(f"download: {dataset.name}: {len(manifest['files'])} MIDI files under {manifest['root']}")


if __name__ == "__main__":
    run("download", main)
