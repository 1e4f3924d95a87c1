"""A fault-injecting HTTP proxy on 127.0.0.1 in front of the S3 server: S3-style 500/503/SlowDown errors,
connection resets, outage windows, at a seeded rate, and an outage for chosen requests only. Counts what it
injected."""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ERRORS = [
    (500, "InternalError", "We encountered an internal error. Please try again."),
    (503, "SlowDown", "Please reduce your request rate."),
    (503, "ServiceUnavailable", "Service is unable to handle request."),
]


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        rate: float = 0.0,
        seed: int = 0,
        refuse: Callable[[str, str], bool] | None = None,
    ) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rate = rate
        self.random = random.Random(seed)
        self.outage_until = 0.0
        self.injected = {"error": 0, "reset": 0, "outage": 0}
        self.forwarded = 0
        self.refuse = refuse  # (method, path) -> answer 503 ServiceUnavailable to it, whatever the rate
        self.refused: list[str] = []
        self.lock = threading.Lock()

    def outage(self, seconds: float) -> None:
        self.outage_until = time.monotonic() + seconds

    def decide(self, method: str, path: str) -> str:
        with self.lock:
            if self.refuse is not None and self.refuse(method, path):
                self.refused.append(path)
                return "outage"
            if time.monotonic() < self.outage_until:
                self.injected["outage"] += 1
                return "outage"
            if self.random.random() < self.rate:
                kind = "reset" if self.random.random() < 0.3 else "error"
                self.injected[kind] += 1
                return kind
            self.forwarded += 1
            return "forward"


class QuietServer(ThreadingHTTPServer):
    """Clients that drop a kept-alive connection are normal here, not errors worth a traceback."""

    def handle_error(self, request: object, client_address: object) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            decision = proxy.decide(self.command, self.path)
            if decision == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self.connection.close()
                self.close_connection = True
                return
            if decision in ("error", "outage"):
                status, code, message = proxy.random.choice(ERRORS) if decision == "error" else ERRORS[2]
                payload = (
                    f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                    f"<Message>{message}</Message></Error>"
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

    return Handler


@contextmanager
def fault_proxy(
    upstream: str, rate: float = 0.0, seed: int = 0, refuse: Callable[[str, str], bool] | None = None
) -> Iterator[tuple[str, FaultProxy]]:
    proxy = FaultProxy(upstream, rate, seed, refuse)
    server = QuietServer(("127.0.0.1", 0), _handler(proxy))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", proxy
    finally:
        server.shutdown()
        server.server_close()
