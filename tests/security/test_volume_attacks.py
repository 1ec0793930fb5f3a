"""Attacks through named volumes (docs/volumes.md): names that try to leave the volumes
folder, symlinks a sandbox plants in a volume for the next sandbox (and for the host) to
follow, mount paths over what every sandbox needs, and a tenant naming another's volume."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from attacker import attack, succeeded
from remote.keyed import keyed_server

import sandlot
from sandlot.providers import quota
from sandlot.store import default_home

pytestmark = pytest.mark.timeout(120)
SIZE = None if quota.unavailable_reason() else 16


@pytest.fixture
def volume() -> Iterator[str]:
    name = "attacked"
    sandlot.volumes.create(name, size=SIZE)
    yield name
    sandlot.volumes.remove(name, force=True)


@pytest.fixture
def outside() -> Iterator[Path]:
    """A host folder no sandbox may reach, with a file in it."""
    root = Path(tempfile.mkdtemp(prefix="slvolatk-", dir="/tmp"))
    (root / "secret").write_text("never seen\n")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.attack("a volume name that leaves the volumes folder: ../x, /etc, a/b, NUL")
def test_hostile_names_are_refused() -> None:
    before = sorted(os.listdir(default_home()))
    for name in ("../x", "..", ".", "/etc", "a/b", "a\0b", "x/../../y", "A", "-x", "x" * 64):
        with pytest.raises(sandlot.InvalidArgumentError):
            sandlot.volumes.create(name)
        with pytest.raises(sandlot.InvalidArgumentError):
            sandlot.Sandbox.create(volumes={name: "/data"})
    assert sorted(os.listdir(default_home())) == before
    assert not (default_home() / "x").exists() and not (default_home() / "volumes" / "x").exists()


@pytest.mark.attack("a volume mounted over /.sandlot, /proc, /etc, /workspace, /, or a bind")
@pytest.mark.parametrize("provider", ["bwrap"], indirect=True)
def test_hostile_mount_paths_are_refused(make_sandbox: Any, volume: str) -> None:
    for path in ("/.sandlot", "/.sandlot/agent", "/proc", "/etc", "/workspace", "/", "/tmp/x",
                 "/usr/bin", "data", "/data/../proc", "/data/", "//data"):  # fmt: skip
        with pytest.raises(sandlot.InvalidArgumentError):
            make_sandbox(volumes={volume: path})
    with pytest.raises(sandlot.InvalidArgumentError):  # two at one place
        make_sandbox(
            volumes=[{"name": volume, "path": "/data"}, {"name": volume, "path": "/data/x"}]
        )
    with pytest.raises(sandlot.InvalidArgumentError):  # over a bind
        make_sandbox(volumes={volume: "/data"}, binds=[{"host": "/tmp", "path": "/data"}])


@pytest.mark.attack("symlinks planted in a volume, followed by the next sandbox and the host")
@pytest.mark.parametrize("provider", ["bwrap", "docker"], indirect=True)
def test_planted_symlinks_do_not_escape(make_sandbox: Any, volume: str, outside: Path) -> None:
    """Sandbox A plants links in the volume to a host folder, to /, and to the agent; B
    (made after, mounting the same volume) follows them: they resolve in B's own view,
    never the host's. Removing the volume deletes the links, not what they point at."""
    a = make_sandbox(volumes={volume: "/data"})
    planted = attack(
        a,
        f"""
        os.symlink({str(outside)!r}, "/data/host-link")
        os.symlink("/", "/data/root-link")
        os.symlink("/proc/1/root", "/data/proc-link")
        os.mkdir("/data/dir")
        os.symlink({str(outside / "secret")!r}, "/data/dir/secret-link")
        attempt("control", lambda: open("/data/plain", "w").write("x"))
        report()
        """,
    )
    assert planted["control"][0] == "ok"
    b = make_sandbox(volumes={volume: "/mnt/v"})
    r = attack(
        b,
        f"""
        def write(path):
            with open(path, "w") as f:
                f.write("x")
            return path
        attempt("read the host file", lambda: open("/mnt/v/host-link/secret").read())
        attempt("read it, nested", lambda: open("/mnt/v/dir/secret-link").read())
        attempt("write the host folder", lambda: write("/mnt/v/host-link/planted"))
        attempt("write through /", lambda: write("/mnt/v/root-link/etc/planted"))
        attempt("write through /proc/1/root", lambda: write("/mnt/v/proc-link/usr/planted"))
        attempt("dotdot out", lambda: write("/mnt/v/../../{os.path.basename(outside)}/x"))
        attempt("control", lambda: open("/mnt/v/plain").read())
        report()
        """,
    )
    assert r["control"] == ["ok", "x"]
    worked = {k: v for k, v in succeeded(r).items() if k != "control"}
    assert not worked, f"a planted link escaped: {worked}"
    assert sorted(os.listdir(outside)) == ["secret"]
    assert not os.path.lexists("/etc/planted") and not os.path.lexists("/usr/planted")
    a.kill()
    b.kill()
    info = sandlot.volumes.get(volume)  # counting its bytes follows no link
    assert info.used_bytes < 1 << 20
    sandlot.volumes.remove(volume)
    assert (outside / "secret").read_text() == "never seen\n"
    sandlot.volumes.create(volume, size=SIZE)  # for the fixture's removal


@pytest.mark.attack("tenant B names tenant A's volume: mount, show, delete, by HTTP")
def test_a_tenant_cannot_reach_another_tenants_volume() -> None:
    server, keys = keyed_server()
    alice = {"Authorization": f"Bearer {keys['alice']}"}
    bob = {"Authorization": f"Bearer {keys['bob']}"}
    url = f"{server.url}/v1/volumes"
    made = httpx.post(url, json={"name": "alices"}, headers=alice, timeout=60)
    assert made.status_code == 201, made.text
    try:
        answer = httpx.post(
            f"{server.url}/v1/sandboxes",
            json={"provider": "bwrap", "volumes": [{"name": "alices", "path": "/data"}]},
            headers=bob,
            timeout=60,
        )
        assert answer.status_code == 404 and answer.json()["code"] == "volume_not_found"
        for method in ("GET", "DELETE"):
            answer = httpx.request(method, f"{url}/alices", headers=bob, timeout=60)
            assert answer.status_code == 404, (method, answer.text)
        assert "alices" not in httpx.get(url, headers=bob, timeout=60).text
        for name in ("..%2Fx", "..", "%2e%2e", "a%00b"):
            answer = httpx.get(f"{url}/{name}", headers=bob, timeout=60)
            assert answer.status_code in (404, 422), (name, answer.status_code)
        answer = httpx.post(url, json={"name": "../alices"}, headers=bob, timeout=60)
        assert answer.status_code == 422
        shown = httpx.get(f"{url}/alices", headers=alice, timeout=60)
        assert shown.status_code == 200 and shown.json()["mounted_by"] == []
    finally:
        httpx.delete(f"{url}/alices", headers=alice, timeout=60)
