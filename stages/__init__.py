"""One thin module per DVC stage: read params, call the library, write outputs.

Stage modules hold no MLflow code: `run` records each execution through `pipeline.tracking`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from pipeline.errors import DmcError


def run(stage: str, main: Callable[[], None], record: bool = True) -> None:
    """Run a stage's main, recorded in MLflow unless `record` is false; a DmcError becomes one line on
    stderr and exit code 2.

    First the stage's CPU threads are sized to the cores other work leaves free (pipeline.threads).
    """
    from pipeline.threads import configure_threads

    try:
        note = configure_threads()
        if note:
            print(f"{stage}: {note}")
        if not record:
            main()
            return
        from pipeline.tracking import track_stage  # imports MLflow: seconds

        with track_stage(stage):
            main()
    except DmcError as err:
        print(f"{stage}: error: {err}", file=sys.stderr)
        sys.exit(2)
