"""``sandlot shell [ID]``: an interactive terminal in a sandbox, as ``ssh`` gives one.

Without ID a new sandbox is made and killed when the shell ends; with ID a running one is
used (embedded, or on the server ``SANDLOT_URL`` names) and left running. Our terminal goes
into raw mode (every key, Ctrl-C included, goes to the sandbox's terminal; restored on any
exit), its size follows ours (SIGWINCH), and the shell's exit code is ours (128+n when a
signal ended it). The process runs on a pseudo-terminal in the sandbox (``sb.pty``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import SandlotError
from ._common import (
    EnvOption,
    HeldSignals,
    ImageOption,
    UsageError,
    install_signal_handlers,
    parse_env,
    run,
    sandlot_failure,
)

if TYPE_CHECKING:
    from ..sdk import AsyncSandbox

READ_SIZE = 65536
DEFAULT_SIZE = (80, 24)


def shell(
    sandbox_id: Annotated[
        str | None,
        typer.Argument(
            metavar="[ID]",
            help="A running sandbox (default: a new one, killed at exit).",
            show_default=False,
        ),
    ] = None,
    command: Annotated[
        str | None,
        typer.Option(
            "--command", "-c", help="Run this instead of the sandbox's shell.", show_default=False
        ),
    ] = None,
    provider: Annotated[
        str | None,
        typer.Option("--provider", "-p", help="Provider of a new sandbox (default: bwrap)."),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", "-t", help="Lifetime of a new sandbox, seconds.")
    ] = 3600.0,
    env: EnvOption = None,
    workdir: Annotated[
        str | None, typer.Option("--workdir", "-w", help="Working folder in the sandbox.")
    ] = None,
    image: ImageOption = None,
) -> None:
    """An interactive shell in a new sandbox, or in a running one (sandlot shell ID)."""
    if not sys.stdin.isatty():
        raise UsageError(
            "sandlot shell needs a terminal, and stdin is not one "
            "(for scripts: sandlot exec ID -- CMD, or sandlot run CMD)"
        )
    if workdir is not None and not workdir.startswith("/"):
        raise UsageError(f"--workdir must be an absolute path, got {workdir!r}")
    if not timeout > 0:
        raise UsageError(f"--timeout must be a positive number of seconds, got {timeout:g}")
    env_map = parse_env(env)
    config = {"image": image} if image else {}
    install_signal_handlers()
    fd = sys.stdin.fileno()
    with _restored(fd):  # a second guard: the session restores the terminal itself
        code = run(_shell(sandbox_id, command, provider, timeout, env_map, workdir, config))
    raise typer.Exit(code)


async def _shell(
    sandbox_id: str | None,
    command: str | None,
    provider: str | None,
    timeout: float,
    env: dict[str, str],
    workdir: str | None,
    config: dict[str, Any],
) -> int:
    from ..sdk import AsyncSandbox

    sandbox: AsyncSandbox | None = None
    try:
        with HeldSignals() as held:  # a sandbox being made is not left behind by a signal
            if sandbox_id is None:
                sandbox = await AsyncSandbox.create(provider, timeout=timeout, **config)
            else:
                sandbox = await AsyncSandbox.connect(sandbox_id)
        held.replay()
        return await Terminal(sandbox).run(command, env, workdir)
    except SandlotError as exc:
        raise sandlot_failure(exc) from None
    finally:
        if sandbox is not None:
            with contextlib.suppress(Exception):
                if sandbox_id is None:
                    await asyncio.wait_for(sandbox.kill(), 10)
                else:
                    await sandbox.close()


class Terminal:
    """Our terminal joined to a pty in the sandbox until the process there ends.

    Keys and window sizes go out through one queue, in the order they happened: a key typed
    after a resize reaches the sandbox after the resize, so what it runs sees the new size.
    """

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self.sandbox = sandbox
        self.stdin = sys.stdin.fileno()
        self.stdout = sys.stdout.fileno()
        self.size = self._size()
        self.outbox: asyncio.Queue[bytes | tuple[int, int]] = asyncio.Queue()

    async def run(self, command: str | None, env: dict[str, str], cwd: str | None) -> int:
        loop = asyncio.get_running_loop()
        cols, rows = self.size
        with _restored(self.stdin):
            _raw(self.stdin)
            handle = await self.sandbox.pty.create(
                cols=cols, rows=rows, cmd=command, env=env or None, cwd=cwd, on_data=self._write
            )
            loop.add_reader(self.stdin, self._read)
            loop.add_signal_handler(signal.SIGWINCH, self._check_size)
            forwarding = asyncio.ensure_future(self._forward(handle))
            try:
                result = await handle.wait()
            finally:
                loop.remove_reader(self.stdin)
                loop.remove_signal_handler(signal.SIGWINCH)
                forwarding.cancel()
                await asyncio.gather(forwarding, return_exceptions=True)
        if result.signal:
            return 128 + int(result.signal)
        code = int(result.exit_code)
        return 128 - code if code < 0 else code & 0xFF

    def _size(self) -> tuple[int, int]:
        for fd in (self.stdout, self.stdin):
            with contextlib.suppress(OSError):
                size = os.get_terminal_size(fd)
                if size.columns > 0 and size.lines > 0:
                    return size.columns, size.lines
        return DEFAULT_SIZE

    def _check_size(self) -> None:
        """On SIGWINCH, and before every batch of keys (the signal and the keys may be
        noticed in either order): a new size goes out first."""
        size = self._size()
        if size != self.size:
            self.size = size
            self.outbox.put_nowait(size)

    def _write(self, data: bytes) -> None:
        """The terminal's output, as it comes, to ours (raw: it is a terminal's already)."""
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.stdout, view) :]
            except BlockingIOError:
                continue
            except OSError:
                return  # our terminal has gone: the session ends when the process does

    def _read(self) -> None:
        try:
            data = os.read(self.stdin, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # our terminal went away
            asyncio.get_running_loop().remove_reader(self.stdin)
        self._check_size()
        self.outbox.put_nowait(data)

    async def _forward(self, handle: Any) -> None:
        """Keys and sizes to the sandbox, in order; when our terminal closes, the process is
        hung up."""
        while True:
            item = await self.outbox.get()
            if isinstance(item, tuple):
                with contextlib.suppress(SandlotError):
                    await handle.resize(*item)
            elif not item:
                await handle.kill()
                return
            else:
                await handle.send_stdin(item)


def _raw(fd: int) -> None:
    import termios
    import tty

    tty.setraw(fd, termios.TCSANOW)  # not TCSAFLUSH: what was typed ahead goes to the shell


@contextlib.contextmanager
def _restored(fd: int) -> Iterator[None]:
    """Whatever happens inside, the terminal's settings are put back as they were."""
    import termios

    try:
        saved = termios.tcgetattr(fd)
    except termios.error:
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
