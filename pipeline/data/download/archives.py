"""Verified archives (maestro, lakh): download with resume, check size and checksum, extract safely.

The file streams to `<raw_dir>/<archive name>.part`, is verified and only then extracted, entry by entry
with explicit path checks, into a temp folder that is renamed to `<raw_dir>/<dataset>`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import sys
import tarfile
import urllib.error
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

from tqdm import tqdm

from pipeline.data.download.http import (
    CHUNK,
    Client,
    Settings,
    Unreachable,
    download_resumable,
    refused_error,
    unreachable_error,
)
from pipeline.data.download.local import COMPLETE, read_marker
from pipeline.errors import DmcError
from pipeline.files import atomic_path, write_json

_DRIVE = re.compile(r"^[A-Za-z]:")  # `C:/x` is absolute on Windows, and a zip may come from there


@dataclass(frozen=True)
class Checksum:
    """An expected digest, and the expected size when it is published."""

    algorithm: str
    digest: str
    size: int | None = None

    @classmethod
    def parse(cls, text: str) -> Checksum:
        """`sha256:<hex>` or `md5:<hex>` (params validate the form)."""
        algorithm, _, digest = text.partition(":")
        return cls(algorithm.lower(), digest.lower())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.digest}"


def fetch_archive(dataset: str, dest: Path, params: dict[str, Any], published: Checksum) -> Path:
    """Make the verified, extracted archive at `urls.<dataset>` present in `dest`; return `dest`.

    The checksum is the dataset's published one unless `download.checksums.<dataset>` names another (a
    mirror holding a different file, or a test fixture). The verified archive is kept beside `dest`, so
    extracting again never needs the network.
    """
    url = params["urls"][dataset]
    override = params["download"]["checksums"][dataset]
    expected = Checksum.parse(override) if override else published
    if read_marker(dest).get("checksum") == str(expected):
        return dest
    archive = dest.parent / (PurePosixPath(unquote(urlsplit(url).path)).name or f"{dataset}.archive")
    if archive.exists() and _mismatch(archive, expected, dataset):
        archive.unlink()  # from another source, or damaged: fetch it again
    settings = Settings.from_params(params)
    if not archive.exists():
        try:
            download_verified(Client(settings), url, archive, expected, dataset)
        except Unreachable as err:
            raise unreachable_error(dataset, err) from None
        except urllib.error.HTTPError as err:
            raise refused_error(dataset, url, err, settings.user_agent) from None
    n = extract_archive(archive, dest, {"url": url, "checksum": str(expected)}, dataset,
                        Limits.from_params(params))
    print(f"{dataset}: extracted {n:,} files from {archive.name} into {dest}", file=sys.stderr)
    return dest


def download_verified(client: Client, url: str, path: Path, expected: Checksum, label: str) -> None:
    """Stream `url` to `path`, through `path.part` so that a later call resumes it, then verify it.

    On a size or checksum mismatch the partial file is deleted and DmcError raised: nothing is kept.
    """
    part = path.with_name(path.name + ".part")
    download_resumable(client, url, part, expected.size, label)
    problem = _mismatch(part, expected, label)
    if problem:
        part.unlink()
        raise DmcError(f"dataset '{label}': {url}: {problem}; the download was deleted")
    os.replace(part, path)


def _mismatch(path: Path, expected: Checksum, label: str) -> str | None:
    """What is wrong with the file at `path` (size, then digest), or None when it matches."""
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        return f"size {size:,} bytes, expected {expected.size:,}"
    digest = hashlib.new(expected.algorithm)
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"{label}: verify",
                                     disable=None) as bar:
        while block := f.read(1 << 20):
            digest.update(block)
            bar.update(len(block))
    if digest.hexdigest() != expected.digest:
        return f"checksum mismatch ({expected.algorithm} {digest.hexdigest()}, expected {expected.digest})"
    return None


@dataclass(frozen=True)
class Limits:
    """How much an archive may expand (`download.max_extract_gb`, `download.max_ratio`): a small archive
    must not fill the disk. The defaults admit Lakh (1.77 GB of tar.gz, about 178K files) with room."""

    max_bytes: int = 32 * 10**9  # all members together, uncompressed
    max_ratio: float = 100.0  # one member's uncompressed size over its compressed size

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Limits:
        d = params["download"]
        return cls(int(d["max_extract_gb"] * 10**9), float(d["max_ratio"]))

    def too_big(self, total: int) -> bool:
        return total > self.max_bytes

    def expands_too_much(self, size: int, compressed: int) -> bool:
        # The slack lets small members through: one that stays under it cannot fill a disk on its own
        # (the total limit counts them all), and it absorbs the decompressor's read-ahead in tar streams.
        return size > self.max_ratio * (compressed + _RATIO_SLACK)


_RATIO_SLACK = 1 << 16
_MAX_LINK = 4096  # PATH_MAX: a symlink target is a path, never longer


def extract_archive(archive: Path, dest: Path, marker: dict[str, Any], label: str,
                    limits: Limits = Limits()) -> int:
    """Extract the regular files of a zip or tar archive to `dest`, replacing it atomically.

    Refused (DmcError, and nothing is left: extraction goes to a temp folder beside `dest`): entries with
    an empty name, an absolute path or `..`, links pointing outside the archive, two entries of the same
    name, and archives that expand beyond `limits`. Links inside the archive, devices and fifos are
    skipped: MIDI data needs none of them. Returns the number of files written.
    """
    try:
        with atomic_path(dest) as tmp:
            tmp.mkdir()
            if zipfile.is_zipfile(archive):
                n = _extract_zip(archive, tmp, label, limits)
            else:
                n = _extract_tar(archive, tmp, label, limits)
            write_json(tmp / COMPLETE, {**marker, "files": n})
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile, tarfile.TarError) as err:
        raise DmcError(f"dataset '{label}': cannot extract {archive.name}: {err}") from None
    return n


class _Members:
    """The checks that need every member seen so far: duplicate names and the total size."""

    def __init__(self, archive: Path, limits: Limits):
        self.archive, self.limits = archive, limits
        self.files: set[tuple[str, ...]] = set()
        self.total = 0

    def add_file(self, name: str, size: int, compressed: int | None) -> None:
        """Book a regular file of `size` bytes (`compressed` in the archive, when the format says)."""
        key = tuple(p for p in name.replace("\\", "/").split("/") if p not in ("", "."))
        if key in self.files:
            raise DmcError(f"archive {self.archive.name}: refusing entry '{name}': a second entry of that "
                           "name would silently replace the first")
        self.files.add(key)
        self.total += size
        if self.limits.too_big(self.total):
            raise DmcError(f"archive {self.archive.name}: refusing it: its files add up to more than "
                           f"{self.limits.max_bytes / 10**9:g} GB (download.max_extract_gb)")
        if compressed is not None:
            self.check_ratio(name, size, compressed)

    def check_ratio(self, name: str, size: int, compressed: int) -> None:
        if self.limits.expands_too_much(size, compressed):
            raise DmcError(f"archive {self.archive.name}: refusing entry '{name}': it expands more than "
                           f"{self.limits.max_ratio:g} times (download.max_ratio)")


def _extract_zip(archive: Path, root: Path, label: str, limits: Limits) -> int:
    members = _Members(archive, limits)
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        # Every check the central directory allows comes first: a refused archive writes nothing. The
        # sizes it declares bind: zipfile stops a member at its declared size and checks its CRC.
        links: dict[str, str] = {}
        for info in infos:
            _check_name(archive, info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):  # unix mode in the high 16 bits
                links[info.filename] = _zip_link_target(archive, zf, info)
                _check_link(archive, info.filename, links[info.filename], hard=False)
            elif not info.is_dir():
                members.add_file(info.filename, info.file_size, info.compress_size)
        n = 0
        for info in tqdm(infos, unit="file", desc=f"{label}: extract", disable=None):
            if info.filename in links:
                continue
            target = _entry_target(archive, root, info.filename)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
            n += 1
    return n


def _zip_link_target(archive: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    """A zip symlink's target, its content: read only when it is as short as a path can be."""
    if info.file_size > _MAX_LINK:
        raise DmcError(f"archive {archive.name}: refusing link '{info.filename}': its target is "
                       f"{info.file_size:,} bytes, longer than any path")
    with zf.open(info) as f:
        return f.read(_MAX_LINK + 1)[:_MAX_LINK].decode("utf-8", "replace")


