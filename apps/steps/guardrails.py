"""Guardrails every LLM step applies; pure functions and one small class, no database, no network.

- `PiiVault` masks personal data (emails, phone numbers, IBANs, payment cards, US SSNs, IPv4 addresses) with
  stable placeholders such as `[EMAIL_1]` before a prompt leaves the process, and puts the originals back
  into the model's reply. The originals live only in the vault, which lives for one step execution; what the
  step records as provenance is `summary()`, counts per kind, never the values.
- `sanitise_output` makes a model reply safe to store and to hand to later steps as text.
- `injection_flags` / `injection_flags_in` flag text from documents and connectors that looks like a prompt
  injection. They are heuristics for a reviewer's attention, not a filter: a flag alone never blocks a run; the
  step's `on_injection` option says what a flag does (continue with the flags readable by conditions, stop
  before any model call, or hold the result for a person: `held_review_proposal` / `held_output_reviewed`).

Every regular expression here must run in linear time, because documents are attacker-controlled and Python's
`re` backtracks. The rules the patterns follow (and `tests/steps/test_guardrails.py` checks structurally):

1. No quantifier that backtracks over more than one iteration contains another such quantifier. Nested
   repetition is what makes backtracking exponential; where a pattern needs it, the outer quantifier is
   possessive (`{1,8}+`), so a failed match never re-splits the text it already consumed.
2. Every quantifier is bounded or possessive, so one match attempt does a bounded amount of work (or scans a
   run exactly once).
3. A pattern that scans a run of characters starts behind a lookbehind that refuses to start inside such a
   run. Without it, a failing scan from every position of a 100 kB run would be quadratic.

Where it is cheap to, a pattern begins with the character class it must start with and checks what stands before
that character right after it: `re` then skips to candidate characters in C instead of trying a lookbehind at
every position, which is most of the cost on a large document.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import unicodedata
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

# -- personal data --------------------------------------------------------------------------------------------

PII_KINDS: tuple[str, ...] = ("email", "phone", "iban", "card", "ssn", "ip")

_LABELS: dict[str, str] = {kind: kind.upper() for kind in PII_KINDS}

# Where two detections overlap, the more specific one wins: an email address may contain digits that look like
# a phone number, an IBAN contains digit groups that look like a card number, and a phone pattern is the
# loosest of all.
_PRIORITY: tuple[str, ...] = ("email", "iban", "card", "ssn", "ip", "phone")

# Separators inside numbers as people write them; no-break spaces come from word processors and French
# typography. None of them needs escaping in JSON, which `PiiVault.restore` relies on.
_SPACES = " \u00a0\u202f"

_EMAIL = re.compile(
    r"(?<![\w.%+-])"  # start at the beginning of the local part, never inside it (rule 3)
    r"[\w.%+-]{1,64}+"
    r"@"
    # Labels cannot contain the dot that ends them, so each split is forced; the lookahead keeps a sentence's
    # final full stop out of the address.
    r"(?:[^\W_][\w-]{0,62}+\.(?=[^\W_])){1,8}+"
    r"[^\W\d_]{2,24}+"
    r"(?![\w-])"
)

# A run of digit groups that might be a phone number; `_phone_spans` decides which part of it, if any, is one.
# Groups must be separated (or parenthesised), so the possessive loop never has two ways to split the digits.
_PHONE_RUN = re.compile(
    # First group: +CC…, (area), or digits; never inside a word, a reference like CLM-2024-0042, or an amount.
    rf"(?:\+(?<![\w+\-/]\+)(?<!\d[.,]\+)\d{{1,15}}+"
    rf"|\((?<![\w+\-/]\()(?<!\d[.,]\()\+?\d{{1,5}}+\)"
    rf"|\d(?<![\w+\-/]\d)(?<!\d[.,]\d)\d{{0,14}}+)"
    rf"(?:[{_SPACES}.\-/]?\(\d{{1,5}}+\)|(?:[{_SPACES}.\-/]|(?<=\)))\d{{1,15}}+){{0,8}}+"
    rf"(?!\w)"
)
_PHONE_GROUP = re.compile(r"\(\+?\d{1,5}+\)|\+?\d{1,15}+")
# Where a run may be split into separate numbers: at spaces only, so hyphenated references stay whole.
_SPLIT_AT = frozenset(_SPACES)

_IBAN = re.compile(
    rf"[A-Z](?<![\w-][A-Z])[A-Z][0-9]{{2}}"
    rf"(?:[{_SPACES}]?[A-Z0-9]{{4}}){{2,7}}+"
    rf"(?:[{_SPACES}]?[A-Z0-9]{{1,3}})?"
    rf"(?![\w-])",
    re.IGNORECASE,
)

_CARD = re.compile(
    rf"\d(?<![\w-]\d)(?<!\d[.,]\d)"
    # The digits after an IBAN's country code are the IBAN's, even when the IBAN fails its checksum.
    rf"(?<![A-Za-z]{{2}}[0-9]{{2}}[{_SPACES}]\d)"
    rf"(?:"  # the first digit is consumed above
    rf"\d{{3}}[{_SPACES}\-]\d{{6}}[{_SPACES}\-]\d{{4,5}}"  # 4-6-5 (American Express), 4-6-4 (Diners)
    rf"|\d{{3}}(?:[{_SPACES}\-]\d{{4}}){{2,3}}+(?P<tail>[{_SPACES}\-]\d{{1,3}})?"  # 4-4-4-1 … 4-4-4-4-3
    rf"|\d{{12,18}}+"
    rf")"
    rf"(?!\w|[\-.]\d)"
)

_NOT_DIGIT = re.compile(r"\D")

_SSN = re.compile(r"(\d(?<![\w-]\d)(?<!\d[.,]\d)\d{2})-(\d{2})-(\d{4})(?!\w|-\d)")

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"(?=[0-9])(?<![\w.])(?:{_OCTET}\.){{3}}+{_OCTET}(?!\w|\.[0-9])")

# What `restore` accepts as a placeholder: any case, a little stray spacing, a hyphen or space instead of the
# underscore, and Markdown's escapes (`\[EMAIL\_1\]`). A backslash already escaped (`\\[`, as in raw JSON) is
# left alone, so restoring into JSON text never produces an invalid escape.
_PLACEHOLDER = re.compile(
    r"(?:(\\)(?<!\\\\)\[|\[)"
    r"[ \t]{0,3}(EMAIL|PHONE|IBAN|CARD|SSN|IP)[ \t]{0,3}(?:\\?[_-])?[ \t]{0,3}(\d{1,6})[ \t]{0,3}"
    r"(?(1)\\)\]",
    re.IGNORECASE,
)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _iban_ok(candidate: str) -> bool:
    compact = "".join(candidate.split()).upper()
    if not 15 <= len(compact) <= 34 or not compact.isascii():
        return False
    rearranged = compact[4:] + compact[:4]
    try:
        number = int("".join(str(int(char, 36)) for char in rearranged))
    except ValueError:
        return False
    return number % 97 == 1


# Finders yield (is a value, start, end): a span that is not a value is claimed so that no other kind reads
# its characters, and left as it is.
_VALUE = True
_NOT_A_VALUE = False


def _email_spans(text: str, claimed: bytearray) -> Iterator[tuple[bool, int, int]]:
    if "@" not in text:
        return  # the pattern cannot start on a fixed character; most text has no address at all
    for match in _EMAIL.finditer(text):
        yield _VALUE, *match.span()


def _iban_spans(text: str, claimed: bytearray) -> Iterator[tuple[bool, int, int]]:
    for match in _IBAN.finditer(text):
        start = match.start()
        candidate = match.group()
        # A spaced IBAN followed by another number ("… 5399 2024") swallows it; drop trailing groups until the
        # checksum holds or the IBAN would be too short.
        while not _iban_ok(candidate):
            cut = max(candidate.rfind(space) for space in _SPACES)
            if cut <= 4:
                # Not an IBAN (a typo, a made-up one), but shaped like one: its digit groups are not a phone or
                # card number either, so the span is claimed without being masked.
                yield _NOT_A_VALUE, start, match.end()
                break
            candidate = candidate[:cut]
        else:
            yield _VALUE, start, start + len(candidate)


def _card_spans(text: str, claimed: bytearray) -> Iterator[tuple[bool, int, int]]:
    for match in _CARD.finditer(text):
        start, end = match.span()
        candidates = [end]
        if match.group("tail"):
            # "4111 1111 1111 1111 123 Main Street": the three digits belong to the address, not the card.
            candidates.append(match.start("tail"))
        for candidate_end in candidates:
            digits = _NOT_DIGIT.sub("", text[start:candidate_end])
            if 13 <= len(digits) <= 19 and digits[0] in "23456" and _luhn_ok(digits):
                yield _VALUE, start, candidate_end
                break
        else:
            # Written like a card number but not one (a typo, a test number): its groups are not a phone
            # number either. Twelve digits in fours ("0221 1234 5678") can be a phone number, so stay out.
            if 13 <= len(digits) <= 19:
                yield _NOT_A_VALUE, start, candidate_end


def _ssn_spans(text: str, claimed: bytearray) -> Iterator[tuple[bool, int, int]]:
    for match in _SSN.finditer(text):
        area, group, serial = (int(part) for part in match.groups())
        # Never issued: area 000, 666 and 900–999, group 00, serial 0000.
        if area in (0, 666) or area >= 900 or group == 0 or serial == 0:
            continue
        yield _VALUE, *match.span()


def _ip_spans(text: str, claimed: bytearray) -> Iterator[tuple[bool, int, int]]:
    for match in _IPV4.finditer(text):
        yield _VALUE, *match.span()


def _phone_shape_ok(groups: list[str], separators: list[str]) -> bool:
    """Whether these digit groups, written as they are, read as a phone number rather than a date, an amount,
    a year or a reference number."""
    digit_groups = [group.strip("()+") for group in groups]
    sizes = [len(group) for group in digit_groups]
    first = groups[0]
    if first.startswith(("+", "(+")) or digit_groups[0].startswith("00"):
        # International: E.164 allows at most 15 digits; "(0)" is the national trunk prefix, dialled only at home.
        digits = sum(size for group, size in zip(groups, sizes, strict=True) if group != "(0)")
        digits -= 2 if digit_groups[0].startswith("00") else 0
        return 8 <= digits <= 15
    # National numbers: plain digit runs are ids or amounts, so a separator is required; 10–13 digits with the
    # trunk prefix excludes years, amounts, short numbers and (below) dates.
    if len(groups) < 2 or not 10 <= sum(sizes) <= 13:
        return False
    date_separated = len(groups) >= 3 and separators[1] == separators[2] and separators[1] in (".", "/", "-")
    if date_separated and (
        (sizes[0] <= 2 and sizes[1] <= 2 and sizes[2] in (2, 4)) or (sizes[0] == 4 and sizes[1] <= 2)
    ):
        return False  # 03.11.2024 10…, 2024-03-11 …
    if first.startswith("("):
        return 2 <= sizes[0] <= 5
    if first.startswith("0"):
        return 2 <= sizes[0] <= 5
    # North American: [1-]NXX-NXX-XXXX, the area code never starting with 0 or 1.
    if sizes == [3, 3, 4]:
        return first[0] in "23456789"
    if sizes == [1, 3, 3, 4]:
        return first == "1" and digit_groups[1][0] in "23456789"
    return False


def _phone_may_start(groups: list[str], index: int) -> bool:
    """A cheap necessary condition of `_phone_shape_ok` for a slice starting at groups[index], which keeps
    digit-dense text from costing a shape check per slice."""
    group = groups[index]
    return group[0] in "+(0" or len(group) == 3 or (group == "1" and index + 1 < len(groups))


def _phone_spans(text: str, claimed: bytearray) -> Iterator[tuple[bool, int, int]]:
    for match in _PHONE_RUN.finditer(text):
        run_start, run_end = match.span()
        # Most runs are amounts, dates and short numbers, too short to hold a phone number, or digits that an
        # email, IBAN, card or IP address already claimed; both are cheap to see.
        if run_end - run_start < 8 or claimed.find(0, run_start, run_end) == -1:
            continue
        run = match.group()
        found = list(_PHONE_GROUP.finditer(run))
        sizes = [len(group.group().strip("()+")) for group in found]
        if sum(sizes) < 8:
            continue
        groups = [group.group() for group in found]
        # separators[k] is what stands before group k ("" for the first, and after a parenthesis).
        separators = [""] + [run[previous.end() : current.start()] for previous, current in pairwise(found)]
        digits_before = [0]
        for size in sizes:
            digits_before.append(digits_before[-1] + size)
        # A run can hold more than one number ("030 1234567 or 030 7654321") or a number beside another
        # ("call 555-123-4567 2 times"). Splitting only at spaces keeps hyphenated references whole. A run has
        # at most nine groups, so trying every slice is constant work.
        index = 0
        while index < len(groups):
            start = run_start + found[index].start()
            if (
                (index > 0 and separators[index] not in _SPLIT_AT)
                or claimed[start]
                or not _phone_may_start(groups, index)
            ):
                index += 1
                continue
            chosen = None
            # Only slices of 8 to 15 digits (plus a "(0)" and an "00" the shape check discounts) can qualify.
            shortest = bisect_left(digits_before, digits_before[index] + 8)
            longest = bisect_right(digits_before, digits_before[index] + 18) - 1
            for stop in range(longest, max(shortest, index + 1) - 1, -1):
                if stop < len(groups) and separators[stop] not in _SPLIT_AT:
                    continue
                if _phone_shape_ok(groups[index:stop], separators[index:stop]):
                    chosen = stop
                    break
            if chosen is None:
                index += 1
                continue
            yield _VALUE, start, run_start + found[chosen - 1].end()
            index = chosen


# Each finder sees what earlier kinds claimed, to skip work on it; `_pii_spans` still checks every span.
_FINDERS: dict[str, Callable[[str, bytearray], Iterator[tuple[bool, int, int]]]] = {
    "email": _email_spans,
    "phone": _phone_spans,
    "iban": _iban_spans,
    "card": _card_spans,
    "ssn": _ssn_spans,
    "ip": _ip_spans,
}


def _pii_spans(text: str, kinds: Collection[str]) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, kind) values of the given kinds, in text order.

    Every kind is detected, wanted or not, in priority order, and each character belongs to the first detection
    that claims it: with only phones masked, the digits of an email address or a card number are still not a
    phone number.
    """
    taken = bytearray(len(text))
    spans: list[tuple[int, int, str]] = []
    for kind in _PRIORITY:
        for is_value, start, end in _FINDERS[kind](text, taken):
            # Marking and probing the claimed bytes costs the length of the spans, so this stays linear.
            if taken.find(1, start, end) == -1:
                taken[start:end] = b"\x01" * (end - start)
                if is_value and kind in kinds:
                    spans.append((start, end, kind))
    spans.sort()
    return spans


