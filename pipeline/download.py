"""Fetch the downloadable datasets over HTTP: verified archives and polite crawls, both resumable.

Archives (maestro, lakh): the file streams to `<raw_dir>/<archive name>.part`, resumes with an HTTP Range
request after an interruption, is verified (size, checksum) and only then extracted, entry by entry with
explicit path checks, into a temp folder that is renamed to `<raw_dir>/<dataset>`.

Crawls (classical, final-fantasy, freemidi): pages are visited level by level following link patterns,
and every linked MIDI file is downloaded, checked for the `MThd` header and written atomically. An
append-only log (`.crawl.jsonl` in the dataset folder) records what is done, so a crawl that stopped
resumes where it stopped.

Both end by writing `.complete.json` into the dataset folder; a re-run that finds it matching makes no
request at all.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import stat
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.cookiejar import CookieJar
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, TypeVar
from urllib.parse import unquote, urldefrag, urljoin, urlsplit
from urllib.robotparser import RobotFileParser

from tqdm import tqdm

from pipeline.errors import DmcError
from pipeline.files import atomic_path, write_json

USER_AGENT = "dmc/0.1 (MIDI dataset downloader for music research; honours robots.txt)"
FOLDER_HINT = "to use MIDI files obtained elsewhere: dvc exp run -S dataset=folder -S raw_dir=/path/to/midi"
COMPLETE = ".complete.json"
CRAWL_LOG = ".crawl.jsonl"
MIDI_MAGIC = b"MThd"
_CHUNK = 1 << 16
_DRIVE = re.compile(r"^[A-Za-z]:")  # `C:/x` is absolute on Windows, and a zip may come from there
T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """The `download.*` knobs shared by archives and crawls."""

    concurrency: int = 4
    rate_limit: float = 2.0  # requests per second per host
    timeout: float = 30.0  # seconds a connection may stay silent
    retries: int = 4
    backoff: float = 1.0  # seconds before the first retry; doubles each time

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Settings:
        d = params["download"]
        return cls(d["concurrency"], d["rate_limit"], d["timeout"], d["retries"], d["backoff"])


# -- HTTP -------------------------------------------------------------------------------------------
class Unreachable(Exception):
    """Every try at a URL failed with a transient error (5xx, timeout, dropped or refused connection)."""

    def __init__(self, url: str, reason: str, tries: int):
        super().__init__(f"{url}: {reason}")
        self.url, self.reason, self.tries = url, reason, tries


class _RateLimit:
    """At most `per_second` request starts per host, shared by all worker threads."""

    def __init__(self, per_second: float):
        self.interval = 1.0 / per_second
        self.next = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next)
            self.next = start + self.interval
        time.sleep(start - now)


class Client:
    """GET requests with a clear User-Agent, cookies, a per-host rate limit and retries with backoff."""

    def __init__(self, settings: Settings):
        self.settings = settings
        # Cookies: some sites hand out a session on the page that their download links then require.
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        self.limits: dict[str, _RateLimit] = {}
        self.lock = threading.Lock()
        self.requests = 0  # sent, retries included

    def slow_down(self, url: str, per_second: float) -> None:
        """Lower one host's rate (robots.txt's Crawl-delay); never raises it above the params."""
        limit = self._limit(url)
        limit.interval = max(limit.interval, 1.0 / per_second)

    def _limit(self, url: str) -> _RateLimit:
        host = urlsplit(url).netloc
        with self.lock:
            return self.limits.setdefault(host, _RateLimit(self.settings.rate_limit))

    def open(self, url: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        """One GET after the host's rate limit; a status >= 400 raises urllib.error.HTTPError."""
        self._limit(url).wait()
        with self.lock:
            self.requests += 1
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
        return self.opener.open(request, timeout=self.settings.timeout)

    def get(self, url: str, headers: dict[str, str] | None = None) -> tuple[bytes, str]:
        """The whole body and the final URL (after redirects), with retries."""

        def attempt() -> tuple[bytes, str]:
            with self.open(url, headers) as response:
                return response.read(), response.geturl()  # read() raises IncompleteRead if cut short

        return self.retrying(url, attempt)

    def retrying(self, url: str, attempt: Callable[[], T]) -> T:
        """Run `attempt` (which talks to `url`), retrying transient failures with exponential backoff.

        Raises Unreachable after the last try; a definitive HTTP answer (404, 403, ...) propagates at once.
        """
        tries = self.settings.retries + 1
        for n in range(tries):
            try:
                return attempt()
            except Exception as err:
                if not _transient(err):
                    raise
                reason = self._why(err)
            if n + 1 < tries:
                time.sleep(self.settings.backoff * 2**n)
        raise Unreachable(url, reason, tries)

    def _why(self, err: BaseException) -> str:
        if isinstance(err, urllib.error.HTTPError):
            return f"HTTP {err.code} {err.reason}"
        if isinstance(err, urllib.error.URLError) and isinstance(err.reason, BaseException):
            err = err.reason
        if isinstance(err, TimeoutError):
            return f"no answer within {self.settings.timeout:g} s"
        if isinstance(err, http.client.IncompleteRead):
            return "connection dropped mid-file"
        return str(err) or type(err).__name__


