"""Stateful code on a sandbox: cells in code contexts, rich results, interrupts, installs.

The agent keeps one Python process per context; these functions are the host's half of the
``code.*`` operations. ``AsyncSandbox.run_code`` and friends call them.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import re
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..agent import protocol as p
from ..errors import (
    CodeTimeoutError,
    CommandTimeoutError,
    InstallError,
    InvalidArgumentError,
    ProtocolError,
    SandlotError,
)
from ..models import (
    CodeContext,
    CodeEvent,
    CommandResult,
    EndEvent,
    Execution,
    ExecutionError,
    Logs,
    OutputEvent,
    ProgressEvent,
    Result,
    ResultEvent,
    check_seconds,
)
from .commands import (
    MAX_OUTPUT_BYTES,
    _Collector,
    _masker,
    _Stream,
    call_back,
    check_cwd,
    check_env_argument,
)
from .deadline import GRACE, Deadline, DeadlinePassed

if TYPE_CHECKING:
    from ..channel.base import ChannelLike, RequestLike

DEFAULT_CODE_TIMEOUT = 300.0
DEFAULT_INSTALL_TIMEOUT = 300.0
MAX_CELL_OUTPUT_BYTES = 2 * 1024 * 1024  # per stream: the first and last MiB are kept
DEFAULT_INTERRUPT_GRACE = 2.0
MAX_SETUP = 256 * 1024  # bytes of a context's setup code, as the agent allows
MAX_CWD = 4096

TextCallback = Callable[[str], Awaitable[None] | None]
ResultCallback = Callable[[Result], Awaitable[None] | None]
ContextRef = CodeContext | str | None


CONTEXT_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


def context_id(context: ContextRef) -> str:
    """The id or name the agent looks the context up by (names and ids never collide: an id
    is ``default`` or ``ctx-N``, and no name is ``default`` or starts with ``ctx-``)."""
    if context is None:
        return "default"
    if isinstance(context, CodeContext):
        return context.id
    if isinstance(context, str) and CONTEXT_NAME.fullmatch(context):
        return context
    raise InvalidArgumentError(
        "context must be a CodeContext, its id or name (1-64 letters, digits, '_', '.', '-'), "
        "or None for the default"
    )


def _is_context_id(name: str) -> bool:
    return name == "default" or name.startswith("ctx-")


class _Streams:
    """Decodes a cell's output into ``Logs`` chunks and feeds the callbacks.

    The agent already caps each stream (head and tail); ``limit`` is the host's own bound, so
    an agent that ignores the cap cannot grow an ``Execution`` without end.
    """

    def __init__(
        self,
        on_stdout: TextCallback | None,
        on_stderr: TextCallback | None,
        limit: int,
        secrets: list[str] | None = None,
    ) -> None:
        self.maskers = {stream: _masker(secrets) for stream in (p.STDOUT, p.STDERR)}
        self.logs = Logs()
        self.limit = limit + 4096  # room for the agent's cut marker
        self._kept = {p.STDOUT: 0, p.STDERR: 0}
        self._targets = {
            p.STDOUT: (self.logs.stdout, on_stdout, _decoder()),
            p.STDERR: (self.logs.stderr, on_stderr, _decoder()),
        }

    async def feed(self, stream: int, data: bytes, final: bool = False) -> None:
        target = self._targets.get(stream)
        if target is None:
            return
        chunks, callback, decoder = target
        masker = self.maskers.get(stream)
        if masker is not None:  # the sandbox's secret values never reach the logs
            data = masker.feed(data) + (masker.flush() if final else b"")
        self._kept[stream] += len(data)
        if self._kept[stream] > self.limit:
            return
        text = decoder.decode(data, final)
        if text:
            chunks.append(text)
            await call_back(callback, text)

    async def close(self) -> None:
        for stream in self._targets:
            await self.feed(stream, b"", final=True)


def _decoder() -> codecs.IncrementalDecoder:
    return codecs.getincrementaldecoder("utf-8")("replace")


class _Cell:
    """Reads one cell's frames into an :class:`Execution`."""

    def __init__(
        self,
        request: RequestLike,
        context: str,
        streams: _Streams,
        on_result: ResultCallback | None,
        on_progress: TextCallback | None,
        timeout: float | None,
        inactivity_timeout: float | None,
        deadline: Deadline,
    ) -> None:
        self.request = request
        self.context = context
        self.streams = streams
        self.results: list[Result] = []
        self.on_result = on_result
        self.on_progress = on_progress
        self.timeout = timeout
        self.inactivity_timeout = inactivity_timeout
        self.deadline = deadline
        self.started = asyncio.get_running_loop().time()

    async def run(self) -> Execution:
        request = self.request
        try:
            while True:
                kind, stream, payload = await self.deadline.receive(request)
                if kind == p.DATA:
                    await self.streams.feed(stream, payload)
                    request.consumed(len(payload))
                elif kind == p.EVENT:
                    await self._event(_json(payload))
                elif kind == p.END:
                    break
            await self.streams.close()
        except BaseException as exc:
            # Cancelled, or a callback raised: the agent interrupts the cell (the context
            # keeps its state) and stops sending.
            request.cancel()
            if isinstance(exc, DeadlinePassed):
                raise await self.gave_up() from None
            raise
        execution = self._execution(_json(payload))
        if execution.timed_out:
            raise CodeTimeoutError(self._timeout_message(execution), execution=execution)
        return execution

    async def gave_up(self) -> CodeTimeoutError:
        """The timeout error with what arrived, when the end never did (see deadline.py)."""
        await self.streams.close()
        duration = asyncio.get_running_loop().time() - self.started
        execution = self._execution({"timed_out": True, "interrupted": True, "duration": duration})
        return CodeTimeoutError(
            f"the cell ran past its timeout of {self.timeout:g} s and its end did not arrive "
            f"within {GRACE:g} s more: the client stopped waiting and asked for an interrupt "
            "(whether the context kept its state is unknown)",
            execution=execution,
        )

    async def _event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "result":
            data = event.get("data")
            result = Result(
                data=data if isinstance(data, dict) else {},
                is_main_result=bool(event.get("main")),
                dropped=[str(x) for x in event.get("dropped") or []],
            )
            self.results.append(result)
            await call_back(self.on_result, result)
        elif kind == "progress":
            await call_back(self.on_progress, str(event.get("message", "")))

    def _execution(self, end: dict[str, Any]) -> Execution:
        error = end.get("error")
        try:
            context = end.get("context")
            return Execution(
                context=context if isinstance(context, str) else self.context,
                results=self.results,
                logs=self.streams.logs,
                error=ExecutionError.model_validate(error) if error else None,
                execution_count=end.get("execution_count"),
                timed_out=bool(end.get("timed_out")),
                interrupted=bool(end.get("interrupted")),
                state_lost=bool(end.get("state_lost")),
                cut=end.get("cut") or {},
                not_persisted=end.get("not_persisted") or {},
                duration=float(end.get("duration") or 0.0),
                cwd=_cwd(end.get("cwd")),
                restored=end.get("restored"),
                not_restored=end.get("not_restored"),
            )
        except (ValueError, TypeError) as exc:
            raise ProtocolError(f"malformed cell result from the agent: {exc}") from None

    def _timeout_message(self, execution: Execution) -> str:
        if self.timeout is not None and execution.duration >= self.timeout:
            message = f"the cell ran past its timeout of {self.timeout:g} s"
        else:
            message = f"the cell showed no sign of life for {self.inactivity_timeout:g} s"
        if execution.state_lost:
            return (
                message + "; it ignored the interrupt and was killed: the context's state was lost"
            )
        return message + " and was interrupted; the context kept its state"


