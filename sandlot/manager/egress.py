"""A sandbox's ways out, served on the host: the allowlist proxy and the callback bridge.

The sandbox has no route anywhere. Its agent listens on loopback ports (``listen``) and
hands each connection to the host (``accept`` events, op ``accepted``), where it is served as
a proxy that checks the policy or as the bridge that adds credentials. Policy and settings
live in the store and are read per connection, so a change made by any process applies to
the next connection, and nothing inside the sandbox can change them. One process serves a
sandbox at a time; another that connects waits on standby and takes over when it goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..agent import protocol as p
from ..channel import Channel
from ..channel.handoff import Handoff
from ..channel.stream import ByteStream, TunnelStream
from ..egress.bridge_config import BridgeConfig
from ..egress.policy import NetworkPolicy
from ..egress.proxy import Upstream, serve_proxy
from ..errors import (
    EgressError,
    ProtocolError,
    SandboxClosedError,
    SandboxNotFoundError,
    SandlotError,
)
from ..providers import Provider
from ..secrets.resolve import resolve_values
from ..secrets.store import SecretStore
from ..store import Store
from ..supervisor import Supervisor

if TYPE_CHECKING:
    from ..egress.bridge import Bridge, BridgeRecord

log = logging.getLogger("sandlot")
ChannelFor = Callable[[], Awaitable[Channel]]
DialLocal = Callable[[], Awaitable[socket.socket | None]]  # a hand-off connection, or None
EventSink = Callable[[str, str, dict[str, Any]], None]  # sandbox id, kind, data

PROXY = "proxy"
BRIDGE = "bridge"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
LOCAL = "localhost,127.0.0.1,::1"  # the sandbox's own services are reached directly
MAX_CONNECTIONS = 256  # served at once per sandbox and listener; more are closed at once


def proxy_env() -> dict[str, str]:
    """What every tool reads, in both spellings; ``{port}`` is filled in by the agent."""
    url = "http://127.0.0.1:{port}"
    env = {name: url for name in PROXY_VARIABLES}
    env |= {name.lower(): url for name in PROXY_VARIABLES}
    env["NO_PROXY"] = env["no_proxy"] = LOCAL
    return env


def check_network(provider: Provider, policy: NetworkPolicy) -> None:
    """An allowlist means something only where the sandbox has no network of its own."""
    if "unisolated" in provider.capabilities:
        raise EgressError(
            f"the {provider.name} provider runs without isolation: its sandboxes share the "
            "host's network, so an allowlist cannot be enforced there (use bwrap or docker)"
        )


def new_settings(
    spec_network: Any, bridge: BridgeConfig | None, env_refs: dict[str, Any]
) -> dict[str, Any]:
    """What the store keeps for a sandbox: policies and references, never secret values."""
    settings: dict[str, Any] = {"secret_env": env_refs}
    if spec_network == "full":
        settings["full"] = True
    if isinstance(spec_network, NetworkPolicy):
        settings["network"] = spec_network.model_dump(mode="json")
    if bridge is not None:
        settings["bridge"] = bridge.model_dump(mode="json")
        settings["bridge_token"] = secrets.token_urlsafe(32)
    return settings


class Egress:
    """Serves one sandbox's listeners from this process until closed."""

    def __init__(
        self,
        sandbox_id: str,
        store: Store,
        secret_store: SecretStore,
        channel_for: ChannelFor,
        dial_local: DialLocal,
        sink: EventSink,
    ) -> None:
        self.sandbox_id = sandbox_id
        self.store = store
        self.secret_store = secret_store
        self.channel_for = channel_for
        self.dial_local = dial_local
        self.sink = sink
        self._tasks: set[asyncio.Future[Any]] = set()
        self._serving = 0  # connections being served now
        self._listening: set[str] = set()  # the listeners this process serves
        self._bridge: Bridge | None = None
        self._closed = False

    def _settings(self) -> dict[str, Any]:
        return self.store.egress(self.sandbox_id) or {}

    def policy(self) -> NetworkPolicy:
        """The policy as stored now: an empty one (nothing allowed) once it is removed."""
        network = self._settings().get("network")
        return NetworkPolicy.model_validate(network) if network else NetworkPolicy(allow=[])

    async def start(self, *, takeover: bool) -> None:
        """Listen for what the settings ask for. With ``takeover`` (the creator), wait until
        the variables are set, so the first command sees them; otherwise wait on standby."""
        settings = self._settings()
        waits = []
        if settings.get("network"):
            waits.append(self.serve_proxy(takeover=takeover))
        if settings.get("bridge"):
            from ..egress.bridge import Bridge  # aiohttp: only where a bridge is used

            config = BridgeConfig.model_validate(settings["bridge"])
            headers, _ = await resolve_values(config.headers, self.secret_store)
            self._bridge = Bridge(
                config,
                token=settings["bridge_token"],
                headers=headers,
                identity={"X-Sandlot-Sandbox": self.sandbox_id},
                on_record=self._bridged,
            )
            env = {
                "SANDLOT_BRIDGE_URL": "http://127.0.0.1:{port}",
                "SANDLOT_BRIDGE_TOKEN": settings["bridge_token"],
            }
            waits.append(self._listen(BRIDGE, env, self._bridge.serve, takeover))
        if waits:
            await asyncio.gather(*waits)

    async def serve_proxy(self, *, takeover: bool) -> None:
        """Listen for the proxy (once): at start, or when a policy is first given."""
        if PROXY not in self._listening:
            await self._listen(PROXY, proxy_env(), self._serve_proxy, takeover)

    async def _listen(
        self,
        name: str,
        env: dict[str, str],
        serve: Callable[[ByteStream], Awaitable[Any]],
        takeover: bool,
    ) -> None:
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._listening.add(name)
        self._spawn(self._accept_loop(name, env, serve, takeover, ready))
        await ready

    async def _accept_loop(
        self,
        name: str,
        env: dict[str, str],
        serve: Callable[[ByteStream], Awaitable[Any]],
        takeover: bool,
        ready: asyncio.Future[None],
    ) -> None:
        """Keep the listener served, again after a dropped connection: over a hand-off
        connection where the agent's socket is on this machine, else over the channel."""
        try:
            while not self._closed:
                try:
                    sock = await self.dial_local()
                except SandboxNotFoundError:
                    return
                listen = {"name": name, "env": env, "takeover": takeover}
                if sock is not None:
                    taken_over = await self._serve_handoff(sock, listen, serve, ready)
                else:
                    taken_over = await self._serve_tunnels(listen, serve, ready)
                if taken_over:
                    return  # another process serves it now
                takeover = False  # after a drop, never take it from another process
                await asyncio.sleep(0.1)  # the channel is dialled again, or the sandbox ended
        except SandlotError as exc:
            if not ready.done():
                ready.set_exception(exc)
        finally:
            if not ready.done():
                ready.set_result(None)

    async def _serve_handoff(
        self,
        sock: socket.socket,
        listen: dict[str, Any],
        serve: Callable[[ByteStream], Awaitable[Any]],
        ready: asyncio.Future[None],
    ) -> bool:
        """The agent hands each accepted socket over; True if another process took over."""
        handoff = await Handoff.open(sock, **listen)
        try:
            while (item := await handoff.next()) is not None:
                event, taken = item
                kind = event.get("event")
                if kind == "error":
                    if isinstance(event["error"], ProtocolError):
                        # The sandbox broke the hand-off's protocol: it is hostile. Failing
                        # its channel with that error gets it killed (Manager).
                        (await self.channel_for()).fail(event["error"])
                    raise event["error"]
                if kind in ("listening", "standby") and not ready.done():
                    ready.set_result(None)
                elif kind == "accept" and taken is not None:
                    self._spawn(self._serve_socket(taken, serve))
                elif kind == "accept":  # it could not be handed over: take it as a tunnel
                    channel = await self.channel_for()
                    self._spawn(self._take(channel, listen["name"], event["id"], serve))
            return handoff.taken_over
        finally:
            handoff.close()

    async def _serve_tunnels(
        self,
        listen: dict[str, Any],
        serve: Callable[[ByteStream], Awaitable[Any]],
        ready: asyncio.Future[None],
    ) -> bool:
        """The agent carries each connection over the channel; True if taken over."""
        channel = await self.channel_for()
        request = channel.open("listen", **listen)
        try:
            while True:
                kind, _, payload = await request.receive()
                if kind == p.END:
                    return True
                message = json.loads(payload)
                if message.get("event") in ("listening", "standby") and not ready.done():
                    ready.set_result(None)
                elif message.get("event") == "accept":
                    self._spawn(self._take(channel, listen["name"], message["id"], serve))
        except SandboxClosedError:
            return False
        finally:
            request.cancel()

    async def _serve_socket(
        self, sock: socket.socket, serve: Callable[[ByteStream], Awaitable[Any]]
    ) -> None:
        if self._serving >= MAX_CONNECTIONS:
            sock.close()
            return
        try:
            stream = await Upstream.wrap(sock)
        except OSError:
            sock.close()
            return
        self._serving += 1
        try:
            await serve(stream)
        finally:
            self._serving -= 1
            await stream.aclose()

    async def _take(
        self, channel: Channel, name: str, ident: int, serve: Callable[[ByteStream], Awaitable[Any]]
    ) -> None:
        request = channel.open("accepted", name=name, id=ident)
        if self._serving >= MAX_CONNECTIONS:
            request.cancel()
            return
        try:
            await request.receive()  # "connected"
        except SandlotError:
            request.cancel()
            return
        stream = TunnelStream(request)
        self._serving += 1
        try:
            await serve(stream)
        finally:
            self._serving -= 1
            await stream.aclose()

    async def _serve_proxy(self, stream: ByteStream) -> None:
        record = await serve_proxy(stream, self.policy)
        event = record.to_event()
        # How its bytes went: handed over to this host, or carried over the channel.
        event["via"] = "channel" if isinstance(stream, TunnelStream) else "handoff"
        self.sink(self.sandbox_id, "egress", event)

    def _bridged(self, record: BridgeRecord) -> None:
        self.sink(self.sandbox_id, "bridge", record.to_event())

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = Supervisor.current().spawn(coro, "egress")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("egress of sandbox %s: %s", self.sandbox_id, task.exception())

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._bridge is not None:
            await self._bridge.aclose()