def _transient(err: BaseException) -> bool:
    """Worth another try: server errors, rate limiting, timeouts, refused or dropped connections."""
    if isinstance(err, urllib.error.HTTPError):
        return err.code >= 500 or err.code == 429
    return isinstance(err, urllib.error.URLError | TimeoutError | ConnectionError | http.client.HTTPException)


def _unreachable(dataset: str, err: Unreachable) -> DmcError:
    return DmcError(f"dataset '{dataset}': cannot fetch {err.url}: {err.reason} (after {err.tries} "
                    f"{'try' if err.tries == 1 else 'tries'}); {FOLDER_HINT}")


def _refused(dataset: str, url: str, err: urllib.error.HTTPError) -> DmcError:
    return DmcError(f"dataset '{dataset}': {url} answered HTTP {err.code} {err.reason}; {FOLDER_HINT}")


# -- archives ---------------------------------------------------------------------------------------
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
    if _marker(dest).get("checksum") == str(expected):
        return dest
    archive = dest.parent / (PurePosixPath(unquote(urlsplit(url).path)).name or f"{dataset}.archive")
    if archive.exists() and _mismatch(archive, expected, dataset):
        archive.unlink()  # from another source, or damaged: fetch it again
    if not archive.exists():
        try:
            download_verified(Client(Settings.from_params(params)), url, archive, expected, dataset)
        except Unreachable as err:
            raise _unreachable(dataset, err) from None
        except urllib.error.HTTPError as err:
            raise _refused(dataset, url, err) from None
    n = extract_archive(archive, dest, {"url": url, "checksum": str(expected)}, dataset)
    print(f"{dataset}: extracted {n:,} files from {archive.name} into {dest}", file=sys.stderr)
    return dest


def download_verified(client: Client, url: str, path: Path, expected: Checksum, label: str) -> None:
    """Stream `url` to `path`, through `path.part` so that a later call resumes it, then verify it.

    On a size or checksum mismatch the partial file is deleted and DmcError raised: nothing is kept.
    """
    part = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)

    def attempt() -> None:
        have = part.stat().st_size if part.exists() else 0
        if expected.size is not None and have >= expected.size:
            if have == expected.size:
                return
            part.unlink()
            have = 0
        try:
            response = client.open(url, {"Range": f"bytes={have}-"} if have else None)
        except urllib.error.HTTPError as err:
            if err.code != 416 or not have:
                raise
            # Nothing past `have`: the part is the whole file if the server's total says so.
            if _range_total(err.headers.get("Content-Range", "")) == have:
                return
            part.unlink()
            raise http.client.HTTPException("range not satisfiable; starting over") from None
        with response:
            resumed = bool(have) and response.status == 206 and _range_start(response) == have
            if not resumed:  # the server ignored the Range (or there was none): start over
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else expected.size
            got = 0
            with open(part, "ab" if resumed else "wb") as f, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, desc=f"{label}: download",
                    disable=None) as bar:
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
            if length is not None and got < int(length):  # http.client returns short reads silently
                raise http.client.IncompleteRead(b"", int(length) - got)

    client.retrying(url, attempt)
    problem = _mismatch(part, expected, label)
    if problem:
        part.unlink()
        raise DmcError(f"dataset '{label}': {url}: {problem}; the download was deleted")
    os.replace(part, path)


