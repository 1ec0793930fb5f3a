"""Durable sessions on a sandlot server: the SDK's :class:`~sandlot.sdk.session.SessionBackend`
over ``/v1/sessions``.

An attached sandbox is an ordinary remote sandbox (``/v1/sandboxes/{id}``) held through a
lease that this process heartbeats every ``lease_ttl / 3`` seconds until :meth:`detach`; if
this process dies, the lease expires and the server checkpoints and destroys the sandbox.
The server records every run in the session's transcript and takes its run lock itself.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..api import AttachOut, SessionEventOut, SessionOut
from ..errors import RemoteUnavailableError, SandboxClosedError, SessionNotFoundError
from ..models import SandboxSpec, SessionEvent, SessionInfo
from .backend import RemoteBackend, spec_body

if TYPE_CHECKING:
    from ..sdk.sandbox import AsyncSandbox
    from ..workspace import CheckpointInfo
    from .client import Client

log = logging.getLogger("sandlot")


class RemoteSessions:
    """Sessions kept by the server this client names, for the client's tenant."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._heartbeats: dict[str, asyncio.Task[None]] = {}

    async def create_session(
        self, metadata: dict[str, str], settings: dict[str, Any]
    ) -> SessionInfo:
        body: dict[str, Any] = {
            "metadata": metadata,
            "workspace_store": settings.get("workspace", "local"),
        }
        for name in ("idle_timeout", "checkpoint_every"):  # None is meant: "never"
            body[name] = settings.get(name)
        if settings.get("volumes"):
            body["volumes"] = settings["volumes"]
        delete_after = _when(settings.get("delete_after"))
        if delete_after is not None:
            body["delete_after"] = delete_after
        return SessionOut.model_validate(await self.client.create_session(body))

    async def get_session(self, session_id: str) -> SessionInfo:
        return SessionOut.model_validate(await self.client.get_session(session_id))

    async def list_sessions(self, metadata: dict[str, str] | None) -> builtins.list[SessionInfo]:
        answer = await self.client.list_sessions(metadata)
        return [SessionOut.model_validate(item) for item in answer or []]

    async def delete_session(self, session_id: str) -> None:
        await self.client.delete_session(session_id)

    async def session_events(
        self, session_id: str, after: int, limit: int
    ) -> builtins.list[SessionEvent]:
        answer = await self.client.session_events(session_id, after, limit)
        return [_event(SessionEventOut.model_validate(item)) for item in answer or []]

    async def checkpoint(self, session_id: str) -> CheckpointInfo:
        from ..workspace import CheckpointInfo

        return CheckpointInfo.model_validate(await self.client.checkpoint_session(session_id))

    async def attach(
        self, session_id: str, spec: SandboxSpec, *, reuse: bool, force: bool, lease_ttl: float
    ) -> tuple[AsyncSandbox, str]:
        from ..sdk.sandbox import AsyncSandbox

        body = {**spec_body(spec), "reuse": reuse, "lease_ttl": lease_ttl}
        answer = AttachOut.model_validate(await self.client.attach_session(session_id, body))
        backend = RemoteBackend(self.client)
        live = backend._live(answer.sandbox.model_dump(mode="json"))
        live.channel.force = force
        sandbox = AsyncSandbox(backend, live)
        lease_id = answer.lease_id
        self._heartbeats[lease_id] = asyncio.ensure_future(
            self._heartbeat_loop(session_id, lease_id, answer.lease_ttl, live.channel)
        )
        return sandbox, lease_id

    async def _heartbeat_loop(
        self, session_id: str, lease_id: str, ttl: float, channel: Any
    ) -> None:
        while True:
            await asyncio.sleep(ttl / 3)
            if channel.closed is not None:
                return  # the sandbox was closed or killed here: let the lease lapse
            try:
                await self.client.heartbeat_lease(session_id, lease_id)
            except (SandboxClosedError, SessionNotFoundError):
                return  # expired, released or deleted: the holder must attach again
            except RemoteUnavailableError as exc:  # e.g. the server restarts: keep trying
                log.debug("lease %s: heartbeat failed: %s", lease_id, exc)
            except Exception as exc:
                log.warning("lease %s: heartbeat failed: %s", lease_id, exc)

    async def detach(self, session_id: str, lease_id: str, *, stop: bool) -> None:
        task = self._heartbeats.pop(lease_id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self.client.detach_session(session_id, lease_id, stop=stop)


def _when(value: Any) -> str | None:
    """``delete_after``: an aware datetime, or seconds from now, as ISO 8601."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()  # a naive one is refused by the server (422)
    from ..manager.sessions import check_seconds

    seconds = check_seconds(value, "delete_after")
    assert seconds is not None
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def _event(out: SessionEventOut) -> SessionEvent:
    """The same decoding as embedded: output as text and raw bytes, the rest as JSON."""
    if out.kind in ("stdout", "stderr"):
        raw = base64.b64decode(out.b64) if out.b64 is not None else (out.text or "").encode()
        text = raw.decode("utf-8", "replace")
        data = None
    else:
        raw = base64.b64decode(out.b64) if out.b64 is not None else b""
        text = None
        data = out.data
        if out.data is not None and not raw:
            import json

            raw = json.dumps(out.data).encode()
    return SessionEvent(
        seq=out.seq,
        kind=out.kind,
        execution_id=out.execution_id,
        created_at=out.created_at,
        text=text,
        data=data,
        raw=raw,
    )
