"""``sandlot providers``, ``ls``, ``kill`` and ``gc``: what can run here, what runs, and
removing it."""

from __future__ import annotations

import sys
from datetime import UTC
from typing import Annotated

import typer

from ..errors import InvalidArgumentError, NotFoundError, SandlotError
from ._common import EXIT_USAGE, JsonOption, console, error, pairs, print_json, run


def providers(
    json_: JsonOption = False,
) -> None:
    """Every provider, whether it is usable on this host, and if not, why."""
    from ..models import ProviderInfo
    from ..providers import DEFAULT, provider_class, provider_names
    from ..store import default_home

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
        print_json(
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
    console().print(table)


def ls(
    json_: JsonOption = False,
    meta: Annotated[
        list[str] | None,
        typer.Option("--meta", "-m", metavar="K=V", help="Only sandboxes with this metadata."),
    ] = None,
) -> None:
    """Running sandboxes on this host (from every process), or on the server that
    SANDLOT_URL names."""
    wanted = pairs(meta, "--meta")
    from ..sdk import Sandbox

    infos = Sandbox.list(wanted or None)
    if json_:
        print_json([info.model_dump(mode="json", exclude={"handle"}) for info in infos])
        return
    if not infos:
        console().print("no running sandboxes", style="dim")
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
    console().print(table)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def kill(
    sandbox_ids: Annotated[
        list[str], typer.Argument(metavar="ID...", help="Sandbox ids (see `sandlot ls`).")
    ],
) -> None:
    """Destroy sandboxes and everything running in them."""
    from ..manager import Manager
    from ..sdk.backend import backend_for

    async def kill_all() -> int:
        backend = backend_for(None)  # the server's with SANDLOT_URL, else this host's
        worst = 0
        try:
            for sandbox_id in sandbox_ids:
                try:
                    await backend.kill(sandbox_id)
                except SandlotError as exc:
                    error(str(exc))
                    bad = isinstance(exc, (InvalidArgumentError, NotFoundError))
                    worst = max(worst, EXIT_USAGE if bad else 1)
                else:
                    sys.stdout.write(f"killed {sandbox_id}\n")
                    sys.stdout.flush()
        finally:
            if isinstance(backend, Manager):
                await backend.close()
        return worst

    code = run(kill_all())
    raise typer.Exit(code)


def gc(
    json_: JsonOption = False,
) -> None:
    """Remove what crashed processes left behind: dead or expired sandboxes, orphans."""
    from ..sdk import Sandbox

    report = Sandbox.gc()
    if json_:
        print_json({"removed": report.removed, "orphans": report.orphans})
        return
    lines = [f"removed {i} (owner gone or expired)" for i in report.removed]
    lines += [f"removed orphan {i} (resources without a record)" for i in report.orphans]
    sys.stdout.write("\n".join(lines) + "\n" if lines else "nothing to remove\n")
    sys.stdout.flush()
