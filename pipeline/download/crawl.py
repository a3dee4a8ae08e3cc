"""Polite, resumable crawls (classical, final-fantasy, freemidi): follow a site's link patterns level by
level, download every linked MIDI file, keep those that start with `MThd`, each written atomically.

An append-only log (`.crawl.jsonl` in the dataset folder) records what is done, so a crawl that stopped
resumes where it stopped; a finished crawl writes `.complete.json`, and a re-run that finds it matching
makes no request at all.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import urllib.error
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urldefrag, urljoin, urlsplit
from urllib.robotparser import RobotFileParser

from tqdm import tqdm

from pipeline.download.http import FOLDER_HINT, USER_AGENT, Client, Settings, Unreachable, unreachable_error
from pipeline.download.local import COMPLETE, read_marker
from pipeline.errors import DmcError
from pipeline.files import atomic_path, write_json

CRAWL_LOG = ".crawl.jsonl"
MIDI_MAGIC = b"MThd"
T = TypeVar("T")


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
    if read_marker(dest).get("site") == site.fingerprint() and log_path.exists():
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
        raise unreachable_error(dataset, err) from None
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

