"""``sb.commands``: run commands, stream their output, drive background processes."""

from __future__ import annotations

import asyncio
import codecs
import json
import signal as signals
from collections import deque
from collections.abc import Awaitable, Callable
from types import EllipsisType
from typing import TYPE_CHECKING, Any, Literal, overload

from ..agent import protocol as p
from ..errors import CommandTimeoutError, InvalidArgumentError, SandboxClosedError
from ..models import DEFAULT_COMMAND_TIMEOUT, CommandResult, check_env_refs, check_seconds
from ..secrets.refs import SecretRef
from .deadline import GRACE, Deadline, DeadlinePassed

if TYPE_CHECKING:
    from ..channel.base import RequestLike
    from ..secrets.mask import Masker
    from .sandbox import AsyncSandbox

OutputCallback = Callable[[str], Awaitable[None] | None]
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
    def __init__(
        self, limit: int, callback: OutputCallback | None, secrets: list[str] | None = None
    ) -> None:
        self.tail = _Tail(limit)
        self.callback = callback
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace") if callback else None
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

    async def start(self) -> None:
        """Wait for the command's start (its pid), within the deadline."""
        try:
            _kind, _, payload = await self.deadline.receive(self.request)
        except BaseException as exc:
            self.request.cancel()
            if isinstance(exc, DeadlinePassed):
                raise await self.gave_up() from None
            raise
        self.pid = _started_pid(payload)

    async def run(self) -> CommandResult:
        request = self.request
        streams = {p.STDOUT: self.stdout, p.STDERR: self.stderr}
        try:
            while True:
                kind, stream, payload = await self.deadline.receive(request)
                if kind == p.DATA:
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


class AsyncCommandHandle:
    """A running command. Its output is collected in the background while you hold this."""

    pid: int | None  # its process (group) id in the sandbox

    def __init__(self, sandbox: AsyncSandbox, collector: _Collector) -> None:
        self._sandbox = sandbox
        self._request = collector.request
        self._stdout = collector.stdout
        self._stderr = collector.stderr
        self.pid = collector.pid
        self._task: asyncio.Task[CommandResult] = asyncio.ensure_future(collector.run())
        # Nobody may ever wait (a caller interrupted, or not interested): don't let asyncio
        # report the outcome as "never retrieved"; wait() still raises it.
        self._task.add_done_callback(lambda t: t.cancelled() or t.exception())

    @property
    def stdout(self) -> str:
        """What the command has printed so far (up to the result cap)."""
        return self._stdout.tail.value().decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        """What the command has written to stderr so far (up to the result cap)."""
        return self._stderr.tail.value().decode("utf-8", "replace")

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
        try:
            await self._sandbox._channel.call("signal", pid=self.pid, signal=int(signal))
        except Exception as exc:
            if getattr(exc, "code", None) == "process_not_found":
                return False
            raise
        return True

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


def _started_pid(payload: bytes) -> int | None:
    event = json.loads(payload)
    pid = event.get("pid") if isinstance(event, dict) else None
    return pid if isinstance(pid, int) else None
