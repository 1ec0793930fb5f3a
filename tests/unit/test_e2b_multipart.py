"""The E2B gateway's multipart glue (``sandlot.server.e2b.files``: python-multipart's push
parser driven by the request's chunks): parts split at every byte offset read the same,
filenames as clients send them, the bounds, and that the body is read only as it is taken."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import pytest

from sandlot.errors import InvalidArgumentError
from sandlot.server.e2b.files import MAX_PART_HEAD, MAX_PARTS, _filename, _Parts

BOUNDARY = b"xYz-b0undary"


def _part(head: bytes, content: bytes) -> bytes:
    return b"--" + BOUNDARY + b"\r\n" + head + b"\r\n\r\n" + content + b"\r\n"


def _body(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--" + BOUNDARY + b"--\r\n"


async def _chunks(chunks: Iterable[bytes], pulled: list[int] | None = None) -> AsyncIterator[bytes]:
    for chunk in chunks:
        if pulled is not None:
            pulled.append(len(chunk))
        yield chunk


async def _read(chunks: Iterable[bytes]) -> list[tuple[bytes, bytes]]:
    parts = _Parts(_chunks(chunks), BOUNDARY)
    found = []
    while (disposition := await parts.next_part()) is not None:
        found.append((disposition, b"".join([piece async for piece in parts.body()])))
    return found


# Content that looks like a delimiter's start, and a part without a filename.
BODY = _body(
    _part(b'Content-Disposition: form-data; name="file"; filename="/a"', b"one\r\n--xYz\r\n-"),
    _part(b"Content-Type: application/octet-stream\r\ncontent-disposition: form-data", b""),
    _part(b'Content-Disposition: form-data; name="file"; filename="b"', bytes(range(256)) * 3),
)
EXPECTED = [
    (b'form-data; name="file"; filename="/a"', b"one\r\n--xYz\r\n-"),
    (b"form-data", b""),
    (b'form-data; name="file"; filename="b"', bytes(range(256)) * 3),
]


async def test_parts_split_at_every_offset_read_the_same() -> None:
    assert await _read([BODY]) == EXPECTED
    for at in range(len(BODY) + 1):
        assert await _read([BODY[:at], BODY[at:]]) == EXPECTED, at
    assert await _read([BODY[i : i + 1] for i in range(len(BODY))]) == EXPECTED


async def test_a_part_its_reader_left_is_skipped() -> None:
    parts = _Parts(_chunks([BODY[i : i + 7] for i in range(0, len(BODY), 7)]), BOUNDARY)
    assert await parts.next_part() == EXPECTED[0][0]
    piece = await anext(parts.body())  # one piece taken, the rest left
    assert piece and EXPECTED[0][1].startswith(piece)
    assert await parts.next_part() == EXPECTED[1][0]
    assert await parts.next_part() == EXPECTED[2][0]
    assert await parts.next_part() is None


async def test_the_body_is_read_only_as_its_content_is_taken() -> None:
    pulled: list[int] = []
    head = b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; filename="f"\r\n\r\n'
    chunks = [head] + [b"x" * 1000] * 100 + [b"\r\n--" + BOUNDARY + b"--\r\n"]
    parts = _Parts(_chunks(chunks, pulled), BOUNDARY)
    await parts.next_part()
    assert len(pulled) == 1
    content = parts.body()
    await anext(content)
    await anext(content)
    assert len(pulled) <= 3  # a chunk at a time, never the whole body ahead of the reader


@pytest.mark.parametrize(
    ("disposition", "name"),
    [
        (b'form-data; name="file"; filename="/w/a b.txt"', "/w/a b.txt"),
        (b'form-data; filename="say %22hi%22"', 'say "hi"'),  # browsers, httpx
        (b'form-data; filename="say \\"hi\\""', 'say "hi"'),  # backslash-escaped
        ('form-data; filename="/w/héllo ☃.txt"'.encode(), "/w/héllo ☃.txt"),  # raw UTF-8
        (b'form-data; filename="a;b=c"', "a;b=c"),
        (b"form-data; filename=plain", "plain"),
        (b'form-data; FILENAME="upper"', "upper"),
        (b'form-data; filename="\xff"', "\udcff"),  # not UTF-8: kept, surrogate-escaped
        # RFC 7578 forbids the extended form: ignored, the plain one counts.
        (b"form-data; filename*=UTF-8''%E2%98%83.txt", None),
        (b"form-data; filename*=UTF-8''%E2%98%83; filename=\"s.txt\"", "s.txt"),
        (b'form-data; name="file"', None),
        (b'form-data; filename=""', None),
        (b"", None),
    ],
)
def test_filename(disposition: bytes, name: str | None) -> None:
    assert _filename(disposition) == name


async def test_too_many_parts() -> None:
    part = _part(b'Content-Disposition: form-data; filename="p"', b"x")
    assert len(await _read([_body(*[part] * MAX_PARTS)])) == MAX_PARTS
    parts = _Parts(_chunks([_body(*[part] * (MAX_PARTS + 1))]), BOUNDARY)
    taken = 0
    with pytest.raises(InvalidArgumentError, match=f"at most {MAX_PARTS}"):
        while await parts.next_part() is not None:
            taken += 1
    assert taken == MAX_PARTS  # the parts before the bound are given (and written) first


async def test_a_parts_headers_are_bounded_in_all() -> None:
    line = b"X-Pad: " + b"a" * (MAX_PART_HEAD // 4)  # each line well under the bound
    head = b"\r\n".join([line] * 5)
    with pytest.raises(InvalidArgumentError, match="too long"):
        await _read([_body(_part(head, b"x"))])
    endless = b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data; " + b"a" * (1 << 20)
    with pytest.raises(InvalidArgumentError):
        await _read([endless[i : i + 4096] for i in range(0, len(endless), 4096)])


@pytest.mark.parametrize(
    "body",
    [
        BODY[:-10],  # the closing delimiter never comes
        BODY[:40],  # mid-headers
        b"",
        b"a preamble that is not a delimiter\r\n" + BODY,
        b"--" + BOUNDARY + b"\r\nno colon here\r\n\r\nx\r\n",
        b"--not-the-boundary\r\n",
    ],
)
async def test_malformed_bodies_are_invalid_arguments(body: bytes) -> None:
    with pytest.raises(InvalidArgumentError):
        await _read([body])


async def test_leading_line_breaks_and_an_epilogue_are_allowed() -> None:
    assert await _read([b"\r\n\r\n" + BODY + b"an epilogue"]) == EXPECTED
