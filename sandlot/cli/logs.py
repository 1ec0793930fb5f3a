"""``sandlot logs``: a sandbox's or a session's transcript (its session's event log), and
with ``-f`` what is added to it, until interrupted or the sandbox ends.

Commands are shown as ``$ CMD`` lines, their output as it was printed (stdout to our stdout,
stderr to our stderr) and their end as ``[exit N]``; other events as one bracketed line.
``--json`` prints every event as ``sandlot sessions events --json`` does. Embedded, only the
sandboxes of a session are recorded; on a server (``SANDLOT_URL``) every sandbox is.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import NotFoundError, SandboxNotFoundError, SessionNotFoundError
from ._common import JsonOption, UsageError
from .sessions import event_json

if TYPE_CHECKING:
    from ..models import SessionEvent

PAGE = 1000  # events per read
POLL = 0.2  # seconds between reads while following and nothing came
ALIVE_EVERY = 1.0  # seconds between checks that a followed sandbox still runs
SESSION_KEY = "sandlot.session"  # in an embedded session sandbox's metadata


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
    from ..sdk import Session

    if after < 0:
        raise UsageError(f"--after must be 0 or more, got {after}")
    session_id, sandbox_id = _resolve(target)
    session = Session.connect(session_id)
    show = _json_line if json_ else _Transcript()
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


def _remote_record(sandbox_id: str) -> Any:
    from urllib.parse import quote

    from ..api import SandboxOut
    from ..sdk.backend import backend_for
    from ..sdk.sync import _portal  # the sync SDK's loop, where its client lives

    client = backend_for(None).client  # type: ignore[attr-defined]

    async def get() -> Any:
        try:
            return await client.call("GET", f"/v1/sandboxes/{quote(sandbox_id, safe='')}")
        except SandboxNotFoundError:
            return None

    answer = _portal.call(get())
    return None if answer is None else SandboxOut.model_validate(answer)


def _running(sandbox_id: str) -> bool:
    info = _sandbox(sandbox_id)
    return info is not None and info.state == "running"


def _ends(event: SessionEvent, sandbox_id: str | None) -> bool:
    """Whether this event says the followed sandbox ended."""
    data = event.data if isinstance(event.data, dict) else {}
    return (
        sandbox_id is not None
        and event.kind == "sandbox"
        and data.get("sandbox") == sandbox_id
        and data.get("event") in ("ended", "lost")
    )


def _json_line(event: SessionEvent) -> None:
    sys.stdout.write(event_json(event) + "\n")


class _Transcript:
    """Events as a terminal session reads: commands, their output, how they ended."""

    def __init__(self) -> None:
        self.at_line_start = True  # of our stdout: a marker line must start on its own

    def __call__(self, event: SessionEvent) -> None:
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


def _describe(event: SessionEvent) -> str:
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
