"""The note contract (pipeline/data/midi.py), pinned on real MIDI files and on files the tests generate."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mido
import mido_oracle
import numpy as np
import pytest
from conftest import HANG_GUARD_S

from pipeline.data import midi
from pipeline.data.midi import RejectedFile, TrackNotes, extract_notes, write_midi

REPO = Path(__file__).resolve().parents[1]
On, Off, Prog, Meta = (lambda *a, **k: mido.Message("note_on", *a, **k)), \
    (lambda *a, **k: mido.Message("note_off", *a, **k)), \
    (lambda *a, **k: mido.Message("program_change", *a, **k)), mido.MetaMessage


def smf(tracks: list[list[mido.Message]], fmt: int = 1, tpq: int = 480) -> bytes:
    """A standard MIDI file's bytes from lists of delta-timed mido messages."""
    mf = mido.MidiFile(type=fmt, ticks_per_beat=tpq)
    for messages in tracks:
        mf.tracks.append(mido.MidiTrack(messages))
    buf = io.BytesIO()
    mf.save(file=buf)
    return buf.getvalue()


def notes_track(pitches, ticks=480, channel=0, program=None, name=None) -> list[mido.Message]:
    """One note after another, each `ticks` long."""
    msgs = [Meta("track_name", name=name)] if name else []
    if program is not None:
        msgs.append(Prog(channel=channel, program=program))
    for p in pitches:
        msgs += [On(channel=channel, note=p, velocity=64), Off(channel=channel, note=p, time=ticks)]
    return msgs


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def assert_same_as_oracle(path: Path) -> None:
    try:
        ours = extract_notes(path)
    except RejectedFile:
        ours = None
    theirs = mido_oracle.extract(path)
    assert (ours is None) == (theirs is None), path.name
    if ours is None:
        return
    assert ours.track_index == theirs["track_index"], path.name
    assert ours.program == theirs["program"]
    assert ours.ticks_per_quarter == theirs["ticks_per_quarter"]
    assert ours.pitch.tolist() == theirs["pitch"]
    assert ours.onset.tolist() == theirs["onset"]
    assert ours.duration.tolist() == theirs["duration"]
    assert ours.delta.tolist() == theirs["delta"]
    if "\ufffd" not in theirs["name"]:  # names that are not UTF-8 are cleaned differently; cosmetic
        assert ours.name == theirs["name"]


def test_extractor_matches_mido_oracle_on_music21_wheel_midi(wheel_midi_files):
    for path in wheel_midi_files:
        assert_same_as_oracle(path)


def test_extractor_matches_mido_oracle_on_materialized_chorales(bach_midi_dir):
    files = sorted(bach_midi_dir.glob("*.mid"))
    assert len(files) >= 10
    for path in files:
        assert_same_as_oracle(path)


def test_extractor_matches_mido_oracle_on_generated_tricky_files(tmp_path):
    """Overlapping same-pitch notes, program changes mid-note, several channels and chunks."""
    rng = np.random.default_rng(7)
    for k in range(20):
        tracks = []
        for _ in range(rng.integers(1, 4)):
            msgs = []
            for _ in range(rng.integers(1, 60)):
                kind = rng.integers(0, 10)
                ch, note = int(rng.choice([0, 1, 9])), int(rng.integers(58, 63))
                dt = int(rng.integers(0, 3)) * 60
                if kind < 5:
                    msgs.append(On(channel=ch, note=note, velocity=64, time=dt))
                elif kind < 9:
                    msgs.append(Off(channel=ch, note=note, time=dt) if kind < 7
                                else On(channel=ch, note=note, velocity=0, time=dt))
                else:
                    msgs.append(Prog(channel=ch, program=int(rng.choice([0, 5, 40])), time=dt))
            tracks.append(msgs)
        assert_same_as_oracle(write(tmp_path, f"r{k}.mid", smf(tracks)))


def test_times_are_in_beats_of_the_files_own_ticks_per_quarter(tmp_path):
    a = extract_notes(write(tmp_path, "a.mid", smf([notes_track([60, 62], ticks=96)], tpq=96)))
    b = extract_notes(write(tmp_path, "b.mid", smf([notes_track([60, 62], ticks=1000)], tpq=1000)))
    assert a.onset.tolist() == b.onset.tolist() == [0.0, 1.0]
    assert a.duration.tolist() == b.duration.tolist() == [1.0, 1.0]
    assert a.delta.tolist() == [0.0, 1.0]
    assert (a.ticks_per_quarter, b.ticks_per_quarter) == (96, 1000)


