"""The ssh provider's own behaviour against a real sshd in a network namespace: both
isolations, strict host keys, bad settings, a dropped connection, other processes, the agent
copied once. The remote host shares this machine's file system, so tests may look at remote
paths directly; its processes are this machine's too (the same PID namespace).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from integration.helpers import wait_until
from ssh_env import SshServer

import sandlot
from sandlot.manager import Manager
from sandlot.providers.procinfo import is_running
from sandlot.providers.ssh import SshProvider

from .conftest import PYTHON

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _explicit_settings_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests name every setting themselves: the package's defaults for the ssh
    provider (SANDLOT_PROVIDER_CONFIG, for the shared tests) would fill in what a test
    leaves out on purpose."""
    monkeypatch.delenv("SANDLOT_PROVIDER_CONFIG", raising=False)


@pytest.fixture
def settings(ssh_settings: dict[str, Any]) -> dict[str, Any]:
    """The server's settings with automatic isolation (bwrap works on this host)."""
    return {**ssh_settings, "isolation": "auto"}


@pytest.fixture
def box(settings: dict[str, Any]) -> Iterator[sandlot.Sandbox]:
    with sandlot.Sandbox.create(provider="ssh", **settings) as sandbox:
        yield sandbox


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="slt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- what runs, and where --------------------------------------------------------------------


def test_commands_files_and_code_under_bwrap(box: sandlot.Sandbox) -> None:
    assert box.provider == "ssh"
    assert box.info.handle["isolation"] == "bwrap" and box.info.handle["isolated"] is True
    r = box.commands.run("id -u; hostname; pwd; echo $HOME")
    assert r.stdout == "1000\nsandlot\n/workspace\n/workspace\n"
    box.files.write("/workspace/data/in.txt", "over ssh\n")
    assert box.commands.run("cat data/in.txt").stdout == "over ssh\n"
    assert box.files.read("/workspace/data/in.txt") == "over ssh\n"
    # The remote folder is the sandbox's /workspace.
    remote = Path(box.info.handle["dir"])
    assert (remote / "workspace" / "data" / "in.txt").read_text() == "over ssh\n"
    assert box.run_code("x = 6 * 7\nx").text == "42"
    # No network inside, not even to the machine that runs the agent.
    assert box.commands.run("cat /sys/class/net/*/operstate 2>/dev/null | sort -u").stdout in (
        "",
        "unknown\n",
        "down\n",
    )


def test_an_allowlist_is_refused_where_the_sandbox_has_the_hosts_network(
    settings: dict[str, Any],
) -> None:
    unisolated = {**settings, "isolation": "none"}
    with pytest.raises(sandlot.EgressError, match="without isolation"):
        sandlot.Sandbox.create(provider="ssh", network={"allow": ["a.test"]}, **unisolated)
    assert not [i for i in sandlot.Sandbox.list() if i.provider == "ssh"]  # nothing left behind


def test_unisolated_mode_maps_the_workspace(settings: dict[str, Any]) -> None:
    with sandlot.Sandbox.create(provider="ssh", **{**settings, "isolation": "none"}) as sb:
        handle = sb.info.handle
        assert handle["isolation"] == "none" and handle["isolated"] is False
        workspace = f"{handle['dir']}/workspace"
        # As the process provider does: /workspace in file operations, working folders and
        # HOME is the sandbox's remote folder; the command sees the host as it is.
        sb.files.write("/workspace/a.txt", "mapped\n")
        assert Path(workspace, "a.txt").read_text() == "mapped\n"
        r = sb.commands.run("pwd; echo $HOME; cat a.txt; id -u")
        assert r.stdout == f"{workspace}\n{workspace}\nmapped\n{os.geteuid()}\n"
        assert sb.run_code("import os\nos.getcwd()").text == repr(workspace)
    assert not Path(handle["dir"]).exists()


def test_provider_reports_what_it_is(settings: dict[str, Any]) -> None:
    info = SshProvider(Path(os.environ["SANDLOT_HOME"])).info()
    assert info.name == "ssh" and info.available
    assert info.isolated is False  # per sandbox: see the handle's "isolation"
    assert {"remote", "reconnect", "isolation"} <= set(info.capabilities)


def test_a_missing_remote_python_is_a_clear_error(settings: dict[str, Any]) -> None:
    with pytest.raises(sandlot.ProviderUnavailableError, match="/nonexistent/python3"):
        sandlot.Sandbox.create(provider="ssh", **{**settings, "python": "/nonexistent/python3"})


# -- host keys, credentials, settings -------------------------------------------------------


