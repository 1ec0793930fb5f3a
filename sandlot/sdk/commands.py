"""``sb.commands``: run commands, stream their output, drive background processes, list and
reattach to the processes the sandbox's agent keeps a log of."""

from __future__ import annotations

import asyncio
import builtins
import codecs
import json
import signal as signals
from collections import deque
from collections.abc import Awaitable, Callable
from types import EllipsisType
from typing import TYPE_CHECKING, Any, Literal, overload

from ..agent import protocol as p
from ..errors import CommandTimeoutError, InvalidArgumentError, ProtocolError, SandboxClosedError
from ..models import (
    DEFAULT_COMMAND_TIMEOUT,
    CommandResult,
    ProcessInfo,
    check_env_refs,
    check_seconds,
)
from ..secrets.refs import SecretRef
from .deadline import GRACE, Deadline, DeadlinePassed

if TYPE_CHECKING:
    from ..channel.base import RequestLike
    from ..secrets.mask import Masker
    from .sandbox import AsyncSandbox

OutputCallback = Callable[[str], Awaitable[None] | None]
DataCallback = Callable[[bytes], Awaitable[None] | None]
MAX_OUTPUT_BYTES = 16 * 1024 * 1024  # kept per stream in a CommandResult; the tail wins


class _Tail:
    """The last ``limit`` bytes of a stream, in chunks (no quadratic copying)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.truncated = False

    def add(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        while self.size > self.limit:
            excess = self.size - self.limit
            head = self.chunks[0]
            if len(head) <= excess:
                self.chunks.popleft()
                self.size -= len(head)
            else:
                self.chunks[0] = head[excess:]
                self.size -= excess
            self.truncated = True

    def value(self) -> bytes:
        return b"".join(self.chunks)


class _Stream:
    """One output stream: its tail, and its callback (given text, or bytes if ``raw``)."""

    def __init__(
        self,
        limit: int,
        callback: OutputCallback | DataCallback | None,
        secrets: list[str] | None = None,
        raw: bool = False,
    ) -> None:
        self.tail = _Tail(limit)
        self.callback = callback
        self.raw = raw
        decode = callback is not None and not raw
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace") if decode else None
        self.masker = _masker(secrets)

    async def feed(self, data: bytes, final: bool = False) -> None:
        if self.masker is not None:  # a secret's value never reaches a result or callback
            data = self.masker.feed(data)
            if final:
                data += self.masker.flush()
        if data:
            self.tail.add(data)
        if self.callback is not None and self.decoder is not None:
            text = self.decoder.decode(data, final)
            if text:
                await call_back(self.callback, text)
        elif self.callback is not None and data:
            await call_back(self.callback, data)


def _check_command(cmd: object) -> dict[str, object]:
    if isinstance(cmd, str):
        if not cmd.strip():
            raise InvalidArgumentError("command is empty")
        if "\0" in cmd:
            raise InvalidArgumentError("command contains a NUL byte")
        return {"cmd": cmd}
    if isinstance(cmd, (list, tuple)):
        if not cmd:
            raise InvalidArgumentError("command is empty")
        if not all(isinstance(a, str) for a in cmd):
            raise InvalidArgumentError("every argument of a command list must be a string")
        if not cmd[0] or any("\0" in a for a in cmd):
            raise InvalidArgumentError("command arguments must be non-empty at [0] and NUL-free")
        return {"argv": list(cmd)}
    raise InvalidArgumentError(
        f"command must be a string or a list of strings, not {type(cmd).__name__}"
    )


async def call_back(callback: Callable[[Any], Any] | None, value: Any) -> None:
    """Call a streaming callback, awaiting it if it is a coroutine function."""
    if callback is not None:
        outcome = callback(value)
        if outcome is not None and asyncio.iscoroutine(outcome):
            await outcome


def _masker(secrets: list[str] | None) -> Masker | None:
    if not secrets:
        return None
    from ..secrets.mask import Masker

    masker = Masker(secrets)
    return masker if masker.values else None


def check_env_argument(env: object) -> dict[str, str | SecretRef]:
    """Variables for one command: strings, or ``{"secret": NAME}`` references."""
    if not isinstance(env, dict):
        raise InvalidArgumentError("env must map names to strings or {'secret': NAME}")
    try:
        return check_env_refs(env)
    except ValueError as exc:
        raise InvalidArgumentError(str(exc)) from None


def check_cwd(cwd: object) -> str:
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        raise InvalidArgumentError("cwd must be an absolute path")
    return cwd


class _Collector:
    """Reads one command's frames: output into tails and callbacks, then its result."""

    def __init__(
        self,
        request: RequestLike,
        pid: int | None,
        stdout: _Stream,
        stderr: _Stream,
        timeout: float | None,
        deadline: Deadline,
    ) -> None:
        self.request = request
        self.pid = pid
        self.stdout = stdout
        self.stderr = stderr
        self.timeout = timeout
        self.deadline = deadline
        self.end: dict[str, Any] = {}  # the agent's END message, once the command ended
        self.base = 0  # the log offset of the first byte this request receives
        self.received = 0  # bytes received since
        self.gap = 0  # bytes the log had dropped before the first one (an attach)

    async def start(self) -> None:
        """Wait for the command's start (its pid), or an attach's first event, within the
        deadline."""
        try:
            _kind, _, payload = await self.deadline.receive(self.request)
        except BaseException as exc:
            self.request.cancel()
            if isinstance(exc, DeadlinePassed):
                raise await self.gave_up() from None
            raise
        event = _event(payload)
        pid = event.get("pid")
        self.pid = pid if _is_count(pid) else None
        if event.get("event") == "attached":
            start, gap = event.get("start"), event.get("gap")
            if not (isinstance(start, int) and isinstance(gap, int) and start >= 0 <= gap):
                self.request.cancel()
                raise ProtocolError(f"malformed attach event from the agent: {payload[:200]!r}")
            self.gap = gap
            self.base = max(start, self.base)

    async def run(self) -> CommandResult:
        request = self.request
        streams = {p.STDOUT: self.stdout, p.STDERR: self.stderr}
        try:
            while True:
                kind, stream, payload = await self.deadline.receive(request)
                if kind == p.DATA:
                    self.received += len(payload)
                    target = streams.get(stream)
                    if target is not None:
                        await target.feed(payload)
                    request.consumed(len(payload))
                elif kind == p.END:
                    break
            for target in streams.values():
                await target.feed(b"", final=True)
        except BaseException as exc:
            # A callback raised or we were cancelled: nobody will read the rest, so the
            # command must not stay blocked on a full pipe. Kill it.
            request.cancel()
            if isinstance(exc, DeadlinePassed):
                raise await self.gave_up() from None
            raise
        end = self.end = _end_payload(payload)
        result = CommandResult(
            exit_code=end["exit_code"],
            signal=end.get("signal"),
            stdout_bytes=self.stdout.tail.value(),
            stderr_bytes=self.stderr.tail.value(),
            truncated=self.stdout.tail.truncated or self.stderr.tail.truncated,
            pid=self.pid,
        )
        if end.get("timed_out"):
            raise CommandTimeoutError(
                f"command timed out after {self.timeout:g} s",
                stdout=result.stdout,
                stderr=result.stderr,
                exit_code=result.exit_code,
            )
        return result

    async def gave_up(self) -> CommandTimeoutError:
        """The timeout error with what arrived, when the end never did (see deadline.py)."""
        for target in (self.stdout, self.stderr):
            await target.feed(b"", final=True)
        return CommandTimeoutError(
            f"command timed out after {self.timeout:g} s (its end did not arrive within "
            f"{GRACE:g} s more: the client stopped waiting and asked for a kill)",
            stdout=self.stdout.tail.value().decode("utf-8", "replace"),
            stderr=self.stderr.tail.value().decode("utf-8", "replace"),
            exit_code=None,
        )


