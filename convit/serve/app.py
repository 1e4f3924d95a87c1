"""The HTTP application (Starlette, served by uvicorn): Open Inference Protocol v2, /v1/classify, /metrics.

Every error is `{"error": "<one message>"}` with a 4xx (the client's fault) or 5xx status. Bodies are read up to
`max_body` bytes (413 beyond); JSON parsing, image decoding and preprocessing run in a thread pool, never on
the event loop; the model runs in the batcher's runtime thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from starlette.applications import Starlette
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from convit.errors import ConvitError
from convit.serve.batching import Batcher, Ticket
from convit.serve.metrics import CONTENT_TYPE, Metrics
from convit.serve.protocol import ApiError, infer_response, model_metadata, parse_infer
from convit.serve.runtime import ServedModel, usable_cores

log = logging.getLogger("convit.serve")
access_log = logging.getLogger("convit.serve.access")


@dataclass
class ServeConfig:
    max_batch: int = 16
    max_wait_ms: float = 5.0
    top_k: int = 5
    max_body: int = 64 << 20  # a v2 request of 16 images as JSON text is about 25 MB
    max_images: int = 64  # per /v1/classify request, and rows per infer request
    max_in_flight: int = 512  # beyond: 503, retry later
    decode_workers: int = 0  # 0: one per core


@dataclass
class ServerState:
    """What the handlers share: the model once loaded, the batcher, the pools, the metrics, readiness."""

    config: ServeConfig
    load: Callable[[], ServedModel]  # runs in a thread: load + warm up; a ConvitError ends the server
    on_load_error: Callable[[BaseException], None] = lambda exc: None
    metrics: Metrics = field(default_factory=Metrics)
    model: ServedModel | None = None
    batcher: Batcher | None = None
    ready: bool = False
    draining: bool = False
    load_error: BaseException | None = None
    in_flight: int = 0
    pool: ThreadPoolExecutor | None = None

    def drain(self) -> None:
        """SIGTERM: not ready any more (the load balancer stops sending), in-flight requests still answered."""
        self.draining = True
        self.metrics.ready.set(0)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ApiError(400, f"bad Content-Length {length[:40]!r}")
        if int(length) > limit:
            raise ApiError(413, f"body of {int(length)} bytes is over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def _drain(request: Request, limit: int) -> None:
    """Consume an unread request body (at most `limit` bytes): an early error answer then reaches a client that is
    still sending, instead of a reset connection."""
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return
    except (RuntimeError, ClientDisconnect):  # already read, or the client is gone
        return


def _endpoint(path: str) -> str:
    """The metrics label of a path: the route's template (bounded cardinality)."""
    for pattern, label in _ENDPOINTS:
        if pattern.fullmatch(path):
            return label
    return "other"


_ENDPOINTS = [
    (re.compile(r"/v2/models/[^/]+/infer"), "/v2/models/{name}/infer"),
    (re.compile(r"/v2/models/[^/]+/ready"), "/v2/models/{name}/ready"),
    (re.compile(r"/v2/models/[^/]+"), "/v2/models/{name}"),
    (re.compile(r"/v2/health/(live|ready)"), "/v2/health/{probe}"),
    (re.compile(r"/v2|/v1/classify|/metrics"), ""),
]


