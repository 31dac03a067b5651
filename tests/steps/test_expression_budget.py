"""Templates and CEL expressions run under a budget a hostile author cannot exceed (security review M2).

Every case goes through the product's own entry points (`template_render`, `cel_evaluate`), which evaluate in
a sandbox child process; the in-process budget of the Jinja environment gives the precise messages.
"""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

from apps.steps import sandbox
from apps.steps.expressions import (
    MAX_LOOP_ITERATIONS,
    MAX_TEMPLATE_OUTPUT,
    ExpressionError,
    cel_evaluate,
    template_render,
)

VARIABLES = {"input": {"name": "Ana", "items": [1, 2, 3]}, "steps": {}, "params": {}}
TEN = "[0,1,2,3,4,5,6,7,8,9]"


def nested_map(depth: int) -> str:
    """`[0..9].map(a, [0..9].map(b, ...))`: 10**depth elements (depth 6 pins the GIL for seconds)."""
    names = "abcdefghijklmnopqrstuvwxyz"
    expression = names[depth - 1]
    for index in reversed(range(depth)):
        expression = f"{TEN}.map({names[index]}, {expression})"
    return expression


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("{{ 'x' * 100000000 }}", "* would build a value of 100,000,000"),
        ("{{ ('x' * 4000000000)|length }}", "* would build a value of 4,000,000,000"),
        ("{{ [0] * 1000000000 }}", "* would build a value"),
        ("{{ 2 ** 100000000 }}", "**"),
        ("{{ (2 ** 1000) ** 1000 }}", "** would build a number"),
        (
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
            f"loops ran more than {MAX_LOOP_ITERATIONS:,} times",
        ),
        (
            "{% for a in input.items %}{% for b in range(100000) %}{% for c in range(100000) %}"
            "{% endfor %}{% endfor %}{% endfor %}",
            "loops ran more than",
        ),
        (
            "{% set ns = namespace(s='xx') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
            "~ would build a value",
        ),
        (
            "{% set ns = namespace(s='xx') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
            "+ would build a value",
        ),
        ("{{ 'x'|center(1000000000) }}", "center would build"),
        ("{{ 'x'|indent(1000000000, true) }}", "indent would build"),
        ("{{ 'x'.ljust(1000000000) }}", "ljust would build"),
        ("{{ 'x'.zfill(1000000000) }}", "zfill would build"),
        ("{{ '\t'.expandtabs(1000000000) }}", "expandtabs would build"),
        ("{{ '{:>1000000000}'.format(1) }}", "format would build"),
        ("{{ '{:{}}'.format(1, 1000000000) }}", "width or precision taken from the arguments"),
        ("{{ '%1000000000s' % 1 }}", "% operator would build"),
        ("{{ '%*s' % (1000000000, 1) }}", "width or precision taken from the arguments"),
        ("{{ '%1000000000s'|format(1) }}", "% operator would build"),
        ("{{ ('x' * 100000)|replace('x', 'x' * 100000) }}", "replace would build"),
        ("{{ ('x' * 100000).replace('', 'y' * 100000) }}", "replace would build"),
        ("{{ ('x' * 100000).join('y' * 100000) }}", "join would build"),
        ("{{ ('y' * 100000)|list|join('x' * 100000) }}", "join would build"),
        ("{{ range(10)|batch(1000000000, 'x')|list|length }}", "batch would build"),
        ("{{ [[0] * 200000] * 200000|sum(start=[]) }}", "sum adds numbers"),
        ("{{ 'x'.translate({120: 'y' * 100000}) }}", "translate is not available"),
        ("{{ lipsum(1000000) }}", "'lipsum' is undefined"),
        (
            "{% for i in range(100) %}{% for j in range(100) %}{{ 'x' * 100 }}{% endfor %}{% endfor %}",
            f"longer than {MAX_TEMPLATE_OUTPUT} characters",
        ),
    ],
)
def test_template_bombs_are_refused_with_the_reason(template, words):
    with pytest.raises(ExpressionError) as raised:
        template_render(template, VARIABLES)
    assert words in str(raised.value)


def test_templates_within_the_budget_still_render():
    template = (
        "{{ input.name }}: {% for i in input.items %}{{ i * 2 }},{% endfor %} {{ 'ab' * 3 }} {{ 2 ** 10 }} "
        "{{ '%05d' % 42 }} {{ 'x'|center(5) }}|{{ ['a', 'b']|join('-') }} {{ '{:>4}'.format(7) }}"
        "{% set ns = namespace(total=0) %}{% for i in range(1000) %}{% set ns.total = ns.total + i %}{% endfor %}"
        " {{ ns.total }} {{ input.items|sum }}"
    )
    assert template_render(template, VARIABLES) == "Ana: 2,4,6, ababab 1024 00042   x  |a-b    7 499500 6"


def test_a_template_error_is_an_expression_error_and_the_next_render_works():
    with pytest.raises(ExpressionError, match="ZeroDivisionError"):
        template_render("{{ 1 / 0 }}", VARIABLES)
    assert template_render("{{ input.name }}", VARIABLES) == "Ana"