def _range_start(response: http.client.HTTPResponse) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _range_total(content_range: str) -> int | None:
    match = re.search(r"/(\d+)$", content_range)
    return int(match.group(1)) if match else None


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


def extract_archive(archive: Path, dest: Path, marker: dict[str, Any], label: str) -> int:
    """Extract the regular files of a zip or tar archive to `dest`, replacing it atomically.

    Entries with an absolute path or `..`, and links pointing outside the archive, are refused (DmcError,
    and nothing is left: extraction goes to a temp folder beside `dest`). Links inside the archive, devices
    and fifos are skipped: MIDI data needs none of them. Returns the number of files written.
    """
    try:
        with atomic_path(dest) as tmp:
            tmp.mkdir()
            if zipfile.is_zipfile(archive):
                n = _extract_zip(archive, tmp, label)
            else:
                n = _extract_tar(archive, tmp, label)
            write_json(tmp / COMPLETE, {**marker, "files": n})
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile, tarfile.TarError) as err:
        raise DmcError(f"dataset '{label}': cannot extract {archive.name}: {err}") from None
    return n


def _extract_zip(archive: Path, root: Path, label: str) -> int:
    n = 0
    with zipfile.ZipFile(archive) as zf:
        for info in tqdm(zf.infolist(), unit="file", desc=f"{label}: extract", disable=None):
            if stat.S_ISLNK(info.external_attr >> 16):  # unix mode in the high 16 bits
                _check_link(archive, info.filename, zf.read(info).decode("utf-8", "replace"), hard=False)
                continue
            target = _entry_target(archive, root, info.filename)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
            n += 1
    return n


class _Counting:
    """A read-only file wrapper that reports the bytes read to a progress bar."""

    def __init__(self, f: BinaryIO, bar: tqdm):
        self.f, self.bar = f, bar

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.bar.update(len(data))
        return data


def _extract_tar(archive: Path, root: Path, label: str) -> int:
    """Stream mode (`r|*`): one pass over a compressed tar of any size, with a bar over its bytes."""
    n = 0
    with open(archive, "rb") as raw, tqdm(total=archive.stat().st_size, unit="B", unit_scale=True,
                                           desc=f"{label}: extract", disable=None) as bar, \
            tarfile.open(fileobj=_Counting(raw, bar), mode="r|*") as tar:  # type: ignore[call-overload]
        for member in tar:
            if member.issym() or member.islnk():
                _check_link(archive, member.name, member.linkname, hard=member.islnk())
                continue
            target = _entry_target(archive, root, member.name)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                assert src is not None  # a regular file always has content
                with src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
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


def _marker(dest: Path) -> dict[str, Any]:
    try:
        return json.loads((dest / COMPLETE).read_text())
    except (OSError, ValueError):
        return {}


# -- crawls -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Site:
    """How to crawl one web site: where to start, which links are pages to visit, which are MIDI files.

    Links are matched (regex search, ignoring case: `.MID` is common) as paths relative to the base URL,
    such as `midis/bach/bach_846.mid`; links leaving the base URL are never followed.
    """

    seeds: tuple[str, ...]  # pages to start from, relative to the base URL
    follow: tuple[str, ...]  # follow[d]: links on a depth-d page that are the pages of depth d + 1
    files: str  # links (on any page) to download as MIDI files
    name: Callable[[str], str] = str  # relative link -> path of the file under the dataset folder

    def rules(self) -> str:
        """Identifies the link patterns: a page's logged links stay valid while these are unchanged."""
        return _digest([list(self.follow), self.files])

    def fingerprint(self) -> str:
        """Identifies the whole crawl, seeds included: a finished crawl with this fingerprint is current."""
        return _digest([list(self.seeds), list(self.follow), self.files])


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