@dataclass(eq=False)  # two vaults are never interchangeable, whatever their kinds
class PiiVault:
    """Placeholders for the personal data of one step execution, and the way back.

    `mask` replaces each detected value with `[KIND_n]`: the same text always gets the same placeholder, a
    different value of the same kind the next number. `restore` puts the originals back wherever the model
    echoed a placeholder, in any case and with stray spacing; a placeholder the vault never issued stays as
    written. Originals are plain text without quotes, backslashes or control characters, so restoring into a
    JSON reply keeps it valid JSON.

    The vault never shows its originals: its repr hides them and `summary()` reports counts only. Keep it for
    one step execution and let it go.

    Limits: only strings are masked (a card number stored as a JSON number is not); values are matched as
    written, so two spellings of one number get two placeholders; a placeholder-shaped literal ("[EMAIL_1]")
    in the input keeps meaning itself only if the vault sees it before issuing that number, so mask a step's
    data in one `mask_value` call rather than piece by piece.
    """

    kinds: Collection[str] = PII_KINDS
    _originals: dict[tuple[str, int], str] = field(default_factory=dict, init=False, repr=False, compare=False)
    _issued: dict[tuple[str, str], str] = field(default_factory=dict, init=False, repr=False, compare=False)
    _reserved: set[tuple[str, int]] = field(default_factory=set, init=False, repr=False, compare=False)
    _last_number: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - set(PII_KINDS))
        if unknown:
            raise ValueError(f"unknown PII kinds: {', '.join(unknown)} (known: {', '.join(PII_KINDS)})")
        self.kinds = frozenset(self.kinds)

    def mask(self, text: str) -> str:
        """The text with every detected value of the vault's kinds replaced by its placeholder."""
        self._reserve(text)
        return self._mask(text)

    def mask_value(self, value: Any) -> Any:
        """`mask` applied to every string inside dicts, lists and tuples; keys and non-strings are kept."""
        # Reserve first, over the whole value: a placeholder-shaped literal anywhere in it must not be issued
        # to a real value found earlier, or restoring would turn the literal into that value.
        for text in _strings_in(value, keys=False):
            self._reserve(text)
        return _map_strings(value, self._mask, keys=False)

    def restore(self, text: str) -> str:
        """The text with every placeholder this vault issued replaced by its original."""

        def original(match: re.Match[str]) -> str:
            found = self._originals.get((match.group(2).upper(), int(match.group(3))))
            return found if found is not None else match.group()

        return _PLACEHOLDER.sub(original, text)

    def restore_value(self, value: Any) -> Any:
        """`restore` applied to every string inside dicts, lists and tuples, keys included: a model may key an
        object by a placeholder."""
        return _map_strings(value, self.restore, keys=True)

    def summary(self) -> dict[str, int]:
        """How many distinct values of each kind were masked, for provenance; kinds with none are left out."""
        counts: dict[str, int] = {}
        for kind, _original in self._issued:
            counts[kind] = counts.get(kind, 0) + 1
        return {kind: counts[kind] for kind in PII_KINDS if kind in counts}

    def _reserve(self, text: str) -> None:
        # A literal "[EMAIL_1]" in the input (a template, a document quoting another masked text) must keep
        # meaning itself: the vault will not issue that number.
        for match in _PLACEHOLDER.finditer(text):
            self._reserved.add((match.group(2).upper(), int(match.group(3))))

    def _mask(self, text: str) -> str:
        spans = _pii_spans(text, self.kinds)
        if not spans:
            return text
        parts: list[str] = []
        position = 0
        for start, end, kind in spans:
            parts.append(text[position:start])
            parts.append(self._placeholder(kind, text[start:end]))
            position = end
        parts.append(text[position:])
        return "".join(parts)

    def _placeholder(self, kind: str, original: str) -> str:
        issued = self._issued.get((kind, original))
        if issued is not None:
            return issued
        label = _LABELS[kind]
        number = self._last_number.get(label, 0) + 1
        while (label, number) in self._reserved or (label, number) in self._originals:
            number += 1
        self._last_number[label] = number
        placeholder = f"[{label}_{number}]"
        self._originals[(label, number)] = original
        self._issued[(kind, original)] = placeholder
        return placeholder


