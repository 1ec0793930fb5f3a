"""The ``sandlot`` command line: run commands in sandboxes, list, exec into and kill them.

Exit codes (see docs/cli.md): ``run`` and ``exec`` exit with the command's own code (128+n
when a signal ended it), 124 when the command timed out, 125 when sandlot itself failed
(the sandbox could not start or died). ``run-code`` exits 0 when the cell succeeded, 1 when
it raised, 124 on timeout and 125 when sandlot failed; ``repl`` exits 0 at the end of input
and 125 when sandlot failed. Every command exits 2 on bad input (unknown provider, sandbox id
or code context, malformed ``K=V``, empty command, missing file, bad option) and prints one
red line on stderr, never a traceback; other sandlot failures exit 1 outside ``run``/``exec``/
``run-code``/``repl``.

Importing this module adds little to importing ``sandlot``: rich, the providers and the
manager are imported inside the commands that use them.
"""

import json
import os
import signal
import sys
from collections.abc import Callable
from datetime import UTC
from typing import Annotated, Any, Literal, NoReturn

import typer

from .errors import InvalidArgumentError, NotFoundError, SandlotError

EXIT_USAGE = 2
EXIT_TIMEOUT = 124
EXIT_SANDLOT_FAILED = 125  # run/exec: sandlot failed, not the command (as timeout(1), docker run)
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
LIFETIME_GRACE = 5.0  # run: the sandbox outlives the command's timeout, so the timeout is clean
# A silent server must not hold the exit: a cleanup call (kill the command, the sandbox) is
# waited for this long, and a signal held while a command starts acts after HOLD_LIMIT anyway.
CLEANUP_WAIT = 3.0
HOLD_LIMIT = 2.0

