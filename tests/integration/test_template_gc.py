"""Template gc never takes what a running sandbox or a pool uses: ``TemplateStore.gc`` with
:func:`sandlot.manager.pool_templates.in_use_templates` (what ``sandlot template gc``
passes), against real bwrap sandboxes and pools of this state folder.

Each template here loses its name first, so only the sandbox's pin or the pool's spec holds
it; a third, held by nothing, shows the gc really collects.
"""

from __future__ import annotations

import os
from pathlib import Path

from sandlot.manager import Manager
from sandlot.manager.pool_templates import in_use_templates
from sandlot.models import SandboxSpec
from sandlot.workspace.templates.store import TemplateStore

from .test_pool import on_manager, ready
from .test_pool_templates import MARKER, _no_pools_left, build, create  # noqa: F401

STORE = TemplateStore(Path(os.environ["SANDLOT_HOME"]))


def _kept(digest: str) -> bool:
    """The manifest and every one of its layers are still in the store."""
    if not STORE.has_manifest(digest):
        return False
    return all(STORE.has_layer(layer) for layer in STORE.manifest(digest).layer_ids)


def _gone(digest: str) -> bool:
    return not STORE.has_manifest(digest)


def _gc() -> list[str]:
    async def go(manager: Manager) -> list[str]:
        report = STORE.gc(in_use_templates(manager))
        return report.removed_manifests

    return list(on_manager(go))


def test_gc_keeps_what_sandboxes_and_pools_use_then_collects_it() -> None:
    used = build(STORE, "f-gc-sandbox", "used by a sandbox\n")
    pooled = build(STORE, "f-gc-pool", "used by a pool\n")
    loose = build(STORE, "f-gc-loose", "used by nothing\n")
    layers = {d: STORE.manifest(d).layer_ids for d in (used, pooled, loose)}

    sb = create("f-gc-sandbox")
    try:
        # A pool of size 0: only its spec holds the template (no member, so no pin).
        on_manager(lambda m: m.pools.set(SandboxSpec(template="f-gc-pool"), 0))
        assert ready(template=f"sha256:{pooled}") == []
        for name in ("f-gc-sandbox", "f-gc-pool", "f-gc-loose"):
            STORE.remove(name)

        in_use = on_manager(_in_use)
        assert {used, pooled} <= in_use and loose not in in_use
        removed = _gc()
        assert loose in removed and _gone(loose)
        assert not any(STORE.has_layer(layer) for layer in layers[loose])
        assert _kept(used) and _kept(pooled)
        assert sb.files.read(MARKER) == "used by a sandbox\n"  # its root is still whole
    finally:
        sb.kill()

    async def remove_pools(manager: Manager) -> None:
        for status in manager.pools.list():
            await manager.pools.remove(status.key)

    on_manager(remove_pools)
    removed = _gc()
    assert used in removed and pooled in removed
    assert _gone(used) and _gone(pooled)
    assert not any(STORE.has_layer(layer) for d in (used, pooled) for layer in layers[d])


async def _in_use(manager: Manager) -> set[str]:
    return in_use_templates(manager)
