"""YAML reading that remembers where each value stood, so problems can name their line.

Built on PyYAML's SafeLoader (no arbitrary objects); mappings become :class:`LineDict`
and sequences :class:`LineList`, each carrying 1-based line numbers. Duplicate keys,
which plain YAML loaders silently collapse, are reported.

Whatever the bytes, reading either gives a value or raises :class:`YamlProblem` with a
line: bad UTF-8 and characters YAML forbids are named where they stand, nesting is
bounded, and so is what anchors and aliases expand to (a "billion laughs" document of a
few hundred bytes would otherwise become millions of values).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

MAX_DEPTH = 40
MAX_VALUES = 100_000


class LineDict(dict[Any, Any]):
    line: int = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lines: dict[Any, int] = {}


class LineList(list[Any]):
    line: int = 1

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.lines: list[int] = []


class YamlProblem(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class _LineLoader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[int, str]] = []
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                event = self.peek_event()  # type: ignore[no-untyped-call]
                raise YamlProblem(event.start_mark.line + 1, f"nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        # PyYAML's constructors let Python's own errors out for values such as
        # `!!timestamp 2024-13-45`, `!!bool maybe` or `!!float x`.
        except (ValueError, OverflowError, TypeError, AttributeError, LookupError) as exc:
            raise YamlProblem(node.start_mark.line + 1, f"cannot read this {_tag(node)} value: {type(exc).__name__}") from None


def _tag(node: yaml.Node) -> str:
    return str(node.tag).rsplit(":", 1)[-1]


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    result = LineDict()
    result.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str):
            raise YamlProblem(line, f"keys must be strings, got {_short(key)}")
        if key in result:
            loader.duplicates.append((line, key))
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = line
    return result


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.lines = [child.start_mark.line + 1 for child in node.value]
    return result


def _construct_int(loader: _LineLoader, node: yaml.ScalarNode) -> int:
    # YAML 1.2: a leading 0 is decimal (YAML 1.1 read `09` as a broken octal number).
    text = str(loader.construct_scalar(node)).replace("_", "")
    try:
        return int(text[2:], 16) if text[:2].lower() == "0x" else int(text, 10)
    except ValueError:
        raise YamlProblem(node.start_mark.line + 1, f"{_short(text)} is not a whole number (or has too many digits)") from None


# YAML 1.2 booleans and numbers: under YAML 1.1 the key ``on:`` (retry.on) and values such
# as ``no`` turn into true/false, ``reset: 12:30`` into the base-60 number 750, and
# ``2024-01-31`` into a date.
_YAML11 = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp"}
_LineLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _YAML11]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_LineLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_LineLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
_LineLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)
_LineLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def decode(data: bytes) -> str:
    """The UTF-8 text of a file (a leading byte-order mark dropped); raises YamlProblem."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        start = exc.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data.count(b"\n", 0, start) + 1
        column = start - (data.rfind(b"\n", 0, start) + 1) + 1
        raise YamlProblem(line, f"not UTF-8 text: byte 0x{data[start]:02x} at column {column}") from None


_FORBIDDEN = yaml.reader.Reader.NON_PRINTABLE


def read_yaml(text: str) -> tuple[Any, list[tuple[int, str]]]:
    """The document's value and the (line, key) of every duplicate key; raises YamlProblem."""
    if m := _FORBIDDEN.search(text):
        line = text.count("\n", 0, m.start()) + 1
        column = m.start() - (text.rfind("\n", 0, m.start()) + 1) + 1
        raise YamlProblem(line, f"character U+{ord(m.group()):04X} is not allowed in YAML (column {column})")
    loader = _LineLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_expansion(node)
        value = loader.construct_document(node) if node is not None else None
    except YamlProblem:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise YamlProblem(line, f"invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise YamlProblem(1, f"invalid YAML: {type(exc).__name__}") from None
    except RecursionError:
        raise YamlProblem(1, "nested too deeply") from None
    finally:
        loader.dispose()
    return value, loader.duplicates


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document that aliases expand beyond MAX_VALUES values or MAX_DEPTH levels.

    Each node is measured once (aliases share nodes), walking without recursion; a node
    that contains itself through an alias counts as nothing where it recurs, and is left
    to the constructor, which refuses it.
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        children = _children(node)
        if finished:
            size[id(node)] = 1 + sum(size.get(id(c), 0) for c in children)
            depth[id(node)] = 1 + max((depth.get(id(c), 0) for c in children), default=0)
            open_nodes.discard(id(node))
            line = node.start_mark.line + 1
            if size[id(node)] > MAX_VALUES:
                raise YamlProblem(line, f"expands to more than {MAX_VALUES} values (anchors and aliases counted each time they are used)")
            if depth[id(node)] > MAX_DEPTH:
                raise YamlProblem(line, f"nested more than {MAX_DEPTH} levels deep (through aliases)")
            continue
        if id(node) in size or id(node) in open_nodes:
            continue
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size and id(c) not in open_nodes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
