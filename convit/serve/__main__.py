"""`python -m convit.serve --weights URI [--model NAME] [--name NAME] [--port 8080] [--host 0.0.0.0]
[--max-batch 16] [--max-wait-ms 5] [--top-k 5] [--device CPU|Ascend]`: serve a trained model over HTTP.

Endpoints (convit/serve/app.py): KServe's Open Inference Protocol v2 (`GET /v2/health/live`, `/v2/health/ready`,
`/v2/models/<name>`, `/v2/models/<name>/ready`, `POST /v2/models/<name>/infer`), `POST /v1/classify` (encoded
images in, top-K classes out) and `GET /metrics` (Prometheus). The server listens at once (live) and is ready
once the model is loaded and warmed with one batch. SIGTERM (or Ctrl-C): not ready any more, no new connections,
the requests in flight are answered, then exit 0. A startup error (weights missing or unreadable, unknown
model) is one `ERROR:` line and exit code 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Generator
from contextlib import contextmanager
from types import FrameType

from convit.errors import ConvitError, UsageError, cli_boundary
from convit.inference.weights import add_ema_flag
from convit.serve.app import ServeConfig, ServerState, build_app
from convit.serve.runtime import ServedModel, load_model, warm_up

log = logging.getLogger("convit.serve")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(prog="python -m convit.serve", description=doc.split("\n\n")[0])
    parser.add_argument("--weights", required=True, help="our checkpoint, a MindCV .ckpt, or an exported .onnx/.mindir")
    add_ema_flag(parser)
    parser.add_argument("--model", help="variant the weights must be (default: recognised from them)")
    parser.add_argument("--name", help="the model's name in the protocol (default: the variant, e.g. convit_tiny)")
    parser.add_argument("--host", default="0.0.0.0", help="listen address (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=8080, help="default 8080")
    parser.add_argument("--max-batch", type=int, default=16, help="images per runtime call at most (default 16)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="gathering time for a batch (default 5)")
    parser.add_argument("--top-k", type=int, help="classes per image on /v1/classify (default 5, at most all)")
    parser.add_argument("--max-body-mb", type=float, default=64.0, help="request body limit (default 64 MiB)")
    parser.add_argument("--max-images", type=int, default=64, help="images per request at most (default 64)")
    parser.add_argument("--decode-workers", type=int, default=0, help="decoding threads (default: one per core)")
    parser.add_argument(
        "--runtime-lanes",
        type=int,
        default=0,
        help="CPU: single-threaded onnxruntime sessions running batches side by side (default: one per core; 1: one "
        "session with a thread per core)",
    )
    parser.add_argument("--drain-seconds", type=float, default=30.0, help="SIGTERM: time to finish requests")
    parser.add_argument("--device", choices=["CPU", "Ascend"], help="default: $CONVIT_DEVICE or CPU")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    from convit.jobspec.schema import MODEL_NAMES

    if args.model is not None and args.model not in MODEL_NAMES:
        raise UsageError(f"unknown model {args.model!r}; known: {', '.join(MODEL_NAMES)}")
    for flag, value, low, high in [
        ("--port", args.port, 0, 65535),
        ("--max-batch", args.max_batch, 1, 1024),
        ("--top-k", 5 if args.top_k is None else args.top_k, 1, 1_000_000),
        ("--max-images", args.max_images, 1, 4096),
        ("--decode-workers", args.decode_workers, 0, 256),
        ("--runtime-lanes", args.runtime_lanes, 0, 256),
    ]:
        if not low <= value <= high:
            raise UsageError(f"{flag} must be in [{low}, {high}]")
    if not 0 <= args.max_wait_ms <= 10_000 or not 0 < args.max_body_mb <= 4096 or not args.drain_seconds >= 0:
        raise UsageError("--max-wait-ms must be in [0, 10000], --max-body-mb in (0, 4096], --drain-seconds >= 0")
    if args.name is not None and (not args.name or "/" in args.name or not args.name.isprintable()):
        raise UsageError(f"--name {args.name!r}: a non-empty name without '/'")


def configure_logging() -> None:
    """Our lines only: `<time> <level> <logger>: message` for the server, the access log as its own lines;
    uvicorn's startup chatter and its access log off (warnings such as invalid HTTP still shown)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("convit.serve").setLevel(logging.INFO)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
        logger.setLevel(logging.WARNING)


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but a SIGTERM/SIGINT drains and returns (exit 0) instead of re-raising the signal."""

        on_signal: tuple[ServerState, ...] = ()

        @contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            for state in self.on_signal:
                state.drain()
            if not self.should_exit:
                log.info("signal %d: draining in-flight requests, then exiting", sig)
            super().handle_exit(sig, frame)

    return Server


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    check_args(args)
    config = ServeConfig(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        top_k=args.top_k or 5,
        max_body=int(args.max_body_mb * (1 << 20)),
        max_images=args.max_images,
        decode_workers=args.decode_workers,
    )

    def load() -> ServedModel:
        model = load_model(
            args.weights,
            model=args.model,
            name=args.name,
            device=args.device,
            max_batch=args.max_batch,
            ema=args.ema,
            lanes=args.runtime_lanes,
        )
        if args.top_k is not None and args.top_k > model.num_classes:
            raise UsageError(f"--top-k {args.top_k} is more than the model's {model.num_classes} classes")
        config.top_k = min(config.top_k, model.num_classes)
        warm_up(model, args.max_batch)
        return model

    server_cls = _server_class()
    uv_config = uvicorn.Config(
        "convit.serve:app",  # replaced below: the app object is passed directly
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=args.drain_seconds,
        server_header=False,
    )
    state = ServerState(config=config, load=load)
    uv_config.app = build_app(state)
    server = server_cls(uv_config)
    server.on_signal = (state,)

    def failed(exc: BaseException) -> None:
        server.should_exit = True

    state.on_load_error = failed
    log.info("listening on %s:%d (pid %d); loading %s", args.host, args.port, os.getpid(), args.weights)
    server.run()
    if state.load_error is not None:
        if isinstance(state.load_error, ConvitError):
            raise state.load_error
        raise ConvitError(f"loading the model failed: {type(state.load_error).__name__}: {state.load_error}")
    if not server.started:
        raise ConvitError(f"cannot listen on {args.host}:{args.port}")
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    return cli_boundary(lambda: serve(args))


if __name__ == "__main__":
    sys.exit(main())
