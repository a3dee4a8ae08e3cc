"""Stage `train`: data/prepared -> models/model.pt (EMA weights), with resumable checkpoints.

`python -m stages.train` trains on one device (CUDA, then MPS, then CPU);
`torchrun --nproc_per_node=N -m stages.train` trains with DDP. Re-running after an interruption
resumes from models/checkpoints/last.pt when params and data are unchanged.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.model import train_data, training
from pipeline.params import load_params
from stages import run

PREPARED = Path("data/prepared")
MODELS = Path("models")
METRICS = Path("metrics")


def main() -> None:
    params = load_params()
    settings = training.TrainSettings.from_params(params)
    if params["layout"] == "grid":  # voices on one time axis (pipeline/model/voice_training.py)
        from pipeline.files import write_json
        from pipeline.model.voice_training import load_grid_data, train_grid

        metrics = train_grid(settings, load_grid_data(PREPARED), MODELS / "model.pt", metrics_dir=METRICS)
        write_json(METRICS / "train.json", metrics)
    else:
        data = train_data.load_data(PREPARED, seq_len=params["seq_len"], key=params["train"]["key"])
        metrics = training.train(settings, data, models_dir=MODELS, metrics_dir=METRICS)
    if metrics:
        print(f"train: {metrics['steps']} steps of preset {settings.preset} on {metrics['device']} "
              f"({metrics['parameters']:,} parameters): loss {metrics['loss']:.4f}, val loss "
              f"{metrics['val_loss'] if metrics['val_loss'] is None else round(metrics['val_loss'], 4)}, "
              f"{speed(metrics)}; wrote {MODELS / 'model.pt'}")


def speed(metrics: dict) -> str:
    """`12.5 steps/s`, or, when a resumed run found every step done, that none were left."""
    if metrics["steps_per_s"] is None:
        return "no steps left to run (resumed at the final step)"
    return f"{metrics['steps_per_s']} steps/s"


if __name__ == "__main__":
    run("train", main)
