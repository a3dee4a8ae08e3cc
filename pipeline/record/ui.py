"""`dmc ui`: MLflow's web UI over this repository's store, with the links that open it where it helps.

It serves `mlflow.db` and `mlartifacts/` at the repository root (the store every stage records into) with
`mlflow server` on 127.0.0.1, points the saved comparison at the newest execution of each dataset, and
prints two links: the runs table and that comparison. Both carry `workflowType=machine_learning`, which
is what makes MLflow 3 show its model-training pages; the bare address opens in whichever layout the
browser chose last (GenAI on a fresh one; see pipeline.record.mlflow_views).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import DmcError
from pipeline.record import mlflow_views, tracking

HOST = "127.0.0.1"
PORT = 5000
START_TIMEOUT_S = 120


@dataclass
class Links:
    """What `dmc ui` prints: the address, the runs table, and the comparison of `compared`."""

    root: str
    runs: str
    compare: str | None
    compared: list[tuple[str, str]] = field(default_factory=list)  # (dataset, run name), oldest first

    def lines(self) -> list[str]:
        out = [f"ui: runs table, one row per execution: {self.runs}"]
        if self.compare:
            names = ", ".join(f"{dataset} ({name})" for dataset, name in self.compared)
            out.append(f"ui: the newest execution of each dataset compared, {names}: {self.compare}")
        else:
            out.append("ui: no execution has reached the evaluate stage yet: nothing to compare")
        out.append(f"ui: the address itself, {self.root}, opens MLflow's GenAI pages on a fresh browser: "
                   "switch to Machine learning at the top left once (the browser remembers), or use a link")
        return out


def store_uri(root: Path) -> str:
    """The repository's own store; a dmc ui serves that whatever MLFLOW_TRACKING_URI says."""
    db = root / "mlflow.db"
    if not db.is_file():
        raise DmcError(f"ui: no MLflow store at {db}; run the pipeline first (dvc repro)")
    return f"sqlite:///{db}"


def prepare_links(root: Path, base: str, experiment: str = tracking.EXPERIMENT) -> Links:
    """Write the comparison view (newest execution of each dataset) and return the links to print."""
    written = tracking.write_compare_view(store_uri(root), root, experiment)
    if written is None:
        raise DmcError(f"ui: no experiment {experiment!r} in {root / 'mlflow.db'}; run the pipeline first")
    experiment_id, compared = written
    return Links(base.rstrip("/") + "/", mlflow_views.runs_view_url(experiment_id, base),
                 mlflow_views.compare_url(experiment_id, base) if compared else None,
                 [(r.data.params.get("dataset", ""), r.info.run_name) for r in compared])


def check_port_free(host: str, port: int) -> None:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            raise DmcError(f"ui: {host}:{port} is in use (another mlflow ui?); choose a port with --port N") \
                from None


def server_command(root: Path, host: str, port: int) -> list[str]:
    """`mlflow server` over the store; run from the root, so its default artifact root is mlartifacts/."""
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store_uri(root),
            "--host", host, "--port", str(port), "--workers", "1"]


def wait_until_up(url: str, server: subprocess.Popen, seconds: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{url}health", timeout=5):
                return
        except OSError:
            if server.poll() is not None:
                raise DmcError(f"ui: mlflow server exited with code {server.returncode}") from None
            if time.monotonic() > deadline:
                raise DmcError(f"ui: mlflow server did not answer at {url} within {seconds:.0f} s") from None
            time.sleep(0.5)


def serve(root: Path, host: str = HOST, port: int = PORT, open_browser: bool = False,
          log: Callable[[str], None] = print) -> int:
    """Serve the store until interrupted; print the links once the server answers."""
    root = root.resolve()
    base = f"http://{host}:{port}"
    links = prepare_links(root, base)
    check_port_free(host, port)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    server = subprocess.Popen(server_command(root, host, port), cwd=root, env=env, start_new_session=True)
    try:
        wait_until_up(links.root, server)
        for line in links.lines():
            log(line)
        if open_browser and not webbrowser.open(links.compare or links.runs):
            log("ui: no browser found here; open a link above")
        log("ui: serving until Ctrl-C")
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop(server)


def stop(server: subprocess.Popen) -> None:
    """End the server and the uvicorn worker it started: its own process group (start_new_session)."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
