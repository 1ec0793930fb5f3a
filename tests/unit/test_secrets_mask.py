"""The Masker: every occurrence masked however the stream is chunked, checked against a
plain reference on random values, data and chunkings (Hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sandlot.secrets.mask import MIN_LENGTH, Masker, mask_text

STAR = b"*"


def reference(values: list[bytes], data: bytes, replacement: bytes = STAR) -> bytes:
    """The whole stream at once, by brute force: every occurrence of every value (of at
    least MIN_LENGTH bytes) at every position; overlapping ones merged; each run replaced."""
    wanted = {v for v in values if len(v) >= MIN_LENGTH}
    found = sorted(
        (i, i + len(v)) for v in wanted for i in range(len(data)) if data.startswith(v, i)
    )
    runs: list[list[int]] = []
    for start, end in found:
        if runs and start < runs[-1][1]:
            runs[-1][1] = max(runs[-1][1], end)
        else:
            runs.append([start, end])
    out, at = b"", 0
    for start, end in runs:
        out += data[at:start] + replacement
        at = end
    return out + data[at:]


def chunked(masker: Masker, data: bytes, cuts: list[int]) -> bytes:
    longest = max((len(v) for v in masker.values), default=1)
    out, at = [], 0
    for cut in [*sorted(set(cuts)), len(data)]:
        if cut > at:
            out.append(masker.feed(data[at:cut]))
            at = cut
            assert masker.pending < longest  # never more held back than a value's beginning
    out.append(masker.flush())
    assert masker.pending == 0
    return b"".join(out)


# A small alphabet, so values overlap, repeat and share prefixes often.
values_strategy = st.lists(st.text("abc", min_size=1, max_size=9).map(str.encode), max_size=5)
data_strategy = st.text("abcx", max_size=120).map(str.encode)


@settings(max_examples=600, deadline=None)
@given(values_strategy, data_strategy, st.lists(st.integers(0, 120), max_size=40))
def test_any_chunking_masks_like_the_whole_stream(
    values: list[bytes], data: bytes, cuts: list[int]
) -> None:
    masker = Masker(values, STAR)
    assert chunked(masker, data, [c for c in cuts if c < len(data)]) == reference(values, data)


@settings(max_examples=200, deadline=None)
@given(values_strategy, data_strategy)
def test_byte_by_byte_masks_like_the_whole_stream(values: list[bytes], data: bytes) -> None:
    masker = Masker(values, STAR)
    assert chunked(masker, data, list(range(len(data)))) == reference(values, data)
    assert masker.mask(data) == reference(values, data)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=12), max_size=4),
    st.binary(max_size=200),
    st.lists(st.integers(0, 200), max_size=30),
)
def test_arbitrary_bytes_mask_like_the_whole_stream(
    values: list[bytes], data: bytes, cuts: list[int]
) -> None:
    # Plant the values in the data, split across the cuts, so there is something to find.
    planted = data[: len(data) // 2] + b"".join(values) + data[len(data) // 2 :]
    masker = Masker(values, b"[hidden]")
    expected = reference(values, planted, b"[hidden]")
    assert chunked(masker, planted, [c for c in cuts if c < len(planted)]) == expected
    for value in values:
        if len(value) >= MIN_LENGTH:
            # Nothing shows between the masks (a stand-in for the masks could itself
            # spell a value: b"\0\0" twice is b"\0\0\0\0").
            assert all(value not in shown for shown in expected.split(b"[hidden]"))


def test_a_value_split_across_chunks_is_masked() -> None:
    masker = Masker(["hunter2-password"])
    out = masker.feed(b"login: hunt") + masker.feed(b"er2-pass") + masker.feed(b"word ok\n")
    assert out + masker.flush() == b"login: ******** ok\n"


def test_output_is_not_delayed_when_nothing_could_match() -> None:
    masker = Masker(["abcdef"])
    chunk = b"plain output, nothing secret\n"
    assert masker.feed(chunk) == chunk and masker.pending == 0
    assert masker.feed(b"tail ab") == b"tail "  # only the possible beginning waits
    assert masker.pending == 2
    assert masker.feed(b"x") == b"abx"  # not the value after all
    assert masker.feed(b"ends with a") == b"ends with "
    assert masker.flush() == b"a"  # a partial value at the end is not a value


def test_the_fast_path_returns_the_chunk_unchanged() -> None:
    masker = Masker(["Zebra-token"])
    chunk = b"no capital zed here\n" * 1000
    assert masker.feed(chunk) is chunk
    assert masker.feed(bytearray(b"abc")) == b"abc"


def test_overlapping_values_mask_the_longest_and_the_whole_run() -> None:
    masker = Masker(["secret", "secret-long", "longer-tail"], b"#")
    assert masker.mask(b"a secret-longer-tail b") == b"a # b"
    assert masker.mask(b"secret secret-long") == b"# #"
    assert masker.mask(b"secretsecret") == b"##"  # touching occurrences: one each


def test_short_values_are_not_masked_and_str_values_are_utf8() -> None:
    masker = Masker(["a", "10", "abc", "", "pässwort"], b"#")
    assert masker.values == ["pässwort".encode()]
    assert masker.mask("a 10 abc pässwort".encode()) == b"a 10 abc #"
    assert mask_text("token=pässwort;", ["pässwort"]) == "token=********;"
    assert Masker([]).feed(b"anything") == b"anything"
    assert Masker(["abc"]).flush() == b""


def test_a_run_that_never_ends_is_masked_once_in_bounded_memory() -> None:
    masker = Masker(["0000"], b"#")
    out = [masker.feed(b"x" + b"0" * 1000)]
    for _ in range(1000):
        out.append(masker.feed(b"0" * 1000))
        assert masker.pending < 4
    out.append(masker.feed(b"0y"))
    out.append(masker.flush())
    assert b"".join(out) == b"x#y"


def test_the_masker_never_shows_its_values() -> None:
    masker = Masker(["very-secret-value"])
    assert "very-secret" not in repr(masker)