def test_first_delta_is_zero_even_when_the_piece_starts_late(tmp_path):
    track = [On(note=60, velocity=64, time=960), Off(note=60, time=480), On(note=64, velocity=64, time=240),
             Off(note=64, time=480)]
    n = extract_notes(write(tmp_path, "late.mid", smf([track])))
    assert n.onset.tolist() == [2.0, 3.5]
    assert n.delta.tolist() == [0.0, 1.5]


def test_main_track_is_the_piano_candidate_with_most_notes(tmp_path):
    tracks = [notes_track([60] * 3, program=0, name="few"),
              notes_track(range(40, 50), channel=1, program=40, name="violin, most notes"),
              notes_track(range(50, 58), channel=9, name="drums"),
              notes_track(range(60, 65), channel=2, program=19, name="organ")]
    n = extract_notes(write(tmp_path, "pick.mid", smf(tracks)))
    assert (n.name, n.program, n.track_index) == ("organ", 19, 3)
    assert n.pitch.tolist() == list(range(60, 65))


def test_ties_go_to_the_first_track_in_file_order(tmp_path):
    tracks = [notes_track([60, 61], name="first"), notes_track([70, 71], channel=1, name="second")]
    assert extract_notes(write(tmp_path, "tie.mid", smf(tracks))).name == "first"


def test_track_without_program_change_is_program_0(tmp_path):
    n = extract_notes(write(tmp_path, "p.mid", smf([notes_track([60])])))
    assert n.program == 0
    with pytest.raises(RejectedFile) as err:
        extract_notes(write(tmp_path, "p.mid", smf([notes_track([60])])), programs=[1])
    assert err.value.code == "no-piano-track"


def test_zero_length_notes_and_duplicates_are_dropped_keeping_the_longest(tmp_path):
    track = [On(note=60, velocity=64), Off(note=60),                      # zero length
             On(note=62, velocity=64), On(note=62, velocity=64, time=0),  # same onset and pitch twice
             Off(note=62, time=240), Off(note=62, time=240),              # 240 and 480 ticks long
             On(note=55, velocity=64), Off(note=55, time=480)]
    n = extract_notes(write(tmp_path, "dup.mid", smf([track])))
    assert n.pitch.tolist() == [62, 55]
    assert n.duration.tolist() == [1.0, 1.0]


def test_notes_are_sorted_by_onset_then_pitch(tmp_path):
    chord_down = [On(note=67, velocity=64), On(note=60, velocity=64), On(note=64, velocity=64),
                  Off(note=67, time=480), Off(note=60), Off(note=64)]
    n = extract_notes(write(tmp_path, "chord.mid", smf([chord_down + notes_track([50])])))
    assert n.pitch.tolist() == [60, 64, 67, 50]
    assert n.delta.tolist() == [0.0, 0.0, 0.0, 1.0]


def test_frequency_is_equal_tempered_and_inverted_by_pitch_of():
    assert midi.frequency(69) == pytest.approx(440.0)
    assert midi.frequency(81) == pytest.approx(880.0)
    pitches = np.arange(128)
    assert midi.pitch_of(midi.frequency(pitches)).tolist() == pitches.tolist()


def test_each_midi_pitch_has_the_same_frequency_bits_on_every_cpu():
    """The stored frequencies feed the normalization and data/prepared's DVC hash; numpy's vectorized
    power gives E6 1318.5102276514795 on an AVX-512 machine and ...797 on AVX2, which changed that hash.
    Each of the 128 is CPython's scalar float arithmetic, the same everywhere."""
    scalar = [440.0 * 2.0 ** ((p - 69) / 12) for p in range(128)]
    assert midi.frequency(np.arange(128)).tolist() == scalar
    assert midi.frequency(np.int16(88)) == 1318.5102276514797
    assert midi.frequency(np.array([[60, 72]])).shape == (1, 2)
    assert midi.frequency(69.5) == pytest.approx(440.0 * 2 ** (0.5 / 12))  # between pitches: the formula


def test_type0_file_splits_channels_and_gives_notes(tmp_path):
    merged = [On(channel=0, note=60, velocity=64), On(channel=1, note=40, velocity=64),
              Off(channel=0, note=60, time=480), Off(channel=1, note=40), On(channel=0, note=62, velocity=64),
              Off(channel=0, note=62, time=480)]
    n = extract_notes(write(tmp_path, "type0.mid", smf([merged], fmt=0)))
    assert n.pitch.tolist() == [60, 62]


def test_type2_file_gives_notes(tmp_path):
    n = extract_notes(write(tmp_path, "type2.mid", smf([notes_track([60, 62]), notes_track([70])], fmt=2)))
    assert n.pitch.tolist() == [60, 62]


GOOD = smf([notes_track([60, 62, 64])])