def _check_name(archive: Path, name: str) -> None:
    if not name.strip("/"):
        raise DmcError(f"archive {archive.name}: refusing an entry with an empty name {name!r}")


class _Counting:
    """A read-only file wrapper that counts the bytes read and reports them to a progress bar."""

    def __init__(self, f: BinaryIO, bar: tqdm):
        self.f, self.bar = f, bar
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.count += len(data)
        self.bar.update(len(data))
        return data


def _extract_tar(archive: Path, root: Path, label: str, limits: Limits) -> int:
    """Stream mode (`r|*`): one pass over a compressed tar of any size, with a bar over its bytes.

    A tar member's header states its true size, so the total is checked before it is written; its
    compressed size is what the stream consumes while it is copied, so the ratio is checked as it goes.
    """
    n = 0
    members = _Members(archive, limits)
    with open(archive, "rb") as raw, tqdm(total=archive.stat().st_size, unit="B", unit_scale=True,
                                           desc=f"{label}: extract", disable=None) as bar:
        counting = _Counting(raw, bar)
        with tarfile.open(fileobj=counting, mode="r|*") as tar:  # type: ignore[call-overload]
            for member in tar:
                _check_name(archive, member.name)
                if member.issym() or member.islnk():
                    _check_link(archive, member.name, member.linkname, hard=member.islnk())
                    continue
                target = _entry_target(archive, root, member.name)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif member.isfile():
                    members.add_file(member.name, member.size, None)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(member)
                    assert src is not None  # a regular file always has content
                    start, written = counting.count, 0
                    with src, open(target, "wb") as dst:
                        while block := src.read(CHUNK):
                            dst.write(block)
                            written += len(block)
                            members.check_ratio(member.name, written, counting.count - start)
                    n += 1
    return n


