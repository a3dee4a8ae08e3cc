"""Checkpoint files: one dict saved with torch.save, carrying the sha256 of its own contents.

torch.load does not check the CRCs of the zip it reads, so flipped bytes inside a tensor's data load
without a word, as different weights. Every file dmc writes with `write_checkpoint` (models/model.pt,
models/checkpoints/last.pt, a shipped model's model.pt) therefore holds, under DIGEST_KEY, the sha256 of
everything else in it: each tensor's name, dtype, shape and bytes, and each other value's repr.
`read_checkpoint` recomputes it after loading (`weights_only=True`) and refuses a file whose digest
differs, or that has none, in one line that says what to do. A shipped model is checked twice: its
card's sha256 of the whole file (`pipeline.compose.shipped.read_card`), then this digest when it loads.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import DmcError, write_error

DIGEST_KEY = "sha256"


def content_digest(obj: Mapping[str, Any]) -> str:
    """sha256 of a checkpoint dict's contents (DIGEST_KEY left out), the same after a save and a load."""
    digest = hashlib.sha256()
    _update(digest, {k: v for k, v in obj.items() if k != DIGEST_KEY})
    return digest.hexdigest()


def _update(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        digest.update(f"tensor {t.dtype} {tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, Mapping):
        digest.update(f"dict {len(value)}\0".encode())
        for key in sorted(value, key=repr):
            digest.update(f"{key!r}\0".encode())
            _update(digest, value[key])
    elif isinstance(value, list | tuple):
        digest.update(f"{type(value).__name__} {len(value)}\0".encode())
        for item in value:
            _update(digest, item)
    else:  # numbers, strings, None, booleans: their repr is exact and survives torch.save
        digest.update(f"{type(value).__name__} {value!r}\0".encode())


def write_checkpoint(path: str | Path, obj: Mapping[str, Any]) -> None:
    """Save `obj` with its digest to `path`, atomically (a reader sees the old file or the new one).

    A full disk or a read-only folder is a one-line DmcError, and the previous file stays as it was.
    """
    from pipeline.files import atomic_path

    path = Path(path)
    checked = {**obj, DIGEST_KEY: content_digest(obj)}
    # Serialized in memory first: torch's zip writer turns a failed write (a full disk) into a
    # RuntimeError about file positions, and only the file's own write says ENOSPC. Through a buffer,
    # not a file name, also because torch.save(obj, name) stores the (random) temp name inside the zip,
    # so identical weights would hash differently and DVC would re-run every stage downstream.
    buffer = io.BytesIO()
    torch.save(checked, buffer)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
    except OSError as err:
        raise DmcError(write_error(path, err) + (f"; the previous {path.name} is kept" if path.is_file()
                                                 else "")) from None


def read_checkpoint(path: str | Path, advice: str, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by `write_checkpoint` (weights_only) and check its digest.

    Anything that is not such a file, intact, is a DmcError naming `path` and ending with `advice`
    (what to do: delete it, re-run a stage). Tensors are checked on the CPU, then moved to `device`.
    """
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a damaged zip or pickle fails in many ways, all the same to users
        # Not torch's message: for an unpickling error it advises weights_only=False, which would run
        # whatever code the file holds.
        raise DmcError(f"{path}: not a readable checkpoint ({type(err).__name__}); {advice}") from None
    if not isinstance(ckpt, dict):
        raise DmcError(f"{path}: not a dmc checkpoint (it holds a {type(ckpt).__name__}); {advice}")
    recorded = ckpt.pop(DIGEST_KEY, None)
    if recorded is None:
        raise DmcError(f"{path}: no checksum (written by an older dmc, or not by dmc); {advice}")
    if content_digest(ckpt) != recorded:
        raise DmcError(f"{path}: damaged (its contents do not match the checksum written with them); "
                       f"{advice}")
    device = torch.device(device)
    return ckpt if device.type == "cpu" else _to(ckpt, device)


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to(v, device) for v in value)
    return value