@pytest.mark.parametrize(("data", "code"), [
    (b"", "empty"),
    (np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "unreadable"),  # random
    (GOOD[:-7], "unreadable"),                                                # truncated
    (GOOD[:14] + b"MTrk\xff\xff\xff\xff" + GOOD[22:], "unreadable"),          # corrupt chunk length
    (GOOD[:12] + b"\x00\x00" + GOOD[14:], "bad-ticks-per-quarter"),           # tpq 0
    (GOOD[:12] + b"\xe7\x28" + GOOD[14:], "smpte"),                           # -25 fps, 40 ticks/frame
    (b"MThd\x00\x00", "unreadable"),                                          # truncated header
    (smf([notes_track([60], channel=1, program=30)]), "no-piano-track"),
    (smf([[Meta("track_name", name="empty")]]), "no-piano-track"),
])
def test_bad_files_are_rejected_with_a_reason(tmp_path, data, code):
    with pytest.raises(RejectedFile) as err:
        extract_notes(write(tmp_path, "bad.mid", data))
    assert err.value.code == code
    assert "\n" not in str(err.value) and str(err.value)


MAX_DELTA = 0x0FFFFFFF  # the largest delta-time a MIDI variable-length quantity holds


def test_ticks_that_overflow_32_bits_are_rejected_as_tick_overflow(tmp_path):
    # Nine maximal delta-times put the notes at 2.4e9 ticks, past symusic's int32 (-4.47M beats at 480).
    late = [Meta("text", text="wait", time=MAX_DELTA) for _ in range(9)] + notes_track([60, 62])
    with pytest.raises(RejectedFile) as err:
        extract_notes(write(tmp_path, "late.mid", smf([late])))
    assert err.value.code == "tick-overflow"
    assert "overflows 32 bits" in str(err.value) and "\n" not in str(err.value)
    # Seven are 1.88e9 ticks: late but in range, and the onsets stay exact.
    ok = [Meta("text", text="wait", time=MAX_DELTA) for _ in range(7)] + notes_track([60])
    assert extract_notes(write(tmp_path, "ok.mid", smf([ok]))).onset.tolist() == [7 * MAX_DELTA / 480]


@pytest.mark.parametrize("tracks", [
    [[On(note=60, velocity=64), On(note=64, velocity=64, time=480)]],                  # no note-offs at all
    [[On(note=60, velocity=64)], notes_track([50, 52], channel=1, program=40)],       # and a violin track
], ids=["alone", "beside-a-released-violin"])
def test_notes_never_released_are_rejected_as_unreleased_not_as_no_piano_track(tmp_path, tracks):
    with pytest.raises(RejectedFile) as err:
        extract_notes(write(tmp_path, "held.mid", smf(tracks)))
    assert err.value.code == "unreleased-notes"
    assert "never released" in str(err.value)


@pytest.mark.parametrize("tracks", [
    [[Meta("lyrics", text="la", time=10)]],                                           # lyrics make a track
    [[Prog(channel=1, program=40), On(channel=1, note=60, velocity=64)]],             # held, but a violin
    [[On(channel=9, note=36, velocity=64)]],                                          # held, but drums
])
def test_lyrics_and_held_non_piano_notes_stay_no_piano_track(tmp_path, tracks):
    with pytest.raises(RejectedFile) as err:
        extract_notes(write(tmp_path, "other.mid", smf(tracks)))
    assert err.value.code == "no-piano-track"


def test_random_bytes_never_crash_the_extractor(tmp_path):
    rng = np.random.default_rng(0)
    for k in range(200):
        body = rng.integers(0, 256, size=int(rng.integers(0, 3000)), dtype=np.uint8).tobytes()
        data = body if k % 2 else GOOD[:22] + body  # half with a valid header, so the parser goes deeper
        with contextlib.suppress(RejectedFile):
            extract_notes(write(tmp_path, "r.mid", data))


def test_a_200k_note_file_is_extracted_whole_without_a_quadratic_pass(tmp_path):
    n = 200_000
    rng = np.random.default_rng(1)
    write_midi(tmp_path / "big.mid", [TrackNotes(pitch=rng.integers(21, 109, n), onset=np.arange(n) * 0.25,
                                                 duration=np.full(n, 0.25))])
    t0 = time.perf_counter()
    notes = extract_notes(tmp_path / "big.mid")
    # Not a speed check (0.2 s on a quiet machine, over 1 s beside other work): a pass quadratic in the
    # notes would take hours here, so a minute tells the two apart on any machine.
    assert time.perf_counter() - t0 < 60
    assert len(notes) == n


