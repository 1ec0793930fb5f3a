"""``sandlot volume``: named volumes (docs/volumes.md): this host's, or with ``SANDLOT_URL``
set the server's, for the API key's tenant."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ._common import console, print_json

volume_app = typer.Typer(
    help="Named volumes: folders that outlive sandboxes, mounted with `sandlot run --volume "
    "NAME:/path`. With SANDLOT_URL set, the server's.",
    no_args_is_help=True,
)

NameArgument = Annotated[
    str,
    typer.Argument(metavar="NAME", help="a-z, 0-9, '.', '_', '-'; starts with a letter or digit."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _size(mb: int | None) -> str:
    if mb is None:
        return "uncapped"
    return f"{mb // 1024} GiB" if mb % 1024 == 0 else f"{mb} MiB"


def _used(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n} {unit}"
        n //= 1024
    return f"{n} TiB"


@volume_app.command("create")
def create(
    name: NameArgument,
    size: Annotated[
        str | None,
        typer.Option(
            "--size",
            help="Its size cap, e.g. 512M, 20G (default 10G where the host can cap it; "
            "refused where it cannot).",
        ),
    ] = None,
    json_: JsonOption = False,
) -> None:
    """Create an empty volume."""
    from ..sdk.volumes import volumes

    info = volumes.create(name, size=size)
    if json_:
        print_json(info.model_dump(mode="json"))
        return
    note = "" if info.enforced else " (size not enforced on this host)"
    typer.echo(f"created volume {info.name}: {_size(info.size_mb)}{note}", err=True)


@volume_app.command("ls")
def list_volumes(json_: JsonOption = False) -> None:
    """The volumes: size, bytes used, how many live sandboxes mount each."""
    from ..sdk.volumes import volumes

    infos = volumes.list()
    if json_:
        print_json([info.model_dump(mode="json") for info in infos])
        return
    if not infos:
        console().print("no volumes", style="dim")
        return
    from rich.table import Table

    table = Table()
    for column in ("name", "size", "used", "mounted by", "created"):
        table.add_column(column, no_wrap=True)
    for info in infos:
        table.add_row(
            info.name,
            _size(info.size_mb),
            _used(info.used_bytes),
            str(len(info.mounted_by)),
            info.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
        )
    console().print(table)


@volume_app.command("show")
def show(name: NameArgument, json_: JsonOption = False) -> None:
    """One volume, with the sandboxes that mount it."""
    from ..sdk.volumes import volumes

    info = volumes.get(name)
    if json_:
        print_json(info.model_dump(mode="json"))
        return
    rows: list[tuple[str, Any]] = [
        ("name", info.name),
        ("size", _size(info.size_mb) + ("" if info.enforced else " (not enforced)")),
        ("used", _used(info.used_bytes)),
        ("created", info.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S")),
        ("mounted by", ", ".join(info.mounted_by) or "-"),
    ]
    for key, value in rows:
        typer.echo(f"{key:<11} {value}")


@volume_app.command("rm")
def remove(
    name: NameArgument,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Remove it even while sandboxes mount it (they keep its files until they end).",
        ),
    ] = False,
) -> None:
    """Delete a volume and its files (refused while a sandbox mounts it, unless --force)."""
    from ..sdk.volumes import volumes

    volumes.remove(name, force=force)
    typer.echo(f"removed volume {name}", err=True)


StoreArgument = Annotated[
    str,
    typer.Argument(
        metavar="STORE",
        help="A workspace store: 'local' or s3://bucket/prefix (docs/workspaces.md).",
    ),
]


@volume_app.command("sync")
def sync(name: NameArgument, store: StoreArgument, json_: JsonOption = False) -> None:
    """Save the volume's files to a workspace store (incremental; this host only)."""
    from ..sdk.volumes import volumes

    info = volumes.sync(name, store)
    if json_:
        print_json(info.model_dump(mode="json"))
        return
    typer.echo(f"synced volume {name} to {store} (checkpoint {info.number})", err=True)


@volume_app.command("seed")
def seed(name: NameArgument, store: StoreArgument) -> None:
    """Fill the volume with its latest checkpoint in a workspace store (refused while a
    sandbox mounts it; this host only)."""
    from ..sdk.volumes import volumes

    info = volumes.seed(name, store)
    if info is None:
        typer.echo(f"{store} holds no checkpoint of volume {name}: nothing changed", err=True)
        return
    typer.echo(f"seeded volume {name} from {store} (checkpoint {info.number})", err=True)
