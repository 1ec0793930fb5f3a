"""Progress of ``up`` and ``down``, as the caller wants it shown (the CLI: rich spinners)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class Step:
    """One step of the work, shown while it runs; ``update`` changes what it says,
    ``done`` what it says once finished."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.final = text

    def update(self, text: str) -> None:
        self.text = text

    def done(self, text: str) -> None:
        self.final = text


class Reporter:
    """Progress, as the caller wants it shown; this one shows nothing (the CLI's shows rich
    spinners)."""

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[Step]:
        yield Step(text)

    def note(self, text: str) -> None:
        pass
