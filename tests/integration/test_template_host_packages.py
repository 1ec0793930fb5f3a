"""A build step on a host base sees the host's package database and apt configuration
(so apt steps work there) and nothing else of the host's /var and /etc; what it writes to
the package database lands in its layer, never on the host.

Offline: the steps only read and write files (no package is downloaded).
"""

from __future__ import annotations

import hashlib
import os
import shlex
from pathlib import Path

import pytest

import sandlot
from sandlot.models import SandboxSpec
from sandlot.providers import pkgdb
from sandlot.sdk.sandbox import AsyncSandbox
from sandlot.sdk.sync import _portal
from sandlot.workspace.templates.model import BaseInfo, TemplateManifest
from sandlot.workspace.templates.store import TemplateStore

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not pkgdb.available(), reason="the host has no dpkg database"),
]
STATUS = Path("/var/lib/dpkg/status")
SOURCES = Path("/etc/apt/sources.list.d")


def _template(name: str) -> str:
    store = TemplateStore(Path(os.environ["SANDLOT_HOME"]))
    work = store.tmp_dir()
    (work / "opt").mkdir()
    (work / "opt/g-probe").write_text("probe\n")
    layer = store.add_layer(work, hashlib.sha256(name.encode()).hexdigest())
    store.save(TemplateManifest(name=name, base=BaseInfo(kind="host"), layers=[layer]))
    return name


def _readable(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if os.stat(p).st_mode & 0o004)


def test_a_host_base_build_step_sees_the_package_database_and_nothing_more(
    tmp_path: Path,
) -> None:
    status = STATUS.read_bytes()
    upper = tmp_path / "upper"
    spec = SandboxSpec(template=_template("g-host-packages"), config={"root_upper": str(upper)})
    sb = sandlot.Sandbox(_portal.call(AsyncSandbox._create(spec, None)))
    try:
        seen = sb.commands.run("sha256sum /var/lib/dpkg/status; ls /etc/apt/sources.list.d")
        assert seen.exit_code == 0, seen.stderr
        lines = seen.stdout.split("\n")
        assert lines[0].split()[0] == hashlib.sha256(status).hexdigest()
        assert [n for n in lines[1:] if n] == _readable(SOURCES)
        hidden = ["/etc/shadow", "/etc/apt/auth.conf.d", "/var/log/dpkg.log", "/var/lib/docker",
                  "/var/tmp", "/var/lib/dpkg/lock", "/root/.bashrc"]  # fmt: skip
        probe = "; ".join(f"test -e {shlex.quote(p)} && echo {shlex.quote(p)}" for p in hidden)
        shown = sb.commands.run(probe + "; true")
        assert shown.stdout == "", shown.stdout
        wrote = sb.commands.run("echo 'Package: g-fake' >> /var/lib/dpkg/status && tail -1 "
                                "/var/lib/dpkg/status")  # fmt: skip
        assert wrote.stdout == "Package: g-fake\n", wrote.stderr
    finally:
        sb.kill()
    assert STATUS.read_bytes() == status
    assert (upper / "var/lib/dpkg/status").read_bytes() == status + b"Package: g-fake\n"
