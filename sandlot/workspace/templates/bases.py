"""Bases a template is built on: ``host`` here; image bases (``oci:``, ``docker:``,
``rootfs:``, ``tar:``) register a preparer in :data:`PREPARERS`.

A preparer turns the text after ``KIND:`` into a :class:`BaseInfo` and, for an image base,
the id of a base layer it put in the store (a whole root filesystem; see
:meth:`TemplateStore.add_layer`); ``on_event`` takes progress lines.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ...errors import InvalidArgumentError
from .model import BaseInfo
from .store import TemplateStore

OnEvent = Callable[[Any], Any]
Preparer = Callable[[str, TemplateStore, OnEvent], Awaitable[tuple[BaseInfo, str | None]]]


async def _host(ref: str, store: TemplateStore, on_event: OnEvent) -> tuple[BaseInfo, str | None]:
    if ref:
        raise InvalidArgumentError("the host base takes no reference: --from host")
    return BaseInfo(kind="host"), None


PREPARERS: dict[str, Preparer] = {"host": _host}


async def prepare_base(
    spec: str, store: TemplateStore, on_event: OnEvent
) -> tuple[BaseInfo, str | None]:
    """``host``, or ``KIND:REF`` for a registered kind -> (BaseInfo, base layer id or None)."""
    kind, _, ref = spec.partition(":")
    preparer = PREPARERS.get(kind)
    if preparer is None:
        raise InvalidArgumentError(
            f"unknown template base {spec!r:.100}: one of "
            + ", ".join(k if k == "host" else f"{k}:REF" for k in PREPARERS)
        )
    return await preparer(ref, store, on_event)