@dataclass
class CrawlReport:
    """What a crawl found. Lists hold URLs; `failed` holds (URL, reason)."""

    files: int = 0  # MIDI files present now
    fetched: int = 0  # of which downloaded by this run
    requests: int = 0
    not_midi: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # 4xx answers
    blocked: list[str] = field(default_factory=list)  # disallowed by robots.txt
    failed: list[tuple[str, str]] = field(default_factory=list)

    def summary(self, dataset: str) -> str:
        parts = [f"{dataset}: {self.files:,} MIDI files ({self.fetched:,} new, {self.requests:,} requests)"]
        for what, urls in (("not MIDI, skipped", self.not_midi), ("not found", self.missing),
                           ("disallowed by robots.txt", self.blocked)):
            if urls:
                parts.append(f"{len(urls):,} {what} (e.g. {urls[0]})")
        return "; ".join(parts)


class _CrawlLog:
    """Append-only JSON lines of what a crawl has done. A line torn by a crash is dropped on reopening."""

    def __init__(self, path: Path, rules: str):
        self.pages: dict[str, tuple[list[str], list[str]]] = {}  # page -> (pages it links, files it links)
        self.files: dict[str, str] = {}  # file link -> path under the dataset folder
        self.skipped: dict[str, str] = {}  # link -> why (not MIDI, HTTP 404, ...)
        text = path.read_bytes() if path.exists() else b""
        if text and not text.endswith(b"\n"):
            text = text[: text.rfind(b"\n") + 1]
            path.write_bytes(text)
        for line in text.decode("utf-8", "replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if "page" in record and record.get("rules") == rules:
                self.pages[record["page"]] = (record["pages"], record["files"])
            elif "file" in record:
                self.files[record["file"]] = record["path"]
            elif "skip" in record:
                self.skipped[record["skip"]] = record["reason"]
        self.rules = rules
        self.f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the crawl's lifetime

    def _add(self, record: dict[str, Any]) -> None:
        self.f.write(json.dumps(record) + "\n")
        self.f.flush()

    def page(self, link: str, pages: list[str], files: list[str]) -> None:
        self.pages[link] = (pages, files)
        self._add({"page": link, "rules": self.rules, "pages": pages, "files": files})

    def file(self, link: str, path: str) -> None:
        self.files[link] = path
        self._add({"file": link, "path": path})

    def skip(self, link: str, reason: str) -> None:
        self.skipped[link] = reason
        self._add({"skip": link, "reason": reason})

    def close(self) -> None:
        self.f.close()


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("a", "area"):
            self.hrefs.extend(v for k, v in attrs if k == "href" and v)


def page_links(html: str, page_url: str, base: str) -> list[str]:
    """The links of an HTML page, as paths relative to `base`, in order, without duplicates or
    fragments; links that leave `base` are dropped."""
    parser = _Links()
    parser.feed(html)
    parser.close()
    out: dict[str, None] = {}
    for href in parser.hrefs:
        url = urldefrag(urljoin(page_url, href.strip())).url
        if url.startswith(base) and len(url) > len(base):
            out[url[len(base):]] = None
    return list(out)


def local_path(link: str) -> str:
    """A safe relative file path for a link: no empty, `.` or `..` parts, no odd characters, and a
    .mid suffix so the manifest sees it."""
    parts = [re.sub(r"[^\w.\-+()&,' ]", "_", p) for p in unquote(urlsplit(link).path).split("/")
             if p not in ("", ".", "..")]
    if not parts:
        parts = ["index"]
    if not parts[-1].lower().endswith((".mid", ".midi")):
        parts[-1] += ".mid"
    return "/".join(parts)


def crawl(dataset: str, dest: Path, params: dict[str, Any], site: Site) -> CrawlReport:
    """Crawl the site at `urls.<dataset>` into `dest`: every linked MIDI file, checked and kept.

    Polite: `download.concurrency` workers, `download.rate_limit` requests per second (or robots.txt's
    Crawl-delay when slower), robots.txt obeyed, a clear User-Agent. Resumable and idempotent through the
    crawl log. Raises DmcError when the site is unreachable, or when URLs still fail after the retries
    (a re-run resumes with exactly those).
    """
    base = params["urls"][dataset].rstrip("/") + "/"
    settings = Settings.from_params(params)
    report = CrawlReport()
    log_path = dest / CRAWL_LOG
    if _marker(dest).get("site") == site.fingerprint() and log_path.exists():
        log = _CrawlLog(log_path, site.rules())
        log.close()
        if all((dest / p).is_file() for p in log.files.values()):
            report.files = len(set(log.files.values()))
            print(report.summary(dataset) + "; up to date", file=sys.stderr)
            return report
    client = Client(settings)
    robots = _robots(dataset, client, base, report)  # first, so an unreachable site leaves no folder
    dest.mkdir(parents=True, exist_ok=True)
    (dest / COMPLETE).unlink(missing_ok=True)
    log = _CrawlLog(log_path, site.rules())
    try:
        files = _crawl_pages(dataset, client, robots, base, site, log, settings, report)
        _crawl_files(dataset, client, robots, base, site, log, settings, report, files, dest)
    finally:
        log.close()
        report.requests = client.requests
    report.files = len({p for p in log.files.values() if (dest / p).is_file()})
    print(report.summary(dataset), file=sys.stderr)
    if report.failed:
        url, reason = report.failed[0]
        raise DmcError(f"dataset '{dataset}': {len(report.failed):,} URLs still failing after "
                       f"{settings.retries + 1} tries (first: {url}: {reason}); re-run to resume; "
                       f"{FOLDER_HINT}")
    write_json(dest / COMPLETE, {"url": base, "site": site.fingerprint(), "files": report.files})
    return report


def _robots(dataset: str, client: Client, base: str, report: CrawlReport) -> RobotFileParser:
    """The site's robots.txt. Missing means everything is allowed; 401/403 means nothing is."""
    url = urljoin(base, "/robots.txt")
    robots = RobotFileParser(url)
    try:
        body, _ = client.get(url)
        robots.parse(body.decode("utf-8", "replace").splitlines())
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            robots.disallow_all = True
        else:
            robots.allow_all = True
    except Unreachable as err:
        raise _unreachable(dataset, err) from None
    delay = robots.crawl_delay(USER_AGENT)
    if delay:
        client.slow_down(base, 1.0 / float(delay))
    return robots


def _crawl_pages(dataset: str, client: Client, robots: RobotFileParser, base: str, site: Site,
                 log: _CrawlLog, settings: Settings, report: CrawlReport) -> dict[str, str]:
    """Visit the pages level by level; return every file link found, with the page that links it."""
    files: dict[str, str] = {}
    is_file = re.compile(site.files, re.IGNORECASE)
    level = list(dict.fromkeys(site.seeds))
    for depth in range(len(site.follow) + 1):
        follow = re.compile(site.follow[depth], re.IGNORECASE) if depth < len(site.follow) else None
        todo = [p for p in level if p not in log.pages and p not in log.skipped]

        def visit(link: str, follow: re.Pattern[str] | None = follow) -> tuple[str, Any]:
            url = base + link
            if not robots.can_fetch(USER_AGENT, url):
                return "blocked", None
            try:
                body, final = client.get(url)
            except urllib.error.HTTPError as err:
                return "missing", f"HTTP {err.code}"
            except Unreachable as err:
                return "failed", err.reason
            links = page_links(body.decode("utf-8", "replace"), final, base)
            pages = [x for x in links if follow is not None and follow.search(x)]
            return "ok", (pages, [x for x in links if is_file.search(x)])

        def done(link: str, outcome: tuple[str, Any]) -> None:
            _record(log, report, base + link, link, outcome)
            if outcome[0] == "ok":
                log.page(link, *outcome[1])

        _parallel(visit, todo, settings.concurrency, done, f"{dataset}: pages")
        next_level: dict[str, None] = {}
        for page in level:
            if page in log.pages:
                pages, linked = log.pages[page]
                next_level.update(dict.fromkeys(pages))
                for link in linked:
                    files.setdefault(link, page)
        level = list(next_level)
    return files


def _crawl_files(dataset: str, client: Client, robots: RobotFileParser, base: str, site: Site,
                 log: _CrawlLog, settings: Settings, report: CrawlReport, files: dict[str, str],
                 dest: Path) -> None:
    """Download the file links not done yet; keep those that start with `MThd`, atomically."""
    todo = [f for f in files if f not in log.skipped
            and not (f in log.files and (dest / log.files[f]).is_file())]

    def fetch(link: str) -> tuple[str, Any]:
        url = base + link
        if not robots.can_fetch(USER_AGENT, url):
            return "blocked", None
        try:
            body, _ = client.get(url, {"Referer": base + files[link]})
        except urllib.error.HTTPError as err:
            return "missing", f"HTTP {err.code}"
        except Unreachable as err:
            return "failed", err.reason
        if not body.startswith(MIDI_MAGIC):
            return "not_midi", "not MIDI (no MThd header)"
        path = local_path(site.name(link))
        with atomic_path(dest / path) as tmp:
            tmp.write_bytes(body)
        return "ok", path

    def done(link: str, outcome: tuple[str, Any]) -> None:
        _record(log, report, base + link, link, outcome)
        if outcome[0] == "ok":
            log.file(link, outcome[1])
            report.fetched += 1

    _parallel(fetch, todo, settings.concurrency, done, f"{dataset}: files")


def _record(log: _CrawlLog, report: CrawlReport, url: str, link: str, outcome: tuple[str, Any]) -> None:
    """Book an outcome that is not a success. Definitive answers are logged so a re-run skips them;
    failures and robots.txt refusals are not, so a re-run tries again."""
    kind, detail = outcome
    if kind == "missing":
        report.missing.append(url)
        log.skip(link, detail)
    elif kind == "not_midi":
        report.not_midi.append(url)
        log.skip(link, detail)
    elif kind == "blocked":
        report.blocked.append(url)
    elif kind == "failed":
        report.failed.append((url, detail))


def _parallel(work: Callable[[str], T], items: Iterable[str], workers: int,
              done: Callable[[str, T], None], desc: str) -> None:
    """Run `work` on the items in a thread pool; `done` sees each result in this thread. On an error
    or Ctrl-C the pending items are cancelled, not run."""
    items = list(items)
    if not items:
        return
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = {pool.submit(work, item): item for item in items}
        with tqdm(total=len(items), unit="url", desc=desc, disable=None) as bar:
            for future in as_completed(futures):
                done(futures[future], future.result())
                bar.update(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# -- what is present locally ------------------------------------------------------------------------
def local_state(dest: Path) -> str:
    """`complete (N files)`, `partial` or `no`: how much of a downloadable dataset is under `dest`."""
    marker = _marker(dest)
    if marker:
        return f"complete ({marker.get('files', 0):,} files)"
    if dest.is_dir() and any(dest.iterdir()):
        return "partial"
    return "no"


def describe_datasets(params: dict[str, Any]) -> str:
    """A table of every dataset: name, whether it is present under raw_dir, size, licence, source."""
    from pipeline import datasets
    from pipeline.datasets import midi_files

    raw = Path(params["raw_dir"])
    rows = [("NAME", "LOCAL", "SIZE", "LICENCE")]
    sources = []
    for name in datasets.names():
        dataset = datasets.get(name)
        if dataset.embedded:
            state = "embedded"
        elif name == "folder":
            state = f"{len(midi_files(raw)):,} files in {raw}" if raw.is_dir() else f"no folder {raw}"
        else:
            state = local_state(raw / name)
        rows.append((name, state, dataset.size, dataset.licence))
        url = params["urls"].get(name, "")
        # Show the URL actually used when params point somewhere else (a mirror, a test server).
        sources.append(dataset.source + (f"; urls.{name} = {url}" if url not in dataset.source else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)) + "  " + row[3])
        if i:
            lines.append(" " * (widths[0] + 2) + "source: " + sources[i - 1])
    return "\n".join(lines)
