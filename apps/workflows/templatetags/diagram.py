"""Template tags for `workflows/_diagram.html`: a run's step states as classes, badges and words.

Everything returned is plain text or numbers that the template engine escapes; states outside the known
set are ignored, so a state string can never inject a class name or markup.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django import template

from apps.workflows.diagram import Node, text_width

register = template.Library()

BADGE_PX = 11  # keep in step with .diagram-badge text in static/css/diagram.css
BADGE_H = 18

# State → (words for titles and summaries, the badge). Pending is how every step starts and how the diagram
# looks without a run, so it gets no badge: only states that differ from the plain drawing are marked, and
# each of those in words as well as colour.
STATES: dict[str, tuple[str, str]] = {
    "pending": ("not started", ""),
    "queued": ("queued", "◷ queued"),
    "running": ("running", "… running"),
    "waiting": ("waiting", "‖ waiting"),
    "succeeded": ("done", "✓ done"),
    "failed": ("failed", "✗ failed"),
    "skipped": ("skipped", "– skipped"),
    "cancelled": ("cancelled", "⊘ cancelled"),
}


@dataclass(frozen=True)
class NodeState:
    """A node's run state and its badge geometry, in node-local coordinates (the badge hangs over the
    node's top right corner)."""

    state: str
    words: str
    badge: str
    badge_w: int
    badge_x: int
    badge_y: int = -BADGE_H // 2
    badge_h: int = BADGE_H

    @property
    def badge_text_x(self) -> int:
        return self.badge_x + self.badge_w // 2

    @property
    def badge_text_y(self) -> int:
        return self.badge_y + BADGE_H // 2 + 4


@register.simple_tag
def diagram_node_state(states: Mapping[str, Any] | None, node: Node) -> NodeState | None:
    """The state of `node` in `states` ({step key: state}), or None when there is none or it is unknown."""
    state = states.get(node.key) if isinstance(states, Mapping) else None
    if not isinstance(state, str) or state not in STATES:
        return None
    words, badge = STATES[state]
    width = text_width(badge, BADGE_PX, bold=True) + 14 if badge else 0
    return NodeState(state=state, words=words, badge=badge, badge_w=width, badge_x=node.w - width - 8)


@register.simple_tag
def diagram_states_summary(states: Mapping[str, Any] | None) -> str:
    """The run's step states in words, for the diagram's description: "Run: 3 done, 1 running."."""
    if not isinstance(states, Mapping):
        return ""
    counts = Counter(state for state in states.values() if isinstance(state, str) and state in STATES)
    if not counts:
        return ""
    parts = [f"{counts[state]} {words}" for state, (words, _) in STATES.items() if counts[state]]
    return f"Run: {', '.join(parts)}."
