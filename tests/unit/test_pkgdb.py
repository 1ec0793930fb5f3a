"""The package snapshot a host-base build step sees: what any user may read of the
allowlisted paths, never apt's credentials, and only the dpkg overrides it can honour."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandlot.providers import pkgdb


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "host"
    for folder in ("etc/apt/sources.list.d", "etc/apt/auth.conf.d", "var/lib/dpkg/info",
                   "var/log", "etc/dpkg"):  # fmt: skip
        (root / folder).mkdir(parents=True)
    (root / "etc/apt/sources.list.d/debian.sources").write_text("URIs: http://mirror/\n")
    (root / "etc/apt/auth.conf.d/mirror.conf").write_text("machine mirror password x\n")
    (root / "etc/apt/auth.conf").write_text("machine mirror password y\n")
    (root / "etc/apt/private.conf").write_text("secret\n")
    (root / "etc/apt/private.conf").chmod(0o600)
    (root / "etc/apt/link").symlink_to("/etc/shadow")
    (root / "etc/shadow").write_text("root:hash\n")
    (root / "var/log/syslog").write_text("log\n")
    (root / "var/lib/dpkg/status").write_text("Package: a\n")
    (root / "var/lib/dpkg/info/a.list").write_text("/usr/bin/a\n")
    (root / "var/lib/dpkg/statoverride").write_text(
        "root ssl-cert 710 /etc/ssl/private\nroot root 755 /usr/bin/x\n"
    )
    monkeypatch.setattr(pkgdb, "HOST", root)
    return root


def test_the_snapshot_holds_the_database_and_readable_configuration(
    host: Path, tmp_path: Path
) -> None:
    snap = pkgdb.snapshot(tmp_path / "home")
    files = sorted(str(p.relative_to(snap)) for p in snap.rglob("*") if not p.is_dir())
    assert files == [
        "etc/apt/link",
        "etc/apt/sources.list.d/debian.sources",
        "var/lib/dpkg/info/a.list",
        "var/lib/dpkg/statoverride",
        "var/lib/dpkg/status",
    ]
    assert os.readlink(snap / "etc/apt/link") == "/etc/shadow"  # resolved only in the sandbox
    assert (snap / "var/lib/dpkg/statoverride").read_text() == "root root 755 /usr/bin/x\n"
    assert (snap / "var/cache/apt/archives/partial").is_dir()
    assert pkgdb.snapshot(tmp_path / "home") == snap  # reused while the host is unchanged
    os.utime(snap, (0, 0))  # unused for long
    (host / "var/lib/dpkg/status").write_text("Package: a\n\nPackage: b\n")
    again = pkgdb.snapshot(tmp_path / "home")
    assert again != snap and (again / "var/lib/dpkg/status").read_text().endswith("b\n")
    assert not snap.exists()  # the stale one is gone
