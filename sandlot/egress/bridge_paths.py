"""Request paths for the callback bridge: one canonical form, checked against every way an
upstream might read it, so that what the route check saw is exactly what is forwarded.

Upstreams disagree about paths. Some decode percent-escapes twice (a proxy in front that
decodes, then the application), some drop ``;`` path parameters (Tomcat, Spring, Jetty:
``/..;x/`` is ``/../``), some fold Unicode (NFKC: U+2025 is ``..``) or trim spaces and dots
(Windows). :func:`normalise_path` refuses a path if *any* of those readings of one of its
segments could move it somewhere else, and otherwise returns its canonical form.

A segment is refused when, in its raw form, in any of its percent-decodings (applied until
nothing changes, at most :data:`MAX_DECODINGS` times; a deeper one is refused outright) or in
the NFKC form of one of them:

- it holds ``/``, ``\\``, ``?``, ``#``, a control byte or NUL (encoded delimiters: a later
  decoding would split the path differently from the route check), or bytes that are not
  UTF-8 (overlong forms such as ``%C0%AE`` for ``.``);
- it or one of its ``;``-separated parts, with spaces trimmed, is made of dots only (``.``,
  ``..``, ``...``), or its part before the first ``;`` is empty (``/;x/`` is ``//`` for an
  upstream that drops parameters).

Empty segments (``//``) are refused; a trailing ``/`` is kept. ``;`` in any other segment is
kept as it is: an upstream that drops the parameter sees the segment's first part, which is
itself checked and still one whole segment, so a route's ``*`` matches both readings, and a
literal route segment never matches a segment with parameters.

The canonical form (RFC 3986, section 6.2.2): escapes in upper case, escapes of unreserved
characters decoded (``%7E`` is ``~``, ``a%2Ejson`` is ``a.json``), every other byte that is not
a path character escaped; the meaning for an upstream that decodes once is unchanged. Deeper
escapes (``%2541``) are kept as they are: they are data to such an upstream.
"""

from __future__ import annotations

import re
import unicodedata

from ..errors import InvalidArgumentError

MAX_DECODINGS = 4
"""Percent-decodings followed per segment; a segment that still changes after that many
(``%252525...``) is refused rather than followed further."""

_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_BROKEN_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# RFC 3986 pchar, unescaped: unreserved, sub-delims, ':' and '@'.
_PCHAR = _UNRESERVED | frozenset(b"!$&'()*+,;=:@")
_DELIMITERS = re.compile(r"[/\\?#\x00-\x1f\x7f-\x9f]")
_DOTS = re.compile(r"\s*\.+\s*")


def _hazard(text: str) -> str | None:
    """Why one reading of a segment is refused, or None."""
    if _DELIMITERS.search(text):
        return "an encoded '/', '\\', '?', '#' or control character"
    parts = text.split(";")
    if not parts[0].strip():
        return "an empty or blank segment (or part before ';')"
    if any(_DOTS.fullmatch(part) for part in parts):
        return "a '.' or '..' segment"
    return None


def _readings(text: str) -> set[str]:
    """The next readings of one: percent-decoded once (leniently: a broken escape stays, as
    most servers leave it) and folded (NFKC)."""
    raw = text.encode()
    decoded = _ESCAPE.sub(lambda m: bytes([int(m[1], 16)]), raw)
    try:
        return {decoded.decode(), unicodedata.normalize("NFKC", text)}
    except UnicodeDecodeError:
        raise InvalidArgumentError("decodes to bytes that are not UTF-8") from None


def check_segment(raw: bytes) -> None:
    """Refuse (:class:`InvalidArgumentError`) a segment that some reading of it turns into a
    dot segment, an empty one, or more than one."""
    try:
        if _BROKEN_ESCAPE.search(raw) or not raw.isascii():
            raise InvalidArgumentError("not ASCII, or '%' without two hex digits")
        seen = {raw.decode("ascii")}
        todo = set(seen)
        for _ in range(MAX_DECODINGS + 1):
            for text in todo:
                why = _hazard(text)
                if why is not None:
                    raise InvalidArgumentError(why)
            todo = set().union(*(_readings(text) for text in todo)) - seen
            if not todo:
                return
            seen |= todo
        raise InvalidArgumentError(f"percent-encoded more than {MAX_DECODINGS} times")
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"segment {_show(raw)}: {exc}") from None


def canonical_segment(raw: bytes) -> bytes:
    """``raw`` checked (:func:`check_segment`) and in canonical form."""
    check_segment(raw)
    out = bytearray()
    i = 0
    while i < len(raw):
        byte = raw[i]
        if byte == 0x25:  # '%': check_segment made sure two hex digits follow
            value = int(raw[i + 1 : i + 3], 16)
            out += bytes([value]) if value in _UNRESERVED else b"%%%02X" % value
            i += 3
            continue
        out += bytes([byte]) if byte in _PCHAR else b"%%%02X" % byte
        i += 1
    return bytes(out)


def normalise_path(path: bytes) -> bytes:
    """The canonical form of an origin-form request path (no query), or
    :class:`InvalidArgumentError` saying why it is refused."""
    if path[:1] != b"/":
        raise InvalidArgumentError("the path must start with '/'")
    if re.search(rb"[^\x21-\x7e]|\\|#", path):
        raise InvalidArgumentError("the path must be printable ASCII without '\\' or '#'")
    segments = path[1:].split(b"/")
    out = []
    for i, segment in enumerate(segments):
        if not segment:
            if i != len(segments) - 1:
                raise InvalidArgumentError("the path has an empty segment ('//')")
            out.append(b"")
        else:
            out.append(canonical_segment(segment))
    return b"/" + b"/".join(out)


def _show(raw: bytes) -> str:
    text = raw.decode("ascii", "backslashreplace")
    return repr(text if len(text) <= 80 else text[:77] + "...")
