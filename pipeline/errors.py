"""The error types users can cause. `dmc` and the stages print each as one line: a DmcError exits 2,
an interruption (Ctrl-C, SIGTERM) exits 128 + the signal's number."""

from __future__ import annotations

import errno
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class DmcError(Exception):
    """A problem with the user's input, params or environment, stated in one line."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, with the line to print: what the interrupted work kept (e.g. a checkpoint).

    A KeyboardInterrupt, so code that cleans up after Ctrl-C cleans up after SIGTERM as well."""

    def __init__(self, message: str = "interrupted", signum: int = signal.SIGINT):
        super().__init__(message)
        self.message = message
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted("interrupted (SIGTERM)", signum)


class _ExitAtOnce:
    """A signal handler: `PROGRAM: interrupted` on stderr, then exit 128 + the signal's number."""

    def __init__(self, program: str):
        self.program = program

    def __call__(self, signum: int, frame: object) -> None:
        line = "interrupted (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
        os.write(2, f"{self.program}: {line}\n".encode())  # print() could be cut in the middle of one
        raise SystemExit(128 + signum)


def exit_while_starting(program: str) -> None:
    """Until `interrupt_on_sigterm` takes over, Ctrl-C and SIGTERM print `PROGRAM: interrupted` and exit
    130 or 143 at once. For an entry point's imports (torch alone takes seconds): no `try` can catch a
    KeyboardInterrupt there, so Python would print its traceback. Nothing is written yet, so nothing
    needs cleaning up. A signal the process inherited as ignored (a background job's Ctrl-C) stays so."""
    exit_now = _ExitAtOnce(program)
    for signum, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
        if signal.getsignal(signum) is default:
            signal.signal(signum, exit_now)


def interrupt_on_sigterm() -> Any:
    """From now on SIGTERM (`kill`, a CI timeout) raises Interrupted as Ctrl-C does, so that `finally`
    blocks run: temp files go, MLflow runs end KILLED. Python's default is to die on the spot. Ctrl-C
    raises KeyboardInterrupt again if `exit_while_starting` had it exit. Returns the previous SIGTERM
    handler. Only the main thread can take signals; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if isinstance(signal.getsignal(signal.SIGINT), _ExitAtOnce):
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return signal.signal(signal.SIGTERM, _raise_interrupted)


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """`interrupt_on_sigterm` while the body runs, the previous handler after."""
    previous = interrupt_on_sigterm()
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def ignore_interrupts() -> None:
    """A worker process's initializer: Ctrl-C reaches the whole process group, and the parent alone
    should answer it (in one line; it then ends the workers), not every worker with its traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def interruption(err: KeyboardInterrupt) -> tuple[str, int]:
    """The line to print and the exit code for an interruption."""
    if isinstance(err, Interrupted):
        return err.message, err.exit_code
    return "interrupted", 128 + int(signal.SIGINT)


# What a full disk, a quota, a read-only or a forbidden folder look like: the user's environment, not a
# bug, so one line naming the file rather than a traceback.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def write_error(path: str | Path, err: OSError) -> str:
    """`cannot write PATH: No space left on device` for an OSError met while writing `path`."""
    reason = err.strerror or (os.strerror(err.errno) if err.errno else type(err).__name__)
    return f"cannot write {path}: {reason}"


def environment_error(err: BaseException) -> str | None:
    """One line for an OSError the environment causes (disk full, read-only, permission), else None."""
    if not isinstance(err, OSError) or err.errno not in ENVIRONMENT_ERRNOS:
        return None
    where = err.filename if err.filename is not None else "a file"
    return f"{where}: {err.strerror or os.strerror(err.errno)}"
