"""A small declarative schema: one description of each config field gives both the
strict loader (typed values, every problem with its file, line and field) and the JSON
Schema printed by ``gateway schema``, so the two can never disagree.

A spec's ``build`` turns a YAML value (as read by :mod:`gateway.config.yamlread`) into a
typed value, or reports problems to the :class:`Context` and returns :data:`INVALID`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config.files import Unreadable, read_limited
from gateway.config.yamlread import LineDict, LineList
from gateway.config.problems import Problem
from gateway.config.secrets import Secret


class _Invalid:
    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()

MAX_REFERENCED = 64 * 1024  # a ${file:...} secret; a longer file is surely the wrong one
MAX_COUNT = 10**15  # whole numbers beyond this lose precision in Redis (doubles) and overflow SQLite

_REFERENCE = re.compile(r"\$\{(?:file:(?P<file>[^}]+)|(?P<env>[A-Za-z_][A-Za-z0-9_]*))\}")


@dataclass
class Context:
    """Where values come from and where problems go."""

    file: str
    environ: Mapping[str, str]
    base_dir: Path
    problems: list[Problem] = field(default_factory=list)
    vendors: frozenset[str] | None = None  # the vendors with a policy, once known

    def error(self, line: int, path: str, message: str) -> Any:
        self.problems.append(Problem(self.file, line, path or "(file)", message))
        return INVALID

    def resolve(self, text: str, line: int, path: str) -> str | None:
        """Resolve a whole-value reference ``${ENV}`` or ``${file:PATH}``; None if it failed."""
        m = _REFERENCE.fullmatch(text)
        assert m is not None
        if m.group("env"):
            name = m.group("env")
            if name not in self.environ:
                self.error(line, path, f"environment variable {name} is not set")
                return None
            return self.environ[name]
        target = Path(m.group("file"))
        if not target.is_absolute():
            target = self.base_dir / target
        try:
            return read_limited(target, MAX_REFERENCED).decode("utf-8").strip()
        except (Unreadable, UnicodeDecodeError) as exc:
            reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc)
            self.error(line, path, f"cannot read referenced file {_short(str(target), 300)}: {reason}")
            return None


def is_reference(value: object) -> bool:
    return isinstance(value, str) and _REFERENCE.fullmatch(value) is not None


class Spec:
    description: str = ""

    def build(self, value: Any, ctx: Context, path: str, line: int) -> Any:
        raise NotImplementedError

    def schema(self) -> dict[str, Any]:
        raise NotImplementedError

    def _schema(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.description:
            body["description"] = self.description
        return body


class Str(Spec):
    def __init__(
        self,
        *,
        pattern: str | None = None,
        enum: tuple[str, ...] | None = None,
        refs: bool = False,
        check: Callable[[str], str | None] | None = None,
        description: str = "",
    ) -> None:
        self.pattern = re.compile(pattern) if pattern else None
        self.enum = enum
        self.refs = refs
        self.check = check
        self.description = description

    def build(self, value: Any, ctx: Context, path: str, line: int) -> Any:
        if not isinstance(value, str):
            return ctx.error(line, path, f"expected a string, got {_kind(value)}")
        if self.refs and is_reference(value):
            resolved = ctx.resolve(value, line, path)
            if resolved is None:
                return INVALID
            value = resolved
        if message := unsafe_characters(value):
            return ctx.error(line, path, message)
        if self.enum is not None and value not in self.enum:
            return ctx.error(line, path, f"must be one of {', '.join(self.enum)}, got {_short(value)}")
        if self.pattern is not None and not self.pattern.fullmatch(value):
            return ctx.error(line, path, f"{_short(value)} does not match {self.pattern.pattern}")
        if self.check is not None:
            message = self.check(value)
            if message:
                return ctx.error(line, path, message)
        return value

    def schema(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "string"}
        if self.enum is not None:
            body["enum"] = list(self.enum)
        if self.pattern is not None and not self.refs:
            body["pattern"] = f"^(?:{self.pattern.pattern})$"
        return self._schema(body)


# An HTTP field name (RFC 9110 token), as budgets' and api_key credentials' specs name them.
HEADER_NAME = Str(pattern=r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class SecretRef(Spec):
    """A secret: only ever a reference, resolved at load time, never shown."""

    description = "a reference: ${ENV_NAME} or ${file:/path} (literal secrets are refused)"

    def __init__(self, *, multiline: bool = False) -> None:
        self.multiline = multiline

    def build(self, value: Any, ctx: Context, path: str, line: int) -> Any:
        if not isinstance(value, str) or not is_reference(value):
            return ctx.error(
                line,
                path,
                "a secret must be a reference ${ENV_NAME} or ${file:/path}, not a literal value",
            )
        resolved = ctx.resolve(value, line, path)
        if resolved is None:
            return INVALID
        if not resolved:
            return ctx.error(line, path, f"{value} resolves to an empty value")
        if message := unsafe_characters(resolved, multiline=self.multiline):
            return ctx.error(line, path, f"{value} resolves to a value that {message}")
        return Secret(resolved, value)

    def schema(self) -> dict[str, Any]:
        return self._schema({"type": "string", "pattern": _ecma(_REFERENCE.pattern).join("^$")})


class Int(Spec):
    def __init__(self, *, minimum: int | None = None, maximum: int | None = MAX_COUNT, description: str = "") -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.description = description

    def build(self, value: Any, ctx: Context, path: str, line: int) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            return ctx.error(line, path, f"expected a whole number, got {_kind(value)}")
        return _bounded(value, self.minimum, self.maximum, ctx, path, line)

    def schema(self) -> dict[str, Any]:
        return self._schema(_bounds({"type": "integer"}, self.minimum, self.maximum))


class Number(Spec):
    def __init__(
        self,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        above: float | None = None,
        description: str = "",
    ) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.above = above
        self.description = description

    def build(self, value: Any, ctx: Context, path: str, line: int) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return ctx.error(line, path, f"expected a number, got {_kind(value)}")
        try:
            number = float(value)
        except OverflowError:
            return ctx.error(line, path, f"is out of range: {_short(value)}")
        if not math.isfinite(number):
            return ctx.error(line, path, f"must be a finite number, got {_short(value)}")
        if self.above is not None and not number > self.above:
            return ctx.error(line, path, f"must be greater than {self.above}, got {_short(value)}")
        return _bounded(number, self.minimum, self.maximum, ctx, path, line)

    def schema(self) -> dict[str, Any]:
        body = _bounds({"type": "number"}, self.minimum, self.maximum)
        if self.above is not None:
            body["exclusiveMinimum"] = self.above
        return self._schema(body)


class Bool(Spec):
    def __init__(self, description: str = "") -> None:
        self.description = description

    def build(self, value: Any, ctx: Context, path: str, line: int) -> Any:
        if not isinstance(value, bool):
            return ctx.error(line, path, f"expected true or false, got {_kind(value)}")
        return value

    def schema(self) -> dict[str, Any]:
        return self._schema({"type": "boolean"})


class ListOf(Spec):
    def __init__(self, item: Spec, *, min_items: int = 0, description: str = "") -> None:
        self.item = item
        self.min_items = min_items
        self.description = description

    def build(self, value: Any, ctx: Context, path: str, line: int) -> Any:
        if not isinstance(value, list):
            return ctx.error(line, path, f"expected a list, got {_kind(value)}")
        if len(value) < self.min_items:
            return ctx.error(line, path, f"needs at least {self.min_items} item(s)")
        lines = value.lines if isinstance(value, LineList) else [line] * len(value)
        items = [self.item.build(v, ctx, f"{path}[{i}]", lines[i]) for i, v in enumerate(value)]
        if any(item is INVALID for item in items):
            return INVALID
        return tuple(items)

    def schema(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "array", "items": self.item.schema()}
        if self.min_items:
            body["minItems"] = self.min_items
        return self._schema(body)


class ListOrAll(Spec):
    """A list, or the string ``"*"`` meaning every possible item (built as ``("*",)``)."""

    def __init__(self, items: ListOf, *, description: str = "") -> None:
        self.items = items
        self.description = description

    def build(self, value: Any, ctx: Context, path: str, line: int) -> Any:
        if value == "*":
            return ("*",)
        if isinstance(value, str):
            return ctx.error(line, path, f'expected a list, or "*" for all, got {_short(value)}')
        return self.items.build(value, ctx, path, line)

    def schema(self) -> dict[str, Any]:
        return self._schema({"anyOf": [{"const": "*"}, self.items.schema()]})


class AnyOf(Spec):
    """The first of several specs that accepts the value; the last one's problem otherwise."""

    def __init__(self, *options: Spec, message: str, description: str = "") -> None:
        self.options = options
        self.message = message
        self.description = description

    def build(self, value: Any, ctx: Context, path: str, line: int) -> Any:
        for option in self.options:
            trial = Context(ctx.file, ctx.environ, ctx.base_dir)
            result = option.build(value, trial, path, line)
            if result is not INVALID:
                return result
        return ctx.error(line, path, f"{self.message}, got {_short(value)}")

    def schema(self) -> dict[str, Any]:
        return self._schema({"anyOf": [o.schema() for o in self.options]})


