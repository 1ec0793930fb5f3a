"""The bridge's request-path normaliser (``sandlot.egress.bridge_paths``): examples of each rule,
then properties over generated paths: every traversal spelling is refused, and whatever is
accepted reads as the same segments to every upstream modelled here (decoding up to five
times, dropping ``;`` parameters, folding Unicode, splitting on ``\\``)."""

from __future__ import annotations

import time
import unicodedata
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandlot.egress.bridge_paths import (
    MAX_DECODINGS,
    MAX_LENGTH,
    MAX_SEGMENTS,
    canonical_segment,
    normalise_path,
)
from sandlot.errors import InvalidArgumentError

TRAVERSALS = [
    "/a/..",
    "/a/../b",
    "/a/./b",
    "/a/..;/b",
    "/a/..;x=1/b",
    "/a/.;/b",
    "/a/.%2e;/b",
    "/a/%2e%2E/b",
    "/a/%2e/b",
    "/a/%252e%252e/b",
    "/a/%25252e%25252e/b",
    "/a/%2525252e%2525252e/b",
    "/a/.%252e/b",
    "/a/..%3b/b",
    "/a/..%253Bx/b",
    "/a/x;../b",
    "/a/x;..;y/b",
    "/a/.../b",
    "/a/..%20/b",
    "/a/%20../b",
    "/a/%E2%80%A5/b",  # U+2025 TWO DOT LEADER: '..' once folded (NFKC)
    "/a/%EF%BC%8E%EF%BC%8E/b",  # fullwidth full stops
    "/a/%C0%AE%C0%AE/b",  # overlong UTF-8 for '..'
    "/..",
    "/%2e%2e",
]

