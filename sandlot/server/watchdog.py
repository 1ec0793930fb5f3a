"""systemd's watchdog, fed only while the server is healthy.

Under a unit with ``Type=notify`` and ``WatchdogSec=``, systemd sets ``NOTIFY_SOCKET`` and
``WATCHDOG_USEC``. The server says ``READY=1`` once it serves, then ``WATCHDOG=1`` every half
period while :func:`sandlot.server.health.check` finds nothing wrong. A wedged server stops
feeding it, and systemd kills and restarts it (``Restart=on-failure`` or ``on-watchdog``):
health that is only reported over HTTP would restart nothing by itself.

The protocol is one datagram per message on a Unix socket (sd_notify(3)); an address starting
with ``@`` is in the abstract namespace.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING

from ..supervisor import Loop, Supervisor
from . import health

if TYPE_CHECKING:
    from .state import ServerState

log = logging.getLogger("sandlot.server")


def notify(message: str) -> bool:
    """Send one sd_notify message; False when not run by systemd (or it did not take it)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return False
    target = "\0" + address[1:] if address[0] == "@" else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), target)
    except OSError as exc:
        log.warning("systemd notification %r failed: %s", message, exc)
        return False
    return True


def period() -> float | None:
    """Half the watchdog period systemd asked for, in seconds; None without one."""
    raw = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID")
    if not raw.isdigit() or int(raw) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(raw) / 2_000_000


def start(state: ServerState) -> Loop | None:
    """Tell systemd the server is ready, and feed its watchdog if it keeps one."""
    notify("READY=1")
    every = period()
    if every is None:
        return None
    return Supervisor.current().keep("systemd-watchdog", lambda: _feed(state, every))


async def _feed(state: ServerState, every: float) -> None:
    while True:
        report = await health.check(state)
        if report.status == "unhealthy":
            log.error("unhealthy, not feeding systemd's watchdog: %s", "; ".join(report.problems))
        else:
            notify("WATCHDOG=1")
        await asyncio.sleep(every)
