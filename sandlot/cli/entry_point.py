"""The ``sandlot`` app: every command group registered, and ``main``, which turns what the
commands raise into one red line and an exit code (see :mod:`sandlot.cli`)."""

from __future__ import annotations

import os
import sys
from typing import Any

import typer

from ..errors import InvalidArgumentError, NotFoundError, SandlotError
from . import code, run, sandboxes
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
from .pool import pool_app
from .relay import relay_app
from .remote import remote_app
from .secrets import secrets_app
from .server import keys_app, serve
from .sessions import sessions_app

app = typer.Typer(
    name="sandlot",
    help="Disposable, isolated sandboxes for AI agents.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# In this order in `sandlot --help`.
app.command(context_settings=run.COMMAND_CONTEXT)(run.run)
app.command(name="exec", context_settings=run.COMMAND_CONTEXT)(run.exec_)
app.command(name="run-code")(code.run_code)
app.command()(code.repl)
app.command(name="_hold", hidden=True)(code.hold)
app.command()(sandboxes.providers)
app.command(name="ls")(sandboxes.ls)
app.command()(sandboxes.kill)
app.command()(sandboxes.gc)
app.add_typer(relay_app, name="relay")
app.add_typer(keys_app, name="keys")
app.add_typer(remote_app, name="remote")
app.add_typer(secrets_app, name="secrets")
app.add_typer(pool_app, name="pool")
app.add_typer(sessions_app, name="sessions")
app.command(name="serve")(serve)


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
    try:
        result = app(args=argv, prog_name="sandlot", standalone_mode=False)
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
