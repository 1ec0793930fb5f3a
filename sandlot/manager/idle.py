"""Idle timeouts: a sandbox nobody uses is stopped (docs/lifetimes.md).

Activity is what the sandbox's agent sees (every request but its ``idle`` checks and pings;
a running command, pty, install or cell, a stream or transfer in flight, a forwarded
connection) and what only the host sees (a server's calls answered from its store, a
transcript being followed: :meth:`IdleWatch.touch`). The manager that owns a sandbox asks its
agent how long it has been idle when it could be due, tells it of the host's activity, and
stops it once both have been idle for ``idle_timeout`` (through :meth:`Manager.kill`, whose
release checkpoints a session's sandbox). The agent gets a longer limit of its own
(:func:`agent_limit`) and stops itself when no host is left to do it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgumentError, SandboxNotFoundError, SandlotError
from ..models import MAX_LIFETIME
from ..supervisor import Supervisor

log = logging.getLogger("sandlot")
CHECK_TIMEOUT = 10.0  # seconds a check waits for the agent (a paused one does not answer)
MIN_STEP = 0.2  # seconds: the soonest a check runs again
ChannelFor = Callable[[str], Awaitable[Any]]


def agent_limit(seconds: float) -> float:
    """The agent's own limit: later than the host's by enough for a living host to act
    first (and checkpoint a session's sandbox), so the agent's is only the last resort."""
    return min(seconds + max(5.0, min(seconds, 60.0)), MAX_LIFETIME)


@dataclass
class _Watched:
    seconds: float
    touched: float  # monotonic: the last activity only the host saw
    told: float  # monotonic: when the agent last heard of it
    timer: asyncio.TimerHandle | None = None


class IdleWatch:
    """The idle timeouts of the sandboxes one manager owns."""

    def __init__(
        self,
        channel_for: ChannelFor,
        stop: Callable[[str], Awaitable[None]],
        stored: Callable[[str], float | None],
    ) -> None:
        self._channel_for = channel_for
        self._stop = stop
        self._stored = stored  # the idle timeout the store holds (another process may set it)
        self._watched: dict[str, _Watched] = {}

    def __contains__(self, sandbox_id: str) -> bool:
        return sandbox_id in self._watched

    async def watch(self, sandbox_id: str, seconds: float | None, channel: Any) -> None:
        """Give the sandbox its idle timeout (None: none): its agent's limit, and our watch."""
        await channel.call("idle", seconds=None if seconds is None else agent_limit(seconds))
        self.follow(sandbox_id, seconds)

    def follow(self, sandbox_id: str, seconds: float | None) -> None:
        """Watch a sandbox whose agent knows its limit already (adopted after a restart)."""
        self.forget(sandbox_id)
        if seconds is not None:
            now = time.monotonic()
            self._watched[sandbox_id] = _Watched(seconds, now, now)
            self._schedule(sandbox_id, seconds)

    def touch(self, sandbox_id: str) -> None:
        """Activity the agent does not see (it hears of it at the next check)."""
        watched = self._watched.get(sandbox_id)
        if watched is not None:
            watched.touched = time.monotonic()

    def forget(self, sandbox_id: str) -> None:
        watched = self._watched.pop(sandbox_id, None)
        if watched is not None and watched.timer is not None:
            watched.timer.cancel()

    def close(self) -> None:
        for sandbox_id in list(self._watched):
            self.forget(sandbox_id)

    def _schedule(self, sandbox_id: str, delay: float) -> None:
        watched = self._watched[sandbox_id]
        if watched.timer is not None:
            watched.timer.cancel()
        watched.timer = asyncio.get_running_loop().call_later(
            max(delay, MIN_STEP), self._due, sandbox_id
        )

    def _due(self, sandbox_id: str) -> None:
        if sandbox_id in self._watched:
            Supervisor.current().spawn(self._check(sandbox_id), "idle-check")

    async def _check(self, sandbox_id: str) -> None:
        watched = self._watched.get(sandbox_id)
        if watched is None:
            return
        asked = time.monotonic()
        touch = watched.touched > watched.told
        try:
            channel = await self._channel_for(sandbox_id)
            answer = await asyncio.wait_for(channel.call("idle", touch=touch), CHECK_TIMEOUT)
        except SandboxNotFoundError:
            self.forget(sandbox_id)  # gone: its release is someone else's
            return
        except InvalidArgumentError as exc:  # an agent older than idle timeouts
            log.info("sandbox %s has no idle timeout: its agent says %s", sandbox_id, exc)
            self.forget(sandbox_id)
            return
        except (SandlotError, TimeoutError) as exc:  # paused, busy or dying: not idle now
            log.debug("sandbox %s: idle check: %s", sandbox_id, exc)
            if self._watched.get(sandbox_id) is watched:
                self._schedule(sandbox_id, watched.seconds)
            return
        if self._watched.get(sandbox_id) is not watched:
            return  # forgotten or given a new timeout meanwhile
        if touch:
            watched.told = asked
        if answer.get("limit") != agent_limit(watched.seconds):  # set from elsewhere
            seconds = self._stored(sandbox_id)
            if seconds != watched.seconds:
                self.follow(sandbox_id, seconds)
                return
        idle = min(_seconds(answer.get("idle")), asked - watched.touched)
        if idle < watched.seconds:
            self._schedule(sandbox_id, watched.seconds - idle)
            return
        self.forget(sandbox_id)
        log.info("sandbox %s was idle for %.1f s: stopping it", sandbox_id, idle)
        try:
            await self._stop(sandbox_id)
        except SandboxNotFoundError:
            pass  # ended meanwhile


def _seconds(value: object) -> float:
    """The agent's answer, checked (it comes from the sandbox): anything but a finite
    non-negative number counts as in use."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    return float(value) if math.isfinite(value) and value >= 0 else 0.0
