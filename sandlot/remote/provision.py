"""``sandlot remote up`` and ``down``: a sandlot server on a host reached over SSH.

``up`` installs this sandlot on the host (a wheel built here from the running code, into a
venv there), starts ``sandlot serve`` there detached and bound to the host's loopback, creates
an admin key for it, and reaches it through an SSH tunnel that a small detached local process
keeps open (this module: ``python -c '...provision...' _tunnel RECORD``). What it started is
recorded in ``$SANDLOT_HOME/remote/`` (mode 0600: the record holds the key) so that ``down``
can stop it from any later shell.

Host keys are always checked against known_hosts and an unknown host is an error, never a
prompt. asyncssh (the ``ssh`` extra) is imported only when a connection is made.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import ipaddress
import json
import os
import re
import shlex
import signal
import socket
import sys
import time
import tomllib
import zipfile
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ..errors import HostKeyError, InvalidArgumentError, ProvisionError, SandlotError

if TYPE_CHECKING:
    import asyncssh

DEFAULT_PORT = 8787
DEFAULT_PYTHON = "python3"
DEFAULT_REMOTE_DIR = "~/.sandlot"
READY_TIMEOUT = 180.0
POLL_INTERVAL = 2.0
CONNECT_TIMEOUT = 15.0
STOP_GRACE = 15.0  # serve waits up to 10 s for open requests, then kills its sandboxes
KEEPALIVE_INTERVAL = 15.0
RECORD_CHECK = 10.0  # how often the tunnel process checks that its record still wants it
LOG_TAIL_LINES = 30

# Exit codes of `sandlot remote`: each failure the user can act on has its own.
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_HOST_KEY = 4
EXIT_AUTH = 5
EXIT_PORT_IN_USE = 6
EXIT_INSTALL = 7
EXIT_NOT_READY = 8


def exit_code_for(exc: BaseException) -> int:
    """The ``sandlot remote`` exit code for an error raised here."""
    if isinstance(exc, ProvisionError):
        return exc.exit_code
    if isinstance(exc, HostKeyError):
        return EXIT_HOST_KEY
    if isinstance(exc, InvalidArgumentError):
        return EXIT_USAGE
    return EXIT_FAILED


# -- the target -------------------------------------------------------------------------------

_TARGET = re.compile(
    r"^(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9_.-]*)@)?"
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?))"
    r"(?::(?P<port>[0-9]{1,5}))?$"
)


@dataclass(frozen=True)
class Target:
    """``[USER@]HOST[:PORT]``: HOST may be an ssh_config alias; USER and PORT then come from
    the config when they are not given."""

    user: str | None
    host: str
    port: int | None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.user}@" if self.user else ""
        return f"{user}{host}" + (f":{self.port}" if self.port else "")

    @property
    def slug(self) -> str:
        """A file name for this target's record."""
        return re.sub(r"[^A-Za-z0-9_.@-]", "_", str(self))


def parse_target(text: str) -> Target:
    """``[USER@]HOST[:PORT]`` (IPv6 in brackets); a clear error for anything else."""
    match = _TARGET.match(text)
    if match is not None and match["v6"] is not None:
        try:
            ipaddress.IPv6Address(match["v6"])
        except ValueError:
            match = None
    if match is None:
        raise InvalidArgumentError(
            f"not a valid USER@HOST: {text!r} (expected [USER@]HOST[:PORT], e.g. ana@gpu-box)"
        )
    port = int(match["port"]) if match["port"] else None
    if port is not None and not 0 < port < 65536:
        raise InvalidArgumentError(f"not a valid SSH port in {text!r}: {port}")
    return Target(user=match["user"], host=match["v6"] or match["host"], port=port)


@dataclass(frozen=True)
class SshOptions:
    """How to reach the host: files given on the command line (absolute), else OpenSSH's
    defaults (~/.ssh/config, ~/.ssh/known_hosts, the agent and ~/.ssh/id_*)."""

    identity: str | None = None
    known_hosts: str | None = None
    ssh_config: str | None = None


