"""Stage `prepare`: the manifest's MIDI files -> normalized note segments in data/prepared/."""

from __future__ import annotations

from pathlib import Path

from pipeline.data.datasets import read_manifest
from pipeline.data.datasets.corpus import resolve_jobs
from pipeline.data.prepared import write_prepared
from pipeline.data.segments import PrepareConfig
from pipeline.errors import DmcError
from pipeline.files import write_json
from pipeline.params import load_params
from stages import run

MANIFEST = Path("data/manifest.json")
PREPARED = Path("data/prepared")
METRICS = Path("metrics/prepare.json")


def main() -> None:
    params = load_params()
    config = PrepareConfig.from_params(params)
    dataset, root, files = read_manifest(MANIFEST)
    if dataset != params["dataset"]:
        raise DmcError(f"the manifest holds dataset '{dataset}' but params say '{params['dataset']}'; "
                       "run the download stage first (dvc repro download)")
    n_jobs = resolve_jobs(params["prepare"]["n_jobs"])
    if params["layout"] == "grid":  # voices on one time axis: windows of seq_len grid steps
        from pipeline.model.voice_training import write_grid_prepared

        summary = write_grid_prepared(PREPARED, dataset, root, files, config.instruments, config.seq_len,
                                      params["prepare"]["hop"], config.split)
    else:
        summary = write_prepared(PREPARED, dataset, root, files, config, n_jobs=n_jobs)
    write_json(METRICS, summary)
    seg = summary["segments"]
    print(f"prepare: {summary['kept']}/{summary['files']} files kept, {summary['rejected']} rejected "
          f"{summary['rejected_by_reason']}; segments train/val/test "
          f"{seg['train']}/{seg['val']}/{seg['test']}; {summary['files_per_second']} files/s")


if __name__ == "__main__":
    run("prepare", main)