app = typer.Typer(
    name="sandlot",
    help="Disposable, isolated sandboxes for AI agents.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Everything after the command's first word belongs to the command (`sandlot run ls -la`).
_COMMAND_CONTEXT = {"allow_interspersed_args": False}


class _UsageError(Exception):
    """Bad input found by the CLI itself (exit 2)."""


class _Signalled(BaseException):
    """SIGTERM or SIGHUP arrived: unwind (killing what we started) and exit 128+n."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Failed(Exception):
    """A sandlot error inside run/exec: reported, then exit 125 (not the command's code)."""

    def __init__(self, error: SandlotError) -> None:
        super().__init__(str(error))
        self.error = error


# -- output helpers ---------------------------------------------------------------------------


def _one_line(message: str) -> str:
    return " ".join(str(message).split()) or "unknown error"


def _error(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    console.print(f"[red]error: {escape(_one_line(message))}[/red]")


def _note(message: str, style: str = "yellow") -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    console.print(f"[{style}]{escape(_one_line(message))}[/{style}]")


def _console() -> Any:
    from rich.console import Console

    # Piped output: do not squeeze tables into 80 columns.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def _print_json(value: Any) -> None:
    import json

    sys.stdout.write(json.dumps(value, indent=2) + "\n")
    sys.stdout.flush()


class _Writer:
    """Streams decoded output chunks to one of our own streams as they arrive (loop thread)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.broken = False

    def __call__(self, text: str) -> None:
        if self.broken:
            return
        try:
            raw = getattr(self.stream, "buffer", None)
            if raw is not None:
                raw.write(text.encode(self.stream.encoding or "utf-8", "replace"))
                raw.flush()
            else:
                self.stream.write(text)
                self.stream.flush()
        except BrokenPipeError:
            self.broken = True
            raise


# -- input helpers ----------------------------------------------------------------------------


def _pairs(values: list[str] | None, option: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:  # (a SandlotError: sub-apps share this parser)
            raise InvalidArgumentError(f"{option} expects KEY=VALUE, got {item!r}")
        found[key] = value
    return found


def _env(values: list[str] | None) -> dict[str, str]:
    from .models import check_env

    env = _pairs(values, "--env")
    try:
        return check_env(env)
    except ValueError as exc:
        raise _UsageError(f"--env: {exc}") from None


def _settings(values: list[str] | None) -> dict[str, Any]:
    """Provider settings from ``--set K=V``: V as JSON when it parses, else as a string."""
    settings: dict[str, Any] = {}
    for key, raw in _pairs(values, "--set").items():
        try:
            settings[key] = json.loads(raw)
        except ValueError:
            settings[key] = raw
    return settings


def _positive(value: float | None, option: str) -> None:
    if value is not None and not value > 0:
        raise _UsageError(f"{option} must be a positive number of seconds, got {value:g}")


def _command(words: list[str] | None, usage: str) -> str | list[str]:
    words = list(words or [])
    if not words:
        raise _UsageError(f"no command given (usage: {usage})")
    if len(words) == 1:
        if not words[0].strip():
            raise _UsageError("command is empty")
        return words[0]  # one word: through the sandbox's shell
    if not words[0]:
        raise _UsageError("command is empty")
    return words


def _install_signal_handlers() -> None:
    def handler(signum: int, _frame: Any) -> NoReturn:
        _raise_for(signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        try:
            signal.signal(signum, handler)
        except (ValueError, OSError):  # not the main thread, or not settable here
            pass


# -- running commands -------------------------------------------------------------------------


class _HeldSignals:
    """Holds SIGINT, SIGTERM and SIGHUP back during a call whose result must not be lost.

    A second signal while held acts at once (so a hung call can still be interrupted), and so
    does the first once held for HOLD_LIMIT seconds: it is sent again then.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.pending: int | None = None
        self.saved: dict[int, Any] = {}
        self.again: Any = None  # the timer that sends a held signal again

    def __enter__(self) -> "_HeldSignals":
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
            _raise_for(signum)
        self.pending = signum
        self.again = threading.Timer(HOLD_LIMIT, os.kill, (os.getpid(), signum))
        self.again.daemon = True
        self.again.start()

    def replay(self) -> None:
        if self.pending is not None:
            _raise_for(self.pending)


def _raise_for(signum: int) -> NoReturn:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise _Signalled(signum)


def _pump_stdin(handle: Any) -> None:
    """Forward our stdin to the command until EOF (on a daemon thread)."""
    try:
        stream = sys.stdin
        if stream is not None:
            fd = stream.fileno()
            while True:
                data = os.read(fd, 65536)
                if not data:
                    break
                handle.send_stdin(data)
        handle.close_stdin()
    except Exception:
        return  # the command ended, or stdin is unreadable: nothing left to forward


def _stream(
    sandbox: Any,
    command: str | list[str],
    *,
    timeout: float | None,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    forward_stdin: bool = False,
) -> int:
    """Run ``command`` with its output streamed to our stdout/stderr; its exit code."""
    import threading

    from .errors import CommandTimeoutError

    # A signal that lands while the command starts would lose its handle (the command would
    # keep running, unseen): hold signals back until we have the handle, then act on them.
    # The try begins first: a signal may also land as the held handlers are put back.
    handle = None
    try:
        with _HeldSignals() as held:
            handle = sandbox.commands.run(
                command,
                background=True,  # a handle, so that we can kill the command if interrupted
                timeout=timeout,
                env=env or None,
                cwd=cwd,
                on_stdout=_Writer(sys.stdout),
                on_stderr=_Writer(sys.stderr),
                max_output_bytes=0,  # streamed, not kept
            )
        held.replay()
        if forward_stdin:
            threading.Thread(target=_pump_stdin, args=(handle,), daemon=True).start()
        else:
            handle.close_stdin()
        result = handle.wait()
    except CommandTimeoutError as exc:
        _error(f"{exc} (exit {EXIT_TIMEOUT})")
        return EXIT_TIMEOUT
    except BrokenPipeError:  # whoever read our output went away: stop the command, as SIGPIPE
        _abandon(handle)
        return EXIT_BROKEN_PIPE
    except BaseException:
        _abandon(handle)
        raise
    if result.signal:
        return 128 + int(result.signal)
    code = int(result.exit_code)
    return 128 - code if code < 0 else code & 0xFF


def _abandon(handle: Any) -> None:
    """Kill a command we stop waiting for, and collect its end (so nothing is left to log)."""
    if handle is None:
        return  # it never started
    try:
        _best_effort(lambda: (handle.kill(), handle.wait()))
    except BaseException:
        pass


def _best_effort(cleanup: Callable[[], object]) -> None:
    """Run a cleanup call, waiting CLEANUP_WAIT seconds at most: against a server that stopped
    answering, the exit goes on (the server ends the sandbox at its lifetime; embedded, this
    process's exit kills what it created). Its errors are dropped: the caller's are what count.
    """
    import threading

    def run() -> None:
        try:
            cleanup()
        except BaseException:
            pass

    thread = threading.Thread(target=run, name="sandlot-cleanup", daemon=True)
    thread.start()
    thread.join(CLEANUP_WAIT)


def _sandlot_failure(exc: SandlotError) -> BaseException:
    """Bad input stays bad input (exit 2); anything else in run/exec exits 125."""
    if isinstance(exc, (InvalidArgumentError, NotFoundError)):
        return exc
    return _Failed(exc)


# -- commands ---------------------------------------------------------------------------------

EnvOption = Annotated[
    list[str] | None,
    typer.Option("--env", "-e", metavar="K=V", help="Environment variable (repeatable)."),
]
CommandArgument = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="CMD",
        help="The command: one argument runs through the sandbox's shell, several run as argv.",
        show_default=False,
    ),
]


@app.command(context_settings=_COMMAND_CONTEXT)
def run(
    cmd: CommandArgument = None,
    provider: Annotated[
        str | None,
        typer.Option("--provider", "-p", help="Provider (see `sandlot providers`); default bwrap."),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", "-t", help="Sandbox lifetime, seconds.")
    ] = 300.0,
    command_timeout: Annotated[
        float | None,
        typer.Option(
            "--command-timeout",
            help="Command time limit, seconds (default: --timeout).",
            show_default=False,
        ),
    ] = None,
    env: EnvOption = None,
    workdir: Annotated[
        str, typer.Option("--workdir", "-w", help="Working folder in the sandbox (created).")
    ] = "/workspace",
    memory_mb: Annotated[
        int | None, typer.Option("--memory-mb", help="Memory limit, MiB (default: 512).")
    ] = None,
    stdin: Annotated[
        bool, typer.Option("--stdin", help="Forward this terminal's stdin to the command.")
    ] = False,
    image: Annotated[
        str | None, typer.Option("--image", help="Container image (the docker provider).")
    ] = None,
    setting: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="K=V",
            help="A provider setting (repeatable; V is read as JSON when it parses, e.g. "
            "--set pull=never --set 'ro_binds=[\"/opt\"]').",
        ),
    ] = None,
    allow: Annotated[
        list[str] | None,
        typer.Option(
            "--allow",
            metavar="RULE",
            help="Let the sandbox reach this host through the egress proxy (repeatable): "
            "host, *.domain, host:port, an address or a network.",
        ),
    ] = None,
    resolve: Annotated[
        list[str] | None,
        typer.Option(
            "--resolve", metavar="NAME=ADDR", help="Pin a name for the proxy (repeatable)."
        ),
    ] = None,
    full_network: Annotated[
        bool, typer.Option("--full-network", help="Give the sandbox the host's network.")
    ] = False,
    secret_env: Annotated[
        list[str] | None,
        typer.Option(
            "--secret-env",
            metavar="VAR=SECRET",
            help="Set VAR to a stored secret (see `sandlot secrets`); masked in the output.",
        ),
    ] = None,
    session: Annotated[
        str | None,
        typer.Option(
            "--session",
            metavar="ID",
            help="Run in this durable session (see `sandlot sessions`): its workspace is "
            "restored first and saved after, and the run goes in its transcript.",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="With --session: cancel a run that holds the session."),
    ] = False,
) -> None:
    """Run one command in a fresh sandbox, stream its output, exit with its exit code.

    Example: sandlot run -- 'echo hi; exit 3'; sandlot run -p docker --image IMG -- CMD
    """
    command = _command(cmd, "sandlot run [OPTIONS] -- CMD...")
    env_map = _env(env)
    _positive(timeout, "--timeout")
    _positive(command_timeout, "--command-timeout")
    if command_timeout is None:
        command_timeout = timeout
    elif command_timeout > timeout:
        raise _UsageError("--command-timeout cannot exceed --timeout (the sandbox's lifetime)")
    if not workdir.startswith("/"):
        raise _UsageError(f"--workdir must be an absolute path, got {workdir!r}")
    config = _settings(setting)
    if image is not None:
        config["image"] = image
    network = _network(allow, resolve, full_network)
    environment: dict[str, Any] = {**env_map}
    for var, name in _pairs(secret_env, "--secret-env").items():
        environment[var] = {"secret": name}

    from .sdk import Sandbox, Session

    if force and session is None:
        raise _UsageError("--force takes over a session's run: give --session too")
    if session is not None and workdir != "/workspace":
        raise _UsageError("--workdir with --session: a session's commands start in /workspace")
    _install_signal_handlers()
    resources = {"memory_mb": memory_mb} if memory_mb is not None else None
    attached_to = None
    sandbox: Sandbox
    try:
        if session is not None:
            attached_to = Session.connect(session)
            sandbox = attached_to.sandbox(
                provider,
                force=force,
                timeout=timeout + LIFETIME_GRACE,
                env=environment,
                network=network,
                resources=resources,
                **config,
            )
        else:
            sandbox = Sandbox.create(
                provider,
                timeout=timeout + LIFETIME_GRACE,
                env=environment,
                network=network,
                resources=resources,
                workdir=workdir,
                **config,
            )
    except SandlotError as exc:
        raise _sandlot_failure(exc) from None
    try:
        if workdir != "/workspace":
            try:
                sandbox.files.make_dir(workdir)
            except SandlotError as exc:
                raise _UsageError(f"--workdir {workdir}: {exc}") from None
        code = _stream(sandbox, command, timeout=command_timeout, forward_stdin=stdin)
    except SandlotError as exc:
        raise _sandlot_failure(exc) from None
    finally:
        try:
            if attached_to is not None:
                attached_to.detach(sandbox)  # saves the workspace, then destroys it
            else:
                _best_effort(sandbox.kill)
        except Exception as exc:
            if attached_to is not None:
                _note(f"detaching from session {attached_to.id}: {exc}")
            # else already gone; the owner's exit and gc clean up the rest
    raise typer.Exit(code)


