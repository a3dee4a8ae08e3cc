"""`dmc generate`: what it writes, and a one-line error (exit 2, nothing written) for each bad input."""

from __future__ import annotations

from pathlib import Path

import music21
import pytest
from test_sampling import write_checkpoint

from pipeline.cli import main
from pipeline.data import midi
from pipeline.errors import DmcError

MUSIC21 = Path(music21.__file__).parent



@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("model") / "model.pt")


def generate(*args: str | Path) -> int:
    device = [] if "--device" in args else ["--device", "cpu"]
    return main(["generate", *map(str, args), "--quiet", *device])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("dmc: error: ") and "\n" not in err, err
    return err


def test_more_steps_than_timesteps_runs_them_all_with_a_one_line_notice(checkpoint, tmp_path, capsys):
    assert generate(tmp_path / "out", "--n", 1, "--steps", 5000, "--checkpoint", checkpoint) == 0
    err = capsys.readouterr().err.strip()
    assert err == "notice: --steps 5000 exceeds the model's 20 diffusion timesteps; running 20"


@pytest.mark.parametrize("sampler", ["dpm++", "unipc"])
def test_the_few_step_samplers_and_the_data_grid_write_pieces(sampler, checkpoint, tmp_path):
    out = tmp_path / "out"
    assert generate(out, "--n", 2, "--sampler", sampler, "--steps", 4, "--guard", "dynamic",
                    "--chord-snap", "0.1", "--quantize", "auto", "--checkpoint", checkpoint) == 0
    assert sorted(p.name for p in out.iterdir()) == ["sample_000.mid", "sample_001.mid"]


def test_generate_writes_n_pieces_with_piano_rolls(checkpoint, tmp_path, capsys):
    out = tmp_path / "new" / "pieces"
    assert generate(out, "--n", 3, "--batch-size", 2, "--steps", 3, "--plot", "--checkpoint", checkpoint,
                    "--quantize", "1/16", "--tempo", 90) == 0
    expected = [f"sample_00{i}.{ext}" for i in range(3) for ext in ("mid", "png")]
    assert sorted(p.name for p in out.iterdir()) == expected
    notes = midi.extract_notes(out / "sample_000.mid")
    assert len(notes) > 0 and all((notes.onset * 4) % 1 == 0)  # on the sixteenth grid
    assert "3 pieces" in capsys.readouterr().out


def test_generate_finds_the_projects_model_from_a_subfolder(checkpoint, tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(checkpoint.read_bytes())
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert generate("out", "--n", 1, "--steps", 2) == 0
    assert (tmp_path / "sub" / "out" / "sample_000.mid").is_file()


def test_no_trained_model_says_which_command_trains_one(tmp_path, monkeypatch, capsys):
    from pipeline.compose import shipped

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(shipped, "WEIGHTS", tmp_path / "no-shipped-models")  # else bach composes
    assert generate("out") == 2
    assert "dvc repro train" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b"a text file\nof two lines\n", b""])
def test_a_file_that_is_not_a_model_is_refused(content, tmp_path, capsys):
    bad = tmp_path / "model.pt"
    bad.write_bytes(content)
    assert generate(tmp_path / "out", "--checkpoint", bad) == 2
    err = one_line_error(capsys)
    assert "not a readable checkpoint" in err and "weights_only" not in err  # no advice to unpickle code
    assert not (tmp_path / "out").exists()


def flip_bytes(path: Path) -> None:
    """XOR 32 bytes at 20%, 35% and 50% of the file: the fault campaign's damage."""
    data = bytearray(path.read_bytes())
    for at in (0.20, 0.35, 0.50):
        start = int(len(data) * at)
        data[start:start + 32] = bytes(b ^ 0xFF for b in data[start:start + 32])
    path.write_bytes(bytes(data))


