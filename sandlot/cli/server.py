"""``sandlot serve`` and ``sandlot keys``: run the server, manage its API keys.

FastAPI, uvicorn and SQLAlchemy are imported inside the commands, so the rest of the CLI
starts as fast as before.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from ..errors import InvalidArgumentError
from ._common import JsonOption, print_json

keys_app = typer.Typer(
    help="API keys of a sandlot server (stored hashed; a token is shown once).",
    no_args_is_help=True,
)

DatabaseOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="SANDLOT_DATABASE_URL",
        help="sqlite:///PATH or postgresql://... (default: SQLite in the state folder).",
    ),
]


def _database(url: str | None) -> Any:
    """The store, migrated; a clear error if it cannot be opened."""
    from sqlalchemy.exc import SQLAlchemyError

    from ..errors import SandlotError
    from ..store import default_home
    from ..store.database import Database, sqlite_url
    from ..store.keys import LOCAL_TENANT, Keys

    if url is None:
        home = default_home()
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        url = sqlite_url(home)
    db = Database(url)
    try:
        db.migrate()
        Keys(db).ensure_tenant(LOCAL_TENANT)  # so `--tenant local` works before a first start
    except (SQLAlchemyError, OSError) as exc:
        db.close()
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise SandlotError(f"cannot open the database {db.url}: {reason}") from None
    return db


AllowUnisolatedOption = Annotated[
    bool,
    typer.Option(
        "--allow-unisolated", help="Let callers use the 'process' provider (no isolation)."
    ),
]
EgressPrivateOption = Annotated[
    bool,
    typer.Option(
        "--egress-private",
        help="Let tenants' network rules name private, loopback and link-local addresses.",
    ),
]
MaxLogBytesOption = Annotated[
    int,
    typer.Option("--max-log-bytes", min=0, help="Output logged per execution."),
]
RetentionOption = Annotated[
    float,
    typer.Option("--retention-days", min=1e-5, help="Keep ended sessions' logs this long."),
]
TenantLogBytesOption = Annotated[
    int,
    typer.Option(
        "--tenant-log-bytes",
        envvar="SANDLOT_TENANT_LOG_BYTES",
        min=0,
        help="Stored (compressed) log bytes per tenant; beyond them, the logs of its ended "
        "sessions are dropped, oldest first.",
    ),
]
KillOnExitOption = Annotated[
    bool,
    typer.Option(
        "--kill-on-exit",
        help="Kill the sandboxes when the server stops (default: they run on until their "
        "deadline, and the next start adopts them).",
    ),
]

AllowBindRootOption = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-bind-root",
        envvar="SANDLOT_ALLOW_BIND_ROOTS",
        help="A host folder beneath which callers may bind host paths into sandboxes "
        "(repeatable; the variable takes several, space-separated). Any tenant may then bind "
        "anything beneath it, read-write included. Default: binds are refused.",
    ),
]

VolumeCountOption = Annotated[
    int,
    typer.Option("--volume-count", min=0, help="Named volumes per tenant (docs/volumes.md)."),
]
VolumeTotalOption = Annotated[
    str,
    typer.Option(
        "--volume-total",
        help="The sizes of a tenant's named volumes together, e.g. 500G or 1T (an uncapped "
        "volume counts as 10G).",
    ),
]
TemplateCountOption = Annotated[
    int,
    typer.Option(
        "--template-count",
        envvar="SANDLOT_TEMPLATE_COUNT",
        min=0,
        help="Templates a tenant may have (docs/server.md#templates).",
    ),
]
TemplateBytesOption = Annotated[
    int,
    typer.Option(
        "--template-bytes",
        envvar="SANDLOT_TEMPLATE_BYTES",
        min=0,
        help="Bytes of templates a tenant may have (the sum of their sizes).",
    ),
]
LocalTemplateBasesOption = Annotated[
    bool,
    typer.Option(
        "--allow-local-template-bases",
        help="Let tenants build templates from this host's docker engine, folders and tar "
        "files (docker:, rootfs:, tar: bases). Default: only host and oci: bases.",
    ),
]

E2BOption = Annotated[
    bool,
    typer.Option(
        "--e2b/--no-e2b",
        help="Serve E2B's API on the same port, for the official e2b SDKs (docs/e2b.md).",
    ),
]

McpOption = Annotated[
    bool,
    typer.Option("--mcp/--no-mcp", help="Serve the MCP tools at /mcp (docs/mcp.md)."),
]


def serve(
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8787,
    database_url: DatabaseOption = None,
    allow_unisolated: AllowUnisolatedOption = False,
    egress_private: EgressPrivateOption = False,
    max_log_bytes: MaxLogBytesOption = 256 * 1024 * 1024,
    retention_days: RetentionOption = 7.0,
    tenant_log_bytes: TenantLogBytesOption = 10 * 1024**3,
    kill_on_exit: KillOnExitOption = False,
    allow_bind_root: AllowBindRootOption = None,
    volume_count: VolumeCountOption = 100,
    volume_total: VolumeTotalOption = "1T",
    template_count: TemplateCountOption = 20,
    template_bytes: TemplateBytesOption = 20 * 1024**3,
    allow_local_template_bases: LocalTemplateBasesOption = False,
    e2b: E2BOption = True,
    mcp: McpOption = True,
) -> None:
    """Run the HTTP API (state in SQLite by default). Binding to anything but loopback
    needs at least one API key (``sandlot keys create``). One server per state folder."""
    from ..store import default_home, owner

    # First of all: a second server on this folder stops here, before it touches anything
    # (the kernel lets go of the lock when this process ends, however it ends).
    home = default_home()
    owner.acquire(home, _address(host, port))
    from ..server import memory

    # Before uvicorn and the app start their threads: see memory.py for the figures.
    memory.tune()
    memory.start_trimmer()

    import uvicorn

    from ..server.app import create_app
    from ..server.state import ServerSettings, is_loopback
    from ..store.keys import Keys

    db = _database(database_url)  # fails here, with one line, if the store cannot be opened
    try:
        if not is_loopback(host) and not Keys(db).any_active():
            raise InvalidArgumentError(
                f"refusing to serve on {host} without API keys: anyone who can reach it "
                "could run code. Create one with 'sandlot keys create --name NAME' first, "
                "or bind to 127.0.0.1"
            )
    finally:
        db.close()
    # The port is taken before the app starts, so a busy one fails before any sandbox is
    # adopted; calls that arrive while the server recovers wait in the backlog.
    bind_roots = _bind_roots(allow_bind_root or [])
    sock = _listen(host, port)
    port = sock.getsockname()[1]
    owner.set_address(home, _address(host, port))
    settings = ServerSettings(
        host=host,
        port=port,
        database_url=database_url,
        allow_unisolated=allow_unisolated,
        egress_private=egress_private,
        max_log_bytes=max_log_bytes,
        retention_seconds=retention_days * 86400,
        tenant_log_bytes=tenant_log_bytes,
        kill_on_exit=kill_on_exit,
        allow_bind_roots=bind_roots,
        volume_count=volume_count,
        volume_total_mb=_volume_total(volume_total),
        template_count=template_count,
        template_bytes=template_bytes,
        allow_local_template_bases=allow_local_template_bases,
        e2b=e2b,
        mcp=mcp,
    )
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        loop=_best("uvloop", "asyncio"),
        http=_best("httptools", "h11"),
        log_level=os.environ.get("SANDLOT_LOG_LEVEL", "info"),
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    uvicorn.Server(config).run(sockets=[sock])


BACKLOG = 2048  # uvicorn's default


def _volume_total(text: str) -> int:
    from ..workspace.volumes import parse_size

    return parse_size(text)


def _address(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _listen(host: str, port: int) -> Any:
    """A listening socket on ``host:port`` (SO_REUSEADDR, as uvicorn's own), or one line
    saying why not."""
    import socket

    from ..errors import SandlotError

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.create_server((host, port), family=family, backlog=BACKLOG)
    except OSError as exc:
        reason = exc.strerror or exc
        raise SandlotError(f"cannot listen on {_address(host, port)}: {reason}") from None
    return sock  # not inheritable: no sandbox the server starts gets it


def _best(module: str, fallback: str) -> str:
    import importlib.util

    return module if importlib.util.find_spec(module) is not None else fallback


@keys_app.command("create")
def create_key(
    name: Annotated[str, typer.Option("--name", help="What the key is for.")],
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="An existing tenant (default: a new one).")
    ] = None,
    admin: Annotated[bool, typer.Option("--admin", help="May manage keys.")] = False,
    database_url: DatabaseOption = None,
) -> None:
    """Create a key and print its token (once: only a hash is kept)."""
    from ..store.keys import Keys

    db = _database(database_url)
    try:
        created = Keys(db).create(name, tenant, admin)
    finally:
        db.close()
    typer.echo(created.token)
    typer.echo(
        f"key {created.key.id} for tenant {created.key.tenant}"
        + (" (admin)" if created.key.admin else ""),
        err=True,
    )


@keys_app.command("ls")
def list_keys(
    all_: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    database_url: DatabaseOption = None,
    json_: JsonOption = False,
) -> None:
    """The keys: id, tenant, name, admin, created, revoked."""
    from ..store.keys import Keys

    db = _database(database_url)
    try:
        keys = Keys(db).list(None, all_)
    finally:
        db.close()
    if json_:
        print_json([key.model_dump(mode="json") for key in keys])
        return
    for key in keys:
        revoked = f" revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else ""
        admin = " admin" if key.admin else ""
        typer.echo(
            f"{key.id}  {key.tenant}  {key.name}{admin}  {key.created_at:%Y-%m-%d %H:%M}{revoked}"
        )


@keys_app.command("revoke")
def revoke_key(
    key_id: Annotated[str, typer.Argument(help="The key's id (see 'sandlot keys ls').")],
    database_url: DatabaseOption = None,
) -> None:
    """Revoke a key: calls with it answer 401 from then on (within 2 s on a running server)."""
    from ..errors import NotFoundError
    from ..store.keys import Keys

    db = _database(database_url)
    try:
        if not Keys(db).revoke(key_id):
            raise NotFoundError(f"no active key {key_id!r}")
    finally:
        db.close()
    typer.echo(f"revoked {key_id}", err=True)


def _bind_roots(roots: list[str]) -> list[str]:
    """The allowed bind roots, resolved: existing folders, never / (which would allow all)."""
    resolved = []
    for root in roots:
        real = os.path.realpath(root)
        if not os.path.isabs(root) or not os.path.isdir(real):
            raise InvalidArgumentError(f"--allow-bind-root {root}: not an absolute folder")
        if real == "/":
            raise InvalidArgumentError("--allow-bind-root /: tenants could bind the whole host")
        resolved.append(real)
    return resolved
