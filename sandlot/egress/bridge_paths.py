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
from urllib.parse import quote_from_bytes, unquote_to_bytes

from ..errors import InvalidArgumentError

MAX_DECODINGS = 4
"""Percent-decodings followed per segment; a segment that still changes after that many
(``%252525...``) is refused rather than followed further."""
MAX_SEGMENTS = 256
MAX_LENGTH = 8192
"""Segments in one path, and its length in bytes; more is refused (these bound the work one
request costs the host)."""

_BROKEN_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# With the unreserved characters (which quote_from_bytes never escapes), RFC 3986's pchar.
_SUB_DELIMS = "!$&'()*+,;=:@"
_TO_QUOTE = re.compile(rb"[^A-Za-z0-9\-._~!$&'()*+,;=:@]")
# A path whose segments are plain pchars (no '%', no ';'), none made of dots only: already
# canonical, and every reading of it is itself. Most paths; checked in one pass.
_PLAIN_PATH = re.compile(rb"(?:/(?!\.*(?:/|$))[A-Za-z0-9\-._~!$&'()*+,=:@]+)*/?")
_DELIMITERS = re.compile(r"[/\\?#\x00-\x1f\x7f-\x9f]")
_BLANK_FIRST = re.compile(r"\s*(?:;|$)")
_DOT_PART = re.compile(r"(?:^|;)\s*\.+\s*(?=;|$)")  # the segment, or a ';' part, all dots


def _hazard(text: str) -> str | None:
    """Why one reading of a segment is refused, or None."""
    if _DELIMITERS.search(text):
        return "an encoded '/', '\\', '?', '#' or control character"
    if _BLANK_FIRST.match(text):
        return "an empty or blank segment (or part before ';')"
    if _DOT_PART.search(text):
        return "a '.' or '..' segment"
    return None


def _readings(text: str) -> set[str]:
    """The next readings of one: percent-decoded once (leniently: a broken escape stays, as
    most servers leave it) and folded (NFKC)."""
    decoded = unquote_to_bytes(text) if "%" in text else text.encode()
    folded = text if text.isascii() else unicodedata.normalize("NFKC", text)
    try:
        return {decoded.decode(), folded}
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
    first, *escaped = raw.split(b"%")  # check_segment: each '%' starts a valid escape
    out = [_quote(first)]
    for piece in escaped:
        value = int(piece[:2], 16)
        out.append(chr(value) if value in _UNRESERVED else f"%{value:02X}")
        out.append(_quote(piece[2:]))
    return "".join(out).encode()


def _quote(data: bytes) -> str:
    return quote_from_bytes(data, _SUB_DELIMS) if _TO_QUOTE.search(data) else data.decode()


def normalise_path(path: bytes) -> bytes:
    """The canonical form of an origin-form request path (no query), or
    :class:`InvalidArgumentError` saying why it is refused."""
    if path[:1] != b"/":
        raise InvalidArgumentError("the path must start with '/'")
    if len(path) > MAX_LENGTH:
        raise InvalidArgumentError(f"the path is longer than {MAX_LENGTH} bytes")
    if path.count(b"/") <= MAX_SEGMENTS and _PLAIN_PATH.fullmatch(path):
        return path
    if re.search(rb"[^\x21-\x7e]|\\|#", path):
        raise InvalidArgumentError("the path must be printable ASCII without '\\' or '#'")
    segments = path[1:].split(b"/")
    if len(segments) > MAX_SEGMENTS:
        raise InvalidArgumentError(f"the path has more than {MAX_SEGMENTS} segments")
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
