"""``sandlot logs``: a sandbox's or a session's transcript (its session's event log), and
with ``-f`` what is added to it, until interrupted or the sandbox ends.

Commands are shown as ``$ CMD`` lines, their output as it was printed (stdout to our stdout,
stderr to our stderr) and their end as ``[exit N]``; other events as one bracketed line.
``--json`` prints every event as ``sandlot sessions events --json`` does. Embedded, only the
sandboxes of a session are recorded; on a server (``SANDLOT_URL``) every sandbox is.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import NotFoundError, SandboxNotFoundError, SessionNotFoundError
from ._common import JsonOption, UsageError
from .sessions import event_json

if TYPE_CHECKING:
    from ..remote.sse import ServerEvent

PAGE = 1000  # events per read
POLL = 0.2  # seconds between reads while following and nothing came
ALIVE_EVERY = 1.0  # seconds between checks that a followed sandbox still runs
SESSION_KEY = "sandlot.session"  # in an embedded session sandbox's metadata
RESUMES = 5  # times a dropped events stream is taken up again after its last event
SSE = {"Accept": "text/event-stream"}


def logs(
    target: Annotated[str, typer.Argument(metavar="ID", help="A sandbox's id, or a session's.")],
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Go on printing new events until Ctrl-C or the sandbox ends."
        ),
    ] = False,
    after: Annotated[
        int, typer.Option("--after", help="Only events after this sequence number.")
    ] = 0,
    json_: JsonOption = False,
) -> None:
    """Print a sandbox's (or session's) transcript: its commands with their output.

    Example: sandlot logs -f sb-0123456789ab
    """
    if after < 0:
        raise UsageError(f"--after must be 0 or more, got {after}")
    show = _json_line if json_ else _Transcript()
    if os.environ.get("SANDLOT_URL"):
        record = _remote_record(target)
        if record is not None:  # a server's sandbox: its log, streamed (SSE)
            _stream(target, after, follow, show)
            return
    session_id, sandbox_id = _resolve(target)
    _poll(session_id, sandbox_id, after, follow, show)


def _poll(
    session_id: str, sandbox_id: str | None, after: int, follow: bool, show: Callable[[Any], None]
) -> None:
    """Print a session's log from ``after`` on, read page by page; following, go on until
    the sandbox followed ends (a session: until interrupted)."""
    from ..sdk import Session

    session = Session.connect(session_id)
    last_check = time.monotonic()
    while True:
        batch = session.events(after, PAGE)
        ended = False
        for event in batch:
            show(event)
            after = event.seq
            ended = ended or _ends(event, sandbox_id)
        sys.stdout.flush()
        if ended or (not follow and len(batch) < PAGE):
            return
        if batch:
            continue
        if sandbox_id is not None and time.monotonic() - last_check >= ALIVE_EVERY:
            if not _running(sandbox_id):
                follow = False  # one more read for what it wrote as it ended, then stop
                continue
            last_check = time.monotonic()
        time.sleep(POLL)


def _stream(sandbox_id: str, after: int, follow: bool, show: Callable[[Any], None]) -> None:
    """Print a server's sandbox's log from its events stream (``/v1/sandboxes/ID/events``),
    resumed after the last event if the connection drops; following, until it ends."""
    from ..sdk.sync import _portal  # the sync SDK's loop, where its client lives

    _portal.call(_stream_events(sandbox_id, after, follow, show))


async def _stream_events(
    sandbox_id: str, after: int, follow: bool, show: Callable[[Any], None]
) -> None:
    import asyncio

    import aiohttp

    from ..remote.sse import events
    from ..sdk.backend import backend_for

    client = backend_for(None).client  # type: ignore[attr-defined]
    record = f"/v1/sandboxes/{_quote(sandbox_id)}"
    path = record + "/events"
    last = after

    async def read() -> None:
        nonlocal last
        for attempt in range(RESUMES + 1):
            query = f"?after={last}&follow={'true' if follow else 'false'}"
            response = await client.open("GET", path + query, headers=SSE, retry=True)
            try:
                async for event in events(response):
                    if event.seq is None or event.seq <= last:
                        continue
                    last = event.seq
                    shown = _Streamed.of(event)
                    show(shown)
                    sys.stdout.flush()
                    if _ends(shown, sandbox_id):
                        return
                return  # the server ended the stream: all of it (not following)
            except (TimeoutError, aiohttp.ClientError, OSError):
                if attempt == RESUMES:
                    raise
            finally:
                response.release()

    reader = asyncio.ensure_future(read())
    try:
        while not reader.done():
            await asyncio.wait({reader}, timeout=ALIVE_EVERY)
            if follow and not reader.done() and not await _alive_remote(client, record):
                await asyncio.wait({reader}, timeout=ALIVE_EVERY)  # what it wrote as it ended
                break
    finally:
        reader.cancel()
    failure = None if reader.cancelled() else reader.exception()
    if failure is not None:
        raise failure


async def _alive_remote(client: Any, path: str) -> bool:
    try:
        answer = await client.call("GET", path)
    except SandboxNotFoundError:
        return False
    return isinstance(answer, dict) and answer.get("state") == "running"


def _resolve(target: str) -> tuple[str, str | None]:
    """The session whose log to print, and the sandbox being followed (None: a session)."""
    from ..sdk import Session

    info = _sandbox(target)
    if info is not None:
        session_id = getattr(info, "session_id", None) or info.metadata.get(SESSION_KEY)
        if not session_id:
            raise UsageError(
                f"sandbox {target} keeps no transcript: on this host only a session's "
                "sandboxes are recorded (sandlot run --session ID; a server records all)"
            )
        return str(session_id), target
    try:
        Session.connect(target)
    except SessionNotFoundError:
        raise NotFoundError(f"no sandbox or session with id {target!r}") from None
    return target, None


def _sandbox(sandbox_id: str) -> Any:
    """The sandbox's record (None if there is none): on a server also an ended one's."""
    if os.environ.get("SANDLOT_URL"):
        return _remote_record(sandbox_id)
    from ..sdk import Sandbox

    return next((i for i in Sandbox.list() if i.id == sandbox_id), None)


def _quote(sandbox_id: str) -> str:
    from urllib.parse import quote

    return quote(sandbox_id, safe="")


def _remote_record(sandbox_id: str) -> Any:
    from ..api import SandboxOut
    from ..sdk.backend import backend_for
    from ..sdk.sync import _portal  # the sync SDK's loop, where its client lives

    client = backend_for(None).client  # type: ignore[attr-defined]

    async def get() -> Any:
        try:
            return await client.call("GET", f"/v1/sandboxes/{_quote(sandbox_id)}")
        except SandboxNotFoundError:
            return None

    answer = _portal.call(get())
    return None if answer is None else SandboxOut.model_validate(answer)


def _running(sandbox_id: str) -> bool:
    info = _sandbox(sandbox_id)
    return info is not None and info.state == "running"


def _ends(event: Any, sandbox_id: str | None) -> bool:
    """Whether this event says the followed sandbox ended."""
    data = event.data if isinstance(event.data, dict) else {}
    return (
        sandbox_id is not None
        and event.kind == "sandbox"
        and data.get("sandbox") == sandbox_id
        and data.get("event") in ("ended", "lost")
    )


def _json_line(event: Any) -> None:
    line = event.json() if isinstance(event, _Streamed) else event_json(event)
    sys.stdout.write(line + "\n")


@dataclass(frozen=True, slots=True)
class _Streamed:
    """An event from a server's stream, shaped as a :class:`SessionEvent` (the stream does
    not say when it was written: ``created_at`` is null)."""

    seq: int
    kind: str
    execution_id: str | None
    text: str | None
    data: Any

    @classmethod
    def of(cls, event: ServerEvent) -> _Streamed:
        output = event.kind in ("stdout", "stderr")
        execution = event.data.get("execution")
        return cls(
            seq=event.seq or 0,
            kind=event.kind,
            execution_id=execution if isinstance(execution, str) else None,
            text=event.output.decode("utf-8", "replace") if output else None,
            data=None if output else event.data.get("data"),
        )

    def json(self) -> str:
        row = {
            "seq": self.seq,
            "kind": self.kind,
            "execution_id": self.execution_id,
            "created_at": None,
            "text": self.text,
            "data": self.data,
        }
        return json.dumps(row)


class _Transcript:
    """Events as a terminal session reads: commands, their output, how they ended."""

    def __init__(self) -> None:
        self.at_line_start = True  # of our stdout: a marker line must start on its own

    def __call__(self, event: Any) -> None:
        if event.kind in ("stdout", "stderr"):
            text = event.text or ""
            if event.kind == "stdout":
                self._out(text)
            else:
                sys.stdout.flush()
                sys.stderr.write(text)
                sys.stderr.flush()
            return
        self._line(_describe(event))

    def _out(self, text: str) -> None:
        if text:
            sys.stdout.write(text)
            self.at_line_start = text.endswith("\n")

    def _line(self, text: str) -> None:
        self._out(("" if self.at_line_start else "\n") + text + "\n")


def _describe(event: Any) -> str:
    """One line for an event that is not output."""
    data: dict[str, Any] = event.data if isinstance(event.data, dict) else {}
    if event.kind == "started":
        if isinstance(data.get("cmd"), str):
            return f"$ {data['cmd']}"
        if isinstance(data.get("argv"), list):
            return "$ " + shlex.join(str(a) for a in data["argv"])
        return f"[{data.get('op', 'run')} started]"
    if event.kind == "exit":
        if data.get("timed_out"):
            return "[timed out]"
        if data.get("signal"):
            return f"[killed by signal {data['signal']}]"
        if "exit_code" in data:
            return f"[exit {data['exit_code']}]"
        return "[ended]"
    if event.kind == "error":
        return f"[error: {data.get('message') or data.get('error') or data}]"
    what = " ".join(str(data[k]) for k in ("event", "sandbox") if isinstance(data.get(k), str))
    return f"[{event.kind}{' ' + what if what else ''}]"
