"""Expressions (CEL) and text templates (sandboxed Jinja2) over run data.

No `eval`: CEL is not Turing-complete and Jinja2 runs in its immutable sandbox. Both see only the
variables the step context provides (`input`, `steps`).
"""

from __future__ import annotations

import functools
from typing import Any

import cel
from jinja2 import StrictUndefined, Template, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class _DataFirstEnvironment(ImmutableSandboxedEnvironment):
    """Jinja looks up `x.items` as the dict method before the key; run data is data, so keys win
    (`{{ input.items }}` is the "items" field, not `<built-in method items>`)."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


_jinja = _DataFirstEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)

MAX_EXPRESSION_LENGTH = 2000
MAX_TEMPLATE_OUTPUT = 200_000


class ExpressionError(Exception):
    """An expression or template that does not parse or does not evaluate; the message says why."""


def cel_check(expression: str) -> str | None:
    """None when `expression` parses as CEL, else the parser's complaint."""
    if len(expression) > MAX_EXPRESSION_LENGTH:
        return f"expression is longer than {MAX_EXPRESSION_LENGTH} characters"
    try:
        cel.compile(expression)
    except Exception as error:  # the binding raises ValueError for syntax, others for internals
        return str(error).splitlines()[0]
    return None


def cel_evaluate(expression: str, variables: dict[str, Any]) -> Any:
    """The value of a CEL expression; any failure (syntax, a missing field, a type error) is an ExpressionError."""
    problem = cel_check(expression)
    if problem:
        raise ExpressionError(problem)
    try:
        return cel.evaluate(expression, variables)
    except KeyError as error:
        raise ExpressionError(f"no such field: {error.args[0]}") from None
    except Exception as error:
        raise ExpressionError(str(error).splitlines()[0] if str(error) else type(error).__name__) from None


def template_check(template: str) -> str | None:
    """None when `template` parses as a text template, else the reason."""
    try:
        _jinja.parse(template)
    except TemplateError as error:
        return str(error)
    return None


@functools.lru_cache(maxsize=1024)
def _compiled(template: str) -> Template:
    # Compiling (lexing, parsing, generating and compiling Python) costs far more than rendering, and a step's
    # templates are the same for every run of its version. Compiled templates are safe to share.
    return _jinja.from_string(template)


def template_render(template: str, variables: dict[str, Any]) -> str:
    """Render a text template in the sandbox; undefined names and sandbox violations are errors."""
    try:
        text = _compiled(template).render(**variables)
    except TemplateError as error:
        raise ExpressionError(str(error)) from None
    if len(text) > MAX_TEMPLATE_OUTPUT:
        raise ExpressionError(f"the rendered text is longer than {MAX_TEMPLATE_OUTPUT} characters")
    return text
