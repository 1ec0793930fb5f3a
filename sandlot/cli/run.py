"""``sandlot run`` and ``sandlot exec``: a command in a fresh or a running sandbox, its output
streamed to ours as it arrives, its exit code ours.

Exit codes: the command's own (128+n when a signal ended it), 124 when it timed out, 125 when
sandlot itself failed (the sandbox could not start or died), 2 on bad input.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from ..errors import SandlotError
from ._common import (
    EXIT_BROKEN_PIPE,
    EXIT_TIMEOUT,
    LIFETIME_GRACE,
    EnvOption,
    HeldSignals,
    ImageOption,
    MemoryOption,
    UsageError,
    best_effort,
    check_positive,
    error,
    install_signal_handlers,
    note,
    pairs,
    parse_env,
    parse_settings,
    print_json,
    sandlot_failure,
)

if TYPE_CHECKING:
    from ..sdk import Sandbox, Session

# Everything after the command's first word belongs to the command (`sandlot run ls -la`).
COMMAND_CONTEXT = {"allow_interspersed_args": False}

CommandArgument = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="CMD",
        help="The command: one argument runs through the sandbox's shell, several run as argv.",
        show_default=False,
    ),
]
StdinOption = Annotated[
    bool, typer.Option("--stdin", help="Forward this terminal's stdin to the command.")
]
ResultJsonOption = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print the result (exit code, signal, output) as JSON at the end, not the output "
        "as it comes.",
    ),
]

# -- run's options ----------------------------------------------------------------------------

ProviderOption = Annotated[
    str | None,
    typer.Option("--provider", "-p", help="Provider (see `sandlot providers`); default bwrap."),
]
LifetimeOption = Annotated[
    float, typer.Option("--timeout", "-t", help="Sandbox lifetime, seconds.")
]
CommandTimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--command-timeout",
        help="Command time limit, seconds (default: --timeout).",
        show_default=False,
    ),
]
WorkdirOption = Annotated[
    str, typer.Option("--workdir", "-w", help="Working folder in the sandbox (created).")
]
SettingOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="K=V",
        help="A provider setting (repeatable; V is read as JSON when it parses, e.g. "
        "--set pull=never --set 'ro_binds=[\"/opt\"]').",
    ),
]
AllowOption = Annotated[
    list[str] | None,
    typer.Option(
        "--allow",
        metavar="RULE",
        help="Let the sandbox reach this host through the egress proxy (repeatable): "
        "host, *.domain, host:port, an address or a network.",
    ),
]
ResolveOption = Annotated[
    list[str] | None,
    typer.Option("--resolve", metavar="NAME=ADDR", help="Pin a name for the proxy (repeatable)."),
]
FullNetworkOption = Annotated[
    bool, typer.Option("--full-network", help="Give the sandbox the host's network.")
]
SecretEnvOption = Annotated[
    list[str] | None,
    typer.Option(
        "--secret-env",
        metavar="VAR=SECRET",
        help="Set VAR to a stored secret (see `sandlot secrets`); masked in the output.",
    ),
]
SessionOption = Annotated[
    str | None,
    typer.Option(
        "--session",
        metavar="ID",
        help="Run in this durable session (see `sandlot sessions`): its workspace is "
        "restored first and saved after, and the run goes in its transcript.",
    ),
]
VolumeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--volume",
        "-v",
        metavar="NAME:PATH[:ro]",
        help="Mount a named volume (see `sandlot volume`) at PATH, read-write unless ':ro' "
        "(repeatable).",
    ),
]
TemplateOption = Annotated[
    str | None,
    typer.Option(
        "--template",
        metavar="NAME",
        help="Start from this template's root file system (see `sandlot template`).",
    ),
]
ForceOption = Annotated[
    bool,
    typer.Option("--force", help="With --session: cancel a run that holds the session."),
]


def run(
    cmd: CommandArgument = None,
    provider: ProviderOption = None,
    timeout: LifetimeOption = 300.0,
    command_timeout: CommandTimeoutOption = None,
    env: EnvOption = None,
    workdir: WorkdirOption = "/workspace",
    memory_mb: MemoryOption = None,
    stdin: StdinOption = False,
    image: ImageOption = None,
    setting: SettingOption = None,
    allow: AllowOption = None,
    resolve: ResolveOption = None,
    full_network: FullNetworkOption = False,
    secret_env: SecretEnvOption = None,
    session: SessionOption = None,
    force: ForceOption = False,
    volume: VolumeOption = None,
    template: TemplateOption = None,
    json_: ResultJsonOption = False,
) -> None:
    """Run one command in a fresh sandbox, stream its output, exit with its exit code.

    Example: sandlot run -- 'echo hi; exit 3'; sandlot run -p docker --image IMG -- CMD
    """
    command = parse_command(cmd, "sandlot run [OPTIONS] -- CMD...")
    env_map = parse_env(env)
    command_timeout = _command_timeout(timeout, command_timeout)
    if not workdir.startswith("/"):
        raise UsageError(f"--workdir must be an absolute path, got {workdir!r}")
    config = parse_settings(setting)
    if image is not None:
        config["image"] = image
    network = _network(allow, resolve, full_network)
    create: dict[str, Any] = {
        "timeout": timeout + LIFETIME_GRACE,
        "env": _environment(env_map, secret_env),
        "network": network,
        "resources": {"memory_mb": memory_mb} if memory_mb is not None else None,
    }
    if volume:
        create["volumes"] = parse_volumes(volume)
    if template is not None:
        create["template"] = template
    if force and session is None:
        raise UsageError("--force takes over a session's run: give --session too")
    if session is not None and workdir != "/workspace":
        raise UsageError("--workdir with --session: a session's commands start in /workspace")
    install_signal_handlers()
    sandbox, attached_to = _open(provider, session, force, workdir, create, config)
    try:
        code = _run_in(sandbox, command, workdir, command_timeout, stdin, json_)
    finally:
        _close(sandbox, attached_to)
    raise typer.Exit(code)


def parse_volumes(values: list[str]) -> list[dict[str, str]]:
    """``--volume NAME:PATH[:ro|:rw]`` as volume mounts."""
    mounts = []
    for value in values:
        parts = value.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise UsageError(f"--volume {value!r}: expected NAME:/PATH or NAME:/PATH:ro")
        mode = parts[2] if len(parts) == 3 else "rw"
        if mode not in ("ro", "rw"):
            raise UsageError(f"--volume {value!r}: the mode is 'ro' or 'rw', not {mode!r}")
        mounts.append({"name": parts[0], "path": parts[1], "mode": mode})
    return mounts


def _command_timeout(timeout: float, command_timeout: float | None) -> float:
    """``--command-timeout``, checked against ``--timeout`` (its default)."""
    check_positive(timeout, "--timeout")
    check_positive(command_timeout, "--command-timeout")
    if command_timeout is None:
        return timeout
    if command_timeout > timeout:
        raise UsageError("--command-timeout cannot exceed --timeout (the sandbox's lifetime)")
    return command_timeout


def _environment(env: dict[str, str], secret_env: list[str] | None) -> dict[str, Any]:
    """``--env`` values, and ``--secret-env`` references to stored secrets."""
    environment: dict[str, Any] = {**env}
    for var, name in pairs(secret_env, "--secret-env").items():
        environment[var] = {"secret": name}
    return environment


def _network(
    allow: list[str] | None, resolve: list[str] | None, full: bool
) -> Literal["none", "full"] | dict[str, Any]:
    if full:
        if allow or resolve:
            raise UsageError("--full-network gives everything: leave out --allow and --resolve")
        return "full"
    if resolve and not allow:
        raise UsageError("--resolve pins names for --allow rules; give at least one --allow")
    if not allow:
        return "none"
    return {"allow": allow, "resolve": pairs(resolve, "--resolve")}


def _open(
    provider: str | None,
    session: str | None,
    force: bool,
    workdir: str,
    create: dict[str, Any],
    config: dict[str, Any],
) -> tuple[Sandbox, Session | None]:
    """A fresh sandbox, or one attached to ``session``; and that session. ``create`` holds
    the sandbox's lifetime, environment, network and resources; ``config`` the provider's
    settings."""
    from ..sdk import Sandbox, Session

    try:
        if session is not None:
            attached_to = Session.connect(session)
            return attached_to.sandbox(provider, force=force, **create, **config), attached_to
        return Sandbox.create(provider, workdir=workdir, **create, **config), None
    except SandlotError as exc:
        raise sandlot_failure(exc) from None


def _run_in(
    sandbox: Sandbox,
    command: str | list[str],
    workdir: str,
    timeout: float,
    stdin: bool,
    as_json: bool,
) -> int:
    """Make the working folder, then run the command; its exit code."""
    try:
        if workdir != "/workspace":
            try:
                sandbox.files.make_dir(workdir)
            except SandlotError as exc:
                raise UsageError(f"--workdir {workdir}: {exc}") from None
        return stream(sandbox, command, timeout=timeout, forward_stdin=stdin, as_json=as_json)
    except SandlotError as exc:
        raise sandlot_failure(exc) from None


def _close(sandbox: Sandbox, attached_to: Session | None) -> None:
    """Detach from the session (which saves the workspace), or kill the fresh sandbox."""
    try:
        if attached_to is not None:
            attached_to.detach(sandbox)  # saves the workspace, then destroys it
        else:
            best_effort(sandbox.kill)
    except Exception as exc:
        if attached_to is not None:
            note(f"detaching from session {attached_to.id}: {exc}")
        # else already gone; the owner's exit and gc clean up the rest


# -- exec -------------------------------------------------------------------------------------


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
    stdin: StdinOption = False,
    json_: ResultJsonOption = False,
) -> None:
    """Run a command in a running sandbox (also one another process created).

    Options go before ID. Example: sandlot exec sb-0123456789ab -- ls -la
    """
    words = list(cmd or [])
    if words and words[0] == "--":  # after ID the parser no longer eats the separator
        words = words[1:]
    if words and words[0].startswith("-") and len(words[0]) > 1:
        raise UsageError(
            f"{words[0]!r} looks like an option: options go before the sandbox id "
            "(sandlot exec [OPTIONS] ID -- CMD...)"
        )
    command = parse_command(words, "sandlot exec [OPTIONS] ID -- CMD...")
    env_map = parse_env(env)
    check_positive(timeout, "--timeout")
    if workdir is not None and not workdir.startswith("/"):
        raise UsageError(f"--workdir must be an absolute path, got {workdir!r}")

    from ..sdk import Sandbox

    install_signal_handlers()
    try:
        sandbox = Sandbox.connect(sandbox_id)
    except SandlotError as exc:
        raise sandlot_failure(exc) from None
    try:
        code = stream(
            sandbox,
            command,
            timeout=timeout,
            env=env_map,
            cwd=workdir,
            forward_stdin=stdin,
            as_json=json_,
        )
    except SandlotError as exc:
        raise sandlot_failure(exc) from None
    finally:
        try:
            sandbox.close()
        except Exception:
            pass
    raise typer.Exit(code)


# -- streaming a command ----------------------------------------------------------------------


def parse_command(words: list[str] | None, usage: str) -> str | list[str]:
    """One word runs through the sandbox's shell, several run as argv."""
    words = list(words or [])
    if not words:
        raise UsageError(f"no command given (usage: {usage})")
    if len(words) == 1:
        if not words[0].strip():
            raise UsageError("command is empty")
        return words[0]  # one word: through the sandbox's shell
    if not words[0]:
        raise UsageError("command is empty")
    return words


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