def test_an_unknown_host_key_is_refused(settings: dict[str, Any], scratch: Path) -> None:
    empty = scratch / "known_hosts"
    empty.write_text("")
    with pytest.raises(sandlot.HostKeyError) as caught:
        sandlot.Sandbox.create(provider="ssh", **{**settings, "known_hosts": str(empty)})
    assert caught.value.code == "host_key_rejected"
    assert isinstance(caught.value, sandlot.ProviderUnavailableError)
    assert "known_hosts" in str(caught.value)


def test_a_changed_host_key_is_refused(
    settings: dict[str, Any], ssh_server: SshServer, scratch: Path
) -> None:
    other = ssh_server.write_other_known_hosts(scratch / "known_hosts")
    before = {info.id for info in sandlot.Sandbox.list()}
    with pytest.raises(sandlot.HostKeyError):
        sandlot.Sandbox.create(provider="ssh", **{**settings, "known_hosts": str(other)})
    assert {info.id for info in sandlot.Sandbox.list()} == before  # no record left behind


def test_known_hosts_none_in_ssh_config_does_not_turn_checking_off(
    ssh_server: SshServer, remote_dir: str, scratch: Path
) -> None:
    config = scratch / "ssh_config"
    config.write_text(
        f"Host unchecked\n  HostName {ssh_server.host}\n  Port {ssh_server.port}\n"
        f"  User {ssh_server.user}\n  IdentityFile {ssh_server.client_key}\n"
        "  UserKnownHostsFile none\n  StrictHostKeyChecking no\n"
    )
    with pytest.raises(sandlot.HostKeyError):
        sandlot.Sandbox.create(
            provider="ssh", host="unchecked", ssh_config=[str(config)], remote_dir=remote_dir
        )


def test_a_missing_known_hosts_file_is_refused(settings: dict[str, Any], scratch: Path) -> None:
    with pytest.raises(sandlot.HostKeyError, match="no known_hosts file"):
        sandlot.Sandbox.create(provider="ssh", **{**settings, "known_hosts": str(scratch / "no")})


