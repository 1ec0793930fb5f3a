"""``sandlot scratch``: exploratory workspaces (see :mod:`sandlot.scratch`).

``new SLUG`` makes ``<root>/<parent>/<YYYY-MM-DD>_<slug>/`` with its README (and the
parent's README and ``.gitignore`` when absent) and a durable session for it; prints the
folder's path on stdout (so ``cd "$(sandlot scratch new probe)"`` works), what it wrote on
stderr. A slug already made that day exits 1; a bad slug, date or parent exits 2.
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
