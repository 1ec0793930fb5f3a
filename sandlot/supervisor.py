"""Background work that cannot die silently.

Every long-lived task of a process (the event writer, the reapers, the pool refills, lease
heartbeats, the proxies' watchers) and every fire-and-forget piece of work is started here:

- :meth:`Supervisor.keep` runs a *loop* that is meant to run until the process stops. If it
  raises (or returns while nobody asked it to stop), the traceback is logged and the loop is
  started again after a short back-off. One that keeps failing (``MAX_RESTARTS`` within
  ``RESTART_WINDOW`` seconds), or whose restart is not safe, is given up: it is *failed*, and
  the process reports itself unhealthy so that systemd or an orchestrator restarts it.
- :meth:`Supervisor.spawn` runs one-off work (end a record, remove a folder). Its exception is
  logged with its traceback instead of vanishing with the task object.

There is one supervisor per event loop (:meth:`Supervisor.current`): the server's health
check sees the tasks of its hub, its managers and its sessions alike.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

log = logging.getLogger("sandlot.supervisor")
T = TypeVar("T")
MAX_RESTARTS = 5  # failures within RESTART_WINDOW before a loop is given up
RESTART_WINDOW = 60.0
BACKOFF = (0.05, 0.2, 1.0, 2.0, 5.0)  # seconds before the 1st, 2nd, ... restart


@dataclass(eq=False)
class Loop:
    """A supervised long-lived task, as health and metrics see it."""

    name: str
    factory: Callable[[], Awaitable[None]] = field(repr=False)
    restart: bool
    ends: bool = False  # it may end by itself (returning is not a failure)
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    restarts: int = 0
    failures: deque[float] = field(default_factory=deque, repr=False)
    failed: str | None = None  # why it was given up
    stopping: bool = False

    @property
    def alive(self) -> bool:
        return self.failed is None and self.task is not None and not self.task.done()


class Supervisor:
    """Starts, watches and restarts the background tasks of one event loop."""

    _per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Supervisor] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self) -> None:
        self.loops: set[Loop] = set()
        self._work: set[asyncio.Future[Any]] = set()
        self.spawn_failures = 0
        self.restart_counts: dict[str, int] = {}  # by loop name, since the process started

    @classmethod
    def current(cls) -> Supervisor:
        loop = asyncio.get_running_loop()
        found = cls._per_loop.get(loop)
        if found is None:
            found = cls._per_loop[loop] = cls()
        return found

    # -- long-lived loops ---------------------------------------------------------------------

    def keep(
        self,
        name: str,
        factory: Callable[[], Awaitable[None]],
        *,
        restart: bool = True,
        ends: bool = False,
    ) -> Loop:
        """Run ``factory()`` until :meth:`stop`; restarted when it fails (if ``restart``).
        ``name`` says what it is (several loops may share one: health and metrics count
        them by name). With ``ends``, the loop may also finish by returning."""
        loop = Loop(name, factory, restart, ends)
        self.loops.add(loop)
        self._start(loop)
        return loop

    def _start(self, loop: Loop) -> None:
        loop.task = asyncio.ensure_future(self._run(loop))
        loop.task.set_name(f"sandlot:{loop.name}")

    async def _run(self, loop: Loop) -> None:
        while True:
            try:
                await loop.factory()
                if loop.stopping or loop.ends:
                    self.loops.discard(loop)
                    return
                error = "it returned while it should run on"
                log.error("background task %s ended unexpectedly: %s", loop.name, error)
            except asyncio.CancelledError:
                # Cancelled from outside (the event loop is closing): it ends, as asked;
                # if nobody meant to stop it, health says so.
                if not loop.stopping:
                    loop.failed = "it was cancelled"
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                log.exception("background task %s failed", loop.name)
            now = time.monotonic()
            loop.failures.append(now)
            while loop.failures and loop.failures[0] < now - RESTART_WINDOW:
                loop.failures.popleft()
            if not loop.restart or len(loop.failures) > MAX_RESTARTS:
                loop.failed = error if not loop.restart else f"failing repeatedly ({error})"
                log.critical("background task %s given up: %s", loop.name, loop.failed)
                return
            await asyncio.sleep(BACKOFF[min(len(loop.failures), len(BACKOFF)) - 1])
            if loop.stopping:
                return
            loop.restarts += 1
            self.restart_counts[loop.name] = self.restart_counts.get(loop.name, 0) + 1
            log.warning("restarting background task %s (restart %d)", loop.name, loop.restarts)

    def cancel(self, loop: Loop) -> None:
        """Stop a loop (cancelling it) and forget it."""
        loop.stopping = True
        self.loops.discard(loop)
        if loop.task is not None:
            loop.task.cancel()

    async def stop(self, loop: Loop) -> None:
        """:meth:`cancel`, and wait until it has stopped."""
        self.cancel(loop)
        if loop.task is not None:
            await asyncio.gather(loop.task, return_exceptions=True)

    async def join(self, loop: Loop) -> None:
        """Wait for a loop that was told (by its own state) to end, and forget it."""
        loop.stopping = True
        if loop.task is not None:
            await asyncio.gather(loop.task, return_exceptions=True)
        self.loops.discard(loop)

    # -- one-off work -------------------------------------------------------------------------

    @overload
    def spawn(self, work: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]: ...
    @overload
    def spawn(self, work: Awaitable[T], name: str) -> asyncio.Future[T]: ...
    def spawn(self, work: Awaitable[T], name: str) -> asyncio.Future[T]:
        """Run ``work`` in the background; its failure is logged, never lost."""
        task = asyncio.ensure_future(work)
        if isinstance(task, asyncio.Task):
            task.set_name(f"sandlot:{name}")
        self._work.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Future[Any]) -> None:
        self._work.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self.spawn_failures += 1
            log.error(
                "background work %s failed",
                task.get_name() if isinstance(task, asyncio.Task) else "?",
                exc_info=(type(error), error, error.__traceback__),
            )

    # -- health -------------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """What is wrong with the loops: a loop given up, or one that is not running."""
        found = []
        for loop in self.loops:
            if loop.failed is not None:
                found.append(f"{loop.name} failed: {loop.failed}")
            elif loop.task is None or loop.task.done():
                found.append(f"{loop.name} is not running")
        return found