def _network(
    allow: list[str] | None, resolve: list[str] | None, full: bool
) -> Literal["none", "full"] | dict[str, Any]:
    if full:
        if allow or resolve:
            raise _UsageError("--full-network gives everything: leave out --allow and --resolve")
        return "full"
    if resolve and not allow:
        raise _UsageError("--resolve pins names for --allow rules; give at least one --allow")
    if not allow:
        return "none"
    return {"allow": allow, "resolve": _pairs(resolve, "--resolve")}


@app.command(name="exec", context_settings=_COMMAND_CONTEXT)
def exec_(
    sandbox_id: Annotated[str, typer.Argument(metavar="ID", help="Sandbox id (see `sandlot ls`).")],
    cmd: CommandArgument = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            "-t",
            help="Command time limit, seconds (default: the sandbox's lifetime).",
            show_default=False,
        ),
    ] = None,
    env: EnvOption = None,
    workdir: Annotated[
        str | None, typer.Option("--workdir", "-w", help="Working folder in the sandbox.")
    ] = None,
    stdin: Annotated[
        bool, typer.Option("--stdin", help="Forward this terminal's stdin to the command.")
    ] = False,
) -> None:
    """Run a command in a running sandbox (also one another process created).

    Options go before ID. Example: sandlot exec sb-0123456789ab -- ls -la
    """
    words = list(cmd or [])
    if words and words[0] == "--":  # after ID the parser no longer eats the separator
        words = words[1:]
    if words and words[0].startswith("-") and len(words[0]) > 1:
        raise _UsageError(
            f"{words[0]!r} looks like an option: options go before the sandbox id "
            "(sandlot exec [OPTIONS] ID -- CMD...)"
        )
    command = _command(words, "sandlot exec [OPTIONS] ID -- CMD...")
    env_map = _env(env)
    _positive(timeout, "--timeout")
    if workdir is not None and not workdir.startswith("/"):
        raise _UsageError(f"--workdir must be an absolute path, got {workdir!r}")

    from .sdk import Sandbox

    _install_signal_handlers()
    try:
        sandbox = Sandbox.connect(sandbox_id)
    except SandlotError as exc:
        raise _sandlot_failure(exc) from None
    try:
        code = _stream(
            sandbox, command, timeout=timeout, env=env_map, cwd=workdir, forward_stdin=stdin
        )
    except SandlotError as exc:
        raise _sandlot_failure(exc) from None
    finally:
        try:
            sandbox.close()
        except Exception:
            pass
    raise typer.Exit(code)


