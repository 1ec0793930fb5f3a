"""Names a package exports but loads only when first used (PEP 562), so importing the package
costs nothing until then. Type checkers see the names through the package's own
``TYPE_CHECKING`` imports."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable
from typing import Any


def lazy_names(
    package: str, sources: dict[str, str], exported: Iterable[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``: each name of ``sources`` is
    imported from its module (relative to the package) on first use, then kept in the
    package's namespace so later lookups are plain attribute reads."""
    namespace = vars(sys.modules[package])
    listed = sorted(set(exported))

    def __getattr__(name: str) -> Any:
        source = sources.get(name)
        if source is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(listed))

    return __getattr__, __dir__
