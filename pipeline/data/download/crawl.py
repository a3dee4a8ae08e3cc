"""Polite, resumable crawls (classical, final-fantasy, freemidi): follow a site's link patterns level by
level, download every linked MIDI file, keep those that start with `MThd`, each written atomically.

An append-only log (`.crawl.jsonl` in the dataset folder) records what is done, so a crawl that stopped
resumes where it stopped; a finished crawl writes `.complete.json`, and a re-run that finds it matching
makes no request at all. A crawl that cannot start (its seed page missing, refused, or moved off the
site) or that finds no MIDI file at all is an error, and leaves no `.complete.json`.
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

from pipeline.data.download.http import (
    FOLDER_HINT,
    Client,
    Settings,
    Unreachable,
    refusal_note,
    site_key,
    unreachable_error,
)
from pipeline.data.download.local import COMPLETE, read_marker
from pipeline.errors import DmcError
from pipeline.files import atomic_path, write_json

CRAWL_LOG = ".crawl.jsonl"
MIDI_MAGIC = b"MThd"
_REFUSED = (401, 403, 406)  # answers that may mean "not your User-Agent": worth asking again later
T = TypeVar("T")


def _no_fallback(link: str) -> str | None:
    return None


@dataclass(frozen=True)
class Site:
    """How to crawl one web site: where to start, which links are pages to visit, which are MIDI files.

    Links are matched (regex search, ignoring case: `.MID` is common) as paths relative to the base URL,
    such as `midis/bach/bach_846.mid`. The base's site is its host with or without `www.`, over http or
    https; links leaving it are never followed.
    """

    seeds: tuple[str, ...]  # entry pages: each must answer, on the site, or the crawl stops with an error
    follow: tuple[str, ...]  # follow[d]: links on a depth-d page that are the pages of depth d + 1
    files: str  # links (on any page) to download as MIDI files
    name: Callable[[str], str] = str  # relative link -> path of the file under the dataset folder
    probes: tuple[str, ...] = ()  # more depth-0 pages that may be absent (numbered pages): 404 is booked
    # A file link -> the link it is an alternative of: fetched only when that one gives no MIDI file.
    fallback: Callable[[str], str | None] = _no_fallback
    # Fetch each page's files right after it, in a session of its own (its cookies, its URL as Referer):
    # for sites whose download links work only for the visitor of their page, just after the visit.
    files_with_page: bool = False

    def rules(self) -> str:
        """Identifies the link patterns: a page's logged links stay valid while these are unchanged."""
        return _digest([list(self.follow), self.files])

    def fingerprint(self) -> str:
        """Identifies the whole crawl, seeds included: a finished crawl with this fingerprint is current."""
        return _digest([list(self.seeds), list(self.probes), list(self.follow), self.files,
                        self.files_with_page])


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


@dataclass
class CrawlReport:
    """What a crawl found. Lists hold URLs; `failed` holds (URL, reason)."""

    files: int = 0  # MIDI files present now
    fetched: int = 0  # of which downloaded by this run
    requests: int = 0
    not_midi: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # 4xx answers, and pages redirected off the site
    refused: list[str] = field(default_factory=list)  # 401, 403, 406: not booked, asked again next time
    blocked: list[str] = field(default_factory=list)  # disallowed by robots.txt
    failed: list[tuple[str, str]] = field(default_factory=list)

    def details(self) -> list[str]:
        return [f"{len(urls):,} {what} (e.g. {urls[0]})" for what, urls in (
            ("not MIDI, skipped", self.not_midi), ("not found", self.missing),
            ("refused (HTTP 401/403/406)", self.refused), ("disallowed by robots.txt", self.blocked))
            if urls]

    def summary(self, dataset: str) -> str:
        head = f"{dataset}: {self.files:,} MIDI files ({self.fetched:,} new, {self.requests:,} requests)"
        return "; ".join([head, *self.details()])


