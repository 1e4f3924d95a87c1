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
_RECIPE_NAME = re.compile(r"^[a-z0-9_]+$")
_SET_KEY = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$")


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
    if _RECIPE_NAME.match(job) and not job.endswith((".yaml", ".yml")):
        path = jobs_dir() / f"{job}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in jobs_dir().glob("*.yaml"))) or "none"
            raise JobSpecError(f"unknown job {job!r}: no {path} (known recipes: {known})")
        return path
    path = Path(job)
    if not path.is_file():
        raise JobSpecError(f"job file {job!r} does not exist")
    return path


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    if len(text.encode("utf-8", "surrogateescape")) > MAX_JOB_FILE_BYTES:
        raise JobSpecError(f"{source}: larger than {MAX_JOB_FILE_BYTES} bytes, refusing to parse")
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise JobSpecError(f"{source}: invalid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise JobSpecError(f"{source}: a job file must be a YAML mapping, not {type(data).__name__}")
    return data


def read_job_values(job: str) -> tuple[dict[str, Any], str]:
    path = resolve_job_path(job)
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise JobSpecError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise JobSpecError(f"{path}: cannot read: {exc.strerror}") from None
    if path.suffix == ".json":  # the rendered ConfigMap's job file; YAML 1.1 would read 1e-06 as a string
        return parse_json(text, str(path)), str(path)
    return parse_yaml(text, str(path)), str(path)


def parse_json(text: str, source: str) -> dict[str, Any]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        dup = next((k for k in keys if keys.count(k) > 1), None)
        if dup is not None:
            raise JobSpecError(f"{source}: duplicate key {dup!r}")
        return dict(pairs)

    try:
        data = json.loads(text, object_pairs_hook=no_duplicates)
    except ValueError as exc:
        raise JobSpecError(f"{source}: invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise JobSpecError(f"{source}: a job file must be a mapping")
    return data


def parse_set_value(text: str) -> Any:
    """A `--set` value: a YAML scalar or flow collection (1e-3 is a float, as users expect)."""
    if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", text):
        return float(text)
    value = parse_yaml(f"v: {text}", "--set value")["v"] if text.strip() else ""
    return value


def apply_overrides(values: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply `key.path=value` overrides to a copy of the values; keys are plain dotted names."""
    result: dict[str, Any] = json.loads(json.dumps(values))
    for item in overrides:
        if "=" not in item:
            raise JobSpecError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        if not _SET_KEY.match(key):
            raise JobSpecError(f"--set {key!r}: keys are dotted lower-case names like train.lr")
        if "\n" in raw or "\r" in raw:
            raise JobSpecError(f"--set {key}: values must be a single line")
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
        raise JobSpecError(f"{source}: {where}: {message}{more}") from None


def load_job(job: str, overrides: Iterable[str] = ()) -> JobSpec:
    """Read, override and validate a job: the one entry point of the trainer and the launcher."""
    values, source = read_job_values(job)
    return validate_job(apply_overrides(values, overrides), source)


def job_values(spec: JobSpec) -> dict[str, Any]:
    """The validated spec as plain values (what the chart receives), with defaults filled in."""
    return spec.model_dump(mode="json")
