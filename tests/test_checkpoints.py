"""Checkpoint files carry the sha256 of their contents: damaged ones are refused, not loaded."""

from __future__ import annotations

import dataclasses
import errno

import pytest
import torch

from pipeline.errors import DmcError
from pipeline.model import checkpoints
from pipeline.model.checkpoints import DIGEST_KEY, content_digest, read_checkpoint, write_checkpoint
from pipeline.model.unet import PRESETS, UNet

ADVICE = "delete it to start fresh"


def tiny_checkpoint() -> dict:
    torch.manual_seed(0)
    model = UNet(PRESETS["tiny"])
    return {"config": dataclasses.asdict(PRESETS["tiny"]), "ema": model.state_dict(), "step": 40,
            "stats": {"seq_len": 32, "lo": [0.5, -1.0]}, "history": torch.tensor([[1.0, 0.25]]),
            "bf16": torch.ones(3, dtype=torch.bfloat16), "rng": {"python": [1, 2, (3, 4)], "gauss": None}}


def flip_bytes(path, at=(0.20, 0.35, 0.50), n=32) -> None:
    """XOR `n` bytes at each fraction `at` of the file: the fault campaign's damage."""
    data = bytearray(path.read_bytes())
    for fraction in at:
        start = int(len(data) * fraction)
        data[start:start + n] = bytes(b ^ 0xFF for b in data[start:start + n])
    path.write_bytes(bytes(data))


def test_a_checkpoint_reads_back_as_written_without_its_digest(tmp_path):
    ckpt = tiny_checkpoint()
    write_checkpoint(tmp_path / "last.pt", ckpt)
    back = read_checkpoint(tmp_path / "last.pt", ADVICE)
    assert back.keys() == ckpt.keys() and back["stats"] == ckpt["stats"] and back["rng"] == ckpt["rng"]
    assert all(torch.equal(back["ema"][k], v) for k, v in ckpt["ema"].items())
    raw = torch.load(tmp_path / "last.pt", weights_only=True)
    assert raw[DIGEST_KEY] == content_digest(ckpt)


def test_the_digest_sees_every_tensor_byte_dtype_and_value():
    ckpt = tiny_checkpoint()
    digest = content_digest(ckpt)
    name = next(iter(ckpt["ema"]))
    nudged = {**ckpt, "ema": {**ckpt["ema"], name: ckpt["ema"][name].contiguous().clone()}}
    nudged["ema"][name].view(-1)[0] += 1e-6
    assert content_digest(nudged) != digest
    assert content_digest({**ckpt, "bf16": ckpt["bf16"].float()}) != digest
    assert content_digest({**ckpt, "step": 41}) != digest
    assert content_digest({**ckpt, "stats": {"seq_len": 32, "lo": [0.5, -1.0000001]}}) != digest
    assert content_digest(dict(reversed(ckpt.items()))) == digest  # key order is not content


def test_flipped_bytes_that_torch_loads_silently_are_refused(tmp_path):
    path = tmp_path / "model.pt"
    write_checkpoint(path, tiny_checkpoint())
    flip_bytes(path, at=(0.50,))  # inside the weights: torch reads different numbers without a word
    loaded = torch.load(path, weights_only=True)
    assert not all(torch.equal(loaded["ema"][k], v) for k, v in tiny_checkpoint()["ema"].items())
    with pytest.raises(DmcError, match=rf"{path}: damaged .*; {ADVICE}$") as err:
        read_checkpoint(path, ADVICE)
    assert "\n" not in str(err.value)


def test_the_campaigns_flips_are_refused_in_one_line(tmp_path):
    path = tmp_path / "model.pt"
    write_checkpoint(path, tiny_checkpoint())
    flip_bytes(path)
    with pytest.raises(DmcError, match=rf"^{path}: (damaged|not a readable checkpoint)") as err:
        read_checkpoint(path, ADVICE)
    assert "\n" not in str(err.value) and "weights_only" not in str(err.value)


@pytest.mark.parametrize(("content", "problem"), [
    (b"a text file\n", "not a readable checkpoint"), (b"", "not a readable checkpoint"),
])
def test_files_that_are_not_checkpoints_are_refused(tmp_path, content, problem):
    (tmp_path / "x.pt").write_bytes(content)
    with pytest.raises(DmcError, match=problem):
        read_checkpoint(tmp_path / "x.pt", ADVICE)


def test_a_checkpoint_without_a_digest_or_not_a_dict_is_refused(tmp_path):
    torch.save(tiny_checkpoint(), tmp_path / "old.pt")
    with pytest.raises(DmcError, match="no checksum"):
        read_checkpoint(tmp_path / "old.pt", ADVICE)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(DmcError, match="not a dmc checkpoint"):
        read_checkpoint(tmp_path / "list.pt", ADVICE)


def test_a_full_disk_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    write_checkpoint(path, {"step": 1})
    before = path.read_bytes()

    class FullDisk:  # a file whose write fails half-way, as on a full disk
        def __init__(self, path, mode):
            self.file = open(path, mode)  # noqa: SIM115 - closed by __exit__, as a real file is

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            self.file.write(bytes(data)[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints, "open", FullDisk, raising=False)
    with pytest.raises(DmcError, match=rf"^cannot write {path}: No space left on device; the previous "
                                       r"last.pt is kept$"):
        write_checkpoint(path, {"step": 2})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.pt"]