# Longer than any text `_PLACEHOLDER` matches (29 characters: the escaped form with every optional space and
# six digits), so a streamed tail this long after its last "[" can no longer become a placeholder.
_PLACEHOLDER_MAX_CHARS = 34


class RestoringStream:
    """Streamed model text on its way to viewers with the vault's placeholders put back, so the live text
    reads like the step's output. A chunk that ends inside what may still become a placeholder ("[EMA")
    keeps that tail back until the next chunk decides it; `close` sends whatever is left."""

    def __init__(self, vault: PiiVault, emit: Callable[[str], None]) -> None:
        self.vault = vault
        self.emit = emit
        self.pending = ""

    def add(self, text: str) -> None:
        text = self.pending + text
        cut = _open_placeholder_start(text)
        self.pending = text[cut:]
        if cut:
            self.emit(self.vault.restore(text[:cut]))

    def close(self) -> None:
        if self.pending:
            text, self.pending = self.pending, ""
            self.emit(self.vault.restore(text))


def _open_placeholder_start(text: str) -> int:
    """Where an unfinished placeholder may begin at the end of `text` (len(text) when none can)."""
    start = text.rfind("[")
    if start < 0 or "]" in text[start:] or len(text) - start > _PLACEHOLDER_MAX_CHARS:
        return len(text)
    if start and text[start - 1] == "\\":
        start -= 1  # the escaped form a model may write in Markdown
    return start