def stream(
    sandbox: Any,
    command: str | list[str],
    *,
    timeout: float | None,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    forward_stdin: bool = False,
    as_json: bool = False,
) -> int:
    """Run ``command`` with its output streamed to our stdout/stderr (``as_json``: kept, and
    printed with how it ended as JSON at the end); its exit code."""
    import threading

    from ..errors import CommandTimeoutError

    # A signal that lands while the command starts would lose its handle (the command would
    # keep running, unseen): hold signals back until we have the handle, then act on them.
    # The try begins first: a signal may also land as the held handlers are put back.
    handle = None
    try:
        with HeldSignals() as held:
            shown: dict[str, Any] = (
                {}  # kept up to the SDK's cap, printed at the end
                if as_json
                else {
                    "on_stdout": _Writer(sys.stdout),
                    "on_stderr": _Writer(sys.stderr),
                    "max_output_bytes": 0,  # streamed, not kept
                }
            )
            handle = sandbox.commands.run(
                command,
                background=True,  # a handle, so that we can kill the command if interrupted
                timeout=timeout,
                env=env or None,
                cwd=cwd,
                **shown,
            )
        held.replay()
        if forward_stdin:
            threading.Thread(target=_pump_stdin, args=(handle,), daemon=True).start()
        else:
            handle.close_stdin()
        result = handle.wait()
    except CommandTimeoutError as exc:
        if as_json:
            print_json(_outcome(None, None, exc.stdout, exc.stderr, timed_out=True))
        error(f"{exc} (exit {EXIT_TIMEOUT})")
        return EXIT_TIMEOUT
    except BrokenPipeError:  # whoever read our output went away: stop the command, as SIGPIPE
        _abandon(handle)
        return EXIT_BROKEN_PIPE
    except BaseException:
        _abandon(handle)
        raise
    if as_json:
        print_json(
            {
                **_outcome(result.exit_code, result.signal, result.stdout, result.stderr),
                "truncated": result.truncated,
            }
        )
    if result.signal:
        return 128 + int(result.signal)
    code = int(result.exit_code)
    return 128 - code if code < 0 else code & 0xFF


def _outcome(
    exit_code: int | None, signal: int | None, stdout: str, stderr: str, *, timed_out: bool = False
) -> dict[str, Any]:
    """What ``--json`` prints: how the command ended, and its output (decoded as UTF-8)."""
    return {
        "exit_code": exit_code,
        "signal": signal,
        "timed_out": timed_out,
        "stdout": stdout,
        "stderr": stderr,
        "truncated": False,
    }


def _abandon(handle: Any) -> None:
    """Kill a command we stop waiting for, and collect its end (so nothing is left to log)."""
    if handle is None:
        return  # it never started
    try:
        best_effort(lambda: (handle.kill(), handle.wait()))
    except BaseException:
        pass
