#!/usr/bin/env python3
"""Write the sync face's docstrings from the async face's: one text, two faces.

The async classes of ``sandlot/sdk`` are the implementation and carry the documentation. Each
sync class names its twin with ``@mirror(AsyncX)`` (``sandlot/sdk/mirror.py``); this script
copies every public method's and property's docstring from the twin into the sync class's
source, so editors and ``help()`` show the same text on both faces. A member marked
``@adds(note)`` gets the twin's text and then the note; one marked ``@differs(reason)`` keeps
the docstring written by hand. ``tests/unit/test_sdk_faces.py`` runs the check::

    python scripts/sync_docs.py           # rewrite sandlot/sdk/sync*.py
    python scripts/sync_docs.py --check   # exit 1 if a sync docstring is out of date
"""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sandlot.sdk import mirror  # noqa: E402  (after the path is set)


def _function(member: object) -> object:
    if isinstance(member, (classmethod, staticmethod)):
        return member.__func__
    if isinstance(member, property):
        return member.fget
    return member


def expected_doc(sync: type, name: str) -> str | None:
    """The docstring ``sync.name`` must have (its raw text), or None to leave it be."""
    own = _function(vars(sync)[name])
    if getattr(own, "__sync_differs__", None) is not None:
        return None
    twin = mirror.PAIRS[sync]
    source = next((vars(k)[name] for k in twin.__mro__ if name in vars(k)), None)
    doc = getattr(_function(source), "__doc__", None)
    if doc is None:
        return None  # the test reports the missing docstring on the async side
    note = getattr(own, "__sync_note__", None)
    return doc if note is None else f"{inspect.cleandoc(doc)}\n\n{note}"


def _render(doc: str, indent: str) -> list[str]:
    """Source lines of a docstring at ``indent``, closing quotes on its last line."""
    if "\\" in doc or '"""' in doc:
        raise SystemExit(f"cannot copy a docstring with a backslash or triple quote: {doc!r}")
    first, *rest = inspect.cleandoc(doc).splitlines() or [""]
    lines = [indent + '"""' + first, *[indent + line if line else "" for line in rest]]
    lines[-1] += '"""'
    return lines


def _is_overload(node: ast.FunctionDef) -> bool:
    return any(
        (isinstance(d, ast.Name) and d.id == "overload")
        or (isinstance(d, ast.Attribute) and d.attr == "overload")
        for d in node.decorator_list
    )


def render(path: Path) -> str:
    """The file at ``path`` with its sync classes' docstrings as their twins' say."""
    text = path.read_text()
    lines = text.splitlines()
    by_name = {cls.__name__: cls for cls in mirror.PAIRS if cls.__module__.endswith(path.stem)}
    edits: list[tuple[int, int, list[str]]] = []  # (first line, end line, replacement)
    for node in ast.parse(text).body:
        if not isinstance(node, ast.ClassDef) or node.name not in by_name:
            continue
        for item in node.body:
            if not isinstance(item, ast.FunctionDef) or item.name.startswith("_"):
                continue
            if _is_overload(item):
                continue
            doc = expected_doc(by_name[node.name], item.name)
            if doc is None:
                continue
            first = item.body[0]
            indent = " " * first.col_offset
            has_doc = (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            )
            new = _render(doc, indent)
            assert first.end_lineno is not None
            if has_doc:
                edits.append((first.lineno - 1, first.end_lineno, new))
            else:
                edits.append((first.lineno - 1, first.lineno - 1, new))
    for start, end, new in sorted(edits, reverse=True):
        lines[start:end] = new
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    stale = []
    for path in sorted({Path(sys.modules[c.__module__].__file__ or "") for c in mirror.PAIRS}):
        wanted = render(path)
        if wanted != path.read_text():
            stale.append(path)
            if "--check" not in argv:
                path.write_text(wanted)
    for path in stale:
        verb = "is out of date" if "--check" in argv else "rewritten"
        print(f"{path.relative_to(ROOT)}: {verb}")
    return 1 if stale and "--check" in argv else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
