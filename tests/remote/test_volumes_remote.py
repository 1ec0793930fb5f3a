"""``/v1/volumes`` through a real ``sandlot serve`` with two tenants' keys: each tenant
creates, lists, shows, mounts and deletes only its own volumes (the same name is two
volumes), deletion is refused while mounted, and the count quota holds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import sandlot
from sandlot.errors import VolumeError, VolumeInUseError, VolumeNotFoundError

from .keyed import VOLUME_COUNT, keyed_server


@pytest.fixture(scope="module")
def clients() -> Iterator[dict[str, sandlot.Client]]:
    from sandlot.sdk.sync import _portal

    process, keys = keyed_server()
    made = {name: sandlot.Client(url=process.url, api_key=key) for name, key in keys.items()}
    yield made
    for client in made.values():
        _portal.call(client.aclose())


def test_each_tenant_has_its_own_volumes(clients, monkeypatch):
    monkeypatch.delenv("SANDLOT_URL")
    alice, bob = clients["alice"], clients["bob"]
    made = sandlot.volumes.create("rdata", client=alice)
    assert made.name == "rdata" and made.mounted_by == []
    assert "rdata" in [v.name for v in sandlot.volumes.list(client=alice)]
    assert "rdata" not in [v.name for v in sandlot.volumes.list(client=bob)]
    with pytest.raises(VolumeNotFoundError):
        sandlot.volumes.get("rdata", client=bob)
    with pytest.raises(VolumeNotFoundError):
        sandlot.volumes.remove("rdata", client=bob)
    # The same name for bob is another volume; a sandbox mounts its tenant's.
    sandlot.volumes.create("rdata", client=bob)
    with sandlot.Sandbox.create(volumes={"rdata": "/data"}, client=alice) as a:
        assert a.commands.run("echo alice > /data/who").exit_code == 0
        assert sandlot.volumes.get("rdata", client=alice).mounted_by == [a.id]
        with pytest.raises(VolumeInUseError):
            sandlot.volumes.remove("rdata", client=alice)
    with sandlot.Sandbox.create(volumes={"rdata": "/data"}, client=bob) as b:
        assert b.commands.run("ls /data").stdout == ""
    with sandlot.Sandbox.create(volumes={"rdata": "/data"}, client=alice) as a2:
        assert a2.commands.run("cat /data/who").stdout == "alice\n"
    sandlot.volumes.remove("rdata", client=alice)
    assert "rdata" not in [v.name for v in sandlot.volumes.list(client=alice)]
    assert "rdata" in [v.name for v in sandlot.volumes.list(client=bob)]
    sandlot.volumes.remove("rdata", client=bob)


def test_the_count_quota(clients, monkeypatch):
    monkeypatch.delenv("SANDLOT_URL")
    carol = clients["carol"]
    for i in range(VOLUME_COUNT):
        sandlot.volumes.create(f"q{i}", client=carol)
    with pytest.raises(VolumeError) as caught:
        sandlot.volumes.create("one-too-many", client=carol)
    assert caught.value.code == "volume_error" and "quota" in str(caught.value)
    for i in range(VOLUME_COUNT):
        sandlot.volumes.remove(f"q{i}", client=carol)
