"""The download stage's manifest: what it lists, and its hash cache (an unchanged file costs a stat)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from pipeline import files
from pipeline.data.datasets import midi_files, write_manifest

HOUR_NS = 3600 * 10**9


@pytest.fixture()
def counted_digests(monkeypatch, tmp_path):
    """Every file the manifest reads to hash, in order; the hash cache lives under tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    read: list[str] = []
    real = files.file_digest

    def digest(path, algorithm="sha256"):
        read.append(Path(path).name)
        return real(path, algorithm)

    monkeypatch.setattr(files, "file_digest", digest)
    return read


def midi_folder(root: Path, sources: list[Path], age_ns: int = HOUR_NS) -> Path:
    """Copies of the wheel's MIDI files, dated `age_ns` ago (older than the cache's 2 s margin)."""
    then = time.time_ns() - age_ns
    for i, source in enumerate(sources):
        target = root / f"part{i % 2}" / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        os.utime(target, ns=(then, then))
    return root


def test_unchanged_folder_is_not_read_again_but_a_changed_file_is(tmp_path, wheel_midi_files,
                                                                   counted_digests):
    root = midi_folder(tmp_path / "midi", wheel_midi_files[:6])
    first = write_manifest(tmp_path / "m1.json", "folder", root)
    assert len(counted_digests) == 6

    counted_digests.clear()
    second = write_manifest(tmp_path / "m2.json", "folder", root)
    assert counted_digests == []  # a stat per file, no read
    assert (tmp_path / "m1.json").read_text() == (tmp_path / "m2.json").read_text()

    changed = root / "part0" / wheel_midi_files[0].name
    data = bytearray(changed.read_bytes())
    data[-1] ^= 0xFF  # same size, other content, a new mtime
    changed.write_bytes(bytes(data))
    then = time.time_ns() - HOUR_NS // 2
    os.utime(changed, ns=(then, then))
    third = write_manifest(tmp_path / "m3.json", "folder", root)
    assert counted_digests == [changed.name]
    assert [f["sha256"] for f in third["files"]] != [f["sha256"] for f in second["files"]]
    assert third["files"][0]["sha256"] == files.file_digest(changed)
    assert first["files"] == second["files"]


def test_file_as_new_as_the_cache_is_hashed_every_time(tmp_path, wheel_midi_files, counted_digests):
    root = midi_folder(tmp_path / "midi", wheel_midi_files[:2], age_ns=0)  # written "now"
    write_manifest(tmp_path / "m.json", "folder", root)
    counted_digests.clear()
    write_manifest(tmp_path / "m.json", "folder", root)
    assert len(counted_digests) == 2  # same-tick rewrites could hide behind an equal size and mtime


def test_manifest_holds_no_timestamps_and_keeps_the_path_order(tmp_path, wheel_midi_files, counted_digests):
    root = midi_folder(tmp_path / "midi", wheel_midi_files[:4])
    (root / "part0" / "notes.txt").write_text("not MIDI")
    (root / "a-b").mkdir()
    shutil.copyfile(wheel_midi_files[0], root / "a-b" / "x.MID")
    manifest = write_manifest(tmp_path / "m.json", "folder", root)
    assert set(manifest["files"][0]) == {"path", "size", "sha256"}
    assert [f["path"] for f in manifest["files"]] == [p.relative_to(root).as_posix() for p in
                                                      sorted(p for p in root.rglob("*") if p.suffix.lower()
                                                             in (".mid", ".midi"))]
    assert midi_files(root) == [root / f["path"] for f in manifest["files"]]
    cache = json.loads(next((tmp_path / "cache" / "dmc" / "hashes").iterdir()).read_text())
    assert cache["root"] == str(root.resolve()) and len(cache["files"]) == 5
