"""Pairs of faces: each sync class names its async twin, whose text it carries.

The async classes are the implementation and carry the documentation. ``@mirror(AsyncFiles)``
on ``Files`` registers the pair; ``scripts/sync_docs.py`` writes every public member's
docstring from the twin into the sync class's source, and tests/unit/test_sdk_faces.py checks
that the pairs agree member for member: names, kinds, signatures (``await`` aside) and
docstrings. A sync member may say more (``@adds``) or, for a stated reason, say it otherwise
(``@differs``; the test lists those).

Nothing here inspects signatures or rewrites anything at import: it only records.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

C = TypeVar("C", bound=type)
F = TypeVar("F", bound=Callable[..., Any])

PAIRS: dict[type, type] = {}  # sync class -> its async twin


def mirror(twin: type) -> Callable[[C], C]:
    """Class decorator: the sync class mirrors ``twin``."""

    def register(cls: C) -> C:
        PAIRS[cls] = twin
        return cls

    return register


def adds(note: str) -> Callable[[F], F]:
    """The sync method's docstring is its twin's, then ``note`` (what only the sync face does)."""

    def mark(func: F) -> F:
        func.__sync_note__ = note  # type: ignore[attr-defined]
        return func

    return mark


def differs(reason: str) -> Callable[[F], F]:
    """The sync method's docstring is written by hand, because of ``reason``."""

    def mark(func: F) -> F:
        func.__sync_differs__ = reason  # type: ignore[attr-defined]
        return func

    return mark
