"""Whether the server works, checked rather than assumed.

A server can answer HTTP while its event writer is dead or stuck: then every command hangs.
So health looks at what every call depends on:

- the event writer is running and draining: nothing has waited longer than ``WRITER_LAG``
  seconds to be committed;
- the database answers a read, and the writer thread a write, each within ``DATABASE_BOUND``;
- every supervised background loop (:mod:`sandlot.supervisor`) is alive.

Any failure makes ``/healthz`` and ``/readyz`` answer 503 with the problems named, so that
systemd, a load balancer or an orchestrator takes the server out and restarts it.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from .. import __version__
from ..api import Health
from ..remote.breaker import states
from ..supervisor import Supervisor

if TYPE_CHECKING:
    from .state import ServerState

WRITER_LAG = 30.0  # seconds an event may wait for its commit before the server is unhealthy
DATABASE_BOUND = 5.0  # seconds a probe of the database may take

# Probes read on a thread of their own: a busy default executor must not look like a dead
# database, and a hung probe holds up only the next probe.
_probes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandlot-health")


async def check(state: ServerState) -> Health:
    problems = [*_writer_problems(state), *Supervisor.current().problems()]
    problems += await _database_problems(state)
    breakers = states()
    hub = state.hub.health()
    if problems:
        status = "unhealthy"
    elif any(s != "closed" for s in breakers.values()):
        status = "degraded"
    else:
        status = "ok"
    return Health(
        status=status,
        version=__version__,
        database=state.db.dialect,
        sandboxes=len(state.served),
        breakers=breakers,
        problems=problems,
        events_waiting=hub.pending_events,
        event_lag_seconds=round(hub.oldest_pending_seconds, 3),
    )


def _writer_problems(state: ServerState) -> list[str]:
    hub = state.hub.health()
    if not hub.writer_alive:
        return ["the event writer is not running"]
    if hub.oldest_pending_seconds > WRITER_LAG:
        return [
            f"the event writer is not draining: {hub.pending_events} events waiting, the "
            f"oldest for {hub.oldest_pending_seconds:.0f} s"
        ]
    return []


async def _database_problems(state: ServerState) -> list[str]:
    loop = asyncio.get_running_loop()
    probes: dict[str, asyncio.Future[None]] = {
        "read": loop.run_in_executor(_probes, _read, state),
        "write": asyncio.ensure_future(state.hub.write(_nothing)),  # behind the writer's work
    }
    await asyncio.wait(probes.values(), timeout=DATABASE_BOUND)
    problems = []
    for what, probe in probes.items():
        if not probe.done():
            probe.cancel()
            problems.append(f"the database did not answer a {what} in {DATABASE_BOUND:g} s")
        elif probe.exception() is not None:
            error = probe.exception()
            problems.append(f"the database failed a {what}: {type(error).__name__}: {error}")
    return problems


def _read(state: ServerState) -> None:
    state.keys.any_active()


def _nothing() -> None:
    """A write probe: it only has to get its turn on the writer thread."""
