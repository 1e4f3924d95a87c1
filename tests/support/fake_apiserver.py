"""A scripted stand-in for the Kubernetes API server, on 127.0.0.1, that the official client talks to.

It replays recorded, real-server-shaped responses (tests/fixtures/k8s/) from routes the test declares,
streams logs with chunked transfer encoding as the kubelet proxy does, and records every request
(method, path, query, JSON body) so tests can assert the exact calls. It has no controllers: what it
proves is the client side (the calls, bodies, error handling and log following), not cluster behaviour.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "k8s"


def fixture(name: str) -> Any:
    text = (FIXTURES / name).read_text()
    return json.loads(text) if name.endswith(".json") else text


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict (JSON), or str
    chunks: list[bytes] | None = None  # a chunked stream (logs)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeApiServer:
    routes: list[tuple[str, re.Pattern[str], Callable[[Request], Reply]]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    url: str = ""

    def on(self, method: str, path_regex: str, reply: Reply | Callable[[Request], Reply]) -> None:
        handler = reply if callable(reply) else (lambda _req, r=reply: r)
        self.routes.insert(0, (method, re.compile(f"^{path_regex}$"), handler))  # later routes win

    def calls(self, method: str | None = None) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.requests if method is None or r.method == method]

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "fake",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "ml"}}],
                    "users": [{"name": "fake", "user": {"token": "fake-token"}}],
                }
            )
        )
        return path


class QuietServer(ThreadingHTTPServer):
    """Clients that drop a kept-alive connection are normal here, not errors worth a traceback."""

    def handle_error(self, request: object, client_address: object) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


def _handler(api: FakeApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _any(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            request = Request(
                self.command,
                parts.path,
                parse_qs(parts.query),
                json.loads(raw) if raw else None,
                {k.lower(): v for k, v in self.headers.items()},
            )
            api.requests.append(request)
            # Unrouted: creates succeed and echo the object (as a real server does); anything else is 404.
            reply = Reply(201, None) if self.command == "POST" else Reply(404, fixture("status-404-resource.json"))
            for method, pattern, handler in api.routes:
                if method == self.command and pattern.match(parts.path):
                    reply = handler(request)
                    break
            if reply.chunks is not None:
                self.send_response(reply.status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for chunk in reply.chunks:
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                return
            body = (
                reply.body
                if isinstance(reply.body, str)
                else json.dumps(reply.body if reply.body is not None else request.body)
            )
            data = body.encode()
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json" if not isinstance(reply.body, str) else "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

    return Handler


@contextmanager
def fake_apiserver() -> Iterator[FakeApiServer]:
    api = FakeApiServer()
    server = QuietServer(("127.0.0.1", 0), _handler(api))
    server.daemon_threads = True
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
