"""Lenient reading of a JSON object from a small model's reply.

``parse_object(text)`` first tries the reply as strict JSON; when that fails it repairs
locally, without another model call, the damage small models typically do:

- markdown fences around the object (```json ... ```), closed or not;
- prose before or after the object (the first ``{`` starts it, its matching ``}`` ends it);
- single-quoted strings and keys, unquoted keys (``{draft: "4"}``), ``=`` for ``:``;
- trailing commas, missing commas between members;
- Python literals ``True``/``False``/``None`` (and any case of ``true``/``null``);
- a reply cut off by ``max_tokens``: an open string is closed, a dangling key dropped,
  and the open objects and arrays are closed;
- raw newlines and unknown escapes inside strings.

It returns the object and the repairs it needed (an empty tuple for strict JSON), so a
caller can count what broke; ``RepairError`` when the text holds no object at all.
The repairs are conservative: they never invent a value, only close or drop.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

_FENCE = re.compile(r"```[ \t]*[A-Za-z0-9_-]*[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_LITERALS: dict[str, Any] = {"true": True, "false": False, "null": None, "none": None}
_PY_LITERALS = frozenset({"True", "False", "None"})
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019"}
_MAX_STARTS = 16  # "{" positions tried in prose before giving up


class RepairError(ValueError):
    """A reply with no JSON object in it, even after local repair."""


def parse_object(
    text: str, want: Callable[[dict[str, Any]], bool] | None = None
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The first JSON object in ``text`` (the first that ``want`` accepts, when given: an
    example or a wrapper object before the real one is skipped) and the repairs it needed
    (sorted names)."""
    stripped = text.strip()
    try:
        value = json.loads(stripped)
    except (ValueError, RecursionError):  # nested past the recursion limit: not strict JSON
        pass
    else:
        if isinstance(value, dict) and (want is None or want(value)):
            return value, ()
    repairs: set[str] = set()
    body = stripped
    fenced = _FENCE.search(stripped)
    if fenced and "{" in fenced.group(1):
        body = fenced.group(1)
        repairs.add("fence")
    start = body.find("{")
    if start < 0:
        raise RepairError("no JSON object in the reply")
    tried = 0
    unwanted: dict[str, Any] | None = None
    while start >= 0 and tried < _MAX_STARTS:
        tried += 1
        parser = _Parser(body, start)
        try:
            value = parser.parse_object()
        except _Fail:
            start = body.find("{", start + 1)
            continue
        if want is not None and not want(value):
            unwanted = unwanted if unwanted is not None else value
            start = body.find("{", start + 1)
            continue
        if start > 0 and body[:start].strip():
            parser.repairs.add("prose")
        if body[parser.pos :].strip():
            parser.repairs.add("prose")
        return value, tuple(sorted(repairs | parser.repairs))
    if unwanted is not None:
        keys = ", ".join(sorted(map(str, unwanted))) or "none"
        raise RepairError(f"no object of the expected shape (the first has keys: {keys})")
    raise RepairError("no JSON object could be read from the reply")


class _Fail(Exception):
    pass


class _Truncated(Exception):
    """A value cut off so early that it cannot be read: its member is dropped."""


