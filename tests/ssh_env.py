"""A real OpenSSH server for the tests and benchmarks, in its own network namespace.

``SshServer().start()`` runs ``/usr/sbin/sshd -D -e -f CONFIG`` with a fresh host key, a fresh
client key (in its own ``AuthorizedKeysFile``, never root's real ``authorized_keys``), a
``known_hosts`` file holding ``[HOST]:PORT <host key>`` and an ``ssh_config`` file with a host
alias (``sandlot-test``) naming HostName, Port, User, IdentityFile and UserKnownHostsFile. The
daemon runs inside a network namespace (``ip netns add`` + a veth pair with addresses in
``10.231.N.0/30``: host side ``.1``, sshd side ``.2``), so it behaves as a separate host: the
only route to it is the veth, and processes it starts cannot reach the test's loopback. The
file system is shared, as it would be with an NFS home; the namespace is only about the network.
If a namespace cannot be made here (no ``ip``, no CAP_NET_ADMIN), ``start()`` falls back to
``127.0.0.1`` and a free port and sets ``.netns`` to None.

Use::

    from ssh_env import SshServer

    server = SshServer().start()
    asyncssh.connect(server.host, port=server.port, username=server.user,
                     client_keys=[server.client_key], known_hosts=server.known_hosts)
    # or: ssh -F server.ssh_config sandlot-test true
    server.kill_connections()   # drop every live client connection (sshd stays up)
    server.stop()               # sshd, anything left running in the namespace, the namespace

In pytest, ``ssh_server`` (below) is a session-scoped fixture: import it into a conftest
(``from ssh_env import ssh_server``). It fails, not skips, when sshd cannot start. Run this
file as a script to start a server by hand and print its settings (Ctrl-C stops it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"
ALIAS = "sandlot-test"
NETNS_PREFIX = "slssh-"
_LOCK = "/run/sandlot-ssh-env.lock"


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SshServer:
    """One sshd with its own keys, config files and (when possible) network namespace."""

    def __init__(self, root: Path | None = None, *, use_netns: bool = True, port: int = 2222):
        self.root = root or Path(tempfile.mkdtemp(prefix="slssh-", dir="/tmp"))
        self.use_netns = use_netns
        self.alias = ALIAS
        self.user = "root" if os.geteuid() == 0 else os.environ.get("USER", "root")
        self.host = "127.0.0.1"
        self.port = port
        self.netns: str | None = None
        self._veth: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.host_key = self.root / "ssh_host_ed25519_key"
        self.client_key = self.root / "id_ed25519"
        self.known_hosts = self.root / "known_hosts"
        self.ssh_config = self.root / "ssh_config"
        self.sshd_config = self.root / "sshd_config"
        self.authorized_keys = self.root / "authorized_keys"
        self.log = self.root / "sshd.log"
        self.pidfile = self.root / "sshd.pid"

    # -- settings -------------------------------------------------------------------------

    @property
    def host_key_line(self) -> str:
        """The server's public host key, ``TYPE BASE64``."""
        return " ".join(self.host_key.with_suffix(".pub").read_text().split()[:2])

    def known_hosts_entry(self, key_line: str | None = None) -> str:
        host = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return f"{host} {key_line or self.host_key_line}\n"

    def write_other_known_hosts(self, path: Path) -> Path:
        """A known_hosts file naming this host with a *different* key (a changed host key)."""
        other = self.root / "other_host_key"
        if not other.exists():
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "other", "-f", str(other))
        line = " ".join(other.with_suffix(".pub").read_text().split()[:2])
        path.write_text(self.known_hosts_entry(line))
        return path

    def provider_config(self, **extra: object) -> dict[str, object]:
        """Settings for the ``ssh`` provider (``SANDLOT_PROVIDER_CONFIG``) to reach this server."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "known_hosts": str(self.known_hosts),
            "client_keys": [str(self.client_key)],
            "ssh_config": [],
            **extra,
        }

    def ssh_argv(self, *command: str) -> list[str]:
        """An OpenSSH client command line that runs COMMAND on this server."""
        return ["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", self.alias, *command]

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, wait: float = 20.0) -> SshServer:
        if not os.path.exists(SSHD):
            raise RuntimeError(f"{SSHD} is missing (apt-get install openssh-server)")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self._keys()
        if self.use_netns:
            try:
                self._make_netns()
            except (OSError, subprocess.CalledProcessError) as exc:
                # No CAP_NET_ADMIN or no iproute2: loopback still gives a real sshd.
                print(f"ssh_env: no network namespace ({exc}); using loopback", file=sys.stderr)
                self._drop_netns()
        if self.netns is None:
            self.host = "127.0.0.1"
            if self.port == 2222:
                self.port = _free_port()
        self._write_configs()
        _run(SSHD, "-t", "-f", str(self.sshd_config))
        argv = [SSHD, "-D", "-e", "-f", str(self.sshd_config)]
        if self.netns is not None:
            # nsenter (not `ip netns exec`): the network only, no private mount namespace.
            argv = ["nsenter", f"--net=/run/netns/{self.netns}", *argv]
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + wait
        while not self._answers():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sshd did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """Stop sshd, everything still running in its namespace, and the namespace."""
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
            self._proc = None
        self.kill_connections()
        self._drop_netns()

    def kill_connections(self) -> int:
        """Drop every live client connection (SIGKILL sshd's per-connection processes).

        The listener stays up, so clients can connect again; processes a session started
        detached (``setsid``) keep running, as they would on a real host after a network drop.
        Returns how many connection processes were killed.
        """
        if self._proc is None:
            return 0
        children = _run("pgrep", "-P", str(self._proc.pid), check=False).stdout.split()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        return len(children)

    def __enter__(self) -> SshServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals ------------------------------------------------------------------------

    def _keys(self) -> None:
        keys = ((self.host_key, "sandlot-test-host"), (self.client_key, "sandlot-test"))
        for key, comment in keys:
            if not key.exists():
                _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key))
        shutil.copyfile(self.client_key.with_suffix(".pub"), self.authorized_keys)
        os.chmod(self.authorized_keys, 0o600)

    def _write_configs(self) -> None:
        self.sshd_config.write_text(
            f"Port {self.port}\n"
            f"ListenAddress {self.host}\n"
            f"HostKey {self.host_key}\n"
            f"PidFile {self.pidfile}\n"
            f"AuthorizedKeysFile {self.authorized_keys}\n"
            # The key files live under /tmp (mode 1777), which StrictModes refuses.
            "StrictModes no\n"
            "UsePAM no\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\n"
            "PermitRootLogin prohibit-password\n"
            "AllowStreamLocalForwarding yes\n"
            "AllowTcpForwarding yes\n"
            "MaxStartups 200\n"
            "MaxSessions 200\n"
            "PrintMotd no\n"
            "UseDNS no\n"
            "LogLevel VERBOSE\n"
            "Subsystem sftp internal-sftp\n"
            # Lets a benchmark measure an exec without root's .bashrc: bash reads it for
            # commands run by sshd only when SHLVL is unset (shell level < 2).
            "AcceptEnv SHLVL\n"
        )
        self.known_hosts.write_text(self.known_hosts_entry())
        self.ssh_config.write_text(
            f"Host {self.alias}\n"
            f"  HostName {self.host}\n"
            f"  Port {self.port}\n"
            f"  User {self.user}\n"
            f"  IdentityFile {self.client_key}\n"
            f"  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.known_hosts}\n"
            f"  StrictHostKeyChecking yes\n"
        )

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as s:
                return s.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    def _make_netns(self) -> None:
        if shutil.which("ip") is None or shutil.which("nsenter") is None:
            raise OSError("ip or nsenter is not installed")
        with open(_LOCK, "a") as lock:
            # Concurrent test sessions each take a free /30; the lock keeps two from picking one.
            fcntl.flock(lock, fcntl.LOCK_EX)
            _reap_stale_namespaces()
            used = _run("ip", "-o", "-4", "addr", "show").stdout
            subnet = next(n for n in range(1, 255) if f" 10.231.{n}." not in used)
            tag = f"{os.getpid() % 100000}{subnet}"[-9:]
            self.netns = f"{NETNS_PREFIX}{os.getpid()}-{subnet}"
            self._veth = f"slh{tag}"
            peer = f"sln{tag}"
            _run("ip", "netns", "add", self.netns)
            _run("ip", "link", "add", self._veth, "type", "veth", "peer", "name", peer)
            _run("ip", "link", "set", peer, "netns", self.netns)
            _run("ip", "addr", "add", f"10.231.{subnet}.1/30", "dev", self._veth)
            _run("ip", "link", "set", self._veth, "up")
            ns = ("ip", "-n", self.netns)
            _run(*ns, "addr", "add", f"10.231.{subnet}.2/30", "dev", peer)
            _run(*ns, "link", "set", peer, "up")
            _run(*ns, "link", "set", "lo", "up")
            self.host = f"10.231.{subnet}.2"

    def _drop_netns(self) -> None:
        if self.netns is not None:
            _kill_namespace(self.netns)
        if self._veth is not None:
            _run("ip", "link", "del", self._veth, check=False)
        self.netns = None
        self._veth = None


def _kill_namespace(name: str) -> None:
    for pid in _run("ip", "netns", "pids", name, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    _run("ip", "netns", "del", name, check=False)


def _reap_stale_namespaces() -> None:
    """Namespaces (and their veths) left by test sessions that died without stopping sshd."""
    for line in _run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(NETNS_PREFIX):
            continue
        with contextlib.suppress(ValueError, IndexError):
            if not _pid_alive(int(name[len(NETNS_PREFIX) :].split("-")[0])):
                _kill_namespace(name)  # deleting the namespace deletes the veth pair too


@pytest.fixture(scope="session")
def ssh_server() -> Iterator[SshServer]:
    """A real sshd for the whole test session; the session fails if it cannot start."""
    server = SshServer().start()
    try:
        yield server
    finally:
        server.stop()
        if not os.environ.get("SANDLOT_TEST_KEEP_HOME"):
            shutil.rmtree(server.root, ignore_errors=True)


if __name__ == "__main__":
    with SshServer() as running:
        print(
            json.dumps(
                {
                    "host": running.host,
                    "port": running.port,
                    "user": running.user,
                    "netns": running.netns,
                    "alias": running.alias,
                    "ssh_config": str(running.ssh_config),
                    "known_hosts": str(running.known_hosts),
                    "client_key": str(running.client_key),
                },
                indent=2,
            )
        )
        print(f"try: {' '.join(running.ssh_argv('true'))}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