def _entry_target(archive: Path, root: Path, name: str) -> Path:
    """Where entry `name` goes under `root`; DmcError for an absolute path or a `..` component."""
    posix = name.replace("\\", "/")
    parts = PurePosixPath(posix).parts
    if posix.startswith("/") or _DRIVE.match(posix) or ".." in parts:
        raise DmcError(f"archive {archive.name}: refusing entry '{name}': an absolute path or '..' "
                       "would write outside the dataset folder")
    target = root.joinpath(*(p for p in parts if p != "."))
    # Belt and braces: nothing above creates links, but a path must never resolve outside the root.
    if not target.resolve().is_relative_to(root.resolve()):
        raise DmcError(f"archive {archive.name}: refusing entry '{name}': it resolves outside the folder")
    return target


def _check_link(archive: Path, name: str, link: str, hard: bool) -> None:
    """Refuse a link that points outside the archive. A symlink is relative to its own folder, a hard
    link to the archive root."""
    link = link.replace("\\", "/")
    where = PurePosixPath() if hard else PurePosixPath(name.replace("\\", "/")).parent
    if link.startswith("/") or _DRIVE.match(link) or _escapes(where / link):
        raise DmcError(f"archive {archive.name}: refusing link '{name}' -> '{link}': it points outside "
                       "the dataset folder")


def _escapes(path: PurePosixPath) -> bool:
    depth = 0
    for part in path.parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False