class CollectedProcess:
    """What a handle to a process holds (a command's, a terminal's): its request, and the
    task collecting its frames in the background."""

    pid: int | None  # its process (group) id in the sandbox

    def __init__(self, sandbox: AsyncSandbox, collector: _Collector) -> None:
        self._sandbox = sandbox
        self._collector = collector
        self._request = collector.request
        self.pid = collector.pid
        self._task: asyncio.Task[CommandResult] = asyncio.ensure_future(collector.run())
        # Nobody may ever wait (a caller interrupted, or not interested): don't let asyncio
        # report the outcome as "never retrieved"; wait() still raises it.
        self._task.add_done_callback(lambda t: t.cancelled() or t.exception())


class AsyncCommandHandle(CollectedProcess):
    """A running command. Its output is collected in the background while you hold this."""

    def __init__(self, sandbox: AsyncSandbox, collector: _Collector) -> None:
        super().__init__(sandbox, collector)
        self._stdout = collector.stdout
        self._stderr = collector.stderr

    @property
    def stdout(self) -> str:
        """What the command has printed so far (up to the result cap)."""
        return self._stdout.tail.value().decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        """What the command has written to stderr so far (up to the result cap)."""
        return self._stderr.tail.value().decode("utf-8", "replace")

    @property
    def offset(self) -> int:
        """Where its output log stands for this handle: the offset of the next byte it will
        receive. Give it to :meth:`AsyncCommands.connect` to carry on from there."""
        return self._collector.base + self._collector.received

    @property
    def gap(self) -> int:
        """Bytes the agent's log had already dropped when this handle began its replay (0:
        nothing was lost; always 0 for a command this handle started)."""
        return self._collector.gap

    def done(self) -> bool:
        """Whether the command has ended (its result is then ready)."""
        return self._task.done()

    async def wait(self) -> CommandResult:
        """Wait for the command to end. Raises CommandTimeoutError if it ran out of time."""
        return await asyncio.shield(self._task)

    async def kill(self, signal: int = signals.SIGKILL) -> bool:
        """Send a signal to the command's whole process group. False if it already ended."""
        if self._task.done() or self.pid is None:
            return False
        return await signal_process(self._sandbox, self.pid, signal)

    async def send_stdin(self, data: str | bytes) -> None:
        """Write to the command's stdin (a string as UTF-8). Raises
        :class:`SandboxClosedError` if the command has ended."""
        if isinstance(data, str):
            data = data.encode()
        if self._task.done():
            raise SandboxClosedError("the command has ended")
        await self._request.send_data(data)

    async def close_stdin(self) -> None:
        """Close the command's stdin: it reads end-of-file."""
        self._request.send_eof()