SPLITTERS = [
    "/a/b%2fc",
    "/a/b%2Fc",
    "/a/%2f",
    "/a/b%252fc",
    "/a/b%25252Fc",
    "/a/b%5cc",
    "/a/b%255cc",
    "/a/b\\c",
    "/a/b%00",
    "/a/b%2500",
    "/a/b%0d%0aX-Injected:%201",
    "/a/b%3Fx",
    "/a/b%253Fx",
    "/a/b%23x",
    "/a/b%7F",
    "/a/b%C2%85",  # NEL, a C1 control
    "/a/%EF%BC%8F",  # fullwidth solidus: '/' once folded
    "/a//b",
    "//a",
    "/a/;x/b",
    "/a/%3Bx/b",
    "/a/%20/b",
    "/a/b%zz",
    "/a/b%2",
    "/a/%u002e%u002e",
    "/a/b#c",
    "/a/b c",
    "/a/\u00e9",
    "a/b",
    "",
    "*",
    "http://127.0.0.1/a",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_every_spelling_of_a_dot_segment_is_refused(path: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"'\.' or '\.\.'|not UTF-8"):
        normalise_path(path.encode("latin-1"))


@pytest.mark.parametrize("path", SPLITTERS)
def test_encoded_delimiters_empty_segments_and_broken_escapes_are_refused(path: str) -> None:
    with pytest.raises(InvalidArgumentError):
        normalise_path(path.encode("utf-8"))


@pytest.mark.parametrize(
    ("path", "canonical"),
    [
        ("/", "/"),
        ("/runs/1", "/runs/1"),
        ("/runs/1/", "/runs/1/"),
        ("/a/file.json", "/a/file.json"),
        ("/a/a%2ejson", "/a/a.json"),  # an encoded '.' inside a name is just a '.'
        ("/a/%7e%41b", "/a/~Ab"),  # unreserved escapes decoded (RFC 3986 6.2.2.2)
        ("/a/%c3%a9", "/a/%C3%A9"),  # others kept, in upper case
        ("/a/%20x", "/a/%20x"),
        ("/a/50%25", "/a/50%25"),
        ("/a/%2541", "/a/%2541"),  # deeper escapes are data: kept as sent
        ("/a/%252541", "/a/%252541"),
        ("/a/x;v=1", "/a/x;v=1"),  # ';' parameters on an ordinary segment stay
        ("/a/x%3Bv", "/a/x%3Bv"),
        ("/a/{x}|[y]", "/a/%7Bx%7D%7C%5By%5D"),  # not path characters: escaped
        ("/a/.x/..x/x../x.", "/a/.x/..x/x../x."),
        ("/a/!$&'()*+,=:@", "/a/!$&'()*+,=:@"),
    ],
)
def test_accepted_paths_and_their_canonical_form(path: str, canonical: str) -> None:
    assert normalise_path(path.encode()) == canonical.encode()


def test_decodings_are_followed_to_a_bound_then_refused() -> None:
    deep = "A"
    for _ in range(MAX_DECODINGS):
        deep = deep.replace("%", "%25") if "%" in deep else "%41"
    assert normalise_path(f"/x/{deep}".encode()) == f"/x/{deep}".encode()
    with pytest.raises(InvalidArgumentError, match="more than"):
        normalise_path(f"/x/{deep.replace('%', '%25')}".encode())
    with pytest.raises(InvalidArgumentError, match="more than"):
        normalise_path(b"/x/%" + b"25" * 3000 + b"41")  # refused, not followed


def test_the_work_per_path_is_bounded() -> None:
    with pytest.raises(InvalidArgumentError, match="segments"):
        normalise_path(b"/a" * (MAX_SEGMENTS + 1))
    assert normalise_path(b"/a" * MAX_SEGMENTS) == b"/a" * MAX_SEGMENTS
    with pytest.raises(InvalidArgumentError, match="longer"):
        normalise_path(b"/" + b"a" * MAX_LENGTH)
    worst = [
        b"/" + b"%2541" * (MAX_LENGTH // 5 - 1),
        b"/" + b"{" * (MAX_LENGTH - 1),
        b"/" + b"%C3%A9" * (MAX_LENGTH // 6 - 1),
        b"/b%41" * MAX_SEGMENTS,
        b"/" + b"a;" * (MAX_LENGTH // 2 - 1),
    ]
    for path in worst:
        start = time.perf_counter()
        normalise_path(path)
        assert time.perf_counter() - start < 0.25, path[:20]  # milliseconds, in fact


# -- properties -----------------------------------------------------------------------------

_SAFE = "abcXYZ019-_~!$&'()*+,=:@"


@st.composite
def _spelled(draw: st.DrawFn, text: str) -> str:
    """``text`` with each character spelled as an attacker might: itself, or percent-encoded
    one or more times, hex digits in either case."""
    out = []
    for ch in text:
        depth = draw(st.integers(0, MAX_DECODINGS))
        spelled = ch
        for _ in range(depth):
            code = "%" + format(ord(spelled[0]) if len(spelled) == 1 else 0x25, "02x")
            code = code.upper() if draw(st.booleans()) else code
            spelled = code if len(spelled) == 1 else code + spelled[1:]
        out.append(spelled)
    return "".join(out)


@st.composite
def _dot_segment(draw: st.DrawFn) -> str:
    dots = draw(st.sampled_from([".", ".."]))
    segment = draw(_spelled(dots))
    if draw(st.booleans()):
        segment += draw(_spelled(";")) + draw(st.text(_SAFE, max_size=4))
    return segment


_segment = st.text(_SAFE + ".;%", min_size=1, max_size=12)


@given(
    before=st.lists(st.text(_SAFE, min_size=1, max_size=6), max_size=3),
    dot=_dot_segment(),
    after=st.lists(st.text(_SAFE, min_size=1, max_size=6), max_size=3),
)
@settings(max_examples=400, deadline=None)
def test_property_no_spelling_of_a_dot_segment_passes(
    before: list[str], dot: str, after: list[str]
) -> None:
    path = "/" + "/".join([*before, dot, *after])
    with pytest.raises(InvalidArgumentError):
        normalise_path(path.encode())


def _readings(segment: bytes) -> list[str]:
    """How upstreams of several kinds might read one segment."""
    out = []
    layer = segment
    for _ in range(MAX_DECODINGS + 2):
        text = layer.decode("utf-8", "replace")
        for t in (text, unicodedata.normalize("NFKC", text)):
            out += [t, t.split(";", 1)[0]]
        layer = unquote_to_bytes(layer)
    return out


@given(st.lists(st.one_of(_segment, st.text(min_size=1, max_size=4)), min_size=1, max_size=5))
@settings(max_examples=600, deadline=None)
def test_property_what_is_accepted_reads_the_same_everywhere(segments: list[str]) -> None:
    raw = ("/" + "/".join(segments)).encode("utf-8")
    try:
        clean = normalise_path(raw)
    except InvalidArgumentError:
        return
    assert normalise_path(clean) == clean  # canonical: a fixed point
    parts = clean[1:].split(b"/")
    for part, original in zip(parts, raw[1:].split(b"/"), strict=True):  # as many segments
        assert unquote_to_bytes(part) == unquote_to_bytes(original)  # same meaning, one decode
        for reading in _readings(part):
            assert reading.strip(" ") not in ("", ".", "..")
            assert not set(reading) & set("/\\?#\x00")


@given(st.binary(max_size=40))
@settings(max_examples=400, deadline=None)
def test_property_any_bytes_are_refused_or_made_canonical(data: bytes) -> None:
    try:
        clean = normalise_path(b"/" + data)
    except InvalidArgumentError:
        return
    assert clean.startswith(b"/") and all(0x21 <= b <= 0x7E for b in clean)
    assert normalise_path(clean) == clean


def test_canonical_segment_is_the_route_patterns_form_too() -> None:
    assert canonical_segment(b"a%7eb") == b"a~b"
    with pytest.raises(InvalidArgumentError):
        canonical_segment(b"..;")


@given(st.lists(st.text("ab.~!$&'()*+,=:@-_09", min_size=1, max_size=6), max_size=6))
@settings(max_examples=300, deadline=None)
def test_property_the_fast_path_agrees_with_the_segment_rules(segments: list[str]) -> None:
    path = ("/" + "/".join(segments)).encode()
    try:
        fast: bytes | None = normalise_path(path)
    except InvalidArgumentError:
        fast = None
    try:
        slow: bytes | None = b"/" + b"/".join(canonical_segment(s.encode()) for s in segments)
    except InvalidArgumentError:
        slow = None
    assert fast == slow
