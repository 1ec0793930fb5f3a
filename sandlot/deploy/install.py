"""Installing this sandlot on the host: its Python checked, a venv, the wheel and the
server's dependencies."""

from __future__ import annotations

import json
import shlex
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ProvisionError
from .exits import EXIT_INSTALL, EXIT_UNREACHABLE
from .progress import Step
from .ssh import LOG_TAIL_LINES, first_line, import_asyncssh, last_lines, run_remote
from .wheel import Wheel

if TYPE_CHECKING:
    import asyncssh

# Run with the host's Python: where things are and what is installed, in one round trip.
_PROBE = """
import json, os, sys
d = os.path.abspath(os.path.expanduser(sys.argv[1]))
h = os.path.abspath(os.path.expanduser(sys.argv[2])) if sys.argv[2] else None
try:
    with open(os.path.join(d, "installed.json")) as f:
        m = json.load(f)
except (OSError, ValueError):
    m = None
print(json.dumps({"version": list(sys.version_info[:3]),
    "executable": os.path.realpath(sys.executable), "dir": d, "home": h, "installed": m,
    "venv": os.access(os.path.join(d, "venv", "bin", "python"), os.X_OK)}))
"""


@dataclass
class HostInfo:
    python: list[int]
    executable: str
    remote_dir: str
    remote_home: str | None
    installed: dict[str, Any] | None
    venv: bool


async def probe(
    conn: asyncssh.SSHClientConnection, python: str, remote_dir: str, remote_home: str | None
) -> HostInfo:
    """The host's Python (3.11+, as sandlot needs), its folders resolved, what is installed."""
    done = await run_remote(conn, [python, "-c", _PROBE, remote_dir, remote_home or ""])
    if done.status != 0:
        reason = first_line(done.stderr) or f"exit status {done.status}"
        hint = " (choose one with --python)" if done.status in (126, 127) else ""
        raise ProvisionError(f"cannot run {python} on the host: {reason}{hint}", EXIT_INSTALL)
    try:
        found = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ProvisionError(f"{python} on the host answered {done.stdout[:200]!r}") from None
    if tuple(found["version"][:2]) < (3, 11):
        version = ".".join(map(str, found["version"]))
        raise ProvisionError(
            f"{python} on the host is Python {version}; sandlot needs 3.11 or newer "
            "(choose another with --python)",
            EXIT_INSTALL,
        )
    return HostInfo(
        python=found["version"],
        executable=found["executable"],
        remote_dir=found["dir"],
        remote_home=found["home"],
        installed=found["installed"],
        venv=bool(found["venv"]),
    )


async def install(
    conn: asyncssh.SSHClientConnection,
    info: HostInfo,
    python: str,
    wheel: Wheel,
    step: Step,
    *,
    force: bool = False,
) -> bool:
    """Install the wheel into ``<remote dir>/venv`` (made with ``--system-site-packages``, so
    what the host already has is reused); False when that exact wheel is installed already."""
    wanted = {"version": wheel.version, "digest": wheel.digest, "python": info.executable}
    if not force and info.venv and info.installed == wanted:
        step.done(f"sandlot {wheel.version} already installed ({wheel.digest[:12]})")
        return False
    folder = info.remote_dir
    venv = f"{folder}/venv"
    wheel_path = f"{folder}/wheels/{wheel.filename}"
    prepare = await run_remote(
        conn,
        ["sh", "-c", 'umask 077 && mkdir -p "$1/wheels" && rm -f "$1/installed.json"', "-", folder],
    )
    if prepare.status != 0:
        raise ProvisionError(
            f"cannot create {folder} on the host: {first_line(prepare.stderr)}", EXIT_INSTALL
        )
    step.update(f"uploading {wheel.filename} ({len(wheel.data) // 1024} KiB)")
    upload = await run_remote(conn, ["sh", "-c", 'cat > "$1"', "-", wheel_path], input=wheel.data)
    if upload.status != 0:
        raise ProvisionError(f"upload failed: {first_line(upload.stderr)}", EXIT_INSTALL)
    if not info.venv or (info.installed or {}).get("python") != info.executable:
        await _make_venv(conn, python, venv, step)
    pip = [f"{venv}/bin/python", "-m", "pip", "install", "--progress-bar", "off"]
    env = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONUNBUFFERED": "1"}
    # The wheel first, without dependencies, forced: a sandlot of the same version in the
    # system site-packages must not pass for it. Then its [server] dependencies, which pip
    # takes from the system site-packages when they are there.
    for what, args in (
        ("installing the wheel", ["--no-deps", "--force-reinstall", wheel_path]),
        ("installing the server's dependencies", [f"{wheel_path}[server]"]),
    ):
        await _stream(conn, [*pip, *args], env, step, what)
    marker = json.dumps(wanted).encode()
    wrote = await run_remote(
        conn,
        ["sh", "-c", 'cat > "$1/installed.json" && rm -f "$1/wheels/"*.whl', "-", folder],
        input=marker,
    )
    if wrote.status != 0:
        raise ProvisionError(f"cannot write {folder}/installed.json: {wrote.stderr.strip()}")
    step.done(f"installed sandlot {wheel.version} ({wheel.digest[:12]}) in {venv}")
    return True


async def _make_venv(
    conn: asyncssh.SSHClientConnection, python: str, venv: str, step: Step
) -> None:
    """A fresh venv that sees the host's site-packages (what is there is reused)."""
    step.update(f"creating a venv in {venv}")
    made = await run_remote(
        conn, [python, "-m", "venv", "--clear", "--system-site-packages", venv], timeout=300
    )
    if made.status != 0:
        raise ProvisionError(
            f"cannot create a venv with {python} on the host: "
            f"{first_line(made.stdout + made.stderr)} (on Debian/Ubuntu: apt install "
            "python3-venv)",
            EXIT_INSTALL,
            last_lines(made.stdout + made.stderr),
        )


async def _stream(
    conn: asyncssh.SSHClientConnection,
    argv: list[str],
    env: dict[str, str],
    step: Step,
    what: str,
) -> None:
    """Run a long command on the host, showing its latest line as progress."""
    asyncssh = import_asyncssh()
    words = ["env", *(f"{k}={v}" for k, v in env.items()), *argv]
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    step.update(what)
    try:
        async with conn.create_process(shlex.join(words), stderr=asyncssh.STDOUT) as process:
            async for line in process.stdout:
                line = str(line).rstrip()
                if line.strip():
                    tail.append(line)
                    step.update(f"{what}: {line.strip()[:90]}")
            result = await process.wait()
    except (OSError, asyncssh.Error) as exc:
        raise ProvisionError(f"the SSH session failed: {exc}", EXIT_UNREACHABLE) from None
    if result.exit_status != 0:
        raise ProvisionError(
            f"{what} failed on the host (pip exit status {result.exit_status})",
            EXIT_INSTALL,
            "\n".join(tail),
        )
