"""A named volume in docker sandboxes (docs/volumes.md): shared by a docker and a bwrap
sandbox at once, a read-only mount that refuses writes, data that outlives them both."""

from __future__ import annotations

import sandlot
from sandlot.providers import quota


def test_a_volume_is_shared_between_docker_and_bwrap_sandboxes():
    sandlot.volumes.create("dockvol", size=None if quota.unavailable_reason() else 16)
    try:
        with (
            sandlot.Sandbox.create(volumes={"dockvol": "/data"}) as docker_box,
            sandlot.Sandbox.create(
                "bwrap", volumes=[{"name": "dockvol", "path": "/srv/v", "mode": "ro"}]
            ) as bwrap_box,
        ):
            assert docker_box.provider == "docker"
            done = docker_box.commands.run("echo from-docker > /data/f && id -u")
            assert done.exit_code == 0, done.stderr
            assert bwrap_box.commands.run("cat /srv/v/f").stdout == "from-docker\n"
            assert bwrap_box.commands.run("touch /srv/v/g").exit_code != 0  # read-only
            assert sorted(sandlot.volumes.get("dockvol").mounted_by) == sorted(
                [docker_box.id, bwrap_box.id]
            )
        with sandlot.Sandbox.create(volumes={"dockvol": "/data"}) as again:
            done = again.commands.run("cat /data/f && echo more >> /data/f")
            assert done.exit_code == 0, done.stderr
            assert done.stdout == "from-docker\n"
        assert sandlot.volumes.get("dockvol").mounted_by == []
    finally:
        sandlot.volumes.remove("dockvol", force=True)
