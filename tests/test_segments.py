"""Segments (pipeline/data/segments.py, prepared.py): windows, thresholds, split, normalization and the
Parquet files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import PREPARED_SEQ_LEN, PREPARED_SPLIT

from pipeline.data import prepared
from pipeline.data.encoding import FEATURES, Encoding
from pipeline.data.midi import Notes, RejectedFile, TrackNotes, extract_notes, write_midi
from pipeline.data.prepared import load_pitches, load_split, load_stats, write_prepared
from pipeline.data.segments import (
    PrepareConfig,
    file_segments,
    note_features,
    segment_to_notes,
    split_of,
    window_starts,
)
from pipeline.errors import DmcError


def make_notes(duration, delta, pitch=None) -> Notes:
    duration, delta = np.asarray(duration, float), np.asarray(delta, float)
    pitch = np.asarray(pitch if pitch is not None else 60 + np.arange(len(duration)) % 12, np.int16)
    return Notes(track_index=0, program=0, name="", ticks_per_quarter=480, pitch=pitch,
                 onset=np.cumsum(delta), duration=duration, delta=delta)


def test_split_is_the_sha1_of_the_relative_path_against_the_fractions():
    # sha1('a/b.mid') -> 0.3198..., sha1('bwv1.6.mid') -> 0.6398..., sha1('bwv4.mid') -> 0.8911...
    u = int.from_bytes(hashlib.sha1(b"bwv4.mid").digest()[:8], "big") / 2**64
    assert u == pytest.approx(0.8911, abs=1e-4)
    assert split_of("bwv4.mid", (0.8, 0.1, 0.1)) == "val"
    assert split_of("bwv4.mid", (0.85, 0.0, 0.15)) == "test"
    assert split_of("a/b.mid", (0.3, 0.3, 0.4)) == "val"
    assert split_of("bwv1.6.mid", (1.0, 0.0, 0.0)) == "train"


def test_split_fractions_hold_over_many_files():
    names = [f"dir{i % 7}/piece{i}.mid" for i in range(20_000)]
    counts = {s: 0 for s in ("train", "val", "test")}
    for name in names:
        counts[split_of(name, (0.7, 0.2, 0.1))] += 1
    assert counts["train"] / len(names) == pytest.approx(0.7, abs=0.015)
    assert counts["val"] / len(names) == pytest.approx(0.2, abs=0.015)


def test_windows_follow_hop_and_drop_the_short_tail():
    assert window_starts(10, 4, 4).tolist() == [0, 4]
    assert window_starts(10, 4, 2).tolist() == [0, 2, 4, 6]
    assert window_starts(8, 4, 4).tolist() == [0, 4]
    assert window_starts(3, 4, 4).tolist() == []


def test_segments_hold_the_notes_features_in_window_order():
    notes = make_notes(np.arange(1, 11) / 4, np.r_[0, np.full(9, 0.5)])
    seg = file_segments(notes, PrepareConfig(seq_len=4, hop=2))
    assert seg.windows.tolist() == [0, 1, 2, 3]
    assert seg.features.shape == (4, 3, 1, 4) and seg.pitch.shape == (4, 1, 4)
    np.testing.assert_array_equal(seg.features[1, :, 0], note_features(notes)[:, 2:6])
    assert seg.pitch[3, 0].tolist() == notes.pitch[6:10].tolist()


def test_segment_policy_drops_only_the_windows_with_a_violation():
    duration = np.full(12, 0.5)
    duration[5] = 20.0  # in the second window of 4
    seg = file_segments(make_notes(duration, np.full(12, 0.5)), PrepareConfig(seq_len=4, max_duration=16))
    assert seg.windows.tolist() == [0, 2]
    assert seg.dropped == 1


def test_file_policy_rejects_the_whole_file_on_one_violation():
    delta = np.full(12, 0.5)
    delta[9] = 17.0
    config = PrepareConfig(seq_len=4, max_delta=16, policy="file")
    with pytest.raises(RejectedFile) as err:
        file_segments(make_notes(np.full(12, 0.5), delta), config)
    assert err.value.code == "threshold"


def test_a_file_shorter_than_seq_len_is_rejected():
    with pytest.raises(RejectedFile) as err:
        file_segments(make_notes(np.full(5, 0.5), np.full(5, 0.5)), PrepareConfig(seq_len=8))
    assert err.value.code == "too-short"


def test_normalizer_maps_lo_hi_to_0_1_and_inverts():
    norm = Encoding(lo=(100.0, 0.25, 0.0), hi=(900.0, 4.25, 2.0))
    x = np.array([[100.0, 0.25, 0.0], [900.0, 4.25, 2.0], [500.0, 2.25, 1.0]])  # [n, 3] notes
    np.testing.assert_allclose(norm.encode(x), [[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5]])
    seg = np.random.default_rng(0).uniform(0, 1, (2, 3, 1, 8))  # [N, 3, H, W]
    np.testing.assert_allclose(norm.encode(norm.decode(seg)), seg)
    assert Encoding.from_stats(norm.to_stats()) == norm


def test_a_constant_feature_normalizes_to_zero():
    norm = Encoding(lo=(440.0, 1.0, 0.0), hi=(440.0, 2.0, 1.0))
    assert norm.encode(np.array([[440.0, 1.0, 0.0]]))[0, 0] == 0.0


def test_prepared_segments_are_exactly_the_normalized_notes_of_each_file(prepared_dir, bach_midi_dir):
    stats = load_stats(prepared_dir)
    norm = Encoding.from_stats(stats)
    table = pq.read_table(prepared_dir / "segments.parquet").to_pandas()
    assert set(table["dataset"]) == {"bach"}
    checked = 0
    for file, rows in table.groupby("file"):
        notes = extract_notes(bach_midi_dir / file)
        feats = note_features(notes)
        assert set(rows["split"]) == {split_of(file, PREPARED_SPLIT)}  # no file in two splits
        for _, row in rows.iterrows():
            sl = slice(row["segment"] * PREPARED_SEQ_LEN, (row["segment"] + 1) * PREPARED_SEQ_LEN)
            expected = norm.encode(feats[:, sl], axis=0).astype(np.float32)
            for i, f in enumerate(FEATURES):
                np.testing.assert_array_equal(np.asarray(row[f], np.float32), expected[i])
            assert list(row["pitch"]) == notes.pitch[sl].tolist()
            checked += 1
    assert checked == sum(stats["counts"]["segments"].values())


def test_normalization_comes_from_the_train_split_only(prepared_dir):
    train = load_split(prepared_dir, "train")
    assert train.dtype == np.float32 and train.shape[1:] == (3, 1, PREPARED_SEQ_LEN)
    assert train.min(axis=(0, 2, 3)).tolist() == [0.0, 0.0, 0.0]
    assert train.max(axis=(0, 2, 3)).tolist() == [1.0, 1.0, 1.0]
    others = np.concatenate([load_split(prepared_dir, "val"), load_split(prepared_dir, "test")])
    assert len(others) > 0  # held-out data may fall outside [0, 1]; what matters is it never moved the stats


def test_pitches_align_with_segment_rows(prepared_dir):
    stats = load_stats(prepared_dir)
    for split in ("train", "val", "test"):
        x, pitch = load_split(prepared_dir, split), load_pitches(prepared_dir, split)
        assert pitch.shape == (len(x), 1, PREPARED_SEQ_LEN) and pitch.dtype == np.int16
        decoded, _, _ = segment_to_notes(x[0], Encoding.from_stats(stats))
        assert decoded.tolist() == pitch[0].tolist()
        assert stats["counts"]["segments"][split] == len(x)


def test_segment_to_notes_inverts_a_prepared_segment(prepared_dir, bach_midi_dir):
    stats = load_stats(prepared_dir)
    table = pq.read_table(prepared_dir / "segments.parquet").slice(0, 1).to_pylist()[0]
    x = np.stack([np.asarray(table[f], np.float32) for f in FEATURES])  # [3, W]
    pitch, onset, duration = segment_to_notes(x, Encoding.from_stats(stats))
    notes = extract_notes(bach_midi_dir / table["file"])
    sl = slice(table["segment"] * PREPARED_SEQ_LEN, (table["segment"] + 1) * PREPARED_SEQ_LEN)
    assert pitch.tolist() == notes.pitch[sl].tolist()
    np.testing.assert_allclose(duration, notes.duration[sl], atol=1e-5)
    np.testing.assert_allclose(onset - onset[0], notes.onset[sl] - notes.onset[sl][0], atol=1e-4)


def test_loading_an_unknown_split_or_missing_folder_is_a_dmc_error(prepared_dir, tmp_path):
    with pytest.raises(DmcError, match="unknown split"):
        load_split(prepared_dir, "dev")
    with pytest.raises(DmcError, match="run the prepare stage"):
        load_split(tmp_path, "train")


def test_no_output_folder_when_nothing_reaches_the_train_split(tmp_path: Path):
    write_midi(tmp_path / "raw" / "short.mid", [TrackNotes(pitch=[60, 62], onset=[0, 1], duration=[1, 1])])
    out = tmp_path / "prepared"
    with pytest.raises(DmcError, match="no segments in the train split"):
        write_prepared(out, "folder", tmp_path / "raw", ["short.mid"], PrepareConfig(seq_len=8))
    assert list(tmp_path.iterdir()) == [tmp_path / "raw"]


def test_worker_processes_write_what_one_process_writes(tmp_path, bach_midi_dir, monkeypatch):
    monkeypatch.setattr(prepared, "FILES_PER_WORKER", 1)  # use the pool even for a handful of files
    raw = tmp_path / "raw"
    raw.mkdir()
    for p in sorted(bach_midi_dir.glob("*.mid"))[:3]:
        (raw / p.name).write_bytes(p.read_bytes())
    (raw / "empty.mid").write_bytes(b"")
    (raw / "noise.mid").write_bytes(np.random.default_rng(0).bytes(500))
    files = sorted(p.name for p in raw.iterdir())
    config = PrepareConfig(seq_len=16, split=(1, 0, 0))
    summary = write_prepared(tmp_path / "out", "folder", raw, files, config, n_jobs=2)
    rejects = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    assert sorted((r["file"], r["code"]) for r in rejects) == [("empty.mid", "empty"),
                                                               ("noise.mid", "unreadable")]
    assert summary["rejected_by_reason"] == {"empty": 1, "unreadable": 1}
    assert summary["kept"] == 3 and summary["files"] == 5 and summary["n_jobs"] == 2
    write_prepared(tmp_path / "one", "folder", raw, files, config, n_jobs=1)
    for name in ("segments.parquet", "rejects.parquet"):
        assert pq.read_table(tmp_path / "one" / name).equals(pq.read_table(tmp_path / "out" / name))
