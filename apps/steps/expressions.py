"""Expressions (CEL) and text templates (sandboxed Jinja2) over run data.

No `eval`: CEL is not Turing-complete and Jinja2 runs in its immutable sandbox. Both see only the
variables the step context provides (`input`, `steps`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import re
import string
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import cel
from jinja2 import StrictUndefined, Template, TemplateError, TemplateRuntimeError, Undefined, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from apps.steps.sandbox import SandboxError, sandbox_evaluate

MAX_EXPRESSION_LENGTH = 2000
MAX_TEMPLATE_OUTPUT = 200_000
# What one render may do: loop iterations across the whole render (nested loops multiply, so the count is over
# all of them), wall-clock seconds (checked at every loop iteration, call, attribute access, operator and
# filter), and the largest string or list one operation may build (checked before it is built).
MAX_LOOP_ITERATIONS = 1_000_000
MAX_RENDER_SECONDS = 2.0
MAX_VALUE_SIZE = MAX_TEMPLATE_OUTPUT
# `**` on integers: refused when the result would have more bits than this (2**100000 is 30,103 digits).
MAX_POWER_BITS = 100_000


class ExpressionError(Exception):
    """An expression or template that does not parse or does not evaluate; the message says why."""


class _RenderBudget:
    """What is left of one render's budget (see MAX_LOOP_ITERATIONS, MAX_RENDER_SECONDS)."""

    __slots__ = ("deadline", "iterations")

    def __init__(self) -> None:
        self.iterations = MAX_LOOP_ITERATIONS
        # The rendering thread's CPU time, not the wall clock: what a hostile template can take is processor time,
        # and a wall-clock budget stops ordinary renders on a busy machine (seen in CI).
        self.deadline = time.thread_time() + MAX_RENDER_SECONDS

    def check_time(self) -> None:
        if time.thread_time() > self.deadline:
            raise ExpressionError(f"the template used more than {MAX_RENDER_SECONDS:g} seconds of CPU and was stopped")

    def count_iteration(self) -> None:
        self.iterations -= 1
        if self.iterations < 0:
            raise ExpressionError(
                f"the template's loops ran more than {MAX_LOOP_ITERATIONS:,} times in all and were stopped"
            )
        if not self.iterations & 0x3FF:
            self.check_time()


_budget: contextvars.ContextVar[_RenderBudget] = contextvars.ContextVar("aios_render_budget")


def _current_budget() -> _RenderBudget:
    try:
        return _budget.get()
    except LookupError:
        # Outside a render's budget (constant folding while compiling, a check): a fresh budget for this check only.
        # Never kept in the context: a budget left there would run out for every later render in this thread.
        return _RenderBudget()


@contextlib.contextmanager
def render_budget() -> Iterator[None]:
    """One render's budget (loop iterations, CPU time) for templates rendered outside template_render, such as
    the email step's own environments."""
    token = _budget.set(_RenderBudget())
    try:
        yield
    finally:
        _budget.reset(token)


def _too_big(what: str, size: int) -> ExpressionError:
    return ExpressionError(
        f"{what} would build a value of {size:,} characters or items (at most {MAX_VALUE_SIZE:,}); refused"
    )


def _refuse_size(what: str, size: int) -> None:
    if size > MAX_VALUE_SIZE:
        raise _too_big(what, size)


def _size(value: Any) -> int:
    try:
        return len(value)
    except TypeError:
        return 1


# A printf spec (`%-10s`, `%.*f`) and numbers inside a spec: a width or precision is output the text builds.
_PRINTF_SPEC = re.compile(r"%[^a-zA-Z%]*[a-zA-Z%]")
_NUMBER = re.compile(r"\d+")


def _check_spec(what: str, spec: str) -> None:
    if "*" in spec or "{" in spec:
        raise ExpressionError(f"{what}: a width or precision taken from the arguments is not allowed")
    for number in _NUMBER.findall(spec):
        if len(number) > 7 or int(number) > MAX_VALUE_SIZE:
            raise _too_big(what, int(number[:30]))


def _check_printf(format_text: Any) -> None:
    if isinstance(format_text, str | bytes):
        text = format_text.decode("latin-1") if isinstance(format_text, bytes) else format_text
        for spec in _PRINTF_SPEC.findall(text):
            _check_spec("the % operator", spec)


def _check_format(format_text: str) -> None:
    try:
        fields = list(string.Formatter().parse(format_text))
    except ValueError as error:
        raise ExpressionError(f"format: {error}") from None
    for _, _, spec, _ in fields:
        if spec:
            _check_spec("format", spec)


def _check_join(separator: Any, items: Any) -> Any:
    """The items as a list (a generator is read once), after refusing a join that would exceed the size bound."""
    items = items if hasattr(items, "__len__") else list(items)
    _refuse_size("join", _size(separator) * max(len(items) - 1, 0) + sum(_size(item) for item in items))
    return items


