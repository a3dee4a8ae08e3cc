"""Training: checkpoints, bitwise resume (also after kill -9), failures, DDP on gloo, the stage's errors."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import HANG_GUARD_S, PREPARED_SPLIT, REPO, repo_params

from pipeline.errors import DmcError
from pipeline.model.checkpoints import write_checkpoint
from pipeline.model.train_data import TrainData, batch_indices, load_data
from pipeline.model.training import TrainSettings, checkpoint_path, train
from pipeline.params import validate

SETTINGS = TrainSettings(preset="tiny", steps=6, batch_size=8, val_every=3, checkpoint_every=2)



@pytest.fixture(scope="module")
def data(prepared_dir: Path) -> TrainData:
    return load_data(prepared_dir, seq_len=32)


def _quiet(_line: str) -> None:
    pass


def _weights(path: Path, key: str) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)[key]


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_data_order_visits_every_segment_once_per_epoch():
    n, b = 10, 4
    stream = np.concatenate([batch_indices(s, n, b, seed=3) for s in range(5)])  # 2 epochs exactly
    assert sorted(stream[:n]) == list(range(n)) and sorted(stream[n:]) == list(range(n))
    assert not np.array_equal(stream[:n], stream[n:])  # reshuffled each epoch


def test_lr_switches_to_lr_final_after_lr_switch_of_the_steps():
    s = TrainSettings(steps=200, lr=1e-4, lr_final=1e-6, lr_switch=0.75)
    assert [s.lr_at(i) for i in (0, 149, 150, 199)] == [1e-4, 1e-4, 1e-6, 1e-6]


def test_training_writes_model_checkpoint_and_metrics(data, tmp_path):
    metrics = train(SETTINGS, data, tmp_path / "models", tmp_path / "metrics", device="cpu", log=_quiet)
    assert metrics["steps"] == 6 and metrics["parameters"] == 292_307 and np.isfinite(metrics["loss"])
    ckpt = torch.load(checkpoint_path(tmp_path / "models"), weights_only=True)
    assert ckpt["step"] == 6 and ckpt["data_position"] == 6 * 8
    assert {"model", "ema", "opt", "lr_schedule", "rng", "config", "stats", "fingerprint"} <= ckpt.keys()
    assert ckpt["stats"] == data.stats and ckpt["config"]["channels"] == (16, 32, 32, 32)
    final = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert set(final) == {"config", "ema", "stats", "diffusion", "step", "sha256"}
    _assert_identical(final["ema"], ckpt["ema"])
    lines = (tmp_path / "metrics" / "train_loss.csv").read_text().splitlines()
    assert lines[0] == "step,loss" and [int(r.split(",")[0]) for r in lines[1:]] == list(range(1, 7))
    assert (tmp_path / "metrics" / "val_loss.csv").read_text().splitlines()[1:][-1].startswith("6,")


def test_resumed_run_ends_bitwise_identical_to_an_uninterrupted_one(data, tmp_path):
    train(SETTINGS, data, tmp_path / "a" / "models", tmp_path / "a" / "metrics", device="cpu", log=_quiet)
    assert train(SETTINGS, data, tmp_path / "b" / "models", tmp_path / "b" / "metrics", device="cpu",
                 stop_at=3, log=_quiet) is None
    assert not (tmp_path / "b" / "models" / "model.pt").exists()
    # Scramble the global RNGs: the resumed run must not depend on them.
    torch.manual_seed(123)
    np.random.seed(123)
    notes: list[str] = []
    train(SETTINGS, data, tmp_path / "b" / "models", tmp_path / "b" / "metrics", device="cpu",
          log=notes.append)
    assert any("resuming" in n and "step 3" in n for n in notes)
    for key in ("model", "ema", "opt"):
        a = _weights(checkpoint_path(tmp_path / "a" / "models"), key)
        b = _weights(checkpoint_path(tmp_path / "b" / "models"), key)
        if key == "opt":
            a, b = ({f"{i}.{k}": v for i, s in d["state"].items() for k, v in s.items()} for d in (a, b))
        _assert_identical(a, b)
    assert ((tmp_path / "a" / "metrics" / "train_loss.csv").read_text()
            == (tmp_path / "b" / "metrics" / "train_loss.csv").read_text())


def test_changed_params_start_fresh_with_a_notice(data, tmp_path):
    train(SETTINGS, data, tmp_path / "models", tmp_path / "metrics", device="cpu", stop_at=2, log=_quiet)
    notes: list[str] = []
    changed = TrainSettings(**{**SETTINGS.__dict__, "lr": 3e-4, "steps": 2})
    train(changed, data, tmp_path / "models", tmp_path / "metrics", device="cpu", log=notes.append)
    assert any("starting fresh" in n for n in notes)
    assert not any("resuming" in n for n in notes)


def test_unreadable_or_misfit_checkpoint_is_a_one_line_error(data, tmp_path):
    path = checkpoint_path(tmp_path / "models")
    train(SETTINGS, data, tmp_path / "models", tmp_path / "metrics", device="cpu", stop_at=2, log=_quiet)
    ckpt = torch.load(path, weights_only=True)
    from pipeline.model.unet import UNet, get_config
    ckpt["model"] = UNet(get_config("small")).state_dict()  # same fingerprint, other network
    write_checkpoint(path, ckpt)
    with pytest.raises(DmcError, match="does not fit this config") as err:
        train(SETTINGS, data, tmp_path / "models", tmp_path / "metrics", device="cpu", log=_quiet)
    assert "\n" not in str(err.value)
    path.write_bytes(b"garbage")
    with pytest.raises(DmcError, match="not a readable checkpoint"):
        train(SETTINGS, data, tmp_path / "models", tmp_path / "metrics", device="cpu", log=_quiet)


def test_a_checkpoint_with_flipped_bytes_is_refused_on_resume(data, tmp_path):
    from test_checkpoints import flip_bytes

    path = checkpoint_path(tmp_path / "models")
    train(SETTINGS, data, tmp_path / "models", tmp_path / "metrics", device="cpu", stop_at=2, log=_quiet)
    flip_bytes(path)  # the fault campaign's damage, which torch.load alone accepted
    with pytest.raises(DmcError, match=rf"^{path}: (damaged|not a readable checkpoint).*; delete {path} "
                                       "to start fresh$") as err:
        train(SETTINGS, data, tmp_path / "models", tmp_path / "metrics", device="cpu", log=_quiet)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "models" / "model.pt").exists()


def test_ctrl_c_says_which_checkpoint_is_kept(data, tmp_path, monkeypatch):
    from pipeline.errors import Interrupted
    from pipeline.model import training

    real, saved = training.save_checkpoint, []

    def interrupted_after_the_second(*args, **kwargs):
        real(*args, **kwargs)
        saved.append(args[1].step)
        if len(saved) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "save_checkpoint", interrupted_after_the_second)
    with pytest.raises(Interrupted, match=r"^interrupted; the checkpoint at step 4 is kept$") as err:
        train(SETTINGS, data, tmp_path / "models", tmp_path / "metrics", device="cpu", log=_quiet)
    assert saved == [2, 4] and err.value.exit_code == 130


def test_resuming_at_the_final_step_says_no_steps_were_left(data, tmp_path):
    from stages.train import speed

    short = TrainSettings(preset="tiny", steps=2, batch_size=8, val_every=2, checkpoint_every=2)
    assert "steps/s" in speed(train(short, data, tmp_path / "m", tmp_path / "x", device="cpu", log=_quiet))
    again = train(short, data, tmp_path / "m", tmp_path / "x", device="cpu", log=_quiet)
    assert speed(again) == "no steps left to run (resumed at the final step)"


@pytest.mark.parametrize(("name", "content"), [
    ("segments.parquet", b"PAR1 garbage"), ("segments.parquet", None), ("stats.json", b"{not json"),
    ("stats.json", b"[1, 2]"),
])
def test_a_damaged_prepared_folder_is_a_one_line_error(prepared_dir, tmp_path, name, content):
    damaged = tmp_path / "prepared"
    shutil.copytree(prepared_dir, damaged)
    path = damaged / name
    path.write_bytes(content if content is not None else path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DmcError, match=rf"^{path}: .*; re-run `dvc repro -f prepare`$") as err:
        load_data(damaged, seq_len=32)
    assert "\n" not in str(err.value)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path):
    # Poison one segment first drawn after the step-2 checkpoint.
    seen = set(np.concatenate([batch_indices(s, len(data.train), 8, 0) for s in range(2)]))
    later = np.concatenate([batch_indices(s, len(data.train), 8, 0) for s in range(2, 6)])
    victim = next(i for i in later if i not in seen)
    first_bad = next(s for s in range(2, 6) if victim in batch_indices(s, len(data.train), 8, 0)) + 1
    train_x = data.train.copy()
    train_x[victim] = np.nan
    bad = TrainData(train_x, data.val, data.stats)
    with pytest.raises(DmcError, match=f"loss became nan at step {first_bad}"):
        train(SETTINGS, bad, tmp_path / "models", tmp_path / "metrics", device="cpu", log=_quiet)
    ckpt = torch.load(checkpoint_path(tmp_path / "models"), weights_only=True)
    assert ckpt["step"] < first_bad
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert not (tmp_path / "models" / "model.pt").exists()


def test_bad_inputs_are_one_line_errors(data, prepared_dir, tmp_path):
    with pytest.raises(DmcError, match="unknown preset"):
        train(TrainSettings(preset="huge"), data, tmp_path / "m", tmp_path / "x", device="cpu", log=_quiet)
    params = repo_params()
    params["seq_len"] = 20
    with pytest.raises(DmcError, match="seq_len.*multiple of 8"):
        validate(params)
    narrow = TrainData(data.train[..., :20], data.val[..., :20], data.stats)
    with pytest.raises(DmcError, match="seq_len 20 is not a multiple of 8"):
        train(SETTINGS, narrow, tmp_path / "m", tmp_path / "x", device="cpu", log=_quiet)
    with pytest.raises(DmcError, match="run the prepare stage"):
        load_data(tmp_path / "nowhere")
    with pytest.raises(DmcError, match="seq_len 32 but params say 64"):
        load_data(prepared_dir, seq_len=64)
    empty = tmp_path / "empty"
    shutil.copytree(prepared_dir, empty)
    table = pq.read_table(empty / "segments.parquet")
    pq.write_table(table.filter(pc.not_equal(table.column("split"), "train")), empty / "segments.parquet")
    with pytest.raises(DmcError, match="train split .* is empty"):
        load_data(empty)


def test_a_batch_larger_than_memory_is_a_one_line_error_naming_batch_size(data, tmp_path):
    huge = TrainSettings(preset="tiny", steps=2, batch_size=1_000_000_000_000)
    with pytest.raises(DmcError, match=r"^batch_size 1,000,000,000,000: .* lower batch_size$") as err:
        train(huge, data, tmp_path / "m", tmp_path / "x", device="cpu", log=_quiet)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "m").exists() and not (tmp_path / "x").exists()


def test_train_start_removes_the_temp_file_of_a_checkpoint_write_killed_midway(data, tmp_path):
    from test_files import killed_during_write

    models = tmp_path / "m"
    litter = killed_during_write(checkpoint_path(models))
    assert litter.stat().st_size == 5_000_000
    lines: list[str] = []
    train(SETTINGS, data, models, tmp_path / "x", stop_at=1, device="cpu", log=lines.append)
    assert not litter.exists()
    assert f"train: removed {litter}, left by an interrupted write" in lines


# -- the stage as a process: kill -9 and resume, DDP with torchrun ---------------------------------------


def _stage_repo(root: Path, prepared_dir: Path, **changes) -> Path:
    """A working directory with params.yaml (tiny, small batches) and data/prepared."""
    params = repo_params()
    params.update(preset="tiny", seq_len=32, batch_size=8, steps=6)
    # key none: the straight run it is compared with trains on the `data` fixture, loaded without a key move
    params["train"].update(val_every=3, checkpoint_every=1, key="none")
    for key, value in changes.items():
        params[key] = value
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copytree(prepared_dir, root / "data" / "prepared")
    return root


def _env() -> dict[str, str]:
    # One thread as in this process (bitwise comparisons); no MLflow record of these throwaway runs.
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "DMC_TRACKING": "0"}


def test_kill_9_then_rerun_resumes_to_the_same_weights(data, prepared_dir, tmp_path):
    steps = 8
    work = _stage_repo(tmp_path / "work", prepared_dir, steps=steps)
    proc = subprocess.Popen([sys.executable, "-m", "stages.train"], cwd=work, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = checkpoint_path(work / "models")
    deadline = time.monotonic() + HANG_GUARD_S
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(ckpt, weights_only=True)["step"]
    assert killed_at < steps
    done = subprocess.run([sys.executable, "-m", "stages.train"], cwd=work, env=_env(),
                          capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr
    assert f"at step {killed_at}" in done.stdout
    settings = TrainSettings.from_params(yaml.safe_load((work / "params.yaml").read_text()))
    train(settings, data, tmp_path / "straight" / "models", tmp_path / "straight" / "metrics", device="cpu",
          log=_quiet)
    _assert_identical(_weights(work / "models" / "model.pt", "ema"),
                      _weights(tmp_path / "straight" / "models" / "model.pt", "ema"))


def test_stage_reports_missing_prepared_data_in_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    done = subprocess.run([sys.executable, "-m", "stages.train"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 2
    assert done.stderr.startswith("train: error:") and done.stderr.count("\n") == 1


def test_ddp_with_two_cpu_processes_on_gloo(prepared_dir, tmp_path):
    work = _stage_repo(tmp_path / "work", prepared_dir, steps=4)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run([*torchrun, "-m", "stages.train"],
                          cwd=work, env=_env(), capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("train: 4 steps") == 1  # rank 0 alone reports
    metrics = yaml.safe_load((work / "metrics" / "train.json").read_text())
    assert metrics["processes"] == 2 and np.isfinite(metrics["loss"])
    assert torch.load(work / "models" / "model.pt", weights_only=True)["step"] == 4


def test_dvc_keeps_checkpoints_between_runs():
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]
    outs = {next(iter(o)) if isinstance(o, dict) else o: o for o in stage["outs"]}
    assert outs["models/checkpoints"]["models/checkpoints"]["persist"] is True
    assert "models/model.pt" in outs


# -- the graphed step (train.graph) ---------------------------------------------------------------------


def _steps(kind: str, device: str, masked: bool, steps: int = 5) -> tuple[torch.Tensor, list, list, list]:
    """Losses, weights, EMA weights and AdamW moments after `steps` steps of the `eager`, `static` or
    `graph` step, across an lr switch, with the loop's per-step seeding."""
    import contextlib

    from pipeline.model.cuda_graph import CudaGraphStep, StaticStep
    from pipeline.model.train_data import step_seed
    from pipeline.model.training import build, optimize
    from pipeline.model.unet import get_config

    settings = TrainSettings(preset="tiny", steps=steps, batch_size=4, lr=1e-3, lr_final=1e-4, lr_switch=0.6)
    torch.manual_seed(0)
    model, ema, opt, diffusion = build(settings, get_config("tiny"), torch.device(device))
    batches = torch.rand(steps, 4, 3, 1, 16, generator=torch.Generator().manual_seed(1)).to(device)
    mask = (torch.rand(4, 1, 1, 16, generator=torch.Generator().manual_seed(2)) > 0.3).float().to(device)
    mask = mask if masked else None
    autocast = contextlib.nullcontext()
    stepper = None
    if kind != "eager":
        step_class = CudaGraphStep if kind == "graph" else StaticStep
        stepper = step_class(model, model, ema, opt, diffusion, settings.grad_clip, autocast, batches[0],
                             mask)
    gen, losses = torch.Generator(device), []
    for step in range(steps):
        gen.manual_seed(step_seed(settings.seed, step, 0))
        if stepper is not None:
            losses.append(stepper(batches[step], gen, step, settings.lr_at(step), mask))
        else:
            for group in opt.param_groups:
                group["lr"] = settings.lr_at(step)
            losses.append(optimize(model, model, ema, opt, diffusion, batches[step], gen, step,
                                   settings.grad_clip, autocast, mask))
    moments = [state[k].clone() for state in opt.state.values() for k in ("exp_avg", "exp_avg_sq")]
    return (torch.stack(losses), [p.detach().clone() for p in model.parameters()],
            [p.clone() for p in ema.model.parameters()], moments)