def test_cel_nested_comprehensions_are_stopped_and_the_process_keeps_running():
    """Depth 7 is 10**7 elements: without the sandbox it holds this process's GIL for a minute or more. A
    thread of this process must keep running meanwhile (as the lease renewer of a worker must)."""
    ticks = 0
    stop = threading.Event()

    def tick() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.05)

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    time.sleep(0.1)  # the ticker is running before the evaluation starts
    before = ticks
    try:
        with pytest.raises(ExpressionError) as raised:
            cel_evaluate(f"size({nested_map(7)})", VARIABLES)
    finally:
        during = ticks - before
        stop.set()
        ticker.join()
    assert "was stopped" in str(raised.value)
    assert f"more than {sandbox.TIME_LIMIT_SECONDS:g} seconds" in str(raised.value) or "CPU" in str(raised.value)
    # The evaluation ran for its whole budget; a ticker that was starved would have counted once or not at all.
    assert during >= 10, during
    assert cel_evaluate("size(input.items) + 1", VARIABLES) == 4


def test_cel_memory_bomb_is_stopped():
    # Each level doubles a string through `+` inside a comprehension: 2**40 characters asked for.
    doubling = "input.name"
    for _ in range(40):
        doubling = f"[{doubling}].map(s, s + s)[0]"
    with pytest.raises(ExpressionError, match=r"was stopped|longer than"):
        cel_evaluate(doubling, VARIABLES)
    assert cel_evaluate("input.items.map(x, x * 2)", VARIABLES) == [2, 4, 6]


def test_cel_within_the_budget_evaluates_in_the_sandbox_and_in_process_alike():
    assert cel_evaluate(nested_map(2) + ".size()", VARIABLES) == 10
    assert cel_evaluate('input.name + " Lopez"', VARIABLES) == "Ana Lopez"
    assert cel_evaluate("input.items.filter(x, x > 1)", VARIABLES) == [2, 3]
    assert cel_evaluate("size(input.items) > 2", VARIABLES) is True
    with pytest.raises(ExpressionError, match="no such field"):
        cel_evaluate("input.missing.map(x, x)", VARIABLES)


def test_templates_bounded_by_their_data_render_in_this_process_and_others_in_the_child(monkeypatch):
    """Substitutions, conditions and size-preserving filters cost at most the run data's size (most prompts and
    titles are such): they render in this process. Anything that repeats or builds goes to the child."""
    from apps.steps import expressions

    asked: list[str] = []
    real = expressions.sandbox_evaluate
    monkeypatch.setattr(expressions, "sandbox_evaluate", lambda *args: asked.append(args[1]) or real(*args))
    here = [
        "Summarise: {{ input.name }}",
        "{{ input.missing | default('none') | upper }} {{ input['name'] | length }}",
        "{% if input.items | length > 2 %}many{% else %}few{% endif %} {{ input.items | tojson }}",
        "{{ input.name if input.name is defined else 'x' }}",
    ]
    child = [
        "{% for i in input.items %}{{ i }}{% endfor %}",
        "{{ input.name * 3 }}",
        "{{ input.name ~ input.name }}",
        "{{ input.name | center(30) }}",
        "{{ input.name.upper() }}",
        "{{ input.items[0:2] }}",
        "{{ input[input.name] | default('') }}",
        "{{ '%s' | format(input.name) }}",
        "{% if input.name %}" * 201 + "x" + "{% endif %}" * 201,
    ]
    for template in here:
        template_render(template, VARIABLES)
    for template in child:
        # 201 nested conditions do not compile: refused by the child, which is the point.
        with contextlib.suppress(ExpressionError):
            template_render(template, VARIABLES)
    assert asked == child
    assert template_render(here[1], VARIABLES) == "NONE 3"


def test_a_bounded_template_still_stops_at_the_output_limit_as_it_renders():
    big = {**VARIABLES, "input": {"text": "x" * (MAX_TEMPLATE_OUTPUT // 4 + 1)}}
    with pytest.raises(ExpressionError, match=f"longer than {MAX_TEMPLATE_OUTPUT} characters"):
        template_render("{{ input.text }}" * 5, big)
    assert template_render("{{ input.text }}" * 3, big) == "x" * (3 * (MAX_TEMPLATE_OUTPUT // 4 + 1))


def test_filters_whose_arguments_set_the_cost_go_to_the_child(monkeypatch):
    """`round`'s precision is a power of ten to compute and `tojson`'s indent multiplies the output: with any
    argument, or a keyword argument taken from the data, they are not bounded by the data's size."""
    from apps.steps.expressions import _bounded

    assert _bounded("{{ input.n | round }} {{ input.d | tojson }} {{ input.x | default('a', true) }}")
    for template in (
        "{{ input.n | round(100000000, 'ceil') }}",
        "{{ input.n | round(precision=input.p) }}",
        "{{ input.d | tojson(indent=100000) }}",
        "{{ input.d | tojson(indent=input.n) }}",
        "{{ input.x | default(input.y) }}",
        "{{ input.x | list }}",
    ):
        assert not _bounded(template), template


def test_a_runtime_error_in_a_bounded_template_is_an_expression_error():
    """Rendered in this process, Python's own errors are worded as the child words them."""
    variables = {**VARIABLES, "input": {"amount": "lots", "n": 4}}
    with pytest.raises(ExpressionError, match="TypeError"):
        template_render("{% if input.amount > 1000 %}big{% endif %}", variables)
    with pytest.raises(ExpressionError, match="ZeroDivisionError"):
        template_render("{{ input.n is divisibleby(0) }}", variables)
