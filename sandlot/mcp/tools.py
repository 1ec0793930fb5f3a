"""The MCP tools, written once for both transports over sandlot's async SDK.

Each tool finds its caller's :class:`~sandlot.mcp.book.Book` (``book_for(ctx)``: the stdio
connection's, or the API key's on HTTP), the sandbox the call names, and makes one or two SDK
calls. Every failure is a tool error (``isError``) whose text starts with sandlot's stable
error code; nothing a model sends can take the server down. Descriptions are written for
models: what the tool does, what it returns, its limits.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, ToolAnnotations
from pydantic import Field

from .. import __version__
from ..errors import (
    CodeTimeoutError,
    CommandTimeoutError,
    FileTooLargeError,
    InvalidArgumentError,
    ProcessNotFoundError,
)
from ..sdk.commands import signal_process
from . import limits, render
from .book import Book, Held, ended

TOO_BIG = f"a file written here may be at most {limits.FILE_BYTES} bytes"
BookFor = Callable[[Context], Awaitable[Book]]
Work = Callable[[Book, Held], Awaitable[CallToolResult]]

INSTRUCTIONS = (
    "sandlot runs your commands and Python in isolated Linux sandboxes (no network unless "
    "allowed). Files live in /workspace. Python state persists between run_code calls in the "
    "same sandbox. Outputs are cut to their last 64 KiB per stream."
)

SandboxId = Annotated[
    str | None,
    Field(
        description="The sandbox to use (an id from create_sandbox). Over stdio it may be "
        "omitted: one default sandbox is made on first use.",
    ),
]


def _limit(description: str, maximum: float) -> Any:
    """Seconds in (0, maximum]: shown in the schema, checked by the tool (whose error then
    carries sandlot's code)."""
    return Field(
        description=description, json_schema_extra={"exclusiveMinimum": 0, "maximum": maximum}
    )


def _range(description: str, minimum: int, maximum: int | None = None) -> Any:
    bounds: dict[str, Any] = {"minimum": minimum}
    if maximum is not None:
        bounds["maximum"] = maximum
    return Field(description=description, json_schema_extra=bounds)


def build_server(book_for: BookFor) -> MCPServer:
    """An MCP server whose tools act for the caller ``book_for`` finds."""
    server: MCPServer = MCPServer(
        "sandlot", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING"
    )

    async def call(ctx: Context, sandbox_id: str | None, work: Work) -> CallToolResult:
        held: Held | None = None
        try:
            book = await book_for(ctx)
            held = await book.get(sandbox_id)
            return await work(book, held)
        except Exception as exc:
            if held is not None and ended(exc):
                book.forget(held.sandbox.id)
            return render.error(exc)

    @server.tool(
        description="Create a new sandbox (an isolated Linux machine with Python, bash and a "
        "/workspace folder) and return its sandbox_id. Network is off unless allow_hosts "
        "names hosts. It ends after `lifetime` seconds (default 3600, at most 86400) or "
        "`idle_timeout` seconds unused (default 600). With `session` (a durable session's "
        "id, or 'new'), the sandbox is attached to that session: /workspace is restored "
        "from its last checkpoint and saved again when the sandbox is closed.",
        annotations=ToolAnnotations(destructive_hint=False, open_world_hint=False),
    )
    async def create_sandbox(
        ctx: Context,
        session: Annotated[
            str | None, Field(description="A durable session id to attach, or 'new'.")
        ] = None,
        metadata: Annotated[
            dict[str, str] | None, Field(description="Labels (at most 16, 256 characters each).")
        ] = None,
        lifetime: Annotated[
            float | None, _limit("Seconds it may live.", limits.MAX_LIFETIME)
        ] = None,
        idle_timeout: Annotated[
            float | None, _limit("Seconds unused before it ends.", limits.MAX_LIFETIME)
        ] = None,
        allow_hosts: Annotated[
            list[str] | None,
            Field(description="Hosts it may reach (e.g. 'pypi.org'); default none."),
        ] = None,
    ) -> CallToolResult:
        try:
            book = await book_for(ctx)
            held = await book.create(
                session=session,
                metadata=metadata,
                lifetime=lifetime,
                idle_timeout=idle_timeout,
                allow_hosts=allow_hosts,
            )
        except Exception as exc:
            return render.error(exc)
        info = held.sandbox.info
        lines = [f"sandbox_id: {held.sandbox.id}"]
        if held.session is not None:
            lines.append(f"session_id: {held.session.id}")
        if info.expires_at is not None:
            lines.append(f"expires_at: {info.expires_at.isoformat()}")
        return render.ok("\n".join(lines))

    @server.tool(
        description="Run a shell command (bash) in a sandbox. In the foreground it waits up "
        "to `timeout` seconds (default 60, at most 3600) and returns the exit code, stdout and "
        "stderr (the last 64 KiB of each; a non-zero exit is a result, not an error). With "
        "background=true it returns at once with the command's pid: read its output with "
        "read_output, stop it with kill_command.",
    )
    async def run_command(
        ctx: Context,
        command: Annotated[str, Field(description="The command line, run by bash.")],
        sandbox_id: SandboxId = None,
        cwd: Annotated[
            str | None, Field(description="Absolute working folder (default /workspace).")
        ] = None,
        timeout: Annotated[
            float | None, _limit("Seconds before it is killed.", limits.MAX_COMMAND_TIMEOUT)
        ] = None,
        background: Annotated[bool, Field(description="Return at once with a pid.")] = False,
    ) -> CallToolResult:
        async def work(book: Book, held: Held) -> CallToolResult:
            limits.text_argument(command, "command")
            where = limits.absolute_path(cwd, "cwd") if cwd is not None else None
            sb = held.sandbox
            if background:
                bound = limits.seconds(timeout, "timeout", limits.MAX_LIFETIME, limits.MAX_LIFETIME)
                job = await sb.commands.run(
                    command,
                    background=True,
                    cwd=where,
                    timeout=bound if timeout is not None else None,
                    max_output_bytes=0,  # read_output replays the sandbox's log instead
                )
                book.keep(held, job)
                return render.ok(
                    f"started pid {job.pid} in sandbox {sb.id}; read its output with "
                    f"read_output(pid={job.pid}, offset=0)"
                )
            seconds = limits.seconds(
                timeout, "timeout", limits.COMMAND_TIMEOUT, limits.MAX_COMMAND_TIMEOUT
            )
            seen = {"stdout": 0, "stderr": 0}

            def count(name: str) -> Callable[[str], None]:
                def add(chunk: str) -> None:
                    seen[name] += len(chunk.encode("utf-8", "replace"))

                return add

            try:
                result = await sb.commands.run(
                    command,
                    cwd=where,
                    timeout=seconds,
                    max_output_bytes=limits.OUTPUT_BYTES,
                    on_stdout=count("stdout"),
                    on_stderr=count("stderr"),
                )
            except CommandTimeoutError as exc:
                shown = render.error(exc)
                for name in ("stdout", "stderr"):
                    value = getattr(exc, name, "") or ""
                    if value:
                        shown.content.append(render.text(render.stream(name, value)))
                return shown
            return render.command(result, seen)

        return await call(ctx, sandbox_id, work)

    @server.tool(
        description="Read a background command's output from byte `offset` (0: the start; "
        "then the next_offset of the previous read). Returns what is there now (waiting up "
        "to `wait` seconds, default 1, at most 30, for new output), whether the command is "
        "still running and, once it ended, its exit code. At most 64 KiB per stream; the "
        "sandbox keeps the last 2 MiB of a command's output.",
        annotations=ToolAnnotations(read_only_hint=True),
    )
    async def read_output(
        ctx: Context,
        pid: Annotated[int, Field(description="The pid run_command returned.")],
        sandbox_id: SandboxId = None,
        offset: Annotated[int, _range("Bytes already read.", 0)] = 0,
        wait: Annotated[
            float | None, _limit("Seconds to wait for output.", limits.MAX_READ_WAIT)
        ] = None,
    ) -> CallToolResult:
        async def work(book: Book, held: Held) -> CallToolResult:
            waiting = limits.seconds(wait, "wait", limits.READ_WAIT, limits.MAX_READ_WAIT)
            if isinstance(offset, bool) or offset < 0:
                raise InvalidArgumentError("offset must be a non-negative integer")
            sb = held.sandbox
            info = next((p for p in await sb.commands.list() if p.pid == pid), None)
            if info is None or info.kind != "exec":
                raise ProcessNotFoundError(f"no command with pid {pid} in sandbox {sb.id}")
            if offset > info.end:
                raise InvalidArgumentError(f"offset {offset} is past the output's end ({info.end})")
            job = await sb.commands.connect(pid, offset=offset)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + waiting
            try:
                # Catch up to what the log held, then wait (briefly) for more or the end.
                while not job.done():
                    caught_up = job.offset >= info.end
                    if caught_up and (job.offset > offset or loop.time() >= deadline):
                        break
                    if loop.time() >= deadline + limits.MAX_READ_WAIT:
                        break
                    await asyncio.sleep(0.02)
                exit_code: int | None = None
                if job.done():
                    try:
                        exit_code = (await job.wait()).exit_code
                    except CommandTimeoutError as exc:  # killed at its timeout
                        exit_code = exc.details.get("exit_code") or 137
                stdout, stderr, next_offset, gap = job.stdout, job.stderr, job.offset, job.gap
            finally:
                job._task.cancel()  # detaches this reader only (an attach's cancel)
            state = "running" if exit_code is None else f"ended, exit_code: {exit_code}"
            lines = [f"pid {pid}: {state}", f"next_offset: {next_offset}"]
            if gap:
                lines.append(f"({gap} bytes were dropped by the sandbox's log before offset)")
            for name, value in (("stdout", stdout), ("stderr", stderr)):
                if value:
                    lines.append(render.stream(name, value))
            return render.ok("\n".join(lines))

        return await call(ctx, sandbox_id, work)

    @server.tool(
        description="Send a signal (default 9, SIGKILL) to a background command's process "
        "group. Says whether the command was still running.",
        annotations=ToolAnnotations(destructive_hint=True),
    )
    async def kill_command(
        ctx: Context,
        pid: Annotated[int, Field(description="The pid run_command returned.")],
        sandbox_id: SandboxId = None,
        signal: Annotated[int, _range("Signal number.", 1, 64)] = 9,
    ) -> CallToolResult:
        async def work(book: Book, held: Held) -> CallToolResult:
            if not 1 <= signal <= 64:
                raise InvalidArgumentError("signal must be a number from 1 to 64")
            job = held.jobs.get(pid)
            if job is not None:
                sent = await job.kill(signal)
            else:
                if isinstance(pid, bool) or pid <= 0:
                    raise InvalidArgumentError("pid must be a positive integer")
                sent = await signal_process(held.sandbox, pid, signal)
            if not sent:
                return render.ok(f"pid {pid} had already ended")
            return render.ok(f"sent signal {signal} to pid {pid}")

        return await call(ctx, sandbox_id, work)

    @server.tool(
        description="Run Python like a notebook cell in a sandbox: variables, imports and "
        "functions persist between calls (the same context), and the value of a last "
        "expression is returned. Figures (matplotlib) and PNG/JPEG displays come back as "
        "images (at most 8), HTML, markdown and tables as text. Printed output: the last 64 "
        "KiB per stream. An exception is an error result with its traceback. Timeout: "
        "default 300 s, at most 3600; a timed-out cell is interrupted and the state kept.",
    )
    async def run_code(
        ctx: Context,
        code: Annotated[str, Field(description="Python source; top-level await works.")],
        sandbox_id: SandboxId = None,
        context: Annotated[
            str | None, Field(description="A code context id (default: the sandbox's own).")
        ] = None,
        timeout: Annotated[
            float | None, _limit("Seconds before it is interrupted.", limits.MAX_CODE_TIMEOUT)
        ] = None,
    ) -> CallToolResult:
        async def work(book: Book, held: Held) -> CallToolResult:
            limits.text_argument(code, "code")
            seconds = limits.seconds(
                timeout, "timeout", limits.CODE_TIMEOUT, limits.MAX_CODE_TIMEOUT
            )
            try:
                ex = await held.sandbox.run_code(
                    code, context=context, timeout=seconds, max_output_bytes=limits.OUTPUT_BYTES
                )
            except CodeTimeoutError as exc:
                shown = render.execution(exc.execution)
                shown.content.insert(0, render.text(f"{exc.code}: {exc.message}"))
                shown.is_error = True
                return shown
            return render.execution(ex)

        return await call(ctx, sandbox_id, work)

    @server.tool(
        description="Read a file of a sandbox (absolute path). Text is returned as is; a "
        "file that is not UTF-8 is refused unless binary=true, which returns base64. At most "
        "1 MiB.",
        annotations=ToolAnnotations(read_only_hint=True),
    )
    async def read_file(
        ctx: Context,
        path: Annotated[str, Field(description="Absolute path, e.g. /workspace/a.txt.")],
        sandbox_id: SandboxId = None,
        binary: Annotated[bool, Field(description="Return the bytes as base64.")] = False,
    ) -> CallToolResult:
        async def work(book: Book, held: Held) -> CallToolResult:
            where = limits.absolute_path(path)
            data = await held.sandbox.files.read(where, format="bytes", max_bytes=limits.FILE_BYTES)
            if binary:
                return render.ok(base64.b64encode(data).decode("ascii"))
            try:
                return render.ok(data.decode("utf-8"))
            except UnicodeDecodeError:
                raise InvalidArgumentError(
                    f"{where} is not UTF-8 text ({len(data)} bytes): read it with binary=true"
                ) from None

        return await call(ctx, sandbox_id, work)

    @server.tool(
        description="Write a file in a sandbox (absolute path; parent folders are created; "
        "an existing file is replaced). `content` is text, or base64 with binary=true. At most "
        "1 MiB.",
    )
    async def write_file(
        ctx: Context,
        path: Annotated[str, Field(description="Absolute path, e.g. /workspace/a.txt.")],
        content: Annotated[str, Field(description="The file's text (or base64).")],
        sandbox_id: SandboxId = None,
        binary: Annotated[bool, Field(description="content is base64.")] = False,
    ) -> CallToolResult:
        async def work(book: Book, held: Held) -> CallToolResult:
            where = limits.absolute_path(path)
            if len(content) > 2 * limits.FILE_BYTES:
                raise FileTooLargeError(TOO_BIG)
            if binary:
                try:
                    data = base64.b64decode(content, validate=True)
                except (binascii.Error, ValueError):
                    raise InvalidArgumentError("content is not valid base64") from None
            else:
                data = content.encode("utf-8", "surrogatepass")
            if len(data) > limits.FILE_BYTES:
                raise FileTooLargeError(TOO_BIG)
            await held.sandbox.files.write(where, data)
            return render.ok(f"wrote {len(data)} bytes to {where}")

        return await call(ctx, sandbox_id, work)

    @server.tool(
        description="List a folder of a sandbox: one line per entry (type, size in bytes, "
        "path), `depth` levels down (default 1, at most 5), at most 1000 entries.",
        annotations=ToolAnnotations(read_only_hint=True),
    )
    async def list_files(
        ctx: Context,
        path: Annotated[str, Field(description="Absolute folder path.")] = "/workspace",
        sandbox_id: SandboxId = None,
        depth: Annotated[int, _range("Levels to descend.", 1, limits.MAX_LIST_DEPTH)] = 1,
    ) -> CallToolResult:
        async def work(book: Book, held: Held) -> CallToolResult:
            where = limits.absolute_path(path)
            if not 1 <= depth <= limits.MAX_LIST_DEPTH:
                raise InvalidArgumentError(f"depth must be from 1 to {limits.MAX_LIST_DEPTH}")
            entries = await held.sandbox.files.list(where, depth=depth)
            lines = [f"{e.type}\t{e.size}\t{e.path}" for e in entries[: limits.MAX_LIST_ENTRIES]]
            if len(entries) > limits.MAX_LIST_ENTRIES:
                lines.append(f"({len(entries) - limits.MAX_LIST_ENTRIES} more entries not shown)")
            return render.ok("\n".join(lines) or f"{where} is empty")

        return await call(ctx, sandbox_id, work)

    @server.tool(
        description="Expose a TCP port of a sandbox (a server you started there) and return "
        "a URL that reaches it from outside. Through a sandlot server the URL needs the same "
        "API key.",
    )
    async def expose_port(
        ctx: Context,
        port: Annotated[int, _range("Port inside the sandbox.", 1, 65535)],
        sandbox_id: SandboxId = None,
    ) -> CallToolResult:
        async def work(book: Book, held: Held) -> CallToolResult:
            if isinstance(port, bool) or not 1 <= port <= 65535:
                raise InvalidArgumentError("port must be from 1 to 65535")
            return render.ok(await held.sandbox.expose(port))

        return await call(ctx, sandbox_id, work)

    @server.tool(
        description="Close a sandbox: it is destroyed with everything running in it. A "
        "sandbox attached to a durable session is detached instead: its /workspace is "
        "checkpointed into the session first.",
        annotations=ToolAnnotations(destructive_hint=True),
    )
    async def close_sandbox(ctx: Context, sandbox_id: SandboxId = None) -> CallToolResult:
        try:
            book = await book_for(ctx)
            return render.ok(await book.end(sandbox_id))
        except Exception as exc:
            return render.error(exc)

    return server
