"""Structured Field Values for HTTP (RFC 9651): the List parser the IETF rate-limit
fields need (draft-ietf-httpapi-ratelimit-headers-10: ``RateLimit``, ``RateLimit-Policy``).

A field that does not parse is ignored as a whole, as RFC 9651 section 4.2 asks: the
parser answers None instead of raising.
"""

from __future__ import annotations

import base64
import binascii
import re

BareItem = int | float | str | bytes | bool
Parameters = dict[str, BareItem]
# A member is an Item (a bare item with parameters) or an Inner List of items with parameters.
Member = tuple[BareItem | list[tuple[BareItem, Parameters]], Parameters]

_INTEGER = re.compile(r"-?\d{1,15}")
_DECIMAL = re.compile(r"-?\d{1,12}\.\d{1,3}")
_NUMBER = re.compile(r"-?\d+(?:\.\d*)?")
_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_BYTES = re.compile(r":([A-Za-z0-9+/=]*):")
_DISPLAY = re.compile(r'%"((?:[\x20-\x21\x23-\x24\x26-\x7e]|%[0-9a-f]{2})*)"')


class _Malformed(Exception):
    pass


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def peek(self) -> str:
        return self.text[self.at] if self.at < len(self.text) else ""

    def skip(self, chars: str) -> None:
        while self.peek() and self.peek() in chars:
            self.at += 1

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise _Malformed
        self.at += 1

    def match(self, pattern: re.Pattern[str]) -> re.Match[str]:
        found = pattern.match(self.text, self.at)
        if found is None:
            raise _Malformed
        self.at = found.end()
        return found

    def member(self) -> Member:
        if self.peek() != "(":
            return self.bare_item(), self.parameters()
        self.at += 1
        items: list[tuple[BareItem, Parameters]] = []
        while True:
            self.skip(" ")
            if self.peek() == ")":
                self.at += 1
                return items, self.parameters()
            items.append((self.bare_item(), self.parameters()))
            if self.peek() not in (" ", ")"):
                raise _Malformed

    def parameters(self) -> Parameters:
        params: Parameters = {}
        while self.peek() == ";":
            self.at += 1
            self.skip(" ")
            key = self.match(_KEY).group()
            value: BareItem = True
            if self.peek() == "=":
                self.at += 1
                value = self.bare_item()
            params[key] = value
        return params

    def bare_item(self) -> BareItem:
        first = self.peek()
        if first == "-" or first.isdigit():
            return self.number()
        if first == '"':
            return self.string()
        if first == ":":
            try:
                return base64.b64decode(self.match(_BYTES).group(1), validate=True)
            except binascii.Error:
                raise _Malformed from None
        if first == "?":
            self.at += 1
            flag = self.peek()
            if flag not in ("0", "1"):
                raise _Malformed
            self.at += 1
            return flag == "1"
        if first == "@":
            self.at += 1
            return int(self.match(_INTEGER).group())
        if first == "%":
            return _percent_decoded(self.match(_DISPLAY).group(1))
        return self.match(_TOKEN).group()

    def number(self) -> int | float:
        text = self.match(_NUMBER).group()
        if _DECIMAL.fullmatch(text):
            return float(text)
        if _INTEGER.fullmatch(text):
            return int(text)
        raise _Malformed

    def string(self) -> str:
        self.at += 1
        out: list[str] = []
        while True:
            char = self.peek()
            self.at += 1
            if char == "\\":
                escaped = self.peek()
                if escaped not in ('"', "\\"):
                    raise _Malformed
                out.append(escaped)
                self.at += 1
            elif char == '"':
                return "".join(out)
            elif not char or not " " <= char <= "~":
                raise _Malformed
            else:
                out.append(char)


def _percent_decoded(text: str) -> str:
    raw = re.sub(r"%([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), text).encode("latin-1")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed from None


def parse_list(lines: list[str]) -> list[Member] | None:
    """The members of a List field sent as ``lines`` (one value per field line, combined as
    RFC 9110 section 5.3 says); None when it does not parse."""
    reader = _Reader(", ".join(lines).strip(" "))
    members: list[Member] = []
    try:
        while reader.peek():
            members.append(reader.member())
            reader.skip(" \t")
            if not reader.peek():
                break
            reader.expect(",")
            reader.skip(" \t")
            if not reader.peek():
                raise _Malformed  # a trailing comma
    except _Malformed:
        return None
    return members
