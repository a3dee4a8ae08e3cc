"""One common key (`train.key: common`): windows moved onto the white keys for training, pieces moved out of
it at sampling, given notes moved in and back exactly."""

import numpy as np
import pytest
from conftest import PREPARED_SPLIT
from test_sampling import PIANO_MIDI, lattice_stats, quiet, read_notes, write_checkpoint

from pipeline.compose.generate import generate_files
from pipeline.data import keys, midi
from pipeline.data.encoding import Encoding
from pipeline.data.prepared import load_pitches, load_split, write_prepared
from pipeline.data.segments import PrepareConfig
from pipeline.model.train_data import load_data

C_MAJOR = [60, 62, 64, 65, 67, 69, 71, 72]


def test_the_key_estimate_moves_a_scale_onto_the_white_keys():
    assert keys.key_shift(np.array(C_MAJOR)) == 0
    assert keys.key_shift(np.array(C_MAJOR) + 2) == -2  # D major: down a tone
    assert keys.key_shift(np.array(C_MAJOR) - 5) == 5  # G major below: up a fourth
    assert keys.key_shift(np.array([57, 59, 60, 62, 64, 65, 68]) + 3) == -3  # C minor (harmonic A minor + 3)
    # An octave the other way where the move would leave the range, none where neither fits.
    assert keys.fitting(5, 40, 70, 60, 68) == -7 and keys.fitting(5, 60, 70, 40, 68) is None


@pytest.fixture(scope="module")
def prepared(bach_midi_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("key") / "prepared"
    files = sorted(p.name for p in bach_midi_dir.glob("*.mid"))
    write_prepared(folder, "bach", bach_midi_dir, files, PrepareConfig(
        seq_len=32, split=PREPARED_SPLIT, features=("helix", "grid", "symmetric", True)), n_jobs=1)
    return folder


def test_common_key_training_windows_sit_on_the_white_keys(prepared):
    """Chorales in many keys: after the move nearly every note is a white key, each window moved as a
    whole (intervals kept), and the moves are recorded for sampling."""
    plain, common = load_data(prepared, 32), load_data(prepared, 32, key="common")
    encoding = Encoding.from_stats(plain.stats)
    before = midi.pitch_of(encoding.uncode(plain.train)[:, 0])
    after = midi.pitch_of(encoding.uncode(common.train)[:, 0])
    assert keys.WHITE[before % 12].mean() < 0.85 < 0.9 < keys.WHITE[after % 12].mean()
    moves = (after.astype(int) - before).reshape(len(before), -1)
    assert (moves == moves[:, :1]).all() and (moves[:, 0] != 0).any()
    assert np.array_equal(before, load_pitches(prepared, "train"))
    assert common.stats["key"] == "common"
    assert sum(common.stats["key_shifts"]) == len(load_split(prepared, "train"))


def test_a_prompt_is_moved_into_the_common_key_and_back_exactly(tmp_path):
    """A common-key model continues a prompt in the prompt's own key: its notes come back exactly."""
    notes = midi.extract_notes(PIANO_MIDI)
    stats = {**lattice_stats(notes), "key": "common", "key_shifts": [0] * 6 + [1] + [0] * 5}
    checkpoint = write_checkpoint(tmp_path / "model.pt", stats)
    summary = generate_files(tmp_path / "out", quiet(n=2, steps=3, length=64, prompt=PIANO_MIDI,
                                                              prompt_notes=12), checkpoint)
    start = notes.onset[0]
    for name in summary["files"]:
        out = read_notes(tmp_path / "out" / name)
        for p, o, d in zip(notes.pitch[:12], notes.onset[:12], notes.duration[:12], strict=True):
            assert (int(p), round((o - start) * 480), round(d * 480)) in out


def test_pieces_leave_the_common_key_as_often_as_the_data_entered_it():
    stats = {"key_shifts": [0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0, 0]}  # moves of -4 (x3) and 0 (x1)
    rng = np.random.default_rng(0)
    drawn = [keys.draw_shift(stats, rng) for _ in range(400)]
    assert set(drawn) == {4, 0} and 0.65 < np.mean(np.array(drawn) == 4) < 0.85
    assert keys.draw_shift({}, rng) == 0
