"""One thin module per DVC stage: read params, call the library, write outputs.

Stage modules hold no MLflow code: `run` records each execution through `pipeline.record.tracking`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from pipeline.errors import (
    DmcError,
    environment_error,
    exit_while_starting,
    interrupt_on_sigterm,
    interruption,
)


def _started_stage() -> str | None:
    """NAME if this process was started as `python -m stages.NAME` (DVC's commands, torchrun's workers)."""
    argv = sys.orig_argv
    module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else ""
    return module.removeprefix("stages.") if module.startswith("stages.") else None


# `python -m stages.NAME` imports this package before the stage module, whose imports take seconds before
# its `run` can catch Ctrl-C: until then an interruption is one line, not a traceback.
if (started := _started_stage()) is not None:
    exit_while_starting(started)


def run(stage: str, main: Callable[[], None], record: bool = True) -> None:
    """Run a stage's main, recorded in MLflow unless `record` is false. A DmcError, or an OSError of the
    environment (disk full, read-only), becomes one line on stderr and exit code 2; Ctrl-C or SIGTERM
    one line and exit code 130 or 143.

    First the stage's CPU threads are sized to the cores other work leaves free (pipeline.threads).
    """
    try:
        interrupt_on_sigterm()
        from pipeline.threads import configure_threads

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
