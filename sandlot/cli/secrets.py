"""``sandlot secrets``: store, list and remove secrets (this host's store, or with
``SANDLOT_URL`` set the server's, for the API key's tenant).

A value is read from standard input, never from the command line (where ``ps`` and the
shell's history would show it). Nothing here prints a value.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer

from ._common import console, error, print_json, run

T = TypeVar("T")

secrets_app = typer.Typer(
    help='Secrets, stored encrypted and used by name ({"secret": "NAME"}); values are never '
    "shown. With SANDLOT_URL set, the server's.",
    no_args_is_help=True,
)

NameArgument = Annotated[
    str,
    typer.Argument(
        metavar="NAME", help="Letters, digits, '_', '.', '-'; starts with a letter or '_'."
    ),
]


async def _with_store(action: Callable[[Any], Awaitable[T]]) -> T:
    """``action(store)`` on this host's store, or on the server's when SANDLOT_URL is set."""
    from ..remote.secrets import RemoteSecrets
    from ..secrets.store import secret_store

    if os.environ.get("SANDLOT_URL"):
        store = RemoteSecrets()
        try:
            return await action(store)
        finally:
            await store.client.aclose()
    return await action(secret_store())


def _read_value(name: str) -> str:
    from ..errors import InvalidArgumentError

    if sys.stdin is None:
        raise InvalidArgumentError("no standard input to read the value from")
    if sys.stdin.isatty():
        import getpass

        first = getpass.getpass(f"value of {name}: ")
        if getpass.getpass("again: ") != first:
            raise InvalidArgumentError("the two values differ: nothing was stored")
        value = first
    else:
        raw = sys.stdin.buffer.read()
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgumentError(
                "the value on standard input is not UTF-8 text: nothing was stored"
            ) from None
        if value.endswith("\r\n"):
            value = value[:-2]
        elif value.endswith("\n"):
            value = value[:-1]
    if not value:
        raise InvalidArgumentError(
            f"the value is empty: nothing was stored (pipe it in, e.g. "
            f'printf %s "$VALUE" | sandlot secrets set {name})'
        )
    return value


@secrets_app.command("set")
def set_secret(name: NameArgument) -> None:
    """Store a secret, reading its value from standard input: typed twice, hidden, at a
    terminal; otherwise all of it, less one trailing newline. Replaces an existing value."""
    from ..secrets.store import check_name

    check_name(name)
    value = _read_value(name)

    async def store_it(store: Any) -> None:
        await store.set(name, value)

    run(_with_store(store_it))
    typer.echo(f"stored secret {name}", err=True)


@secrets_app.command("ls")
def list_secrets(
    json_: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The stored secrets: names and dates, never values."""

    async def list_them(store: Any) -> Any:
        return await store.list()

    infos = run(_with_store(list_them))
    if json_:
        print_json([info.model_dump(mode="json") for info in infos])
        return
    from rich.table import Table

    if not infos:
        console().print("no secrets", style="dim")
        return
    table = Table()
    table.add_column("name", no_wrap=True)
    table.add_column("created", no_wrap=True)
    table.add_column("updated", no_wrap=True)
    for info in infos:
        table.add_row(
            info.name,
            info.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
            info.updated_at.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
        )
    console().print(table)


@secrets_app.command("rm")
def remove_secret(name: NameArgument) -> None:
    """Remove a secret (exit code 1 when there is none of that name)."""
    from ..secrets.store import check_name

    check_name(name)

    async def delete_it(store: Any) -> bool:
        deleted: bool = await store.delete(name)
        return deleted

    if not run(_with_store(delete_it)):
        error(f"no secret {name!r}")
        raise typer.Exit(1)
    typer.echo(f"removed secret {name}", err=True)