def _cwd(value: Any) -> str | None:
    """The worker's working directory, if the agent sent a sane one."""
    if isinstance(value, str) and value.startswith("/") and len(value) <= MAX_CWD:
        return value
    return None


def _json(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ProtocolError(f"malformed message from the agent: {payload[:200]!r}")
    return value


class AsyncExecutionHandle:
    """A cell running in the background: ``await wait()`` for its :class:`Execution`."""

    context: str  # the id of the code context it runs in

    def __init__(self, channel: ChannelLike, cell: _Cell) -> None:
        self._channel = channel
        self._cell = cell
        self.context = cell.context
        self._task: asyncio.Task[Execution] = asyncio.ensure_future(cell.run())
        self._task.add_done_callback(lambda t: t.cancelled() or t.exception())

    @property
    def logs(self) -> Logs:
        """What the cell has printed so far."""
        return self._cell.streams.logs

    @property
    def results(self) -> list[Result]:
        """The rich results (displays and the trailing value) the cell has produced so far."""
        return list(self._cell.results)

    def done(self) -> bool:
        """Whether the cell has ended (its :class:`Execution` is then ready)."""
        return self._task.done()

    async def wait(self) -> Execution:
        """The cell's outcome; raises :class:`CodeTimeoutError` if it ran out of time."""
        return await asyncio.shield(self._task)

    async def interrupt(self) -> bool:
        """Send KeyboardInterrupt to the cell (the context keeps its state). False if the
        cell had already ended."""
        if self._task.done():
            return False
        answer = await self._channel.call("code.interrupt", context=self.context)
        return bool(answer.get("interrupted"))


async def run_code(
    channel: ChannelLike,
    code: str,
    *,
    context: ContextRef,
    timeout: float | None,
    inactivity_timeout: float | None,
    background: bool,
    on_stdout: TextCallback | None,
    on_stderr: TextCallback | None,
    on_result: ResultCallback | None,
    on_progress: TextCallback | None,
    max_output_bytes: int,
    interrupt_grace: float,
    secrets: list[str] | None = None,
) -> Execution | AsyncExecutionHandle:
    if not isinstance(code, str):
        raise InvalidArgumentError(f"code must be a string, not {type(code).__name__}")
    if "\0" in code:
        raise InvalidArgumentError("code contains a NUL byte")
    cid = context_id(context)
    args: dict[str, Any] = {"context": cid, "code": code}
    timeout = check_seconds(timeout)
    inactivity_timeout = check_seconds(inactivity_timeout, "inactivity_timeout")
    grace = check_seconds(interrupt_grace, "interrupt_grace")
    if timeout is not None:
        args["timeout"] = timeout
    if inactivity_timeout is not None:
        args["inactivity_timeout"] = inactivity_timeout
    if grace is not None:
        args["grace"] = grace
    if isinstance(max_output_bytes, bool) or not isinstance(max_output_bytes, int):
        raise InvalidArgumentError("max_output_bytes must be an integer")
    if max_output_bytes < 2:
        raise InvalidArgumentError("max_output_bytes must be at least 2")
    args["max_output"] = max_output_bytes
    if background:
        args["started"] = True  # the handle is returned once the agent accepted the cell
    # The other side interrupts at the timeout, and kills the cell ``grace`` seconds later.
    deadline = Deadline(None if timeout is None else timeout + (grace or 0.0))
    request = channel.open("code.run", **args)
    cell = _Cell(
        request,
        cid,
        _Streams(on_stdout, on_stderr, max_output_bytes, secrets),
        on_result,
        on_progress,
        timeout,
        inactivity_timeout,
        deadline,
    )
    if background:
        try:
            # "started", or the error (busy, no such context) raised
            kind, _, payload = await deadline.receive(request)
            if kind == p.EVENT:  # it names the context's id (the caller may have its name)
                started = _json(payload).get("context")
                cell.context = started if isinstance(started, str) else cid
        except BaseException as exc:
            request.cancel()
            if isinstance(exc, DeadlinePassed):
                raise await cell.gave_up() from None
            raise
        return AsyncExecutionHandle(channel, cell)
    return await cell.run()


STREAM_QUEUE = 64  # events between the cell's reader and a slow consumer (then it waits)
STREAM_CLOSE_WAIT = 10.0  # how long closing a stream waits for the interrupted cell's end


async def stream_code(
    run: Callable[..., Awaitable[Execution]],
    interrupt: Callable[[], Awaitable[bool]],
) -> AsyncGenerator[CodeEvent, None]:
    """Yield a cell's events: ``run(on_stdout=, on_stderr=, on_result=, on_progress=)`` is
    the ordinary callback path. A bounded queue sits between the callbacks and the consumer,
    so a slow consumer slows the cell's output (flow control) instead of growing memory.

    Closing the iterator before the end (``break``) interrupts the cell, like Ctrl-C: the
    context keeps its state, and once ``aclose()`` returns the context is idle again."""
    queue: asyncio.Queue[CodeEvent] = asyncio.Queue(STREAM_QUEUE)
    closing = False

    async def put(event: CodeEvent) -> None:
        if not closing:
            await queue.put(event)

    async def produce() -> None:
        try:
            execution = await run(
                on_stdout=lambda text: put(OutputEvent(type="stdout", text=text)),
                on_stderr=lambda text: put(OutputEvent(type="stderr", text=text)),
                on_result=lambda result: put(ResultEvent(result=result)),
                on_progress=lambda message: put(ProgressEvent(message=message)),
            )
            end = EndEvent(execution=execution)
        except SandlotError as exc:
            end = EndEvent(execution=getattr(exc, "execution", None), error=exc)
        await put(end)

    task = asyncio.ensure_future(produce())
    getter: asyncio.Future[CodeEvent] | None = None
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                if queue.empty():
                    task.result()  # raises what ended it (not a SandlotError: those are events)
                    return  # unreachable: produce() queues an end
                event = queue.get_nowait()
            else:
                event = getter.result()
            yield event
            if isinstance(event, EndEvent):
                return
    finally:
        if getter is not None:
            getter.cancel()
        if not task.done():
            closing = True
            while not queue.empty():  # unblock a callback waiting for room
                queue.get_nowait()
            try:
                with contextlib.suppress(SandlotError):
                    await interrupt()
                await asyncio.wait_for(asyncio.shield(task), STREAM_CLOSE_WAIT)
            except BaseException as exc:
                task.cancel()  # the agent interrupts a cell whose request is cancelled
                with contextlib.suppress(BaseException):
                    await task
                if not isinstance(exc, asyncio.TimeoutError):
                    raise


async def create_context(
    channel: ChannelLike,
    *,
    cwd: str | None,
    env: dict[str, str] | None,
    name: str | None,
    persist: bool,
    setup: str | None = None,
    cwd_on_path: bool = True,
) -> CodeContext:
    args: dict[str, Any] = {"persist": bool(persist)}
    if setup is not None:
        if not isinstance(setup, str) or len(setup.encode("utf-8", "surrogatepass")) > MAX_SETUP:
            raise InvalidArgumentError(
                f"setup must be Python source of at most {MAX_SETUP // 1024} KiB"
            )
        args["setup"] = setup
    if not isinstance(cwd_on_path, bool):
        raise InvalidArgumentError("cwd_on_path must be True or False")
    if not cwd_on_path:
        args["cwd_on_path"] = False
    if cwd is not None:
        args["cwd"] = check_cwd(cwd)
    if env is not None:
        checked = check_env_argument(env)
        if any(not isinstance(v, str) for v in checked.values()):
            raise InvalidArgumentError(
                "a code context's variables are plain strings: give secrets to the sandbox "
                "(Sandbox.create(env={'NAME': {'secret': ...}})), where every context sees them"
            )
        args["env"] = checked
    if name is not None:
        if not isinstance(name, str) or not CONTEXT_NAME.fullmatch(name):
            raise InvalidArgumentError("a context name is 1-64 letters, digits, '_', '.', '-'")
        if _is_context_id(name):
            raise InvalidArgumentError(f"{name!r} has the form of a context id: choose another")
        args["name"] = name
    return CodeContext.model_validate(await channel.call("code.create", **args))


async def list_contexts(channel: ChannelLike) -> list[CodeContext]:
    answer = await channel.call("code.list")
    return [CodeContext.model_validate(c) for c in answer.get("contexts", [])]


async def restart_context(
    channel: ChannelLike, context: ContextRef, forget_state: bool = False
) -> CodeContext:
    return CodeContext.model_validate(
        await channel.call(
            "code.restart", context=context_id(context), forget_state=bool(forget_state)
        )
    )


async def remove_context(channel: ChannelLike, context: ContextRef) -> None:
    await channel.call("code.remove", context=context_id(context))


async def interrupt_context(channel: ChannelLike, context: ContextRef) -> bool:
    answer = await channel.call("code.interrupt", context=context_id(context))
    return bool(answer.get("interrupted"))


# -- package installs ----------------------------------------------------------------------

_NETWORK_TROUBLE = (
    "Network is unreachable",
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Failed to establish a new connection",
    "ProxyError",
    "Connection refused",
    "timed out",
)


def _packages(packages: str | list[str]) -> list[str]:
    if isinstance(packages, str):
        packages = [packages]
    if not isinstance(packages, list | tuple) or not packages:
        raise InvalidArgumentError("packages must be a name or a non-empty list of names")
    for item in packages:
        if not isinstance(item, str) or not item.strip():
            raise InvalidArgumentError("every package must be a non-empty string")
        if item.startswith("-"):
            raise InvalidArgumentError(
                f"{item!r} looks like a pip option; packages are names, versions, paths or URLs"
            )
        if "\0" in item or "\n" in item:
            raise InvalidArgumentError(f"invalid package {item!r}")
    return list(packages)


def _install_failure(result: CommandResult, network: bool, local_index: bool) -> str:
    """sandlot's reason, then pip's own (the tail of what it printed, bounded)."""
    reason = _install_reason(result, network, local_index)
    return f"{reason}\npip said:\n{_pip_tail(result.stdout, result.stderr)}"


def _install_reason(result: CommandResult, network: bool, local_index: bool) -> str:
    output = result.stdout + result.stderr
    if "No module named pip" in output:
        return "the sandbox's Python has no pip: install python3-pip in its image"
    trouble = any(marker in output for marker in _NETWORK_TROUBLE)
    # Without a network, pip reports a package it could not look up as not found.
    if not network and (trouble or ("No matching distribution" in output and not local_index)):
        return (
            "pip could not reach a package index: this sandbox has no network (sandlot's "
            "default). Install from a wheel or folder inside the sandbox, or create the "
            "sandbox with network access"
        )
    if trouble:
        return "pip could not reach the package index: " + _last_error_line(output)
    missing = re.search(r"No matching distribution found for (\S+)", output)
    if missing:
        return f"no package matches {missing.group(1)} on the index"
    return f"pip failed (exit {result.exit_code}): {_last_error_line(output)}"


def _last_error_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or ["no output"])[-1][:500]