def test_write_midi_round_trips_through_extract_notes(tmp_path):
    path = tmp_path / "out" / "piece.mid"
    track = TrackNotes(pitch=[60, 64, 67, 72], onset=[0.0, 0.5, 0.5, 2.25], duration=[0.5, 1.0, 1.5, 0.75],
                       program=4, name="keys")
    write_midi(path, [track, TrackNotes(pitch=[36], onset=[0.0], duration=[1.0], is_drum=True)], tempo=90)
    n = extract_notes(path)
    assert (n.program, n.name, n.track_index) == (4, "keys", 0)
    assert n.pitch.tolist() == [60, 64, 67, 72]
    assert n.onset.tolist() == [0.0, 0.5, 0.5, 2.25]
    assert n.duration.tolist() == [0.5, 1.0, 1.5, 0.75]
    assert [p.name for p in path.parent.iterdir()] == ["piece.mid"]  # no temp file left behind


def test_programs_from_params_reads_prepare_programs(tmp_path):
    text = (REPO / "params.yaml").read_text().replace(
        "programs: [0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23]", "programs: [0, 19]")
    (tmp_path / "params.yaml").write_text(text)
    assert midi.programs_from_params(tmp_path / "params.yaml") == (0, 19)
    assert midi.programs_from_params(tmp_path / "missing.yaml") == midi.DEFAULT_PROGRAMS


def _dmc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=HANG_GUARD_S)


def test_dmc_notes_prints_the_main_track_as_json(tmp_path):
    path = write(tmp_path, "song.mid", smf([notes_track([60, 62], name="melody")]))
    out = _dmc("notes", str(path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["track"] == {"index": 0, "program": 0, "name": "melody"}
    assert data["notes"] == [{"pitch": 60, "onset": 0.0, "duration": 1.0, "delta": 0.0},
                             {"pitch": 62, "onset": 1.0, "duration": 1.0, "delta": 1.0}]


def running_status_midi(n_notes: int, seed: int = 0) -> bytes:
    """One track of `n_notes` notes, 60 ticks each, in running status (3 bytes an event): the densest
    SMF there is, 6 bytes a note."""
    rng = np.random.default_rng(seed)
    pitch = rng.integers(21, 109, n_notes, dtype=np.uint8)
    events = np.empty((n_notes, 6), dtype=np.uint8)
    events[:, :3] = np.stack([np.zeros_like(pitch), pitch, np.full_like(pitch, 64)], axis=1)  # on, delta 0
    events[:, 3:] = np.stack([np.full_like(pitch, 60), pitch, np.zeros_like(pitch)], axis=1)  # velocity 0
    body = bytearray(events.tobytes())
    body[1:1] = b"\x90"  # the one status byte; every later event reuses it
    body += b"\x00\xff\x2f\x00"
    return (b"MThd" + (6).to_bytes(4, "big") + b"\x00\x00\x00\x01\x01\xe0"
            + b"MTrk" + len(body).to_bytes(4, "big") + bytes(body))


class _CountingSink(io.TextIOBase):
    """stdout that keeps only the byte count and the text's head and tail."""

    def __init__(self) -> None:
        self.size, self.head, self.tail = 0, "", ""

    def write(self, text: str) -> int:
        self.size += len(text)
        self.head = self.head or text
        self.tail = (self.tail + text)[-200:]
        return len(text)


def test_dmc_notes_streams_so_memory_does_not_grow_with_the_json(tmp_path, monkeypatch):
    import tracemalloc

    from pipeline import cli

    n = 100_000
    path = write(tmp_path, "dense.mid", running_status_midi(n))
    sink = _CountingSink()
    monkeypatch.setattr(sys, "stdout", sink)
    tracemalloc.start()
    try:
        assert cli.main(["notes", str(path), "--params", str(tmp_path / "none.yaml")]) == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The JSON is ~7 MB; built whole as a list of dicts and one string it took ~60 MB. Streamed, the peak
    # is the note arrays (~6 MB) and one block of lines.
    assert sink.size > 7_000_000
    assert peak < 12_000_000, f"peak {peak / 1e6:.0f} MB"
    assert sink.head.startswith('{\n "track": {"index": 0, "program": 0, "name": ""},')
    assert sink.tail.endswith('"delta": 0.125}\n ]\n}\n')


def test_dmc_notes_json_parses_whole_across_write_blocks(tmp_path):
    n = 25_000  # more than two blocks of _NOTES_PER_WRITE
    out = _dmc("notes", str(write(tmp_path, "dense.mid", running_status_midi(n))), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    notes = json.loads(out.stdout)["notes"]
    assert len(notes) == n and n > 2 * midi._NOTES_PER_WRITE
    assert notes[-1]["onset"] == (n - 1) * 0.125 and {x["duration"] for x in notes} == {0.125}


def test_dmc_notes_on_a_rejected_file_exits_2_with_one_line(tmp_path):
    out = _dmc("notes", str(write(tmp_path, "empty.mid", b"")), cwd=tmp_path)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.strip().count("\n") == 0 and "empty file" in out.stderr
