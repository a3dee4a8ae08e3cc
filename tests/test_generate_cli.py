"""`dmc generate`: what it writes, and a one-line error (exit 2, nothing written) for each bad input."""

from __future__ import annotations

from pathlib import Path

import music21
import pytest
from test_sampling import write_checkpoint

from pipeline import midi
from pipeline.cli import main
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
    from pipeline import pretrained

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pretrained, "WEIGHTS", tmp_path / "no-shipped-models")  # else bach composes
    assert generate("out") == 2
    assert "dvc repro train" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_a_model_is_refused(tmp_path, capsys):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint at all")
    assert generate(tmp_path / "out", "--checkpoint", bad) == 2
    assert "not a compatible trained model" in one_line_error(capsys)
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
