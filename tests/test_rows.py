"""Multi-row generation (pipeline/compose/rows.py): kept rows come back exactly, long pieces stay aligned at
the seams, prompts continue every row, and each bad request is a one-line error. The model is a random
tiny U-Net of four rows (`satb_project` in conftest.py); the music is the chorales as four voices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SATB
from test_sampling import write_checkpoint

from pipeline.cli import main
from pipeline.compose import rows as row_path
from pipeline.compose.decode import TICKS_PER_QUARTER
from pipeline.compose.generate import generate_files
from pipeline.compose.options import GenerateOptions
from pipeline.compose.sampler import Sampler
from pipeline.data import midi
from pipeline.data.encoding import Encoding
from pipeline.data.instruments import extract_rows, groups_of
from pipeline.data.prepared import load_stats
from pipeline.data.rows import RowNotes
from pipeline.errors import DmcError
from pipeline.model.unet import load_trained


@pytest.fixture(scope="module")
def model(satb_project):
    net, stats, diffusion_kwargs = load_trained(satb_project / "models" / "model.pt", "cpu")
    encoding = Encoding.from_stats(stats)
    sampler = Sampler("ddim", 4)
    return net, sampler.diffusion(diffusion_kwargs, encoding), sampler, encoding, stats


@pytest.fixture(scope="module")
def chorale(satb_project) -> Path:
    """A chorale whose soprano needs more than one 32-note window."""
    files = sorted((satb_project / "data" / "raw" / "bach-satb").glob("*.mid"))
    return next(f for f in files if len(extract_rows(f, groups_of(SATB))[0]) > 48)


def ticks(notes) -> list[tuple[int, int, int]]:
    """(pitch, onset, duration) in ticks, in (onset, pitch) order."""
    onset = np.rint(np.asarray(notes.onset) * TICKS_PER_QUARTER).tolist()
    rows = zip(np.asarray(notes.pitch).tolist(), onset,
               np.rint(np.asarray(notes.duration) * TICKS_PER_QUARTER).tolist(), strict=True)
    return sorted((int(p), int(o), int(d)) for p, o, d in rows)


def written_rows(path: Path) -> list:
    return extract_rows(path, groups_of(SATB))


def options(**kw) -> GenerateOptions:
    return GenerateOptions(sampler="ddim", steps=4, device="cpu", progress=False, **kw)


def test_a_kept_soprano_comes_back_note_for_note_over_several_windows(satb_project, chorale, tmp_path):
    summary = generate_files(tmp_path, options(n=2, prompt=chorale, keep=("soprano",)),
                             satb_project / "models" / "model.pt")
    source = written_rows(chorale)
    for name in ("sample_000.mid", "sample_001.mid"):
        soprano, *others = written_rows(tmp_path / name)
        assert ticks(soprano) == ticks(source[0])  # every kept note exactly as it was, for its whole length
        last = source[0].onset.max()
        for row in others:
            assert row is not None and len(row) > 10
            assert row.onset.max() <= last + 1e-9  # the piece ends with the melody
            assert row.onset.max() > last - 8  # and every voice sings to its end
    assert summary["notes_per_piece"] == len(source[0])


def test_two_kept_parts_come_back_exactly_and_the_other_two_are_generated(satb_project, chorale, tmp_path):
    generate_files(tmp_path, options(n=1, prompt=chorale, keep=("soprano", "bass")),
                   satb_project / "models" / "model.pt")
    source, out = written_rows(chorale), written_rows(tmp_path / "sample_000.mid")
    assert ticks(out[0]) == ticks(source[0]) and ticks(out[3]) == ticks(source[3])
    assert ticks(out[1]) != ticks(source[1]) and len(out[1]) > 0 and len(out[2]) > 0


def test_a_one_track_melody_is_the_kept_part_whatever_its_track_is_called(satb_project, chorale, tmp_path):
    soprano = written_rows(chorale)[0]
    midi.write_midi(tmp_path / "tune.mid", [midi.TrackNotes(soprano.pitch, soprano.onset, soprano.duration,
                                                            name="Melody")])
    generate_files(tmp_path / "out", options(n=1, prompt=tmp_path / "tune.mid", keep=("soprano",)),
                   satb_project / "models" / "model.pt")
    assert ticks(written_rows(tmp_path / "out" / "sample_000.mid")[0]) == ticks(soprano)


def test_a_long_multi_row_piece_has_the_asked_length_and_its_rows_stay_aligned(model):
    net, diffusion, sampler, encoding, _ = model
    (batch,) = list(row_path.generate_rows(net, diffusion, sampler, encoding, 3, 4, 32, 100, batch_size=3))
    (again,) = list(row_path.generate_rows(net, diffusion, sampler, encoding, 3, 4, 32, 100, batch_size=3))
    assert len(batch) == 3
    for piece, same in zip(batch, again, strict=True):
        counts = [len(r) for r in piece]
        assert max(counts) == 100 and min(counts) > 0  # the busiest row holds the asked 100 notes
        end = max(float(r.onset.max()) for r in piece)
        assert min(float(r.onset.min()) for r in piece) == 0.0
        for row, twin in zip(piece, same, strict=True):
            assert np.all(np.diff(row.onset) >= 0)  # windows append in time, never before a seam
            assert row.onset.max() > end / 2  # every row plays on through the later windows
            assert np.array_equal(row.pitch, twin.pitch) and np.array_equal(row.onset, twin.onset)  # seeded


def test_regular_rows_stay_regular_across_the_seams(model):
    """A denoiser whose x_0 estimate is always the same pattern (each row a note every d_h beats, at one
    pitch) must give a long piece that is that pattern exactly: a seam that lost, doubled or shifted a
    note, or moved one row against another, would break a row's spacing or the rows' common end."""
    _, diffusion, _, encoding, _ = model
    spacing, pitch = np.array([1.0, 0.5, 0.5, 2.0]), np.array([72, 65, 60, 48])
    raw = np.stack([np.repeat(midi.frequency(pitch)[:, None], 32, 1), np.repeat(spacing[:, None], 32, 1),
                    np.repeat(spacing[:, None], 32, 1)])
    target = torch.as_tensor(encoding.encode(raw[None]), dtype=torch.float32)

    def regular(x, t):
        return diffusion.output_for(target.expand_as(x), x, t)

    sampler = Sampler("ddim", 4, guard="clip")
    diffusion = sampler.diffusion(diffusion.config, encoding)
    (batch,) = list(row_path.generate_rows(regular, diffusion, sampler, encoding, 2, 4, 32, 150,
                                           batch_size=2))
    for piece in batch:
        counts = [len(r) for r in piece]  # 150 notes in the busiest rows, 75 beats (to a rounding at the end)
        assert max(counts) == 150 and np.abs(np.subtract(counts, [75, 150, 150, 37])).max() <= 1
        for row, step, p in zip(piece, spacing, pitch, strict=True):
            assert np.allclose(np.diff(row.onset), step, atol=0.02) and set(row.pitch.tolist()) == {p}
        assert np.allclose([r.onset[0] for r in piece], [0.5, 0.0, 0.0, 1.5], atol=0.02)  # one time axis


def test_a_model_whose_windows_never_advance_in_time_is_stopped_with_a_one_line_error(model):
    """Every delta 0: no window moves the piece on, so after its allowance of windows generation stops."""
    _, diffusion, _, encoding, _ = model
    raw = np.stack([np.full((4, 32), midi.frequency(60)), np.ones((4, 32)), np.zeros((4, 32))])
    target = torch.as_tensor(encoding.encode(raw[None]), dtype=torch.float32)
    sampler = Sampler("ddim", 2, guard="clip")
    diffusion = sampler.diffusion(diffusion.config, encoding)

    def stuck(x, t):
        return diffusion.output_for(target.expand_as(x), x, t)

    with pytest.raises(DmcError, match=r"after \d+ windows a piece is still unfinished") as err:
        list(row_path.generate_rows(stuck, diffusion, sampler, encoding, 1, 4, 32, 100))
    assert "\n" not in str(err.value)


class FixedWindow:
    """A diffusion process whose every window comes out as `x` [C, H, W]: the generation path's decoding
    and alignment of a window, without a network."""

    timesteps = 1

    def __init__(self, x: np.ndarray):
        self.x = torch.as_tensor(x, dtype=torch.float32)

    def denoise_steps(self, model, x, *args):
        yield self.x.expand(x.shape).clone()


def test_a_windows_rows_share_one_origin_and_end_where_the_first_row_ends():
    encoding = Encoding(lo=(27.5, 0.0, 0.0), hi=(4186.0, 4.0, 4.0))
    raw = np.zeros((3, 2, 8))
    raw[0] = 440.0
    raw[1] = 1.0
    raw[2, 0] = [0.5] + [1.0] * 7  # row 0: onsets 0.5, 1.5, ..., 7.5
    raw[2, 1] = [1.0] + [0.5] * 7  # row 1: onsets 1.0, 1.5, ..., 4.5
    x = encoding.encode(raw[None], axis=1)[0]
    ((top, bottom),), = row_path.generate_rows(None, FixedWindow(x), Sampler("ddim", 1), encoding, 1, 2, 8, 8)
    assert top.onset.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]  # shifted by the shared 0.5, cut at 4.0
    assert bottom.onset.tolist() == np.arange(0.5, 4.01, 0.5).tolist()
    assert (top.pitch == 69).all() and (bottom.duration == 1.0).all()


def test_a_window_re_reads_every_rows_notes_on_one_time_axis(satb_project, chorale):
    """The seam: notes given to a window from `start` are encoded with deltas from that start, and the
    positions after them decode back onto the same beats, in every row."""
    encoding = Encoding.from_stats(load_stats(satb_project / "data" / "prepared"))
    rows = [RowNotes.of(r.pitch, r.onset, r.duration) for r in written_rows(chorale)]
    start = row_path.window_start([r.where(r.onset <= 20.0) for r in rows], 16, 0.0)
    window = [r.where(r.onset >= start).where(np.arange((r.onset >= start).sum()) < 32) for r in rows]
    known, mask = row_path.encode_given(window, start, 32, encoding)
    assert mask.sum(1).tolist() == [len(w) for w in window]
    head = [w.where(np.arange(len(w)) < 10) for w in window]  # the first 10 notes given, the rest decoded
    decoded = row_path.decode_new(known, head, start, encoding)
    for w, new in zip(window, decoded, strict=True):
        k = len(w) - 10
        assert np.allclose(new.onset[:k], w.onset[10:], atol=1e-3)
        assert new.pitch[:k].tolist() == w.pitch[10:].tolist()


def test_a_prompt_continues_every_row_from_its_first_notes(satb_project, chorale, tmp_path):
    summary = generate_files(tmp_path, options(n=1, prompt=chorale, prompt_notes=12, length=40),
                             satb_project / "models" / "model.pt")
    source, out = written_rows(chorale), written_rows(tmp_path / "sample_000.mid")
    origin = min(r.onset.min() for r in source)
    end = min(r.onset[11] for r in source) - origin  # where the busiest row has its 12th note
    for s, o in zip(source, out, strict=True):
        given = [n for n in ticks(s) if n[1] <= round((end + origin) * TICKS_PER_QUARTER)]
        shift = round(origin * TICKS_PER_QUARTER)
        assert [n for n in ticks(o) if n[1] <= round(end * TICKS_PER_QUARTER)] == \
            [(p, t - shift, d) for p, t, d in given]
    assert summary["notes_per_piece"] == 40 and all(o.onset.max() > end for o in out)  # and then goes on


def test_many_pieces_are_drawn_and_written_a_batch_at_a_time(satb_project, tmp_path, monkeypatch):
    seen = []
    real = row_path.generate_rows

    def spy(*args, **kwargs):
        for batch in real(*args, **kwargs):
            seen.append(len(batch))
            assert len(list(tmp_path.glob("sample_*.mid"))) == 0  # files arrive only at the end
            yield batch

    monkeypatch.setattr("pipeline.compose.generate.generate_rows", spy)
    summary = generate_files(tmp_path, options(n=5, batch_size=2, length=32),
                             satb_project / "models" / "model.pt")
    assert seen == [2, 2, 1] and len(list(tmp_path.glob("sample_*.mid"))) == 5
    assert summary["pieces_per_s"] > 0


def write_parts(path: Path, names: list[str]) -> Path:
    tracks = [midi.TrackNotes(np.array([60, 62, 64]), np.array([0.0, 1.0, 2.0]), np.ones(3), name=n)
              for n in names]
    midi.write_midi(path, tracks)
    return path


@pytest.mark.parametrize(("args", "message"), [
    (["--keep", "soprano", "--prompt", "{lower}"], "has no soprano track (found: alto, tenor, bass)"),
    (["--keep", "soprano"], "--keep needs --prompt"),
    (["--keep", "melody", "--prompt", "{chorale}"], "'melody' is not one of the model's instrument groups"),
    (["--keep", "soprano,alto,tenor,bass", "--prompt", "{chorale}"], "nothing is left to generate"),
    (["--keep", "soprano", "--prompt", "{chorale}", "--length", "20"], "--length 20: the prompt's soprano"),
])
def test_bad_harmonization_requests_are_one_line_errors(args, message, satb_project, chorale, tmp_path,
                                                        capsys):
    lower = write_parts(tmp_path / "lower.mid", ["Alto", "Tenor", "Bass"])
    args = [a.format(lower=lower, chorale=chorale) for a in args]
    out = tmp_path / "out"
    code = main(["generate", str(out), "--model", str(satb_project / "models" / "model.pt"), "--quiet",
                 "--device", "cpu", "--steps", "2", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_keeping_a_part_of_a_one_row_model_is_refused(chorale, tmp_path, capsys):
    checkpoint = write_checkpoint(tmp_path / "piano.pt")
    code = main(["generate", str(tmp_path / "out"), "--model", str(checkpoint), "--quiet", "--device", "cpu",
                 "--keep", "soprano", "--prompt", str(chorale)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "the model has one row (piano)" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_the_cli_harmonizes_a_melody(satb_project, chorale, tmp_path, capsys):
    code = main(["generate", str(tmp_path / "out"), "--model", str(satb_project / "models" / "model.pt"),
                 "--prompt", str(chorale), "--keep", "soprano", "--n", "1", "--steps", "2", "--quiet",
                 "--device", "cpu", "--plot"])
    assert code == 0 and "pieces/s" in capsys.readouterr().out
    assert ticks(written_rows(tmp_path / "out" / "sample_000.mid")[0]) == ticks(written_rows(chorale)[0])
    assert (tmp_path / "out" / "sample_000.png").is_file()
