"""Template filters shared by every page. Output is escaped by the template engine, never marked safe."""

from __future__ import annotations

import json
from typing import Any

from django import template
from django.core.serializers.json import DjangoJSONEncoder

register = template.Library()


@register.filter
def pretty_json(value: Any) -> str:
    """Indented JSON text for display in a <pre> (escaped by the engine like any text)."""
    return json.dumps(value, indent=2, ensure_ascii=False, cls=DjangoJSONEncoder)


@register.filter
def seconds(value: float | None) -> str:
    """A duration for people: 850 ms, 4.2 s, 3 min 5 s."""
    if value is None:
        return "—"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.1f} s"
    minutes, rest = divmod(int(value), 60)
    return f"{minutes} min {rest} s"


@register.filter
def get_item(mapping: Any, key: Any) -> Any:
    """`mapping[key]` in a template, or None."""
    return mapping.get(key) if isinstance(mapping, dict) else None


@register.filter
def display_value(value: Any) -> str:
    """A value for people: text as it is, anything else as indented JSON (escaped by the engine)."""
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, cls=DjangoJSONEncoder)


@register.filter
def setting_label(path: str) -> str:
    """A setting's dotted path in words: "config.json_schema.properties.amount" → "Json schema › amount"."""
    parts = [part for part in str(path).split(".") if part not in ("config", "properties")]
    if not parts:
        return str(path)
    words = [parts[0].replace("_", " ").capitalize(), *parts[1:]]
    return " › ".join(words)


@register.filter
def percent(value: float | None) -> str:
    """A share in [0, 1] as a whole percentage ("97 %"); "—" when there is none."""
    if value is None:
        return "—"
    return f"{round(float(value) * 100)} %"
