"""s3:// storage through boto3.

Endpoint, region and credentials come from the standard AWS environment (AWS_ENDPOINT_URL_S3 or
AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a mounted credentials file), never
from arguments, so nothing secret reaches command lines, manifests or logs. CONVIT_S3_ADDRESSING_STYLE picks
path (default, what most on-premise servers need) or virtual addressing.

Transient failures (throttling, 5xx, resets, timeouts) are retried with jittered exponential backoff for up
to CONVIT_S3_RETRY_SECONDS (default 120) per operation, with a warning per retry; after that the operation
fails with one clear StorageError.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig

from convit.storage.base import Storage, StorageError, check_key

log = logging.getLogger("convit.storage")
T = TypeVar("T")

_RETRYABLE_CODES = {
    "500",
    "502",
    "503",
    "504",
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "TooManyRequests",
}
_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
_client_lock = threading.Lock()
_clients: dict[tuple[Any, ...], Any] = {}


def retry_budget_seconds() -> float:
    return float(os.environ.get("CONVIT_S3_RETRY_SECONDS", "120"))


def _client() -> Any:
    """One boto3 client per process and settings (boto3 clients are thread-safe, sessions are not)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    style = os.environ.get("CONVIT_S3_ADDRESSING_STYLE", "path")
    key = (os.getpid(), endpoint, style, os.environ.get("AWS_ACCESS_KEY_ID"))
    with _client_lock:
        if key not in _clients:
            config = botocore.config.Config(
                s3={"addressing_style": style},
                retries={"max_attempts": 2, "mode": "standard"},  # our own loop below owns the budget
                connect_timeout=5,
                read_timeout=30,
                max_pool_connections=32,
                # Checkpoints carry their own sha256; skip the per-request CRC that costs training CPU.
                request_checksum_calculation="when_required",
            )
            session = boto3.session.Session()
            _clients[key] = session.client("s3", endpoint_url=endpoint, config=config)
        return _clients[key]


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    if isinstance(exc, S3UploadFailedError):  # the transfer manager wraps the failing request's error in text
        match = re.search(r"An error occurred \((\w+)\)", str(exc))
        return match.group(1) if match else "UploadFailed"
    return ""


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, S3UploadFailedError):
        return _error_code(exc) in (*_RETRYABLE_CODES, "UploadFailed")
    if isinstance(exc, botocore.exceptions.ClientError):
        return _error_code(exc) in _RETRYABLE_CODES
    return isinstance(
        exc,
        (
            botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectionClosedError,
            botocore.exceptions.ReadTimeoutError,
            botocore.exceptions.ConnectTimeoutError,
            botocore.exceptions.ResponseStreamingError,
            botocore.exceptions.IncompleteReadError,
            ConnectionError,
            TimeoutError,
        ),
    )


def _short(exc: BaseException) -> str:
    code = _error_code(exc)
    return code or type(exc).__name__


class S3Storage(Storage):
    def __init__(self, uri: str) -> None:
        rest = uri[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise StorageError(f"{uri!r}: missing bucket name")
        self.uri = uri.rstrip("/")
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def _key(self, key: str) -> str:
        check_key(key) if key else None
        return f"{self.prefix}/{key}" if self.prefix and key else (key or self.prefix)

    def _call(self, what: str, key: str, fn: Callable[[], T]) -> T:
        """Run `fn` with retries; translate the final failure into one StorageError line."""
        where = f"s3://{self.bucket}/{self._key(key)}" if key or self.prefix else f"s3://{self.bucket}"
        deadline = time.monotonic() + retry_budget_seconds()
        attempt = 0
        while True:
            try:
                return fn()
            except botocore.exceptions.NoCredentialsError:
                raise StorageError(
                    f"{what} {where}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                    "or mount a credentials file)"
                ) from None
            except (
                botocore.exceptions.BotoCoreError,
                botocore.exceptions.ClientError,
                S3UploadFailedError,
                OSError,
            ) as exc:
                code = _error_code(exc)
                if code == "NoSuchBucket":
                    raise StorageError(f"{what} {where}: bucket {self.bucket!r} does not exist") from None
                if code in _MISSING_CODES:
                    raise StorageError(f"{what} {where}: does not exist") from None
                if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                    raise StorageError(f"{what} {where}: access denied ({code}); check the S3 credentials") from None
                if not _is_retryable(exc):
                    raise StorageError(f"{what} {where}: {_short(exc)}") from None
                attempt += 1
                delay = min(5.0, 0.2 * 2 ** min(attempt, 6)) * (0.5 + random.random())
                if time.monotonic() + delay > deadline:
                    raise StorageError(
                        f"{what} {where}: still failing after {attempt} attempts over "
                        f"{retry_budget_seconds():.0f}s ({_short(exc)})"
                    ) from None
                log.warning("storage: %s %s failed (%s), retry %d in %.1fs", what, where, _short(exc), attempt, delay)
                time.sleep(delay)

    def get(self, key: str) -> bytes:
        def fetch() -> bytes:
            body = _client().get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

        return self._call("GET", key, fetch)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        def fetch() -> bytes:
            rng = f"bytes={start}-{start + length - 1}"
            body = _client().get_object(Bucket=self.bucket, Key=self._key(key), Range=rng)["Body"]
            try:
                data = bytes(body.read())
            finally:
                body.close()
            if len(data) != length:
                raise botocore.exceptions.IncompleteReadError(actual_bytes=len(data), expected_bytes=length)
            return data

        return self._call("GET", key, fetch)

    def put(self, key: str, data: bytes) -> None:
        self._call("PUT", key, lambda: _client().put_object(Bucket=self.bucket, Key=self._key(key), Body=data))

    def put_file(self, key: str, path: Path) -> None:
        config = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20, max_concurrency=4)
        self._call("PUT", key, lambda: _client().upload_file(str(path), self.bucket, self._key(key), Config=config))

    def list(self, prefix: str = "") -> Iterator[str]:
        base = f"{self.prefix}/" if self.prefix else ""

        def fetch_all() -> list[str]:
            keys: list[str] = []
            paginator = _client().get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
                keys.extend(item["Key"][len(base) :] for item in page.get("Contents", []))
            return sorted(keys)

        return iter(self._call("LIST", prefix, fetch_all))

    def size(self, key: str) -> int | None:
        try:
            head = self._call("HEAD", key, lambda: _client().head_object(Bucket=self.bucket, Key=self._key(key)))
        except StorageError as exc:
            if str(exc).endswith("does not exist"):
                return None
            raise
        return int(head["ContentLength"])

    def delete(self, key: str) -> None:
        self._call("DELETE", key, lambda: _client().delete_object(Bucket=self.bucket, Key=self._key(key)))

    def check_root(self) -> None:
        try:
            self._call("HEAD", "", lambda: _client().head_bucket(Bucket=self.bucket))
        except StorageError as exc:
            if str(exc).endswith("does not exist"):
                raise StorageError(f"bucket {self.bucket!r} does not exist (for {self.uri})") from None
            raise