@dataclass(frozen=True)
class Field:
    spec: Spec
    required: bool = False
    default: Any = None


class Reporter:
    """Lets an object's cross-field check report a problem at a field's line."""

    def __init__(self, ctx: Context, path: str, value: LineDict) -> None:
        self.ctx = ctx
        self.path = path
        self.value = value
        self.failed = False

    def error(self, name: str | None, message: str) -> None:
        self.failed = True
        line = self.value.lines.get(name, self.value.line) if name else self.value.line
        field_path = _join(self.path, name) if name else self.path
        self.ctx.error(line, field_path, message)

    def error_at(self, line: int, field_path: str, message: str) -> None:
        self.failed = True
        self.ctx.error(line, field_path, message)

    def has(self, name: str) -> bool:
        return name in self.value


class Obj(Spec):
    """A mapping with known fields, built into ``cls(**fields)``; unknown keys are refused."""

    def __init__(
        self,
        cls: Callable[..., Any],
        fields: dict[str, Field],
        *,
        check: Callable[[dict[str, Any], Reporter], None] | None = None,
        description: str = "",
    ) -> None:
        self.cls = cls
        self.fields = fields
        self.check = check
        self.description = description

    def build(self, value: Any, ctx: Context, path: str, line: int) -> Any:
        if value is None:
            value = LineDict()
            value.line = line
        if not isinstance(value, LineDict):
            return ctx.error(line, path, f"expected a mapping, got {_kind(value)}")
        ok = True
        for key in value:
            if key not in self.fields:
                ctx.error(
                    value.lines.get(key, value.line),
                    _join(path, field_name(key)),
                    f"unknown field (expected one of: {', '.join(self.fields)})",
                )
                ok = False
        built: dict[str, Any] = {}
        for name, f in self.fields.items():
            if name in value:
                result = f.spec.build(value[name], ctx, _join(path, name), value.lines.get(name, value.line))
                if result is INVALID:
                    ok = False
                built[name] = result
            elif f.required:
                ctx.error(value.line, _join(path, name), "required field is missing")
                ok = False
            else:
                built[name] = f.default
        if not ok:
            return INVALID
        if self.check is not None:
            reporter = Reporter(ctx, path, value)
            self.check(built, reporter)
            if reporter.failed:
                return INVALID
        return self.cls(**built)

    def schema(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": "object",
            "additionalProperties": False,
            "properties": {name: f.spec.schema() for name, f in self.fields.items()},
        }
        required = [name for name, f in self.fields.items() if f.required]
        if required:
            body["required"] = required
        return self._schema(body)


