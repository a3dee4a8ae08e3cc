"""Two baselines built from the train split, to show what the evaluation numbers mean.

- `shuffle`: real segments with each feature's notes put in a random order (same marginals, no
  structure). A metric that scores the shuffle as high as real music does not measure structure.
- `markov`: a first-order Markov chain over quantized (pitch, duration, delta) notes. Local structure
  only: a model should beat it on anything that spans more than two notes.

Both work on the model's own representation, `[N, 3 features, H rows, W notes]` segments, so what
they produce decodes with `pipeline.data.segments.segment_to_notes` exactly like real segments. In
multi-instrument mode a mask (`[N, H, W]`, 1 = a real note, padding a suffix of each row) goes with the
segments: only real notes are shuffled or counted, and Markov rows take the lengths of the real draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data.encoding import Encoding
from pipeline.data.midi import frequency, pitch_of
from pipeline.evaluate.metrics import QUANTUM


def shuffle_segments(x: np.ndarray, rng: np.random.Generator, mask: np.ndarray | None = None) -> np.ndarray:
    """Each segment's frequency, duration and delta rows permuted independently along the notes.

    `x` is `[N, 3, H, W]` (normalized or not). Every (segment, feature, row) keeps its multiset of
    values, so histograms, ranges and the piece's length are unchanged; pitch-duration pairing, note
    order, chords and rhythm patterns are lost. With `mask` only the real notes are permuted, among
    themselves, so padding stays where it was.
    """
    x = np.asarray(x)
    if mask is None:
        return rng.permuted(x, axis=-1)
    real = np.asarray(mask).astype(bool)
    out = np.empty_like(x)
    for f in range(x.shape[1]):
        # Random keys for real notes, +inf for padding: sorting moves real notes only (padding is a suffix).
        order = np.argsort(np.where(real, rng.random(real.shape), np.inf), axis=-1, kind="stable")
        out[:, f] = np.take_along_axis(x[:, f], order, axis=-1)
    return out


@dataclass(frozen=True)
class MarkovChain:
    """A first-order Markov chain over notes quantized to (pitch, duration, delta) tokens.

    Durations and deltas are rounded to `QUANTUM` beats (16ths; durations to at least one step).
    Transitions are counted within segments only. A token that never has a successor (it only ends
    segments) restarts the chain from the start distribution.
    """

    tokens: np.ndarray  # [K, 3] float: pitch, duration, delta (beats) of each token
    start: np.ndarray  # [K] cumulative probability of starting at each token
    successors: np.ndarray  # [E] token index of each transition, grouped by source token
    cumulative: np.ndarray  # [E] source index + cumulative probability within its group: in (k, k + 1]
    has_successor: np.ndarray  # [K] bool

    @classmethod
    def fit(cls, pitch: np.ndarray, duration: np.ndarray, delta: np.ndarray,
            quantum: float = QUANTUM, mask: np.ndarray | None = None) -> MarkovChain:
        """Count transitions in sequences given as `[S, W]` arrays (one row per segment), in beats.
        With `mask` (`[S, W]`, 1 = a real note) padded entries are neither tokens nor transitions."""
        pitch = np.asarray(pitch)
        if pitch.ndim != 2 or pitch.shape[1] < 2 or pitch.shape[0] < 1:
            raise ValueError(f"need [segments, notes] arrays with at least 2 notes, got shape {pitch.shape}")
        real = np.ones(pitch.shape, dtype=bool) if mask is None else np.asarray(mask).astype(bool)
        if not real[:, 0].any():
            raise ValueError("no sequence starts with a real note")
        steps = np.stack([pitch.astype(float),
                          np.maximum(np.rint(np.asarray(duration) / quantum), 1),
                          np.maximum(np.rint(np.asarray(delta) / quantum), 0)], axis=-1)  # [S, W, 3]
        tokens, inverse = np.unique(steps[real], axis=0, return_inverse=True)
        ids = np.zeros(pitch.shape, dtype=np.int64)
        ids[real] = inverse.ravel()
        k = len(tokens)
        start = np.bincount(ids[:, 0][real[:, 0]], minlength=k).astype(float)
        pairs = (ids[:, :-1] * k + ids[:, 1:])[real[:, :-1] & real[:, 1:]]
        pair, count = np.unique(pairs, return_counts=True)  # sorted by source, then target
        source, target = pair // k, pair % k
        totals = np.bincount(source, weights=count, minlength=k)
        # Cumulative counts within each source's group, offset by the source index, so each group spans
        # (k, k + 1] and one searchsorted picks the successors of many chains at once.
        running = np.cumsum(count)
        first = np.r_[True, source[1:] != source[:-1]]
        within = running - (running - count)[first][np.cumsum(first) - 1]
        tokens = tokens * np.array([1.0, quantum, quantum])
        return cls(tokens=tokens, start=np.cumsum(start) / start.sum(), successors=target,
                   cumulative=source + within / totals[source], has_successor=totals > 0)

    def sample(self, n: int, length: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`n` sequences of `length` notes: (pitch, duration, delta), each `[n, length]`, in beats."""
        ids = np.empty((n, length), dtype=np.int64)
        state = self._starts(n, rng)
        for i in range(length):
            ids[:, i] = state
            u = rng.random(n)
            nxt = np.searchsorted(self.cumulative, state + u, side="right")
            nxt = self.successors[np.minimum(nxt, len(self.successors) - 1)]
            dead = ~self.has_successor[state]
            if dead.any():
                nxt[dead] = self._starts(int(dead.sum()), rng)
            state = nxt
        tok = self.tokens[ids]
        return tok[..., 0].astype(np.int16), tok[..., 1], tok[..., 2]

    def _starts(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.minimum(np.searchsorted(self.start, rng.random(n), side="right"), len(self.start) - 1)


def choose(n_total: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of min(n, n_total) items drawn without replacement."""
    return np.sort(rng.choice(n_total, size=min(n, n_total), replace=False))


def markov_segments(train: np.ndarray, encoding: Encoding, n: int,
                    rng: np.random.Generator, mask: np.ndarray | None = None) -> np.ndarray:
    """`n` normalized `[n, 3, H, W]` segments from one Markov chain per instrument row, fitted on `train`
    (on its real notes only, with `mask`; a row that never has one comes out as zeros)."""
    raw = encoding.decode(train, axis=1)
    rows = []
    for h in range(train.shape[2]):
        duration, delta = np.maximum(raw[:, 1, h], 0), np.maximum(raw[:, 2, h], 0)
        row_mask = None if mask is None else mask[:, h]
        if row_mask is not None and not row_mask[:, 0].any():
            rows.append(encoding.decode(np.zeros((n, 3, train.shape[3])), axis=1))
            continue
        chain = MarkovChain.fit(pitch_of(raw[:, 0, h]), duration, delta, mask=row_mask)
        pitch, duration, delta = chain.sample(n, train.shape[3], rng)
        rows.append(np.stack([frequency(pitch), duration, delta], axis=1))  # [n, 3, W]
    return encoding.encode(np.stack(rows, axis=2), axis=1).astype(np.float32)


def baseline_sets(train: np.ndarray, encoding: Encoding, n: int,
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The train-split sets, as normalized segments: `real` (n segments drawn at random), `shuffle`
    (those same segments shuffled, so the two differ only in order) and `markov` (n chain segments).

    Deterministic for a given generator state; each set draws from its own child stream.
    """
    pick, mix, chain = rng.spawn(3)
    real = train[choose(len(train), n, pick)]
    return {"real": real, "shuffle": shuffle_segments(real, mix),
            "markov": markov_segments(train, encoding, n, chain)}


def masked_baseline_sets(train: np.ndarray, mask: np.ndarray, encoding: Encoding, n: int,
                         rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`baseline_sets` for multi-instrument segments: each set as (segments, mask). `real` and `shuffle`
    keep the drawn segments' masks; `markov` draws as many segments, each row as long as the real draw's
    (its padding zeroed), so the three sets have the same number of notes per row."""
    pick, mix, chain = rng.spawn(3)
    chosen = choose(len(train), n, pick)
    real, real_mask = train[chosen], mask[chosen]
    markov = markov_segments(train, encoding, len(real), chain, mask) * real_mask[:, None]
    return {"real": (real, real_mask), "shuffle": (shuffle_segments(real, mix, real_mask), real_mask),
            "markov": (markov.astype(np.float32), real_mask)}