def _import_asyncssh() -> Any:
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
    asyncssh = _import_asyncssh()
    kwargs: dict[str, Any] = {
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
    port = target.port or ()
    if ssh.known_hosts:
        kwargs["known_hosts"] = ssh.known_hosts
    else:
        try:
            options = await asyncio.to_thread(
                asyncssh.SSHClientConnectionOptions, host=target.host, port=port, **kwargs
            )
        except (asyncssh.ConfigParseError, OSError) as exc:
            raise ProvisionError(f"cannot read the SSH config: {exc}", EXIT_USAGE) from None
        if options.known_hosts is None:
            # `UserKnownHostsFile none` would turn checking off: keep it on, with the default
            # file (or with nothing trusted, when there is none).
            default = Path("~/.ssh/known_hosts").expanduser()
            kwargs["known_hosts"] = str(default) if default.is_file() else b""
    where = str(target)
    try:
        return await asyncssh.connect(target.host, port, **kwargs)
    except asyncssh.HostKeyNotVerifiable:
        files = ssh.known_hosts or "~/.ssh/known_hosts (or the UserKnownHostsFile of ssh_config)"
        raise HostKeyError(
            f"the host key of {where} is not trusted: it is not in {files}, or it changed. "
            "Check its fingerprint, then add it (e.g. ssh-keyscan -p PORT HOST >> "
            "~/.ssh/known_hosts) or pass --known-hosts FILE"
        ) from None
    except asyncssh.PermissionDenied:
        raise ProvisionError(
            f"{where} refused our SSH key (no key offered was accepted); pass --identity FILE "
            "or load the key into ssh-agent",
            EXIT_AUTH,
        ) from None
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
        raise ProvisionError(f"cannot load the SSH key: {exc}", EXIT_AUTH) from None
    except asyncssh.ConfigParseError as exc:
        raise ProvisionError(f"cannot read the SSH config: {exc}", EXIT_USAGE) from None
    except asyncssh.DisconnectError as exc:
        raise ProvisionError(f"SSH to {where} failed: {exc.reason}", EXIT_UNREACHABLE) from None
    except TimeoutError:
        raise ProvisionError(
            f"cannot reach {where}: no SSH answer within {CONNECT_TIMEOUT:g} s", EXIT_UNREACHABLE
        ) from None
    except OSError as exc:
        reason = (os.strerror(exc.errno) if exc.errno else str(exc)) or type(exc).__name__
        if exc.filename:  # a file the SSH config names (a key, a known_hosts)
            raise ProvisionError(f"cannot read {exc.filename}: {reason}", EXIT_USAGE) from None
        raise ProvisionError(f"cannot reach {where}: {reason}", EXIT_UNREACHABLE) from None


@contextlib.asynccontextmanager
async def connected(target: Target, ssh: SshOptions) -> AsyncIterator[asyncssh.SSHClientConnection]:
    conn = await ssh_connect(target, ssh)
    try:
        yield conn
    finally:
        conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.wait_closed(), 5)


# -- the wheel --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wheel:
    """A wheel of the sandlot this process runs, and the digest that names its contents."""

    filename: str
    data: bytes
    version: str
    digest: str


_SKIP_NAMES = re.compile(r"(^\.|~$|\.py[co]$|\.swp$)")


def build_wheel() -> Wheel:
    """A wheel of the running sandlot, built in memory without a build backend (none may be
    installed here, and pip's isolated build would need an index): the package files as they
    are, metadata from the source tree's pyproject.toml when there is one (an editable install)
    and from the installed distribution otherwise. Deterministic: the same tree gives the same
    digest, which is how ``up`` knows the host already has this code."""
    import sandlot

    package = Path(sandlot.__file__).resolve().parent
    pyproject = package.parent / "pyproject.toml"
    if pyproject.is_file():
        project = tomllib.loads(pyproject.read_text()).get("project", {})
        if project.get("name") != "sandlot":
            raise ProvisionError(f"{pyproject} is not sandlot's")
        version = str(project["version"])
        metadata, entry_points = _metadata_from_pyproject(project)
    else:
        version, metadata, entry_points = _metadata_installed(package)

    files: list[tuple[str, bytes]] = []
    for path in sorted(package.rglob("*")):
        relative = path.relative_to(package.parent)
        if path.is_dir() or any(
            part == "__pycache__" or _SKIP_NAMES.search(part) for part in relative.parts
        ):
            continue
        files.append((relative.as_posix(), path.read_bytes()))
    info = f"sandlot-{version}.dist-info"
    files.append((f"{info}/METADATA", metadata.encode()))
    files.append((f"{info}/WHEEL", _WHEEL_FILE.encode()))
    if entry_points:
        files.append((f"{info}/entry_points.txt", entry_points.encode()))
    record = io.StringIO()
    for name, data in files:
        hashed = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.write(f"{name},sha256={hashed},{len(data)}\n")
    record.write(f"{info}/RECORD,,\n")
    files.append((f"{info}/RECORD", record.getvalue().encode()))

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files:
            entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, data)
    data = buffer.getvalue()
    return Wheel(
        filename=f"sandlot-{version}-py3-none-any.whl",
        data=data,
        version=version,
        digest=hashlib.sha256(data).hexdigest(),
    )


