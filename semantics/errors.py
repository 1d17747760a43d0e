"""Errors raised by the semantics stage, each naming where in the input it comes from.

Frontends raise `ConfigError` for input that does not parse or that uses a field L7FP does not model;
the CLI turns it into exit code 2 with `file:line: key: message`. Nothing in a config is ever skipped
silently: a field is either modelled, listed as having no effect on request handling, or an error.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Origin:
    """Where an IR node came from: file, 1-based line, and the dotted key path inside the document."""

    file: str
    line: int
    key: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key}"


class ConfigError(Exception):
    """Bad or unsupported policy input. Always carries the origin (file, line, key)."""

    def __init__(self, origin: Origin, message: str):
        super().__init__(f"{origin}: {message}")
        self.origin = origin
        self.message = message


class RequestError(Exception):
    """A request file that cannot be read as an HTTP request at all (not an Envoy codec error)."""
