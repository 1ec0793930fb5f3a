"""``sandlot create``: a sandbox that outlives the command, its id printed, for ``exec``,
``cp``, ``logs``, ``run-code``, ``repl`` and ``kill`` to use later.

A sandbox dies with the process that created it on this host, so here it is created by a
background ``sandlot _hold`` process (as ``repl --keep`` does), which ends when the sandbox
is killed or its lifetime is over. On a server (``SANDLOT_URL``) the server holds it.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer

from ._common import (
    EnvOption,
    Failed,
    ImageOption,
    MemoryOption,
    UsageError,
    check_positive,
    pairs,
    parse_env,
    parse_settings,
    print_json,
    release,
)
from .run import (
    AllowOption,
    FullNetworkOption,
    ProviderOption,
    ResolveOption,
    SecretEnvOption,
    SettingOption,
    WorkdirOption,
    _environment,
    _network,
)

MetaOption = Annotated[
    list[str] | None,
    typer.Option("--meta", "-m", metavar="K=V", help="Metadata (repeatable; see `ls --meta`)."),
]


def create(
    provider: ProviderOption = None,
    timeout: Annotated[
        float, typer.Option("--timeout", "-t", help="Sandbox lifetime, seconds.")
    ] = 300.0,
    idle_timeout: Annotated[
        float,
        typer.Option(
            "--idle-timeout",
            help="Stop it after this many seconds without use (0: never; default 600).",
        ),
    ] = 600.0,
    env: EnvOption = None,
    workdir: WorkdirOption = "/workspace",
    memory_mb: MemoryOption = None,
    image: ImageOption = None,
    setting: SettingOption = None,
    allow: AllowOption = None,
    resolve: ResolveOption = None,
    full_network: FullNetworkOption = False,
    secret_env: SecretEnvOption = None,
    meta: MetaOption = None,
    json_: Annotated[
        bool, typer.Option("--json", help="Print the sandbox's record (as `ls --json`).")
    ] = False,
) -> None:
    """Create a sandbox that keeps running after this command; print its id.

    It lives until `sandlot kill ID`, its lifetime (--timeout) ends, or nothing has used it
    for --idle-timeout seconds.
    Example: ID=$(sandlot create -t 3600) && sandlot exec $ID -- make
    """
    check_positive(timeout, "--timeout")
    if idle_timeout < 0:
        raise UsageError(f"--idle-timeout must be 0 (never) or positive, got {idle_timeout:g}")
    if not workdir.startswith("/"):
        raise UsageError(f"--workdir must be an absolute path, got {workdir!r}")
    config = parse_settings(setting)
    if image is not None:
        config["image"] = image
    settings: dict[str, Any] = {
        "env": _environment(parse_env(env), secret_env),
        "network": _network(allow, resolve, full_network),
        "resources": {"memory_mb": memory_mb} if memory_mb is not None else None,
        "metadata": pairs(meta, "--meta") or None,
        "workdir": workdir,
        "idle_timeout": idle_timeout or None,
        **config,
    }
    sandbox = _create(provider, timeout, settings)
    try:
        if workdir != "/workspace":
            sandbox.files.make_dir(workdir)
        info = sandbox.info
    except BaseException:
        release(sandbox, kill=True)
        raise
    release(sandbox, kill=False)
    if json_:
        print_json(info.model_dump(mode="json", exclude={"handle"}))
        return
    sys.stdout.write(info.id + "\n")
    sys.stdout.flush()


def _create(provider: str | None, timeout: float, settings: dict[str, Any]) -> Any:
    """The new sandbox, connected: made here on a server, else by a holder process."""
    from ..sdk import Sandbox

    if os.environ.get("SANDLOT_URL"):  # the server keeps it; nothing to hold here
        return Sandbox.create(provider, timeout=timeout, **settings)
    from .code import _held_sandbox

    try:
        return Sandbox.connect(_held_sandbox(provider, timeout, settings))
    except Failed as exc:  # create is no run: its failures exit 1 (bad input 2), not 125
        raise exc.error from None
