"""Injected faults: chosen by the `x-aios-fault` header or by a script rule, the header winning."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from .engine import InferError
from .responses import DropConnection
from .scripts import FAULTS
from .state import state_of

FAULT_HEADER = "x-aios-fault"
FAULT_AFTER_HEADER = "x-aios-fault-after-tokens"
# Faults that let some tokens out first (`fault_after_tokens`), then fail in their own way.
CUT_FAULTS = ("midstream", "server_error", "disconnect")


@dataclass(frozen=True)
class Fault:
    kind: str | None
    after_tokens: int


def request_fault(request: Request, rule_fault: str | None, rule_after: int | None) -> Fault:
    """The per-request header wins over the script rule, so a test can fault any prompt."""
    config = state_of(request).config
    header = request.headers.get(FAULT_HEADER, "").strip().lower() or None
    kind = header if header in FAULTS else rule_fault
    after = rule_after if rule_after is not None else config.fault_after_tokens
    header_after = request.headers.get(FAULT_AFTER_HEADER, "").strip()
    if header_after.isdigit():
        after = int(header_after)
    return Fault(kind, after)


def fault_from_header(request: Request) -> str | None:
    header = request.headers.get(FAULT_HEADER, "").strip().lower()
    return header if header in FAULTS else None


def early_fault(request: Request, route: str, match_texts: list[str]) -> str | None:
    """The fault known before the response starts: the header's, else the first matching rule's.

    Needed where the fault decides the status line (unavailable) before a stream opens.
    """
    header = fault_from_header(request)
    if header is not None:
        return header
    script = state_of(request).script
    for text in match_texts:
        rule = script.find(text, route)
        if rule is not None and rule.fault is not None:
            return rule.fault
    return None


def injected_generation_error() -> InferError:
    return InferError.generation("injected fault (AIOS development server): the model backend failed")


def cut_fault_error(kind: str | None, *, streaming: bool) -> Exception:
    """What ends a generation cut short by `kind` (one of `CUT_FAULTS`)."""
    if kind == "disconnect":
        return DropConnection()
    if kind == "server_error":
        # TGI's 500s: a non-stream request gets IncompleteGeneration; a stream, already 200, gets the
        # in-band IncompleteGenerationStream event that TGI sends when the backend stream ends early.
        if streaming:
            return InferError("incomplete_generation_stream", "Incomplete generation stream")
        return InferError("incomplete_generation", "Incomplete generation")
    return injected_generation_error()
