"""The callback bridge's settings (:class:`BridgeConfig`) and the checks they share with the
bridge itself: light to import (no HTTP client), since every sandbox spec refers to it."""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import InvalidArgumentError
from ..secrets.refs import MaybeSecret
from .bridge_paths import canonical_segment, normalise_path

KiB = 1024
MiB = 1024 * KiB

RESPONSE_LIMIT = 16 * MiB
"""The largest upstream response body handed back to the sandbox; larger is a 502."""
MAX_HEAD = 32 * KiB
"""The largest request line plus headers the sandbox may send (else 431 and close)."""
READ_TIMEOUT = 300.0
"""How long a connection may stay silent (idle between requests or mid-request)."""
MAX_RECORD_PATH = 2048

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"[\x20-\x7e\t]*")
# Headers that describe one hop, the framing, or the bridge's own credential: never copied.
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
_NOT_FROM_SANDBOX = _HOP | {"authorization", "x-sandlot-bridge-token"}
# A pattern's literal segment: RFC 3986 pchar and '%' escapes (then checked and made canonical
# like a request's path segment, which is what it is matched against).
_SEGMENT = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()+,;=:@]|%[0-9A-Fa-f]{2})+")
_BAD_QUERY = re.compile(rb"#|[^\x21-\x7e]")


def _header_name(name: str, *, what: str) -> str:
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"invalid {what} name {name!r}: not an HTTP token")
    if name.lower() in _HOP:
        raise ValueError(f"{what} {name!r} is set by the bridge itself")
    return name


class BridgeConfig(BaseModel):
    """What a sandbox may call back: one target, its credentials, the allowed routes."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    target: str
    """``http(s)://host[:port][/base]``: requests go to base + their own path."""
    headers: dict[str, MaybeSecret] = Field(default_factory=dict, max_length=64)
    """Set on every forwarded request (credentials); values may be secret references."""
    routes: list[tuple[str, str]] = Field(min_length=1, max_length=256)
    """(METHOD or "*", pattern): ``*`` one path segment, a final ``**`` the rest."""
    body_limit: Annotated[int, Field(ge=0, le=64 * MiB)] = 256 * KiB
    queue: Annotated[int, Field(ge=1, le=4096)] = 64
    timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    request_headers: list[str] = Field(
        default_factory=lambda: ["accept", "content-type", "if-match", "if-none-match"],
        max_length=64,
    )
    response_headers: list[str] = Field(
        default_factory=lambda: ["content-type", "etag", "last-modified"], max_length=64
    )

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        if len(value) > 2048:
            raise ValueError("target URL longer than 2048 characters")
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"invalid target URL {value!r}: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"invalid target URL {value!r}: need http(s)://host[:port][/path]")
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise ValueError("the target URL must not carry credentials: use headers")
        if parts.query or parts.fragment or "?" in value or "#" in value:
            raise ValueError("the target URL must have no query or fragment")
        if port == 0:
            raise ValueError("invalid target port 0")
        path = parts.path.rstrip("/")
        if path:
            try:
                path = normalise_path(path.encode("utf-8", "surrogateescape")).decode()
            except InvalidArgumentError as exc:
                raise ValueError(f"invalid target path {path!r}: {exc}") from None
        return f"{parts.scheme}://{parts.netloc}{path}"

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, MaybeSecret]) -> dict[str, MaybeSecret]:
        seen: set[str] = set()
        for name, item in value.items():
            _header_name(name, what="header")
            if name.lower() in seen:
                raise ValueError(f"header {name!r} given twice")
            seen.add(name.lower())
            if isinstance(item, str) and not _HEADER_VALUE.fullmatch(item):
                raise ValueError(f"header {name!r}: value must be printable ASCII")
        return value

    @field_validator("routes")
    @classmethod
    def _routes(cls, value: list[tuple[str, str]]) -> list[tuple[str, str]]:
        routes = []
        for method, pattern in value:
            method = method.upper()
            if method != "*" and not _TOKEN.fullmatch(method):
                raise ValueError(f"invalid route method {method!r}")
            _compile(pattern)
            routes.append((method, pattern))
        return routes

    @field_validator("request_headers", "response_headers")
    @classmethod
    def _allowlist(cls, value: list[str]) -> list[str]:
        names: list[str] = []
        for name in value:
            _header_name(name, what="allowlisted header")
            lower = name.lower()
            if lower in _NOT_FROM_SANDBOX:
                raise ValueError(f"header {name!r} cannot be allowlisted")
            if lower not in names:
                names.append(lower)
        return names


def _compile(pattern: str) -> re.Pattern[bytes]:
    """A route pattern as a regular expression over a canonical path (:func:`normalise_path`)."""
    if len(pattern) > 2048 or not pattern.startswith("/"):
        raise ValueError(f"invalid route pattern {pattern!r}: must start with '/'")
    segments = pattern[1:].split("/")
    parts = []
    for i, segment in enumerate(segments):
        if segment == "**" and i == len(segments) - 1:
            parts.append(r"[^/].*")
        elif segment == "*":
            parts.append(r"[^/]+")
        elif segment == "" and i == len(segments) - 1:
            parts.append("")  # "/" alone, or a trailing slash
        elif _SEGMENT.fullmatch(segment):
            try:
                literal = canonical_segment(segment.encode())
            except InvalidArgumentError as exc:
                raise ValueError(f"invalid route pattern {pattern!r}: {exc}") from None
            parts.append(re.escape(literal.decode()))
        else:
            raise ValueError(
                f"invalid route pattern {pattern!r}: segment {segment!r} (use '*' for one "
                "whole segment, '**' as the last segment for the rest)"
            )
    return re.compile(("/" + "/".join(parts)).encode())
