"""Pools of template sandboxes, for real: bwrap members started from a template's layers,
taken by ``Sandbox.create(template=NAME)``, and moved to each rebuild of the name.

The templates are put in the store directly (a one-file layer on the host base, made in a
store work folder as a build step's upper folder would be): building them is tested with
the build engine (tests/integration/test_templates_build.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandlot
from sandlot.errors import NotFoundError
from sandlot.manager import Manager
from sandlot.models import SandboxSpec
from sandlot.sdk.sandbox import AsyncSandbox
from sandlot.sdk.sync import _portal
from sandlot.workspace.templates.model import BaseInfo, TemplateManifest
from sandlot.workspace.templates.store import TemplateStore

from .helpers import wait_until
from .test_pool import cli, on_manager, pools, record, running

NAME = "f-pool"
MARKER = "/opt/f-pool/build.txt"


def build(store: TemplateStore, name: str, text: str) -> str:
    """Name a template whose one layer holds MARKER with ``text``; its digest."""
    work = store.tmp_dir()
    target = work / MARKER.lstrip("/")
    target.parent.mkdir(parents=True)
    target.write_text(text)
    layer = store.add_layer(work, hashlib.sha256(f"{name}:{text}".encode()).hexdigest())
    manifest = TemplateManifest(name=name, base=BaseInfo(kind="host"), layers=[layer])
    return str(store.save(manifest))


def create(template: str) -> sandlot.Sandbox:
    """A sandbox of a template through the SDK's own create path (pools are taken there)."""
    spec = SandboxSpec(template=template, timeout=60)
    return sandlot.Sandbox(_portal.call(AsyncSandbox._create(spec, None)))


@pytest.fixture(scope="module")
def store() -> TemplateStore:
    return TemplateStore(Path(os.environ["SANDLOT_HOME"]))


@pytest.fixture(autouse=True)
def _no_pools_left() -> Iterator[None]:
    yield

    async def remove_all(manager: Manager) -> None:
        for status in manager.pools.list():
            await manager.pools.remove(status.key)

    on_manager(remove_all)


def _by_template(name: str) -> list[tuple[str, dict[str, object], list[str]]]:
    return [(p.key, p.spec, p.ready) for p in pools() if p.spec.get("template_follows") == name]


def test_a_pool_of_a_template_follows_its_name_to_a_rebuild(store: TemplateStore) -> None:
    first = build(store, NAME, "build 1\n")
    done = cli("pool", "set", "--template", NAME, "--size", "1", "--json")
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)
    # The name is pinned to its digest in the pool's spec (so in its key), and followed.
    assert row["spec"]["template"] == f"sha256:{first}" and row["ready"] == 1
    assert row["spec"]["template_follows"] == NAME
    assert f"template={NAME} ({first[:12]})" in cli("pool", "ls").stdout
    (old_member,) = row["members"]

    with create(NAME) as sb:
        assert sb.info.handle.get("pooled") is True and sb.id == old_member
        assert sb.files.read(MARKER) == "build 1\n"  # the member sees the template's files

    # Rebuilt: the pool's members are the old build's, never handed out for the new one.
    second = build(store, NAME, "build 2\n")
    assert second != first
    assert wait_until(lambda: len(_by_template(NAME)[0][2]) == 1, 30)  # refilled (build 1)
    (stale,) = _by_template(NAME)[0][2]
    with create(NAME) as sb:
        assert not sb.info.handle.get("pooled")  # a cold start: the pool moves meanwhile
        assert sb.files.read(MARKER) == "build 2\n"
    ((key, spec, _),) = _by_template(NAME)
    assert spec["template"] == f"sha256:{second}" and key != row["key"]
    stale_record = record(stale)
    assert stale_record is None or not running(stale_record)  # the old build's member killed

    assert wait_until(lambda: len(_by_template(NAME)[0][2]) == 1, 30)
    (fresh,) = _by_template(NAME)[0][2]
    with create(NAME) as sb:
        assert sb.info.handle.get("pooled") is True and sb.id == fresh
        assert sb.files.read(MARKER) == "build 2\n"


def test_a_pool_set_by_digest_serves_that_build_only(store: TemplateStore) -> None:
    digest = build(store, "f-digest", "by digest\n")
    done = cli("pool", "set", "--template", f"sha256:{digest}", "--size", "1", "--json")
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)
    assert row["spec"]["template"] == f"sha256:{digest}" and "template_follows" not in row["spec"]
    # The same build by its name is the same sandbox: the same pool.
    with create("f-digest") as sb:
        assert sb.info.handle.get("pooled") is True and sb.id == row["members"][0]
        assert sb.files.read(MARKER) == "by digest\n"


def test_a_pool_of_a_missing_template_is_refused() -> None:
    done = cli("pool", "set", "--template", "f-no-such", "--size", "1")
    assert done.returncode != 0 and "f-no-such" in done.stderr
    assert "Traceback" not in done.stderr
    bad = cli("pool", "set", "--template", "Not A Name", "--size", "1")
    assert bad.returncode == 2 and "template" in bad.stderr and "Traceback" not in bad.stderr

    async def take(manager: Manager) -> object:
        return await manager.pools.take(SandboxSpec(template="f-no-such"))

    assert on_manager(take) is None  # no pool; the create itself says what is missing
    with pytest.raises(NotFoundError):
        create("f-no-such")


def test_upkeep_moves_a_pool_to_a_rebuild_before_any_take(store: TemplateStore) -> None:
    build(store, "f-upkeep", "one\n")
    on_manager(lambda m: m.pools.set(SandboxSpec(template="f-upkeep"), 1))
    second = build(store, "f-upkeep", "two\n")
    sandlot.Sandbox.gc()  # upkeep: dead members out, followed names moved, pools topped up
    ((_, spec, _),) = _by_template("f-upkeep")
    assert spec["template"] == f"sha256:{second}"
    assert wait_until(lambda: len(_by_template("f-upkeep")[0][2]) == 1, 30)
    with create("f-upkeep") as sb:
        assert sb.info.handle.get("pooled") is True
        assert sb.files.read(MARKER) == "two\n"
