"""``sandlot scratch``: exploratory workspaces (see :mod:`sandlot.scratch`).

``new SLUG`` makes ``<root>/<parent>/<YYYY-MM-DD>_<slug>/`` with its README (and the
parent's README and ``.gitignore`` when absent) and a durable session for it; prints the
folder's path on stdout (so ``cd "$(sandlot scratch new probe)"`` works), what it wrote on
stderr. A slug already made that day exits 1; a bad slug, date or parent exits 2. ``ls``
lists the folders with their title and session.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from ._common import note, print_json

scratch_app = typer.Typer(
    help="Exploratory workspaces: dated scratch folders with a README and a session.",
    no_args_is_help=True,
)


@scratch_app.command("new")
def new(
    slug: Annotated[str, typer.Argument(help="Lowercase letters, digits and dashes.")],
    title: Annotated[
        str | None, typer.Option("--title", "-t", help="The README's title (default: the slug).")
    ] = None,
    parent_dir: Annotated[
        str,
        typer.Option("--parent-dir", help="Where the folder goes, from the repository root."),
    ] = "notebooks/_sandbox",
    day: Annotated[
        str | None,
        typer.Option("--date", metavar="YYYY-MM-DD", help="The date in its name (default: today)."),
    ] = None,
    no_session: Annotated[
        bool, typer.Option("--no-session", help="Do not make a sandlot session for it.")
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print its record as JSON.")] = False,
) -> None:
    """Make a dated scratch folder with its README and a durable session; prints its path."""
    from .. import scratch

    made = scratch.new(slug, title=title, parent_dir=parent_dir, day=day, session=not no_session)
    if json_:
        print_json(made.to_json())
        return
    shown = os.path.relpath(made.path)
    sys.stdout.write(f"{shown if not shown.startswith('..') else made.path}\n")
    sys.stdout.flush()
    wrote = ", ".join(os.path.relpath(p, made.path.parent) for p in made.created)
    note(f"wrote {wrote}", style="dim")
    if made.session_id is not None:
        note(f"session {made.session_id} (sandlot sessions show {made.session_id})", style="dim")
    note(f'first cell: from sandlot.scratch import setup_notebook; setup_notebook("{slug}")', "dim")


@scratch_app.command("ls")
def ls(
    parent_dir: Annotated[
        str,
        typer.Option("--parent-dir", help="Where the folders are, from the repository root."),
    ] = "notebooks/_sandbox",
    json_: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Scratch folders, oldest first, with their title and session."""
    from .. import scratch

    found = scratch.folders(parent_dir=parent_dir)
    if json_:
        print_json([made.to_json() for made in found])
        return
    if not found:
        note("no scratch folders", style="dim")
        return
    from rich.markup import escape
    from rich.table import Table

    from ._common import console

    table = Table()
    for column in ("folder", "session", "title"):
        table.add_column(column, no_wrap=column != "title")
    for made in found:
        table.add_row(escape(made.name), made.session_id or "-", escape(made.title))
    console().print(table)
