"""bwrap sandboxes started from a template (``SandboxSpec.template``): a host-base template
(the host's /usr with layers overlaid), an image-base one (a Debian root filesystem as its
bottom layer), their read-only roots, their independence, build mode and pins.

The templates are put in the store directly (layers made by hand in a store work folder,
as a build step's upper folder would be): building them is tested with the build engine.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

import sandlot
from sandlot.models import SandboxSpec
from sandlot.providers.bwrap import BwrapProvider
from sandlot.sdk.sandbox import AsyncSandbox
from sandlot.workspace.templates.model import BaseInfo, TemplateManifest
from sandlot.workspace.templates.store import TemplateStore

ROOTFS_TAR = Path("/var/cache/sandlot-test/bookworm-v2-rootfs.tar")
IMAGE = "sandlot-test-bookworm:v2"
# What the image-base tests need of Debian's root: python3 and a shell, not pip or apt.
SKIPPED = (
    "usr/share",
    "var/lib/apt",
    "var/cache",
    "usr/lib/python3/dist-packages",
    "usr/lib/x86_64-linux-gnu/perl*",
    "usr/lib/x86_64-linux-gnu/gconv",
)


def _home() -> Path:
    return Path(os.environ["SANDLOT_HOME"])


def _layer(store: TemplateStore, files: dict[str, str | None], seed: str) -> Any:
    """A step layer holding ``files`` (path -> text; None: a folder)."""
    work = store.tmp_dir()
    for path, text in files.items():
        target = work / path.lstrip("/")
        if text is None:
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(0o755 if "/bin/" in path else 0o644)
    return store.add_layer(work, hashlib.sha256(seed.encode()).hexdigest())


@pytest.fixture(scope="module")
def store() -> TemplateStore:
    return TemplateStore(_home())


@pytest.fixture(scope="module")
def host_template(store: TemplateStore) -> str:
    layer = _layer(
        store,
        {
            "/usr/local/bin/hello": "#!/bin/sh\necho hello from the template\n",
            "/opt/x/data.txt": "template data\n",
            "/srv/app": None,
        },
        "host-template-layer",
    )
    manifest = TemplateManifest(
        name="c-host",
        base=BaseInfo(kind="host"),
        layers=[layer],
        env={"FROM_TEMPLATE": "yes", "OVERRIDDEN": "template"},
        workdir="/srv/app",
    )
    store.save(manifest)
    return "c-host"


def _rootfs(target: Path) -> None:
    """A slim Debian bookworm with python3 in ``target``: hard links to an extraction cached
    beside setup's rootfs tar (made once), else extracted from the test image."""
    cached = ROOTFS_TAR.with_name("c-bookworm-slim")
    if ROOTFS_TAR.is_file() and not cached.is_dir():
        staging = Path(tempfile.mkdtemp(dir=ROOTFS_TAR.parent, prefix=".c-bookworm-"))
        _untar(staging, ["-f", str(ROOTFS_TAR)])
        staging.chmod(0o755)
        try:
            staging.rename(cached)
        except OSError:  # another run made it first
            shutil.rmtree(staging, ignore_errors=True)
    if cached.is_dir():
        if subprocess.run(["cp", "-al", f"{cached}/.", str(target)]).returncode == 0:
            return
        subprocess.run(["cp", "-a", f"{cached}/.", str(target)], check=True)
        return
    made = subprocess.run(["docker", "create", IMAGE, "true"], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"no Debian root filesystem: neither {ROOTFS_TAR} nor {IMAGE}")
    container = made.stdout.strip()
    try:
        export = subprocess.Popen(["docker", "export", container], stdout=subprocess.PIPE)
        _untar(target, [], stdin=export.stdout)
        assert export.wait() == 0
    finally:
        subprocess.run(["docker", "rm", container], capture_output=True)


def _untar(target: Path, args: list[str], stdin: Any = None) -> None:
    excluded = [f"--exclude={p}" for p in SKIPPED]
    subprocess.run(["tar", "-x", "-C", str(target), *excluded, *args], stdin=stdin, check=True)