def _strings_in(value: Any, *, keys: bool) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            if keys and isinstance(key, str):
                yield key
            yield from _strings_in(item, keys=keys)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings_in(item, keys=keys)


def _map_strings(value: Any, function: Callable[[str], str], *, keys: bool) -> Any:
    if isinstance(value, str):
        return function(value)
    if isinstance(value, dict):
        return {
            (function(key) if keys and isinstance(key, str) else key): _map_strings(item, function, keys=keys)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_map_strings(item, function, keys=keys) for item in value]
    if isinstance(value, tuple):
        return tuple(_map_strings(item, function, keys=keys) for item in value)
    return value


# -- model output ---------------------------------------------------------------------------------------------


def _character_class(ranges: list[tuple[int, int]]) -> str:
    return "[" + "".join(f"{re.escape(chr(low))}-{re.escape(chr(high))}" for low, high in ranges) + "]"


_INVISIBLE_FORMAT: list[tuple[int, int]] = [
    (0x200B, 0x200F),  # zero-width space, non-joiner, joiner; left-to-right and right-to-left marks
    (0x202A, 0x202E),  # bidi embeddings and overrides
    (0x2060, 0x2064),  # word joiner, invisible operators
    (0x2066, 0x2069),  # bidi isolates
    (0x061C, 0x061C),  # Arabic letter mark
    (0xFEFF, 0xFEFF),  # zero-width no-break space (byte-order mark)
    (0xFFF9, 0xFFFB),  # interlinear annotation
    (0xE0000, 0xE007F),  # tag characters, the "ASCII smuggling" alphabet
]
# A character class rather than str.translate: `re` removes them in C, translate looks each character up in a dict.
_OUTPUT_REMOVED = re.compile(
    _character_class(
        [
            (0x00, 0x08),  # C0 controls but tab and newline
            (0x0B, 0x1F),
            (0x7F, 0x9F),  # DEL and C1 controls
            *_INVISIBLE_FORMAT,
            (0xD800, 0xDFFF),  # lone surrogates: they cannot be encoded, so storing them would fail
        ]
    )
)


