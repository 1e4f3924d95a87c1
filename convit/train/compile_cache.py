"""MindSpore's graph compile cache, kept where a restarted process and a replaced pod find it.

Compiling the ConViT training step takes 17-40 s on the CPU here and 130-150 s on Ascend; a fault-tolerant job
pays it on every restart. MindSpore keeps compiled graphs under MS_COMPILER_CACHE_PATH, in one `rank_<n>` folder
per rank (MindSpore 2.10: `rank_<n>/graph_cache/compile_cache_<i>.mindir`, one per graph in compile order, and
`compile_dependency.hash`, the hash of the Python files the graphs came from). The folder is keyed by everything
that shapes the graphs (the model and head, the recipe values the step depends on, the world size, MindSpore's
version and the source of the model and step), so a changed model or recipe never reuses a stale graph.

Locally it lives under the pod's cache dir (an emptyDir), which survives container restarts but not a pod's
replacement, so each rank's folder is also kept in object storage beside the checkpoints:

    <checkpoint.uri>/compile-cache/<key>/blobs/<sha256>      a cache file, named by its content
    <checkpoint.uri>/compile-cache/<key>/rank_<n>.json       the manifest of rank n: path -> size and sha256

A rank's manifest is written after every file it names, so a cache cut short by a crash is never used, and since
files are named by their content an upload never changes a file an older manifest names. With data parallelism
(MindSpore 2.10, two ranks on the CPU) the ranks' graph files differ (each holds its own rank's collectives; the
names then start with the role, `MS_WORKERcompile_cache_<i>.mindir`) and only the dependency hash is shared, so
each rank keeps its own folder (a file two ranks share is one object).

- Fetched before the first compile, when the local folder is empty (a new pod): every file is checked against
  the manifest's size and sha256 before the folder is put in place; anything missing, corrupt or unreachable
  means one warning and a normal compile.
- Uploaded after the first training step (the step graph) and after the first validation (the eval graph),
  only when the folder differs from the manifest fetched: the folder is read then, on the training thread between
  two graphs (MindSpore writes a file while it compiles), and sent by a background thread at low priority: the
  files this process did not fetch intact, then the manifest. A storage error is one warning line (the storage
  layer's per-retry lines are dropped); training never waits for it (the run's end waits for an upload under way,
  at most CLOSE_SECONDS).

CONVIT_COMPILE_CACHE=0 turns all of it off; a cache the user configured (MS_COMPILER_CACHE_PATH) is left alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

from convit.cluster import contract
from convit.errors import ConvitError
from convit.jobspec import JobSpec
from convit.storage.base import Storage, join_uri, open_storage

log = logging.getLogger("convit.train")

_GRAPH_SOURCES = (
    "models/convit.py",
    "models/layers.py",
    "train/step.py",
    "train/step_ops.py",
    "train/adamw.py",
    "train/evaluate.py",
)
REMOTE_FOLDER = "compile-cache"
BLOBS = "blobs"
CLOSE_SECONDS = 60.0  # the longest the run's end waits for an upload under way

Manifest = dict[str, dict[str, int | str]]  # path below rank_<n> -> {"size": bytes, "sha256": hex}


def cache_key(spec: JobSpec, world_size: int, lr_table: int) -> str:
    package = Path(__file__).resolve().parents[1]
    facts = {
        "model": spec.model.model_dump(exclude={"pretrained"}),
        "train": spec.train.model_dump(
            include={
                "batch_size",
                "amp_level",
                "loss_scale",
                "beta1",
                "beta2",
                "eps",
                "grad_accum_steps",
                "ema_decay",
                "clip_grad",
            }
        ),
        "eval_batch": spec.train.batch_size,
        "world_size": world_size,
        "lr_table": lr_table,
        "mindspore": metadata.version("mindspore"),
        "sources": [hashlib.sha256((package / name).read_bytes()).hexdigest() for name in _GRAPH_SOURCES],
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


class _QuietRetries(logging.Filter):
    """Drops the storage layer's per-retry warnings from the threads that move the cache: a cache that cannot
    be fetched or kept is worth one warning line, not one per retry."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread not in self.threads


