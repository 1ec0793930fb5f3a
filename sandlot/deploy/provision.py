"""``up`` and ``down``: the steps of :mod:`sandlot.deploy` in order, and undoing them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ProvisionError, SandlotError
from .exits import EXIT_NOT_READY, EXIT_PORT_IN_USE, exit_code_for
from .install import install, probe
from .progress import Reporter
from .record import Record, all_records, read_record, record_path, write_record
from .server import (
    check_remote_port,
    create_key,
    remote_log_tail,
    revoke_key,
    server_control,
    start_server,
)
from .ssh import connected, last_lines, ssh_connect
from .target import SshOptions, Target
from .tunnel import check_local_port, start_tunnel, stop_tunnel, tunnel_alive
from .wheel import build_wheel

if TYPE_CHECKING:
    import asyncssh

DEFAULT_PORT = 8787
DEFAULT_PYTHON = "python3"
DEFAULT_REMOTE_DIR = "~/.sandlot"
READY_TIMEOUT = 180.0
POLL_INTERVAL = 0.5  # a loopback /readyz through the tunnel and a status call: cheap


@dataclass(frozen=True)
class UpOptions:
    target: Target
    ssh: SshOptions = field(default_factory=SshOptions)
    port: int = DEFAULT_PORT
    local_port: int | None = None  # default: the same as port
    bind: str = "127.0.0.1"
    python: str = DEFAULT_PYTHON
    remote_dir: str = DEFAULT_REMOTE_DIR
    remote_home: str | None = None
    wait: float = READY_TIMEOUT
    reinstall: bool = False


@dataclass
class UpResult:
    record: Record
    path: Path
    already_up: bool = False
    installed: bool = False


async def readyz(url: str, timeout: float = 5.0) -> str | None:
    """None when ``url/readyz`` answers 200; else what went wrong, in a few words."""
    import aiohttp

    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(url + "/readyz") as answer,
        ):
            return None if answer.status == 200 else f"HTTP {answer.status}"
    except TimeoutError:
        return "no answer yet"
    except aiohttp.ClientError:
        return "not answering yet"


async def _key_works(url: str, token: str) -> bool:
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(url + "/v1/sandboxes", headers=headers) as answer,
    ):
        return answer.status == 200


async def up(options: UpOptions, reporter: Reporter | None = None) -> UpResult:
    """Install, start and tunnel to a sandlot server on ``options.target``; see the module."""
    reporter = reporter or Reporter()
    target = options.target
    path = record_path(target)
    local_port = options.local_port or options.port
    earlier = read_record(path)
    alive = earlier is not None and earlier.api_key and tunnel_alive(path, earlier)
    if earlier is not None and alive and await readyz(earlier.url) is None:
        return UpResult(earlier, path, already_up=True)
    if earlier is not None:
        stop_tunnel(path, earlier)  # stale: it is started again below
    _check_local_port(path, local_port)

    with reporter.step(f"connecting to {target}") as step:
        conn = await ssh_connect(target, options.ssh)
        step.done(f"connected to {target}")
    try:
        with reporter.step(f"checking {options.python} on the host") as step:
            info = await probe(conn, options.python, options.remote_dir, options.remote_home)
            step.done(f"Python {'.'.join(map(str, info.python))} at {info.executable}")
        with reporter.step("building a wheel of this sandlot") as step:
            wheel = build_wheel()
            installed = await install(
                conn, info, options.python, wheel, step, force=options.reinstall
            )
        record = Record(
            target=str(target),
            ssh={
                "identity": options.ssh.identity,
                "known_hosts": options.ssh.known_hosts,
                "ssh_config": options.ssh.ssh_config,
            },
            python=options.python,
            remote_dir=info.remote_dir,
            remote_home=info.remote_home,
            bind=options.bind,
            port=options.port,
            local_port=local_port,
            version=wheel.version,
            digest=wheel.digest,
            started_at=time.time(),
        )
        try:
            await _start(conn, path, record, earlier, options.wait, reporter)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(_undo(conn, path, record))
            raise
        return UpResult(record, path, installed=installed)
    finally:
        conn.close()


def _check_local_port(path: Path, local_port: int) -> None:
    """The tunnel's port here is free, and no other ``up``'s tunnel holds it."""
    for other_path, other in all_records():
        if (
            other_path != path
            and other.local_port == local_port
            and tunnel_alive(other_path, other)
        ):
            raise ProvisionError(
                f"port {local_port} here is the tunnel to {other.target}; choose another with "
                "--local-port",
                EXIT_PORT_IN_USE,
            )
    check_local_port(local_port)


async def _start(
    conn: asyncssh.SSHClientConnection,
    path: Path,
    record: Record,
    earlier: Record | None,
    wait: float,
    reporter: Reporter,
) -> None:
    with reporter.step("starting sandlot serve on the host") as step:
        old = await server_control(conn, record, "stop")
        if old.get("stopped"):
            reporter.note(f"stopped the server an earlier up left running (pid {old['pid']})")
        if earlier is not None and earlier.key_id:
            await revoke_key(conn, record, earlier.key_id)
        await check_remote_port(conn, record)
        record.key_id, record.api_key = await create_key(conn, record)
        record.server_pid = await start_server(conn, record)
        write_record(path, record)  # from here on, `down` can find what runs
        where = f"{record.bind}:{record.port}"
        step.done(f"sandlot serve on {where} there (pid {record.server_pid}, log {record.log})")
    with reporter.step(f"opening the SSH tunnel 127.0.0.1:{record.local_port}") as step:
        record.tunnel_pid = await start_tunnel(path)
        write_record(path, record)
        step.done(
            f"tunnel 127.0.0.1:{record.local_port} -> {record.forward_host}:{record.port} "
            f"(pid {record.tunnel_pid})"
        )
    await wait_ready(conn, path, record, wait, reporter)
    assert record.api_key is not None
    if not await _key_works(record.url, record.api_key):
        raise ProvisionError("the server does not accept the key created for it")


async def wait_ready(
    conn: asyncssh.SSHClientConnection, path: Path, record: Record, wait: float, reporter: Reporter
) -> None:
    """Poll ``/readyz`` through the tunnel every POLL_INTERVAL s, for up to WAIT s; stop early
    when the server or the tunnel died."""
    url = f"{record.url}/readyz"
    deadline = time.monotonic() + wait
    with reporter.step(f"waiting for {url}") as step:
        while True:
            reason = await readyz(record.url)
            if reason is None:
                step.done(f"ready: {record.url}")
                return
            if not tunnel_alive(path, record):
                log = path.with_suffix(".tunnel.log")
                tail = last_lines(log.read_text(errors="replace")) if log.exists() else ""
                raise ProvisionError("the SSH tunnel process ended", EXIT_NOT_READY, tail)
            status = await server_control(conn, record, "status")
            if not status.get("alive"):
                raise ProvisionError(
                    f"sandlot serve exited on the host (log {record.log})",
                    EXIT_NOT_READY,
                    await remote_log_tail(conn, record),
                )
            if time.monotonic() >= deadline:
                raise ProvisionError(
                    f"the server was not ready after {wait:g} s ({reason}; log {record.log})",
                    EXIT_NOT_READY,
                    await remote_log_tail(conn, record),
                )
            step.update(f"waiting for {url} ({reason})")
            await asyncio.sleep(POLL_INTERVAL)


async def _undo(conn: asyncssh.SSHClientConnection, path: Path, record: Record) -> None:
    """After a failed ``up``: stop what it started (the remote log stays for reading)."""
    stop_tunnel(path, record)
    await server_control(conn, record, "stop")
    if record.key_id:
        await revoke_key(conn, record, record.key_id)
    for done in (path, path.with_suffix(".tunnel.log")):
        with contextlib.suppress(FileNotFoundError):
            done.unlink()


@dataclass
class DownResult:
    target: str
    tunnel_stopped: bool
    server: dict[str, Any]


async def down(
    path: Path, record: Record, reporter: Reporter | None = None, *, force: bool = False
) -> DownResult:
    """Stop the tunnel here, the server there (pidfile: SIGTERM, then SIGKILL), revoke its
    key, drop the record. With FORCE, the record goes even when the host cannot be reached."""
    reporter = reporter or Reporter()
    with reporter.step("stopping the SSH tunnel") as step:
        stopped = stop_tunnel(path, record)
        step.done(
            f"stopped the tunnel (pid {record.tunnel_pid})" if stopped else "no tunnel was running"
        )
    if record.tunnel_pid is not None:
        record.tunnel_pid = None
        write_record(path, record)
    server: dict[str, Any] = {}
    try:
        with reporter.step(f"stopping sandlot serve on {record.target}") as step:
            async with connected(record.parsed_target, record.ssh_options) as conn:
                server = await server_control(conn, record, "stop")
                if record.key_id:
                    await revoke_key(conn, record, record.key_id)
            if server.get("stopped"):
                step.done(f"stopped sandlot serve (pid {server['pid']}, {server['stopped']})")
            else:
                step.done("no server was running there")
    except SandlotError as exc:
        if not force:
            raise ProvisionError(
                f"{exc}; the tunnel is stopped, the server may still run: run down again "
                "when the host is reachable, or with --force to forget it",
                exit_code_for(exc),
            ) from None
        reporter.note(f"warning: {exc}; forgetting it anyway (--force)")
    for done in (path, path.with_suffix(".tunnel.log")):
        with contextlib.suppress(FileNotFoundError):
            done.unlink()
    return DownResult(record.target, stopped, server)
