"""``sandlot mcp``: sandlot as an MCP server over stdio, for MCP clients (Claude Desktop, IDE
agents, the ``mcp`` package's client) that start it as a subprocess. See docs/mcp.md.

The ``mcp`` package (the ``sandlot[mcp]`` extra) is imported only here. Nothing but the
protocol is written to stdout.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import InvalidArgumentError
from .run import ProviderOption


def mcp(
    provider: ProviderOption = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            envvar="SANDLOT_URL",
            help="A sandlot server to make the sandboxes on (default: this host).",
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", envvar="SANDLOT_API_KEY", help="The server's API key."),
    ] = None,
    lifetime: Annotated[
        float,
        typer.Option("--lifetime", min=1, max=86400, help="Default sandbox lifetime, seconds."),
    ] = 3600.0,
    idle_timeout: Annotated[
        float,
        typer.Option(
            "--idle-timeout", min=1, max=86400, help="Default seconds unused before a sandbox ends."
        ),
    ] = 600.0,
) -> None:
    """Serve MCP over stdin/stdout: tools to create sandboxes, run commands and Python, move
    files and expose ports. Sandboxes made here are killed when the client disconnects."""
    try:
        from ..mcp import stdio
        from ..mcp.book import Defaults
    except ModuleNotFoundError as exc:
        if exc.name not in ("mcp", "mcp_types") and not str(exc.name).startswith("mcp."):
            raise
        raise InvalidArgumentError(
            "the mcp package is not installed: pip install 'sandlot[mcp]'"
        ) from None
    client = None
    if url:
        from ..remote import Client

        client = Client(url=url, api_key=api_key)
    stdio.run(Defaults(provider, lifetime, idle_timeout), client)
