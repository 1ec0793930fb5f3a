"""Where ``sandlot remote up`` goes: ``[USER@]HOST[:PORT]`` and the SSH files to get there."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ..errors import InvalidArgumentError

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
