"""Pools of template sandboxes, and which templates the host's pools and sandboxes hold.

A pool is keyed by its spec, and a template NAME is a moving target (a rebuild points it at a
new manifest). So a pool never stores a name as its template: :meth:`Pools.set` resolves it
to ``sha256:<digest>`` (that digest is in the key: a rebuilt template gets a new key, and
the old build's members are never handed out for it), and remembers the name it *follows*
beside the spec (``FOLLOWS``, not part of the key). A take with a name resolves it first; if
the name now points elsewhere, the pool that follows it is moved to the new digest (its old
members killed, new ones started in the background) and this take starts cold. A pool's
upkeep (:meth:`Pools.maintain`, run by gc) moves it too, so the next take is warm. A pool
set with a ``sha256:`` reference follows nothing. Names are the local user's (owner "").
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import SandlotError

if TYPE_CHECKING:
    from pathlib import Path

    from ..models import SandboxSpec
    from ..store import Store

FOLLOWS = "template_follows"  # a pool's stored spec: the template name it follows
DIGEST_PREFIX = "sha256:"


class _HasStores(Protocol):
    home: Path
    store: Store


def _templates(home: Path) -> Any:
    from ..workspace.templates.store import TemplateStore  # only pools of templates

    return TemplateStore(home)


def is_name(ref: str | None) -> bool:
    return ref is not None and not ref.startswith(DIGEST_PREFIX)


def pin_template(home: Path, spec: SandboxSpec) -> tuple[SandboxSpec, str | None]:
    """``spec`` with its template as ``sha256:<digest>`` (a name resolved now; a missing
    one is TemplateNotFoundError) and the name it was given as (None: a digest or none)."""
    ref = spec.template
    if ref is None:
        return spec, None
    resolved = _templates(home).resolve(ref)
    pinned = spec.model_copy(update={"template": DIGEST_PREFIX + resolved.digest})
    return pinned, ref if is_name(ref) else None


def followed(stored: dict[str, Any]) -> str | None:
    """The name a pool's stored spec follows, if any."""
    name = stored.get(FOLLOWS)
    return name if isinstance(name, str) else None


def without_follows(stored: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stored.items() if k != FOLLOWS}


def current_digest(home: Path, name: str) -> str | None:
    """The digest a name points at now (bare hex), or None if it names nothing."""
    with contextlib.suppress(SandlotError):
        return str(_templates(home).digest_of(name))
    return None


def in_use_templates(manager: _HasStores) -> set[str]:
    """Manifest digests (bare hex) the host's pools and sandboxes hold, for
    ``TemplateStore.gc(extra_in_use=...)``: every pool's template, the current digest of
    every name a pool follows, and the template in every sandbox record's handle (a pin's
    twin, should a pin file be lost). Names and pins the store keeps by itself."""
    found: set[str] = set()
    for _key, stored, _size in manager.store.pools():
        ref = stored.get("template")
        if isinstance(ref, str):
            if ref.startswith(DIGEST_PREFIX):
                found.add(ref.removeprefix(DIGEST_PREFIX))
            else:  # a name stored before pools pinned digests
                digest = current_digest(manager.home, ref)
                if digest is not None:
                    found.add(digest)
        name = followed(stored)
        if name is not None:
            digest = current_digest(manager.home, name)
            if digest is not None:
                found.add(digest)
    for info, _started in manager.store.all():
        used = info.handle.get("template")
        if isinstance(used, dict) and isinstance(used.get("digest"), str):
            found.add(used["digest"].removeprefix(DIGEST_PREFIX))
    return found