class Tagged(Spec):
    """A mapping whose ``tag`` field picks which object spec applies."""

    def __init__(self, tag: str, variants: dict[str, Obj], *, default: str, description: str = "") -> None:
        self.tag = tag
        self.variants = variants
        self.default = default
        self.description = description

    def build(self, value: Any, ctx: Context, path: str, line: int) -> Any:
        if not isinstance(value, LineDict):
            return ctx.error(line, path, f"expected a mapping, got {_kind(value)}")
        kind = value.get(self.tag, self.default)
        if not isinstance(kind, str) or kind not in self.variants:
            return ctx.error(
                value.lines.get(self.tag, value.line),
                _join(path, self.tag),
                f"must be one of {', '.join(self.variants)}, got {_short(kind)}",
            )
        rest = LineDict((k, v) for k, v in value.items() if k != self.tag)
        rest.line = value.line
        rest.lines = value.lines
        return self.variants[kind].build(rest, ctx, path, line)

    def schema(self) -> dict[str, Any]:
        options = []
        for kind, variant in self.variants.items():
            sub = variant.schema()
            sub["properties"] = {self.tag: {"const": kind}, **sub["properties"]}
            if kind != self.default:
                sub["required"] = [self.tag, *sub.get("required", [])]
            options.append(sub)
        return self._schema({"type": "object", "oneOf": options})


_CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def unsafe_characters(text: str, *, multiline: bool = False) -> str | None:
    """Why ``text`` cannot be a config value (a control character, a lone surrogate), or None.

    Such characters never belong in a name, path, URL or header, and would only fail
    later, in a header sent or a file opened while serving.
    """
    m = (_CONTROL_BUT_LINES if multiline else _CONTROL).search(text)
    if m is None:
        return None
    what = "lone surrogates" if ord(m.group()) >= 0xD800 else "control characters"
    return f"must not contain {what} (U+{ord(m.group()):04X} at character {m.start() + 1})"


def _ecma(pattern: str) -> str:
    """A Python regex as JSON Schema (ECMA-262) takes it: named groups made plain."""
    return re.sub(r"\(\?P<\w+>", "(?:", pattern)


def field_name(key: object) -> str:
    """A mapping key as a problem names it: as written when plain, else quoted and cut short."""
    if isinstance(key, str) and key.isprintable() and len(key) <= 40:
        return key
    return _short(key)


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, LineDict | dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the string {_short(value)}"
    return f"{type(value).__name__} {_short(value)}"


def _bounded(value: Any, minimum: Any, maximum: Any, ctx: Context, path: str, line: int) -> Any:
    if minimum is not None and value < minimum:
        return ctx.error(line, path, f"must be at least {minimum}, got {_short(value)}")
    if maximum is not None and value > maximum:
        return ctx.error(line, path, f"must be at most {maximum}, got {_short(value)}")
    return value


def _bounds(body: dict[str, Any], minimum: Any, maximum: Any) -> dict[str, Any]:
    if minimum is not None:
        body["minimum"] = minimum
    if maximum is not None:
        body["maximum"] = maximum
    return body
