"""The download -> prepare stages end to end on a folder of real and broken files, and their errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mido
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import HANG_GUARD_S, REPO, repo_params

from pipeline.data.midi import TrackNotes, write_midi


def run_stage(stage: str, cwd: Path) -> subprocess.CompletedProcess:
    # MLflow tracking has its own tests; here it would only add a database to every temp folder.
    env = {**os.environ, "PYTHONPATH": str(REPO), "DMC_TRACKING": "0"}
    return subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=HANG_GUARD_S)


def workdir(tmp_path: Path, **changes) -> Path:
    """A folder with its own params.yaml (dotted keys in `changes` override the repo's)."""
    params = repo_params()
    for key, value in changes.items():
        *path, last = key.split("__")
        node = params
        for part in path:
            node = node[part]
        node[last] = value
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return tmp_path


def _smf(fmt: int, tracks: list[list[mido.Message]], tpq: int = 480) -> mido.MidiFile:
    mf = mido.MidiFile(type=fmt, ticks_per_beat=tpq)
    mf.tracks.extend(mido.MidiTrack(t) for t in tracks)
    return mf


def _melody(n: int, channel: int = 0, program: int = 0) -> list[mido.Message]:
    msgs = [mido.Message("program_change", channel=channel, program=program)]
    for i in range(n):
        msgs += [mido.Message("note_on", channel=channel, note=48 + i % 24, velocity=64),
                 mido.Message("note_off", channel=channel, note=48 + i % 24, time=240)]
    return msgs


def make_messy_folder(raw: Path, chorales: Path) -> dict[str, str | None]:
    """Real chorales plus every kind of bad file; returns file -> expected reject code (None: segments)."""
    expected: dict[str, str | None] = {}
    (raw / "chorales").mkdir(parents=True)
    for p in sorted(chorales.glob("*.mid"))[:6]:
        shutil.copy(p, raw / "chorales" / p.name)
        expected[f"chorales/{p.name}"] = None
    good = (raw / "chorales" / sorted(chorales.glob("*.mid"))[0].name).read_bytes()
    bad = {
        "empty.mid": (b"", "empty"),
        "random.mid": (np.random.default_rng(5).bytes(3000), "unreadable"),
        "truncated.mid": (good[: len(good) // 2], "unreadable"),
        "corrupt.MID": (good[:14] + b"MTrk\x7f\xff\xff\xff" + good[22:], "unreadable"),
        "tpq0.mid": (good[:12] + b"\x00\x00" + good[14:], "bad-ticks-per-quarter"),
        "smpte.midi": (good[:12] + b"\xe2\x50" + good[14:], "smpte"),
    }
    for name, (data, code) in bad.items():
        (raw / name).write_bytes(data)
        expected[name] = code
    _smf(0, [_melody(40, channel=0) + _melody(40, channel=1, program=33)]).save(raw / "type0.mid")
    expected["type0.mid"] = None
    _smf(2, [_melody(40), _melody(10)]).save(raw / "type2.mid")
    expected["type2.mid"] = None
    _smf(1, [_melody(60, program=40), _melody(60, channel=9)]).save(raw / "strings_and_drums.mid")
    expected["strings_and_drums.mid"] = "no-piano-track"
    n = 200_000
    big = TrackNotes(pitch=48 + np.arange(n) % 37, onset=np.arange(n) / 4, duration=np.full(n, 0.25))
    write_midi(raw / "big" / "200k.mid", [big])
    expected["big/200k.mid"] = None
    return expected


def test_stages_turn_a_messy_folder_into_segments_and_reject_rows(tmp_path, bach_midi_dir):
    raw = tmp_path / "midi"
    raw.mkdir()
    expected = make_messy_folder(raw, bach_midi_dir)
    work = workdir(tmp_path / "repo", dataset="folder", raw_dir=str(raw), seq_len=32,
                   prepare__n_jobs=2, prepare__split={"train": 0.5, "val": 0.25, "test": 0.25})
    for stage in ("download", "prepare"):
        out = run_stage(stage, work)
        assert out.returncode == 0, out.stderr
    rows = pq.read_table(work / "data/prepared/rejects.parquet").to_pylist()
    rejects = {r["file"]: r["code"] for r in rows}
    assert rejects == {f: c for f, c in expected.items() if c is not None}
    table = pq.read_table(work / "data/prepared/segments.parquet", columns=["file", "segment"]).to_pandas()
    assert set(table["file"]) == {f for f, c in expected.items() if c is None}
    assert (table["file"] == "big/200k.mid").sum() == 200_000 // 32
    metrics = json.loads((work / "metrics/prepare.json").read_text())
    assert metrics["files"] == len(expected)
    assert metrics["kept"] + metrics["rejected"] == len(expected)
    assert metrics["rejected_by_reason"]["unreadable"] == 3
    assert sum(metrics["segments"].values()) == len(table)
    assert metrics["files_per_second"] > 0
    stats = json.loads((work / "data/prepared/stats.json").read_text())
    assert stats["seq_len"] == 32 and stats["instruments"] == ["piano"]
    assert [p.name for p in (work / "data").iterdir() if p.name.startswith(".")] == []  # no temp left


@pytest.mark.parametrize(("changes", "stage", "key"), [
    ({"seq_len": 0}, "prepare", "'seq_len'"),
    ({"prepare__split": {"train": 0.8, "val": 0.1, "test": 0.2}}, "prepare", "'prepare.split'"),
    ({"dataset": "nonesuch"}, "download", "'dataset'"),
    ({"dataset": "folder", "raw_dir": "/no/such/folder"}, "download", "'raw_dir'"),
    ({"instruments": ["piano", "kazoo"]}, "prepare", "'instruments'"),
])
def test_bad_params_fail_in_one_line_naming_the_key_and_write_nothing(tmp_path, changes, stage, key):
    work = workdir(tmp_path, **changes)
    (work / "data").mkdir()
    (work / "data/manifest.json").write_text(json.dumps({"dataset": "bach", "root": "raw", "files": []}))
    out = run_stage(stage, work)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and out.stderr.startswith(f"{stage}: error: ")
    assert key in out.stderr
    assert not (work / "data/prepared").exists() and not (work / "metrics").exists()
    assert sorted(p.name for p in (work / "data").iterdir()) == ["manifest.json"]


def test_prepare_without_a_manifest_says_to_run_download(tmp_path):
    out = run_stage("prepare", workdir(tmp_path))
    assert out.returncode == 2 and "run the download stage" in out.stderr
    assert not (tmp_path / "data").exists()


def test_folder_dataset_without_midi_files_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    out = run_stage("download", workdir(tmp_path, dataset="folder", raw_dir=str(tmp_path / "empty")))
    assert out.returncode == 2 and "holds no .mid/.midi files" in out.stderr
    assert not (tmp_path / "data").exists()