PIP_TAIL_LINES = 12
PIP_TAIL_CHARS = 2000


def _pip_tail(stdout: str, stderr: str) -> str:
    """The last lines pip wrote to stderr (stdout if stderr is empty), with its first error
    line kept when the tail does not reach it; each line and the whole bounded."""
    text = stderr if stderr.strip() else stdout
    lines = [line.rstrip()[:300] for line in text.splitlines() if line.strip()]
    if not lines:
        return "(no output)"
    tail = lines[-PIP_TAIL_LINES:]
    while len(tail) > 1 and sum(len(line) + 3 for line in tail) > PIP_TAIL_CHARS:
        tail.pop(0)
    first_error = next((x for x in lines if x.lower().startswith("error")), None)
    if first_error is not None and first_error not in tail:
        tail = [first_error, "...", *tail]
    return "\n".join("  " + line for line in tail)


async def install(
    channel: ChannelLike,
    packages: str | list[str],
    *,
    upgrade: bool,
    index_url: str | None,
    timeout: float | None,
    on_stdout: TextCallback | None,
    on_stderr: TextCallback | None,
) -> CommandResult:
    names = _packages(packages)
    timeout = check_seconds(timeout)
    args: dict[str, Any] = {"packages": names, "upgrade": bool(upgrade)}
    if index_url is not None:
        if not isinstance(index_url, str) or not re.match(r"(https?|file)://", index_url):
            raise InvalidArgumentError("index_url must be an http(s):// or file:// URL")
        args["index_url"] = index_url
    if timeout is not None:
        args["timeout"] = timeout
    deadline = Deadline(timeout)
    request = channel.open("code.install", **args)
    collector = _Collector(
        request,
        None,
        _Stream(MAX_OUTPUT_BYTES, on_stdout),
        _Stream(MAX_OUTPUT_BYTES, on_stderr),
        timeout,
        deadline,
    )
    try:
        await collector.start()
        result = await collector.run()
    except CommandTimeoutError as exc:
        raise InstallError(
            f"pip did not finish within {timeout:g} s\npip said:\n"
            + _pip_tail(exc.stdout, exc.stderr),
            stdout=exc.stdout,
            stderr=exc.stderr,
        ) from None
    if result.exit_code != 0:
        network = bool(collector.end.get("network", True))
        raise InstallError(
            _install_failure(result, network, (index_url or "").startswith("file:")),
            stdout=result.stdout,
            stderr=result.stderr,
            exit_code=result.exit_code,
        )
    return result