class _Parser:
    """A forgiving recursive-descent reader of one object starting at ``pos``."""

    def __init__(self, text: str, pos: int) -> None:
        self.text = text
        self.pos = pos
        self.repairs: set[str] = set()
        self.depth = 0

    # ------------------------------------------------------------------ helpers
    def _eof(self) -> bool:
        return self.pos >= len(self.text)

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _skip_ws(self) -> None:
        text = self.text
        while self.pos < len(text):
            ch = text[self.pos]
            if ch.isspace():
                self.pos += 1
            elif text.startswith("//", self.pos) or ch == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end + 1
                self.repairs.add("comment")
            else:
                return

    # ------------------------------------------------------------------ values
    def parse_object(self) -> dict[str, Any]:
        assert self.text[self.pos] == "{"
        self.pos += 1
        self.depth += 1
        if self.depth > 64:
            raise _Fail("nested too deep")
        out: dict[str, Any] = {}
        expect_member = True
        while True:
            self._skip_ws()
            ch = self._peek()
            if not ch:
                self.repairs.add("truncated")
                break
            if ch == "}":
                self.pos += 1
                break
            if ch == ",":
                self.pos += 1
                if not expect_member:
                    expect_member = True
                    continue
                continue  # a doubled comma: skip it
            if ch in "]":
                self.pos += 1  # a stray closer
                self.repairs.add("stray_bracket")
                continue
            if not expect_member:
                self.repairs.add("missing_comma")
            key = self._key()
            if key is None:
                raise _Fail("no key")
            self._skip_ws()
            sep = self._peek()
            if sep in (":", "="):
                if sep == "=":
                    self.repairs.add("equals")
                self.pos += 1
            elif not sep:
                self.repairs.add("truncated")
                break  # a dangling key: dropped
            else:
                raise _Fail("no colon after key")
            self._skip_ws()
            if self._eof():
                self.repairs.add("truncated")
                break  # a key with no value: dropped
            try:
                out[key] = self._value(in_object=True)
            except _Truncated:
                break
            expect_member = False
            self._skip_ws()
            if self._peek() == ",":
                self.pos += 1
                self._skip_ws()
                if self._peek() in ("}", ""):
                    if self._peek() == "}":
                        self.repairs.add("trailing_comma")
                expect_member = True
        self.depth -= 1
        return out

    def _array(self) -> list[Any]:
        self.pos += 1
        self.depth += 1
        if self.depth > 64:
            raise _Fail("nested too deep")
        out: list[Any] = []
        while True:
            self._skip_ws()
            ch = self._peek()
            if not ch:
                self.repairs.add("truncated")
                break
            if ch == "]":
                self.pos += 1
                break
            if ch == ",":
                self.pos += 1
                self._skip_ws()
                if self._peek() == "]":
                    self.repairs.add("trailing_comma")
                continue
            if ch == "}":
                self.repairs.add("stray_bracket")
                break  # the array was never closed; let the object close
            try:
                out.append(self._value(in_object=False))
            except _Truncated:
                break
        self.depth -= 1
        return out

    def _value(self, in_object: bool) -> Any:
        ch = self._peek()
        if ch == "{":
            return self.parse_object()
        if ch == "[":
            return self._array()
        if ch in _QUOTES:
            return self._string()
        match = _NUMBER.match(self.text, self.pos)
        if match and self._number_ends(match.end(), in_object):
            self.pos = match.end()
            number = match.group(0)
            try:
                return int(number) if re.fullmatch(r"-?\d+", number) else float(number)
            except ValueError:
                return number
        word = self._bareword(stop=",}]\n" if in_object else ",]\n")
        if not word:
            raise _Fail(f"unexpected character {ch!r}")
        lowered = word.lower()
        if self._eof() and lowered not in _LITERALS and any(
            lit.startswith(lowered) for lit in _LITERALS
        ):
            self.repairs.add("truncated")
            raise _Truncated  # "fal" at the cut: a literal that never ended, dropped
        if lowered in _LITERALS:
            if word in _PY_LITERALS:
                self.repairs.add("python_literals")
            elif word != lowered:
                self.repairs.add("python_literals")
            return _LITERALS[lowered]
        self.repairs.add("unquoted_value")
        return word

    def _number_ends(self, end: int, in_object: bool) -> bool:
        rest = self.text[end:].lstrip(" \t")
        return not rest or rest[0] in (",}]\n\r" if in_object else ",]\n\r")

    def _key(self) -> str | None:
        ch = self._peek()
        if ch in _QUOTES:
            return self._string()
        match = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*").match(self.text, self.pos)
        if not match:
            return None
        self.pos = match.end()
        self.repairs.add("unquoted_keys")
        return match.group(0)

    def _bareword(self, stop: str) -> str:
        start = self.pos
        text = self.text
        while self.pos < len(text) and text[self.pos] not in stop:
            self.pos += 1
        return text[start : self.pos].strip()

    def _string(self) -> str:
        quote = self.text[self.pos]
        close = _QUOTES[quote]
        if quote == "'":
            self.repairs.add("single_quotes")
        elif quote != '"':
            self.repairs.add("smart_quotes")
        self.pos += 1
        out: list[str] = []
        text = self.text
        while True:
            if self.pos >= len(text):
                self.repairs.add("truncated")
                break
            ch = text[self.pos]
            if ch == close:
                self.pos += 1
                if self._closes():
                    break
                # A quote inside the text ("it's", 'He said "hi"'): keep it.
                self.repairs.add("inner_quote")
                out.append(ch)
                continue
            if ch == "\\":
                nxt = text[self.pos + 1 : self.pos + 2]
                if nxt in _ESCAPES:
                    out.append(_ESCAPES[nxt])
                    self.pos += 2
                    continue
                if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[self.pos + 2 : self.pos + 6]):
                    out.append(chr(int(text[self.pos + 2 : self.pos + 6], 16)))
                    self.pos += 6
                    continue
                self.repairs.add("bad_escape")
                out.append(ch)  # keep an unknown escape's backslash: "\(" stays "\("
                self.pos += 1
                continue
            if ch == "\n" and close == '"':
                self.repairs.add("raw_newline")
            out.append(ch)
            self.pos += 1
        return "".join(out)

    def _closes(self) -> bool:
        """Whether the quote just read closes its string: what follows it (spaces
        skipped) ends a key or value, or the text ends."""
        rest = self.text[self.pos :].lstrip(" \t")
        if not rest or rest[0] in ",:}]\n\r":
            return True
        return rest.startswith(("//", "#"))


_LATEX_MANGLED = (
    (re.compile("\x0c"), r"\\f"),  # \frac
    (re.compile("\x08"), r"\\b"),  # \beta, \binom
    (re.compile("\t(?=[a-z]{2})"), r"\\t"),  # \times, \theta, \text
    (re.compile("\r(?=[a-z])"), r"\\r"),  # \right, \rho
    (re.compile("\n(?=(?:eq|e|abla|u|ot|eg|i)\\b)"), r"\\n"),  # \neq, \nu, \not
)


def unmangle_latex(text: str) -> str:
    """Undo JSON escapes that ate a LaTeX command: a model writing ``"\\frac"`` in a JSON
    string means a backslash, not a form feed (``\\f``) followed by "rac"."""
    for pattern, replacement in _LATEX_MANGLED:
        text = pattern.sub(replacement, text)
    return text

