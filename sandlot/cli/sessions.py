"""``sandlot sessions``: durable sessions (see docs/sessions.md).

``create`` makes one, ``ls`` lists them, ``show`` gives one's settings, sandbox and lock,
``events`` prints its transcript, ``checkpoint`` saves its attached sandbox's workspace now,
``rm`` deletes it with its workspace and transcript. ``sandlot run --session ID -- CMD``
runs a command in one. Embedded (this host's state folder), or on the server that
SANDLOT_URL names.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from ._common import pairs, print_json

if TYPE_CHECKING:
    from ..models import SessionEvent

sessions_app = typer.Typer(
    help="Durable sessions: a workspace and a transcript that outlive sandboxes.",
    no_args_is_help=True,
)


def _meta(values: list[str] | None) -> dict[str, str]:
    return pairs(values, "--meta")


@sessions_app.command("create")
def create(
    meta: Annotated[
        list[str] | None, typer.Option("--meta", "-m", metavar="K=V", help="Metadata.")
    ] = None,
    workspace_store: Annotated[
        str,
        typer.Option("--workspace-store", help='"local", or "s3://bucket/prefix".'),
    ] = "local",
    idle_timeout: Annotated[
        float | None,
        typer.Option("--idle-timeout", help="Stop its sandbox after this many idle seconds."),
    ] = None,
    checkpoint_every: Annotated[
        float | None,
        typer.Option(
            "--checkpoint-every", help="Seconds between checkpoints while attached (0: never)."
        ),
    ] = 300.0,
    delete_after: Annotated[
        float | None,
        typer.Option("--delete-after", help="Delete the session this many seconds from now."),
    ] = None,
    json_: Annotated[
        bool, typer.Option("--json", help="Print its record (as `show`), not only its id.")
    ] = False,
) -> None:
    """Create a session; prints its id."""
    from ..sdk import Session

    session = Session.create(
        _meta(meta),
        workspace_store=workspace_store,
        idle_timeout=idle_timeout,
        checkpoint_every=checkpoint_every or None,
        delete_after=delete_after,
    )
    if json_:
        print_json(session.info.model_dump(mode="json"))
        return
    sys.stdout.write(session.id + "\n")


@sessions_app.command("ls")
def ls(
    json_: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    meta: Annotated[
        list[str] | None,
        typer.Option("--meta", "-m", metavar="K=V", help="Only sessions with this metadata."),
    ] = None,
) -> None:
    """Sessions, newest first."""
    from ..sdk import Session

    found = Session.list(_meta(meta) or None)
    if json_:
        print_json([s.model_dump(mode="json") for s in found])
        return
    if not found:
        from rich.console import Console

        Console(emoji=False).print("no sessions", style="dim")
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table()
    for column in ("id", "created", "workspace", "sandbox", "checkpoint", "metadata"):
        table.add_column(column, no_wrap=column != "metadata")
    for s in found:
        table.add_row(
            s.id,
            s.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
            escape(s.workspace),
            s.sandbox_id or "-",
            "-" if s.checkpoint is None else str(s.checkpoint),
            escape(", ".join(f"{k}={v}" for k, v in sorted(s.metadata.items()))),
        )
    Console(emoji=False).print(table)


@sessions_app.command("show")
def show(session_id: Annotated[str, typer.Argument(help="The session's id.")]) -> None:
    """One session's settings, sandbox, lock and latest checkpoint (JSON)."""
    from ..sdk import Session

    print_json(Session.connect(session_id).info.model_dump(mode="json"))


@sessions_app.command("events")
def events(
    session_id: Annotated[str, typer.Argument(help="The session's id.")],
    after: Annotated[int, typer.Option("--after", help="Only events after this seq.")] = 0,
    limit: Annotated[int, typer.Option("--limit", help="At most this many.")] = 1000,
    json_: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """The session's transcript, oldest first: output as it was printed, other events as
    one line each."""
    from ..sdk import Session

    found = Session.connect(session_id).events(after, limit)
    out = sys.stdout
    for event in found:
        if json_:
            out.write(event_json(event) + "\n")
        elif event.text is not None:
            out.write(f"{event.seq:>6} {event.kind:<10} {event.text.rstrip(chr(10))}\n")
        else:
            out.write(f"{event.seq:>6} {event.kind:<10} {json.dumps(event.data)}\n")
    out.flush()


def event_json(event: SessionEvent) -> str:
    """One transcript event as a line of JSON (``events --json``, ``sandlot logs --json``)."""
    return json.dumps(event.model_dump(mode="json", exclude={"raw"}))


@sessions_app.command("checkpoint")
def checkpoint(session_id: Annotated[str, typer.Argument(help="The session's id.")]) -> None:
    """Save the attached sandbox's workspace now."""
    from ..sdk import Session

    info = Session.connect(session_id).checkpoint()
    print_json(info.model_dump(mode="json"))


@sessions_app.command("rm")
def rm(
    session_ids: Annotated[list[str], typer.Argument(help="The sessions' ids.")],
) -> None:
    """Delete sessions: their sandbox, workspace checkpoints and transcript."""
    from ..sdk import Session

    for session_id in session_ids:
        Session.connect(session_id).delete()
        sys.stdout.write(f"deleted {session_id}\n")