# -- code: run-code and repl ------------------------------------------------------------------

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


def _read_source(path: str) -> str:
    """The cell's code: FILE's content, or our stdin for ``-``."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read() if sys.stdin is not None else b""
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as exc:
        raise _UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _UsageError(f"{'stdin' if path == '-' else path} is not UTF-8 text") from None


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
    raise _UsageError(f"no code context {ref!r} in sandbox {sandbox.id} (there are: {known})")


def _fresh_sandbox(provider: str | None, lifetime: float) -> Any:
    from .sdk import Sandbox

    try:
        return Sandbox.create(provider, timeout=lifetime)
    except SandlotError as exc:
        raise _sandlot_failure(exc) from None


def _connect(sandbox_id: str) -> Any:
    from .sdk import Sandbox

    try:
        return Sandbox.connect(sandbox_id)
    except SandlotError as exc:
        raise _sandlot_failure(exc) from None


def _release(sandbox: Any, kill: bool) -> None:
    try:
        if kill:
            _best_effort(sandbox.kill)
        else:
            sandbox.close()
    except Exception:
        pass  # already gone; the owner's exit and gc clean up the rest


@app.command(name="run-code")
def run_code(
    first: Annotated[
        str | None,
        typer.Argument(
            metavar="ID",
            help="Sandbox id; omitted (one argument): a fresh sandbox, killed afterwards.",
            show_default=False,
        ),
    ] = None,
    second: Annotated[
        str | None,
        typer.Argument(
            metavar="FILE",
            help="The Python file to run as one cell; '-' reads stdin.",
            show_default=False,
        ),
    ] = None,
    context: ContextOption = None,
    timeout: Annotated[
        float, typer.Option("--timeout", "-t", help="The cell's time limit, seconds.")
    ] = 300.0,
    inactivity_timeout: Annotated[
        float | None,
        typer.Option(
            "--inactivity-timeout",
            help="Time limit without output, seconds (default: none).",
            show_default=False,
        ),
    ] = None,
    json_: Annotated[
        bool, typer.Option("--json", help="Print the outcome (an Execution) as JSON.")
    ] = False,
    save_results: Annotated[
        str | None,
        typer.Option(
            "--save-results",
            metavar="DIR",
            help="Write image results (png, jpeg, svg) into DIR.",
            show_default=False,
        ),
    ] = None,
    provider: ProviderOption = None,
) -> None:
    """Run a Python file as one notebook-style cell; exit 0, or 1 if it raised.

    With one argument, it is FILE. With ID, state lives on in that sandbox's code context.

    Example: sandlot run-code sb-0123456789ab analysis.py
    """
    if first is None:
        raise _UsageError("no file given (usage: sandlot run-code [OPTIONS] [ID] FILE)")
    sandbox_id, path = (None, first) if second is None else (first, second)
    _positive(timeout, "--timeout")
    _positive(inactivity_timeout, "--inactivity-timeout")
    if provider is not None and sandbox_id is not None:
        raise _UsageError("--provider applies to a fresh sandbox, not to a running one (ID)")
    save_dir = None
    if save_results is not None:
        from pathlib import Path

        if json_:
            raise _UsageError("--save-results does not apply with --json (it holds the data)")
        save_dir = Path(save_results)
        if save_dir.exists() and not save_dir.is_dir():
            raise _UsageError(f"--save-results: {save_results} is not a folder")
    source = _read_source(path)

    from .errors import CodeTimeoutError
    from .repl import Display

    _install_signal_handlers()
    fresh = sandbox_id is None
    if sandbox_id is None:
        sandbox = _fresh_sandbox(provider, timeout + LIFETIME_GRACE)
    else:
        sandbox = _connect(sandbox_id)
    try:
        display = Display(sys.stdout, sys.stderr, save_dir=save_dir)
        shown: dict[str, Any] = (
            {}
            if json_
            else {"on_stdout": display.out, "on_stderr": display.err, "on_result": display.result}
        )
        timed_out: CodeTimeoutError | None = None
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
            _error(f"{timed_out} (exit {EXIT_TIMEOUT})")
            code = EXIT_TIMEOUT
        else:
            code = 1 if execution.error is not None else 0
    except SandlotError as exc:
        raise _sandlot_failure(exc) from None
    finally:
        _release(sandbox, kill=fresh)
    raise typer.Exit(code)


@app.command()
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
    _positive(lifetime, "--timeout")
    if sandbox_id is not None and (provider is not None or keep):
        raise _UsageError("--provider and --keep apply to a fresh sandbox, not to ID")

    from .repl import Display, History, Repl, stdin_reader
    from .store import default_home

    _install_signal_handlers()
    fresh = sandbox_id is None
    if sandbox_id is not None:
        sandbox = _connect(sandbox_id)
    elif keep:
        sandbox = _connect(_held_sandbox(provider, lifetime))
    else:
        sandbox = _fresh_sandbox(provider, lifetime)
    interactive = sys.stdin is not None and sys.stdin.isatty()
    display = Display(sys.stdout, sys.stderr)
    ended = False

    def extend_life() -> None:
        try:
            sandbox.set_timeout(lifetime)
        except SandlotError as exc:
            raise _Failed(exc) from None

    try:
        shell = Repl(
            sandbox,
            display,
            input if interactive else stdin_reader(sys.stdin),
            context=_resolve_context(sandbox, context),
            prompts=interactive,
            before_cell=extend_life if fresh else None,
        )
        if interactive:
            which = context or "default"
            display.note(
                f"sandlot repl: sandbox {sandbox.id}, context {which}. "
                "Ctrl-C interrupts a cell, Ctrl-D exits.",
                stderr=True,
            )
            with History(default_home() / "repl_history"):
                shell.run()
        else:
            shell.run()
        ended = True
    except SandlotError as exc:
        raise _sandlot_failure(exc) from None
    finally:
        _release(sandbox, kill=fresh and not (keep and ended))  # --keep: after a clean end
    if keep:
        sys.stderr.write(f"kept sandbox {sandbox.id} (sandlot kill {sandbox.id})\n")
        sys.stdout.write(sandbox.id + "\n")
        sys.stdout.flush()


def _held_sandbox(provider: str | None, lifetime: float) -> str:
    """A fresh sandbox owned by a background ``sandlot _hold`` process, so that it outlives
    us (a sandbox dies with the process that created it); its id."""
    import json
    import subprocess

    args = [sys.executable, "-m", "sandlot.cli", "_hold", "--timeout", repr(lifetime)]
    if provider is not None:
        args += ["--provider", provider]
    holder = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C and the terminal's hang-up are not for it
    )
    assert holder.stdout is not None
    with holder.stdout:
        line = holder.stdout.readline()
    try:
        answer = json.loads(line)
    except ValueError:
        answer = {"error": f"the holder process ended (status {holder.wait()})", "exit": 1}
    for warning in answer.get("warnings", []):
        _note(f"warning: {warning}")
    if "id" not in answer:
        holder.wait()
        if answer.get("exit") == EXIT_USAGE:
            raise _UsageError(answer["error"])
        raise _Failed(SandlotError(answer["error"]))
    return str(answer["id"])


@app.command(name="_hold", hidden=True)
def hold(
    timeout: Annotated[float, typer.Option("--timeout")] = REPL_LIFETIME,
    provider: Annotated[str | None, typer.Option("--provider")] = None,
) -> None:
    """Create a sandbox, print its id (one JSON line), and hold it until it ends."""
    import json
    import time
    import warnings

    from .sdk import Sandbox

    def answer(value: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(value) + "\n")
        sys.stdout.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # whoever started us stops reading now

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            sandbox = Sandbox.create(provider, timeout=timeout)
        except SandlotError as exc:
            bad = isinstance(exc, (InvalidArgumentError, NotFoundError))
            answer({"error": str(exc), "exit": EXIT_USAGE if bad else EXIT_SANDLOT_FAILED})
            raise typer.Exit(1) from None
    answer({"id": sandbox.id, "warnings": [str(w.message) for w in caught]})
    _install_signal_handlers()
    try:
        while sandbox.is_running():  # until killed, or its lifetime (extended by others) ends
            time.sleep(HOLD_POLL)
    except SandlotError:
        pass
    finally:
        _release(sandbox, kill=True)


@app.command()
def providers(
    json_: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Every provider, whether it is usable on this host, and if not, why."""
    from .models import ProviderInfo
    from .providers import DEFAULT, provider_class, provider_names
    from .store import default_home

    home = default_home()
    rows: list[ProviderInfo] = []
    for name in provider_names():
        try:
            info = provider_class(name)(home).info()
        except Exception as exc:  # a broken third-party entry point must not hide the rest
            info = ProviderInfo(
                name=name, available=False, reason=f"cannot load: {exc}", isolated=False
            )
        rows.append(info)

    if json_:
        _print_json(
            [{**info.model_dump(mode="json"), "default": info.name == DEFAULT} for info in rows]
        )
        return

    from rich.table import Table

    table = Table(title=None, show_lines=False)
    table.add_column("provider", no_wrap=True)
    table.add_column("usable", no_wrap=True)
    table.add_column("isolated", no_wrap=True)
    table.add_column("capabilities")
    table.add_column("why not")
    for info in rows:
        name = info.name + (" (default)" if info.name == DEFAULT else "")
        table.add_row(
            name,
            "[green]yes[/green]" if info.available else "[red]no[/red]",
            "yes" if info.isolated else "[yellow]no[/yellow]",
            ", ".join(info.capabilities),
            info.reason or "",
        )
    _console().print(table)


