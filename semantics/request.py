"""A request as L7FP reasons about it: the raw bytes of one HTTP/1.1 request on a connection, plus
the connection's addresses. And `Outcome`, what a client and an upstream can observe of Envoy's
handling of it. Shared by the interpreter, the CLI (`l7fp explain`) and the differential tests.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Request:
    raw: bytes
    source: tuple[str, int] = ("127.0.0.1", 40000)
    destination: tuple[str, int] | None = None  # None: the policy's listener address

    @classmethod
    def from_file(cls, path: str, **kwargs) -> "Request":
        """A .http file holds the request bytes as sent. Files written with bare LF line ends (as
        editors do) are sent that way too: Envoy accepts bare LF, so their meaning is the same."""
        with open(path, "rb") as handle:
            return cls(handle.read(), **kwargs)


@dataclass(frozen=True)
class Outcome:
    """forward (to `cluster`, request-target `upstream_path`) or local_reply (`status`, `body`)."""

    action: str
    cluster: str | None = None
    upstream_path: str | None = None
    upstream_authority: str | None = None
    status: int | None = None
    body: str | None = None
    location: str | None = None
    rule: str = ""
    details: str = field(default="", compare=False)

    @classmethod
    def forward(cls, cluster: str, path: str, authority: str, rule: str) -> "Outcome":
        return cls("forward", cluster=cluster, upstream_path=path, upstream_authority=authority, rule=rule,
                   details="via_upstream")

    @classmethod
    def reply(cls, status: int, body: str, rule: str, details: str, location: str | None = None) -> "Outcome":
        return cls("local_reply", status=status, body=body, location=location, rule=rule, details=details)

    def to_json(self) -> dict:
        return asdict(self)

    def observable(self) -> tuple:
        """What the correctness contract compares (rule names and details are explanations)."""
        if self.action == "forward":
            return ("forward", self.cluster, self.upstream_path, self.upstream_authority)
        return ("local_reply", self.status, self.body, self.location)
