"""``sb.pty``: interactive terminals in the sandbox.

A terminal is a process on a pseudo-terminal the agent opens (its session leader, with the
terminal as its controlling one): programs that need a tty (shells with job control, editors,
password prompts, ``git add -p``) behave as on a real one. Its output is one byte stream (what
the terminal shows, escape sequences included), handed to ``on_data`` as bytes; your input is
keystrokes (``"\\x03"`` is Ctrl-C). Like every command, it runs on if your client goes away,
and :meth:`AsyncPty.connect` reattaches and replays from an offset. A terminal's output is not
recorded in a session's transcript.
"""

from __future__ import annotations

import asyncio
import signal as signals
from typing import TYPE_CHECKING

from ..errors import InvalidArgumentError, SandboxClosedError
from ..models import CommandResult, check_seconds
from .commands import (
    MAX_OUTPUT_BYTES,
    CollectedProcess,
    DataCallback,
    _check_command,
    _Collector,
    _Stream,
    attach,
    check_cwd,
    check_env_argument,
    signal_process,
)
from .deadline import Deadline

if TYPE_CHECKING:
    from .sandbox import AsyncSandbox

MAX_SIZE = 10000  # columns or rows


def check_size(cols: object, rows: object) -> tuple[int, int]:
    for value in (cols, rows):
        if type(value) is not int or not 1 <= value <= MAX_SIZE:
            raise InvalidArgumentError(f"cols and rows must be integers from 1 to {MAX_SIZE}")
    return cols, rows  # type: ignore[return-value]


class AsyncPtyHandle(CollectedProcess):
    """A terminal: send it keystrokes, resize it, wait for its end. Its output goes to the
    ``on_data`` callback as it comes (and its tail into the result)."""

    @property
    def offset(self) -> int:
        """The offset of the next byte of output this handle will receive: give it to
        :meth:`AsyncPty.connect` to carry on from there."""
        return self._collector.base + self._collector.received

    @property
    def gap(self) -> int:
        """Bytes the terminal's log had already dropped when this handle began its replay."""
        return self._collector.gap

    def done(self) -> bool:
        """Whether the terminal's process has ended."""
        return self._task.done()

    async def send_stdin(self, data: str | bytes) -> None:
        """Type into the terminal (a string as UTF-8): carriage return is Enter, byte 3
        Ctrl-C, byte 4 Ctrl-D. Raises :class:`SandboxClosedError` once it has ended."""
        if isinstance(data, str):
            data = data.encode()
        if not isinstance(data, bytes):
            raise InvalidArgumentError("terminal input must be str or bytes")
        if self._task.done():
            raise SandboxClosedError("the terminal has ended")
        await self._request.send_data(data)

    async def resize(self, cols: int, rows: int) -> None:
        """Change the terminal's size (1 to 10000 each); its programs get SIGWINCH."""
        cols, rows = check_size(cols, rows)
        await self._sandbox._channel.call("proc.resize", pid=self.pid, cols=cols, rows=rows)

    async def kill(self, signal: int = signals.SIGKILL) -> bool:
        """Send a signal to the terminal's process group. False if it already ended."""
        if self._task.done() or self.pid is None:
            return False
        return await signal_process(self._sandbox, self.pid, signal)

    async def wait(self) -> CommandResult:
        """Wait for the terminal's process to end: its exit code, and the tail of what the
        terminal showed in ``stdout``."""
        return await asyncio.shield(self._task)


class AsyncPty:
    """``sb.pty``: start terminals in the sandbox, and reattach to them."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sandbox = sandbox

    async def create(
        self,
        *,
        cols: int = 80,
        rows: int = 24,
        cmd: str | list[str] | None = None,
        on_data: DataCallback | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
    ) -> AsyncPtyHandle:
        """Start a process on a new terminal of ``cols`` x ``rows``: ``cmd`` (a string through
        the shell, or argv), by default the sandbox's shell (bash, else sh), interactive.
        ``TERM`` is ``xterm-256color`` unless ``env`` sets it. ``timeout`` in seconds kills
        it (by default it lives as long as the sandbox). ``on_data`` gets the terminal's
        output as bytes."""
        cols, rows = check_size(cols, rows)
        args: dict[str, object] = {"cols": cols, "rows": rows}
        if cmd is not None:
            args.update(_check_command(cmd))
        backend, sandbox_id = self._sandbox._manager, self._sandbox.id
        secrets = await backend.secret_values(sandbox_id)
        if env is not None:
            args["env"], used = await backend.command_env(sandbox_id, check_env_argument(env))
            secrets = [*secrets, *used]
        if cwd is not None:
            args["cwd"] = check_cwd(cwd)
        timeout = check_seconds(timeout)
        if timeout is not None:
            args["timeout"] = timeout
        request = self._sandbox._channel.open("pty", **args)
        collector = _Collector(
            request,
            None,
            _Stream(MAX_OUTPUT_BYTES, on_data, secrets, raw=True),
            _Stream(0, None),
            timeout,
            Deadline(timeout),
        )
        await collector.start()
        return AsyncPtyHandle(self._sandbox, collector)

    async def connect(
        self, pid: int, *, offset: int = 0, on_data: DataCallback | None = None
    ) -> AsyncPtyHandle:
        """Reattach to a terminal by pid: its output is replayed from ``offset`` (0: the
        start of what its log holds) to ``on_data``, then streamed; the handle's ``gap``
        counts bytes the log had dropped. Raises :class:`ProcessNotFoundError` for an
        unknown pid."""
        secrets = await self._sandbox._manager.secret_values(self._sandbox.id)
        collector = await attach(
            self._sandbox,
            pid,
            offset,
            _Stream(MAX_OUTPUT_BYTES, on_data, secrets, raw=True),
            _Stream(0, None),
        )
        return AsyncPtyHandle(self._sandbox, collector)
