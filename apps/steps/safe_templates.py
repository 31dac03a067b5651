"""Templates whose output another program parses: a URL and a JSON body (review L8).

Templates render with autoescape off, which is right for prompts and mail, but a URL or a JSON document
written as a template lets run data change its structure: `/items/{{ input.id }}` with `../admin?x=1#` reaches
another endpoint, `{"name": "{{ input.name }}"}` with `x","approved":true,"y":"` adds a field. These helpers
rewrite such a template so that every `{{ … }}` substitution is encoded for the place it lands in, decided from
the template's own literal text (never from the data):

- URL: in the path a value is percent-encoded as one segment's text ("/", "?", "#", "%" too) and a value of
  only dots is refused; in the query and the fragment it is percent-encoded ("&", "=", "#", "+" too).
- JSON: inside a string literal a value is escaped as string text; where a value goes it is serialised as
  JSON (a value already ending in `| tojson` stays as it is). The literal text around the substitutions must
  be valid JSON by itself, and `{% … %}` tags (which could build structure from data) are refused.

Rewriting keeps the author's template as it is written (saved workflows keep working) and renders in one
sandboxed render, like any template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from jinja2 import TemplateSyntaxError, nodes

from apps.steps.expressions import _jinja


class TemplateUnsafe(Exception):
    """A template that cannot be rendered safely in its context; the message says why, in words."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class _Piece:
    text: str  # the literal text, or the expression's source
    expression: bool


def _pieces(template: str, *, what: str) -> list[_Piece]:
    """The template as literal text and `{{ … }}` expressions (comments dropped). TemplateUnsafe for any
    `{% … %}` tag and for a template that does not parse."""
    pieces: list[_Piece] = []
    expression: list[str] | None = None
    try:
        for _line, kind, value in _jinja.lexer.tokeniter(template, None):
            if expression is not None:
                if kind == "variable_end":
                    pieces.append(_Piece("".join(expression).strip(), True))
                    expression = None
                else:
                    expression.append(value)
            elif kind == "data":
                pieces.append(_Piece(value, False))
            elif kind == "variable_begin":
                expression = []
            elif kind in ("comment_begin", "comment", "comment_end"):
                continue
            else:
                raise TemplateUnsafe(
                    f"{what} cannot use {{% … %}} tags (run data could change its structure); "
                    "use only {{ … }} substitutions"
                )
    except TemplateSyntaxError as error:
        raise TemplateUnsafe(f"the template does not parse: {error}") from None
    return pieces


def single_expression(template: str) -> bool:
    """Whether the whole template is one `{{ expression }}` (surrounding spaces aside)."""
    try:
        pieces = [piece for piece in _pieces(template.strip(), what="it") if piece.expression or piece.text]
    except TemplateUnsafe:
        return False
    return len(pieces) == 1 and pieces[0].expression


def _substitution(expression: str, filter_name: str) -> str:
    return "{{ (" + expression + ") | " + filter_name + " }}"


# --- URLs --------------------------------------------------------------------------------------------------------


def url_template_safe(template: str) -> str:
    """`template` with every substitution percent-encoded for the URL component it lands in (the path until
    the first "?", then the query until "#", then the fragment). TemplateUnsafe for `{% … %}` tags."""
    out: list[str] = []
    component = "path"
    for piece in _pieces(template, what="url"):
        if piece.expression:
            out.append(_substitution(piece.text, "_aios_url_path" if component == "path" else "_aios_url_part"))
            continue
        out.append(piece.text)
        for char in piece.text:
            if char == "?" and component == "path":
                component = "query"
            elif char == "#":
                component = "fragment"
    return "".join(out)


# --- JSON --------------------------------------------------------------------------------------------------------


def json_shaped(template: str) -> bool:
    """Whether a body template is written as JSON text: it starts with "{" (not a tag) or "["."""
    text = template.lstrip()
    return text.startswith("[") or (text.startswith("{") and not text.startswith(("{{", "{%", "{#")))


def _ends_in_tojson(expression: str) -> bool:
    try:
        output = _jinja.parse("{{ " + expression + " }}").body[0]
    except TemplateSyntaxError:
        return False
    node = output.nodes[0] if isinstance(output, nodes.Output) and len(output.nodes) == 1 else None
    return isinstance(node, nodes.Filter) and node.name == "tojson"


def json_template_safe(template: str) -> str:
    """A JSON body template rewritten so that no substitution can change the document's structure: inside a
    string literal a value is escaped as text, elsewhere it is serialised as a JSON value. TemplateUnsafe when
    the literal text is not JSON by itself (substitutions taken as values), or for `{% … %}` tags."""
    out: list[str] = []
    skeleton: list[str] = []
    in_string = escaped = False
    for piece in _pieces(template, what="a JSON body"):
        if piece.expression:
            if in_string:
                if escaped:
                    raise TemplateUnsafe('a JSON body has a "\\" right before {{ … }}; remove it')
                out.append(_substitution(piece.text, "_aios_json_text"))
            else:
                typed = _ends_in_tojson(piece.text)
                out.append("{{ " + piece.text + " }}" if typed else _substitution(piece.text, "_aios_json"))
                skeleton.append("0")
            continue
        out.append(piece.text)
        skeleton.append(piece.text)
        for char in piece.text:
            if escaped:
                escaped = False
            elif in_string and char == "\\":
                escaped = True
            elif char == '"':
                in_string = not in_string
    try:
        json.loads("".join(skeleton))
    except ValueError as error:
        raise TemplateUnsafe(
            f"the body is written as JSON but is not JSON around its {{{{ … }}}} values ({error}); "
            "put each value in its own place (or use the JSON fields)"
        ) from None
    return "".join(out)


def json_fields_template(fields: dict[str, str]) -> str:
    """The JSON-object template for a body given field by field (name → text template): a value that is one
    `{{ expression }}` keeps the expression's type (a number, a list, an object), any other value is text
    (its literal parts and substitutions alike). Rewrite it with `json_template_safe` before rendering."""
    members: list[str] = []
    for name, value in fields.items():
        pieces = _pieces(value, what=f'the JSON field "{name}"')
        given = [piece for piece in pieces if piece.expression or piece.text.strip()]
        if len(given) == 1 and given[0].expression:
            members.append(f"{json.dumps(name)}: {{{{ {given[0].text} }}}}")
            continue
        text = []
        for piece in pieces:
            if piece.expression:
                text.append("{{ " + piece.text + " }}")
            else:
                # Braces as \\u escapes: literal text next to a substitution must not read as a tag.
                escaped = json.dumps(piece.text, ensure_ascii=False)[1:-1]
                text.append(escaped.replace("{", "\\u007b").replace("}", "\\u007d"))
        members.append(f'{json.dumps(name)}: "{"".join(text)}"')
    return "{" + ", ".join(members) + "}"
