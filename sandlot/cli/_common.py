"""What every command group of the CLI shares: exit codes, the CLI's own exceptions, output
and input helpers, signal handling and :func:`run` (a coroutine to completion).

This module imports only the standard library, typer and :mod:`sandlot.errors`: rich and the
rest of sandlot are imported inside the helpers that use them, so ``sandlot --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from ..errors import InvalidArgumentError, NotFoundError, SandlotError

T = TypeVar("T")

# -- options several command groups take, worded once -----------------------------------------

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
EnvOption = Annotated[
    list[str] | None,
    typer.Option("--env", "-e", metavar="K=V", help="Environment variable (repeatable)."),
]
MemoryOption = Annotated[
    int | None, typer.Option("--memory-mb", help="Memory limit, MiB (default: 512).")
]
ImageOption = Annotated[
    str | None, typer.Option("--image", help="Container image (the docker provider).")
]

EXIT_USAGE = 2
EXIT_TIMEOUT = 124
EXIT_SANDLOT_FAILED = 125  # run/exec: sandlot failed, not the command (as timeout(1), docker run)
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
LIFETIME_GRACE = 5.0  # run: the sandbox outlives the command's timeout, so the timeout is clean
# A silent server must not hold the exit: a cleanup call (kill the command, the sandbox) is
# waited for this long, and a signal held while a command starts acts after HOLD_LIMIT anyway.
CLEANUP_WAIT = 3.0
HOLD_LIMIT = 2.0


class UsageError(Exception):
    """Bad input found by the CLI itself (exit 2)."""


class Signalled(BaseException):
    """SIGTERM or SIGHUP arrived: unwind (killing what we started) and exit 128+n."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class Failed(Exception):
    """A sandlot error inside run/exec: reported, then exit 125 (not the command's code)."""

    def __init__(self, error: SandlotError) -> None:
        super().__init__(str(error))
        self.error = error


def sandlot_failure(exc: SandlotError) -> BaseException:
    """Bad input stays bad input (exit 2); anything else in run/exec exits 125."""
    if isinstance(exc, (InvalidArgumentError, NotFoundError)):
        return exc
    return Failed(exc)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine to completion (each command runs at most one)."""
    import asyncio

    return asyncio.run(coro)


# -- output -----------------------------------------------------------------------------------


def one_line(message: str) -> str:
    return " ".join(str(message).split()) or "unknown error"


def error(message: str) -> None:
    """One red ``error:`` line on stderr."""
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)
    console.print(f"[red]error: {escape(one_line(message))}[/red]")


def note(message: str, style: str = "yellow") -> None:
    """One line on stderr, in ``style``."""
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)
    console.print(f"[{style}]{escape(one_line(message))}[/{style}]")


def console() -> Any:
    """A console for tables on stdout."""
    from rich.console import Console

    # Piped output: do not squeeze tables into 80 columns.
    return Console(highlight=False, emoji=False, width=None if sys.stdout.isatty() else 200)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
    sys.stdout.flush()


# -- input ------------------------------------------------------------------------------------


def pairs(values: list[str] | None, option: str) -> dict[str, str]:
    """``KEY=VALUE`` options as a dict (a SandlotError, exit 2, for anything else)."""
    found: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgumentError(f"{option} expects KEY=VALUE, got {item!r}")
        found[key] = value
    return found


def parse_env(values: list[str] | None) -> dict[str, str]:
    """The environment from ``--env K=V`` options, checked as the SDK checks it."""
    from ..models import check_env

    env = pairs(values, "--env")
    try:
        return check_env(env)
    except ValueError as exc:
        raise UsageError(f"--env: {exc}") from None


def parse_settings(values: list[str] | None) -> dict[str, Any]:
    """Provider settings from ``--set K=V``: V as JSON when it parses, else as a string."""
    settings: dict[str, Any] = {}
    for key, raw in pairs(values, "--set").items():
        try:
            settings[key] = json.loads(raw)
        except ValueError:
            settings[key] = raw
    return settings


def check_positive(value: float | None, option: str) -> None:
    if value is not None and not value > 0:
        raise UsageError(f"{option} must be a positive number of seconds, got {value:g}")


# -- signals and cleanup ----------------------------------------------------------------------


def raise_for(signum: int) -> NoReturn:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Signalled(signum)


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP unwind as exceptions, so that what we started is killed."""

    def handler(signum: int, _frame: Any) -> NoReturn:
        raise_for(signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        try:
            signal.signal(signum, handler)
        except (ValueError, OSError):  # not the main thread, or not settable here
            pass


class HeldSignals:
    """Holds SIGINT, SIGTERM and SIGHUP back during a call whose result must not be lost.

    A second signal while held acts at once (so a hung call can still be interrupted), and so
    does the first once held for HOLD_LIMIT seconds: it is sent again then.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.pending: int | None = None
        self.saved: dict[int, Any] = {}
        self.again: Any = None  # the timer that sends a held signal again

    def __enter__(self) -> HeldSignals:
        for signum in self.SIGNALS:
            try:
                self.saved[signum] = signal.signal(signum, self._hold)
            except (ValueError, OSError):  # not the main thread
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        if self.again is not None:
            self.again.cancel()
        for signum, previous in self.saved.items():
            if previous is not None:
                signal.signal(signum, previous)

    def _hold(self, signum: int, _frame: Any) -> None:
        import threading

        if self.pending is not None:
            raise_for(signum)
        self.pending = signum
        self.again = threading.Timer(HOLD_LIMIT, os.kill, (os.getpid(), signum))
        self.again.daemon = True
        self.again.start()

    def replay(self) -> None:
        if self.pending is not None:
            raise_for(self.pending)


def best_effort(cleanup: Callable[[], object]) -> None:
    """Run a cleanup call, waiting CLEANUP_WAIT seconds at most: against a server that stopped
    answering, the exit goes on (the server ends the sandbox at its lifetime; embedded, this
    process's exit kills what it created). Its errors are dropped: the caller's are what count.
    """
    import threading

    def call() -> None:
        try:
            cleanup()
        except BaseException:
            pass

    thread = threading.Thread(target=call, name="sandlot-cleanup", daemon=True)
    thread.start()
    thread.join(CLEANUP_WAIT)


def release(sandbox: Any, kill: bool) -> None:
    """Kill a sandbox we made, or let go of one we connected to."""
    try:
        if kill:
            best_effort(sandbox.kill)
        else:
            sandbox.close()
    except Exception:
        pass  # already gone; the owner's exit and gc clean up the rest
