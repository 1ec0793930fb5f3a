"""``sandlot remote up`` / ``down`` against the real sshd of ``tests/ssh_env.py``.

The "remote" host is this machine reached over SSH (in its own network namespace when one can
be made): it shares our file system and process table, so the tests install into a temporary
remote folder with ``--python sys.executable`` (whose site-packages already hold sandlot's
dependencies, so the venv reuses them) and can look at the remote server's process directly.
Nothing is faked. Both state folders (ours and the remote server's) are temporary.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from ssh_env import SshServer

import sandlot
from sandlot.deploy import (
    EXIT_AUTH,
    EXIT_HOST_KEY,
    EXIT_PORT_IN_USE,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    build_wheel,
)

# The sub-app as `sandlot remote` runs it.
CLI = [sys.executable, "-m", "sandlot.cli", "remote"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _gone(pid: int) -> bool:
    """No such process, or only a zombie waiting for whichever process reaps orphans."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=5) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


class Remote:
    """Runs ``sandlot remote ...`` with a temporary local state folder."""

    def __init__(self, server: SshServer, home: Path, remote_dir: Path, remote_home: Path):
        self.server = server
        self.home = home
        self.remote_dir = remote_dir
        self.remote_home = remote_home
        self.env = {**os.environ, "SANDLOT_HOME": str(home)}
        for name in ("SANDLOT_URL", "SANDLOT_API_KEY"):
            self.env.pop(name, None)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*CLI, *args], env=self.env, capture_output=True, text=True, timeout=600
        )
        assert "Traceback" not in done.stderr, done.stderr
        return done

    def up(self, port: int, local_port: int, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.run(
            "up",
            self.server.alias,
            "--ssh-config",
            str(self.server.ssh_config),
            "--python",
            sys.executable,
            "--remote-dir",
            str(self.remote_dir),
            "--remote-home",
            str(self.remote_home),
            "--port",
            str(port),
            "--local-port",
            str(local_port),
            *extra,
        )

    def record(self) -> dict[str, object]:
        (path,) = (self.home / "remote").glob("*.json")
        return dict(json.loads(path.read_text()))


@pytest.fixture
def remote(ssh_server: SshServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Remote]:
    # The package's conftest points the embedded SDK at the ssh provider; here the SDK only
    # talks to the server that `up` starts.
    monkeypatch.delenv("SANDLOT_PROVIDER", raising=False)
    monkeypatch.delenv("SANDLOT_PROVIDER_CONFIG", raising=False)
    folders = [Path(tempfile.mkdtemp(prefix=p, dir="/tmp")) for p in ("slru-", "slrd-", "slrh-")]
    helper = Remote(ssh_server, *folders)
    try:
        yield helper
    finally:
        # Only after an up left a record: without one, down has nothing to stop (a CLI start
        # saved for each of the tests that are refused before anything starts).
        if (helper.home / "remote").is_dir() and any((helper.home / "remote").glob("*.json")):
            helper.run("down", "--force")
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


def _exports(stdout: str) -> dict[str, str]:
    found = {}
    for line in stdout.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        found[name] = value
    return found


def test_up_serves_down_stops_and_up_again_reuses_the_install(remote: Remote) -> None:
    port, local_port = _free_port(), _free_port()
    digest = build_wheel().digest
    first = remote.up(port, local_port)
    assert first.returncode == 0, first.stderr
    env = _exports(first.stdout)
    url, key = env["SANDLOT_URL"], env["SANDLOT_API_KEY"]
    assert url == f"http://127.0.0.1:{local_port}"
    assert key.startswith("sl_")

    # The printed URL and key work, and the key is needed.
    client = sandlot.Client(url, key)
    with sandlot.Sandbox.create(client=client) as sb:
        result = sb.commands.run("echo hello from remote up")
    assert (result.exit_code, result.stdout) == (0, "hello from remote up\n")
    with pytest.raises(sandlot.AuthenticationError):
        sandlot.Sandbox.list(client=sandlot.Client(url, "sl_000000000000_wrong"))

    record = remote.record()
    server_pid, tunnel_pid = int(str(record["server_pid"])), int(str(record["tunnel_pid"]))
    assert not _gone(server_pid) and not _gone(tunnel_pid)

    # Up again while it is up: the same URL and key, nothing restarted.
    again = remote.up(port, local_port)
    assert again.returncode == 0, again.stderr
    assert "already up" in again.stderr
    assert _exports(again.stdout) == env

    down = remote.run("down")
    assert down.returncode == 0, down.stderr
    assert not _answers(url)
    assert _gone(server_pid), "the remote server still runs"
    assert _gone(tunnel_pid), "the tunnel process still runs"
    assert not list((remote.home / "remote").glob("*.json"))
    assert not (remote.remote_dir / "server.pid").exists()

    twice = remote.run("down")
    assert twice.returncode == 0, twice.stderr
    assert "nothing is up" in twice.stderr

    # Up after down: the installed version is reused (unless the tree changed meanwhile).
    marker = remote.remote_dir / "installed.json"
    installed_at = marker.stat().st_mtime_ns
    unchanged = build_wheel().digest == digest
    third = remote.up(port, local_port)
    assert third.returncode == 0, third.stderr
    if unchanged:
        assert "already installed" in third.stderr
        assert marker.stat().st_mtime_ns == installed_at
    env3 = _exports(third.stdout)
    assert env3["SANDLOT_API_KEY"] != key  # the old key was revoked with the old server
    assert _answers(env3["SANDLOT_URL"])
    with pytest.raises(sandlot.AuthenticationError):
        sandlot.Sandbox.list(client=sandlot.Client(url, key))


@pytest.mark.parametrize(
    "target", ["a@b@c", "@host", "user@", "us er@host", "host:0", "host:70000", "[zz::1]"]
)
def test_a_malformed_target_is_a_usage_error(remote: Remote, target: str) -> None:
    done = remote.run("up", target)
    assert done.returncode == EXIT_USAGE
    assert "USER@HOST" in done.stderr or "port" in done.stderr
    assert done.stdout == ""


def test_an_unknown_or_changed_host_key_is_refused(remote: Remote, tmp_path: Path) -> None:
    server = remote.server
    address = f"{server.user}@{server.host}:{server.port}"
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    other = server.write_other_known_hosts(tmp_path / "other_known_hosts")
    for known_hosts in (empty, other):
        done = remote.run(
            "up", address, "--known-hosts", str(known_hosts), "-i", str(server.client_key)
        )
        assert done.returncode == EXIT_HOST_KEY, done.stderr
        assert "host key" in done.stderr and "not trusted" in done.stderr
        assert done.stdout == ""

    # An SSH config that turns checking off (`UserKnownHostsFile none`) does not here.
    lax = tmp_path / "ssh_config"
    lax.write_text(
        "".join(
            "  UserKnownHostsFile none\n" if "UserKnownHostsFile" in line else line
            for line in server.ssh_config.read_text().splitlines(keepends=True)
        )
    )
    remote.env["HOME"] = str(tmp_path)  # no ~/.ssh/known_hosts of the real user's to fall on
    done = remote.run("up", server.alias, "--ssh-config", str(lax))
    assert done.returncode == EXIT_HOST_KEY, done.stderr


def test_a_refused_key_and_an_unreachable_host(remote: Remote, tmp_path: Path) -> None:
    server = remote.server
    stranger = tmp_path / "id_stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    address = f"{server.user}@{server.host}:{server.port}"
    refused = remote.run(
        "up", address, "--known-hosts", str(server.known_hosts), "-i", str(stranger)
    )
    assert refused.returncode == EXIT_AUTH, refused.stderr
    assert "refused our SSH key" in refused.stderr

    nobody = remote.run("up", f"root@127.0.0.1:{_free_port()}")  # nothing listens there
    assert nobody.returncode == EXIT_UNREACHABLE, nobody.stderr
    assert "cannot reach" in nobody.stderr


def test_a_local_port_in_use_is_refused_before_connecting(remote: Remote) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = remote.up(_free_port(), port)
    assert done.returncode == EXIT_PORT_IN_USE, done.stderr
    assert f"port {port} is in use" in done.stderr
    assert not (remote.home / "remote").exists() or not list((remote.home / "remote").glob("*"))
