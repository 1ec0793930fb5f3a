"""``sandlot run-code`` and ``sandlot repl``: Python in a sandbox's stateful code context.

``run-code`` exits 0 when the cell succeeded, 1 when it raised, 124 on timeout and 125 when
sandlot failed; ``repl`` exits 0 at the end of input and 125 when sandlot failed. ``repl
--keep`` (and ``sandlot create``) leave their sandbox to a background ``sandlot _hold``
process (a sandbox dies with the process that created it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import InvalidArgumentError, NotFoundError, SandlotError
from ._common import (
    EXIT_SANDLOT_FAILED,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    LIFETIME_GRACE,
    Failed,
    UsageError,
    check_positive,
    error,
    install_signal_handlers,
    note,
    release,
    sandlot_failure,
)

if TYPE_CHECKING:
    from ..models import Execution
    from ..sdk import Sandbox

REPL_LIFETIME = 3600.0  # repl: a fresh sandbox lives this long after the last input
HOLD_POLL = 2.0  # repl --keep: how often the holder checks that its sandbox still runs

ProviderOption = Annotated[
    str | None,
    typer.Option(
        "--provider", "-p", help="Provider for a fresh sandbox (see `sandlot providers`)."
    ),
]
ContextOption = Annotated[
    str | None,
    typer.Option(
        "--context",
        "-c",
        metavar="CONTEXT",
        help="Code context id or name (default: the sandbox's default context).",
        show_default=False,
    ),
]

# -- run-code's own options --------------------------------------------------------------------

FirstArgument = Annotated[
    str | None,
    typer.Argument(
        metavar="ID",
        help="Sandbox id; omitted (one argument): a fresh sandbox, killed afterwards.",
        show_default=False,
    ),
]
SecondArgument = Annotated[
    str | None,
    typer.Argument(
        metavar="FILE",
        help="The Python file to run as one cell; '-' reads stdin.",
        show_default=False,
    ),
]
CellTimeoutOption = Annotated[
    float, typer.Option("--timeout", "-t", help="The cell's time limit, seconds.")
]
InactivityOption = Annotated[
    float | None,
    typer.Option(
        "--inactivity-timeout",
        help="Time limit without a sign of life (output, progress, heartbeat), seconds "
        "(default: none).",
        show_default=False,
    ),
]
ExecutionJsonOption = Annotated[
    bool, typer.Option("--json", help="Print the outcome (an Execution) as JSON.")
]
SaveResultsOption = Annotated[
    str | None,
    typer.Option(
        "--save-results",
        metavar="DIR",
        help="Write image results (png, jpeg, svg) into DIR.",
        show_default=False,
    ),
]


def run_code(
    first: FirstArgument = None,
    second: SecondArgument = None,
    context: ContextOption = None,
    timeout: CellTimeoutOption = 300.0,
    inactivity_timeout: InactivityOption = None,
    json_: ExecutionJsonOption = False,
    save_results: SaveResultsOption = None,
    provider: ProviderOption = None,
) -> None:
    """Run a Python file as one notebook-style cell; exit 0, or 1 if it raised.

    With one argument, it is FILE. With ID, state lives on in that sandbox's code context.

    Example: sandlot run-code sb-0123456789ab analysis.py
    """
    if first is None:
        raise UsageError("no file given (usage: sandlot run-code [OPTIONS] [ID] FILE)")
    sandbox_id, path = (None, first) if second is None else (first, second)
    check_positive(timeout, "--timeout")
    check_positive(inactivity_timeout, "--inactivity-timeout")
    if provider is not None and sandbox_id is not None:
        raise UsageError("--provider applies to a fresh sandbox, not to a running one (ID)")
    save_dir = _save_dir(save_results, json_)
    source = _read_source(path)

    install_signal_handlers()
    fresh = sandbox_id is None
    if sandbox_id is None:
        sandbox = _fresh_sandbox(provider, timeout + LIFETIME_GRACE)
    else:
        sandbox = _connect(sandbox_id)
    try:
        code = _run_cell(
            sandbox, source, context, timeout, inactivity_timeout, json_=json_, save_dir=save_dir
        )
    except SandlotError as exc:
        raise sandlot_failure(exc) from None
    finally:
        release(sandbox, kill=fresh)
    raise typer.Exit(code)


def _save_dir(save_results: str | None, json_: bool) -> Path | None:
    """The folder of ``--save-results``, checked."""
    if save_results is None:
        return None
    if json_:
        raise UsageError("--save-results does not apply with --json (it holds the data)")
    save_dir = Path(save_results)
    if save_dir.exists() and not save_dir.is_dir():
        raise UsageError(f"--save-results: {save_results} is not a folder")
    return save_dir


def _run_cell(
    sandbox: Sandbox,
    source: str,
    context: str | None,
    timeout: float,
    inactivity_timeout: float | None,
    *,
    json_: bool,
    save_dir: Path | None,
) -> int:
    """Run one cell, showing its output as it comes (or its outcome as JSON); the exit code."""
    from ..errors import CodeTimeoutError
    from .repl import Display

    display = Display(sys.stdout, sys.stderr, save_dir=save_dir)
    shown: dict[str, Any] = (
        {}
        if json_
        else {"on_stdout": display.out, "on_stderr": display.err, "on_result": display.result}
    )
    timed_out: CodeTimeoutError | None = None
    execution: Execution | None
    try:
        execution = sandbox.run_code(
            source,
            context=_resolve_context(sandbox, context),
            timeout=timeout,
            inactivity_timeout=inactivity_timeout,
            **shown,
        )
    except CodeTimeoutError as exc:
        timed_out, execution = exc, exc.execution
    if execution is not None:
        if json_:
            sys.stdout.write(execution.model_dump_json(indent=2) + "\n")
            sys.stdout.flush()
        else:
            display.finish(execution)
    if timed_out is not None:
        error(f"{timed_out} (exit {EXIT_TIMEOUT})")
        return EXIT_TIMEOUT
    assert execution is not None  # only a timeout comes without one
    return 1 if execution.error is not None else 0


def _read_source(path: str) -> str:
    """The cell's code: FILE's content, or our stdin for ``-``."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read() if sys.stdin is not None else b""
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"{'stdin' if path == '-' else path} is not UTF-8 text") from None