def sanitise_output(text: str) -> str:
    """Model output as plain text: line breaks as `\\n`; no control characters but `\\n` and `\\t`; no zero-width,
    bidi-control or tag characters; NFC-normalised. Idempotent.

    It does not HTML-escape: the reply stays text, and templates escape it when they render it (Markdown is
    rendered with HTML disabled and then sanitised). Escaping here would show `&lt;` to the next step and
    double-escape on the page. Joiners go too, which splits emoji sequences; that is the price of removing
    characters a reader cannot see. Apply it to the complete reply, not to streamed chunks, since NFC can
    combine across a chunk boundary.
    """
    # CRLF and lone CR become LF before the control characters go, so line structure survives.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return unicodedata.normalize("NFC", _OUTPUT_REMOVED.sub("", text))


# -- prompt injection -----------------------------------------------------------------------------------------

INJECTION_FLAGS: tuple[str, ...] = (
    "override_instructions",  # tries to replace the model's instructions or persona
    "prompt_leak",  # talks about the system prompt or asks for the model's instructions
    "role_marker",  # chat-template tokens or role labels that fake a conversation turn
    "exfiltration_link",  # a Markdown/HTML image (fetched on render) or a templated link that can carry data out
    "hidden_characters",  # invisible characters hiding or splitting text
    "encoded_payload",  # a base64 blob that decodes to text
)

# Characters removed before phrase matching so "ig\u200bnore" reads "ignore"; their presence is flagged
# separately. Soft hyphen and the combining grapheme joiner are legitimate but invisible, so they are dropped
# for matching without being flagged.
_MATCHING_REMOVED = re.compile(
    _character_class([*_INVISIBLE_FORMAT, (0x00AD, 0x00AD), (0x034F, 0x034F), (0x180E, 0x180E)])
)
_MATCHING_REPLACED: tuple[tuple[str, str], ...] = (
    ("\u2018", "'"),
    ("\u2019", "'"),
    ("\u02bc", "'"),
    ("*", ""),  # Markdown emphasis: "**ignore** all previous instructions"
    ("`", ""),
)