@pytest.fixture(scope="module")
def image_template(store: TemplateStore) -> str:
    work = store.tmp_dir()
    _rootfs(work)
    base = store.add_layer(work, hashlib.sha256(b"c-bookworm-base").hexdigest())
    marker = _layer(store, {"/etc/template-marker": "image template\n"}, "c-image-marker")
    # A step that deleted a file of the base: an overlayfs whiteout (a 0/0 character device).
    work = store.tmp_dir()
    (work / "etc").mkdir()
    os.mknod(work / "etc" / "debian_version", 0o600 | 0o020000, 0)
    deleted = store.add_layer(work, hashlib.sha256(b"c-image-whiteout").hexdigest())
    manifest = TemplateManifest(
        name="c-image",
        base=BaseInfo(kind="rootfs", ref="bookworm", digest="sha256:" + base.id),
        layers=[base, marker, deleted],
        python="/usr/bin/python3",
    )
    store.save(manifest)
    return "c-image"


def _layer_files(store: TemplateStore, name: str) -> dict[str, bytes]:
    found = {}
    for lower in store.resolve(name).lowers:
        if len(list(lower.iterdir())) > 5:
            continue  # a base root filesystem: too big to list, and checked by path below
        for path in lower.rglob("*"):
            if path.is_file() and not path.is_symlink():
                found[str(path)] = path.read_bytes()
    return found


async def _create(template: str, **spec: Any) -> AsyncSandbox:
    return await AsyncSandbox._create(SandboxSpec(template=template, **spec), None)


async def _run(sb: AsyncSandbox, command: str) -> Any:
    return await sb.commands.run(command, timeout=30)


async def test_a_host_base_template_adds_its_files_to_the_hosts_system(host_template, tmp_path):
    (tmp_path / "in.txt").write_text("bound\n")
    bind = {"host": str(tmp_path), "path": "/data", "mode": "rw"}
    sb = await _create(host_template, env={"OVERRIDDEN": "caller"}, binds=[bind])
    try:
        done = await _run(
            sb,
            "hello && cat /opt/x/data.txt && pwd && echo $FROM_TEMPLATE $OVERRIDDEN "
            "&& test -x /usr/bin/python3 && test -e /usr/bin/bwrap && echo host-usr "
            "&& cat /data/in.txt && echo out > /data/out.txt",
        )
        assert done.exit_code == 0, done.stderr
        assert done.stdout.split("\n")[:6] == [
            "hello from the template",
            "template data",
            "/srv/app",
            "yes caller",
            "host-usr",
            "bound",
        ]
        assert (tmp_path / "out.txt").read_text() == "out\n"  # binds work as without one
    finally:
        await sb.kill()


async def test_the_template_root_is_read_only_and_sandboxes_share_nothing(store, host_template):
    before = _layer_files(store, host_template)
    first, second = await _create(host_template), await _create(host_template)
    try:
        wrote = await _run(
            first,
            "for p in /usr/local/bin/hello /opt/x/data.txt /opt/x/new /usr/new /srv/app/f "
            "/new /proc/self/root/opt/x/new; do (echo bad > $p) 2>/dev/null && echo wrote $p; "
            "done; echo mine > /workspace/f; echo mine > /tmp/f; echo done",
        )
        assert wrote.stdout.strip() == "done", wrote.stdout
        seen = await _run(second, "cat /workspace/f /tmp/f /opt/x/new; cat /opt/x/data.txt")
        assert seen.stdout == "template data\n"
    finally:
        await first.kill()
        await second.kill()
    assert _layer_files(store, host_template) == before


async def test_a_running_sandbox_pins_its_template(store, host_template):
    digest = store.resolve(host_template).digest
    sb = await _create(host_template)
    try:
        assert store.pins().get(sb.id) == digest
    finally:
        await sb.kill()
    assert sb.id not in store.pins()