def test_a_model_with_flipped_bytes_is_refused_not_sampled(checkpoint, tmp_path, capsys):
    damaged = tmp_path / "model.pt"
    damaged.write_bytes(checkpoint.read_bytes())
    flip_bytes(damaged)
    assert generate(tmp_path / "out", "--n", 1, "--steps", 2, "--checkpoint", damaged) == 2
    err = one_line_error(capsys)
    assert str(damaged) in err and "damaged" in err and "dvc repro -f train" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--n", "0"], "--n must be positive"),
    (["--n", "-3"], "--n must be positive"),
    (["--length", "0"], "--length must be positive"),
    (["--length", "-128"], "--length must be positive"),
    (["--sampler", "euler"], "unknown sampler 'euler'"),
    (["--steps", "0"], "--steps must be positive"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--audio", "flac"], "--audio must be one of"),
    (["--quantize", "1/7"], "--quantize"),
    (["--guard", "soft"], "--guard must be one of clip, step_clip, dynamic, none"),
    (["--chord-snap", "-1"], "--chord-snap must be >= 0"),
    (["--device", "tpu9"], "--device"),
])
def test_bad_options_are_refused_in_one_line(args, message, checkpoint, tmp_path, capsys):
    assert generate(tmp_path / "out", "--checkpoint", checkpoint, *args) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_an_unwritable_output_folder_is_refused(checkpoint, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the folder should go")
    assert generate(blocker / "out", "--n", 1, "--steps", 2, "--checkpoint", checkpoint) == 2
    assert "cannot write to output folder" in one_line_error(capsys)


@pytest.mark.parametrize(("prompt", "message"), [
    ("random.mid", "not a MIDI file"),
    ("missing.mid", "no such file"),
    (MUSIC21 / "omr" / "k525short.mid", "no track with a program"),  # strings only, no piano
])
def test_an_unusable_prompt_is_refused(prompt, message, checkpoint, tmp_path, capsys):
    (tmp_path / "random.mid").write_bytes(bytes(range(256)) * 4)
    assert generate(tmp_path / "out", "--prompt", tmp_path / prompt, "--checkpoint", checkpoint) == 2
    err = one_line_error(capsys)
    assert "--prompt" in err and message in err
    assert not (tmp_path / "out").exists()


def test_a_prompt_longer_than_the_window_is_refused(checkpoint, tmp_path, capsys):
    prompt = MUSIC21 / "midi" / "testPrimitive" / "test03.mid"
    out = tmp_path / "out"
    assert generate(out, "--prompt", prompt, "--prompt-notes", 500, "--checkpoint", checkpoint) == 2
    assert "--prompt-notes must be below" in one_line_error(capsys)
    assert not out.exists()


def test_a_failure_midway_leaves_the_output_folder_as_it_was(checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("the user's file")
    real = midi.write_midi
    calls = []

    def failing_second(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise DmcError("disk full (simulated)")
        real(path, *args, **kwargs)

    monkeypatch.setattr(midi, "write_midi", failing_second)
    assert generate(out, "--n", 3, "--steps", 2, "--checkpoint", checkpoint) == 2
    assert "disk full" in one_line_error(capsys)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


# -- all or nothing per output folder ------------------------------------------------------------------


def old_pieces(out: Path, n: int = 3) -> dict[str, bytes]:
    """A folder holding an earlier run's pieces (marked bytes) and a file of the user's."""
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (out / f"sample_{i:03d}.mid").write_bytes(b"old piece %d" % i)
    (out / "mine.txt").write_text("the user's file")
    return {p.name: p.read_bytes() for p in out.iterdir()}


def contents(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def test_a_new_run_replaces_all_pieces_of_the_earlier_one(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    before = old_pieces(out, n=3)
    assert generate(out, "--n", 2, "--steps", 2, "--checkpoint", checkpoint) == 0
    after = contents(out)
    assert sorted(after) == ["mine.txt", "sample_000.mid", "sample_001.mid"]  # no sample_002 of the old run
    assert after["mine.txt"] == before["mine.txt"] and after["sample_000.mid"] != before["sample_000.mid"]
    assert "removed 1 pieces of an earlier run" in capsys.readouterr().err


def test_a_folder_where_a_piece_goes_is_refused_and_the_old_pieces_stay(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    before = old_pieces(out)
    (out / "sample_004.mid").mkdir()
    assert generate(out, "--n", 5, "--steps", 2, "--checkpoint", checkpoint) == 2
    assert "sample_004.mid is a folder" in one_line_error(capsys)
    assert contents(out) == before
    assert sorted(p.name for p in out.iterdir()) == sorted([*before, "sample_004.mid"])  # no temp left


def test_a_replace_failing_half_way_puts_the_old_pieces_back(checkpoint, tmp_path, monkeypatch, capsys):
    import errno
    import os

    out = tmp_path / "out"
    before = old_pieces(out)
    real, calls = os.rename, []

    def rename(src, dst):  # the third new piece cannot be moved in, as an immutable old file would refuse
        if Path(dst).parent == out and Path(src).parent.name.startswith(".dmc-generate-"):
            calls.append(dst)
            if len(calls) == 3:
                raise PermissionError(errno.EPERM, "Operation not permitted", str(dst))
        real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    assert generate(out, "--n", 3, "--steps", 2, "--checkpoint", checkpoint) == 2
    err = one_line_error(capsys)
    assert "sample_002.mid: Operation not permitted" in err and "as it was" in err
    assert contents(out) == before and sorted(p.name for p in out.iterdir()) == sorted(before)


def test_a_full_disk_is_one_line_and_leaves_the_old_pieces(checkpoint, tmp_path, monkeypatch, capsys):
    import errno

    out = tmp_path / "out"
    before = old_pieces(out)
    real, calls = midi.write_midi, []

    def no_space_on_the_second(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, *args, **kwargs)

    monkeypatch.setattr(midi, "write_midi", no_space_on_the_second)
    assert generate(out, "--n", 3, "--steps", 2, "--checkpoint", checkpoint) == 2
    err = one_line_error(capsys)
    assert f"cannot write {out}: No space left on device" in err
    assert contents(out) == before and sorted(p.name for p in out.iterdir()) == sorted(before)


def test_sigterm_half_way_is_one_line_and_leaves_the_old_pieces(checkpoint, tmp_path, monkeypatch, capsys):
    import os
    import signal

    out = tmp_path / "out"
    before = old_pieces(out)
    real = midi.write_midi

    def killed_after_the_first(path, *args, **kwargs):
        real(path, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(midi, "write_midi", killed_after_the_first)
    assert generate(out, "--n", 3, "--steps", 2, "--checkpoint", checkpoint) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip() == "dmc: interrupted; the output folder is as it was"
    assert contents(out) == before and sorted(p.name for p in out.iterdir()) == sorted(before)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # main() put the default back


def test_a_folder_another_generate_writes_to_is_refused(checkpoint, tmp_path, capsys):
    from pipeline.compose.write import LOCK
    from pipeline.files import exclusive_lock

    out = tmp_path / "out"
    before = old_pieces(out)
    with exclusive_lock(out / LOCK, "busy"):  # another writer, as far as the lock can tell
        assert generate(out, "--n", 1, "--steps", 2, "--checkpoint", checkpoint) == 2
    assert "another `dmc generate` is writing there" in one_line_error(capsys)
    assert contents(out) == before and not (out / LOCK).exists()


def dead_pid() -> int:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    return int(done.stdout)


def test_what_a_killed_writer_left_is_swept_or_put_back(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    before = old_pieces(out, n=2)
    pid = dead_pid()
    staging = out / f".dmc-generate-{pid}-abcd1234"  # killed -9 while writing: 1 partial piece
    staging.mkdir()
    (staging / "sample_000.mid").write_bytes(b"partial")
    legacy = out / ".dmc-generate-x1y2z3w4"  # the name before writers put their pid in it
    legacy.mkdir()
    # Killed -9 while moving the new pieces in: both old ones aside, one new one in.
    backup = out / f".dmc-generate-{pid}-efgh5678.old"
    backup.mkdir()
    for name in ("sample_000.mid", "sample_001.mid"):
        (out / name).rename(backup / name)
    (backup / ".complete").touch()
    (out / "sample_000.mid").write_bytes(b"new piece")

    from pipeline.compose.write import _recover

    _recover(out, log=print)
    assert contents(out) == before and sorted(p.name for p in out.iterdir()) == sorted(before)
    lines = capsys.readouterr().out.splitlines()
    assert any("put back 2 files" in line for line in lines)
    assert sum("left by an interrupted generate" in line for line in lines) == 2
    assert generate(out, "--n", 1, "--steps", 2, "--checkpoint", checkpoint) == 0
