"""Screenshots of a dmc MLflow store as a new user meets it, in headless Chromium: the README's link
(the runs table), the Compare page of the two newest executions, and the newest gallery.

    python scripts/mlflow_screenshots.py [--root .] [--out screenshots]

Starts `mlflow server` on a free 127.0.0.1 port over `<root>/mlflow.db`, opens each page with
`chromium --headless` (Debian package `chromium`), writes landing.png, compare.png, gallery.png and
each page's rendered DOM (.html), and checks that the link opened the model-training runs table with
every execution's name and none of the GenAI landing page. Exit 1 when a check fails. Too slow for CI
(a server start and three browser starts, about a minute), so it is tooling, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import tracking  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
WINDOW = "2000,1000"
# What the GenAI layout shows and the model-training one does not.
GENAI_MARKERS = ("Detect Issues", "No traces")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, server: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"mlflow server did not start at {url}") from None
            time.sleep(1)


def browse(browser: str, url: str, png: Path, budget_ms: int = 20000) -> str:
    """Screenshot `url` into `png` and return the rendered DOM (a fresh profile: no stored UI state)."""
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              f"--window-size={WINDOW}", f"--virtual-time-budget={budget_ms}",
              f"--user-data-dir={png.parent / ('.profile-' + png.stem)}"]
    subprocess.run([*common, f"--screenshot={png}", url], check=True, capture_output=True, timeout=180)
    dom = subprocess.run([*common, "--dump-dom", url], check=True, capture_output=True, text=True,
                         timeout=180).stdout
    png.with_suffix(".html").write_text(dom)
    shutil.rmtree(png.parent / (".profile-" + png.stem), ignore_errors=True)
    return dom


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="the repository holding mlflow.db")
    parser.add_argument("--out", type=Path, default=Path("screenshots"))
    args = parser.parse_args()
    browser = next((b for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        raise SystemExit("no Chromium found; apt-get update && apt-get install chromium")
    root = args.root.resolve()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    if experiment is None:
        raise SystemExit(f"no experiment {tracking.EXPERIMENT!r} in {uri}")
    rows = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.`{tracking.ROW_TAG}` = 'execution'",
                              order_by=["attribute.start_time DESC"])
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1", "--backend-store-uri", uri],
                              cwd=root, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    failures = []
    try:
        wait_for(f"{base}/health", server)
        link = tracking.runs_view_url(experiment.experiment_id, base)
        print(f"landing: {link}")
        dom = browse(browser, link, args.out / "landing.png")
        failures += [f"landing page shows {m!r} (GenAI layout)" for m in GENAI_MARKERS if m in dom]
        failures += [f"landing page lacks the row {r.info.run_name!r}"
                     for r in rows if r.info.run_name not in dom]
        stage_names = {"prepare", "train", "sample", "evaluate"}
        failures += [f"landing page lists the stage run {s!r}" for s in stage_names if f">{s}<" in dom]
        if len(rows) >= 2:
            ids = [r.info.run_id for r in rows[:2]]
            query = urllib.parse.urlencode({"runs": json.dumps(ids),
                                            "experiments": json.dumps([experiment.experiment_id])})
            compare = f"{base}/#/compare-runs?{query}&workflowType=machine_learning"
            print(f"compare: {compare}")
            dom = browse(browser, compare, args.out / "compare.png")
            failures += [f"compare page lacks {r.info.run_name!r}"
                         for r in rows[:2] if r.info.run_name not in dom]
        with_gallery = [r for r in rows
                        if any(a.path == "gallery.html" for a in client.list_artifacts(r.info.run_id))]
        with_gallery.sort(key=lambda r: not r.data.params.get("sample.audio"))  # one with audio first
        if with_gallery:
            run = with_gallery[0]
            gallery = (f"{base}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"
                       "/artifacts/gallery.html?workflowType=machine_learning")
            print(f"gallery: {gallery}")
            browse(browser, gallery, args.out / "gallery.png")
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    for failure in failures:
        print(f"check failed: {failure}")
    print(f"screenshots in {args.out}/: landing.png, compare.png, gallery.png")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
