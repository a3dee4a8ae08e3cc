"""One thin module per DVC stage: read params, call the library, write outputs.

Stage modules hold no MLflow code: `run` records each execution through `pipeline.tracking`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from pipeline.errors import DmcError, environment_error, interrupt_on_sigterm, interruption


def run(stage: str, main: Callable[[], None], record: bool = True) -> None:
    """Run a stage's main, recorded in MLflow unless `record` is false. A DmcError, or an OSError of the
    environment (disk full, read-only), becomes one line on stderr and exit code 2; Ctrl-C or SIGTERM
    one line and exit code 130 or 143.

    First the stage's CPU threads are sized to the cores other work leaves free (pipeline.threads).
    """
    from pipeline.threads import configure_threads

    interrupt_on_sigterm()
    try:
        note = configure_threads()
        if note:
            print(f"{stage}: {note}")
        if not record:
            main()
            return
        from pipeline.record.tracking import track_stage  # imports MLflow: seconds

        with track_stage(stage):
            main()
    except DmcError as err:
        print(f"{stage}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM, after track_stage marked the run KILLED
        line, code = interruption(err)
        print(f"{stage}: {line}", file=sys.stderr)
        sys.exit(code)
    except OSError as err:  # a full disk, a read-only folder: the environment's, said in one line
        line = environment_error(err)
        if line is None:
            raise
        print(f"{stage}: error: {line}", file=sys.stderr)
        sys.exit(2)
