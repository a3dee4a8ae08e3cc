"""Screenshots of a dmc MLflow store as a new user meets it, in headless Chromium, served by `dmc ui`.

    python scripts/mlflow_screenshots.py [--root .] [--out screenshots]

Starts `dmc ui` on a free 127.0.0.1 port over `<root>/mlflow.db`, then opens in a fresh browser profile
each time (what a new user has): the bare address (root.png), the experiment as the Experiments list
links it (experiment.png), `dmc ui`'s runs-table link (runs.png) and compare link (compare.png), the
newest execution's run page (run.png), MLflow's own Compare page of the same runs (compare-runs.png) and
the newest gallery (gallery.png), each with its rendered DOM (.html). The window is 1600 px wide.

Checks (exit 1 when one fails): the links open the model-training pages, not GenAI; the runs table
shows every execution and no stage run, with the headline columns; the comparison shows the compared
runs and its charts; the run page lists its logged model; the gallery players preload their length.
The root and the bare experiment page are screenshotted, not checked: on a fresh browser MLflow 3.17
opens them in its GenAI layout whatever the store says (see pipeline.record.mlflow_views).
Too slow for CI (a server start and a dozen browser starts), so it is tooling, not a test.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.record import mlflow_views, tracking  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
WINDOW = "1600,1000"
# What the GenAI layout shows and the model-training one does not.
GENAI_MARKERS = ("Detect Issues", "No traces")
HEADLINE_HEADERS = ("oa", "oa_markov", "oa_real", "scale", "chord", "steps", "preset")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dmc_ui(root: Path, port: int) -> tuple[subprocess.Popen, dict[str, str]]:
    """`dmc ui` in its own process group; returns it and the links it printed, once it serves."""
    repo = Path(__file__).resolve().parents[1]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, "PYTHONPATH": str(repo)}
    command = [sys.executable, "-m", "pipeline.cli", "ui", "--root", str(root), "--port", str(port)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    links: dict[str, str] = {}
    deadline = time.monotonic() + 180
    for line in proc.stdout:
        print(line.rstrip())
        url = re.search(r"(http://\S+)$", line.strip())
        if url and "runs table" in line:
            links["runs"] = url[1]
        elif url and "compared" in line:
            links["compare"] = url[1]
        if "serving until" in line or time.monotonic() > deadline:
            break
    if proc.poll() is not None or "runs" not in links:
        raise SystemExit("dmc ui did not start")
    return proc, links


def browse(browser: str, url: str, png: Path, budget_ms: int = 20000) -> str:
    """Screenshot `url` into `png` and return the rendered DOM (a fresh profile: no stored UI state)."""
    profile = png.parent / (".profile-" + png.stem)
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              f"--window-size={WINDOW}", f"--virtual-time-budget={budget_ms}", f"--user-data-dir={profile}"]
    subprocess.run([*common, f"--screenshot={png}", url], check=True, capture_output=True, timeout=240)
    dom = subprocess.run([*common, "--dump-dom", url], check=True, capture_output=True, text=True,
                         timeout=240).stdout
    png.with_suffix(".html").write_text(dom)
    shutil.rmtree(profile, ignore_errors=True)
    return dom


def genai(dom: str) -> list[str]:
    return [m for m in GENAI_MARKERS if m in dom]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="the repository holding mlflow.db")
    parser.add_argument("--out", type=Path, default=Path("screenshots"))
    args = parser.parse_args()
    browser = next((b for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        raise SystemExit("no Chromium found; apt-get update && apt-get install chromium")
    root = args.root.resolve()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    if experiment is None:
        raise SystemExit(f"no experiment {tracking.EXPERIMENT!r} in {root / 'mlflow.db'}")
    eid = experiment.experiment_id
    rows = client.search_runs([eid], filter_string=mlflow_views.ROW_FILTER,
                              order_by=["attribute.start_time DESC"])
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server, links = start_dmc_ui(root, port)
    failures: list[str] = []
    try:
        browse(browser, f"{base}/", args.out / "root.png")
        browse(browser, f"{base}/#/experiments/{eid}", args.out / "experiment.png")

        dom = browse(browser, links["runs"], args.out / "runs.png")
        failures += [f"runs table shows {m!r} (GenAI layout)" for m in genai(dom)]
        failures += [f"runs table lacks the row {r.info.run_name!r}"
                     for r in rows if r.info.run_name not in dom]
        failures += [f"runs table lists the stage run {s!r}"
                     for s in ("prepare", "train", "sample", "evaluate") if f">{s}<" in dom]
        failures += [f"runs table lacks the column {h!r}" for h in HEADLINE_HEADERS if f">{h}<" not in dom]

        compared = tracking.newest_per_dataset(client, eid)
        if "compare" in links:
            dom = browse(browser, links["compare"], args.out / "compare.png", budget_ms=30000)
            failures += [f"comparison shows {m!r} (GenAI layout)" for m in genai(dom)]
            failures += [f"comparison lacks {r.info.run_name!r}"
                         for r in compared if r.info.run_name not in dom]
            failures += [f"comparison lacks the chart {m!r}" for m in mlflow_views.COMPARE_METRICS
                         if f">{m}<" not in dom]
            ids = [r.info.run_id for r in compared]
            browse(browser, mlflow_views.compare_runs_url(eid, ids, base), args.out / "compare-runs.png")
        else:
            failures.append("dmc ui printed no compare link")

        if rows:
            run_page = f"{base}/#/experiments/{eid}/runs/{rows[0].info.run_id}?workflowType=machine_learning"
            dom = browse(browser, run_page, args.out / "run.png")
            if rows[0].outputs and rows[0].outputs.model_outputs and "model" not in dom:
                failures.append("the execution's run page does not list its logged model")

        with_gallery = [r for r in rows
                        if any(a.path == "gallery.html" for a in client.list_artifacts(r.info.run_id))]
        with_gallery.sort(key=lambda r: not r.data.params.get("sample.audio"))  # one with audio first
        if with_gallery:
            run = with_gallery[0]
            gallery = (f"{base}/#/experiments/{eid}/runs/{run.info.run_id}"
                       "/artifacts/gallery.html?workflowType=machine_learning")
            browse(browser, gallery, args.out / "gallery.png")
            page = Path(client.download_artifacts(run.info.run_id, "gallery.html", str(args.out)))
            if 'preload="none"' in page.read_text():
                failures.append("gallery players do not preload their length")
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    for failure in failures:
        print(f"check failed: {failure}")
    print(f"screenshots in {args.out}/: root, experiment, runs, compare, compare-runs, run, gallery (.png)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