class AccessLog:
    """ASGI middleware: one access-log line and the request metrics per HTTP request."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        sent = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        self.state.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.state.metrics.in_flight.dec()
            seconds = time.perf_counter() - start
            path = scope["path"]
            label = _endpoint(path) or path
            self.state.metrics.observe_request(label, status, seconds)
            client = scope.get("client")
            peer = f"{client[0]}:{client[1]}" if client else "-"
            query = ("?" + scope["query_string"].decode("latin-1")) if scope.get("query_string") else ""
            target = (path + query).encode("unicode_escape").decode("ascii")[:300]
            access_log.info(
                '%s "%s %s HTTP/%s" %d %dB %.1fms',
                peer, scope["method"], target, scope.get("http_version", "1.1"), status, sent, seconds * 1000,
            )  # fmt: skip


def build_app(state: ServerState) -> ASGIApp:
    config = state.config

    def model_or_error(name: str | None = None) -> ServedModel:
        if state.model is None or not state.ready:
            raise ApiError(
                503, "the model is not loaded yet" if state.load_error is None else "the model failed to load"
            )
        if name is not None and name != state.model.name:
            raise ApiError(404, f"unknown model {name!r}; this server serves {state.model.name!r}")
        return state.model

    async def in_pool(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(state.pool, fn, *args)

    def guarded(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                if exc.status != 413:  # read what the client still sends (bounded), so it gets the answer
                    await _drain(request, config.max_body)
                return _error(exc.status, exc.message)

        return wrapped

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        ok = state.ready and not state.draining
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_metadata(request: Request) -> Response:
        return JSONResponse({"name": "convit-serve", "version": "0.1.0", "extensions": []})

    async def metadata(request: Request) -> Response:
        model = model_or_error(request.path_params["name"])
        platform = "onnxruntime_onnx" if model.runner.kind == "onnxruntime" else "mindspore"
        return JSONResponse(model_metadata(model.name, model.variant, model.num_classes, platform))

    async def model_ready(request: Request) -> Response:
        name = request.path_params["name"]
        if state.model is not None and name != state.model.name:
            raise ApiError(404, f"unknown model {name!r}; this server serves {state.model.name!r}")
        ok = state.ready and not state.draining
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    async def run(rows: NDArray[np.float32], ticket: Ticket) -> NDArray[np.float32]:
        assert state.batcher is not None
        try:
            return await state.batcher.submit(rows, ticket)
        except ConvitError as exc:
            raise ApiError(500, f"inference failed: {exc}") from None

    def admit() -> None:
        if state.in_flight >= config.max_in_flight:
            raise ApiError(503, f"overloaded: {state.in_flight} requests in flight; retry later")

    async def infer(request: Request) -> Response:
        model = model_or_error(request.path_params["name"])
        admit()
        if "inference-header-content-length" in request.headers:
            raise ApiError(415, "the binary tensor extension is not supported: send the tensor as JSON 'data'")
        state.in_flight += 1
        assert state.batcher is not None
        try:
            with state.batcher.expect() as ticket:
                body = await read_body(request, config.max_body)
                rows, echo = await in_pool(parse_infer, body, config.max_images)
                logits = await run(rows, ticket)
        finally:
            state.in_flight -= 1
        payload = await in_pool(lambda: json.dumps(infer_response(model.name, logits, echo)).encode())
        return Response(payload, media_type="application/json")

    async def classify(request: Request) -> Response:
        model = model_or_error()
        top = request.query_params.get("top_k", str(config.top_k))
        if not top.isdigit() or not 1 <= int(top) <= model.num_classes:
            raise ApiError(400, f"top_k {top[:20]!r}: an integer from 1 to {model.num_classes}")
        admit()
        state.in_flight += 1
        assert state.batcher is not None
        try:
            with state.batcher.expect() as ticket:
                images = await _images(request)
                rows = await in_pool(_preprocess_all, images, model.crop_pct)
                logits = await run(rows, ticket)
        finally:
            state.in_flight -= 1
        from convit.predict import top_k

        results = [
            {"image": name, "top": top_k(row, model.class_names, int(top))}
            for (name, _), row in zip(images, logits, strict=True)
        ]
        return JSONResponse({"model_name": model.name, "results": results})

    async def _images(request: Request) -> list[tuple[str, bytes]]:
        ctype = request.headers.get("content-type", "")
        body = await read_body(request, config.max_body)
        if ctype.startswith("multipart/form-data"):
            return await _multipart(request.headers, body)
        kind = ctype.split(";")[0].strip().lower()
        if kind and not (kind.startswith("image/") or kind == "application/octet-stream"):
            raise ApiError(
                415, f"Content-Type {kind!r}: send multipart/form-data with image files, or one image as the body"
            )
        if not body:
            raise ApiError(400, "empty body: no image")
        return [("image", body)]

    async def _multipart(headers: Headers, body: bytes) -> list[tuple[str, bytes]]:
        async def stream() -> AsyncGenerator[bytes, None]:
            yield body

        parser = MultiPartParser(headers, stream(), max_files=config.max_images, max_fields=32, max_part_size=1 << 20)
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise ApiError(400, f"malformed multipart body: {exc.message}") from None
        images: list[tuple[str, bytes]] = []
        try:
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    images.append(((value.filename or key)[:200], await value.read()))
        finally:
            await form.close()
        if not images:
            raise ApiError(400, "no image file in the multipart body")
        return images

    async def metrics(request: Request) -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    async def not_found(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return _error(404, f"no endpoint {request.url.path[:200]!r}")
        if exc.status_code == 405:
            return _error(405, f"{request.method} is not allowed on {request.url.path[:200]!r}")
        return _error(exc.status_code, str(exc.detail))

    async def internal(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path[:200])
        return _error(500, f"internal error: {type(exc).__name__}")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        import cv2

        cv2.setNumThreads(1)  # one image per decoding thread; the runtime's threads have the other cores
        workers = config.decode_workers or usable_cores()
        state.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="convit-decode")
        loader = asyncio.get_running_loop().create_task(_load())
        try:
            yield
        finally:
            loader.cancel()
            if state.batcher is not None:
                await state.batcher.stop()
            state.pool.shutdown(wait=False, cancel_futures=True)

    async def _load() -> None:
        try:
            model = await asyncio.get_running_loop().run_in_executor(None, state.load)
        except Exception as exc:  # a ConvitError (or a bug): the server ends, __main__ reports it
            state.load_error = exc
            state.on_load_error(exc)
            return
        state.model = model
        state.batcher = Batcher(
            model.logits,
            config.max_batch,
            config.max_wait_ms / 1000.0,
            state.metrics.observe_batch,
            workers=model.parallel,
            run_alone=model.logits_alone,
        )
        state.batcher.start()
        state.ready = True
        state.metrics.ready.set(1)
        log.info(
            "ready: model %s (%s, %d classes) on %s via %s (%d at once), max batch %d, max wait %g ms",
            model.name, model.source, model.num_classes, model.device, model.runner.kind, model.parallel,
            config.max_batch, config.max_wait_ms,
        )  # fmt: skip

    routes = [
        Route("/v2/health/live", guarded(live), methods=["GET"]),
        Route("/v2/health/ready", guarded(ready), methods=["GET"]),
        Route("/v2", guarded(server_metadata), methods=["GET"]),
        Route("/v2/models/{name}", guarded(metadata), methods=["GET"]),
        Route("/v2/models/{name}/ready", guarded(model_ready), methods=["GET"]),
        Route("/v2/models/{name}/infer", guarded(infer), methods=["POST"]),
        Route("/v1/classify", guarded(classify), methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: not_found, Exception: internal},
        lifespan=lifespan,
    )
    return AccessLog(app, state)


def _preprocess_all(images: list[tuple[str, bytes]], crop_pct: float) -> NDArray[np.float32]:
    """convit.predict's preprocessing (MindCV's eval transform, convit.inference.images.preprocess) of each image;
    ApiError(400) naming the first image that does not decode or is beyond the decode limits."""
    from convit.inference.images import BadImage, preprocess

    rows = []
    for name, data in images:
        try:
            rows.append(preprocess(data, crop_pct, name))
        except BadImage as exc:
            raise ApiError(400, f"not a usable image: {exc}") from None
    return np.stack(rows)
