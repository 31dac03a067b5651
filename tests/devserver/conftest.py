"""Fixtures for the development server's tests: the server itself, the vendored API contracts, SSE parsing.

No database is involved: these tests talk HTTP to a server process and read JSON specs, so they run
with or without the Django project around them.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.devserver import REPO_ROOT, base_url, devserver, make_server, script_path

__all__ = ["base_url", "devserver", "make_server", "script_path"]

CONTRACTS_DIR = REPO_ROOT.parent / "shared" / "contracts"


# --------------------------------------------------------------------------------------------------
# Contracts


def _load_spec(name: str) -> dict[str, Any]:
    path = CONTRACTS_DIR / name
    if not path.is_file():
        pytest.fail(
            f"The vendored API contract {path} is missing. The inference contract tests need the repository's "
            "sibling shared/contracts/ directory (see shared/contracts/README.md); they never skip without it.",
            pytrace=False,
        )
    spec: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return spec


def _nullable_composites(node: Any) -> Any:
    """Read `nullable` next to allOf/oneOf/anyOf/$ref the way the spec's generator (utoipa) means it.

    utoipa writes `Option<Struct>` as `{"allOf": [{"$ref": ...}], "nullable": true}`. OAS 3.0 validators only
    honour `nullable` beside `type`, so they would reject the `null` that TGI legitimately sends. This
    rewrites such nodes to "the referenced schema, or null" in a copy; the vendored file is untouched.
    """
    if isinstance(node, list):
        return [_nullable_composites(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _nullable_composites(value) for key, value in node.items()}
    if (
        converted.get("nullable") is True
        and "type" not in converted
        and ({"allOf", "oneOf", "anyOf", "$ref"} & converted.keys())
    ):
        inner = {key: value for key, value in converted.items() if key != "nullable"}
        return {"anyOf": [inner, {"enum": [None]}]}
    return converted


class Contract:
    """Validates instances against one vendored OpenAPI document's schemas."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.components = _nullable_composites(copy.deepcopy(spec["components"]))

    def errors(self, schema: dict[str, Any], instance: Any) -> list[str]:
        from openapi_schema_validator import OAS30Validator, oas30_format_checker

        wrapped = {**_nullable_composites(schema), "components": self.components}
        validator = OAS30Validator(wrapped, format_checker=oas30_format_checker)
        return [
            f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(instance)
        ]

    def component(self, name: str) -> dict[str, Any]:
        assert name in self.spec["components"]["schemas"], f"{name} is not a schema in the contract"
        return {"$ref": f"#/components/schemas/{name}"}

    def response_schema(self, path: str, method: str, status: int, content_type: str) -> dict[str, Any]:
        operation = self.spec["paths"][path][method.lower()]
        response = operation["responses"][str(status)]
        schema: dict[str, Any] = response["content"][content_type]["schema"]
        return schema

    def check(self, name: str, instance: Any) -> None:
        """Assert `instance` is a valid `name` component."""
        problems = self.errors(self.component(name), instance)
        assert not problems, f"{name} contract violated:\n" + "\n".join(problems) + f"\ninstance: {instance!r}"

    def check_response(self, path: str, method: str, status: int, content_type: str, instance: Any) -> None:
        """Assert `instance` matches what the spec documents for that route, status and content type."""
        problems = self.errors(self.response_schema(path, method, status, content_type), instance)
        assert not problems, f"{method.upper()} {path} {status} {content_type} contract violated:\n" + "\n".join(
            problems
        )


@pytest.fixture(scope="session")
def tgi_contract() -> Contract:
    return Contract(_load_spec("tgi-openapi.json"))


@pytest.fixture(scope="session")
def tei_contract() -> Contract:
    return Contract(_load_spec("tei-openapi.json"))


# --------------------------------------------------------------------------------------------------
# SSE helpers


def sse_frames(body: bytes) -> list[bytes]:
    """Split a raw SSE body into frames (each frame without its terminating blank line)."""
    assert body.endswith(b"\n\n"), f"SSE body does not end with a blank line: {body[-40:]!r}"
    return body[:-2].split(b"\n\n")


def sse_data(body: bytes) -> list[Any]:
    """The `data:` payloads of a raw SSE body, JSON-decoded except the `[DONE]` sentinel."""
    payloads: list[Any] = []
    for frame in sse_frames(body):
        if frame == b":":
            continue
        assert frame.startswith(b"data:"), f"unexpected SSE frame {frame!r}"
        data = frame[len(b"data:") :]
        payloads.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return payloads


@pytest.fixture(scope="session")
def parse_sse() -> Callable[[bytes], list[Any]]:
    """`parse_sse(body)`: the JSON payloads (and "[DONE]") of a raw SSE body, framing checked."""
    return sse_data


@pytest.fixture(scope="session")
def split_sse() -> Callable[[bytes], list[bytes]]:
    """`split_sse(body)`: the raw frames of an SSE body."""
    return sse_frames
