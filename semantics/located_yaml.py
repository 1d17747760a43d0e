"""YAML/JSON loading that remembers the line of every mapping key, and a cursor for walking it.

Used by the YAML frontends (Envoy, Istio) so that an error names file, line and key. A
`Node` wraps a loaded value with its origin; `Node.fields(...)` rejects keys the caller does not
model, which is how "nothing is silently ignored" is enforced. Envoy accepts both proto field names
(snake_case) and their JSON names (camelCase); `Node` normalises keys to snake_case when looking them
up, but map-typed fields (RBAC policy names, labels) keep their keys as written.
`read_policy_text` (also used by the DSL frontend) reads a policy file as UTF-8 text, or says why not.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator

import yaml

from .errors import ConfigError, Origin


class _LineMap(dict):
    """A dict that also records the line of each key (1-based) and of itself."""

    line: int = 0
    key_lines: dict


class _LineList(list):
    line: int = 0
    item_lines: list


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _LineMap:
    loader.flatten_mapping(node)
    result = _LineMap()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise yaml.constructor.ConstructorError(None, None, "unhashable key", key_node.start_mark)
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> _LineList:
    result = _LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


@dataclass(frozen=True)
class Document:
    """One YAML document of a (possibly multi-document) file."""

    file: str
    index: int
    root: "Node"


def _kind(value: Any) -> str:
    """What a YAML value is, in the words of a config's author."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    for kind, name in ((dict, "a mapping"), (list, "a list"), (str, "a string"), (int, "an integer"),
                       (float, "a number")):
        if isinstance(value, kind):
            return f"{name} ({value!r})" if kind in (int, float) else name
    return "nothing (null)" if value is None else type(value).__name__


