"""Shipped models (pipeline/compose/shipped.py, catalog.py): integrity, bfloat16 weights, export from a
finished run, `dmc models`, `dmc generate --model`, the checkout's model winning, and the package data
of a real install.

The shipped `bach` entry in pipeline/weights is real: a model exported from a `dvc exp run` of this
pipeline. The finished runs the export tests need are built here from the repository's own dvc.lock and
metrics, with the hashes of a freshly written checkpoint put in.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import torch
import yaml
from conftest import HANG_GUARD_S, REPO, copy_checkout
from test_sampling import write_checkpoint

from pipeline.cli import main
from pipeline.compose import catalog, shipped
from pipeline.errors import DmcError
from pipeline.files import file_digest
from pipeline.model import unet as model_module
from pipeline.model.checkpoints import write_checkpoint as save_checked
from pipeline.params import parse

SHIPPED = shipped.WEIGHTS / shipped.DEFAULT


def run_dmc(*args: str | Path) -> int:
    return main([*map(str, args)])


def generate(out: str | Path, *args: str | Path) -> int:
    return run_dmc("generate", out, "--n", 1, "--steps", 2, "--quiet", "--device", "cpu", *args)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("dmc: error: ") and "\n" not in err, err
    return err


def notes_of(folder: Path) -> bytes:
    return (folder / "sample_000.mid").read_bytes()


@pytest.fixture()
def shipped_copy(tmp_path: Path) -> Path:
    """A copy of the shipped bach folder to damage."""
    return Path(shutil.copytree(SHIPPED, tmp_path / "bach-copy"))


def finish_run(root: Path, checkpoint: Path) -> Path:
    """Make `root` the checkout of a finished run whose dvc.lock records `checkpoint` as its model:
    the repository's dvc.yaml, params.yaml, dvc.lock and metrics, with this model's md5 put in."""
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    (root / "models").mkdir(exist_ok=True)
    shutil.copy(checkpoint, root / "models" / "model.pt")
    shutil.copytree(REPO / "metrics", root / "metrics", dirs_exist_ok=True)
    md5 = file_digest(root / "models" / "model.pt", "md5")
    lock = parse((REPO / "dvc.lock").read_text())
    stages = lock["stages"]
    for entry in stages["train"]["outs"] + stages["sample"]["deps"]:
        if entry["path"] == "models/model.pt":
            entry["md5"] = md5
    for entry in stages["evaluate"]["outs"]:
        if entry["path"] == "metrics/evaluate.json":
            entry["md5"] = file_digest(root / "metrics" / "evaluate.json", "md5")
    (root / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    return root


@pytest.fixture()
def run_root(tmp_path: Path) -> Path:
    """A finished run in tmp_path/run, trained model included (a tiny U-Net, 20 timesteps)."""
    root = tmp_path / "run"
    root.mkdir()
    return finish_run(root, write_checkpoint(tmp_path / "trained.pt", seed=3))


@pytest.fixture()
def empty_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The cwd is a checkout (dvc.yaml) with no trained model."""
    root = tmp_path / "empty"
    root.mkdir()
    (root / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(root)
    return root


# -- integrity ----------------------------------------------------------------------------------------


def test_the_shipped_default_model_passes_every_check():
    card = shipped.check_shipped(SHIPPED)
    assert card["format"] == shipped.CARD_FORMAT and card["name"] == "bach"
    assert card["files"]["model.pt"] == file_digest(SHIPPED / "model.pt", "sha256")
    assert card["dataset"] == "bach" and card["steps"] > 0
    assert 0 < card["evaluation"]["generated.oa_mean"] <= 1
    assert {"data/manifest.json", "data/prepared"} <= card["data"].keys()
    assert card["retrain"].startswith("dvc exp run ") and f"-S steps={card['steps']}" in card["retrain"]


def test_the_shipped_weights_are_bfloat16_and_load_with_weights_only():
    ckpt = torch.load(SHIPPED / "model.pt", map_location="cpu", weights_only=True)
    floats = [v for v in ckpt["ema"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.bfloat16 for v in floats)
    assert set(ckpt) == {"config", "ema", "stats", "diffusion", "step", "sha256"}


def test_a_flipped_byte_is_refused_in_one_line(shipped_copy, empty_checkout, capsys):
    weights = shipped_copy / "model.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(DmcError, match="sha256 does not match"):
        shipped.resolve_model(str(shipped_copy))
    assert generate("out", "--model", shipped_copy) == 2
    assert "sha256 does not match its card" in one_line_error(capsys)
    assert not (empty_checkout / "out").exists()


def test_a_missing_file_and_a_card_of_another_format_are_refused(shipped_copy):
    card = json.loads((shipped_copy / "card.json").read_text())
    (shipped_copy / "card.json").write_text(json.dumps({**card, "format": shipped.CARD_FORMAT + 1}))
    with pytest.raises(DmcError, match=r"card format 2, this dmc reads format 1") as err:
        shipped.check_shipped(shipped_copy)
    assert "\n" not in str(err.value)
    (shipped_copy / "card.json").write_text(json.dumps(card))
    (shipped_copy / "model.pt").unlink()
    with pytest.raises(DmcError, match="missing"):
        shipped.check_shipped(shipped_copy)


def test_a_card_naming_a_file_outside_its_folder_is_refused(shipped_copy):
    card = json.loads((shipped_copy / "card.json").read_text())
    card["files"]["../secret"] = "0" * 64
    (shipped_copy / "card.json").write_text(json.dumps(card))
    with pytest.raises(DmcError, match="outside the model's folder"):
        shipped.check_shipped(shipped_copy)


def test_weights_the_code_computes_differently_are_refused(shipped_copy, monkeypatch):
    # A code change the state dict cannot see: the time embedding runs at another frequency.
    real = model_module.sinusoidal
    monkeypatch.setattr(model_module, "sinusoidal", lambda positions, dim: real(positions * 2, dim))
    with pytest.raises(DmcError, match="computes something else with these weights") as err:
        shipped.check_shipped(shipped_copy)
    assert "\n" not in str(err.value)


def test_a_config_field_the_code_does_not_know_is_refused(shipped_copy):
    ckpt = torch.load(shipped_copy / "model.pt", weights_only=True)
    ckpt["config"]["dilation"] = 2
    save_checked(shipped_copy / "model.pt", ckpt)
    card = json.loads((shipped_copy / "card.json").read_text())
    card["files"]["model.pt"] = file_digest(shipped_copy / "model.pt", "sha256")
    (shipped_copy / "card.json").write_text(json.dumps(card))
    with pytest.raises(DmcError, match="not a compatible trained model.*dilation"):
        shipped.check_shipped(shipped_copy)


# -- bfloat16 -----------------------------------------------------------------------------------------


def test_bf16_weights_round_trip_into_the_float32_model(tmp_path):
    from pipeline.model.unet import load_trained

    full = torch.load(write_checkpoint(tmp_path / "full.pt", seed=1), weights_only=True)
    bf16 = {**full, "ema": shipped.cast_weights(full["ema"], "bfloat16")}
    save_checked(tmp_path / "bf16.pt", bf16)
    model, stats, diffusion = load_trained(tmp_path / "bf16.pt")
    for name, value in model.state_dict().items():
        assert value.dtype == torch.float32
        assert torch.equal(value, full["ema"][name].to(torch.bfloat16).float()), name
    assert stats == full["stats"] and diffusion == full["diffusion"]
    assert (tmp_path / "bf16.pt").stat().st_size < 0.6 * (tmp_path / "full.pt").stat().st_size


# -- export -------------------------------------------------------------------------------------------


def test_export_writes_a_verified_entry_with_the_runs_provenance(run_root, tmp_path):
    folder = catalog.export_model("mine", run_root, dest=tmp_path / "weights", note="a test model")
    card = shipped.check_shipped(folder)
    lock = parse((run_root / "dvc.lock").read_text())
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "model.pt"]
    assert card["note"] == "a test model" and card["weights_dtype"] == "bfloat16"
    assert card["preset"] == lock["stages"]["train"]["params"]["params.yaml"]["preset"]
    assert card["dataset"] == lock["stages"]["prepare"]["params"]["params.yaml"]["dataset"]
    assert card["data"]["data/prepared"] == next(d["md5"] for d in lock["stages"]["train"]["deps"]
                                                 if d["path"] == "data/prepared")
    assert card["evaluation"] == json.loads((run_root / "metrics" / "evaluate.json").read_text())
    assert card["source"]["model_md5"] == file_digest(run_root / "models" / "model.pt", "md5")
    assert 0 < card["weights_probe_error"] < 0.1
    float32 = catalog.export_model("mine32", run_root, dest=tmp_path / "weights", dtype="float32")
    assert shipped.read_card(float32)["weights_probe_error"] == 0.0


def test_export_refuses_a_model_dvc_lock_does_not_record_and_keeps_the_old_entry(run_root, tmp_path):
    folder = catalog.export_model("mine", run_root, dest=tmp_path / "weights")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    write_checkpoint(run_root / "models" / "model.pt", seed=4)  # retrained, but dvc.lock not updated
    with pytest.raises(DmcError, match="not the model dvc.lock records"):
        catalog.export_model("mine", run_root, dest=tmp_path / "weights")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_export_refuses_an_evaluation_of_other_samples(run_root, tmp_path):
    metrics = run_root / "metrics" / "evaluate.json"
    metrics.write_text(metrics.read_text().replace('"generated.n_pieces": 8', '"generated.n_pieces": 9'))
    with pytest.raises(DmcError, match="not the evaluation dvc.lock records"):
        catalog.export_model("mine", run_root, dest=tmp_path / "weights")
    assert not (tmp_path / "weights" / "mine").exists()


def test_the_retrain_command_sets_the_runs_params_over_other_defaults(run_root, tmp_path):
    from dvc.utils.hydra import apply_overrides

    card = shipped.read_card(catalog.export_model("mine", run_root, dest=tmp_path / "weights"))
    words = shlex.split(card["retrain"])
    assert words[:3] == ["dvc", "exp", "run"] and words[3::2] == ["-S"] * (len(words[3:]) // 2)
    other = yaml.safe_load((REPO / "params.yaml").read_text())
    other.update(steps=7, lr=0.5, lr_final=0.25, instruments=["piano", "drums"], preset="full")
    other["sample"].update(quantize="1/16", plot=False)
    other["prepare"]["split"]["val"] = 0.3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(other))
    apply_overrides(tmp_path / "params.yaml", words[4::2])
    applied = parse((tmp_path / "params.yaml").read_text())
    expected = shipped._flat(card["params"])
    got = shipped._flat(applied)
    for key, value in expected.items():
        if not any(key == s or key.startswith(s + ".") for s in shipped.SPEED_ONLY):
            assert got[key] == value, key


def test_export_model_command_writes_the_entry_and_prints_the_retrain_command(run_root, tmp_path, capsys):
    assert run_dmc("export-model", "mine", "--root", run_root, "--dest", tmp_path / "w") == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "retrain: dvc exp run -S" in out
    assert run_dmc("export-model", "Bad Name", "--root", run_root) == 2
    assert "model name 'Bad Name'" in one_line_error(capsys)


# -- choosing and listing -----------------------------------------------------------------------------


def test_without_a_trained_model_generate_uses_the_shipped_one_and_says_so(empty_checkout, capsys):
    assert generate("out") == 0
    err = capsys.readouterr().err.strip().splitlines()
    notices = [line for line in err if "shipped model" in line]
    assert len(notices) == 1 and "using the shipped model bach" in notices[0]
    assert (empty_checkout / "out" / "sample_000.mid").is_file()


def test_with_no_model_at_all_the_error_says_how_to_train_one(empty_checkout, monkeypatch, capsys):
    monkeypatch.setattr(shipped, "WEIGHTS", empty_checkout / "no-weights")
    assert generate("out") == 2
    assert "dvc repro train" in one_line_error(capsys)
    assert not (empty_checkout / "out").exists()


def test_the_checkouts_model_wins_over_the_shipped_one(run_root, monkeypatch, capsys):
    monkeypatch.chdir(run_root)
    assert generate("default") == 0
    assert "shipped" not in capsys.readouterr().err
    assert generate("local", "--model", "models/model.pt") == 0
    assert generate("shipped", "--model", "bach") == 0
    assert notes_of(run_root / "default") == notes_of(run_root / "local")
    assert notes_of(run_root / "default") != notes_of(run_root / "shipped")


def test_model_by_name_and_by_path_of_a_shipped_folder_give_the_same_pieces(empty_checkout):
    assert generate("fallback") == 0
    assert generate("by-name", "--model", "bach") == 0
    assert generate("by-path", "--model", SHIPPED) == 0
    assert notes_of(empty_checkout / "by-name") == notes_of(empty_checkout / "fallback")
    assert notes_of(empty_checkout / "by-path") == notes_of(empty_checkout / "fallback")


def test_an_unknown_model_name_is_refused_with_the_shipped_names(empty_checkout, capsys):
    assert generate("out", "--model", "mozart") == 2
    err = one_line_error(capsys)
    assert "no shipped model of that name" in err and "bach" in err
    assert not (empty_checkout / "out").exists()


def test_models_lists_the_checkouts_model_first_and_marks_it_default(run_root, monkeypatch, capsys):
    monkeypatch.chdir(run_root)
    assert run_dmc("models") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "DATASET", "PRESET", "STEPS", "OA_MEAN", "SOURCE"]
    evaluation = json.loads((run_root / "metrics" / "evaluate.json").read_text())
    local = lines[1].split()
    assert local[:6] == ["*", str(run_root / "models" / "model.pt"), "bach", "tiny", "0",
                         f"{evaluation['generated.oa_mean']:.3f}"]
    assert "trained in this checkout" in lines[1]
    card = shipped.read_card(SHIPPED)
    row = lines[2].split()
    assert row[:5] == ["bach", card["dataset"], card["preset"], str(card["steps"]),
                           f"{card['evaluation']['generated.oa_mean']:.3f}"]
    assert "shipped" in lines[2]