_WHEEL_FILE = "Wheel-Version: 1.0\nGenerator: sandlot remote up\nRoot-Is-Purelib: true\n" + (
    "Tag: py3-none-any\n"
)


def _metadata_from_pyproject(project: dict[str, Any]) -> tuple[str, str]:
    """Core metadata (2.1) and entry_points.txt from a PEP 621 ``[project]`` table."""
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {project['name']}",
        f"Version: {project['version']}",
    ]
    if project.get("description"):
        lines.append(f"Summary: {project['description']}")
    licence = project.get("license")
    if isinstance(licence, dict) and licence.get("text"):
        lines.append(f"License: {licence['text']}")
    if project.get("requires-python"):
        lines.append(f"Requires-Python: {project['requires-python']}")
    lines += [f"Requires-Dist: {req}" for req in project.get("dependencies", [])]
    for extra, requirements in project.get("optional-dependencies", {}).items():
        lines.append(f"Provides-Extra: {extra}")
        for req in requirements:
            spec, _, marker = req.partition(";")
            condition = f'extra == "{extra}"'
            if marker.strip():
                condition = f"({marker.strip()}) and {condition}"
            lines.append(f"Requires-Dist: {spec.strip()}; {condition}")
    groups: dict[str, dict[str, str]] = {}
    if project.get("scripts"):
        groups["console_scripts"] = project["scripts"]
    groups.update(project.get("entry-points", {}))
    entry_points = "".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in items.items()) + "\n"
        for group, items in groups.items()
    )
    return "\n".join(lines) + "\n", entry_points


def _metadata_installed(package: Path) -> tuple[str, str, str]:
    """Version, METADATA and entry_points.txt of the installed distribution that owns
    ``package``."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("sandlot")
    except PackageNotFoundError:
        raise ProvisionError(
            f"cannot build a wheel: {package} has no pyproject.toml beside it and no installed "
            "metadata (install sandlot with pip)"
        ) from None
    metadata = dist.read_text("METADATA") or dist.read_text("PKG-INFO")
    if not metadata:
        raise ProvisionError("cannot build a wheel: the installed sandlot has no METADATA")
    return dist.version, metadata, dist.read_text("entry_points.txt") or ""


# -- the record -------------------------------------------------------------------------------


class Record(BaseModel):
    """What ``up`` started, so ``down`` (and ``status``) can find it again."""

    target: str
    ssh: dict[str, str | None]
    python: str
    remote_dir: str  # absolute, on the host
    remote_home: str | None  # the server's SANDLOT_HOME; None: the host's default
    bind: str
    port: int
    local_port: int
    version: str
    digest: str
    server_pid: int | None = None
    tunnel_pid: int | None = None
    key_id: str | None = None
    api_key: str | None = None
    started_at: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}"

    @property
    def forward_host(self) -> str:
        """Where the tunnel's far end connects, seen from the host: the server's address, or
        its loopback when it listens on every address."""
        if self.bind in ("0.0.0.0", ""):
            return "127.0.0.1"
        if self.bind == "::":
            return "::1"
        return self.bind

    @property
    def loopback(self) -> bool:
        """Whether the server is reachable from the host itself only (as ``serve`` judges)."""
        if self.bind == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.bind).is_loopback
        except ValueError:
            return False

    @property
    def ssh_options(self) -> SshOptions:
        return SshOptions(**self.ssh)

    @property
    def parsed_target(self) -> Target:
        return parse_target(self.target)

    @property
    def venv_python(self) -> str:
        return f"{self.remote_dir}/venv/bin/python"

    @property
    def pidfile(self) -> str:
        return f"{self.remote_dir}/server.pid"

    @property
    def log(self) -> str:
        return f"{self.remote_dir}/server.log"


def records_dir() -> Path:
    from ..store import default_home

    return default_home() / "remote"


def record_path(target: Target) -> Path:
    return records_dir() / f"{target.slug}.json"


def read_record(path: Path) -> Record | None:
    try:
        return Record.model_validate_json(path.read_bytes())
    except (OSError, ValueError):
        return None


def write_record(path: Path, record: Record) -> None:
    """Atomically, 0600: the record holds an admin key."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(record.model_dump_json(indent=2))
    os.replace(temporary, path)


