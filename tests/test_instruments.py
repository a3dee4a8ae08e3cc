"""Multi-instrument mode: groups, one main track per group, time-aligned rows, masks, decoding and
evaluation of several rows (pipeline/data/instruments.py and the multi-row paths of segments, sampling,
baselines and metrics)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import symusic
from conftest import PREPARED_SPLIT, repo_params

from pipeline.compose.write import programs_for
from pipeline.data import instruments
from pipeline.data.encoding import FEATURES, Encoding
from pipeline.data.instruments import GROUPS, extract_rows, file_windows, groups_of, window_spans
from pipeline.data.midi import Notes, RejectedFile, TrackNotes, frequency, write_midi
from pipeline.data.prepared import load_mask, load_split, load_stats, write_prepared
from pipeline.data.segments import PrepareConfig
from pipeline.errors import DmcError
from pipeline.evaluate import pieces
from pipeline.evaluate.baselines import MarkovChain, masked_baseline_sets, shuffle_segments

SATB = ("soprano", "alto", "tenor", "bass")
N_SATB = 6


def row(onset, pitch=None, duration=None, program: int = 0) -> Notes:
    onset = np.asarray(onset, dtype=np.float64)
    pitch = np.full(len(onset), 60, dtype=np.int16) if pitch is None else np.asarray(pitch, dtype=np.int16)
    duration = np.full(len(onset), 0.5) if duration is None else np.asarray(duration, dtype=np.float64)
    return Notes(0, program, "", 480, pitch, onset, duration, np.diff(onset, prepend=onset[:1]))


def track(n: int, pitch: int, program: int = 0, name: str = "", is_drum: bool = False, step: float = 0.5):
    onset = np.arange(n) * step
    return TrackNotes(np.full(n, pitch), onset, np.full(n, step), program=program, is_drum=is_drum, name=name)


@pytest.fixture(scope="module")
def satb_dir(tmp_path_factory) -> Path:
    from pipeline.data.datasets import bach_satb

    params = repo_params()
    params["prepare"]["n_jobs"] = 1
    return bach_satb.fetch(tmp_path_factory.mktemp("satb"), params, limit=N_SATB)


@pytest.fixture(scope="module")
def satb_prepared(satb_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared-satb") / "prepared"
    files = sorted(p.name for p in satb_dir.glob("*.mid"))
    write_prepared(out, "bach-satb", satb_dir, files,
                   PrepareConfig(seq_len=32, split=PREPARED_SPLIT, instruments=SATB, min_instruments=4))
    return out


# -- groups and extraction ----------------------------------------------------------------------------


def test_each_group_takes_its_main_track_by_program_drum_flag_or_name(tmp_path):
    path = tmp_path / "band.mid"
    write_midi(path, [track(10, 60, program=1, name="Piano 2"), track(30, 64, program=0, name="Keys"),
                      track(20, 36, program=33, name="Fretless"), track(15, 38, is_drum=True, name="Kit"),
                      track(25, 72, program=0, name="Violin"), track(5, 50, program=57, name="")])
    rows = extract_rows(path, groups_of(["piano", "bass", "drums", "strings", "guitar"]))
    piano, bass, drums, strings, guitar = rows
    assert (len(piano), piano.name) == (30, "Keys")  # the piano track with most notes
    assert (len(bass), bass.program) == (20, 33)
    assert (len(drums), drums.name) == (15, "Kit")
    assert (len(strings), strings.name, strings.program) == (25, "Violin", 0)  # its name, not program 0
    assert guitar is None
    assert np.allclose(bass.onset, np.arange(20) * 0.5)
    assert bass.delta[0] == 0 and np.allclose(bass.delta[1:], 0.5)
    with pytest.raises(RejectedFile) as err:
        extract_rows(path, groups_of(["pad"]))
    assert err.value.code == "no-instrument-track"


def test_chorales_as_four_voices_give_one_row_per_voice(satb_dir):
    files = sorted(satb_dir.glob("*.mid"))
    assert len(files) == N_SATB
    score = symusic.Score(str(files[0]))
    assert [t.name for t in score.tracks][-4:] == ["Soprano", "Alto", "Tenor", "Bass"]
    for path in files:
        rows = extract_rows(path, groups_of(SATB))
        assert [r.name for r in rows] == ["Soprano", "Alto", "Tenor", "Bass"]
        mean = [float(r.pitch.mean()) for r in rows]
        assert mean == sorted(mean, reverse=True), (path.name, mean)  # soprano on top, bass at the bottom


def test_unknown_group_and_unreachable_min_instruments_are_one_line_errors():
    params = repo_params()
    params["instruments"] = ["piano", "kazoo"]
    with pytest.raises(DmcError, match="unknown instrument group 'kazoo'"):
        PrepareConfig.from_params(params)
    params["instruments"], params["prepare"]["min_instruments"] = list(SATB), 5
    with pytest.raises(DmcError, match="min_instruments"):
        PrepareConfig.from_params(params)
    params["prepare"]["min_instruments"] = 4
    assert PrepareConfig.from_params(params).multi
    assert not PrepareConfig.from_params(repo_params()).multi


def test_every_group_name_is_its_own_alias_so_written_tracks_are_found_again(tmp_path):
    names = [n for n in GROUPS if n != "drums"]
    path = tmp_path / "all.mid"
    write_midi(path, [track(4, 60, name=n) for n in names] + [track(4, 38, is_drum=True, name="drums")])
    rows = extract_rows(path, groups_of([*names, "drums"]))
    assert [r.name for r in rows] == [*names, "drums"]


# -- time alignment -----------------------------------------------------------------------------------


def test_rows_share_a_span_and_the_first_delta_counts_from_its_start():
    dense = row(np.arange(0, 40, 1.0))  # a note every beat
    sparse = row(np.arange(1, 40, 2.0), pitch=np.arange(1, 40, 2) % 12 + 40)  # every other beat, from 1
    cut = file_windows([dense, sparse, None], seq_len=8)
    # The dense row fills each window: spans [0, 8), [8, 16), ... and the sparse row has 4 notes in each.
    assert cut.mask.sum(axis=2).tolist() == [[8, 4, 0]] * 4
    delta = cut.features[:, 2]
    assert delta[:, 0, 0].tolist() == [0.0] * 4 and delta[:, 1, 0].tolist() == [1.0] * 4
    for s in range(4):  # the running sum of delta is the onset from the span's start, in every row
        assert np.allclose(np.cumsum(delta[s, 0]) + 8 * s, dense.onset[8 * s:8 * s + 8])
        assert np.allclose(np.cumsum(delta[s, 1, :4]) + 8 * s, sparse.onset[4 * s:4 * s + 4])
    assert np.allclose(cut.features[:, 0, 1, :4], frequency(cut.pitch[:, 1, :4]))
    assert (cut.pitch[:, 1, 4:] == 0).all() and (cut.features[:, :, 2] == 0).all()  # padding, absent row


@pytest.mark.parametrize("seed", range(5))
def test_spans_tile_the_piece_and_no_row_overflows(seed):
    rng = np.random.default_rng(seed)
    onsets = [np.sort(rng.choice(np.arange(0, 200, 0.25), size=n, replace=False)) for n in (150, 60, 300)]
    spans = window_spans(onsets, seq_len=16)
    assert spans and all(s.count.max() <= 16 for s in spans)
    assert all(a.end == b.start for a, b in zip(spans, spans[1:], strict=False))  # hop 0: back to back
    for s in spans:
        assert 16 in s.count  # the busiest row ends the span full
        for o, first, count in zip(onsets, s.first, s.count, strict=True):
            inside = o[(o >= s.start) & (o < s.end)]
            assert np.array_equal(inside, o[first:first + count])  # a row keeps every note of its span


def test_too_few_groups_too_short_and_threshold_rejects():
    notes = row(np.arange(40.0))
    with pytest.raises(RejectedFile) as err:
        file_windows([notes, None], seq_len=8, min_instruments=2)
    assert err.value.code == "too-few-instruments"
    with pytest.raises(RejectedFile) as err:
        file_windows([row(np.arange(5.0)), None], seq_len=8)
    assert err.value.code == "too-short"
    late = row(np.r_[np.arange(4.0), 40.0 + np.arange(28.0)])  # a 37-beat rest inside the first span
    cut = file_windows([late, None], seq_len=8, max_delta=16.0)
    assert cut.dropped == 1 and cut.windows.tolist() == [1, 2]
    with pytest.raises(RejectedFile) as err:
        file_windows([late, None], seq_len=8, max_delta=16.0, policy="file")
    assert err.value.code == "threshold"


# -- prepared data ------------------------------------------------------------------------------------


def test_default_piano_prepare_writes_no_mask_and_no_multi_stats(prepared_dir):
    assert pq.read_schema(prepared_dir / "segments.parquet").names == [
        "dataset", "file", "segment", "split", "pitch", *FEATURES]
    stats = load_stats(prepared_dir)
    assert stats["instruments"] == ["piano"]
    assert "row_programs" not in stats and "min_instruments" not in stats
    assert load_mask(prepared_dir, "train").shape == (len(load_split(prepared_dir, "train")), 1, 32)
    assert load_mask(prepared_dir, "train").all()


def test_four_voice_prepare_writes_aligned_rows_with_a_mask(satb_prepared, satb_dir):
    stats = load_stats(satb_prepared)
    assert stats["instruments"] == list(SATB) and stats["row_programs"] == [0, 0, 0, 0]
    x, mask = load_split(satb_prepared, "train"), load_mask(satb_prepared, "train")
    assert x.shape[1:] == (3, 4, 32) and mask.shape == (len(x), 4, 32)
    real = mask.astype(bool)
    assert (mask.sum(axis=2).max(axis=1) == 32).all()  # the busiest row of every segment is full
    assert (np.diff(mask.astype(int), axis=2) <= 0).all()  # padding is a suffix of each row
    assert (x * ~real[:, None] == 0).all()
    values = x.transpose(1, 0, 2, 3)[:, real]  # [3, real notes]: min-max counts real notes only
    assert np.allclose(values.min(axis=1), 0.0) and np.allclose(values.max(axis=1), 1.0)
    # Row 0 of segment 0 is the soprano's first 32-note span of its file, exactly.
    table = pq.read_table(satb_prepared / "segments.parquet", filters=[("split", "==", "train")])
    first = table.slice(0, 1).to_pylist()[0]
    soprano = extract_rows(satb_dir / first["file"], groups_of(SATB))[0]
    n = int(mask[0, 0].sum())
    raw = Encoding.from_stats(stats).decode(x[:1], axis=1)[0]
    start = min(r.onset[0] for r in extract_rows(satb_dir / first["file"], groups_of(SATB)))
    assert first["segment"] == 0
    assert np.allclose(np.cumsum(raw[2, 0, :n]) + start, soprano.onset[:n], atol=1e-4)
    assert np.array_equal(np.asarray(first["pitch"][:n]), soprano.pitch[:n])


# -- decoding, baselines, metrics ---------------------------------------------------------------------


def test_masked_baselines_move_and_count_only_real_notes(satb_prepared):
    x, mask = load_split(satb_prepared, "train"), load_mask(satb_prepared, "train")
    real = mask.astype(bool)
    shuffled = shuffle_segments(x, np.random.default_rng(0), mask)
    assert (shuffled * ~real[:, None] == 0).all()
    for f in range(3):
        assert np.array_equal(np.sort(np.where(real, shuffled[:, f], -1), axis=-1),
                              np.sort(np.where(real, x[:, f], -1), axis=-1))
    pitch = np.array([[60, 62, 0, 0], [60, 62, 64, 0]])
    chain = MarkovChain.fit(pitch, np.ones((2, 4)), np.ones((2, 4)), mask=pitch > 0)
    assert sorted(chain.tokens[:, 0].tolist()) == [60, 62, 64]  # the padding's pitch 0 is no token
    sets = masked_baseline_sets(x, mask, Encoding.from_stats(load_stats(satb_prepared)), 4,
                                np.random.default_rng(0))
    assert all(np.array_equal(m, sets["real"][1]) for _, m in sets.values())
    assert (sets["markov"][0] * ~sets["real"][1][:, None].astype(bool) == 0).all()


def test_segment_rows_mix_back_to_the_masked_segment_piece(satb_prepared):
    encoding = Encoding.from_stats(load_stats(satb_prepared))
    x, mask = load_split(satb_prepared, "test"), load_mask(satb_prepared, "test")
    merged = pieces.pieces_from_segments(x, encoding, mask)
    for rows, piece, m in zip(pieces.segment_rows(x, encoding, mask), merged, mask, strict=True):
        assert [len(r) for r in rows] == m.sum(axis=1).tolist()
        together = pieces.mix(rows)
        assert np.array_equal(together.pitch, piece.pitch) and np.allclose(together.onset, piece.onset)


def test_row_programs_take_the_most_common_program_or_the_groups_own():
    groups = groups_of(["piano", "bass", "drums"])
    programs = np.array([[1, 33, -1], [1, 34, -1], [0, 34, -1]])
    assert instruments.row_programs(groups, programs) == [1, 34, 0]
    assert json.dumps(instruments.row_programs(groups, np.zeros((0, 3), dtype=int))) == "[0, 33, 0]"


def test_sampled_rows_are_written_with_their_programs_and_drums_on_the_drum_channel(tmp_path):
    stats = {"instruments": ["piano", "drums"], "row_programs": [1, 0]}
    assert programs_for(stats, 2) == [(1, False, "piano"), (0, True, "drums")]
    single = {"instruments": ["piano"], "programs": list(range(16))}  # prepare.programs, not per row
    assert programs_for(single, 1) == [(0, False, "piano")]
    path = tmp_path / "band.mid"
    write_midi(path, [track(4, 60, program=p, name=n, is_drum=d)
                      for p, d, n in programs_for(stats, 2)])
    score = symusic.Score(str(path))
    assert [(t.name, t.program, t.is_drum) for t in score.tracks] == [("piano", 1, False), ("drums", 0, True)]
    piano, drums = extract_rows(path, groups_of(["piano", "drums"]))
    assert piano.program == 1 and len(drums) == 4


def test_training_loss_counts_only_real_notes(satb_prepared, prepared_dir):
    import torch

    from pipeline.model import train_data, training
    from pipeline.model.diffusion import GaussianDiffusion

    data = train_data.load_data(satb_prepared)
    assert np.array_equal(data.train_mask, load_mask(satb_prepared, "train"))
    assert train_data.load_data(prepared_dir).train_mask is None  # single piano: nothing to mask
    diffusion = GaussianDiffusion(timesteps=20)
    x0 = torch.from_numpy(data.val)
    mask = torch.from_numpy(data.val_mask)[:, None]

    def zero(x, t):  # predicts no noise: the loss is the mean square of the noise where it counts
        return torch.zeros_like(x)

    got = training.validation_loss(zero, diffusion, x0, len(x0), 0, contextlib.nullcontext(), mask)
    gen = torch.Generator().manual_seed(0)  # validation_loss's noise, replayed
    torch.randint(0, 20, (len(x0),), generator=gen)  # `loss` draws the timesteps first
    noise = torch.randn(x0.shape, generator=gen)
    real = mask.expand_as(x0).bool()
    assert got == pytest.approx(float((noise[real] ** 2).mean()), rel=1e-5)
    assert got != pytest.approx(float((noise ** 2).mean()), rel=1e-3)
