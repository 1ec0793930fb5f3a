"""Volume arguments as the SDK, the CLI and the store read them: ``{"name": "/path"}`` or a
list, ``NAME:/PATH[:ro]``, sizes like ``20G``."""

from __future__ import annotations

import pytest

from sandlot.cli._common import UsageError
from sandlot.cli.run import parse_volumes
from sandlot.errors import InvalidArgumentError
from sandlot.models import SandboxSpec, VolumeMount
from sandlot.sdk.sandbox import build_spec, volume_list
from sandlot.workspace.volumes import owner_dir, parse_size


def test_volume_list_forms():
    assert volume_list({"data": "/data"}) == [{"name": "data", "path": "/data"}]
    mount = VolumeMount(name="d", path="/d", mode="ro")
    assert volume_list([mount]) == [mount]
    for bad in ("data", {"name": "d", "path": "/d"}, mount):
        with pytest.raises(InvalidArgumentError):
            volume_list(bad)
    spec = build_spec(None, 60, None, None, None, "/workspace", {}, volumes={"d": "/mnt/d"})
    assert spec.volumes == [VolumeMount(name="d", path="/mnt/d", mode="rw")]


def test_parse_volumes():
    assert parse_volumes(["a:/a", "b:/b:ro"]) == [
        {"name": "a", "path": "/a", "mode": "rw"},
        {"name": "b", "path": "/b", "mode": "ro"},
    ]
    for bad in ("a", "a:", ":/a", "a:/a:rx", "a:/a:ro:x"):
        with pytest.raises(UsageError):
            parse_volumes([bad])


def test_sizes_and_owner_folders():
    assert [parse_size(t) for t in ("1T", "20G", "20GiB", "512M", "100", "1.5g")] == [
        1 << 20, 20480, 20480, 512, 100, 1536,
    ]  # fmt: skip
    for bad in ("x", "", "inf", "G"):
        with pytest.raises(InvalidArgumentError):
            parse_size(bad)
    assert owner_dir("") == owner_dir("local") == "local"
    for tenant in ("../x", "/", "t-1", "a" * 500, "local2"):
        folder = owner_dir(tenant)
        assert folder.startswith("t-") and "/" not in folder and len(folder) == 42
    assert owner_dir("a") != owner_dir("b")


def test_spec_checks_volume_paths():
    for volumes in (
        [{"name": "a", "path": "/.sandlot"}],
        [{"name": "a", "path": "/data"}, {"name": "b", "path": "/data/x"}],
        [{"name": "a" * 64, "path": "/data"}],
        [{"name": f"v{i}", "path": f"/mnt/{i}"} for i in range(17)],
    ):
        with pytest.raises(ValueError):
            SandboxSpec(volumes=volumes)
    with pytest.raises(ValueError):
        SandboxSpec(volumes=[{"name": "a", "path": "/p"}], binds=[{"host": "/tmp", "path": "/p"}])


def test_a_create_body_leaves_out_volumes_and_template_it_does_not_use():
    """An older server refuses fields it does not know: send them only when set."""
    from sandlot.remote.backend import spec_body

    body = spec_body(SandboxSpec())
    assert "volumes" not in body and "template" not in body
    body = spec_body(SandboxSpec(volumes=[{"name": "d", "path": "/d"}], template="t"))
    assert body["volumes"] == [{"name": "d", "path": "/d", "mode": "rw"}]
    assert body["template"] == "t"