def _resolve_context(sandbox: Any, ref: str | None) -> str | None:
    """A context id from ``--context`` (an id or a name); None for the default context."""
    if ref is None or ref == "default":
        return None
    contexts = sandbox.list_code_contexts()
    for match in (lambda c: c.id == ref, lambda c: c.name == ref):
        found = [c for c in contexts if match(c)]
        if found:
            return str(found[0].id)
    known = ", ".join(sorted({"default", *(c.name or c.id for c in contexts)}))
    raise UsageError(f"no code context {ref!r} in sandbox {sandbox.id} (there are: {known})")


def _fresh_sandbox(provider: str | None, lifetime: float) -> Any:
    from ..sdk import Sandbox

    try:
        return Sandbox.create(provider, timeout=lifetime)
    except SandlotError as exc:
        raise sandlot_failure(exc) from None


def _connect(sandbox_id: str) -> Any:
    from ..sdk import Sandbox

    try:
        return Sandbox.connect(sandbox_id)
    except SandlotError as exc:
        raise sandlot_failure(exc) from None


# -- repl -------------------------------------------------------------------------------------


def repl(
    sandbox_id: Annotated[
        str | None,
        typer.Argument(
            metavar="ID",
            help="Sandbox id (default: a fresh sandbox, killed on exit unless --keep).",
            show_default=False,
        ),
    ] = None,
    context: ContextOption = None,
    keep: Annotated[
        bool,
        typer.Option("--keep", help="Keep the fresh sandbox running after exit; print its id."),
    ] = False,
    lifetime: Annotated[
        float,
        typer.Option(
            "--timeout",
            "-t",
            help="A fresh sandbox's lifetime after the last input, seconds.",
        ),
    ] = REPL_LIFETIME,
    provider: ProviderOption = None,
) -> None:
    """An interactive Python prompt in a sandbox's code context.

    Ctrl-C interrupts a running cell (the state is kept); Ctrl-D exits.

    Input from a pipe works too: sandlot repl ID < script.py
    """
    check_positive(lifetime, "--timeout")
    if sandbox_id is not None and (provider is not None or keep):
        raise UsageError("--provider and --keep apply to a fresh sandbox, not to ID")

    install_signal_handlers()
    fresh = sandbox_id is None
    if sandbox_id is not None:
        sandbox = _connect(sandbox_id)
    elif keep:
        sandbox = _connect(_held_sandbox(provider, lifetime))
    else:
        sandbox = _fresh_sandbox(provider, lifetime)
    ended = False
    try:
        _prompt(sandbox, context, lifetime if fresh else None)
        ended = True
    except SandlotError as exc:
        raise sandlot_failure(exc) from None
    finally:
        release(sandbox, kill=fresh and not (keep and ended))  # --keep: after a clean end
    if keep:
        sys.stderr.write(f"kept sandbox {sandbox.id} (sandlot kill {sandbox.id})\n")
        sys.stdout.write(sandbox.id + "\n")
        sys.stdout.flush()


