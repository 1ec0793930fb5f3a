"""One run in its session's transcript: the one recorder of embedded and server runs alike.

A *run* is a command, a code cell or an install. Its agent's frames become events of its
session's log, in order: ``started`` (with the execution's record, in one transaction),
``stdout``/``stderr`` (secret values masked; past ``max_log_bytes`` one ``truncated`` event,
and the exit notes ``log_dropped``), the agent's own events, then ``exit`` or ``error``, which
ends the execution's record. A run of a durable session holds the session's run lock; the
lock is released as the run ends, and if a forced takeover took it meanwhile, the run ends
with a ``run_cancelled`` error instead.

A command's record also keeps, with each batch of its output, where it stands in the agent's
output log (its session's ``resume``, written by the same transaction, see
:mod:`sandlot.transcript.logwriter`): ``[offset, logged, dropped]``, the agent byte offset up
to which output is logged and the bytes logged and dropped so far; when secrets are masked,
then for stdout and for stderr where its held-back partial match began and how much of it a
replacement already covered. A restarted server re-attaches to the command from there
(:meth:`RunRecorder.resume_offset`, :meth:`RunRecorder.resumed`): output a masker held back is
fed again, output already logged is skipped, so the record goes on with no byte twice or
missing; bytes the agent no longer held are logged as one ``gap`` event.

What differs between the two paths is who drives the frames, and the caller's policy: a
server pumps them in a task of its own (:mod:`sandlot.transcript.runs`) and caps what it logs
(its ``max_log_bytes`` setting); an embedded session records each frame as its caller reads it
(:mod:`sandlot.manager.recorder`), all of it. So a transcript reads the same wherever it was
written.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from ..agent import protocol as p
from ..channel.base import Frame
from ..errors import ProtocolError, RunCancelledError, SandlotError
from ..secrets.mask import Masker
from ..store.records import ExecutionRecord
from ..supervisor import Supervisor
from .hub import Hub

STREAMS = {p.STDOUT: "stdout", p.STDERR: "stderr"}
KINDS = {"exec": "command", "code.run": "code", "code.install": "install"}  # ops that are runs
REATTACHABLE = {"command": "exec", "install": "code.install"}  # by kind: the agent's processes


def new_execution_id() -> str:
    return "ex-" + uuid.uuid4().hex[:16]


def takes_run_lock(op: str, args: dict[str, Any]) -> bool:
    """Whether a run of ``op`` takes its session's lock: all but a command that keeps its
    stdin open and has no time limit (a service, such as a server started in the
    background). The same rule embedded and in a server."""
    return not (op == "exec" and args.get("stdin") and args.get("timeout") is None)


class RunRecorder:
    """Writes one run into its session's log through the :class:`~.hub.Hub`.

    ``summary``: what the ``started`` event tells of the request besides its op and pid.
    ``release``: releases the session's run lock the run holds (False: a forced takeover
    took it meanwhile). ``max_log_bytes``: output logged at most (None: all of it).
    """

    def __init__(
        self,
        hub: Hub,
        op: str,
        session_id: str,
        sandbox_id: str,
        *,
        execution_id: str | None = None,
        summary: dict[str, Any] | None = None,
        secrets: list[str] | None = None,
        max_log_bytes: int | None = None,
        release: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.hub = hub
        self.op = op
        self.id = execution_id or new_execution_id()
        self.session_id = session_id
        self.sandbox_id = sandbox_id
        self.summary = summary or {}
        self.max_log_bytes = max_log_bytes
        self.release = release
        self.maskers = _maskers(secrets or [])
        self.created_at = time.time()
        self.pid: int | None = None
        self.outcome: dict[str, Any] | None = None  # set as the run ends
        self.logged = 0  # output bytes logged so far
        self.dropped = 0  # output bytes over max_log_bytes, not logged
        self.has_started = False  # its started event is queued
        self.ended = False  # its exit or error event is queued
        self.taken_over = False  # set by a taker before it cancels this run
        self._released = False
        # Where the command stands in the agent's output log (stdout and stderr bytes
        # together, in arrival order): what a restarted server resumes from.
        self.offset = 0
        # Code cells are not processes one can re-attach to; commands and installs are.
        self.tracks = op in REATTACHABLE.values()
        self._skip: dict[str, int] | None = None  # per stream: logged up to this offset
        # Per stream, the recent frames fed to its masker (end offset, length): where the
        # bytes it holds back began.
        self._fed: dict[str, deque[tuple[int, int]]] = {n: deque() for n in self.maskers}

    @property
    def kind(self) -> str:
        return KINDS[self.op]

    # -- the start --------------------------------------------------------------------------

    def started(self, pid: Any) -> None:
        """Log the ``started`` event with the execution's record (one transaction)."""
        self.has_started = True
        self.pid = pid if isinstance(pid, int) else None
        record = ExecutionRecord(
            id=self.id,
            session_id=self.session_id,
            sandbox_id=self.sandbox_id,
            kind=self.kind,
            state="running",
            pid=self.pid,
            created_at=datetime.fromtimestamp(self.created_at, UTC),
        )
        started = {"event": "started", "op": self.op, "pid": self.pid, **self.summary}
        self._put("started", dumps(started), record)

    # -- frames -----------------------------------------------------------------------------

    async def record(self, frame: Frame) -> bool:
        """Log one frame of the agent's answer. False: the run was taken over as it ended
        (its ``run_cancelled`` error is logged; :meth:`takeover_error` is what to raise)."""
        kind, stream, payload = frame
        if kind == p.DATA:
            name = STREAMS.get(stream)
            if name is not None and payload:
                at = self.offset
                self.offset = at + len(payload)
                if self._skip is not None:  # re-attached: replayed output already logged
                    payload = self._unlogged(name, at, payload)
                    if not payload:
                        return True
                await self._output(name, payload)
        elif kind == p.EVENT:
            event = parse(payload)
            name = event_name(event.get("event"))
            if name == "started" and not self.has_started:
                self.started(event.get("pid"))
            else:
                name = "event" if name == "started" else name
                # Re-encoded: the agent's own bytes may hold line breaks (JSON whitespace)
                # that would split an SSE event in two.
                await self._log(name, dumps(event))
        elif kind == p.END:
            for name, masker in self.maskers.items():  # what a partial match held back
                rest = masker.flush()
                if rest:
                    await self._output(name, rest, masked=True)
            outcome = parse(payload)
            if self.dropped:
                outcome["log_dropped"] = self.dropped
            return await self._end("exit", outcome, dumps(outcome))
        return True

    # -- a restart ----------------------------------------------------------------------------

    @staticmethod
    def resume_offset(place: list[Any] | None) -> int:
        """The agent offset to re-attach from, given what the log stored (``resume``)."""
        if not place:
            return 0
        holds = place[3::2]  # where each stream's held-back bytes began
        return int(min([place[0], *holds]))

    async def resumed(self, pid: int | None, place: list[Any] | None, start: int, gap: int) -> None:
        """Carry on the record of a command after a restart (its ``started`` is logged),
        from ``place`` (what the log stored); the agent replays from ``start`` on, having
        lost ``gap`` bytes before it."""
        self.has_started = True
        self.pid = pid
        resume_at = self.resume_offset(place)
        self.offset = max(resume_at, start)
        if place:
            self.logged, self.dropped = int(place[1]), int(place[2])
            holds = place[3:]
            if holds:
                names = list(STREAMS.values())
                self._skip = {n: int(holds[2 * i]) for i, n in enumerate(names)}
                for i, name in enumerate(names):
                    masker = self.maskers.get(name)
                    if masker is not None and not gap:  # what it held back comes again
                        masker.restore(int(holds[2 * i + 1]))
        if gap:
            notice = {"event": "gap", "bytes": gap, "offset": resume_at}
            await self._log("gap", dumps(notice))

    def _unlogged(self, name: str, at: int, payload: bytes) -> bytes:
        """What of a replayed frame starting at offset ``at`` is not logged yet."""
        assert self._skip is not None
        logged_to = self._skip.get(name, 0)
        if at < logged_to:
            payload = payload[logged_to - at :]
        if self.offset >= max(self._skip.values()):
            self._skip = None  # past every stream's logged output
        return payload

    def _progress(self) -> tuple[int, ...] | None:
        """Where the command stands, stored with its output (see the module)."""
        if not self.tracks:
            return None
        if not self.maskers:
            return (self.offset, self.logged, self.dropped)
        place = [self.offset, self.logged, self.dropped]
        for name in STREAMS.values():
            masker = self.maskers[name]
            place += [self._held_from(name, masker.pending), masker.covered]
        return tuple(place)

    def _held_from(self, name: str, held: int) -> int:
        """The offset of the first of the ``held`` bytes a stream's masker holds back."""
        for end, length in reversed(self._fed[name]):
            if held <= length:
                return end - held
            held -= length
        return self.offset

    def _fed_frame(self, name: str, length: int) -> None:
        """Note a frame fed to a masker; keep only what covers a held-back match."""
        fed = self._fed[name]
        fed.append((self.offset, length))
        longest = len(self.maskers[name].values[0])
        total = sum(n for _, n in fed)
        while len(fed) > 1 and total - fed[0][1] >= longest:
            total -= fed.popleft()[1]

    async def failed(self, error: SandlotError) -> bool:
        """The run failed with ``error``; False as :meth:`record`."""
        outcome = error.to_dict()
        return await self._end("error", outcome, dumps(outcome))

    def cancelled(self) -> None:
        """The run was cancelled (its caller gave up, its sandbox ended, a takeover)."""
        if self.ended:
            return
        if self.taken_over:
            self.outcome = self.takeover_error().to_dict()
        else:
            self.outcome = {"code": "cancelled", "message": "the execution was cancelled"}
            self._unlock_later()
        self._terminal("error", dumps(self.outcome))

    def crashed(self, error: Exception) -> None:
        """A bug ended the pump: the run's followers still get an end."""
        if self.ended:
            return
        self._unlock_later()
        self.outcome = {"code": "sandlot_error", "message": f"server error: {error}"}
        self._terminal("error", dumps(self.outcome))

    def takeover_error(self) -> RunCancelledError:
        return RunCancelledError(
            f"this run was cancelled: another caller took session {self.session_id} over",
            id=self.id,
        )

    # -- internals --------------------------------------------------------------------------

    async def _end(self, kind: str, outcome: dict[str, Any], payload: bytes) -> bool:
        if self.ended:
            return True
        released = await self._unlock()
        if self.ended:  # cancelled meanwhile: that is its end
            return True
        if not released:
            self.taken_over = True
            self.outcome = self.takeover_error().to_dict()
            self._terminal("error", dumps(self.outcome))
            return False
        self.outcome = outcome
        self._terminal(kind, payload)
        return True

    async def _unlock(self) -> bool:
        """Release the session's run lock (if it took one); False: it was taken over."""
        if self.release is None or self._released:
            return not self.taken_over
        self._released = True
        return await self.release() and not self.taken_over

    def _unlock_later(self) -> None:
        if self.release is not None and not self._released:
            self._released = True
            Supervisor.current().spawn(self.release(), "unlock-run")

    async def _output(self, name: str, data: bytes, masked: bool = False) -> None:
        masker = None if masked else self.maskers.get(name)
        if masker is not None:  # a secret's value never reaches the log or a stream
            if self.tracks:
                self._fed_frame(name, len(data))
            data = masker.feed(data)
        notice = None
        if self.max_log_bytes is not None:
            room = self.max_log_bytes - self.logged
            if len(data) > room:
                if self.dropped == 0:
                    notice = dumps({"event": "truncated", "after": self.max_log_bytes})
                self.dropped += len(data) - max(room, 0)
                data = data[: max(room, 0)]
        if not data and notice is None:
            return  # held back or dropped: what the log stored still says where it stands
        await self.hub.room(self.session_id)
        if self.ended:
            return
        self.logged += len(data)
        place = self._progress()
        if notice is not None:  # both in one batch: a restart sees both or neither
            self._put("truncated", notice, progress=place)
        if data:
            self._put(name, data, progress=place)

    async def _log(self, kind: str, data: bytes) -> None:
        """Queue an event once the log has room for it (back-pressure to the agent); not
        after the run's end, which a cancel may have queued meanwhile."""
        await self.hub.room(self.session_id)
        if not self.ended:
            self._put(kind, data)

    def _terminal(self, kind: str, data: bytes) -> None:
        self.ended = True
        self._put(kind, data)

    def _put(
        self,
        kind: str,
        data: bytes,
        record: ExecutionRecord | None = None,
        progress: tuple[int, ...] | None = None,
    ) -> None:
        self.hub.put_nowait(self.session_id, self.id, kind, data, record, progress)