async def test_build_mode_writes_land_in_the_upper_folder_only(store, host_template, tmp_path):
    before = _layer_files(store, host_template)
    upper = tmp_path / "upper"
    sb = await _create(host_template, config={"root_upper": str(upper)})
    try:
        done = await _run(
            sb,
            "id -u && read inner host n < /proc/self/uid_map && echo $inner:$host "
            "&& echo built > /opt/x/built && mkdir -p /usr/local/lib/c-pkg "
            "&& echo 1 > /usr/local/lib/c-pkg/m.py && rm /usr/local/bin/hello "
            "&& echo conf > /etc/c.conf && echo ok",
        )
        assert done.exit_code == 0, done.stderr
        uid, mapping, ok = done.stdout.split("\n")[:3]
        assert (uid, ok) == ("0", "ok")
        # As root, uid 0 inside is an unprivileged host uid (idmapped folders), never root.
        assert mapping.startswith("0:") and (os.geteuid() != 0 or mapping != "0:0"), mapping
    finally:
        await sb.kill()
    assert (upper / "opt/x/built").read_text() == "built\n"
    assert (upper / "opt/x/built").stat().st_uid == os.geteuid()  # as the rest of /usr
    assert (upper / "usr/local/lib/c-pkg/m.py").read_text() == "1\n"
    assert (upper / "etc/c.conf").read_text() == "conf\n"
    assert (upper / "usr/local/bin/hello").is_char_device()  # a whiteout
    assert not Path("/usr/local/lib/c-pkg").exists()
    assert not (tmp_path / "upper.work").exists()
    assert sorted(p.name for p in upper.iterdir()) == ["etc", "opt", "usr"]
    assert _layer_files(store, host_template) == before
    assert sb.id not in store.pins()


async def test_build_mode_is_not_for_a_sandbox_without_template(tmp_path):
    with pytest.raises(sandlot.InvalidArgumentError, match="needs a template"):
        await AsyncSandbox._create(SandboxSpec(config={"root_upper": str(tmp_path)}), None)


async def test_an_image_base_template_is_the_sandboxs_whole_system(image_template):
    sb = await _create(image_template)
    try:
        done = await _run(
            sb,
            ". /etc/os-release && echo $VERSION_CODENAME && cat /etc/template-marker "
            "&& python3 -c 'import sys; print(sys.executable)' && ls /etc/debian_version; "
            "test -e /usr/bin/bwrap || echo no-host-usr; (echo x > /etc/f) 2>/dev/null || echo ro",
        )
        assert done.stdout.split("\n")[:5] == [
            "bookworm",
            "image template",
            "/usr/bin/python3",
            "no-host-usr",
            "ro",
        ]
        assert "No such file" in done.stderr  # deleted by the top layer's whiteout
    finally:
        await sb.kill()


async def test_build_mode_on_an_image_base_can_make_top_level_folders(image_template, tmp_path):
    upper = tmp_path / "upper"
    sb = await _create(image_template, config={"root_upper": str(upper)})
    try:
        done = await _run(sb, "mkdir /app && echo a > /app/main.py && echo ok")
        assert done.stdout == "ok\n", done.stderr
    finally:
        await sb.kill()
    # The step's folder; not the mount points bwrap made for /workspace and the agent.
    assert sorted(p.name for p in upper.iterdir()) == ["app"]
    assert (upper / "app/main.py").read_text() == "a\n"


@pytest.mark.filterwarnings("ignore:the 'process' provider:RuntimeWarning")
@pytest.mark.parametrize(
    ("provider", "config", "named"),
    [("process", {}, "process"), ("ssh", {"host": "127.0.0.1", "port": 9}, "ssh hosts")],
)
async def test_providers_without_a_root_of_their_own_refuse_templates(
    host_template, provider, config, named
):
    with pytest.raises(sandlot.InvalidArgumentError, match=f"{named}: not yet"):
        await _create(host_template, provider=provider, config=config)


async def test_a_failed_create_and_an_orphan_leave_no_pin(store, host_template):
    layers = store.get(host_template).layers
    store.save(
        TemplateManifest(
            name="c-no-python", base=BaseInfo(kind="host"), layers=layers, python="/opt/no/python3"
        )
    )
    before = store.pins()
    with pytest.raises(sandlot.SandboxStartError):
        await _create("c-no-python")
    assert store.pins() == before
    store.pin("sb-c-orphan", store.resolve(host_template).digest)
    await BwrapProvider(_home()).cleanup_orphan("sb-c-orphan")
    assert store.pins() == before


async def test_an_unknown_template_is_not_found(store):
    before = store.pins()
    with pytest.raises(sandlot.NotFoundError):
        await _create("c-no-such-template")
    with pytest.raises(sandlot.NotFoundError):
        await _create("sha256:" + "e" * 64)
    assert store.pins() == before
