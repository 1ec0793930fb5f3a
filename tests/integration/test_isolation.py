"""Isolation: what a bwrap sandbox must not see, reach or change on the host."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandlot
from sandlot.errors import NoSpaceError

from .helpers import home


@pytest.fixture
def root_secret() -> Iterator[Path]:
    """A host file under /root holding a secret."""
    fd, name = tempfile.mkstemp(prefix="sandlot-secret-", dir="/root")
    os.write(fd, b"TOP-SECRET-0xC0FFEE\n")
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def test_host_file_under_root_is_invisible(sb: sandlot.Sandbox, root_secret: Path) -> None:
    assert root_secret.read_text().startswith("TOP-SECRET")  # the host does see it

    r = sb.commands.run(["cat", str(root_secret)])
    assert r.exit_code != 0
    assert "TOP-SECRET" not in r.stdout

    r = sb.commands.run("ls -la /root; ls /home; true")
    assert root_secret.name not in r.stdout

    assert sb.files.exists(str(root_secret)) is False
    with pytest.raises(sandlot.FileNotFoundInSandboxError):
        sb.files.read(str(root_secret))


def test_host_state_folder_and_secrets_in_etc_are_invisible(sb: sandlot.Sandbox) -> None:
    """The state folder (sockets of every sandbox, the store) and /etc's secrets stay out."""
    assert (home() / "state.db").exists()
    assert sb.files.exists(str(home() / "state.db")) is False
    assert sb.files.exists(str(home() / "sandboxes" / sb.id)) is False
    for path in ("/etc/shadow", "/etc/ssh", "/root/.ssh", "/var/run/docker.sock"):
        assert sb.files.exists(path) is False, path


def test_host_environment_variable_is_invisible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDLOT_TEST_HOST_SECRET", "hunter2-do-not-leak")
    with sandlot.Sandbox.create(env={"VISIBLE": "yes"}) as box:
        r = box.commands.run("env")
        assert r.exit_code == 0
        assert "VISIBLE=yes" in r.stdout  # the positive control: what the caller passed
        assert "hunter2" not in r.stdout
        assert "SANDLOT_TEST_HOST_SECRET" not in r.stdout
        assert "SANDLOT_HOME" not in r.stdout
        # Not in any process of the sandbox either (the agent and bwrap included).
        r = box.commands.run("cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'")
        assert "PATH=" in r.stdout
        assert "hunter2" not in r.stdout
        assert "SANDLOT_HOME" not in r.stdout


@pytest.mark.parametrize("folder", ["/", "/usr", "/usr/bin", "/etc", "/bin", "/var", "/.sandlot"])
def test_writes_outside_workspace_and_tmp_fail(sb: sandlot.Sandbox, folder: str) -> None:
    name = f"sandlot-probe-{os.getpid()}"
    target = f"{folder.rstrip('/')}/{name}"
    r = sb.commands.run(["sh", "-c", f'echo x > "{target}"'])
    assert r.exit_code != 0
    assert sb.commands.run(["test", "-e", target]).exit_code != 0
    with pytest.raises(sandlot.PermissionDeniedError):
        sb.files.write(target, "x")
    assert not os.path.exists(target)  # and certainly not on the host


def test_dev_is_not_writable(sb: sandlot.Sandbox) -> None:
    """/dev is outside /workspace and /tmp: a writable /dev is a tmpfs without a size cap
    (half the host's RAM by default), which side-steps ``tmp_mb``. /dev/shm is the one
    deliberate exception (capped at 64 MB)."""
    r = sb.commands.run("echo x > /dev/sandlot-probe")
    assert r.exit_code != 0, "a file could be created directly in /dev"
    assert sb.commands.run("echo x > /dev/shm/ok").exit_code == 0


def test_workspace_and_tmp_are_writable(sb: sandlot.Sandbox) -> None:
    """The positive control for the test above."""
    r = sb.commands.run("echo a > /workspace/a && echo b > /tmp/b && cat /workspace/a /tmp/b")
    assert (r.exit_code, r.stdout) == (0, "a\nb\n")
    # /workspace is the sandbox's host folder.
    assert (home() / "sandboxes" / sb.id / "workspace" / "a").read_text() == "a\n"


@pytest.fixture
def host_tcp_server() -> Iterator[int]:
    """A TCP server on the host's loopback that answers every connection with a banner."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    port = server.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.sendall(b"HOST-BANNER\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(5)
        server.close()


CONNECT = """
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    print("CONNECTED", s.recv(100))
except OSError as exc:
    print("FAILED", type(exc).__name__, exc)
    sys.exit(1)