def test_a_key_the_server_does_not_accept(settings: dict[str, Any], scratch: Path) -> None:
    key = scratch / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    with pytest.raises(sandlot.ProviderUnavailableError, match="authentication") as caught:
        sandlot.Sandbox.create(provider="ssh", **{**settings, "client_keys": [str(key)]})
    assert not isinstance(caught.value, sandlot.HostKeyError)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"isolation": "chroot"}, "isolation"),
        ({"port": 0}, "port"),
        ({"connect_timeout": -1}, "connect_timeout"),
        ({"client_keys": 5}, "client_keys"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_settings_name_the_field(
    settings: dict[str, Any], change: dict[str, Any], field: str
) -> None:
    with pytest.raises(sandlot.InvalidArgumentError, match=field):
        sandlot.Sandbox.create(provider="ssh", **{**settings, **change})


def test_the_host_is_required() -> None:
    with pytest.raises(sandlot.InvalidArgumentError, match="host"):
        sandlot.Sandbox.create(provider="ssh")


def test_a_host_alias_from_an_ssh_config_file(ssh_server: SshServer, remote_dir: str) -> None:
    """Only the alias and the config file: HostName, Port, User, IdentityFile and
    UserKnownHostsFile all come from the file, as OpenSSH's own client reads them."""
    with sandlot.Sandbox.create(
        provider="ssh",
        host=ssh_server.alias,
        ssh_config=[str(ssh_server.ssh_config)],
        python=PYTHON,
        remote_dir=remote_dir,
    ) as sb:
        assert sb.commands.run("echo via alias").stdout == "via alias\n"
        assert sb.info.handle["host"] == ssh_server.alias


# -- lifetime: drops, other processes, destroy -------------------------------------------------


def test_reconnect_after_the_connection_drops(box: sandlot.Sandbox, ssh_server: SshServer) -> None:
    """The agent does not depend on the SSH session: a command keeps running while the
    connection is down, and the same sandbox object answers once it is back."""
    script = (
        "echo $$ > /workspace/bg.pid; "
        "while [ ! -e /workspace/stop ]; do sleep 0.02; done; echo finished > /workspace/done"
    )
    bg = box.commands.run(script, background=True)
    pid = box.commands.run(
        "while [ ! -s /workspace/bg.pid ]; do sleep 0.02; done; cat /workspace/bg.pid"
    ).stdout.strip()
    assert ssh_server.kill_connections() >= 1
    # The background command's output stream was in flight: it is lost with the connection.
    with pytest.raises(sandlot.SandboxClosedError):
        bg.wait()
    assert box.commands.run("echo back").stdout == "back\n"
    assert box.commands.run(f"kill -0 {pid}").exit_code == 0  # still running
    box.files.write("/workspace/stop", "")
    waited = box.commands.run("while [ ! -e /workspace/done ]; do sleep 0.02; done; cat done")
    assert waited.stdout == "finished\n"


async def _close_connections(manager: Manager) -> None:
    """What a provider close hook in Manager.close would do: drop the SSH connections."""
    provider = manager.provider("ssh")
    assert isinstance(provider, SshProvider)
    await provider.close()


def _in_another_process(code: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_connect_and_kill_from_another_process(settings: dict[str, Any]) -> None:
    """A fresh process (its own manager) finds the sandbox from its record alone."""
    sb = sandlot.Sandbox.create(provider="ssh", **settings)
    handle = sb.info.handle
    sb.files.write("/workspace/note", "from the first process")
    read = "import sandlot,sys; sb = sandlot.Sandbox.connect(sys.argv[1]); "
    read += "print(sb.files.read('/workspace/note'))"
    assert _in_another_process(read, sb.id) == "from the first process\n"
    assert any(info.id == sb.id for info in sandlot.Sandbox.list())
    _in_another_process("import sandlot,sys; sandlot.Sandbox.connect(sys.argv[1]).kill()", sb.id)
    assert not is_running(handle["pid"], handle["started"])
    assert not Path(handle["dir"]).exists()
    with pytest.raises(sandlot.SandboxClosedError):
        sb.commands.run("true")
    assert all(info.id != sb.id for info in sandlot.Sandbox.list())


async def test_destroy_is_idempotent(settings: dict[str, Any]) -> None:
    sb = await sandlot.AsyncSandbox.create(provider="ssh", **settings)
    handle = sb.info.handle
    await sb.commands.run("sleep 300 &")  # a grandchild too: the whole tree goes
    await sb.kill()
    assert not is_running(handle["pid"], handle["started"])
    assert not Path(handle["dir"]).exists()
    other = SshProvider(Path(os.environ["SANDLOT_HOME"]))
    try:
        await other.destroy(handle)  # again, from a provider that never saw it
        await other.destroy({})  # a create that failed before anything started
    finally:
        await other.close()
    assert not other.is_alive({})


async def test_the_agent_is_copied_once(settings: dict[str, Any], scratch: Path) -> None:
    remote_dir = str(scratch)
    config = {**settings, "remote_dir": remote_dir}
    provider = Manager.current().provider("ssh")
    assert isinstance(provider, SshProvider)
    uploads = provider.uploads
    first = await sandlot.AsyncSandbox.create(provider="ssh", **config)
    assert provider.uploads == uploads + 1
    copies = list(Path(remote_dir, "agent").iterdir())
    assert len(copies) == 1 and (copies[0] / "agent" / "server.py").is_file()
    inode = copies[0].stat().st_ino
    second = await sandlot.AsyncSandbox.create(provider="ssh", **config)
    assert provider.uploads == uploads + 1
    # Another manager (another connection and helper) finds the copy there, too.
    fresh = Manager()
    try:
        third = await fresh.create(sandlot.SandboxSpec(provider="ssh", config=config))
        fresh_provider = fresh.provider("ssh")
        assert isinstance(fresh_provider, SshProvider) and fresh_provider.uploads == 0
        await fresh.kill(third.info.id)
    finally:
        await fresh.close()
        await _close_connections(fresh)
    assert [p.stat().st_ino for p in Path(remote_dir, "agent").iterdir()] == [inode]
    for sb in (first, second):
        assert (await sb.commands.run("echo ok")).stdout == "ok\n"
        await sb.kill()


async def test_a_new_helper_removes_folders_of_ended_sandboxes(settings: dict[str, Any]) -> None:
    """A sandbox whose deadline passed while no sandlot was there to destroy it leaves its
    remote folder; the next connection's helper removes it (and nothing that still runs)."""
    sandboxes = Path(settings["remote_dir"], "sandboxes")
    sandboxes.mkdir(parents=True, exist_ok=True)
    ended = sandboxes / "sb-000000000000"
    (ended / "workspace").mkdir(parents=True, exist_ok=True)
    (ended / "agent.pid").write_text("4194305 1\n")  # above any pid_max: never running
    fresh = Manager()
    try:
        live = await fresh.create(sandlot.SandboxSpec(provider="ssh", config=settings))
        assert wait_until(lambda: not ended.exists(), timeout=30)
        assert Path(live.info.handle["dir"]).is_dir()  # a running one stays
        await fresh.kill(live.info.id)
    finally:
        await fresh.close()
        await _close_connections(fresh)
