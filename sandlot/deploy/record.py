"""The record of what ``up`` started (``$SANDLOT_HOME/remote/TARGET.json``, mode 0600: it
holds the admin key), so that ``down`` and ``status`` find it from any later shell."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from pydantic import BaseModel

from .target import SshOptions, Target, parse_target


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
