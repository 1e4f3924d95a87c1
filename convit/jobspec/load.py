"""Reading job files safely: YAML without aliases or duplicate keys, `--set` overrides, one-line errors."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from convit.errors import UsageError
from convit.jobspec.schema import JobSpec

MAX_JOB_FILE_BYTES = 256 * 1024
# A job is at most four levels deep (cluster.tolerations[0].key); anything much deeper is refused (the parsers'
# RecursionError, or check_plain after parsing) before it can reach a recursive serialiser or validator.
MAX_DEPTH = 32
_RECIPE_NAME = re.compile(r"^[a-z0-9_]+$")
_SET_KEY = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$")
# Every character YAML (1.1, PyYAML's reader) breaks lines at, plus the other vertical separators: a `--set`
# value is one line.
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


class JobSpecError(UsageError):
    """A job file or override that does not describe a valid job (exit code 2: never retried)."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases (billion-laughs) and duplicate keys (silent overwrites)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.constructor.ConstructorError(
                None, None, "YAML aliases/anchors are not allowed in job files", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, "mapping keys must be plain scalars", key_node.start_mark
                )
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def jobs_dir() -> Path:
    """The recipe folder: $CONVIT_JOBS_DIR, else `jobs/` beside the installed packages."""
    env = os.environ.get("CONVIT_JOBS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "jobs"


def resolve_job_path(job: str) -> Path:
    """A recipe name (`convit_tiny`) or a path to a YAML file."""
    if _RECIPE_NAME.fullmatch(job) and not job.endswith((".yaml", ".yml")):
        path = jobs_dir() / f"{job}.yaml"
        if not _is_file(path):
            known = ", ".join(sorted(p.stem for p in jobs_dir().glob("*.yaml"))) or "none"
            raise JobSpecError(f"unknown job {job!r}: no {path} (known recipes: {known})")
        return path
    path = Path(job)
    if not _is_file(path):
        raise JobSpecError(f"job file {job!r} does not exist")
    return path


def _is_file(path: Path) -> bool:
    """A regular file (not a directory, device or FIFO); False for names no file can have (a NUL byte, too long)."""
    try:
        return path.is_file()
    except (ValueError, OSError):
        return False


def _one_line(text: str) -> str:
    """An error message as one printable line: a hostile key or value's line breaks and control characters
    escaped."""
    return text if text.isprintable() else text.encode("unicode_escape", "backslashreplace").decode("ascii")


def check_plain(value: Any, source: str) -> None:
    """Refuse what no job value can be and what would break the JSON round trip of the values: nesting deeper
    than MAX_DEPTH, and YAML's non-JSON types (timestamps, !!binary, !!set). Iterative: no recursion to exhaust."""
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:
        node, depth, where = stack.pop()
        if depth > MAX_DEPTH:
            raise JobSpecError(f"{source}: nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, dict):
            stack.extend((v, depth + 1, f"{where}.{k}" if where else str(k)) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, depth + 1, f"{where}[{i}]") for i, v in enumerate(node))
        elif node is not None and not isinstance(node, (str, int, float, bool)):
            at = f"{_one_line(where)}: " if where else ""
            raise JobSpecError(
                f"{source}: {at}a {type(node).__name__} value, but job values are strings, numbers, booleans, "
                "lists and mappings (quote dates and other such scalars)"
            )


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    if len(text.encode("utf-8", "surrogateescape")) > MAX_JOB_FILE_BYTES:
        raise JobSpecError(f"{source}: larger than {MAX_JOB_FILE_BYTES} bytes, refusing to parse")
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
        raise JobSpecError(f"{source}: invalid YAML{where}: {problem}") from None
    except RecursionError:  # the composer recurses per level: 50,000 nested brackets exhaust the stack
        raise JobSpecError(f"{source}: nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # a scalar the constructor cannot convert, e.g. an integer of 5,000 digits
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise JobSpecError(f"{source}: invalid YAML: {first}") from None
    if not isinstance(data, dict):
        raise JobSpecError(f"{source}: a job file must be a YAML mapping, not {type(data).__name__}")
    return data


def read_job_values(job: str) -> tuple[dict[str, Any], str]:
    path = resolve_job_path(job)
    try:
        with path.open("rb") as handle:  # never more than the limit, whatever the file's size
            raw = handle.read(MAX_JOB_FILE_BYTES + 1)
        if len(raw) > MAX_JOB_FILE_BYTES:
            raise JobSpecError(f"{path}: larger than {MAX_JOB_FILE_BYTES} bytes, refusing to parse")
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise JobSpecError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise JobSpecError(f"{path}: cannot read: {exc.strerror}") from None
    # .json: the rendered ConfigMap's job file; YAML 1.1 would read 1e-06 as a string
    values = parse_json(text, str(path)) if path.suffix == ".json" else parse_yaml(text, str(path))
    check_plain(values, str(path))
    return values, str(path)


def parse_json(text: str, source: str) -> dict[str, Any]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        dup = next((k for k in keys if keys.count(k) > 1), None)
        if dup is not None:
            raise JobSpecError(f"{source}: duplicate key {dup!r}")
        return dict(pairs)

    if len(text.encode("utf-8", "surrogateescape")) > MAX_JOB_FILE_BYTES:
        raise JobSpecError(f"{source}: larger than {MAX_JOB_FILE_BYTES} bytes, refusing to parse")
    try:
        data = json.loads(text, object_pairs_hook=no_duplicates)
    except ValueError as exc:
        raise JobSpecError(f"{source}: invalid JSON: {exc}") from None
    except RecursionError:
        raise JobSpecError(f"{source}: nested more than {MAX_DEPTH} levels deep") from None
    if not isinstance(data, dict):
        raise JobSpecError(f"{source}: a job file must be a mapping")
    return data


def parse_set_value(text: str) -> Any:
    """A `--set` value: a YAML scalar or flow collection (1e-3 is a float, as users expect)."""
    if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", text):
        return float(text)
    value = parse_yaml(f"v: {text}", "--set value")["v"] if text.strip() else ""
    check_plain(value, "--set value")
    return value


def apply_overrides(values: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply `key.path=value` overrides to a copy of the values; keys are plain dotted names."""
    check_plain(values, "job values")
    result: dict[str, Any] = json.loads(json.dumps(values))
    for item in overrides:
        if "=" not in item:
            raise JobSpecError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        if not _SET_KEY.fullmatch(key):
            raise JobSpecError(f"--set {key!r}: keys are dotted lower-case names like train.lr")
        if _LINE_BREAKS.search(raw):
            raise JobSpecError(f"--set {key}: values must be a single line (no line or paragraph separators)")
        parts = key.split(".")
        node = result
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise JobSpecError(f"--set {key}: {part!r} is not a section")
            node = child
        node[parts[-1]] = parse_set_value(raw)
    return result


def validate_job(values: Mapping[str, Any], source: str) -> JobSpec:
    try:
        return JobSpec.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise JobSpecError(_one_line(f"{source}: {where}: {message}{more}")) from None
    except RecursionError:  # values built in Python, not read by this module's parsers
        raise JobSpecError(f"{source}: nested more than {MAX_DEPTH} levels deep") from None


def load_job(job: str, overrides: Iterable[str] = ()) -> JobSpec:
    """Read, override and validate a job: the one entry point of the trainer and the launcher."""
    values, source = read_job_values(job)
    return validate_job(apply_overrides(values, overrides), source)


def job_values(spec: JobSpec) -> dict[str, Any]:
    """The validated spec as plain values (what the chart receives), with defaults filled in."""
    return spec.model_dump(mode="json")
