"""Where dmc's MLflow store lives, and how its writers take turns: the file lock among dmc's own
processes, and retries while another reader or writer holds SQLite's lock.

Store: `MLFLOW_TRACKING_URI` when set, else `sqlite:///$DVC_ROOT/mlflow.db` with artifacts in
`$DVC_ROOT/mlartifacts`. DVC sets `DVC_ROOT` to the original repository even when `dvc exp run --temp`
or `--queue` runs the stage in a copy under .dvc/tmp/exps, so every experiment lands in one store.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from pipeline.errors import DmcError

LOCK_TIMEOUT_S = 600

T = TypeVar("T")


def enabled() -> bool:
    """False when DMC_TRACKING=0/off/false, and on every torchrun rank but 0 (only rank 0 logs)."""
    if os.environ.get("DMC_TRACKING", "1").strip().lower() in ("0", "off", "false", "no"):
        return False
    return os.environ.get("RANK", "0") == "0"


def repo_root(workdir: str | Path = ".") -> Path:
    """The original repository: DVC_ROOT under DVC (even in an experiment's temp copy), else `workdir`."""
    return Path(os.environ.get("DVC_ROOT") or workdir).resolve()


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"


def default_store() -> bool:
    return not os.environ.get("MLFLOW_TRACKING_URI")


def retry_locked(call: Callable[[], T], tries: int = 8, delay: float = 0.2) -> T:
    """Run `call`, retrying with exponential backoff while SQLite answers 'database is locked'.

    The file lock keeps dmc's own writers apart; this covers other readers and writers of the store
    (an open `mlflow ui`, a second tool), whose transactions can still hold SQLite's lock for a moment.
    """
    for attempt in range(tries):
        try:
            return call()
        except Exception as err:
            if "database is locked" not in str(err) or attempt == tries - 1:
                raise
            time.sleep(delay * 2**attempt)
    raise AssertionError("unreachable")


class Retrying:
    """An MlflowClient whose every call goes through `retry_locked`."""

    def __init__(self, client: Any):
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: retry_locked(lambda: attr(*args, **kwargs))


@contextlib.contextmanager
def store_lock(root: Path) -> Iterator[None]:
    """Serialize dmc's writers (e.g. `dvc queue start -j 2`) on one store: a file lock beside it."""
    from filelock import FileLock, Timeout

    try:
        with FileLock(str(root / "mlflow.db.lock"), timeout=LOCK_TIMEOUT_S):
            yield
    except Timeout:
        raise DmcError(f"tracking: waited {LOCK_TIMEOUT_S} s for {root / 'mlflow.db.lock'}; "
                       "is another process stuck logging?") from None