# Always suspicious: nothing in ordinary text needs bidi overrides, invisible operators or tag characters.
_HIDDEN_ALWAYS = re.compile("[\u202a-\u202e\u2066-\u2069\u2061-\u2064\ufff9-\ufffb\U000e0000-\U000e007f]")
# Zero-width characters and marks have honest uses (Persian and Indic orthography, emoji sequences,
# right-to-left text, a leading byte-order mark), none of them inside a Latin word or in a run of three.
_ZERO_WIDTH = "\u200b-\u200f\u2060\ufeff"
_HIDDEN_IN_WORD = re.compile(f"[{_ZERO_WIDTH}](?<=[A-Za-z0-9].)[{_ZERO_WIDTH}]{{0,63}}+(?=[A-Za-z0-9])")
_HIDDEN_RUN = re.compile(f"[{_ZERO_WIDTH}]{{3}}")

# Phrase patterns run on text that is NFKC-normalised, case-folded and has single spaces; none of the word
# lists contains a quantifier, so each bounded repetition of words is cheap to backtrack.
_OVERRIDE_VERB = (
    r"(?:ignore|disregard|forget|override|overrule|bypass|discard|do not follow|don't follow|stop following)"
)
_OVERRIDE_WORD = (
    r"(?:all|any|the|your|of|these|those|every|each|previous|previously|prior|above|earlier|preceding|foregoing"
    r"|former|initial|original|system|existing|current|given|other|above-mentioned|aforementioned)"
)
_OVERRIDE_TARGET = (
    r"(?:instructions?|prompts?|rules|directions|directives|guidelines|guidance|commands|constraints|programming"
    r"|context|restrictions)"
)
# "Ignore the instructions on the old form" is ordinary; "ignore the previous instructions" is not. A scope word
# that points at the model's own instructions is required ("my previous instructions" is a person writing).
_OVERRIDE_SCOPE = frozenset(
    {
        "all",
        "your",
        "previous",
        "previously",
        "prior",
        "above",
        "earlier",
        "preceding",
        "foregoing",
        "former",
        "initial",
        "original",
        "system",
        "above-mentioned",
        "aforementioned",
    }
)
_OVERRIDE_SCOPED = re.compile(rf"\b{_OVERRIDE_VERB} (?P<words>(?:{_OVERRIDE_WORD} ){{0,4}}){_OVERRIDE_TARGET}\b")
_OVERRIDE_PHRASES = re.compile(
    rf"\b{_OVERRIDE_VERB} (?:(?:{_OVERRIDE_WORD}) ){{0,3}}{_OVERRIDE_TARGET} (?:you (?:were|have been|'ve been) given"
    r"|given to you|you received|from your (?:developers?|creators?|operators?))\b"
    r"|\b(?:ignore|disregard|forget) (?:everything|anything|all) (?:(?:that |which )?(?:you (?:were|have been|'ve been)"
    r" (?:told|given)|above|before this|said before|so far)|(?:written|said|stated|mentioned) (?:above|before))\b"
    r"|\byou are now (?:(?:a|an|the|in|no longer|acting as|operating in|fully) ){0,3}(?:dan|jailbroken|unrestricted"
    r"|uncensored|unfiltered|unbound|unchained|evil|(?:developer|debug|god|admin|jailbreak|sudo|unrestricted|dan)"
    r" mode|free (?:from|of) (?:all |any |your )?(?:rules|restrictions|guidelines|constraints|limitations|filters"
    r"|policies))\b"
    r"|\byou(?: are|'re) no longer (?:bound|restricted|limited|constrained) by (?:any |your |the )?(?:rules"
    r"|guidelines|instructions|policies|restrictions|filters|content policy)\b"
    r"|\b(?:new|updated|revised|real|actual|true|override) system (?:prompt|instructions?|message)\b"
    r"|\bsystem override\b"
    r"|\bact as (?:an? )?(?:unrestricted|uncensored|unfiltered|jailbroken|evil) "
    r"|\bpretend (?:that )?you (?:are not bound|have no (?:rules|restrictions|guidelines|limits|filters))\b"
    r"|\bdo anything now\b"
)

