"""The ``sandlot`` app: every command group registered, and ``main``, which turns what the
commands raise into one red line and an exit code (see :mod:`sandlot.cli`)."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer

from ..errors import InvalidArgumentError, NotFoundError, SandlotError
from ._common import (
    EXIT_BROKEN_PIPE,
    EXIT_SANDLOT_FAILED,
    EXIT_USAGE,
    Failed,
    Signalled,
    UsageError,
    error,
    note,
)

# Every top-level command and group, in `sandlot --help` order: (name, module, attribute,
# kind, options). A command line naming one of them builds an app of that one only, so a
# `sandlot run` neither imports the other groups' modules nor lets typer read the
# signatures of all 66 commands (~40 ms); `--help` and anything unknown get the whole app.
REGISTRY: tuple[tuple[str, str, str, str, dict[str, Any]], ...] = (
    ("run", "run", "run", "command", {"command_context": True}),
    ("exec", "run", "exec_", "command", {"command_context": True}),
    ("shell", "shell", "shell", "command", {}),
    ("run-code", "code", "run_code", "command", {}),
    ("repl", "code", "repl", "command", {}),
    ("_hold", "code", "hold", "command", {"hidden": True}),
    ("providers", "sandboxes", "providers", "command", {}),
    ("ls", "sandboxes", "ls", "command", {}),
    ("kill", "sandboxes", "kill", "command", {}),
    ("gc", "sandboxes", "gc", "command", {}),
    ("create", "create", "create", "command", {}),
    ("cp", "cp", "cp", "command", {}),
    ("logs", "logs", "logs", "command", {}),
    ("relay", "relay", "relay_app", "group", {}),
    ("keys", "server", "keys_app", "group", {}),
    ("remote", "remote", "remote_app", "group", {}),
    ("secrets", "secrets", "secrets_app", "group", {}),
    ("pool", "pool", "pool_app", "group", {}),
    ("template", "templates", "template_app", "group", {}),
    ("sessions", "sessions", "sessions_app", "group", {}),
    ("scratch", "scratch", "scratch_app", "group", {}),
    ("serve", "server", "serve", "command", {}),
    ("mcp", "mcp", "mcp", "command", {}),
    ("completion", "completion", "completion", "command", {}),
)
NAMES = frozenset(entry[0] for entry in REGISTRY)
COMPLETE_VAR = "_SANDLOT_COMPLETE"  # set by the script `sandlot completion SHELL` prints


def build_app(only: str | None = None) -> typer.Typer:
    """The ``sandlot`` app: every command, or only the one named ``only``."""
    import importlib

    built = typer.Typer(
        name="sandlot",
        help="Disposable, isolated sandboxes for AI agents.",
        add_completion=False,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    built.callback()(_root)
    for name, module_name, attribute, kind, options in REGISTRY:
        if only is not None and name != only:
            continue
        module = importlib.import_module(f"{__package__}.{module_name}")
        target = getattr(module, attribute)
        if kind == "group":
            built.add_typer(target, name=name)
            continue
        context = module.COMMAND_CONTEXT if "command_context" in options else None
        built.command(name=name, hidden=options.get("hidden", False), context_settings=context)(
            target
        )
    return built


def _show_version(value: bool) -> None:
    if value:
        from .. import __version__

        sys.stdout.write(f"sandlot {__version__}\n")
        raise typer.Exit()


def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            help="Print the version and exit.",
            is_eager=True,
            callback=_show_version,
        ),
    ] = False,
) -> None:
    """Disposable, isolated sandboxes for AI agents."""


def _invoked(argv: list[str]) -> str | None:
    """The command a command line names, if it is one of ours and comes first."""
    return argv[0] if argv and argv[0] in NAMES else None


def __getattr__(name: str) -> Any:
    if name == "app":  # the whole app, for whoever drives it (tests, completion, docs)
        return build_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _click_exceptions() -> Any:
    """click's exception classes, as the installed typer uses them (newer typers vendor click)."""
    import importlib

    try:
        return importlib.import_module("typer._click.exceptions")
    except ImportError:
        return importlib.import_module("click.exceptions")


def _run_app(argv: list[str] | None) -> int:
    """Run the app; its exit code, for every way a command can end."""
    ce = _click_exceptions()
    no_args_is_help = getattr(ce, "NoArgsIsHelpError", ())
    aborted = (getattr(ce, "Abort", typer.Abort), typer.Abort, KeyboardInterrupt)
    if os.environ.get(COMPLETE_VAR):  # the shell asks for completions (`sandlot completion`)
        from typer.completion import completion_init

        completion_init()
    try:
        args = sys.argv[1:] if argv is None else argv
        # As a group even when it holds one command (typer would make that the root).
        group = typer.main.get_group(build_app(_invoked(args)))
        result = group(args=args, prog_name="sandlot", standalone_mode=False)
    except UsageError as exc:
        error(str(exc))
        return EXIT_USAGE
    except Failed as exc:
        error(str(exc.error))
        return EXIT_SANDLOT_FAILED
    except SandlotError as exc:
        error(str(exc))
        return EXIT_USAGE if isinstance(exc, (InvalidArgumentError, NotFoundError)) else 1
    except Signalled as exc:
        return 128 + exc.signum
    except no_args_is_help as exc:  # bare `sandlot`: typer has printed the help already
        message = exc.format_message()
        if message.strip():
            sys.stdout.write(message + "\n")
        return EXIT_USAGE
    except ce.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        error(exc.format_message() + hint)
        return EXIT_USAGE
    except ce.ClickException as exc:
        error(exc.format_message())
        return int(exc.exit_code)
    except aborted:
        return 130
    except BrokenPipeError:
        return EXIT_BROKEN_PIPE
    return result if isinstance(result, int) else 0


def _show_warning(message: Any, category: Any, *_args: Any, **_kwargs: Any) -> None:
    """Python warnings (e.g. the process provider's "no isolation") as one yellow line."""
    note(f"warning: {message}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``sandlot``)."""
    import warnings

    warnings.showwarning = _show_warning
    try:
        code = _run_app(argv)
    except Exception as exc:  # a bug: one line, the traceback only when asked for
        if os.environ.get("SANDLOT_DEBUG"):
            raise
        error(f"internal error: {type(exc).__name__}: {exc} (set SANDLOT_DEBUG=1 for a traceback)")
        code = 1
    if code == EXIT_BROKEN_PIPE:
        # Our reader went away: do not let the interpreter complain when it flushes stdout.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
    sys.exit(code)
