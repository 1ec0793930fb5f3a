"""Masking secret values out of a byte stream (command output, logs), chunk by chunk.

Every occurrence of a value is replaced, also one split across chunks. Where occurrences
overlap (two values, or one value with itself), the whole overlapping run becomes one
replacement, so no piece of any value shows; occurrences that merely touch are replaced
one by one. The result is the same however the stream is cut into chunks.

Values shorter than :data:`MIN_LENGTH` (4) bytes are not masked: replacing every ``a`` or
``10`` in the output would garble it while hiding next to nothing. Values are matched as
their UTF-8 bytes.

A :class:`Masker` holds back only what it must: the tail of the data so far that is the
beginning of some value (so fewer bytes than the longest value has); output is not delayed
when nothing matches. A run of overlapping occurrences that may still grow (``0000`` in a
stream of zeros) has its replacement emitted as soon as it is seen, and the rest of the run
is swallowed as it arrives, so memory stays bounded. When a chunk holds none of the values'
first bytes and nothing is held back, it is returned as it is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MIN_LENGTH = 4
REPLACEMENT = b"********"


class Masker:
    """``masker = Masker(values)``; ``out = masker.feed(chunk)`` for every chunk, then
    ``out = masker.flush()`` at the end of the stream."""

    def __init__(self, values: Iterable[str | bytes], replacement: bytes = REPLACEMENT) -> None:
        found = {v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values}
        self.values: list[bytes] = sorted(
            (v for v in found if len(v) >= MIN_LENGTH), key=lambda v: (-len(v), v)
        )
        self.replacement = bytes(replacement)
        self._pending = b""
        self._covered = 0  # bytes at the start of _pending inside a run already replaced
        self._longest = len(self.values[0]) if self.values else 0
        if self.values:
            alternatives = b"|".join(re.escape(v) for v in self.values)  # longest first
            # A lookahead finds every start, overlapping ones too, with the longest value there.
            self._finder: re.Pattern[bytes] | None = re.compile(b"(?=(" + alternatives + b"))")
            firsts = sorted({v[0] for v in self.values})
            self._first = re.compile(b"[" + b"".join(re.escape(bytes([b])) for b in firsts) + b"]")
        else:
            self._finder = None

    def __repr__(self) -> str:
        return f"<Masker of {len(self.values)} values>"  # never the values

    @property
    def pending(self) -> int:
        """How many bytes are held back (fewer than the longest value's length)."""
        return len(self._pending)

    @property
    def covered(self) -> int:
        """How many of the held-back bytes are inside a run whose replacement is out."""
        return self._covered

    def restore(self, covered: int) -> None:
        """Carry on a stream (after a restart) whose held-back bytes will be fed again:
        ``covered`` as :attr:`covered` was when they were held back."""
        self._covered = max(0, int(covered))

    def feed(self, data: bytes) -> bytes:
        """What of the stream so far is safe to emit now, masked."""
        if self._finder is None:
            return bytes(data)
        if not self._pending and self._first.search(data) is None:
            return bytes(data)  # the fast path: nothing here can start a value
        buffer = self._pending + data
        cut = self._hold_from(buffer)
        out, self._covered = self._render(buffer, self._runs(buffer), cut)
        self._pending = buffer[cut:]
        return out

    def flush(self) -> bytes:
        """The rest, masked, at the end of the stream (a partial value is not a value)."""
        buffer = self._pending
        if not buffer:
            return b""
        out, _ = self._render(buffer, self._runs(buffer), len(buffer))
        self._pending, self._covered = b"", 0
        return out

    def mask(self, data: bytes) -> bytes:
        """One whole piece of data, masked (on its own: not part of the stream fed)."""
        if self._finder is None:
            return bytes(data)
        return self._render_whole(data)

    # -- helpers ----------------------------------------------------------------------------

    def _render_whole(self, data: bytes) -> bytes:
        saved = self._covered
        self._covered = 0
        try:
            return self._render(data, self._runs(data), len(data))[0]
        finally:
            self._covered = saved

    def _runs(self, buffer: bytes) -> list[tuple[int, int]]:
        """The masked runs of ``buffer``: occurrences, overlapping ones merged. The first
        ``self._covered`` bytes are the end of a run already replaced in the output: any
        occurrence starting there continues it."""
        assert self._finder is not None
        runs: list[tuple[int, int]] = [(0, self._covered)] if self._covered else []
        for match in self._finder.finditer(buffer):
            start = match.start()
            end = start + len(match.group(1))
            if runs and start < runs[-1][1]:
                if end > runs[-1][1]:
                    runs[-1] = (runs[-1][0], end)
            else:
                runs.append((start, end))
        return runs

    def _hold_from(self, buffer: bytes) -> int:
        """Where the tail that is the beginning of some value (and not all of it) starts;
        ``len(buffer)`` when there is none. Nothing before it can change any more."""
        size = len(buffer)
        for match in self._first.finditer(buffer, max(0, size - self._longest + 1)):
            tail = buffer[match.start() :]
            for value in self.values:
                if len(value) > len(tail) and value.startswith(tail):
                    return match.start()
        return size

    def _render(self, buffer: bytes, runs: list[tuple[int, int]], cut: int) -> tuple[bytes, int]:
        """``buffer[:cut]`` masked, and how far a run reaching past ``cut`` goes beyond it
        (its replacement is emitted now, once; the rest of it is swallowed later)."""
        out: list[bytes] = []
        at = 0
        covered = 0
        for index, (start, end) in enumerate(runs):
            if start >= cut:
                if index == 0 and self._covered:  # nothing emitted: still inside that run
                    covered = end - cut
                break
            out.append(buffer[at:start])
            if not (index == 0 and self._covered):  # that run's replacement is out already
                out.append(self.replacement)
            at = end
            if end > cut:
                covered, at = end - cut, cut
        out.append(buffer[at:cut])
        return b"".join(out), covered


def mask_text(text: str, values: Iterable[str | bytes], replacement: str = "********") -> str:
    """``text`` with the values masked (a convenience for whole strings, e.g. messages)."""
    masker = Masker(values, replacement.encode("utf-8"))
    return masker.mask(text.encode("utf-8")).decode("utf-8", "replace")


__all__ = ["MIN_LENGTH", "REPLACEMENT", "Masker", "mask_text"]