def _prompt(sandbox: Any, context: str | None, lifetime: float | None) -> None:
    """Read and run cells until the end of input; each cell first extends a fresh sandbox's
    life to ``lifetime`` (None: a running sandbox, left as it is)."""
    from ..store import default_home
    from .repl import Display, History, Repl, stdin_reader

    interactive = sys.stdin is not None and sys.stdin.isatty()
    display = Display(sys.stdout, sys.stderr)

    def extend_life() -> None:
        try:
            sandbox.set_timeout(lifetime)
        except SandlotError as exc:
            raise Failed(exc) from None

    shell = Repl(
        sandbox,
        display,
        input if interactive else stdin_reader(sys.stdin),
        context=_resolve_context(sandbox, context),
        prompts=interactive,
        before_cell=extend_life if lifetime is not None else None,
    )
    if not interactive:
        shell.run()
        return
    which = context or "default"
    display.note(
        f"sandlot repl: sandbox {sandbox.id}, context {which}. "
        "Ctrl-C interrupts a cell, Ctrl-D exits.",
        stderr=True,
    )
    with History(default_home() / "repl_history"):
        shell.run()


def _held_sandbox(
    provider: str | None, lifetime: float, settings: dict[str, Any] | None = None
) -> str:
    """A fresh sandbox owned by a background ``sandlot _hold`` process, so that it outlives
    us (a sandbox dies with the process that created it); its id. ``settings``: more of
    ``Sandbox.create``'s keyword arguments (sent on the holder's stdin, not in its argv,
    where other users could read the environment)."""
    import json
    import subprocess

    args = [sys.executable, "-m", "sandlot.cli", "_hold", "--timeout", repr(lifetime)]
    if provider is not None:
        args += ["--provider", provider]
    if settings is not None:
        args.append("--settings")
    holder = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL if settings is None else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C and the terminal's hang-up are not for it
    )
    if holder.stdin is not None:
        with holder.stdin:
            holder.stdin.write(json.dumps(settings).encode() + b"\n")
    assert holder.stdout is not None
    with holder.stdout:
        line = holder.stdout.readline()
    try:
        answer = json.loads(line)
    except ValueError:
        answer = {"error": f"the holder process ended (status {holder.wait()})", "exit": 1}
    for warning in answer.get("warnings", []):
        note(f"warning: {warning}")
    if "id" not in answer:
        holder.wait()
        if answer.get("exit") == EXIT_USAGE:
            raise UsageError(answer["error"])
        raise Failed(SandlotError(answer["error"]))
    return str(answer["id"])


def hold(
    timeout: Annotated[float, typer.Option("--timeout")] = REPL_LIFETIME,
    provider: Annotated[str | None, typer.Option("--provider")] = None,
    settings: Annotated[bool, typer.Option("--settings")] = False,
) -> None:
    """Create a sandbox, print its id (one JSON line), and hold it until it ends. With
    ``--settings``, more of ``Sandbox.create``'s keyword arguments come as one JSON line on
    stdin."""
    import json
    import time
    import warnings

    from ..sdk import Sandbox

    more: dict[str, Any] = {}
    if settings:
        more = json.loads(sys.stdin.readline() or "{}")

    def answer(value: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(value) + "\n")
        sys.stdout.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # whoever started us stops reading now

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            sandbox = Sandbox.create(provider, timeout=timeout, **more)
        except SandlotError as exc:
            bad = isinstance(exc, (InvalidArgumentError, NotFoundError))
            answer({"error": str(exc), "exit": EXIT_USAGE if bad else EXIT_SANDLOT_FAILED})
            raise typer.Exit(1) from None
    answer({"id": sandbox.id, "warnings": [str(w.message) for w in caught]})
    install_signal_handlers()
    try:
        while sandbox.is_running():  # until killed, or its lifetime (extended by others) ends
            time.sleep(HOLD_POLL)
    except SandlotError:
        pass
    finally:
        release(sandbox, kill=True)
