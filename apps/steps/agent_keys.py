"""The step keys of what an agent step records: its tool calls ("triage~3") and its model turns ("triage~m2").

Graph keys are identifiers, so a key with the mark is never a graph step's. A long agent key is shortened
with a digest of itself, so the recorded keys fit the columns (64 characters) and stay unique per agent.
"""

from __future__ import annotations

import hashlib

TOOL_CALL_MARK = "~"
_LONGEST_BASE = 50


def _base(agent_key: str) -> str:
    if len(agent_key) <= _LONGEST_BASE:
        return agent_key
    return f"{agent_key[:43]}-{hashlib.sha256(agent_key.encode()).hexdigest()[:6]}"


def tool_call_key(agent_key: str, number: int) -> str:
    """The step key of the agent's `number`-th tool call (from 1)."""
    return f"{_base(agent_key)}{TOOL_CALL_MARK}{number}"


def model_turn_key(agent_key: str, turn: int) -> str:
    """The key the agent's model call of turn `turn` (from 1) is recorded and replayed under."""
    return f"{_base(agent_key)}{TOOL_CALL_MARK}m{turn}"


# What an agent step waits for while its tool calls run (StepRun.waiting_for).
AGENT_WAIT = "agent"