@app.command(name="ls")
def ls(
    json_: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    meta: Annotated[
        list[str] | None,
        typer.Option("--meta", "-m", metavar="K=V", help="Only sandboxes with this metadata."),
    ] = None,
) -> None:
    """Running sandboxes on this host (from every process), or on the server that
    SANDLOT_URL names."""
    wanted = _pairs(meta, "--meta")
    from .sdk import Sandbox

    infos = Sandbox.list(wanted or None)
    if json_:
        _print_json([info.model_dump(mode="json", exclude={"handle"}) for info in infos])
        return
    if not infos:
        _console().print("no running sandboxes", style="dim")
        return

    from datetime import datetime

    from rich.markup import escape
    from rich.table import Table

    now = datetime.now(UTC)
    table = Table()
    table.add_column("id", no_wrap=True)
    table.add_column("provider", no_wrap=True)
    table.add_column("created", no_wrap=True)
    table.add_column("expires", no_wrap=True)
    table.add_column("metadata")
    for info in sorted(infos, key=lambda i: i.created_at):
        left = (info.expires_at - now).total_seconds()
        table.add_row(
            info.id,
            info.provider,
            info.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
            f"in {_duration(left)}" if left > 0 else "[red]expired[/red]",
            escape(", ".join(f"{k}={v}" for k, v in sorted(info.metadata.items()))),
        )
    _console().print(table)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


