"""Which sandboxes one MCP caller may name, and their end.

A :class:`Book` belongs to one caller: a stdio connection, or one API key of a server (every
HTTP request with that key shares it). It holds the sandboxes the caller made or named (an
:class:`~sandlot.AsyncSandbox` each, so calls reuse the connection), the durable session a
sandbox is attached to, and the background commands started through it (their handles keep
the commands' requests open: dropping one would cancel it).

Who may name what is the SDK's business, not the book's: embedded, every sandbox of this host
(one user); through a server, the key's tenant only (another tenant's id is "not found", as on
``/v1``). The book only remembers, bounds how many it holds, and ends them: on
:meth:`close`, a stdio book kills the sandboxes it made and detaches (checkpoint, stop) the
sessions it attached; an HTTP book only lets go, and the sandboxes' lifetimes end them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import (
    InvalidArgumentError,
    SandboxClosedError,
    SandboxNotFoundError,
    SandlotError,
)
from ..sdk.sandbox import AsyncSandbox
from ..sdk.session import AsyncSession
from . import limits

if TYPE_CHECKING:
    from ..remote import Client
    from ..sdk.commands import AsyncCommandHandle

log = logging.getLogger("sandlot.mcp")


@dataclass
class Held:
    sandbox: AsyncSandbox
    owned: bool  # made through this book: a stdio book kills it at the end
    session: AsyncSession | None = None  # the durable session it is attached to
    jobs: dict[int, AsyncCommandHandle] = field(default_factory=dict)

    def prune(self) -> None:
        for pid, job in list(self.jobs.items()):
            if job.done():
                del self.jobs[pid]


@dataclass
class Defaults:
    """How the book makes sandboxes: the provider and the lifetimes when a call names none."""

    provider: str | None = None
    lifetime: float = limits.LIFETIME
    idle_timeout: float = limits.IDLE_TIMEOUT


class Book:
    def __init__(
        self,
        client: Client | None = None,
        defaults: Defaults | None = None,
        *,
        default_sandbox: bool = False,
        kill_on_close: bool = False,
    ) -> None:
        self.client = client
        self.defaults = defaults or Defaults()
        self.default_sandbox = default_sandbox  # stdio: a call naming none gets one
        self.kill_on_close = kill_on_close
        self._held: OrderedDict[str, Held] = OrderedDict()  # least recently used first
        self._default: str | None = None
        self._lock = asyncio.Lock()

    async def create(
        self,
        *,
        session: str | None = None,
        metadata: dict[str, str] | None = None,
        lifetime: float | None = None,
        idle_timeout: float | None = None,
        allow_hosts: list[str] | None = None,
    ) -> Held:
        """A new sandbox, or one attached to a durable session (``"new"``: a new session)."""
        self._make_room()
        if allow_hosts is not None and len(allow_hosts) > 64:
            raise InvalidArgumentError("allow_hosts may name at most 64 hosts")
        spec: dict[str, Any] = {
            "timeout": limits.seconds(
                lifetime, "lifetime", self.defaults.lifetime, limits.MAX_LIFETIME
            ),
            "idle_timeout": limits.seconds(
                idle_timeout, "idle_timeout", self.defaults.idle_timeout, limits.MAX_LIFETIME
            ),
            "network": {"allow": allow_hosts} if allow_hosts else "none",
        }
        if session is None:
            sandbox = await AsyncSandbox.create(
                self.defaults.provider,
                metadata=limits.metadata(metadata),
                client=self.client,
                **spec,
            )
            held = Held(sandbox, owned=True)
        else:
            if metadata is not None:
                raise InvalidArgumentError("metadata belongs to a new session, not a sandbox")
            if session == "new":
                durable = await AsyncSession.create(client=self.client)
            else:
                durable = await AsyncSession.connect(session, client=self.client)
            sandbox = await durable.sandbox(self.defaults.provider, **spec)
            held = Held(sandbox, owned=True, session=durable)
        self._held[sandbox.id] = held
        return held

    async def get(self, sandbox_id: str | None) -> Held:
        """The sandbox a call names; with none, the connection's default (made on first
        use), if this book has one."""
        if sandbox_id is None:
            if not self.default_sandbox:
                raise InvalidArgumentError(
                    "name the sandbox: sandbox_id (from create_sandbox) is required here"
                )
            async with self._lock:
                if self._default is None or self._default not in self._held:
                    self._default = (await self.create()).sandbox.id
                sandbox_id = self._default
        if not isinstance(sandbox_id, str) or not sandbox_id or len(sandbox_id) > 200:
            raise InvalidArgumentError("sandbox_id must be a sandbox's id")
        held = self._held.get(sandbox_id)
        if held is None:
            self._make_room()
            sandbox = await AsyncSandbox.connect(sandbox_id, client=self.client)
            held = self._held.setdefault(sandbox_id, Held(sandbox, owned=False))
        self._held.move_to_end(sandbox_id)
        held.prune()
        return held

    def forget(self, sandbox_id: str) -> None:
        """Let go of a sandbox that has ended (an error said so)."""
        held = self._held.pop(sandbox_id, None)
        if held is not None:
            _close_quietly(held)
        if self._default == sandbox_id:
            self._default = None

    def keep(self, held: Held, job: AsyncCommandHandle) -> None:
        """Hold a background command's handle (its request stays open while held).

        Through a server, let go of its stream instead: the server runs the command on
        without it (abandoning the stream is not cancelling it, which would kill it), and
        an HTTP book must not hold streams to its own server open, or the server's shutdown
        would wait for them."""
        abandon = getattr(job._request, "abandon", None)
        if self.client is not None and abandon is not None:
            abandon()  # first: done, so the cancel below only lets go of the stream
            job._task.cancel()
            return
        running = sum(len(h.jobs) for h in self._held.values())
        if running >= limits.MAX_BACKGROUND:
            raise InvalidArgumentError(
                f"at most {limits.MAX_BACKGROUND} background commands at once: kill or wait for one"
            )
        assert job.pid is not None
        held.jobs[job.pid] = job

    async def end(self, sandbox_id: str | None) -> str:
        """Close one sandbox: kill it, or detach it from its session (a checkpoint first)."""
        held = await self.get(sandbox_id)
        sandbox = held.sandbox
        self._held.pop(sandbox.id, None)
        if self._default == sandbox.id:
            self._default = None
        if held.session is not None:
            await held.session.detach(sandbox)
            return f"detached {sandbox.id} from session {held.session.id} (workspace checkpointed)"
        killed = await sandbox.kill()
        return f"killed {sandbox.id}" if killed else f"{sandbox.id} had already ended"

    async def close(self) -> None:
        """The caller is gone: end what it made (stdio) or let go of it (HTTP)."""
        held, self._held = list(self._held.values()), OrderedDict()
        self._default = None

        async def end(h: Held) -> None:
            try:
                if self.kill_on_close and h.session is not None:
                    await h.session.detach(h.sandbox)
                elif self.kill_on_close and h.owned:
                    await h.sandbox.kill()
            except SandlotError as exc:
                log.warning("could not end sandbox %s: %s", h.sandbox.id, exc)
            finally:
                _close_quietly(h)

        await asyncio.gather(*(end(h) for h in held))

    def _make_room(self) -> None:
        """At most MAX_SANDBOXES held: past it, let go of the least recently used sandbox
        this book did not make; if all were made here, refuse."""
        if len(self._held) < limits.MAX_SANDBOXES:
            return
        for sandbox_id, held in self._held.items():
            if not held.owned and not held.jobs:
                self.forget(sandbox_id)
                return
        raise InvalidArgumentError(
            f"this caller holds {limits.MAX_SANDBOXES} sandboxes: close one first"
        )

    def __len__(self) -> int:
        return len(self._held)


def ended(exc: BaseException) -> bool:
    """Whether an error means the sandbox is gone (so the book forgets it)."""
    return isinstance(exc, (SandboxNotFoundError, SandboxClosedError))


def _close_quietly(held: Held) -> None:
    """Drop the connection only: its background commands keep running (a closed channel
    abandons their requests; cancelling one would kill its command)."""
    with contextlib.suppress(Exception):
        held.sandbox._channel.close()  # what AsyncSandbox.close() does, without an await