@pytest.mark.parametrize("masked", [False, True])
def test_static_step_gives_the_eager_steps_losses_and_weights_bit_for_bit(masked):
    # The step a CUDA graph captures (fixed buffers, noise drawn beforehand, tensor lr and EMA weight),
    # run eagerly on CPU, must be the training loop's step exactly.
    eager, static = _steps("eager", "cpu", masked), _steps("static", "cpu", masked)
    assert torch.equal(eager[0], static[0])
    for a, b in zip(eager[1] + eager[2], static[1] + static[2], strict=True):
        assert torch.equal(a, b)
    assert len(eager[3]) == len(static[3]) and all(map(torch.equal, eager[3], static[3]))
    assert eager[0][0] != eager[0][1]  # the steps did draw different noise


def test_graph_mode_without_a_gpu_is_a_one_line_error(data, tmp_path):
    graphed = TrainSettings(preset="tiny", steps=2, batch_size=8, graph=True)
    with pytest.raises(DmcError, match=r"^train.graph needs one CUDA GPU and this run has a cpu device; "
                                       r"set train.graph: false$"):
        train(graphed, data, tmp_path / "m", tmp_path / "x", device="cpu", log=_quiet)
    assert not (tmp_path / "m").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_replays_the_static_step_on_the_gpu():
    eager, graphed = _steps("static", "cuda", True), _steps("graph", "cuda", True)
    torch.testing.assert_close(graphed[0], eager[0], rtol=1e-4, atol=1e-5)
    for a, b in zip(eager[1] + eager[2], graphed[1] + graphed[2], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graphed_training_run_writes_the_model_and_its_metrics(data, tmp_path):
    graphed = TrainSettings(preset="tiny", steps=6, batch_size=8, val_every=3, checkpoint_every=2, graph=True)
    metrics = train(graphed, data, tmp_path / "models", tmp_path / "metrics", device="cuda", log=_quiet)
    assert metrics["steps"] == 6 and np.isfinite(metrics["loss"])
    assert (tmp_path / "models" / "model.pt").is_file()


def test_a_softmax_head_trains_on_the_chorales_lattice_and_its_model_composes(bach_midi_dir, tmp_path):
    """prediction softmax on real chorales (helix / grid / chord): the U-Net's output is one logit per
    code, the first loss is at least the cross-entropy of a head that knows nothing (the sum over the
    groups of the log of their code counts), the loss falls, and the written model composes."""
    from pipeline.compose.generate import generate_files
    from pipeline.compose.options import GenerateOptions
    from pipeline.data.encoding import Encoding
    from pipeline.data.prepared import write_prepared
    from pipeline.data.segments import PrepareConfig

    prepared = tmp_path / "prepared"
    write_prepared(prepared, "bach", bach_midi_dir, sorted(p.name for p in bach_midi_dir.glob("*.mid")),
                   PrepareConfig(seq_len=32, split=PREPARED_SPLIT,
                                 features=("helix", "grid", "symmetric", True)), n_jobs=1)
    data = load_data(prepared, seq_len=32)
    settings = TrainSettings(**{**SETTINGS.__dict__, "prediction": "softmax", "causal": False})
    train(settings, data, tmp_path / "models", tmp_path / "metrics", device="cpu", log=_quiet)
    groups = Encoding.from_stats(data.stats).code_groups()
    final = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert final["config"]["out_features"] == sum(len(table) for _, table in groups)
    assert final["diffusion"]["prediction"] == "softmax"
    losses = [float(line.split(",")[1])
              for line in (tmp_path / "metrics" / "train_loss.csv").read_text().splitlines()[1:]]
    know_nothing = sum(np.log(len(table)) for _, table in groups)
    assert losses[0] > 0.9 * know_nothing and losses[-1] < losses[0], losses
    opts = GenerateOptions(n=1, sampler="ddim", steps=4, progress=False, device="cpu")
    summary = generate_files(tmp_path / "out", opts, tmp_path / "models" / "model.pt", log=_quiet)
    assert len(summary["files"]) == 1