class SiteBase:
    """A crawl's base URL, and which URLs belong to its site (`www.` or not, http or https)."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.scheme, self.netloc = parts.scheme.lower(), parts.netloc
        self.path = parts.path.rstrip("/") + "/"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.path}"

    def absolute(self, link: str) -> str:
        return self.url + link

    def relative(self, url: str) -> str | None:
        """`url` as a link relative to the base ("" for the base itself), or None when it is elsewhere."""
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or site_key(parts.netloc) != site_key(self.netloc):
            return None
        if not parts.path.startswith(self.path):
            return None
        return parts.path[len(self.path):] + (f"?{parts.query}" if parts.query else "")

    def move_to(self, url: str) -> None:
        """Send further requests to the scheme and host that `url` (on the site) uses: the seed page
        redirected there, so every other URL would too."""
        parts = urlsplit(url)
        self.scheme, self.netloc = parts.scheme.lower(), parts.netloc


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
            elif "drop" in record:
                self.files.pop(record["drop"], None)
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

    def drop(self, link: str) -> None:
        """Forget a kept file (its file is deleted by the caller)."""
        self.files.pop(link, None)
        self._add({"drop": link})

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


def page_links(html: str, page_url: str, base: str | SiteBase) -> list[str]:
    """The links of an HTML page, as paths relative to `base`, in order, without duplicates or
    fragments; links that leave `base`'s site or path are dropped."""
    base = base if isinstance(base, SiteBase) else SiteBase(base)
    parser = _Links()
    parser.feed(html)
    parser.close()
    out: dict[str, None] = {}
    for href in parser.hrefs:
        link = base.relative(urldefrag(urljoin(page_url, href.strip())).url)
        if link:  # neither elsewhere nor the base itself
            out[link] = None
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
    Crawl-delay when slower), robots.txt obeyed, an honest User-Agent. Resumable and idempotent through
    the crawl log. Raises DmcError when the site is unreachable, when a seed page fails or leaves the
    site, when URLs still fail after the retries (a re-run resumes with exactly those), or when no MIDI
    file was found; `.complete.json` is written only after a crawl that did none of these.
    """
    base = SiteBase(params["urls"][dataset])
    settings = Settings.from_params(params)
    report = CrawlReport()
    log_path = dest / CRAWL_LOG
    if read_marker(dest).get("site") == site.fingerprint() and log_path.exists():
        log = _CrawlLog(log_path, site.rules())
        log.close()
        if log.files and all((dest / p).is_file() for p in log.files.values()):
            report.files = len(set(log.files.values()))
            print(report.summary(dataset) + "; up to date", file=sys.stderr)
            return report
    client = Client(settings)
    robots = _robots(dataset, client, base)  # first, so an unreachable site leaves no folder
    dest.mkdir(parents=True, exist_ok=True)
    (dest / COMPLETE).unlink(missing_ok=True)
    log = _CrawlLog(log_path, site.rules())
    try:
        _Crawl(dataset, client, robots, base, site, log, report, dest).run()
    finally:
        log.close()
        report.requests = client.requests
    report.files = len({p for p in log.files.values() if (dest / p).is_file()})
    print(report.summary(dataset), file=sys.stderr)
    if report.failed:
        url, reason = report.failed[0]
        raise DmcError(f"dataset '{dataset}': {len(report.failed):,} URLs still failing after "
                       f"{settings.retries + 1} tries (first: {url}: {reason}); {report.files:,} MIDI files "
                       f"kept so far, re-run to resume; {FOLDER_HINT}")
    if not report.files:
        why = report.details()
        if report.refused:
            why.append(refusal_note(403, settings.user_agent).strip(" ()"))
        raise DmcError(f"dataset '{dataset}': the crawl of {base.url} found no MIDI file"
                       f" ({'; '.join(why) or 'no page links one'}); {FOLDER_HINT}")
    write_json(dest / COMPLETE, {"url": base.url, "site": site.fingerprint(), "files": report.files})
    return report


class _Robots(RobotFileParser):
    refused: int | None = None  # robots.txt's own 401/403, which shuts a crawler out of everything


def _robots(dataset: str, client: Client, base: SiteBase) -> _Robots:
    """The site's robots.txt. Missing means everything is allowed; 401/403 means nothing is."""
    url = urljoin(base.url, "/robots.txt")
    robots = _Robots(url)
    try:
        body, _ = client.get(url)
        robots.parse(body.decode("utf-8", "replace").splitlines())
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            robots.disallow_all = True
            robots.refused = err.code
        else:
            robots.allow_all = True
    except Unreachable as err:
        raise unreachable_error(dataset, err) from None
    delay = robots.crawl_delay(client.settings.user_agent)
    if delay:
        client.slow_down(base.url, 1.0 / float(delay))
    return robots


