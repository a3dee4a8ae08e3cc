"""The HTTP client the downloads share: an honest User-Agent, cookies, a per-site rate limit, retries
with exponential backoff, and streaming a file to disk with HTTP Range resume."""

from __future__ import annotations

import http.client
import importlib.metadata
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from tqdm import tqdm

from pipeline.errors import DmcError

FOLDER_HINT = "to use MIDI files obtained elsewhere: dvc exp run -S dataset=folder -S raw_dir=/path/to/midi"
CHUNK = 1 << 16
T = TypeVar("T")


def _version() -> str:
    try:
        return importlib.metadata.version("dmc")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def user_agent(contact: str = "") -> str:
    """`dmc/<version> (...)`: who is asking and, when `download.contact` is set, how to reach them.
    Never a browser's: a site that refuses it is told the truth, and the user gets an error saying so."""
    reach = f"; contact: {contact}" if contact else ""
    return f"dmc/{_version()} (MIDI dataset downloader for music research; honours robots.txt{reach})"


USER_AGENT = user_agent()


def site_key(netloc: str) -> str:
    """The host that names a site: `www.example.org` and `example.org` are one site (so are http and
    https, which the callers ignore), so a redirect between them keeps the crawl on the site."""
    host = netloc.lower()
    return host[4:] if host.startswith("www.") else host


@dataclass(frozen=True)
class Settings:
    """The `download.*` knobs shared by archives and crawls."""

    concurrency: int = 4
    rate_limit: float = 2.0  # requests per second per site
    timeout: float = 30.0  # seconds a connection may stay silent
    retries: int = 4
    backoff: float = 1.0  # seconds before the first retry; doubles each time
    user_agent: str = USER_AGENT

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Settings:
        d = params["download"]
        return cls(d["concurrency"], d["rate_limit"], d["timeout"], d["retries"], d["backoff"],
                   user_agent(d["contact"]))


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


class _FinalResponse(http.client.HTTPResponse):
    """A response that skips every interim 1xx answer (103 Early Hints, 102 Processing, ...), not only
    100 Continue as http.client does (CPython #42550): otherwise a 103 reads as the final answer, and
    the real one is never seen."""

    def _read_status(self) -> tuple[str, int, str]:
        while True:
            version, status, reason = super()._read_status()
            if not 100 <= status < 200 or status == 101:  # 101 Switching Protocols is final
                return version, status, reason
            http.client.parse_headers(self.fp)  # the interim answer's headers, discarded


class _HTTPConnection(http.client.HTTPConnection):
    response_class = _FinalResponse


class _HTTPSConnection(http.client.HTTPSConnection):
    response_class = _FinalResponse


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPConnection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        options: dict[str, Any] = {"context": self._context}
        if hasattr(self, "_check_hostname"):  # Python < 3.12 passes it on
            options["check_hostname"] = self._check_hostname
        return self.do_open(_HTTPSConnection, req, **options)


@dataclass
class _Shared:
    """What every session of one Client shares: the rate limits and the request count."""

    limits: dict[str, _RateLimit] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0  # sent, retries included


class Client:
    """GET requests with an honest User-Agent, cookies, a per-site rate limit and retries with backoff."""

    def __init__(self, settings: Settings, shared: _Shared | None = None):
        self.settings = settings
        self.shared = shared or _Shared()
        # Cookies: some sites hand out a session on the page that their download links then require.
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()),
                                                  _HTTPHandler(), _HTTPSHandler())

    @property
    def requests(self) -> int:
        return self.shared.requests

    def session(self) -> Client:
        """A client with cookies of its own, sharing this one's rate limits: one page and the downloads
        it hands a session to, kept apart from the pages other workers visit at the same time."""
        return Client(self.settings, self.shared)

    def slow_down(self, url: str, per_second: float) -> None:
        """Lower one site's rate (robots.txt's Crawl-delay); never raises it above the params."""
        limit = self._limit(url)
        limit.interval = max(limit.interval, 1.0 / per_second)

    def _limit(self, url: str) -> _RateLimit:
        site = site_key(urlsplit(url).netloc)
        with self.shared.lock:
            return self.shared.limits.setdefault(site, _RateLimit(self.settings.rate_limit))

    def open(self, url: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        """One GET after the site's rate limit; a status >= 400 raises urllib.error.HTTPError."""
        self._limit(url).wait()
        with self.shared.lock:
            self.shared.requests += 1
        request = urllib.request.Request(url, headers={"User-Agent": self.settings.user_agent,
                                                       **(headers or {})})
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


def unreachable_error(dataset: str, err: Unreachable) -> DmcError:
    return DmcError(f"dataset '{dataset}': cannot fetch {err.url}: {err.reason} (after {err.tries} "
                    f"{'try' if err.tries == 1 else 'tries'}); {FOLDER_HINT}")


def refused_error(dataset: str, url: str, err: urllib.error.HTTPError, user_agent: str) -> DmcError:
    return DmcError(f"dataset '{dataset}': {url} answered HTTP {err.code} {err.reason}"
                    f"{refusal_note(err.code, user_agent)}; {FOLDER_HINT}")


def refusal_note(status: int, user_agent: str) -> str:
    """What a 401/403/406 may mean for a downloader: the site turns away its User-Agent. dmc does not
    pretend to be a browser, so the user hears why and what else to do."""
    if status not in (401, 403, 406):
        return ""
    return (f" (the site may refuse dmc's User-Agent '{user_agent}'; dmc does not pose as a browser: "
            "set download.contact so the site can reach you, or ask the site)")


def download_resumable(client: Client, url: str, part: Path, size: int | None, label: str) -> None:
    """Stream `url` to the file `part`, resuming what an earlier try left there with a Range request.

    `size`, when known, is the file's expected size: a part that long is taken as whole, a longer one
    is started over. Retries transient failures (see `Client.retrying`).
    """
    part.parent.mkdir(parents=True, exist_ok=True)

    def attempt() -> None:
        have = part.stat().st_size if part.exists() else 0
        if size is not None and have >= size:
            if have == size:
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
        if have and response.status == 206 and _range_start(response) != have:
            # A 206 that starts elsewhere than asked cannot be appended: start the file over.
            response.close()
            print(f"{label}: {url} answered a range other than the one asked "
                  f"({response.headers.get('Content-Range')!r} for bytes={have}-); starting over",
                  file=sys.stderr)
            part.unlink()
            have = 0
            response = client.open(url)
        with response:
            resumed = bool(have) and response.status == 206
            if not resumed:  # the server ignored the Range (or there was none): start over
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else size
            got = 0
            with open(part, "ab" if resumed else "wb") as f, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, desc=f"{label}: download",
                    disable=None) as bar:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
            if length is not None and got < int(length):  # http.client returns short reads silently
                raise http.client.IncompleteRead(b"", int(length) - got)

    client.retrying(url, attempt)


def _range_start(response: http.client.HTTPResponse) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _range_total(content_range: str) -> int | None:
    match = re.search(r"/(\d+)$", content_range)
    return int(match.group(1)) if match else None
