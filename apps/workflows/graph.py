"""Validation of a version's graph: every problem found, each naming its step."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from apps.steps.registry import step_config_errors


def graph_errors(graph: Any) -> list[str]:
    """Every problem with `graph` as readable messages (empty when it may be published)."""
    if not isinstance(graph, dict) or not isinstance(graph.get("steps"), list):
        return ['graph: must be {"steps": [...]}']
    steps = graph["steps"]
    if not steps:
        return ["graph: a workflow needs at least one step"]
    problems: list[str] = []
    seen: set[str] = set()
    for index, step in enumerate(steps, start=1):
        if not isinstance(step, dict):
            problems.append(f"step {index}: must be an object with key, type and config")
            continue
        key = step.get("key")
        label = f'step "{key}"' if isinstance(key, str) and key else f"step {index}"
        if not isinstance(key, str) or not key.isidentifier():
            problems.append(f"{label}: key must be a name of letters, digits and _ (got {key!r})")
        elif key in seen:
            problems.append(f"{label}: key is used by an earlier step")
        else:
            seen.add(key)
        config = step.get("config", {})
        if not isinstance(config, dict):
            problems.append(f"{label}: config must be an object")
            continue
        problems.extend(f"{label}: {message}" for message in step_config_errors(str(step.get("type")), config))
    return problems


def graph_checksum(graph: dict[str, Any], input_schema: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a version's executable content."""
    canonical = json.dumps({"graph": graph, "input_schema": input_schema}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
