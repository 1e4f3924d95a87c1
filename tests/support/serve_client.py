"""A `python -m convit.serve` process on 127.0.0.1 and a small stdlib HTTP client for it (tests and bench)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Response:
    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<{self.status} {self.body[:200]!r}>"


def request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Response:  # fmt: skip
    """One request on a new connection (closed after the answer)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Connection": "close", **(headers or {})})
        answer = conn.getresponse()
        return Response(answer.status, answer.read(), {k.lower(): v for k, v in answer.getheaders()})
    finally:
        conn.close()


def multipart(files: list[tuple[str, bytes]], fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request holding `files` as (filename, bytes)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in (fields or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for i, (filename, data) in enumerate(files):
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image{i}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def classify(port: int, files: list[tuple[str, bytes]], query: str = "") -> Response:
    body, ctype = multipart(files)
    return request(port, "POST", "/v1/classify" + query, body, {"Content-Type": ctype})


def classify_one(port: int, data: bytes, query: str = "") -> Response:
    return request(port, "POST", "/v1/classify" + query, data, {"Content-Type": "image/jpeg"})


def infer(port: int, model: str, payload: Any) -> Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return request(port, "POST", f"/v2/models/{model}/infer", body, {"Content-Type": "application/json"})


def metric(port: int, name: str, labels: str = "") -> float:
    """The value of one sample of /metrics (0 when absent)."""
    text = request(port, "GET", "/metrics").body.decode()
    for line in text.splitlines():
        if line.startswith(name + (("{" + labels + "}") if labels else "") + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class ServerProcess:
    """`python -m convit.serve ... --host 127.0.0.1 --port <free>`, stderr to a file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log = log
        self.handle = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "convit.serve", *args, "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT, stdout=self.handle, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )  # fmt: skip

    def wait_ready(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited ({self.proc.returncode}):\n{self.text()}")
            try:
                if request(self.port, "GET", "/v2/health/ready", timeout=5).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the server was not ready within {timeout} s:\n{self.text()}")

    def text(self) -> str:
        self.handle.flush()
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.handle.close()
        return code