# Verbs no one uses with "your instructions" in ordinary mail, and verbs people do use ("could you repeat your
# instructions?"), which count only with the model's prompt as their object.
_LEAK_STRONG_VERBS = frozenset(
    {"reveal", "print", "recite", "dump", "leak", "expose", "disclose", "output", "echo", "spell out", "write out"}
)
_LEAK_PROMPT_TARGETS = frozenset({"system prompt", "system message", "prompt", "initial prompt"})
_LEAK_SCOPE = frozenset(
    {"your", "hidden", "secret", "internal", "initial", "original", "system", "verbatim", "confidential", "developer"}
)
_PROMPT_LEAK = re.compile(
    r"\b(?P<verb>reveal|print|recite|dump|leak|expose|disclose|output|echo|spell out|write out|repeat|show me|show us"
    r"|display|tell me|give me|share|what (?:is|are|was|were)|what's) "
    r"(?P<words>(?:(?:me|us|all|of|the|your|its|exact|full|entire|complete|original|initial|hidden|secret"
    r"|internal|above|previous|verbatim|current|system|confidential|developer) ){0,4})"
    r"(?P<target>system prompt|system message|initial prompt|instructions|prompt)\b"
    # "your prompt reply", "prompt payment": the adjective.
    r"(?! (?:reply|response|payment|attention|action|service|delivery|settlement|answer|feedback|handling"
    r"|processing|review|notice)\b)"
)
_PROMPT_LEAK_PHRASES = re.compile(
    r"\bsystem prompt\b|\b(?:repeat|print|output|recite) (?:all )?(?:of )?(?:the )?(?:text|words|everything) "
    r"(?:above|before this)\b"
)

_ROLE_MARKER_INLINE = re.compile(
    r"<\| ?[a-z0-9_]{1,32}+ ?\|>"  # <|im_start|>, <|eot_id|>, <|system|> …
    r"|\[ ?/?inst ?\]|<< ?/?sys ?>>"  # Llama 2
    r"|<(?:start|end)_of_turn>"  # Gemma
    r"|</?(?:system|assistant)>"
)
_ROLE_MARKER_LINE = re.compile(
    r"^(?:#{1,6}+ ?(?:system|assistant|user|human|instructions?|response) ?:|(?:assistant|human) ?:)", re.MULTILINE
)

_MARKDOWN_IMAGE = re.compile(r"!\[[^\[\]\n]{0,500}+\][ \t]{0,8}+\([ \t]{0,8}+<?(?:https?:)?//", re.IGNORECASE)
_HTML_IMAGE = re.compile(r"<img\b[^<>]{0,1000}?\bsrc[ \t]{0,8}=[ \t]{0,8}[\"']?[ \t]{0,8}(?:https?:)?//", re.IGNORECASE)
# Ordinary links are everywhere in business text; a link whose address has template braces is asking the
# model to fill data in.
_MARKDOWN_LINK = re.compile(
    r"\[[^\[\]\n]{0,500}+\][ \t]{0,8}+\([ \t]{0,8}+<?(?P<url>https?://[^\s()<>]{1,2048}+)", re.IGNORECASE
)
_URL_TEMPLATE_MARKERS = ("{", "}", "%7b", "%7d")

_BASE64_RUN = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{32,}+={0,2}+(?![A-Za-z0-9+/=_-])")
_BASE64_SAMPLE = 4096  # characters decoded per blob; a multiple of 4


def _decodes_to_text(blob: str) -> bool:
    """Whether a base64-looking token decodes to readable text. Hashes, ids, long words and encoded images
    decode to bytes that are not text, which keeps this quiet on ordinary documents."""
    body = blob.rstrip("=")[:_BASE64_SAMPLE]
    url_safe = "-" in body or "_" in body
    if url_safe and ("+" in body or "/" in body):
        return False
    if len(body) % 4 == 1:
        return False
    try:
        raw = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_" if url_safe else None, validate=True)
    except (binascii.Error, ValueError):
        return False
    # The sample may cut a character in two at its end; that alone does not make it binary.
    decoded = raw.decode("utf-8", errors="replace").rstrip("\ufffd")
    # Prose, not data: a JWT's payload or an encoded JSON record decodes to text too, but mostly punctuation
    # and digits.
    if len(decoded) < 24 or decoded.count(" ") < 2:
        return False
    if any(not (char in "\n\t" or char.isprintable()) or char == "\ufffd" for char in decoded):
        return False
    wordlike = sum(1 for char in decoded if char.isalpha() or char.isspace())
    return wordlike >= 0.7 * len(decoded)


def _override_flagged(flat: str) -> bool:
    if _OVERRIDE_PHRASES.search(flat):
        return True
    return any(_OVERRIDE_SCOPE.intersection(match.group("words").split()) for match in _OVERRIDE_SCOPED.finditer(flat))


def _prompt_leak_flagged(flat: str) -> bool:
    # Every leak pattern ends in one of these words; most documents have none, and `in` is far cheaper than
    # trying an alternation of verbs at every word.
    if not any(word in flat for word in ("prompt", "instructions", "system message", "above", "before this")):
        return False
    if _PROMPT_LEAK_PHRASES.search(flat):
        return True
    for match in _PROMPT_LEAK.finditer(flat):
        target = match.group("target")
        words = set(match.group("words").split())
        if match.group("verb") not in _LEAK_STRONG_VERBS and target not in _LEAK_PROMPT_TARGETS:
            continue
        if target.startswith("system ") or _LEAK_SCOPE.intersection(words):
            return True
    return False


