"""The sync face matches the async one, member for member.

Every ``Async*`` class of ``sandlot.sdk`` has a sync twin registered with
:func:`sandlot.sdk.mirror.mirror`; for each pair, the public members, their kinds, their
signatures (parameter names, kinds, defaults and annotations, ``await`` aside) and their
docstrings must agree. The sync docstrings are written by ``scripts/sync_docs.py`` from the
async ones; where a sync member says it otherwise on purpose, :data:`DIFFERENT` says which
and why.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import re
import sys
import typing
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import sandlot.sdk
from sandlot.sdk.mirror import PAIRS

# What an async annotation reads as on the sync face.
ASYNC_TO_SYNC = {
    "AsyncSandbox": "Sandbox",
    "AsyncSession": "Session",
    "AsyncCommands": "Commands",
    "AsyncCommandHandle": "CommandHandle",
    "AsyncFiles": "Files",
    "AsyncExecutionHandle": "ExecutionHandle",
    "AsyncPty": "Pty",
    "AsyncPtyHandle": "PtyHandle",
    "AsyncVolumes": "Volumes",
    # Awaitable and ``async with``-able: the sync face returns the sandbox itself.
    "_Creating": "Sandbox",
    "_Attaching": "Sandbox",
}
SYNC_ALIASES = {"_Attached": "Sandbox"}  # a Sandbox whose ``with`` detaches

# (sync class, member) marked ``@differs``: why its docstring is not its twin's.
DIFFERENT = {
    ("Session", "sandbox"): "a context manager: `with` where the async face has `async with`",
}
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "sync_docs.py"

# Context-manager protocols: the sync face's dunders for the async ones.
DUNDERS = {"__aenter__": "__enter__", "__aexit__": "__exit__"}


def _normalize(annotation: Any, names: dict[str, str]) -> str:
    if annotation is inspect.Parameter.empty:
        return ""
    text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    text = text.replace("builtins.", "").replace("typing.", "")
    text = re.sub(r"Awaitable\[(.*)\]$", r"\1", text)
    text = re.sub(r"AsyncGenerator\[(.*), None\]$", r"Iterator[\1]", text)
    text = re.sub(r"(AsyncIterator|Generator)\[(.*?)(, None, None)?\]$", r"Iterator[\2]", text)
    for old, new in names.items():
        text = re.sub(rf"\b{old}\b", new, text)
    return text


def _shape(func: Any, names: dict[str, str]) -> list[Any]:
    signature = inspect.signature(func)
    params = [
        (p.name, p.kind, repr(p.default), _normalize(p.annotation, names))
        for p in signature.parameters.values()
    ]
    return [params, _normalize(signature.return_annotation, names)]


def _kind(member: Any) -> str:
    for kind in (property, classmethod, staticmethod):
        if isinstance(member, kind):
            return kind.__name__
    return "method" if callable(member) else type(member).__name__


def _function(member: Any) -> Any:
    if isinstance(member, (classmethod, staticmethod)):
        return member.__func__
    if isinstance(member, property):
        return member.fget
    return member


def _members(cls: type) -> dict[str, Any]:
    """Public members and context-manager dunders, through the MRO (not ``object``'s)."""
    found: dict[str, Any] = {}
    for klass in reversed(cls.__mro__[:-1]):
        for name, member in vars(klass).items():
            if not name.startswith("_") or name in DUNDERS or name in DUNDERS.values():
                found[name] = member
    return found


def _pairs() -> list[tuple[type, type]]:
    return [(twin, sync) for sync, twin in PAIRS.items()]


def _members_of_pairs() -> list[Any]:
    cases = []
    for twin, sync in _pairs():
        for name in _members(twin):
            cases.append(pytest.param(twin, sync, name, id=f"{sync.__name__}.{name}"))
    return cases


def test_every_async_class_has_a_sync_twin() -> None:
    modules = [
        importlib.import_module(f"sandlot.sdk.{m.name}")
        for m in pkgutil.iter_modules(sandlot.sdk.__path__)
    ]
    public = {
        obj
        for module in modules
        for name, obj in vars(module).items()
        if name.startswith("Async") and inspect.isclass(obj) and obj.__module__ == module.__name__
    }
    assert public == set(PAIRS.values())
    for sync, twin in PAIRS.items():
        assert getattr(sandlot.sdk, sync.__name__) is sync
        assert getattr(sandlot.sdk, twin.__name__) is twin
        assert inspect.getdoc(sync) and inspect.getdoc(twin), f"{sync.__name__}: no docstring"


@pytest.mark.parametrize(("twin", "sync"), _pairs(), ids=lambda c: c.__name__)
def test_same_public_members(twin: type, sync: type) -> None:
    expected = {DUNDERS.get(name, name) for name in _members(twin)}
    assert set(_members(sync)) == expected
    assert _normalize_fields(twin, ASYNC_TO_SYNC) == _normalize_fields(sync, SYNC_ALIASES)


def _normalize_fields(cls: type, names: dict[str, str]) -> dict[str, str]:
    """Instance attributes declared in the class body (``commands: AsyncCommands``)."""
    fields = {}
    for klass in cls.__mro__[:-1]:
        for name, annotation in vars(klass).get("__annotations__", {}).items():
            if not name.startswith("_"):
                fields.setdefault(name, _normalize(annotation, names))
    return fields


@pytest.mark.parametrize(("twin", "sync", "name"), _members_of_pairs())
def test_same_member(twin: type, sync: type, name: str) -> None:
    mine = _members(twin)[name]
    theirs = _members(sync)[DUNDERS.get(name, name)]
    assert _kind(mine) == _kind(theirs)

    # A coroutine function on the async face is a plain one on the sync face; an async
    # generator an ordinary generator.
    func, other = _function(mine), _function(theirs)
    if inspect.isasyncgenfunction(func):
        assert inspect.isgeneratorfunction(other)
    else:
        assert not inspect.iscoroutinefunction(other) and not inspect.isasyncgenfunction(other)

    assert _shape(func, ASYNC_TO_SYNC) == _shape(other, SYNC_ALIASES)
    overloads = [_shape(f, ASYNC_TO_SYNC) for f in typing.get_overloads(func)]
    assert overloads == [_shape(f, SYNC_ALIASES) for f in typing.get_overloads(other)]

    if name in DUNDERS:
        return
    doc, sync_doc = inspect.getdoc(func), inspect.getdoc(other)
    assert doc, f"{twin.__name__}.{name} has no docstring"
    assert sync_doc, f"{sync.__name__}.{name} has no docstring"
    if (sync.__name__, name) in DIFFERENT:
        return
    note = getattr(other, "__sync_note__", None)
    assert sync_doc == (doc if note is None else f"{doc}\n\n{note}")


def test_the_listed_differences_are_the_marked_ones() -> None:
    marked = {
        (sync.__name__, name)
        for sync in PAIRS
        for name, member in _members(sync).items()
        if getattr(_function(member), "__sync_differs__", None) is not None
    }
    assert marked == set(DIFFERENT)


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sync_docs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sync_docstrings_are_generated() -> None:
    generator = _generator()
    for path in sorted({Path(sys.modules[c.__module__].__file__ or "") for c in PAIRS}):
        if generator.render(path) != path.read_text():
            pytest.fail(f"{path.name}: run python scripts/sync_docs.py", pytrace=False)