@dataclass
class _Outcome:
    """What one URL gave: `kind` is ok, missing, refused, not_midi, blocked, failed or offsite."""

    kind: str
    detail: str = ""  # why, when not ok
    final: str = ""  # the URL after redirects
    pages: list[str] = field(default_factory=list)  # a page's links to the next level
    files: list[str] = field(default_factory=list)  # a page's file links
    path: str = ""  # a kept file: its path under the dataset folder
    fetched: list[tuple[str, _Outcome]] = field(default_factory=list)  # files fetched with their page


class _Crawl:
    """One run of a crawl: the pages level by level, then the files (or each page's files with it)."""

    def __init__(self, dataset: str, client: Client, robots: _Robots, base: SiteBase, site: Site,
                 log: _CrawlLog, report: CrawlReport, dest: Path):
        self.dataset, self.client, self.robots, self.base, self.site = dataset, client, robots, base, site
        self.log, self.report, self.dest = log, report, dest
        self.is_file = re.compile(site.files, re.IGNORECASE)
        self.agent = client.settings.user_agent
        self.visited: set[str] = set()  # pages visited by this run

    def run(self) -> None:
        follow = self._follow(0)
        for seed in dict.fromkeys(self.site.seeds):
            if seed not in self.log.pages or self._files_pending(seed):
                self._seed(seed, follow)
        level = list(dict.fromkeys(self.site.seeds + self.site.probes))
        files: dict[str, str] = {}  # file link -> the page that links it
        for depth in range(len(self.site.follow) + 1):
            follow = self._follow(depth)
            todo = [p for p in level if p not in self.visited and (
                (p not in self.log.pages and p not in self.log.skipped) or self._files_pending(p))]
            _parallel(lambda link, follow=follow: self._visit(link, follow), todo,
                      self.client.settings.concurrency, self._done, f"{self.dataset}: pages")
            next_level: dict[str, None] = {}
            for page in level:
                if page in self.log.pages:
                    pages, linked = self.log.pages[page]
                    next_level.update(dict.fromkeys(pages))
                    for link in linked:
                        files.setdefault(link, page)
            level = list(next_level)
        if not self.site.files_with_page:
            self._fetch_files(files)

    def _follow(self, depth: int) -> re.Pattern[str] | None:
        follow = self.site.follow
        return re.compile(follow[depth], re.IGNORECASE) if depth < len(follow) else None

    def _seed(self, link: str, follow: re.Pattern[str] | None) -> None:
        """Visit a seed page on its own, first: a seed that fails stops the crawl with one line. Its
        final URL, when on the site but on another host or scheme, becomes the base for the rest."""
        url = self.base.absolute(link)
        outcome = self._visit(link, follow)
        where = f"dataset '{self.dataset}': seed page {url}"
        if outcome.kind == "blocked":
            refused = (f" (robots.txt itself answered HTTP {self.robots.refused}"
                       f"{refusal_note(self.robots.refused, self.agent)})" if self.robots.refused else "")
            raise DmcError(f"{where} is disallowed by the site's robots.txt{refused}; {FOLDER_HINT}")
        if outcome.kind in ("missing", "refused", "not_midi"):
            code = int(outcome.detail.split()[1]) if outcome.detail.startswith("HTTP ") else 0
            raise DmcError(f"{where} answered {outcome.detail}{refusal_note(code, self.agent)}; "
                           f"{FOLDER_HINT}")
        if outcome.kind == "failed":
            raise DmcError(f"{where}: cannot fetch it: {outcome.detail}; {FOLDER_HINT}")
        if outcome.kind == "offsite":
            raise DmcError(f"{where} redirected to {outcome.final}, which is off the site; set "
                           f"urls.{self.dataset} to the site's new address")
        final = urlsplit(outcome.final)
        if (final.scheme.lower(), final.netloc) != (self.base.scheme, self.base.netloc):
            self.base.move_to(outcome.final)
        self._done(link, outcome)

    def _files_pending(self, page: str) -> bool:
        """With files fetched with their page, a logged page is visited again (for a fresh session)
        while one of its files is neither kept nor booked as skipped."""
        if not self.site.files_with_page or page not in self.log.pages:
            return False
        return any(self._file_todo(f) for f in self.log.pages[page][1])

    def _file_todo(self, link: str) -> bool:
        return link not in self.log.skipped and not (
            link in self.log.files and (self.dest / self.log.files[link]).is_file())

    def _visit(self, link: str, follow: re.Pattern[str] | None) -> _Outcome:
        url = self.base.absolute(link)
        self.visited.add(link)
        if not self.robots.can_fetch(self.agent, url):
            return _Outcome("blocked")
        client = self.client.session() if self.site.files_with_page else self.client
        try:
            body, final = client.get(url)
        except urllib.error.HTTPError as err:
            return _http_outcome(err)
        except Unreachable as err:
            return _Outcome("failed", f"{err.reason} (after {err.tries} "
                                      f"{'try' if err.tries == 1 else 'tries'})")
        if self.base.relative(final) is None:
            return _Outcome("offsite", f"redirected off the site to {final}", final)
        links = page_links(body.decode("utf-8", "replace"), final, self.base)
        pages = [x for x in links if follow is not None and follow.search(x)]
        outcome = _Outcome("ok", final=final, pages=pages, files=[x for x in links if self.is_file.search(x)])
        if self.site.files_with_page:
            outcome.fetched = [(f, self._fetch(f, final, client))
                               for f in outcome.files if self._file_todo(f)]
        return outcome

    def _done(self, link: str, outcome: _Outcome) -> None:
        self._record(link, outcome)
        if outcome.kind == "ok":
            self.log.page(link, outcome.pages, outcome.files)
        for file, fetched in outcome.fetched:
            self._file_done(file, fetched)

    def _fetch_files(self, files: dict[str, str]) -> None:
        """Download the file links not done yet; a fallback only when the file it stands in for gave
        no MIDI file (missing, or not MIDI), or is not linked at all."""
        stands_in = {f: p for f in files if (p := self.site.fallback(f)) is not None and p in files}
        first = [f for f in files if f not in stands_in and self._file_todo(f)]
        self._parallel_files(first, files)
        second = [f for f, p in stands_in.items() if p in self.log.skipped and self._file_todo(f)]
        self._parallel_files(second, files)
        for f, p in stands_in.items():  # kept by an older crawl that took both: one file per piece
            if f in self.log.files and p in self.log.files and (self.dest / self.log.files[p]).is_file():
                (self.dest / self.log.files[f]).unlink(missing_ok=True)
                self.log.drop(f)

    def _parallel_files(self, todo: list[str], files: dict[str, str]) -> None:
        _parallel(lambda link: self._fetch(link, self.base.absolute(files[link]), self.client), todo,
                  self.client.settings.concurrency, self._file_done, f"{self.dataset}: files")

    def _fetch(self, link: str, referer: str, client: Client) -> _Outcome:
        """Download one file link; keep it (atomically) when it starts with `MThd`."""
        url = self.base.absolute(link)
        if not self.robots.can_fetch(self.agent, url):
            return _Outcome("blocked")
        try:
            body, _ = client.get(url, {"Referer": referer})
        except urllib.error.HTTPError as err:
            return _http_outcome(err)
        except Unreachable as err:
            return _Outcome("failed", err.reason)
        if not body.startswith(MIDI_MAGIC):
            return _Outcome("not_midi", "not MIDI (no MThd header)")
        path = local_path(self.site.name(link))
        with atomic_path(self.dest / path) as tmp:
            tmp.write_bytes(body)
        return _Outcome("ok", path=path)

    def _file_done(self, link: str, outcome: _Outcome) -> None:
        self._record(link, outcome)
        if outcome.kind == "ok":
            self.log.file(link, outcome.path)
            self.report.fetched += 1

    def _record(self, link: str, outcome: _Outcome) -> None:
        """Book an outcome that is not a success. Definitive answers are logged so a re-run skips them;
        failures, refusals and robots.txt refusals are not, so a re-run tries again."""
        url, kind, report = self.base.absolute(link), outcome.kind, self.report
        if kind in ("missing", "offsite"):
            report.missing.append(url)
            self.log.skip(link, outcome.detail)
        elif kind == "not_midi":
            report.not_midi.append(url)
            self.log.skip(link, outcome.detail)
        elif kind == "refused":
            report.refused.append(url)
        elif kind == "blocked":
            report.blocked.append(url)
        elif kind == "failed":
            report.failed.append((url, outcome.detail))


def _http_outcome(err: urllib.error.HTTPError) -> _Outcome:
    detail = f"HTTP {err.code} {err.reason}".strip()
    return _Outcome("refused" if err.code in _REFUSED else "missing", detail)


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