def _exfiltration_flagged(visible: str) -> bool:
    if _MARKDOWN_IMAGE.search(visible) or _HTML_IMAGE.search(visible):
        return True
    for match in _MARKDOWN_LINK.finditer(visible):
        url = match.group("url").lower()
        if any(marker in url for marker in _URL_TEMPLATE_MARKERS):
            return True
    return False


def _flags(text: str) -> set[str]:
    found: set[str] = set()
    if _HIDDEN_ALWAYS.search(text) or _HIDDEN_IN_WORD.search(text) or _HIDDEN_RUN.search(text):
        found.add("hidden_characters")
    visible = unicodedata.normalize("NFKC", _MATCHING_REMOVED.sub("", text))
    folded = visible.casefold()
    for old, new in _MATCHING_REPLACED:
        folded = folded.replace(old, new)
    # Whitespace collapsed with str.split, which is linear and needs no pattern; `lines` keeps line starts for
    # role labels, `flat` lets a phrase run across a line break.
    flat = " ".join(folded.split())
    lines = "\n".join(" ".join(line.split()) for line in folded.splitlines())
    if _override_flagged(flat):
        found.add("override_instructions")
    if _prompt_leak_flagged(flat):
        found.add("prompt_leak")
    if _ROLE_MARKER_INLINE.search(flat) or _ROLE_MARKER_LINE.search(lines):
        found.add("role_marker")
    if _exfiltration_flagged(visible):
        found.add("exfiltration_link")
    if any(_decodes_to_text(match.group()) for match in _BASE64_RUN.finditer(visible)):
        found.add("encoded_payload")
    return found


def sanitise_value(value: Any) -> Any:
    """`sanitise_output` applied to every string inside a JSON-like value (dict keys untouched)."""
    return _map_strings(value, sanitise_output, keys=False)


def injection_flags(text: str) -> list[str]:
    """Codes from `INJECTION_FLAGS` for what in this text looks like prompt injection: each at most once, in
    the order of `INJECTION_FLAGS`, empty for ordinary text. Case- and whitespace-insensitive; zero-width
    characters and full-width or styled letters do not hide a phrase. Heuristics: they can miss a determined
    attacker (homoglyphs, paraphrase, other languages) and are meant to draw a reviewer's eye, not to block."""
    found = _flags(text)
    return [code for code in INJECTION_FLAGS if code in found]


def injection_flags_in(value: Any) -> list[str]:
    """`injection_flags` over every string inside dicts, lists and tuples, keys included, merged."""
    found: set[str] = set()
    for text in _strings_in(value, keys=True):
        found |= _flags(text)
    return [code for code in INJECTION_FLAGS if code in found]


# -- results held for a person's review -------------------------------------------------------------------------

# What each flag means, in the words a reviewer reads.
INJECTION_FLAG_LABELS: dict[str, str] = {
    "override_instructions": "tries to override the model's instructions",
    "prompt_leak": "asks for the model's instructions",
    "role_marker": "fakes a turn of the conversation",
    "exfiltration_link": "holds a link that could carry data out",
    "hidden_characters": "hides text in invisible characters",
    "encoded_payload": "hides text in an encoded blob",
}


def held_review_title(step_name: str, flags: list[str]) -> str:
    """An inbox title for a held result: which step, and what in its input looks like an attack."""
    what = "; ".join(INJECTION_FLAG_LABELS.get(flag, flag) for flag in flags) or "looks like a prompt injection"
    return f"Check “{step_name}”: its input {what}"[:200]


def held_review_proposal(held: dict[str, Any]) -> dict[str, Any]:
    """What a reviewer checks, and may correct, in a result an LLM step held back: the extracted (or JSON) data,
    a classification's label, or the reply's text."""
    data = held.get("data")
    if isinstance(data, dict):
        return data
    if "label" in held:
        return {"label": held["label"]}
    return {"text": held.get("text", "")}


def held_output_reviewed(held: dict[str, Any], decision: dict[str, Any]) -> dict[str, Any]:
    """The held result as the step outputs it once a person approved it: with the reviewer's corrections (of the
    fields `held_review_proposal` showed), and `review` saying who decided. A corrected label is a person's
    answer, so it is certain."""
    corrected = decision.get("data") if isinstance(decision.get("data"), dict) else None
    output = dict(held)
    if corrected is not None:
        if isinstance(held.get("data"), dict):
            output["data"] = corrected
            if "text" in held and corrected != held["data"]:
                # The reply's text is the model's JSON: later steps that read it read the corrected data too.
                output["text"] = json.dumps(corrected, ensure_ascii=False)
        elif "label" in held:
            if corrected.get("label") != held.get("label"):
                output.update(label=corrected.get("label"), confidence=1.0, branch="confident")
        elif isinstance(corrected.get("text"), str):
            output["text"] = corrected["text"]
    output["review"] = {
        "decision": "approved",
        "decided_by": str(decision.get("decided_by") or ""),
        "reason": str(decision.get("reason") or ""),
        "changed_fields": list(decision.get("changed_fields") or []),
    }
    return output
