"""A real HTTP server on 127.0.0.1, in a thread, for the download tests.

It serves fixed routes, honours `Range: bytes=N-` like a static file server, records every request, and
injects faults per route: answering 500 a number of times, dropping the connection mid-file, answering
slowly, answering any status, redirecting, sending a `103 Early Hints` before the answer, or answering
a Range request with another range. `FixtureServer.dynamic` decides routes per request (sessions,
cookies, Referers, the Host asked for), for sites whose answers depend on what came before.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    body: bytes = b""
    content_type: str = "application/octet-stream"
    status: int = 200
    fail: int = 0  # answer 500 this many times before serving
    drop_after: int | None = None  # once: promise the whole body, send this many bytes, hang up
    delay: float = 0.0  # seconds before answering
    ranges: bool = True  # honour Range headers (a server may ignore them)
    range_shift: int = 0  # answer a Range request with a range starting this many bytes earlier
    redirect: str | None = None  # answer `status` (default 302) with this Location
    headers: dict[str, str] = field(default_factory=dict)  # more response headers (Set-Cookie, ...)
    early_hints: bool = False  # send `103 Early Hints` before the real answer


@dataclass
class Hit:
    path: str
    status: int
    sent: int  # body bytes sent
    headers: dict[str, str] = field(default_factory=dict)


class FixtureServer:
    """`with FixtureServer({"a.zip": Route(data)}) as server: server.url("a.zip")`."""

    def __init__(self, routes: dict[str, Route | bytes | str] | None = None):
        self.routes: dict[str, Route] = {}
        for path, route in (routes or {}).items():
            self.add(path, route)
        self.hits: list[Hit] = []
        # (path, request headers) -> a Route for this one request, or None for the fixed routes.
        self.dynamic: Callable[[str, dict[str, str]], Route | None] | None = None
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False  # a slow route must not hold the test up at exit
        # A short poll interval: shutdown() waits for it, once per test.
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)

    def add(self, path: str, route: Route | bytes | str) -> None:
        if isinstance(route, str):
            route = Route(route.encode(), content_type="text/html; charset=utf-8")
        elif isinstance(route, bytes):
            route = Route(route)
        self.routes["/" + path.lstrip("/")] = route

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{path.lstrip('/')}"

    def hits_to(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.path == "/" + path.lstrip("/")]

    def __enter__(self) -> FixtureServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(server: FixtureServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _hit(self, status: int, sent: int) -> None:
            with server.lock:
                server.hits.append(Hit(self.path, status, sent, dict(self.headers.items())))

        def _send(self, status: int, payload: bytes, headers: dict[str, str],
                  limit: int | None = None) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            out = payload if limit is None else payload[:limit]
            self._hit(status, len(out))  # before the body: once it is sent, the client may already count hits
            try:
                self.wfile.write(out)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                pass

        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            route = server.dynamic(self.path, dict(self.headers.items())) if server.dynamic else None
            route = route or server.routes.get(self.path)
            if route is None:
                self._send(404, b"not found", {"Content-Type": "text/plain"})
                return
            if route.delay:
                time.sleep(route.delay)
            with server.lock:
                failing = route.fail > 0
                route.fail -= failing
                drop, route.drop_after = route.drop_after, None
            if failing:
                self._send(500, b"server error", {"Content-Type": "text/plain"})
                return
            if route.early_hints:  # an interim answer, then the real one on the same connection
                self.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            if route.redirect is not None:
                status = route.status if route.status != 200 else 302
                self._send(status, b"", {"Location": route.redirect, **route.headers})
                return
            if route.status != 200:
                self._send(route.status, b"", {"Content-Type": "text/plain"})
                return
            body, status = route.body, 200
            headers = {"Content-Type": route.content_type, **route.headers}
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if match and route.ranges:
                start = max(0, int(match.group(1)) - route.range_shift)
                end = int(match.group(2)) if match.group(2) else len(body) - 1
                if start >= len(body):
                    self._send(416, b"", {"Content-Range": f"bytes */{len(body)}"})
                    return
                body, status = body[start:end + 1], 206
                headers["Content-Range"] = f"bytes {start}-{start + len(body) - 1}/{len(route.body)}"
            self._send(status, body, headers, limit=drop)

    return Handler
