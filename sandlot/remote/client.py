"""``sandlot.Client``: where a sandlot server is and how to call it (aiohttp, lazily imported).

aiohttp rather than httpx: on this machine a loopback round trip costs 0.9 ms with aiohttp
and 1.9 ms with httpx, and the remote round trip has a budget of 2 ms over embedded. The sync
SDK runs the same client on its private event loop; each event loop gets its own session.

Errors the server answers with come back as the same :mod:`sandlot.errors` class, looked up
by code.

A server that restarts, or is briefly out of reach, is waited for: for up to ``retry_for``
seconds (default 30, ``SANDLOT_RETRY_FOR``; 3 s for a server that never answered this process,
which is more likely a wrong URL or one not started) a request that is safe to repeat is tried
again, with exponential backoff and full jitter: any request whose connection was never made
(it cannot have reached the server), and one that may be repeated (reads, ``PUT``, ``DELETE``,
writes with an ``Idempotency-Key``) after a dropped connection or a 429/502/503/504 answer. A
dropped stream resumes from the log with ``Last-Event-ID`` within the same time (see
:mod:`sandlot.remote.channel`). Only a client given a circuit breaker (the remote provider's,
when a ``fallback`` can take over) stops calling a failing server; see
:mod:`sandlot.remote.breaker`. A small loop here rather than tenacity: the decision depends on
aiohttp's exception kinds, the breaker and a deadline shared with the call's own, and the SDK
should not pull a dependency for fifteen lines.

Nothing waits forever on a server that stopped answering (alive but silent, or a dead path):
a plain call has ``call_timeout`` seconds for its whole answer, retries included; a stream
(an execution's events, a download) may be silent for ``stream_timeout`` seconds, three of
the server's keep-alive periods. Either ends in :class:`RemoteUnavailableError`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import random
import uuid
import weakref
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from ..errors import (
    InvalidArgumentError,
    ProtocolError,
    RemoteUnavailableError,
    SandlotError,
    from_dict,
)

if TYPE_CHECKING:
    import aiohttp

    from ..secrets.models import SecretInfo
    from .breaker import CircuitBreaker

_background: set[asyncio.Task[Any]] = set()
_answered: set[str] = set()  # the servers (URLs) that have answered this process
_all_sessions: weakref.WeakSet[aiohttp.ClientSession] = weakref.WeakSet()


def _drop_dead_sessions() -> None:
    """Close (without awaiting) the sessions of event loops that are gone, e.g. each
    ``asyncio.run`` an async program did: nobody can close them properly any more."""
    for session in list(_all_sessions):
        if session._loop.is_closed() and not session.closed:
            connector = session.connector
            session.detach()
            if connector is not None:
                with contextlib.suppress(Exception):
                    connector._close()
            _all_sessions.discard(session)


atexit.register(_drop_dead_sessions)


async def close_sessions() -> None:
    """Close every client session of the running event loop (the sync SDK's loop, at exit)."""
    loop = asyncio.get_running_loop()
    for session in list(_all_sessions):
        if session._loop is loop and not session.closed:
            await session.close()


def background(coro: Any) -> asyncio.Task[Any]:
    """Run a call nobody waits for (a cancel, an EOF) and keep it until it is done."""
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return task


async def settle(timeout: float = 5.0) -> None:
    """Wait for the background calls of this event loop (e.g. before the process exits:
    a cancelled command must still be killed on the server)."""
    loop = asyncio.get_running_loop()
    pending = [t for t in _background if t.get_loop() is loop and not t.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)


RETRIES = 3  # with a breaker: tries after the first, then the fallback takes over
RETRY_DELAY = 0.2  # the first pause before trying again; doubled on every retry
RETRY_DELAY_MAX = 1.0  # at most this long between tries: a server back is seen within 1 s
RETRY_FOR = 30.0  # seconds a failing request keeps being tried (SANDLOT_RETRY_FOR)
# A server this process never reached is more likely a wrong URL or one not started than one
# restarting: it is tried this long at most, so a typo is reported in seconds, not half a minute.
FIRST_CONTACT = 3.0
RETRY_STATUSES = frozenset({429, 502, 503, 504})  # not served: a repeatable call tries again
CALL_TIMEOUT = 60.0  # seconds for a plain call's answer (SANDLOT_CALL_TIMEOUT)
# Calls that may pull an image or move a workspace on the server (create, pause, resume; a
# session's create, attach, checkpoint, detach, delete) get at least this long.
SLOW_CALL_TIMEOUT = 600.0
# A stream carries a keep-alive every 15 s (server/deps.py KEEPALIVE_SECONDS): three missed
# ones mean the server or the path is gone (SANDLOT_STREAM_TIMEOUT).
STREAM_TIMEOUT = 45.0


def _seconds(given: float | None, variable: str, default: float) -> float:
    """A deadline: the argument, else the environment variable, else the default."""
    raw: object = given
    if given is None:
        text = os.environ.get(variable, "").strip()
        if not text:
            return default
        try:
            raw = float(text)
        except ValueError:
            raw = text
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 < raw < 10**6:
        where = variable if given is None else variable.removeprefix("SANDLOT_").lower()
        raise InvalidArgumentError(f"{where} must be a positive number of seconds, not {raw!r}")
    return float(raw)


class Client:
    """A sandlot server: ``Client(url="http://host:8787", api_key="sl_...")``.

    Without arguments, ``SANDLOT_URL`` and ``SANDLOT_API_KEY`` from the environment; the
    deadlines not given come from ``SANDLOT_CALL_TIMEOUT``, ``SANDLOT_STREAM_TIMEOUT`` and
    ``SANDLOT_RETRY_FOR`` (default 60, 45 and 30 seconds). ``retry_for`` is how long a server
    that cannot be reached is tried again before :class:`RemoteUnavailableError`; ``breaker``
    (a :class:`~sandlot.remote.breaker.CircuitBreaker`) makes calls fail at once while it is
    open instead, for a caller that has somewhere else to go."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        connect_timeout: float = 10.0,
        call_timeout: float | None = None,
        stream_timeout: float | None = None,
        retry_for: float | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        url = url if url is not None else os.environ.get("SANDLOT_URL", "")
        parts = urlsplit(url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidArgumentError(
                f"a sandlot server URL looks like http://host:8787, not {url!r}"
            )
        self.url = url.rstrip("/")
        key = api_key if api_key is not None else os.environ.get("SANDLOT_API_KEY")
        self.api_key = key or None
        self.connect_timeout = connect_timeout
        self.call_timeout = _seconds(call_timeout, "SANDLOT_CALL_TIMEOUT", CALL_TIMEOUT)
        self.stream_timeout = _seconds(stream_timeout, "SANDLOT_STREAM_TIMEOUT", STREAM_TIMEOUT)
        self.slow_call_timeout = max(self.call_timeout, SLOW_CALL_TIMEOUT)
        self.retry_for = _seconds(retry_for, "SANDLOT_RETRY_FOR", RETRY_FOR)
        self.breaker = breaker
        self._sessions: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, aiohttp.ClientSession
        ] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"<sandlot.Client {self.url}>"

    def session(self) -> aiohttp.ClientSession:
        import aiohttp

        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            _drop_dead_sessions()
            headers = {"User-Agent": "sandlot-sdk"}
            if self.api_key:
                headers["Authorization"] = f"Bearer {self.api_key}"
            session = aiohttp.ClientSession(
                headers=headers,
                # Streams and downloads: silence, not length, ends them. Plain calls set their
                # own (see call()).
                timeout=self._timeouts(sock_read=self.stream_timeout),
                connector=aiohttp.TCPConnector(limit=1000, force_close=False),
                auto_decompress=False,
            )
            self._sessions[loop] = session
            _all_sessions.add(session)
        return session

    def _timeouts(self, sock_read: float | None) -> aiohttp.ClientTimeout:
        import aiohttp

        connect = self.connect_timeout
        return aiohttp.ClientTimeout(
            total=None, connect=connect, sock_connect=connect, sock_read=sock_read
        )

    async def aclose(self) -> None:
        """Close this event loop's connections."""
        loop = asyncio.get_running_loop()
        session = self._sessions.pop(loop, None)
        if session is not None:
            await session.close()

    # -- calls ------------------------------------------------------------------------------

    async def open(
        self,
        method: str,
        path: str,
        *,
        retry: bool = False,
        **kwargs: Any,
    ) -> aiohttp.ClientResponse:
        """Send a request and return the response once its headers are in, raising the
        server's error for a status >= 400. The caller reads (and releases) the body.

        ``retry``: the request may be repeated after it may have reached the server (a
        request with an ``Idempotency-Key`` always may)."""
        import aiohttp

        retry = retry or _has_idempotency_key(kwargs.get("headers"))
        breaker = self.breaker
        loop = asyncio.get_running_loop()
        # With a breaker, a few quick tries: a fallback is waiting. Without, the server is
        # waited for.
        if breaker is not None:
            window = RETRY_DELAY * (2**RETRIES)
        elif self.url in _answered:
            window = self.retry_for
        else:
            window = min(self.retry_for, FIRST_CONTACT)
        give_up = loop.time() + window
        connect_timeout = getattr(aiohttp, "ConnectionTimeoutError", ())  # aiohttp 3.10+
        started = loop.time()
        attempt = 0
        while True:
            attempt += 1
            if breaker is not None:
                breaker.before()
            try:
                response = await self.session().request(method, self.url + path, **kwargs)
            except (aiohttp.ClientConnectionError, OSError) as exc:
                # Connected, but no answer within the read timeout: asking again waits as long.
                silent = isinstance(exc, TimeoutError) and not isinstance(exc, connect_timeout)
                # No connection was made: the request cannot have reached the server (a TLS
                # certificate that is refused will be refused again: not worth a retry).
                unsent = isinstance(
                    exc, (aiohttp.ClientConnectorError, connect_timeout)
                ) and not isinstance(exc, aiohttp.ClientSSLError)
                if breaker is not None:
                    breaker.failure(f"no answer: {exc}" if silent else f"cannot connect: {exc}")
                pause = _pause(attempt, give_up - loop.time())
                if not silent and (unsent or retry) and pause is not None:
                    await asyncio.sleep(pause)
                    continue
                problem = "it accepted the connection but did not answer" if silent else exc
                tried = f" (tried {attempt} times in {loop.time() - started:.1f} s)"
                raise RemoteUnavailableError(
                    f"cannot reach the sandlot server at {self.url}: {problem}"
                    + (tried if attempt > 1 else ""),
                    url=self.url,
                ) from None
            status = response.status
            _answered.add(self.url)
            if status >= 500 or status == 429:
                overloaded = status in (429, 503)
                if breaker is not None:
                    breaker.failure(f"it answered {status}", overloaded=overloaded)
                pause = _pause(attempt, give_up - loop.time(), response.headers.get("Retry-After"))
                if retry and status in RETRY_STATUSES and pause is not None:
                    response.release()
                    await asyncio.sleep(pause)
                    continue
            elif breaker is not None:
                breaker.success()
            if status >= 400:
                raise await error_of(response)
            return response

    async def call(
        self,
        method: str,
        path: str,
        *,
        retry: bool | None = None,
        call_timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """A request with a JSON answer (None for 204), within ``call_timeout`` seconds
        (default: the client's) for everything: retries, the answer and its body."""
        if retry is None:
            retry = method in ("GET", "HEAD", "DELETE", "PUT")
        seconds = self.call_timeout if call_timeout is None else call_timeout
        # The deadline is ours; aiohttp's read timeout would cut a slow call's wait short.
        kwargs.setdefault("timeout", self._timeouts(sock_read=None))
        scope = asyncio.timeout(seconds)
        try:
            async with scope:
                return await self._call(method, path, retry, kwargs)
        except TimeoutError:
            if not scope.expired():
                raise  # the server's own answer (an error class that is a TimeoutError)
            if self.breaker is not None:
                self.breaker.failure(f"no answer within {seconds:g} s")
            raise RemoteUnavailableError(
                f"the sandlot server at {self.url} did not answer {method} {path.split('?')[0]} "
                f"within {seconds:g} s",
                url=self.url,
                timeout=seconds,
            ) from None

    async def _call(self, method: str, path: str, retry: bool, kwargs: dict[str, Any]) -> Any:
        import aiohttp

        response = await self.open(method, path, retry=retry, **kwargs)
        try:
            body = await response.read()
        except aiohttp.ClientError as exc:
            raise RemoteUnavailableError(f"the server's answer was cut off: {exc}") from None
        finally:
            response.release()
        if response.status == 204 or not body:
            return None
        try:
            return json.loads(body)
        except ValueError:
            raise ProtocolError(f"the server answered with non-JSON: {body[:200]!r}") from None

    # -- durable sessions (see :mod:`sandlot.remote.sessions`) -------------------------------

    async def create_session(self, body: dict[str, Any]) -> Any:
        """``POST /v1/sessions``, retried with one idempotency key."""
        return await self.call(
            "POST",
            "/v1/sessions",
            json=body,
            headers={"Idempotency-Key": "session-" + uuid.uuid4().hex},
            retry=True,
            call_timeout=self.slow_call_timeout,
        )

    async def get_session(self, session_id: str) -> Any:
        return await self.call("GET", _session_path(session_id))

    async def list_sessions(self, metadata: dict[str, str] | None = None) -> Any:
        params = [("metadata", f"{k}={v}") for k, v in (metadata or {}).items()]
        return await self.call("GET", "/v1/sessions", params=params)

    async def delete_session(self, session_id: str) -> None:
        await self.call("DELETE", _session_path(session_id), call_timeout=self.slow_call_timeout)

    async def session_events(self, session_id: str, after: int = 0, limit: int = 1000) -> Any:
        """The transcript as JSON (see ``SessionEventOut``)."""
        params = {"after": str(after), "limit": str(limit)}
        return await self.call("GET", _session_path(session_id) + "/events", params=params)

    async def checkpoint_session(self, session_id: str) -> Any:
        path = _session_path(session_id) + "/checkpoint"
        return await self.call("POST", path, call_timeout=self.slow_call_timeout)

    async def attach_session(self, session_id: str, body: dict[str, Any]) -> Any:
        """``POST /v1/sessions/{id}/sandboxes`` (retried with one idempotency key: a retry
        after a lost answer gets the same sandbox and lease)."""
        return await self.call(
            "POST",
            _session_path(session_id) + "/sandboxes",
            json=body,
            headers={"Idempotency-Key": "attach-" + uuid.uuid4().hex},
            retry=True,
            call_timeout=self.slow_call_timeout,
        )

    async def heartbeat_lease(self, session_id: str, lease_id: str) -> None:
        """SandboxClosedError once the lease has expired or was released."""
        path = f"{_session_path(session_id)}/leases/{quote(lease_id, safe='')}/heartbeat"
        await self.call("POST", path, retry=True)

    async def detach_session(self, session_id: str, lease_id: str, *, stop: bool = True) -> Any:
        path = f"{_session_path(session_id)}/leases/{quote(lease_id, safe='')}"
        params = {"stop": "true" if stop else "false"}  # stopping checkpoints the workspace
        return await self.call("DELETE", path, params=params, call_timeout=self.slow_call_timeout)

    # -- secrets (values go in, never out) ----------------------------------------------------

    async def set_secret(self, name: str, value: str) -> None:
        """Store a secret for this key's tenant, encrypted with the server's key."""
        from ..secrets.models import check_name, check_value

        path = f"/v1/secrets/{check_name(name)}"
        await self.call("PUT", path, json={"value": check_value(value)})

    async def list_secrets(self) -> list[SecretInfo]:
        """The tenant's secrets: names and dates, never values."""
        from ..secrets.models import SecretInfo

        answer = await self.call("GET", "/v1/secrets")
        return [SecretInfo.model_validate(item) for item in answer or []]

    async def delete_secret(self, name: str) -> bool:
        """Forget a secret; False when the tenant had none of that name."""
        from ..errors import SecretNotFoundError
        from ..secrets.models import check_name

        try:
            await self.call("DELETE", f"/v1/secrets/{check_name(name)}")
        except SecretNotFoundError:
            return False
        return True


def _pause(attempt: int, left: float, retry_after: str | None = None) -> float | None:
    """How long to wait before try ``attempt + 1`` (exponential, full jitter; at least what
    the server's ``Retry-After`` asks), or None when that would pass the deadline."""
    ceiling = min(RETRY_DELAY * 2 ** (attempt - 1), RETRY_DELAY_MAX)
    pause = random.uniform(ceiling / 2, ceiling)
    if retry_after is not None and retry_after.strip().isdigit():
        pause = max(pause, float(retry_after.strip()))
    return pause if pause < left else None


def _has_idempotency_key(headers: Any) -> bool:
    return bool(headers) and any(str(k).lower() == "idempotency-key" for k in headers)


def _session_path(session_id: str) -> str:
    if not isinstance(session_id, str) or not session_id:
        raise InvalidArgumentError("a session id is a non-empty string")
    return "/v1/sessions/" + quote(session_id, safe="")


async def error_of(response: aiohttp.ClientResponse) -> SandlotError:
    """The exception a server's error answer stands for (same class, by its code)."""
    try:
        body = await response.read()
    finally:
        response.release()
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if not isinstance(payload, dict) or "code" not in payload:
        return RemoteUnavailableError(
            f"the server answered {response.status}: {body[:200]!r}", status=response.status
        )
    details = payload.get("details")
    if not isinstance(details, dict):
        details = {}
    return from_dict({"code": payload["code"], "message": payload.get("message", ""), **details})
