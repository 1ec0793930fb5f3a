"""``sandlot pool``: warm pools of started sandboxes on this host (see docs/pools.md).

``set`` keeps N started sandboxes of a spec (filling the pool before it returns), ``ls``
shows the pools, ``rm`` removes pools and kills their members. A create whose spec matches
a pool exactly (provider, resources, network, settings, environment, working folder; not
metadata or lifetime) takes a member, from any process on the same SANDLOT_HOME.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer

from ._common import (
    EnvOption,
    ImageOption,
    JsonOption,
    MemoryOption,
    console,
    parse_env,
    parse_settings,
    print_json,
    run,
)

T = TypeVar("T")

pool_app = typer.Typer(
    help="Warm pools: keep started sandboxes ready, so a matching create takes one in "
    "milliseconds (this host's state folder).",
    no_args_is_help=True,
)


async def _with_manager(action: Callable[[Any], Awaitable[T]]) -> T:
    """``action(manager)`` with a manager of this host's state folder, closed afterwards."""
    from ..errors import InvalidArgumentError
    from ..manager import Manager

    if os.environ.get("SANDLOT_URL"):
        raise InvalidArgumentError(
            "pools are kept by the host their sandboxes run on: run `sandlot pool` there "
            "(SANDLOT_URL is set)"
        )

    manager = Manager()
    try:
        return await action(manager)
    finally:
        await manager.close()


def _row(status: Any) -> dict[str, Any]:
    return {
        "key": status.key,
        "size": status.size,
        "ready": len(status.ready),
        "filling": status.filling,
        "members": status.ready,
        "spec": status.spec,
    }


def _summary(spec: dict[str, Any]) -> str:
    """The parts of a pool's spec that differ from a default sandbox's."""
    from ..models import SandboxSpec

    default = SandboxSpec().model_dump(mode="json")
    parts = []
    if spec.get("template"):
        follows = spec.get("template_follows")
        digest = str(spec["template"]).removeprefix("sha256:")[:12]
        parts.append(f"template={follows} ({digest})" if follows else f"template={digest}")
    resources = spec.get("resources") or {}
    for name, value in resources.items():
        if value != default["resources"].get(name):
            parts.append(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}")
    for name in ("network", "workdir"):
        if spec.get(name) != default[name]:
            parts.append(f"{name}={spec.get(name)}")
    if spec.get("env"):
        parts.append("env=" + ",".join(sorted(spec["env"])))
    for name, value in sorted((spec.get("config") or {}).items()):
        parts.append(f"{name}={value}")
    return " ".join(parts)


def _print_table(statuses: list[Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    if not statuses:
        console().print("no pools", style="dim")
        return
    table = Table()
    table.add_column("key", no_wrap=True)
    table.add_column("provider", no_wrap=True)
    table.add_column("size", justify="right")
    table.add_column("ready", justify="right")
    table.add_column("filling", justify="right")
    table.add_column("spec")
    for status in statuses:
        table.add_row(
            status.key,
            str(status.spec.get("provider")),
            str(status.size),
            str(len(status.ready)),
            str(status.filling),
            escape(_summary(status.spec)),
        )
    console().print(table)


def _emit(statuses: list[Any], as_json: bool) -> None:
    if as_json:
        print_json([_row(s) for s in statuses])
    else:
        _print_table(statuses)


SizeOption = Annotated[
    int, typer.Option("--size", "-n", help="Started sandboxes to keep (0: none, for now).")
]
ProviderOption = Annotated[
    str | None,
    typer.Option("--provider", "-p", help="A local provider (bwrap, process, docker)."),
]
CpusOption = Annotated[float | None, typer.Option("--cpus", help="CPU limit, cores (default: 1).")]
WorkdirOption = Annotated[
    str, typer.Option("--workdir", "-w", help="Working folder in the sandbox.")
]
SettingOption = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="K=V", help="A provider setting (repeatable), as for run."),
]
FullNetworkOption = Annotated[
    bool, typer.Option("--full-network", help="Give the sandboxes the host's network.")
]
TemplateOption = Annotated[
    str | None,
    typer.Option(
        "--template",
        "-t",
        help="A template (`sandlot template ls`): the pool follows its name to each rebuild.",
    ),
]
WaitOption = Annotated[
    bool, typer.Option("--wait/--no-wait", help="Fill the pool before returning.")
]


@pool_app.command("set")
def set_pool(
    size: SizeOption,
    provider: ProviderOption = None,
    image: ImageOption = None,
    memory_mb: MemoryOption = None,
    cpus: CpusOption = None,
    env: EnvOption = None,
    workdir: WorkdirOption = "/workspace",
    setting: SettingOption = None,
    full_network: FullNetworkOption = False,
    template: TemplateOption = None,
    wait: WaitOption = True,
    json_: JsonOption = False,
) -> None:
    """Keep SIZE started sandboxes of this spec; a create with the same spec (any metadata
    and lifetime) takes one. Setting a smaller size kills the members beyond it.

    Example: sandlot pool set --size 4 --memory-mb 1024
    Example: sandlot pool set --template datasci --size 4
    """
    from ..errors import InvalidArgumentError
    from ..models import SandboxSpec
    from ..sdk.sandbox import build_spec

    if size < 0:
        raise InvalidArgumentError(f"--size must be 0 or more, got {size}")
    config = parse_settings(setting)
    if image is not None:
        config["image"] = image
    resources: dict[str, Any] = {}
    if memory_mb is not None:
        resources["memory_mb"] = memory_mb
    if cpus is not None:
        resources["cpus"] = cpus
    spec: SandboxSpec = build_spec(
        provider,
        300,
        parse_env(env),
        None,
        resources or None,
        workdir,
        config,
        "full" if full_network else "none",
    )
    if template is not None:  # a name or sha256:<digest>; the pool resolves it
        from pydantic import ValidationError

        from ..models import describe

        try:
            spec = SandboxSpec.model_validate({**spec.model_dump(), "template": template})
        except ValidationError as exc:
            raise InvalidArgumentError(describe(exc, "--template")) from None

    async def go(manager: Any) -> Any:
        await manager.pools.maintain(refill=False)  # dead members do not count
        return await manager.pools.set(spec, size, wait=wait)

    status = run(_with_manager(go))
    _emit([status], json_)


@pool_app.command("ls")
def list_pools(json_: JsonOption = False) -> None:
    """The pools on this host: size, members ready, members being made."""

    async def go(manager: Any) -> Any:
        return manager.pools.list()

    _emit(run(_with_manager(go)), json_)


@pool_app.command("rm")
def remove_pools(
    keys: Annotated[
        list[str] | None,
        typer.Argument(metavar="KEY...", help="Pool keys, or unique starts of them (`pool ls`)."),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Remove every pool.")] = False,
) -> None:
    """Remove pools and kill their members (sandboxes already taken are not touched)."""
    from ..errors import InvalidArgumentError

    if bool(keys) == all_:
        raise InvalidArgumentError("give pool keys (see `sandlot pool ls`) or --all")

    async def go(manager: Any) -> list[tuple[str, list[str]]]:
        chosen = [s.key for s in manager.pools.list()] if all_ else keys or []
        resolved = [manager.pools.resolve(key) for key in chosen]  # all known, or none
        return [(key, await manager.pools.remove(key)) for key in resolved]

    for key, killed in run(_with_manager(go)):
        typer.echo(f"removed pool {key} ({len(killed)} sandboxes killed)", err=True)
