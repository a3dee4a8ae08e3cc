"""Stage `validate`: check all of params.yaml before any other stage runs.

DVC deletes a stage's outputs before it runs the stage's command, so a typo that the stage itself
catches (`seq_len: -128`) would already have removed data/prepared, and with it metrics/prepare.json,
which is `cache: false` and so beyond `dvc checkout`. This stage depends on params.yaml as a whole and
every other stage depends on its output, so DVC runs it first and stops at its error with nothing removed.
Its output never changes, so re-running it re-runs nothing downstream.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.files import atomic_path
from pipeline.params import load_params
from stages import run

OUT = Path("data/params.valid")
TEXT = "params.yaml passed validation (stages/validate.py); every stage depends on this file.\n"


def main() -> None:
    load_params()
    with atomic_path(OUT) as tmp:
        tmp.write_text(TEXT)


if __name__ == "__main__":
    run("validate", main, record=False)