def test_models_marks_the_shipped_model_default_when_nothing_is_trained(empty_checkout, capsys):
    assert run_dmc("models") == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert len(rows) == len(shipped.shipped_names()) and rows[0].startswith("*  bach ")


def test_models_says_when_the_checkouts_model_is_not_what_dvc_lock_records(run_root, monkeypatch, capsys):
    write_checkpoint(run_root / "models" / "model.pt", seed=9)
    monkeypatch.chdir(run_root)
    assert run_dmc("models") == 0
    local = capsys.readouterr().out.splitlines()[1]
    assert "not the model dvc.lock records" in local and local.split()[2:6] == ["?", "tiny", "0", "-"]


def test_models_says_the_checkouts_model_is_damaged(run_root, monkeypatch, capsys):
    from test_checkpoints import flip_bytes

    flip_bytes(run_root / "models" / "model.pt", at=(0.5,))  # inside the weights
    monkeypatch.chdir(run_root)
    assert run_dmc("models") == 0
    local = capsys.readouterr().out.splitlines()[1]
    assert "unusable: damaged (its contents do not match the checksum" in local


def test_models_name_shows_the_card_with_baselines_and_retrain_command(capsys):
    assert run_dmc("models", "bach") == 0
    out = capsys.readouterr().out
    card = shipped.read_card(SHIPPED)
    assert "markov" in out and "real" in out and f"{card['evaluation']['markov.oa_mean']:.4f}" in out
    assert f"retrain: {card['retrain']}" in out
    assert run_dmc("models", "mozart") == 2