def _maskers(secrets: list[str]) -> dict[str, Masker]:
    """One masker a stream, if any of the values is long enough to mask."""
    maskers = {}
    if secrets:
        for name in STREAMS.values():
            masker = Masker(secrets)
            if masker.values:
                maskers[name] = masker
    return maskers


EVENT_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
# Kinds the log gives a meaning of its own (output, a run's start and end, the log's notices):
# an agent's event may not pose as one.
RESERVED = frozenset(
    {"started", "stdout", "stderr", "exit", "error", "truncated", "gap", "pty", "sandbox"}
)


def event_name(name: object) -> str:
    """The kind an agent's event is logged as. The name comes from the sandbox: one that is
    not a short plain word (a line break would forge events in an SSE stream) or that names
    a kind of the log's own (``exit`` would end the run) is logged as ``event``."""
    if name == "started":
        return name  # the run's start: the caller takes only the first
    if isinstance(name, str) and EVENT_NAME.fullmatch(name) and name not in RESERVED:
        return name
    return "event"


def parse(payload: bytes) -> dict[str, Any]:
    """A control payload from the agent (the channel has checked it is a JSON object)."""
    try:
        value = json.loads(payload)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ProtocolError(f"malformed message from the agent: {payload[:200]!r}")
    return value


def dumps(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