def _check_replace(text: Any, old: Any, new: Any) -> None:
    if isinstance(text, str | bytes) and isinstance(old, str | bytes):
        matches = len(text) + 1 if not old else text.count(old)  # type: ignore[arg-type]
        _refuse_size("replace", len(text) + matches * max(_size(new) - len(old), 0))


def _check_method_call(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse a call of a str/bytes method that would build a value past the size bound, before it runs:
    these take a width or a count that multiplies the output."""
    target = getattr(method, "__self__", None)
    if target is None:
        target = getattr(getattr(method, "__wrapped__", None), "__self__", None)
    if not isinstance(target, str | bytes):
        return
    name = getattr(method, "__name__", "")
    if name in ("center", "ljust", "rjust", "zfill"):
        width = args[0] if args else kwargs.get("width", 0)
        if isinstance(width, int):
            _refuse_size(name, width)
    elif name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(tabsize, int):
            tabs = target.count("\t") if isinstance(target, str) else target.count(b"\t")
            _refuse_size(name, len(target) + tabs * tabsize)
    elif name == "replace" and args:
        _check_replace(target, args[0], args[1] if len(args) > 1 else kwargs.get("new", ""))
    elif name == "join" and args:
        _check_join(target, args[0])
    elif name in ("format", "format_map") and isinstance(target, str):
        _check_format(target)
    elif name in ("translate", "maketrans"):
        raise ExpressionError(f"{name} is not available in templates")


def _checked_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse `*`, `**`, `+` and `%` whose result would pass the bounds, before computing it."""
    if operator == "*":
        for sequence, count in ((left, right), (right, left)):
            if isinstance(sequence, str | bytes | list | tuple) and isinstance(count, int):
                _refuse_size("*", len(sequence) * max(count, 0))
    elif operator == "**":
        if (
            isinstance(left, int)
            and isinstance(right, int)
            and right > 0
            and abs(left) > 1
            and right * abs(left).bit_length() > MAX_POWER_BITS
        ):
            raise ExpressionError(f"** would build a number of more than {MAX_POWER_BITS:,} bits; refused")
        if isinstance(right, int) and right > MAX_POWER_BITS:
            raise ExpressionError(f"** with an exponent above {MAX_POWER_BITS:,} is refused")
    elif operator == "+":
        if isinstance(left, str | bytes | list | tuple) and isinstance(right, str | bytes | list | tuple):
            _refuse_size("+", len(left) + len(right))
    elif operator == "%":
        _check_printf(left)


def _counted(iterable: Any) -> Iterator[Any]:
    """Every `{% for %}` iterates through this (the environment puts it there when parsing): each iteration
    counts against the render's loop budget and checks its deadline."""
    budget = _current_budget()
    for item in iterable:
        budget.count_iteration()
        yield item


def _sized_concat(text: str) -> str:
    """The result of `~` (string concatenation), refused past the size bound: a namespace can double a string
    with `~` once per iteration."""
    _current_budget().check_time()
    _refuse_size("~", len(text))
    return text


def _url_path_value(value: Any) -> str:
    """A value substituted into a URL's path, percent-encoded as one segment's text ("/", "?", "#" and "%"
    included), so run data cannot add a segment, a query or a fragment; a value that is only dots is refused (it
    would climb, "." and ".." are not names)."""
    text = str(value)
    if text and not text.strip("."):
        raise TemplateRuntimeError(f'a value in the URL\'s path is "{text[:10]}", which would climb the path')
    return quote(text, safe="")


def _url_part_value(value: Any) -> str:
    """A value substituted into a URL's query or fragment, percent-encoded ("&", "=", "#" and "+" included), so
    run data cannot add a parameter or end the query."""
    return quote(str(value), safe="")


def _json_text_value(value: Any) -> str:
    """A value substituted into a JSON string literal: its text, escaped for inside the quotes."""
    return json.dumps(str(value), ensure_ascii=False)[1:-1]


def _json_value(value: Any) -> str:
    """A value substituted where a JSON value goes: the value serialised as JSON (a string in quotes)."""
    if isinstance(value, Undefined):
        str(value)  # raises the undefined name's error, as `{{ name }}` would
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        raise TemplateRuntimeError(f"a {type(value).__name__} is not a JSON value") from None


# What apps/steps/safe_templates.py puts around every substitution of a URL or JSON-body template.
CONTEXT_FILTERS: dict[str, Callable[[Any], str]] = {
    "_aios_url_path": _url_path_value,
    "_aios_url_part": _url_part_value,
    "_aios_json_text": _json_text_value,
    "_aios_json": _json_value,
}


def _guarded_filter(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    """A built-in filter that checks the render's deadline, and for the filters whose output a width, count or
    separator multiplies, the size bound before it runs."""
    offset = 1 if getattr(original, "jinja_pass_arg", None) else 0

    @functools.wraps(original)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _current_budget().check_time()
        value, rest = (args[offset] if len(args) > offset else None), args[offset + 1 :]
        if name == "center":
            width = rest[0] if rest else kwargs.get("width", 80)
            if isinstance(width, int):
                _refuse_size(name, width)
        elif name == "indent":
            width = rest[0] if rest else kwargs.get("width", 4)
            lines = str(value).count("\n") + 1
            _refuse_size(name, len(str(value)) + lines * (_size(width) if isinstance(width, str) else int(width)))
        elif name == "replace" and len(rest) >= 2:
            _check_replace(value, rest[0], rest[1])
        elif name == "join":
            items = _check_join(rest[0] if rest else kwargs.get("d", ""), value)
            args = (*args[:offset], items, *rest)
        elif name == "format":
            _check_printf(value)
        elif name == "batch":
            linecount = rest[0] if rest else kwargs.get("linecount", 1)
            if isinstance(linecount, int):
                _refuse_size(name, linecount)
        elif name == "sum":
            start = rest[1] if len(rest) > 1 else kwargs.get("start", 0)
            if not isinstance(start, int | float):
                raise ExpressionError("sum adds numbers (its start must be a number)")
        return original(*args, **kwargs)

    return guarded


class _BudgetedCodeGenerator(CodeGenerator):
    """Compiles `a ~ b` through `_sized_concat`, so a concatenation is checked where it happens."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.filters['_aios_sized'](")
        super().visit_Concat(node, frame)
        self.write(")")


class _DataFirstEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox the product renders templates in.

    Jinja looks up `x.items` as the dict method before the key; run data is data, so keys win
    (`{{ input.items }}` is the "items" field, not `<built-in method items>`).

    Budget: every loop counts its iterations and checks the deadline (`_counted`, put in by `_parse`);
    `*`, `**`, `+` and `%` are intercepted and refused when their result would pass the size bound; so are
    the str methods and filters that take a width or a count; `~` is checked as it concatenates. What this
    does not catch, the child process the template renders in does (apps/steps/sandbox.py: memory and CPU
    limits, a wall-clock timeout).
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _BudgetedCodeGenerator

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        # lipsum builds up to its arguments' worth of text in one call, and no business template needs it.
        self.globals.pop("lipsum", None)
        self.filters = {name: _guarded_filter(name, function) for name, function in self.filters.items()}
        self.filters["_aios_counted"] = _counted
        self.filters["_aios_sized"] = _sized_concat
        self.filters.update(CONTEXT_FILTERS)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, "_aios_counted", [], [], None, None, lineno=loop.iter.lineno)
        return tree

    def getattr(self, obj: Any, attribute: str) -> Any:
        _current_budget().check_time()
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _current_budget().check_time()
        _checked_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _current_budget().check_time()
        _check_method_call(__obj, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)


_jinja = _DataFirstEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


def cel_check(expression: str) -> str | None:
    """None when `expression` parses as CEL, else the parser's complaint."""
    if len(expression) > MAX_EXPRESSION_LENGTH:
        return f"expression is longer than {MAX_EXPRESSION_LENGTH} characters"
    try:
        cel.compile(expression)
    except Exception as error:  # the binding raises ValueError for syntax, others for internals
        return str(error).splitlines()[0]
    return None


# What can make a CEL expression's cost grow beyond (its length x the data's size): the comprehension macros
# repeat their body per element (nested, they multiply) and `+` concatenates strings and lists. Matched anywhere
# (in a string literal or after a comment too), so an expression that merely names them goes to the child.
_CEL_MAY_GROW = re.compile(r"\b(?:map|filter|all|exists|exists_one|transformList|transformMap)\b|\+")


def cel_evaluate(expression: str, variables: dict[str, Any]) -> Any:
    """The value of a CEL expression; any failure (syntax, a missing field, a type error, the budget of
    apps/steps/sandbox.py) is an ExpressionError. Evaluated in a sandbox child process: the CEL binding holds
    the GIL, so only a process boundary can stop an expression that runs too long."""
    problem = cel_check(expression)
    if problem:
        raise ExpressionError(problem)
    if not _CEL_MAY_GROW.search(expression):
        # Without a comprehension nothing repeats, and without `+` no value outgrows the run data it came from:
        # the cost is bounded by the expression's length times the data's size, so the child is not needed.
        return cel_evaluate_here(expression, variables)
    try:
        return sandbox_evaluate("cel", expression, variables)
    except SandboxError as error:
        raise ExpressionError(str(error)) from None


def cel_evaluate_here(expression: str, variables: dict[str, Any]) -> Any:
    """cel_evaluate in this process, with no budget: for the sandbox child only."""
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


# Filters whose work and result are bounded by their input's size (none takes a width, a count or a format).
_BOUNDED_FILTERS = frozenset(
    {
        "capitalize", "default", "d", "e", "escape", "first", "float", "int", "last", "length", "count", "lower",
        "round", "safe", "string", "striptags", "title", "tojson", "trim", "upper", "abs", "urlencode",
    }
)  # fmt: skip
# Of those, the ones bounded only without arguments: `round`'s precision is a power of ten to compute, and
# `tojson`'s indent multiplies the document's size.
_BOUNDED_WITHOUT_ARGUMENTS = frozenset({"round", "tojson"})
# The nodes a template whose cost is bounded may hold: text, names, field and constant-index lookups, constants,
# the filters above with constant arguments, conditions and comparisons. No loop, call, operator or slice: nothing
# repeats and nothing builds a value larger than one piece of run data.
_BOUNDED_NODES = (
    nodes.Template, nodes.Output, nodes.TemplateData, nodes.Name, nodes.Getattr, nodes.Getitem, nodes.Const,
    nodes.If, nodes.CondExpr, nodes.Compare, nodes.Operand, nodes.And, nodes.Or, nodes.Not, nodes.Test,
    nodes.Filter, nodes.Keyword,
)  # fmt: skip


@functools.lru_cache(maxsize=1024)
def _bounded(template: str) -> bool:
    """Whether the template's cost is bounded by its length times the run data's size (see _BOUNDED_NODES). Such
    a template renders in this process: its output is read chunk by chunk and refused past MAX_TEMPLATE_OUTPUT, so
    neither its time nor its memory can grow past one piece of run data and the output limit."""
    try:
        tree = _jinja.parse(template)
        found = list(tree.find_all(nodes.Node))
    except (TemplateError, RecursionError):
        return False
    # Deeply nested conditions are cheap to render but not to compile: such a template goes to the child.
    if sum(isinstance(node, nodes.If | nodes.CondExpr | nodes.And | nodes.Or | nodes.Not) for node in found) > 200:
        return False
    for node in found:
        if not isinstance(node, _BOUNDED_NODES):
            return False
        if isinstance(node, nodes.Filter) and (
            node.name not in _BOUNDED_FILTERS
            or node.dyn_args is not None
            or node.dyn_kwargs is not None
            or not all(isinstance(arg, nodes.Const) for arg in node.args)
            or not all(isinstance(keyword.value, nodes.Const) for keyword in node.kwargs)
            or (node.name in _BOUNDED_WITHOUT_ARGUMENTS and (node.args or node.kwargs))
        ):
            return False
        if isinstance(node, nodes.Getitem) and not isinstance(node.arg, nodes.Const):
            return False
    return True


def template_render(template: str, variables: dict[str, Any]) -> str:
    """Render a text template in the sandbox; undefined names, sandbox violations and a passed budget (loop
    iterations, size of any value built, output size, time: see _DataFirstEnvironment) are ExpressionErrors.
    Rendered in a sandbox child process (apps/steps/sandbox.py), which also bounds memory and CPU, unless its
    cost is bounded by the data (`_bounded`: substitutions, conditions and size-preserving filters), as most
    prompts and titles are."""
    if "{" not in template:
        return template  # no tag, no expression: the text is its own rendering, no child needed
    if _bounded(template):
        return template_render_here(template, variables)
    try:
        return str(sandbox_evaluate("template", template, variables))
    except SandboxError as error:
        raise ExpressionError(str(error)) from None


def template_render_here(template: str, variables: dict[str, Any]) -> str:
    """template_render in this process, under the in-process budget only (for the sandbox child). The output
    is read chunk by chunk and refused as soon as it passes MAX_TEMPLATE_OUTPUT, not after it was built."""
    token = _budget.set(_RenderBudget())
    try:
        chunks: list[str] = []
        length = 0
        for chunk in _compiled(template).generate(**variables):
            length += len(chunk)
            if length > MAX_TEMPLATE_OUTPUT:
                raise ExpressionError(f"the rendered text is longer than {MAX_TEMPLATE_OUTPUT} characters")
            chunks.append(chunk)
        return "".join(chunks)
    except TemplateError as error:
        raise ExpressionError(str(error)) from None
    except (ExpressionError, MemoryError):
        raise  # the sandbox child answers a MemoryError by being replaced
    except RecursionError:
        raise ExpressionError("the evaluation nests too deeply") from None
    except Exception as error:
        # What a template's Python raises (a comparison of text with a number, 1/0): the step's error, worded as
        # the sandbox child words it.
        raise ExpressionError(f"{type(error).__name__}: {str(error)[:300]}") from None
    finally:
        _budget.reset(token)