def all_records() -> list[tuple[Path, Record]]:
    found = []
    folder = records_dir()
    if folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            record = read_record(path)
            if record is not None:
                found.append((path, record))
    return found


# -- progress ---------------------------------------------------------------------------------


class Step:
    """One step of the work, shown while it runs; ``update`` changes what it says,
    ``done`` what it says once finished."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.final = text

    def update(self, text: str) -> None:
        self.text = text

    def done(self, text: str) -> None:
        self.final = text


class Reporter:
    """Progress, as the caller wants it shown; this one shows nothing (the CLI's shows rich
    spinners)."""

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[Step]:
        yield Step(text)

    def note(self, text: str) -> None:
        pass


# -- on the host ------------------------------------------------------------------------------

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
    asyncssh = _import_asyncssh()
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


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


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
        reason = _first_line(done.stderr) or f"exit status {done.status}"
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
            f"cannot create {folder} on the host: {_first_line(prepare.stderr)}", EXIT_INSTALL
        )
    step.update(f"uploading {wheel.filename} ({len(wheel.data) // 1024} KiB)")
    upload = await run_remote(conn, ["sh", "-c", 'cat > "$1"', "-", wheel_path], input=wheel.data)
    if upload.status != 0:
        raise ProvisionError(f"upload failed: {_first_line(upload.stderr)}", EXIT_INSTALL)
    if not info.venv or (info.installed or {}).get("python") != info.executable:
        step.update(f"creating a venv in {venv}")
        made = await run_remote(
            conn, [python, "-m", "venv", "--clear", "--system-site-packages", venv], timeout=300
        )
        if made.status != 0:
            raise ProvisionError(
                f"cannot create a venv with {python} on the host: "
                f"{_first_line(made.stdout + made.stderr)} (on Debian/Ubuntu: apt install "
                "python3-venv)",
                EXIT_INSTALL,
                _tail(made.stdout + made.stderr),
            )
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


async def _stream(
    conn: asyncssh.SSHClientConnection,
    argv: list[str],
    env: dict[str, str],
    step: Step,
    what: str,
) -> None:
    """Run a long command on the host, showing its latest line as progress."""
    asyncssh = _import_asyncssh()
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
            f"cannot {action} the server on the host: {_first_line(done.stderr) or done.stdout}"
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
            f"cannot create an API key on the host: {_first_line(done.stderr) or done.stdout}"
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
            f"{_first_line(done.stdout + done.stderr)} (--bind names an address of the host)"
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
            f"cannot start sandlot serve on the host: {_first_line(done.stderr) or done.stdout}"
        ) from None


# -- the local tunnel process -----------------------------------------------------------------


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
        f"import sys; sys.path.insert(0, {root!r}); "
        "from sandlot.remote.provision import main; main()"
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
        tail = _tail(log_path.read_text(errors="replace")) if log_path.exists() else ""
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
        sys.stderr.write("usage: python -m sandlot.remote.provision _tunnel RECORD\n")
        sys.exit(EXIT_USAGE)
    path = Path(args[1])
    record = read_record(path)
    if record is None:
        _report({"error": f"no readable record at {path}", "exit": EXIT_FAILED})
        sys.exit(EXIT_FAILED)
    sys.exit(asyncio.run(_tunnel(path, record)))


# -- up and down ------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpOptions:
    target: Target
    ssh: SshOptions = SshOptions()
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
                tail = _tail(log.read_text(errors="replace")) if log.exists() else ""
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


if __name__ == "__main__":
    main()