def _event(payload: bytes) -> dict[str, Any]:
    try:
        event = json.loads(payload)
    except ValueError:
        event = None
    return event if isinstance(event, dict) else {}


def _is_count(value: object) -> bool:
    return type(value) is int and value >= 0


def check_pid(pid: object) -> int:
    if type(pid) is not int or pid <= 0:
        raise InvalidArgumentError("pid must be a positive integer (a process in the sandbox)")
    return pid


def check_offset(offset: object) -> int:
    if type(offset) is not int or offset < 0:
        raise InvalidArgumentError("offset must be a non-negative integer (bytes of output)")
    return offset


def _process_infos(answer: Any) -> list[ProcessInfo]:
    """The agent's process list, checked (what comes out of a sandbox is untrusted)."""
    from pydantic import ValidationError

    items = answer.get("processes") if isinstance(answer, dict) else None
    if not isinstance(items, list):
        raise ProtocolError("malformed process list from the agent")
    try:
        return [ProcessInfo.model_validate(item) for item in items]
    except ValidationError as exc:
        raise ProtocolError(f"malformed process list from the agent: {exc}"[:300]) from None


async def attach(
    sandbox: AsyncSandbox, pid: object, offset: object, stdout: _Stream, stderr: _Stream
) -> _Collector:
    """Open ``proc.attach`` on a process and read its first event: a started collector."""
    args = {"pid": check_pid(pid), "offset": check_offset(offset)}
    request = sandbox._channel.open("proc.attach", **args)
    collector = _Collector(request, None, stdout, stderr, None, Deadline(None))
    collector.base = args["offset"]
    await collector.start()
    return collector


async def signal_process(sandbox: AsyncSandbox, pid: int, signal: int) -> bool:
    """Send a signal to a process group in the sandbox; False if it had ended meanwhile."""
    try:
        await sandbox._channel.call("signal", pid=pid, signal=int(signal))
    except Exception as exc:
        if getattr(exc, "code", None) == "process_not_found":
            return False
        raise
    return True


def _end_payload(payload: bytes) -> dict[str, Any]:
    end = json.loads(payload)
    if not isinstance(end, dict) or not isinstance(end.get("exit_code"), int):
        raise SandboxClosedError(f"malformed command result from the agent: {payload[:200]!r}")
    return end


