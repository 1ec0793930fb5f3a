"""One text for two faces: each sync class takes its docstrings from its async twin.

``@mirror(AsyncFiles)`` on ``Files`` gives every public member of ``Files`` written without a
docstring the one its twin has, so the documentation is written once, on the async class
(the implementation). A sync member that needs a remark of its own carries ``@adds("...")``:
its docstring is then the twin's followed by that remark. tests/unit/test_sdk_faces.py
checks that the pairs registered here agree member for member: names, kinds, signatures
(modulo ``await``) and docstrings.

Only ``__doc__`` is set, at import, by a loop over the class's own members: no signature is
inspected here, so importing the SDK stays cheap.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

C = TypeVar("C", bound=type)
F = TypeVar("F", bound=Callable[..., Any])

PAIRS: dict[type, type] = {}  # sync class -> its async twin, for the test


def adds(note: str) -> Callable[[F], F]:
    """Mark a sync method whose docstring is its twin's, then ``note`` (sync-only)."""

    def mark(func: F) -> F:
        func.__sync_note__ = note  # type: ignore[attr-defined]
        return func

    return mark


def mirror(twin: type) -> Callable[[C], C]:
    """Class decorator: fill the sync class's missing docstrings from ``twin``'s."""

    def apply(cls: C) -> C:
        PAIRS[cls] = twin
        for name, member in vars(cls).items():
            if name.startswith("_"):
                continue
            target = _function(member)
            own = target.__doc__ if target is not None else getattr(member, "__doc__", None)
            note = getattr(target, "__sync_note__", None)
            if own is not None and note is None:
                continue  # written out by hand: the test holds it to the twin's
            doc = _doc(twin, name)
            if doc is not None:
                _set_doc(member, doc if note is None else f"{inspect.cleandoc(doc)}\n\n{note}")
        return cls

    return apply


def _function(member: Any) -> Any:
    """The function behind a member: a method, a class or static method, a property's getter."""
    if isinstance(member, (classmethod, staticmethod)):
        return member.__func__
    if isinstance(member, property):
        return member.fget
    return member if callable(member) else None


def _doc(twin: type, name: str) -> str | None:
    for klass in twin.__mro__:
        if name in vars(klass):
            member = vars(klass)[name]
            target = _function(member)
            return target.__doc__ if target is not None else None
    return None


def _set_doc(member: Any, doc: str) -> None:
    target = _function(member)
    if target is not None:
        target.__doc__ = doc
    if isinstance(member, (classmethod, staticmethod, property)):
        member.__doc__ = doc  # what help() and pydoc read for these
