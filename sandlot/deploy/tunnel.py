"""The local tunnel: a small detached process (``python -c '...deploy.tunnel...' _tunnel
RECORD``) that forwards 127.0.0.1:LOCAL_PORT here to the server's port on the host, dialling
again whenever the SSH connection drops, until ``down`` stops it or removes its record."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import ProvisionError, SandlotError
from .exits import EXIT_FAILED, EXIT_PORT_IN_USE, EXIT_USAGE, exit_code_for
from .record import Record, read_record
from .ssh import CONNECT_TIMEOUT, last_lines, ssh_connect

RECORD_CHECK = 10.0  # how often the tunnel process checks that its record still wants it


def _process_is(pid: int | None, marker: str) -> bool:
    """Whether PID is alive and (where /proc tells) is the process we started, not a recycled
    pid."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's: not ours
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return marker.encode() in f.read()  # empty for a zombie: gone
    except FileNotFoundError:
        return not os.path.isdir("/proc/self")
    except OSError:
        return True


def tunnel_alive(path: Path, record: Record) -> bool:
    return _process_is(record.tunnel_pid, str(path))


def check_local_port(port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the tunnel's listener
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise ProvisionError(
                f"port {port} is in use on this machine ({exc.strerror}); choose the tunnel's "
                "port with --local-port",
                EXIT_PORT_IN_USE,
            ) from None


async def start_tunnel(path: Path) -> int:
    """Start the detached tunnel process for the record at PATH; its pid once it listens."""
    import subprocess

    import sandlot

    root = str(Path(sandlot.__file__).resolve().parents[1])
    code = (
        f"import sys; sys.path.insert(0, {root!r}); from sandlot.deploy.tunnel import main; main()"
    )
    log_path = path.with_suffix(".tunnel.log")
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", code, "_tunnel", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd="/",  # holds no folder of ours
            start_new_session=True,  # our Ctrl-C and hang-up are not for it
        )
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(
            asyncio.to_thread(process.stdout.readline), CONNECT_TIMEOUT + 15
        )
    except TimeoutError:
        process.kill()
        line = b""
    except BaseException:  # cancelled (Ctrl-C): its pid is not recorded yet, so stop it here
        process.kill()
        raise
    finally:
        process.stdout.close()
    try:
        answer = json.loads(line)
    except ValueError:
        status = process.poll()
        tail = last_lines(log_path.read_text(errors="replace")) if log_path.exists() else ""
        raise ProvisionError(
            f"the tunnel process did not start (status {status})", log_tail=tail
        ) from None
    if "error" in answer:
        process.wait()
        raise ProvisionError(str(answer["error"]), int(answer.get("exit", EXIT_FAILED)))
    return process.pid


def stop_tunnel(path: Path, record: Record) -> bool:
    """SIGTERM the tunnel process (SIGKILL if it lingers); whether one was running."""
    pid = record.tunnel_pid
    if pid is None or not tunnel_alive(path, record):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while tunnel_alive(path, record):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    return True


def _report(answer: dict[str, Any]) -> None:
    """The tunnel's one line to the ``up`` that started it, which stops reading then."""
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _log(message: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
    sys.stderr.flush()


def _still_wanted(path: Path) -> bool:
    """Whether the record still asks for this tunnel: an ``up`` that died before recording
    our pid, or a ``down`` that could not signal us, must not leave us running forever."""
    current = read_record(path)
    return current is not None and current.tunnel_pid in (None, os.getpid())


async def _tunnel(path: Path, record: Record) -> int:
    """Forward 127.0.0.1:local_port here to the server's port there, dialling again whenever
    the connection drops, until SIGTERM or until the record is gone (``down`` ran)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    target, ssh = record.parsed_target, record.ssh_options
    reported = False
    delay = 1.0
    while not stop.is_set():
        try:
            conn = await ssh_connect(target, ssh, keepalive=True)
            try:
                listener = await conn.forward_local_port(
                    "127.0.0.1", record.local_port, record.forward_host, record.port
                )
            except OSError as exc:
                conn.close()
                raise ProvisionError(
                    f"cannot listen on 127.0.0.1:{record.local_port}: {exc.strerror or exc}",
                    EXIT_PORT_IN_USE,
                ) from None
        except SandlotError as exc:
            if not reported:
                _report({"error": str(exc), "exit": exit_code_for(exc)})
                return exit_code_for(exc)
            _log(f"reconnecting failed: {exc}; next try in {delay:g} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 30.0)
            if not _still_wanted(path):
                _log("the record is gone or names another tunnel: exiting")
                return 0
            continue
        if not reported:
            _report({"pid": os.getpid()})
            reported = True
        _log(f"forwarding 127.0.0.1:{record.local_port} to {record.forward_host}:{record.port}")
        delay = 1.0
        closed = asyncio.ensure_future(conn.wait_closed())
        stopping = asyncio.ensure_future(stop.wait())
        while not (closed.done() or stopping.done()):
            await asyncio.wait(
                {closed, stopping}, timeout=RECORD_CHECK, return_when=asyncio.FIRST_COMPLETED
            )
            if not _still_wanted(path):
                _log("the record is gone or names another tunnel: exiting")
                stop.set()
        stopping.cancel()
        listener.close()
        conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(closed, 5)
        if not stop.is_set():
            _log("the SSH connection dropped: dialling again")
    _log("stopped")
    return 0


def main(argv: list[str] | None = None) -> None:
    """The tunnel process: ``_tunnel RECORD``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "_tunnel":
        sys.stderr.write("usage: python -m sandlot.deploy.tunnel _tunnel RECORD\n")
        sys.exit(EXIT_USAGE)
    path = Path(args[1])
    record = read_record(path)
    if record is None:
        _report({"error": f"no readable record at {path}", "exit": EXIT_FAILED})
        sys.exit(EXIT_FAILED)
    sys.exit(asyncio.run(_tunnel(path, record)))


if __name__ == "__main__":
    main()
