"""Writing generated pieces: each piece's files (MIDI, audio, piano roll), into a folder all of them or
none, one writer at a time.

`dmc generate o` first writes every file into `o/.dmc-generate-<pid>-<random>/`. Only when all are there
do they replace the folder's pieces: the `sample_NNN.*` files of an earlier run, all of them, so the
folder never mixes two runs. The old pieces move aside into `<staging>.old/`, the new ones move in, then
the old ones are deleted; an error or an interruption at any point moves everything back. Other files in
the folder are never touched.

A lock file, `o/.dmc-generate.lock`, refuses a second writer in one line while the first runs. The next
writer removes the staging folders of writers that died, and puts back the pieces one had moved aside.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.compose.decode import TICKS_PER_QUARTER, to_ticks
from pipeline.data import midi
from pipeline.data.rows import RowNotes
from pipeline.errors import DmcError, Interrupted, write_error
from pipeline.files import exclusive_lock, process_running, remove_stale_temps

if TYPE_CHECKING:
    from pipeline.compose.options import GenerateOptions

PIECE = re.compile(r"^sample_\d{3,}\.[A-Za-z0-9]+$")  # sample_000.mid, sample_000.ogg, sample_000.png
LOCK = ".dmc-generate.lock"
STAGING = ".dmc-generate-"
# A dead writer's backup of the old pieces; `_COMPLETE` inside marks that all of them had been moved.
_BACKUP = re.compile(r"^\.dmc-generate-(?P<pid>\d+)-[a-z0-9_]{8}\.old$")
_COMPLETE = ".complete"

Track = list[midi.TrackNotes]


@contextmanager
def pieces_into(out_dir: str | Path, log: Callable[[str], None] = print) -> Iterator[Path]:
    """Yield an empty staging folder inside `out_dir`; when the body returns, the files in it replace
    the pieces in `out_dir` in one step. On any error `out_dir` is left as it was (a folder this call
    created is removed again), and an OSError such as a full disk becomes a one-line DmcError."""
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DmcError(f"cannot write to output folder {out_dir}: {err.strerror or err}") from None
    busy = f"{out_dir}: another `dmc generate` is writing there; wait for it or choose another folder"
    ok = False
    try:
        with exclusive_lock(out_dir / LOCK, busy):
            _recover(out_dir, log)
            staging = Path(tempfile.mkdtemp(prefix=f"{STAGING}{os.getpid()}-", dir=out_dir))
            try:
                yield staging
                replace_pieces(out_dir, staging, log)
                ok = True
            except KeyboardInterrupt as err:
                raise Interrupted("interrupted; the output folder is as it was",
                                  getattr(err, "signum", signal.SIGINT)) from None
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except OSError as err:  # a full disk, a read-only folder: while writing the pieces or around them
        raise DmcError(f"{write_error(out_dir, err)}; {out_dir} is as it was") from None
    finally:
        if created and not ok and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()


def pieces(folder: Path) -> list[str]:
    """The names of the generated pieces in `folder`, sorted."""
    return sorted(e.name for e in os.scandir(folder) if PIECE.match(e.name))


def replace_pieces(out_dir: Path, staging: Path, log: Callable[[str], None] = print) -> None:
    """Make the files in `staging` the pieces of `out_dir`, or leave `out_dir` as it was (DmcError)."""
    new, old = sorted(os.listdir(staging)), pieces(out_dir)
    for name in sorted({*new, *old}):
        target = out_dir / name
        if target.is_dir() and not target.is_symlink():
            raise DmcError(f"{target} is a folder, where a piece goes; move it away (nothing was replaced)")
    backup = staging.with_name(staging.name + ".old")
    backup.mkdir()
    moved_old: list[str] = []
    moved_new: list[str] = []
    try:
        for name in old:
            os.rename(out_dir / name, backup / name)
            moved_old.append(name)
        (backup / _COMPLETE).touch()
        for name in new:
            os.rename(staging / name, out_dir / name)
            moved_new.append(name)
    except BaseException as err:  # an error or an interruption: put the old pieces back
        try:
            for name in moved_new:
                os.rename(out_dir / name, staging / name)
            for name in moved_old:
                os.replace(backup / name, out_dir / name)
        except OSError as undo:
            raise DmcError(f"cannot replace the pieces in {out_dir} ({_reason(err)}) nor put the old ones "
                           f"back ({_reason(undo)}); they are in {backup}") from None
        shutil.rmtree(backup, ignore_errors=True)
        if isinstance(err, OSError):
            where = err.filename or out_dir
            raise DmcError(f"cannot replace {where}: {_reason(err)}; {out_dir} is as it was") from None
        raise
    shutil.rmtree(backup, ignore_errors=True)
    dropped = sorted({Path(n).stem for n in old} - {Path(n).stem for n in new})
    if dropped:
        log(f"generate: removed {len(dropped)} pieces of an earlier run from {out_dir} "
            f"({dropped[0]}..{dropped[-1]}), so that it holds this run's only")


def _reason(err: BaseException) -> str:
    return (err.strerror if isinstance(err, OSError) and err.strerror else None) or type(err).__name__


def _recover(out_dir: Path, log: Callable[[str], None]) -> None:
    """Undo what writers that died here left (called under the lock): put back the old pieces a writer
    had moved aside, then remove the staging folders."""
    for entry in sorted(os.scandir(out_dir), key=lambda e: e.name):
        match = _BACKUP.match(entry.name)
        if not match or process_running(int(match["pid"])):
            continue
        backup = Path(entry.path)
        if (backup / _COMPLETE).exists():  # it died moving the new pieces in: those go
            for name in pieces(out_dir):
                os.unlink(out_dir / name)
        kept = pieces(backup)
        for name in kept:
            os.replace(backup / name, out_dir / name)
        shutil.rmtree(backup)
        log(f"generate: put back {len(kept)} files of {out_dir} that an interrupted generate "
            f"(pid {match['pid']}) had moved aside")
    for litter in remove_stale_temps(out_dir):
        log(f"generate: removed {litter}, left by an interrupted generate")


# -- one piece's files -------------------------------------------------------------------------------------


def programs_for(stats: dict[str, Any], rows: int) -> list[tuple[int, bool, str]]:
    """(GM program, is_drum, name) for each model row, from the training data's stats. Tracks are named
    after their instrument group, which is how `pipeline.data.instruments` finds them again."""
    names = list(stats.get("instruments") or ["piano"])[:rows]
    names += [f"row {h}" for h in range(len(names), rows)]
    # stats["row_programs"] (one GM program per row) is written by multi-instrument prepare; piano is 0.
    programs = stats.get("row_programs")
    if not (isinstance(programs, list) and len(programs) >= rows):
        programs = [0] * rows
    return [(int(programs[h]), names[h] == "drums", names[h]) for h in range(rows)]


def on_grid(row: RowNotes, grid: int | None) -> RowNotes:
    """A generated row as it is written: onsets and durations in whole ticks (on `grid`, if given), no note
    shorter than MIN_DURATION_TICKS, none twice on one pitch and tick (`to_ticks`)."""
    t = to_ticks(row.pitch, row.onset, row.duration, grid)
    return RowNotes.of(t.pitch, t.onset / TICKS_PER_QUARTER, t.duration / TICKS_PER_QUARTER)


def row_tracks(pieces: list[list[RowNotes]], kept: Collection[int], grid: int | None,
               tracks_of: list[tuple[int, bool, str]]) -> list[Track]:
    """Multi-row pieces -> tracks. Kept rows are written as they came; generated ones `on_grid`."""
    out = []
    for rows in pieces:
        written = [row if h in kept else on_grid(row, grid) for h, row in enumerate(rows)]
        out.append([midi.TrackNotes(pitch=r.pitch, onset=r.onset, duration=r.duration, program=program,
                                    is_drum=drum, name=name)
                    for r, (program, drum, name) in zip(written, tracks_of, strict=True)])
    return out


def write_piece(folder: Path, stem: str, tracks: Track, opts: GenerateOptions, notices: list[str],
                 log: Callable[[str], None]) -> list[str]:
    """Write one piece's MIDI (and audio, piano roll) into `folder`; returns the file names."""
    from pipeline.render import audio

    midi.write_midi(folder / f"{stem}.mid", tracks, tempo=opts.tempo, ticks_per_quarter=TICKS_PER_QUARTER)
    names = [f"{stem}.mid"]
    if opts.audio and audio.can_render():
        try:
            names.append(audio.render_audio_file(folder / f"{stem}.mid", folder / f"{stem}.{opts.audio}",
                                                 opts.audio).name)
        except RuntimeError as err:  # the MIDI is the product; a failed rendering is only noted
            notices.append(f"notice: no audio for {stem}: {err}")
            log(notices[-1])
    if opts.plot:
        from pipeline.render.plots import write_piano_roll

        names.append(write_piano_roll(folder / f"{stem}.png", tracks, title=stem).name)
    return names
