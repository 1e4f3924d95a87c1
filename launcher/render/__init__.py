"""Render a job spec into Kubernetes objects (as data) and YAML."""

from __future__ import annotations

from typing import Any

import yaml

from launcher.render.objects import render_objects, workload

__all__ = ["render_objects", "render_yaml", "workload"]


def render_yaml(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False, width=120)