class AsyncCommands:
    """``sb.commands``: run programs in the sandbox, in the foreground or the background."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sandbox = sandbox

    @overload
    async def run(
        self,
        cmd: str | list[str],
        *,
        background: Literal[False] = False,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = DEFAULT_COMMAND_TIMEOUT,
        stdin: str | bytes | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
    ) -> CommandResult: ...

    @overload
    async def run(
        self,
        cmd: str | list[str],
        *,
        background: Literal[True],
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        stdin: str | bytes | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
    ) -> AsyncCommandHandle: ...

    async def run(
        self,
        cmd: str | list[str],
        *,
        background: bool = False,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | EllipsisType | None = ...,
        stdin: str | bytes | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
    ) -> CommandResult | AsyncCommandHandle:
        """Run a command: a string goes through the sandbox's shell (bash, else sh); a list
        runs as argv. Foreground runs return a :class:`CommandResult` (a non-zero exit is not
        an error); ``background=True`` returns a handle at once. ``timeout`` in seconds kills
        the whole process group and raises :class:`CommandTimeoutError` with the partial
        output; by default 60 s in the foreground, and in the background only the sandbox's
        lifetime (None), so a server you start keeps running."""
        args = _check_command(cmd)
        if timeout is ...:
            timeout = None if background else DEFAULT_COMMAND_TIMEOUT
        timeout = check_seconds(timeout)
        backend, sandbox_id = self._sandbox._manager, self._sandbox.id
        secrets = await backend.secret_values(sandbox_id)
        if env is not None:
            args["env"], used = await backend.command_env(sandbox_id, check_env_argument(env))
            secrets = [*secrets, *used]
        if cwd is not None:
            args["cwd"] = check_cwd(cwd)
        if stdin is not None and not isinstance(stdin, (str, bytes)):
            raise InvalidArgumentError("stdin must be str or bytes")
        if not isinstance(max_output_bytes, int) or max_output_bytes < 0:
            raise InvalidArgumentError("max_output_bytes must be a non-negative integer")
        if timeout is not None:
            args["timeout"] = timeout
        args["stdin"] = stdin is not None or background
        if secrets and self._sandbox._channel.records:
            args["_mask"] = secrets  # a session's transcript masks them too
        deadline = Deadline(timeout)
        request = self._sandbox._channel.open("exec", **args)
        collector = _Collector(
            request,
            None,
            _Stream(max_output_bytes, on_stdout, secrets),
            _Stream(max_output_bytes, on_stderr, secrets),
            timeout,
            deadline,
        )
        await collector.start()
        if stdin is not None:
            try:
                await request.send_data(stdin.encode() if isinstance(stdin, str) else stdin)
                request.send_eof()
            except BaseException:
                request.cancel()
                raise
        if background:
            return AsyncCommandHandle(self._sandbox, collector)
        return await collector.run()

    async def list(self) -> builtins.list[ProcessInfo]:
        """The processes the sandbox keeps output logs of: every command and terminal still
        running (also ones whose client went away), and recently ended ones with their exit
        status (at most 64, oldest forgotten first)."""
        return _process_infos(await self._sandbox._channel.call("proc.list"))

    async def connect(
        self,
        pid: int,
        *,
        offset: int = 0,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> AsyncCommandHandle:
        """Reattach to a process by pid (see :meth:`list`): its output is replayed from
        ``offset`` (bytes of stdout and stderr together; 0, the start) and then streamed as
        it comes, each byte once. If the log has dropped bytes past ``offset`` (it keeps the
        newest 2 MiB by default), the handle's ``gap`` says how many. ``wait()`` gives the
        exit code also for a process that has already ended; ``send_stdin`` writes to it if
        it was started with stdin (background commands are). Dropping this handle detaches;
        ``kill()`` signals the process. Raises :class:`ProcessNotFoundError` for an unknown
        pid."""
        backend, sandbox_id = self._sandbox._manager, self._sandbox.id
        secrets = await backend.secret_values(sandbox_id)
        collector = await attach(
            self._sandbox,
            pid,
            offset,
            _Stream(MAX_OUTPUT_BYTES, on_stdout, secrets),
            _Stream(MAX_OUTPUT_BYTES, on_stderr, secrets),
        )
        return AsyncCommandHandle(self._sandbox, collector)
