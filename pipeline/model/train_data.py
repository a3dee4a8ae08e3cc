"""What training reads: the prepared splits in the model's code (`load_data`), the order it visits them in
(`batch_indices`: a seeded permutation per epoch) and the seed of each step's noise (`step_seed`), so that
a step's inputs are a pure function of (seed, step, rank) and a resumed run replays them exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.data import keys
from pipeline.data.encoding import Encoding
from pipeline.errors import DmcError


@dataclass
class TrainData:
    """Segments in the model's code `[N, C, H, W]` (`Encoding.code_stored`: the stored, normalized values
    themselves for the scalar codes) and the stats.json they were normalized with. Multi-instrument data also
    has masks `[N, H, W]` (1 = a real note): the loss ignores padded and absent entries."""

    train: np.ndarray
    val: np.ndarray
    stats: dict[str, Any]
    train_mask: np.ndarray | None = None
    val_mask: np.ndarray | None = None

    def digest(self) -> str:
        masks = [m for m in (self.train_mask, self.val_mask) if m is not None]
        return data_digest(self.stats, [self.train, self.val, *masks])


def data_digest(stats: dict[str, Any], arrays: list[np.ndarray]) -> str:
    """What the weights depend on besides the settings (`pipeline.model.training.fingerprint`): the stats
    and every array, shape and bytes."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(stats, sort_keys=True).encode())
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def load_data(prepared_dir: str | Path, seq_len: int | None = None, key: str = "none") -> TrainData:
    """The train and val splits of a prepared folder; one-line errors for missing or unusable data.
    `key: common` moves every window to one key (`pipeline.data.keys`) and records the moves in the stats."""
    from pipeline.data.prepared import load_mask, load_pitches, load_split, load_stats

    stats = load_stats(prepared_dir)
    if seq_len is not None and stats["seq_len"] != seq_len:
        raise DmcError(f"{prepared_dir} holds segments of seq_len {stats['seq_len']} but params say "
                       f"{seq_len}; run the prepare stage again (dvc repro prepare)")
    train = load_split(prepared_dir, "train")
    if len(train) == 0:
        raise DmcError(f"the train split in {prepared_dir} is empty; add MIDI files or lower seq_len")
    masks = [load_mask(prepared_dir, split) for split in ("train", "val")]
    encoding = Encoding.from_stats(stats)
    val = load_split(prepared_dir, "val")
    if key == "common":
        moves = keys.to_common_key(train, load_pitches(prepared_dir, "train"), masks[0], encoding)
        keys.to_common_key(val, load_pitches(prepared_dir, "val"), masks[1], encoding)
        stats = {**stats, "key": "common", "key_shifts": keys.shift_counts(moves)}

    def coded(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if encoding.scalar:
            return x
        return (encoding.code_stored(x) * mask[:, None]).astype(np.float32)  # padding stays 0

    train, val = coded(train, masks[0]), coded(val, masks[1])
    if all(m.all() for m in masks):  # single-piano data: every entry is a note, nothing to mask
        masks = [None, None]
    return TrainData(train=train, val=val, stats=stats, train_mask=masks[0], val_mask=masks[1])


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """The global batch of `step`: positions step*B .. step*B+B-1 of an endless stream of epochs,
    each epoch a permutation of the n segments seeded by (seed, epoch)."""
    positions = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs = positions // n
    out = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
        here = epochs == epoch
        out[here] = _permutation(n, seed, int(epoch))[positions[here] % n]
    return out


def check_batch_fits(batch_size: int, segment_bytes: int, device: torch.device) -> None:
    """Refuse a `batch_size` whose inputs alone outgrow the device's memory, with a line naming the key,
    before numpy or torch fail on a multi-terabyte allocation with a traceback."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    elif hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    else:  # no portable way to ask; the allocation itself will tell
        return
    # Per sample: the segment, its noise and its noisy version (float32), and its index (int64).
    needed = batch_size * (3 * segment_bytes + 8)
    if needed > total:
        raise DmcError(f"batch_size {batch_size:,}: one batch of inputs alone needs {_gib(needed)}, more "
                       f"than the {_gib(total)} of memory on {device.type}; lower batch_size")


def _gib(n: int) -> str:
    return f"{n / 2**30:,.0f} GiB"


_PERMUTATION_CACHE: dict[tuple[int, int, int], np.ndarray] = {}


def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    key = (n, seed, epoch)
    if key not in _PERMUTATION_CACHE:
        if len(_PERMUTATION_CACHE) > 4:
            _PERMUTATION_CACHE.clear()
        _PERMUTATION_CACHE[key] = np.random.default_rng([seed, epoch]).permutation(n)
    return _PERMUTATION_CACHE[key]


def step_seed(seed: int, step: int, rank: int) -> int:
    """The noise generator's seed for one step on one rank."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0])
