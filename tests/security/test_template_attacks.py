"""Attacks on a template's root (bwrap): writing into the layers every sandbox of the template
shares, symlinks planted in a layer to reach the host's files, and a tenant asking a server
for build mode (a writable root)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from attacker import attack, succeeded
from remote.server import ServerProcess

import sandlot
from sandlot.models import SandboxSpec
from sandlot.sdk.sandbox import AsyncSandbox
from sandlot.sdk.sync import _portal
from sandlot.workspace.templates.model import BaseInfo, TemplateManifest
from sandlot.workspace.templates.store import TemplateStore

pytestmark = pytest.mark.timeout(120)


def _store() -> TemplateStore:
    return TemplateStore(Path(os.environ["SANDLOT_HOME"]))


def _layer(store: TemplateStore, build: Any, seed: str) -> Any:
    work = store.tmp_dir()
    build(work)
    return store.add_layer(work, hashlib.sha256(seed.encode()).hexdigest())


def _template(name: str, layers: list[Any]) -> str:
    store = _store()
    store.save(TemplateManifest(name=name, base=BaseInfo(kind="host"), layers=layers))
    return name


def _sandbox(template: str, **spec: Any) -> sandlot.Sandbox:
    return sandlot.Sandbox(
        _portal.call(AsyncSandbox._create(SandboxSpec(template=template, **spec), None))
    )


@pytest.fixture(scope="module")
def secret() -> Iterator[Path]:
    """A host folder no sandbox may see: beneath /var/tmp (a host-base sandbox has no /var)."""
    folder = Path(tempfile.mkdtemp(prefix="c-secret-", dir="/var/tmp"))
    (folder / "secret.txt").write_text("host secret\n")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _files(lowers: list[Path]) -> dict[str, tuple[int, bytes]]:
    found = {}
    for lower in lowers:
        for path in lower.rglob("*"):
            st = path.lstat()
            data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
            found[str(path)] = (st.st_mode, data)
    return found


@pytest.mark.attack("a sandbox writes into its template's layers, also through /proc/*/root")
def test_a_sandbox_cannot_write_into_its_templates_layers() -> None:
    store = _store()

    def build(root: Path) -> None:
        (root / "opt/tool").mkdir(parents=True)
        (root / "opt/tool/run.py").write_text("print('original')\n")
        (root / "usr/local/lib").mkdir(parents=True)
        (root / "usr/local/lib/shared.txt").write_text("shared\n")

    layer = _layer(store, build, "c-attack-write")
    name = _template("c-attack-write", [layer])
    lowers = store.resolve(name).lowers
    before = _files(lowers)
    sb = _sandbox(name)
    try:
        results = attack(
            sb,
            """
            targets = ["/opt/tool/run.py", "/usr/local/lib/shared.txt"]
            roots = ["", "/proc/self/root", "/proc/1/root", "/proc/%d/root" % os.getppid()]
            for root in roots:
                for target in targets:
                    path = root + target
                    def write(path=path):
                        with open(path, "w") as f:
                            f.write("owned")
                    attempt("write " + path, write)
                    attempt("truncate " + path, lambda path=path: os.truncate(path, 0))
                    attempt("chmod " + path, lambda path=path: os.chmod(path, 0o777))
                    attempt("unlink " + path, lambda path=path: os.unlink(path))
                    attempt("rename " + path, lambda path=path: os.rename(path, path + ".x"))
                    attempt("xattr " + path,
                            lambda path=path: os.setxattr(path, "user.x", b"1"))
                attempt("create in " + root + "/opt/tool",
                        lambda root=root: open(root + "/opt/tool/new", "w").close())
                attempt("mkdir in " + root + "/usr/local",
                        lambda root=root: os.mkdir(root + "/usr/local/new"))
            attempt("remount rw", lambda: sys_call("mount", b"none", b"/opt", None,
                                                     0x20 | 0x1000, None))
            report()
            """,
        )
        assert len(results) > 40
        assert not succeeded(results), succeeded(results)
        assert sb.commands.run("cat /opt/tool/run.py").stdout == "print('original')\n"
    finally:
        sb.kill()
    assert _files(lowers) == before


@pytest.mark.attack("symlinks planted in a template layer point at the host's files")
def test_symlinks_in_a_layer_never_reach_the_host(secret: Path) -> None:
    store = _store()
    target = str(secret)

    def below(root: Path) -> None:
        (root / "opt/real").mkdir(parents=True)
        (root / "opt/real/file").write_text("layer file\n")

    def above(root: Path) -> None:
        (root / "usr/local/share").mkdir(parents=True)
        (root / "usr/local/share/leak").symlink_to(f"{target}/secret.txt")
        (root / "etc").mkdir()
        (root / "etc/leak").symlink_to(target)
        (root / "opt/real").mkdir(parents=True)
        (root / "opt/real/up").symlink_to("../../../../../../" + target.lstrip("/"))
        (root / "data").symlink_to(target)  # a top-level entry that is a symlink
        (root / "srv").symlink_to("/proc/1/root" + target)

    layers = [_layer(store, below, "c-attack-links-1"), _layer(store, above, "c-attack-links-2")]
    name = _template("c-attack-links", layers)
    sb = _sandbox(name)
    try:
        done = sb.commands.run(
            "cat /opt/real/file; for p in /usr/local/share/leak /etc/leak/secret.txt "
            "/opt/real/up/secret.txt /data/secret.txt /srv/secret.txt; do cat $p 2>/dev/null "
            "&& echo LEAKED $p; done; readlink /data; echo end"
        )
        assert "LEAKED" not in done.stdout and "host secret" not in done.stdout, done.stdout
        assert done.stdout == f"layer file\n{target}\nend\n"
    finally:
        sb.kill()


@pytest.mark.attack("a layer's /usr is a symlink to a host folder")
def test_a_layer_replacing_usr_with_a_symlink_exposes_nothing(secret: Path) -> None:
    store = _store()

    def build(root: Path) -> None:
        (root / "usr").symlink_to(str(secret))

    name = _template("c-attack-usr", [_layer(store, build, "c-attack-usr")])
    # /usr is then a dangling link inside the sandbox: no python3, so no agent, so no
    # sandbox (never one running the host's /usr or showing the folder).
    with pytest.raises(sandlot.SandboxStartError):
        _sandbox(name).kill()


# -- through a server -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    home = Path(tempfile.mkdtemp(prefix="sltpl-", dir="/tmp"))
    process = ServerProcess(home)
    process.start()
    yield process
    process.stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.mark.attack("a tenant asks a server for build mode (a writable template root)")
def test_a_tenant_cannot_ask_for_build_mode(server: ServerProcess, tmp_path: Path) -> None:
    url = f"{server.url}/v1/sandboxes"
    before = httpx.get(url, timeout=30).json()
    for config in ({"root_upper": str(tmp_path)}, {"root_upper": "/"}):
        body = {"provider": "bwrap", "template": "sha256:" + "0" * 64, "config": config}
        answer = httpx.post(url, json=body, timeout=60)
        assert answer.status_code == 422, answer.text
        assert answer.json()["code"] == "provider_unavailable", answer.text
        assert "root_upper" in answer.json()["message"]
    assert httpx.get(url, timeout=30).json() == before
    assert list(tmp_path.iterdir()) == []


@pytest.mark.attack("a build step (writable root, uid 0) writes the host's /usr and the layers")
def test_a_build_step_changes_nothing_but_its_upper_folder(tmp_path: Path) -> None:
    store = _store()

    def build(root: Path) -> None:
        (root / "opt/tool").mkdir(parents=True)
        (root / "opt/tool/run.py").write_text("print('original')\n")

    name = _template("c-attack-build", [_layer(store, build, "c-attack-build")])
    lowers = store.resolve(name).lowers
    before = _files(lowers)
    host_bin = sorted(os.listdir("/usr/local/bin"))
    upper = tmp_path / "upper"
    sb = _sandbox(name, config={"root_upper": str(upper)})
    try:
        done = sb.commands.run(
            "rm -rf /usr/local/bin/* /opt/tool; echo owned > /usr/bin/c-owned; "
            "echo owned > /proc/self/root/usr/lib/c-owned; chmod 4755 /usr/bin/c-owned; "
            "ls /usr/local/bin | wc -l"
        )
        assert done.stdout.strip() == "0", done.stderr  # the step saw its own changes
    finally:
        sb.kill()
    assert sorted(os.listdir("/usr/local/bin")) == host_bin
    assert not os.path.lexists("/usr/bin/c-owned") and not os.path.lexists("/usr/lib/c-owned")
    assert _files(lowers) == before
    assert (upper / "usr/bin/c-owned").read_text() == "owned\n"
