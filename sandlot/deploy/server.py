"""``sandlot serve`` on the host: started detached (a pidfile, a log), its port checked, its
admin key created and revoked, stopped."""

from __future__ import annotations

import json
import os
import socket
from typing import TYPE_CHECKING, Any

from ..errors import InvalidArgumentError, ProvisionError
from .exits import EXIT_PORT_IN_USE
from .record import Record
from .ssh import LOG_TAIL_LINES, first_line, run_remote

if TYPE_CHECKING:
    import asyncssh

STOP_GRACE = 15.0  # serve waits up to 10 s for open requests, then kills its sandboxes

# Exit 3: the address is in use; 4: it cannot be bound at all (not an address of the host).
_PORT_FREE = """
import errno, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    s = socket.socket(family, kind, proto)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
    s.bind(address)
except OSError as e:
    print(e.strerror or e)
    sys.exit(3 if e.errno == errno.EADDRINUSE else 4)
"""

# Start `sandlot serve` in a session of its own: it outlives this SSH session; the previous
# run's log is kept as server.log.1.
_START = """
import json, os, subprocess, sys
argv, env, log, pidfile = json.loads(sys.argv[1])
if os.path.exists(log):
    os.replace(log, log + ".1")
full = dict(os.environ)
full.update(env)
with open(log, "ab") as out:
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        env=full, cwd=os.path.dirname(log), start_new_session=True)
with open(pidfile + ".tmp", "w") as f:
    f.write(str(p.pid))
os.replace(pidfile + ".tmp", pidfile)
print(p.pid)
"""

# Whether the pidfile's process is our server (not a recycled pid), and stopping it: SIGTERM,
# then SIGKILL to its process group after the grace period.
_SERVER_CTL = """
import json, os, signal, subprocess, sys, time
pidfile, action, grace = sys.argv[1], sys.argv[2], float(sys.argv[3])
def ours(pid):
    if os.path.isdir("/proc/self"):
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                words = f.read().split(b"\\0")
        except OSError:
            return False
    else:
        words = subprocess.run(["ps", "-o", "command=", "-p", str(pid)],
            capture_output=True).stdout.split()
    return b"serve" in words and any(b"sandlot" in w for w in words)
def wait(pid, seconds):
    end = time.monotonic() + seconds
    while ours(pid) and time.monotonic() < end:
        time.sleep(0.1)
    return not ours(pid)
try:
    with open(pidfile) as f:
        pid = int(f.read().strip())
except (OSError, ValueError):
    pid = None
alive = pid is not None and ours(pid)
if action == "status" or not alive:
    if action == "stop" and pid is not None:
        os.remove(pidfile)
    print(json.dumps({"pid": pid, "alive": alive, "stopped": None}))
    sys.exit(0)
how = "SIGTERM"
os.kill(pid, signal.SIGTERM)
if not wait(pid, grace):
    how = "SIGKILL"
    for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            kill()
        except OSError:
            pass
    wait(pid, 5)
os.remove(pidfile)
print(json.dumps({"pid": pid, "alive": ours(pid), "stopped": how}))
"""


async def server_control(
    conn: asyncssh.SSHClientConnection, record: Record, action: str
) -> dict[str, Any]:
    """``status`` or ``stop`` of the server named by the host's pidfile."""
    done = await run_remote(
        conn,
        [record.python, "-c", _SERVER_CTL, record.pidfile, action, str(STOP_GRACE)],
        timeout=STOP_GRACE + 30,
    )
    try:
        answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ProvisionError(
            f"cannot {action} the server on the host: {first_line(done.stderr) or done.stdout}"
        ) from None
    return answer


async def remote_log_tail(conn: asyncssh.SSHClientConnection, record: Record) -> str:
    done = await run_remote(conn, ["tail", "-n", str(LOG_TAIL_LINES), record.log])
    return done.stdout.rstrip()


def _server_env(record: Record) -> dict[str, str]:
    env = {"SANDLOT_LOG_LEVEL": os.environ.get("SANDLOT_LOG_LEVEL", "info")}
    if record.remote_home:
        env["SANDLOT_HOME"] = record.remote_home
    return env


async def create_key(conn: asyncssh.SSHClientConnection, record: Record) -> tuple[str, str]:
    """A new admin key of the tenant ``local`` on the host's server database: (id, token)."""
    name = f"remote-up from {socket.gethostname()}"
    done = await run_remote(
        conn,
        [
            record.venv_python,
            "-m",
            "sandlot.cli",
            "keys",
            "create",
            "--name",
            name,
            "--tenant",
            "local",
            "--admin",
        ],
        env=_server_env(record),
    )
    token = done.stdout.strip().splitlines()[0] if done.stdout.strip() else ""
    if done.status != 0 or not token.startswith("sl_"):
        raise ProvisionError(
            f"cannot create an API key on the host: {first_line(done.stderr) or done.stdout}"
        )
    return token.split("_")[1], token


async def revoke_key(conn: asyncssh.SSHClientConnection, record: Record, key_id: str) -> None:
    """Best effort: the key may be gone already."""
    await run_remote(
        conn,
        [record.venv_python, "-m", "sandlot.cli", "keys", "revoke", key_id],
        env=_server_env(record),
    )


async def check_remote_port(conn: asyncssh.SSHClientConnection, record: Record) -> None:
    done = await run_remote(
        conn, [record.venv_python, "-c", _PORT_FREE, record.bind, str(record.port)]
    )
    if done.status == 3:
        raise ProvisionError(
            f"port {record.port} is in use on the host ({record.bind}); choose another with --port",
            EXIT_PORT_IN_USE,
        )
    if done.status != 0:
        raise InvalidArgumentError(
            f"cannot listen on {record.bind}:{record.port} on the host: "
            f"{first_line(done.stdout + done.stderr)} (--bind names an address of the host)"
        )


async def start_server(conn: asyncssh.SSHClientConnection, record: Record) -> int:
    argv = [
        record.venv_python,
        "-m",
        "sandlot.cli",
        "serve",
        "--host",
        record.bind,
        "--port",
        str(record.port),
        "--kill-on-exit",
    ]  # down leaves no sandboxes behind
    spec = json.dumps([argv, _server_env(record), record.log, record.pidfile])
    done = await run_remote(conn, [record.venv_python, "-c", _START, spec])
    try:
        return int(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ProvisionError(
            f"cannot start sandlot serve on the host: {first_line(done.stderr) or done.stdout}"
        ) from None