"""


def test_host_loopback_server_is_unreachable(sb: sandlot.Sandbox, host_tcp_server: int) -> None:
    # Positive control: the server answers on the host.
    with socket.create_connection(("127.0.0.1", host_tcp_server), timeout=3) as s:
        assert s.recv(100) == b"HOST-BANNER\n"

    r = sb.commands.run(["python3", "-c", CONNECT, "127.0.0.1", str(host_tcp_server)])
    assert r.exit_code == 1, r.stdout + r.stderr
    assert "FAILED" in r.stdout
    assert "HOST-BANNER" not in r.stdout


def test_no_network_interface_but_loopback(sb: sandlot.Sandbox) -> None:
    r = sb.commands.run("cat /proc/net/dev")
    interfaces = {line.split(":")[0].strip() for line in r.stdout.splitlines()[2:]}
    assert interfaces == {"lo"}
    # An address outside the sandbox (the host's own non-loopback one, or any) is unreachable.
    r = sb.commands.run(["python3", "-c", CONNECT, "1.1.1.1", "53"])
    assert r.exit_code == 1
    assert "CONNECTED" not in r.stdout


def test_sandboxes_cannot_see_each_others_processes_or_files() -> None:
    with sandlot.Sandbox.create() as a, sandlot.Sandbox.create() as b:
        a.files.write("/workspace/only-in-a.txt", "secret of a")
        a.commands.run("echo tmp-of-a > /tmp/only-in-a.tmp")
        bg = a.commands.run(["sleep", "4242"], background=True)
        try:
            # a sees its own process (the positive control) ...
            assert "sleep 4242" in a.commands.run("ps -eo args").stdout
            # ... b does not, neither through ps nor through /proc.
            r = b.commands.run("ps -eo args")
            assert r.exit_code == 0
            assert "sleep 4242" not in r.stdout
            r = b.commands.run("cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '")
            assert "4242" not in r.stdout
            # b's PID namespace holds only its own few processes.
            pids = b.commands.run("ls /proc | grep -E '^[0-9]+$'").stdout.split()
            assert len(pids) < 10, pids

            assert b.files.exists("/workspace/only-in-a.txt") is False
            assert b.files.exists("/tmp/only-in-a.tmp") is False
            assert b.files.list("/workspace") == []
            r = b.commands.run(f"ls {home()}/sandboxes/{a.id}")
            assert r.exit_code != 0
        finally:
            bg.kill()


def test_no_capabilities(sb: sandlot.Sandbox) -> None:
    r = sb.commands.run("grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb):' /proc/self/status")
    caps = dict(line.split(":\t") for line in r.stdout.splitlines())
    assert set(caps) == {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"}
    for name, value in caps.items():
        assert int(value, 16) == 0, f"{name} = {value}"
    # And in practice: privileged operations fail.
    r = sb.commands.run("chown 0:0 /workspace && echo CHOWNED")
    assert "CHOWNED" not in r.stdout
    r = sb.commands.run(["python3", "-c", "import os; os.setuid(0); print('ROOT')"])
    assert r.exit_code != 0
    assert "ROOT" not in r.stdout


def test_runs_as_uid_1000(sb: sandlot.Sandbox) -> None:
    r = sb.commands.run("id -u; id -g; whoami")
    assert r.stdout.split() == ["1000", "1000", "sandbox"]
    entry = sb.files.write("/workspace/owned", "x")
    assert entry.type == "file"
    assert sb.commands.run("stat -c %u /workspace/owned").stdout.strip() == "1000"


def test_tmp_is_size_capped() -> None:
    with sandlot.Sandbox.create(resources={"tmp_mb": 8}) as box:
        # Under the cap works (positive control) ...
        r = box.commands.run("head -c 4M /dev/zero > /tmp/small && stat -c %s /tmp/small")
        assert (r.exit_code, r.stdout.strip()) == (0, str(4 << 20))
        box.commands.run("rm /tmp/small")
        # ... 20 MB does not fit.
        r = box.commands.run("head -c 20M /dev/zero > /tmp/big")
        assert r.exit_code != 0
        assert "No space left" in r.stderr
        size = int(box.commands.run("stat -c %s /tmp/big").stdout.strip())
        assert size <= 8 << 20
        box.commands.run("rm -f /tmp/big")
        with pytest.raises(NoSpaceError):
            box.files.write("/tmp/big", b"\0" * (20 << 20))
        # The workspace is not capped by tmp_mb.
        r = box.commands.run("head -c 20M /dev/zero > /workspace/big && echo ok")
        assert r.stdout == "ok\n"


def test_hostname_is_the_sandboxes_own(sb: sandlot.Sandbox) -> None:
    assert sb.commands.run("hostname").stdout.strip() == "sandlot"
    assert socket.gethostname() != "sandlot"
