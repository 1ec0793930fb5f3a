"""SSH to the host: connecting (host keys always checked, see
:mod:`sandlot.providers.ssh_connect`), and running commands there.

asyncssh (the ``ssh`` extra) is imported only when a connection is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import HostKeyError, ProvisionError
from ..providers import ssh_connect as strict
from .exits import EXIT_AUTH, EXIT_UNREACHABLE, EXIT_USAGE
from .target import SshOptions, Target

if TYPE_CHECKING:
    import asyncssh

CONNECT_TIMEOUT = 15.0
KEEPALIVE_INTERVAL = 15.0
LOG_TAIL_LINES = 30


def import_asyncssh() -> Any:
    try:
        import asyncssh
    except ImportError:
        raise ProvisionError(
            "sandlot remote needs asyncssh: pip install 'sandlot[ssh]'", EXIT_USAGE
        ) from None
    return asyncssh


async def ssh_connect(
    target: Target, ssh: SshOptions, *, keepalive: bool = False
) -> asyncssh.SSHClientConnection:
    """An SSH connection with strict host-key checking; failures as ProvisionError or
    HostKeyError with one clear line."""
    asyncssh = import_asyncssh()
    kwargs: dict[str, Any] = {
        "host": target.host,
        "port": target.port or (),
        "connect_timeout": CONNECT_TIMEOUT,
        "config": [ssh.ssh_config] if ssh.ssh_config else (),
    }
    if target.user:
        kwargs["username"] = target.user
    if ssh.identity:
        kwargs["client_keys"] = [ssh.identity]
    if keepalive:  # the tunnel notices a dead connection and dials again
        kwargs["keepalive_interval"] = KEEPALIVE_INTERVAL
        kwargs["keepalive_count_max"] = 3
    if ssh.known_hosts:
        kwargs["known_hosts"] = ssh.known_hosts
    try:
        await strict.enforce_known_hosts(asyncssh, kwargs)
    except (asyncssh.ConfigParseError, OSError) as exc:
        raise ProvisionError(f"cannot read the SSH config: {exc}", EXIT_USAGE) from None
    try:
        return await asyncssh.connect(**kwargs)
    except (OSError, asyncssh.Error) as exc:
        translated = _connect_error(exc, target, ssh)
        if translated is None:
            raise
        raise translated from None


def _connect_error(exc: Exception, target: Target, ssh: SshOptions) -> Exception | None:
    """The ProvisionError or HostKeyError, with its exit code, for a failed connect; None for
    an error left as it is."""
    asyncssh = import_asyncssh()
    where = str(target)
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        files = ssh.known_hosts or "~/.ssh/known_hosts (or the UserKnownHostsFile of ssh_config)"
        return HostKeyError(
            f"the host key of {where} is not trusted: it is not in {files}, or it changed. "
            "Check its fingerprint, then add it (e.g. ssh-keyscan -p PORT HOST >> "
            "~/.ssh/known_hosts) or pass --known-hosts FILE"
        )
    if isinstance(exc, asyncssh.PermissionDenied):
        return ProvisionError(
            f"{where} refused our SSH key (no key offered was accepted); pass --identity FILE "
            "or load the key into ssh-agent",
            EXIT_AUTH,
        )
    if isinstance(exc, (asyncssh.KeyImportError, asyncssh.KeyEncryptionError)):
        return ProvisionError(f"cannot load the SSH key: {exc}", EXIT_AUTH)
    if isinstance(exc, asyncssh.ConfigParseError):
        return ProvisionError(f"cannot read the SSH config: {exc}", EXIT_USAGE)
    if isinstance(exc, asyncssh.DisconnectError):
        return ProvisionError(f"SSH to {where} failed: {exc.reason}", EXIT_UNREACHABLE)
    if isinstance(exc, TimeoutError):
        return ProvisionError(
            f"cannot reach {where}: no SSH answer within {CONNECT_TIMEOUT:g} s", EXIT_UNREACHABLE
        )
    if isinstance(exc, OSError):
        reason = (os.strerror(exc.errno) if exc.errno else str(exc)) or type(exc).__name__
        if exc.filename:  # a file the SSH config names (a key, a known_hosts)
            return ProvisionError(f"cannot read {exc.filename}: {reason}", EXIT_USAGE)
        return ProvisionError(f"cannot reach {where}: {reason}", EXIT_UNREACHABLE)
    return None


@contextlib.asynccontextmanager
async def connected(target: Target, ssh: SshOptions) -> AsyncIterator[asyncssh.SSHClientConnection]:
    conn = await ssh_connect(target, ssh)
    try:
        yield conn
    finally:
        conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.wait_closed(), 5)


@dataclass
class Completed:
    status: int
    stdout: str
    stderr: str


async def run_remote(
    conn: asyncssh.SSHClientConnection,
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    input: bytes | None = None,
    timeout: float = 120.0,
) -> Completed:
    """Run ARGV on the host (through its login shell: every word quoted)."""
    asyncssh = import_asyncssh()
    words = ["env", *(f"{k}={v}" for k, v in (env or {}).items()), *argv] if env else argv
    try:
        result = await conn.run(
            shlex.join(words), input=input, encoding=None, check=False, timeout=timeout
        )
    except TimeoutError:
        raise ProvisionError(f"{argv[0]} did not finish on the host within {timeout:g} s") from None
    except (OSError, asyncssh.Error) as exc:
        raise ProvisionError(f"the SSH session failed: {exc}", EXIT_UNREACHABLE) from None
    out, err = result.stdout or b"", result.stderr or b""
    return Completed(
        status=result.exit_status if result.exit_status is not None else 255,
        stdout=out.decode(errors="replace") if isinstance(out, bytes) else str(out),
        stderr=err.decode(errors="replace") if isinstance(err, bytes) else str(err),
    )


def last_lines(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