def read_policy_text(path: str) -> str:
    """The file's text; a ConfigError naming the file (and the line of the first byte that is not
    UTF-8) when it cannot be read or is not text."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise ConfigError(Origin(path, 0, "(file)"), f"cannot read: {exc.strerror}") from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(Origin(path, line, "(file)"),
                          f"not UTF-8 text (byte {exc.start}): a policy is YAML, JSON or DSL text") from None


def load_documents(path: str, text: str | None = None) -> list[Document]:
    """All non-empty documents in a YAML or JSON file, as `Node` trees."""
    if text is None:
        text = read_policy_text(path)
    try:
        raw_docs = list(yaml.load_all(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark else 0
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(Origin(path, line, "(syntax)"), f"not valid YAML/JSON: {problem}") from exc
    docs = []
    for index, raw in enumerate(raw_docs):
        if raw is None:
            continue
        line = getattr(raw, "line", 1)
        docs.append(Document(path, index, Node(raw, path, line, "")))
    return docs


_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")


def snake(name: str) -> str:
    """Proto JSON name to field name: `urlPath` -> `url_path`; snake_case stays as it is."""
    if name.startswith("@"):
        return name
    return _CAMEL.sub(r"_\1", name).lower()


@dataclass(frozen=True)
class Node:
    """A loaded value plus where it is: file, line and key path (`a.b[2].c`)."""

    value: Any
    file: str
    line: int
    path: str

    @property
    def origin(self) -> Origin:
        return Origin(self.file, self.line, self.path or "(document)")

    def error(self, message: str) -> ConfigError:
        return ConfigError(self.origin, message)

    def _child_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    # --- mappings ---------------------------------------------------------------------------
    def is_map(self) -> bool:
        return isinstance(self.value, dict)

    def _require_map(self) -> dict:
        if not isinstance(self.value, dict):
            raise self.error(f"expected a mapping, got {_kind(self.value)}")
        return self.value

    def keys(self) -> list[str]:
        return [snake(str(k)) for k in self._require_map()]

    def _raw_key(self, name: str) -> Any:
        for key in self._require_map():
            if snake(str(key)) == name:
                return key
        return None

    def has(self, name: str) -> bool:
        return self._raw_key(name) is not None

    def get(self, name: str) -> "Node | None":
        key = self._raw_key(name)
        if key is None:
            return None
        value = self.value[key]
        line = self.value.key_lines.get(key, self.line) if isinstance(self.value, _LineMap) else self.line
        return Node(value, self.file, line, self._child_path(name))

    def req(self, name: str) -> "Node":
        child = self.get(name)
        if child is None:
            raise self.error(f"missing required field '{name}'")
        return child

    def deepest(self, path: str) -> "Node":
        """The node at a proto field path such as `static_resources.clusters[0].connect_timeout`,
        or the deepest one of its prefixes that exists (to point an outside error at a line)."""
        node = self
        for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
            if name:
                child = node.get(snake(name)) if node.is_map() else None
            else:
                items = node.value if isinstance(node.value, list) else []
                child = node.list()[int(index)] if int(index) < len(items) else None
            if child is None:
                return node
            node = child
        return node

    def fields(self, allowed: set[str] | frozenset[str], inert: set[str] | frozenset[str] = frozenset()) -> None:
        """Reject every key not in `allowed` (modelled) or `inert` (no effect on request handling)."""
        for key in self._require_map():
            name = snake(str(key))
            if name not in allowed and name not in inert:
                line = self.value.key_lines.get(key, self.line) if isinstance(self.value, _LineMap) else self.line
                where = Node(None, self.file, line, self._child_path(str(key)))
                raise where.error(
                    f"field '{key}' is not modelled by L7FP; supported here: {', '.join(sorted(allowed)) or '(none)'}")

    def one_of(self, names: list[str]) -> tuple[str, "Node"]:
        """Exactly one of a proto oneof must be set."""
        present = [n for n in names if self.has(n)]
        if len(present) != 1:
            raise self.error(f"expected exactly one of {', '.join(names)}, found {present or 'none'}")
        return present[0], self.req(present[0])

    def items(self) -> Iterator[tuple[str, "Node"]]:
        """Map-typed field entries; keys stay as written (they are names, not proto fields)."""
        mapping = self._require_map()
        for key, value in mapping.items():
            line = mapping.key_lines.get(key, self.line) if isinstance(mapping, _LineMap) else self.line
            yield str(key), Node(value, self.file, line, f"{self._child_path(str(key))}")

    # --- sequences and scalars ----------------------------------------------------------------
    def list(self) -> list["Node"]:
        if not isinstance(self.value, list):
            raise self.error(f"expected a list, got {_kind(self.value)}")
        lines = getattr(self.value, "item_lines", [self.line] * len(self.value))
        return [Node(v, self.file, lines[i], f"{self.path}[{i}]") for i, v in enumerate(self.value)]

    def str(self) -> str:
        # Envoy's proto JSON parsing refuses a number where a string goes (`prefix: 5`): so does this.
        if not isinstance(self.value, str):
            raise self.error(f"expected a string, got {_kind(self.value)}")
        return self.value

    def bool(self) -> bool:
        if not isinstance(self.value, bool):
            raise self.error(f"expected true or false, got {self.value!r}")
        return self.value

    def int(self) -> int:
        value = self.value
        if isinstance(value, dict) and set(map(snake, value)) == {"value"}:  # wrapper types
            value = next(iter(value.values()))
        if isinstance(value, bool):
            raise self.error(f"expected an integer, got {value!r}")
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value):
            return int(value)
        if not isinstance(value, int):
            raise self.error(f"expected an integer, got {value!r}")
        return value

    def wrapped_bool(self) -> bool:
        """google.protobuf.BoolValue: either a bare bool or {value: bool}."""
        value = self.value
        if isinstance(value, dict) and set(map(snake, value)) == {"value"}:
            value = next(iter(value.values()))
        if not isinstance(value, bool):
            raise self.error(f"expected true or false, got {value!r}")
        return value