# -- the package data of a real install ---------------------------------------------------------------


def running_site_dirs() -> list[str]:
    """Where the running interpreter's packages live: a venv's site-packages (and its base's, when it was
    made with --system-site-packages), or the system Python's."""
    dirs = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
    return [d for d in dirs if Path(d).is_dir()]


def test_a_fresh_install_composes_with_the_shipped_model(tmp_path):
    """A wheel (not an editable install) in a new venv, run from outside the checkout: the weights ship.

    Offline, and the same from a venv or the system Python: the running interpreter builds the wheel, pip
    installs it into a bare venv, and only then does that venv see the running environment's packages
    (torch and the rest), through a .pth file that puts them after its own site-packages."""
    source = copy_checkout(tmp_path / "source")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", DMC_THREADS="1")

    def run(*args: str | Path, cwd: Path = tmp_path) -> str:
        done = subprocess.run([*map(str, args)], env=env, cwd=cwd, capture_output=True, text=True,
                              timeout=HANG_GUARD_S)
        assert done.returncode == 0, f"{args}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout.strip()

    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    dist = tmp_path / "dist"
    run(*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, source)
    (wheel,) = dist.glob("dmc-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    run(*pip, "--python", python, "install", "-q", "--no-deps", "--no-index", wheel)
    purelib = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"))
    assert (purelib / "pipeline" / "weights" / shipped.DEFAULT / "model.pt").is_file()
    (purelib / "running-environment.pth").write_text("".join(f"{d}\n" for d in running_site_dirs()))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = Path(run(python, "-c", "import pipeline; print(pipeline.__file__)", cwd=elsewhere))
    assert where.resolve().is_relative_to(purelib.resolve()), where
    done = subprocess.run([str(env_dir / "bin" / "dmc"), "generate", "out", "--n", "2", "--quiet"],
                          env=env, cwd=elsewhere, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr
    assert "using the shipped model bach" in done.stderr
    assert sorted(p.name for p in (elsewhere / "out").iterdir()) == ["sample_000.mid", "sample_001.mid"]