@app.command()
def kill(
    sandbox_ids: Annotated[
        list[str], typer.Argument(metavar="ID...", help="Sandbox ids (see `sandlot ls`).")
    ],
) -> None:
    """Destroy sandboxes and everything running in them."""
    import asyncio

    from .manager import Manager
    from .sdk.backend import backend_for

    async def kill_all() -> int:
        backend = backend_for(None)  # the server's with SANDLOT_URL, else this host's
        worst = 0
        try:
            for sandbox_id in sandbox_ids:
                try:
                    await backend.kill(sandbox_id)
                except SandlotError as exc:
                    _error(str(exc))
                    bad = isinstance(exc, (InvalidArgumentError, NotFoundError))
                    worst = max(worst, EXIT_USAGE if bad else 1)
                else:
                    sys.stdout.write(f"killed {sandbox_id}\n")
                    sys.stdout.flush()
        finally:
            if isinstance(backend, Manager):
                await backend.close()
        return worst

    code = asyncio.run(kill_all())
    raise typer.Exit(code)


@app.command()
def gc(
    json_: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Remove what crashed processes left behind: dead or expired sandboxes, orphans."""
    from .sdk import Sandbox

    report = Sandbox.gc()
    if json_:
        _print_json({"removed": report.removed, "orphans": report.orphans})
        return
    lines = [f"removed {i} (owner gone or expired)" for i in report.removed]
    lines += [f"removed orphan {i} (resources without a record)" for i in report.orphans]
    sys.stdout.write("\n".join(lines) + "\n" if lines else "nothing to remove\n")
    sys.stdout.flush()


# -- entry point ------------------------------------------------------------------------------


def _add_subcommands() -> None:
    from .pool_cli import pool_app
    from .relay.cli import relay_app
    from .remote.provision_cli import remote_app
    from .secrets.cli import secrets_app
    from .server.cli import keys_app, serve
    from .sessions_cli import sessions_app

    app.add_typer(relay_app, name="relay")
    app.add_typer(keys_app, name="keys")
    app.add_typer(remote_app, name="remote")
    app.add_typer(secrets_app, name="secrets")
    app.add_typer(pool_app, name="pool")
    app.add_typer(sessions_app, name="sessions")
    app.command(name="serve")(serve)


_add_subcommands()


def _click_exceptions() -> Any:
    """click's exception classes, as the installed typer uses them (newer typers vendor click)."""
    import importlib

    try:
        return importlib.import_module("typer._click.exceptions")
    except ImportError:
        return importlib.import_module("click.exceptions")


def _run_app(argv: list[str] | None) -> int:
    ce = _click_exceptions()
    no_args_is_help = getattr(ce, "NoArgsIsHelpError", ())
    aborted = (getattr(ce, "Abort", typer.Abort), typer.Abort, KeyboardInterrupt)
    try:
        result = app(args=argv, prog_name="sandlot", standalone_mode=False)
    except _UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except _Failed as exc:
        _error(str(exc.error))
        return EXIT_SANDLOT_FAILED
    except SandlotError as exc:
        _error(str(exc))
        return EXIT_USAGE if isinstance(exc, (InvalidArgumentError, NotFoundError)) else 1
    except _Signalled as exc:
        return 128 + exc.signum
    except no_args_is_help as exc:  # bare `sandlot`: typer has printed the help already
        message = exc.format_message()
        if message.strip():
            sys.stdout.write(message + "\n")
        return EXIT_USAGE
    except ce.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        _error(exc.format_message() + hint)
        return EXIT_USAGE
    except ce.ClickException as exc:
        _error(exc.format_message())
        return exc.exit_code
    except aborted:
        return 130
    except BrokenPipeError:
        return EXIT_BROKEN_PIPE
    return result if isinstance(result, int) else 0


def _show_warning(message: Any, category: Any, *_args: Any, **_kwargs: Any) -> None:
    """Python warnings (e.g. the process provider's "no isolation") as one yellow line."""
    _note(f"warning: {message}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``sandlot``)."""
    import warnings

    warnings.showwarning = _show_warning
    try:
        code = _run_app(argv)
    except Exception as exc:  # a bug: one line, the traceback only when asked for
        if os.environ.get("SANDLOT_DEBUG"):
            raise
        _error(f"internal error: {type(exc).__name__}: {exc} (set SANDLOT_DEBUG=1 for a traceback)")
        code = 1
    if code == EXIT_BROKEN_PIPE:
        # Our reader went away: do not let the interpreter complain when it flushes stdout.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
    sys.exit(code)


if __name__ == "__main__":
    main()