_quiet = _QuietRetries()
logging.getLogger("convit.storage").addFilter(_quiet)


@contextlib.contextmanager
def _quiet_retries() -> Iterator[None]:
    ident = threading.get_ident()
    _quiet.threads.add(ident)
    try:
        yield
    finally:
        _quiet.threads.discard(ident)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def scan(folder: Path) -> dict[str, bytes]:
    """Every file below `folder`: path below it -> contents."""
    if not folder.is_dir():
        return {}
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def manifest_of(files: dict[str, bytes]) -> Manifest:
    return {name: {"size": len(data), "sha256": _sha256(data)} for name, data in files.items()}


def _megabytes(files: Manifest) -> str:
    return f"{sum(int(f['size']) for f in files.values()) / 1e6:.1f} MB"


class CompileCache:
    """One rank's compile cache: the local folder MindSpore uses and its copy in object storage.

    Disabled (every method a no-op) when `root` is None; local only when `remote_uri` is empty."""

    def __init__(
        self, root: Path | None, remote_uri: str = "", rank: int = 0, note: Callable[[str], None] | None = None
    ) -> None:
        self.root = root
        self.rank = rank
        self.remote_uri = remote_uri
        self.note = note or (lambda message: None)
        self.known: Manifest | None = None  # what the bucket's manifest holds, as far as this process knows
        self._verified: Manifest = {}  # files the bucket is known to hold intact
        self._thread: threading.Thread | None = None
        self._failed = False
        self._seen: set[str] = set()
        self._remote: Storage | None = None
        if root is not None and remote_uri:
            try:
                self._remote = open_storage(remote_uri)
            except ConvitError as exc:
                self._warn(f"not kept in object storage ({exc})")

    @property
    def folder(self) -> Path | None:
        return None if self.root is None else self.root / f"rank_{self.rank}"

    @property
    def manifest_key(self) -> str:
        return f"rank_{self.rank}.json"

    def _warn(self, message: str) -> None:
        log.warning("compile cache: %s", message)

    # ---- fetch, before the first compile ----------------------------------------------------------------------
    def fetch(self) -> int:
        """Put the bucket's copy of this rank's folder in place when there is none locally; the files fetched."""
        with _quiet_retries():
            return self._fetch()

    def _fetch(self) -> int:
        folder, remote = self.folder, self._remote
        if folder is None or remote is None:
            return 0
        if folder.is_dir() and any(p.is_file() for p in folder.rglob("*")):
            return 0  # a restarted container: MindSpore's own folder is there
        try:
            raw = remote.get(self.manifest_key) if remote.exists(self.manifest_key) else None
            if raw is None:
                if next(iter(remote.list("")), None) is not None:
                    self._warn(f"{self.remote_uri}: no manifest for rank {self.rank} (upload cut short); compiling")
                else:
                    self.note(f"compile cache: none in {self.remote_uri} yet; compiling")
                return 0
            manifest = _parse_manifest(raw)
            staging = folder.parent / f".fetch-rank_{self.rank}-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            try:
                for name, info in manifest.items():
                    data = remote.get(f"{BLOBS}/{info['sha256']}")
                    if len(data) != info["size"] or _sha256(data) != info["sha256"]:
                        raise ConvitError(f"{name} is corrupt (size or sha256 differs from the manifest)")
                    target = staging / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
                shutil.rmtree(folder, ignore_errors=True)  # no files in it (checked above)
                staging.rename(folder)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        except (ConvitError, OSError, ValueError) as exc:
            self._warn(f"not fetched from {self.remote_uri} ({exc}); compiling")
            return 0
        self.known = self._verified = manifest
        self.note(f"compile cache: fetched {len(manifest)} files ({_megabytes(manifest)}) from {self.remote_uri}")
        return len(manifest)

    # ---- upload, after a graph compiled -----------------------------------------------------------------------
    def compiled(self, what: str) -> None:
        """Call after each training step and evaluation (not while a graph compiles): the first call for `what`
        reads the folder and uploads what changed in the background; later ones return at once."""
        if self.folder is None or self._remote is None or self._failed or what in self._seen:
            return
        self._seen.add(what)
        try:
            files = scan(self.folder)
        except OSError as exc:
            self._failed = True
            self._warn(f"cannot read {self.folder} ({exc}); not uploaded")
            return
        manifest = manifest_of(files)
        if not files or manifest == self.known:
            return
        self.known = manifest  # what the bucket will hold once this upload is done: never sent twice
        previous = self._thread
        self._thread = threading.Thread(target=self._run_upload, args=(files, manifest, previous), daemon=True)
        self._thread.start()

    def _run_upload(self, files: dict[str, bytes], manifest: Manifest, previous: threading.Thread | None) -> None:
        with contextlib.suppress(OSError, AttributeError):  # training comes first (see checkpoints._run_upload)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        if previous is not None:
            previous.join()
        if self._failed:
            return
        try:
            with _quiet_retries():
                sent = self.upload(files, manifest)
        except (ConvitError, OSError) as exc:
            self._failed = True  # one warning; the next start compiles what is missing
            self._warn(f"not uploaded to {self.remote_uri} ({exc}); training goes on")
            return
        self.note(f"compile cache: uploaded {sent} of {len(files)} files ({_megabytes(manifest)}) to {self.remote_uri}")

    def upload(self, files: dict[str, bytes], manifest: Manifest) -> int:
        """The files not fetched intact, then the manifest naming them all; returns the number of files sent."""
        remote = self._remote
        assert remote is not None
        # Blobs verified by this process's fetch or sent by it are not sent again; any other blob of that name
        # may be a corrupt one (the reason the fetch failed), so it is overwritten.
        stored = {str(info["sha256"]) for info in self._verified.values()}
        sent = 0
        for name, data in files.items():
            sha = str(manifest[name]["sha256"])
            if sha not in stored:
                remote.put(f"{BLOBS}/{sha}", data)
                stored.add(sha)
                sent += 1
        remote.put(self.manifest_key, json.dumps({"rank": self.rank, "files": manifest}, sort_keys=True).encode())
        self._verified = manifest
        return sent

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """At the run's end: give an upload under way a chance to finish."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                self._warn(f"upload to {self.remote_uri} unfinished after {timeout:.0f}s; not waiting for it")


def _parse_manifest(raw: bytes) -> Manifest:
    """The manifest's files; ValueError when it is malformed (a path outside the folder included)."""
    manifest: Manifest = {}
    try:
        for name, info in json.loads(raw)["files"].items():
            size, sha = int(info["size"]), str(info["sha256"])
            if not name or name.startswith("/") or {".", ".."} & set(name.split("/")) or len(sha) != 64:
                raise ValueError(f"entry {name!r}")
            int(sha, 16)
            manifest[name] = {"size": size, "sha256": sha}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed manifest: {exc}") from None
    if not manifest:
        raise ValueError("empty manifest")
    return manifest


def enable_compile_cache(
    spec: JobSpec,
    world_size: int,
    lr_table: int,
    *,
    rank: int = 0,
    note: Callable[[str], None] | None = None,
) -> CompileCache:
    """Point MindSpore's compile cache at <cache dir>/compile/<key> and fetch this rank's folder from object storage
    when a new pod has none; call before MindSpore compiles anything (MindSpore reads the variables when it
    compiles). `note` prints an info line (the trainer's progress output)."""
    if os.environ.get("CONVIT_COMPILE_CACHE", "1") == "0" or os.environ.get("MS_COMPILER_CACHE_PATH"):
        return CompileCache(None)
    key = cache_key(spec, world_size, lr_table)
    root = Path(os.environ.get(contract.ENV_CACHE_DIR, "/tmp/convit-cache")) / "compile" / key
    root.mkdir(parents=True, exist_ok=True)
    os.environ["MS_COMPILER_CACHE_ENABLE"] = "1"
    os.environ["MS_COMPILER_CACHE_PATH"] = str(root)
    cache = CompileCache(root, join_uri(spec.checkpoint.uri, REMOTE_FOLDER, key), rank, note)
    cache.fetch()
    return cache
