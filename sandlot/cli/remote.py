"""``sandlot remote up`` / ``down`` / ``status``: a sandlot server on a host reached over SSH.

The work is in :mod:`sandlot.deploy`; this module is its command line: options,
rich progress on stderr, the ``export`` lines on stdout (so ``eval "$(sandlot remote up
HOST)"`` works), and one red line with a distinct exit code per kind of failure:

    2  bad input (USER@HOST, a missing file, an address the host does not have)
    3  the host cannot be reached           4  its host key is unknown or changed
    5  it refused our SSH key               6  a port is in use (here or there)
    7  installing sandlot there failed      8  the server did not get ready in time
    1  anything else

Imports stay inside the commands: registering this sub-app costs the CLI nothing.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ._common import JsonOption, print_json, run

if TYPE_CHECKING:
    from ..deploy import Record, Reporter, Step, UpResult

remote_app = typer.Typer(
    help="A sandlot server on a host you reach over SSH: install, start, tunnel, stop.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _file_option(*names: str, help: str) -> Any:
    """An option naming a file that must exist here; passed on as an absolute path (the
    tunnel process runs from another folder)."""
    return typer.Option(
        *names,
        help=help,
        exists=True,
        dir_okay=False,
        readable=True,
        resolve_path=True,
        show_default=False,
    )


def _stderr() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def _fail(exc: BaseException) -> typer.Exit:
    """Print the remote log's tail (when there is one) and one red line; the exit to raise."""
    from rich.markup import escape

    from ..deploy import exit_code_for

    console = _stderr()
    tail = getattr(exc, "log_tail", "")
    if tail:
        console.print("[dim]--- last lines of the log ---[/dim]")
        console.print(escape(tail), style="dim")
    message = " ".join(str(exc).split()) or type(exc).__name__
    console.print(f"[red]error: {escape(message)}[/red]")
    return typer.Exit(exit_code_for(exc))


def _provision(coro: Any) -> Any:
    """``run(coro)``; a sandlot error as its line and exit code."""
    from ..errors import SandlotError

    try:
        return run(coro)
    except SandlotError as exc:
        raise _fail(exc) from None


def _reporter() -> Reporter:
    from ..deploy import Reporter, Step

    class RichStep(Step):
        def __init__(self, text: str, progress: Any, task: Any) -> None:
            super().__init__(text)
            self.progress, self.task = progress, task

        def update(self, text: str) -> None:
            from rich.markup import escape

            super().update(text)
            self.progress.update(self.task, description=escape(text))

    class RichReporter(Reporter):
        """A spinner, what is being done and the time it has taken; a tick when done."""

        def __init__(self) -> None:
            self.console = _stderr()

        @contextlib.contextmanager
        def step(self, text: str) -> Iterator[Step]:
            from rich.markup import escape
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            started = time.monotonic()
            if not self.console.is_terminal:  # a log, not a screen: only the outcome
                plain = Step(text)
                try:
                    yield plain
                except BaseException:
                    self.console.print(f"[red]✗[/red] {escape(plain.text)}")
                    raise
                took = time.monotonic() - started
                self.console.print(f"✓ {escape(plain.final)} [dim]({took:.1f}s)[/dim]")
                return
            progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            with progress:
                step = RichStep(text, progress, progress.add_task(escape(text)))
                try:
                    yield step
                except BaseException:
                    progress.stop()
                    self.console.print(f"[red]✗[/red] {escape(step.text)}")
                    raise
            took = time.monotonic() - started
            self.console.print(f"[green]✓[/green] {escape(step.final)} [dim]({took:.1f}s)[/dim]")

        def note(self, text: str) -> None:
            from rich.markup import escape

            self.console.print(f"[yellow]{escape(text)}[/yellow]")

    return RichReporter()


def _print_exports(record: Record) -> None:
    import shlex

    sys.stdout.write(f"export SANDLOT_URL={shlex.quote(record.url)}\n")
    if record.api_key:
        sys.stdout.write(f"export SANDLOT_API_KEY={shlex.quote(record.api_key)}\n")
    sys.stdout.flush()


TargetArgument = Annotated[
    str,
    typer.Argument(
        metavar="USER@HOST",
        help="[USER@]HOST[:SSH_PORT]; HOST may be an alias of your SSH config.",
        show_default=False,
    ),
]
PortOption = Annotated[
    int, typer.Option("--port", "-p", min=1, max=65535, help="The server's port on the host.")
]
LocalPortOption = Annotated[
    int | None,
    typer.Option(
        "--local-port",
        min=1,
        max=65535,
        help="The tunnel's port on 127.0.0.1 here [default: --port].",
        show_default=False,
    ),
]
BindOption = Annotated[
    str,
    typer.Option(
        "--bind",
        help="The address the server listens on, on the host. Anything but loopback "
        "is reachable without the tunnel, by anyone the network lets in: the key is "
        "then all that protects it.",
    ),
]
PythonOption = Annotated[
    str, typer.Option("--python", help="The host's Python (3.11+) for the venv.")
]
IdentityOption = Annotated[
    Path | None, _file_option("--identity", "-i", help="SSH private key to log in with.")
]
KnownHostsOption = Annotated[
    Path | None,
    _file_option(
        "--known-hosts",
        help="known_hosts file to check the host key against [default: as ssh does].",
    ),
]
SshConfigOption = Annotated[
    Path | None,
    _file_option("--ssh-config", "-F", help="SSH config file [default: ~/.ssh/config]."),
]
RemoteDirOption = Annotated[
    str,
    typer.Option(
        "--remote-dir", help="Folder on the host for the venv, the server's log and pidfile."
    ),
]
RemoteHomeOption = Annotated[
    str | None,
    typer.Option(
        "--remote-home",
        help="The server's SANDLOT_HOME on the host (its database and sandboxes) "
        "[default: the host's own default state folder].",
        show_default=False,
    ),
]
WaitOption = Annotated[
    float,
    typer.Option("--wait", min=1.0, help="Seconds to wait for the server to get ready."),
]
ReinstallOption = Annotated[
    bool, typer.Option("--reinstall", help="Install even when this version is there.")
]


@remote_app.command("up")
def up_command(
    target: TargetArgument,
    port: PortOption = 8787,
    local_port: LocalPortOption = None,
    bind: BindOption = "127.0.0.1",
    python: PythonOption = "python3",
    identity: IdentityOption = None,
    known_hosts: KnownHostsOption = None,
    ssh_config: SshConfigOption = None,
    remote_dir: RemoteDirOption = "~/.sandlot",
    remote_home: RemoteHomeOption = None,
    wait: WaitOption = 180.0,
    reinstall: ReinstallOption = False,
) -> None:
    """Install sandlot on a host over SSH, start `sandlot serve` there and tunnel to it.

    Prints the SANDLOT_URL and SANDLOT_API_KEY to export: eval "$(sandlot remote up HOST)".
    """
    from ..deploy import SshOptions, UpOptions, parse_target, up
    from ..errors import SandlotError

    try:
        options = UpOptions(
            target=parse_target(target),
            ssh=SshOptions(
                identity=str(identity) if identity else None,
                known_hosts=str(known_hosts) if known_hosts else None,
                ssh_config=str(ssh_config) if ssh_config else None,
            ),
            port=port,
            local_port=local_port,
            bind=bind,
            python=python,
            remote_dir=remote_dir,
            remote_home=remote_home,
            wait=wait,
            reinstall=reinstall,
        )
    except SandlotError as exc:
        raise _fail(exc) from None
    reporter = _reporter()
    result = _provision(up(options, reporter))
    _report_up(reporter, result)
    _print_exports(result.record)


def _report_up(reporter: Reporter, result: UpResult) -> None:
    """What runs where now, and a warning when the server listens beyond the host."""
    record = result.record
    if result.already_up:
        reporter.note(
            f"already up: {record.target} through {record.url} (sandlot remote down first to "
            "change its settings)"
        )
    else:
        reporter.note(
            f"sandlot {record.version} serves on {record.target}; 'sandlot remote down' stops it"
        )
    if not record.loopback:
        reporter.note(
            f"it also listens on {record.bind}:{record.port} on the host: whoever can reach "
            "that address needs a key, and the traffic is not encrypted (the tunnel is)"
        )


@remote_app.command("down")
def down_command(
    target: Annotated[
        str | None,
        typer.Argument(
            metavar="[USER@HOST]",
            help="Which one (needed only when several are up).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Forget it even when the host cannot be reached."),
    ] = False,
) -> None:
    """Stop the server on the host, the tunnel here, and forget them. Idempotent."""
    from ..deploy import all_records, down, parse_target, record_path, records_dir
    from ..errors import InvalidArgumentError, SandlotError

    console = _stderr()
    records = all_records()
    try:
        if target is not None:
            wanted = parse_target(target)
            path = record_path(wanted)
            chosen = [(p, r) for p, r in records if p == path]
            if not chosen:  # `down gpu-box` for an `up ana@gpu-box`
                chosen = [(p, r) for p, r in records if r.parsed_target.host == wanted.host]
            if len(chosen) > 1:
                raise InvalidArgumentError(
                    f"several are up on {wanted.host}: "
                    + ", ".join(r.target for _, r in chosen)
                    + "; name one"
                )
        elif len(records) > 1:
            raise InvalidArgumentError(
                "several are up: " + ", ".join(r.target for _, r in records) + "; name one"
            )
        else:
            chosen = records
    except SandlotError as exc:
        raise _fail(exc) from None
    if not chosen:
        where = f" for {target}" if target else ""
        console.print(f"nothing is up{where} (no record in {records_dir()})")
        return
    path, record = chosen[0]
    _provision(down(path, record, _reporter(), force=force))
    console.print(f"down: {record.target}")


@remote_app.command("status")
def status_command(json_: JsonOption = False) -> None:
    """What `up` started and whether it answers."""
    import asyncio

    from rich.console import Console
    from rich.table import Table

    from ..deploy import all_records, readyz, records_dir, tunnel_alive

    records = all_records()
    if not records and not json_:
        _stderr().print(f"nothing is up (no record in {records_dir()})")
        return

    async def check() -> list[str | None]:
        return list(await asyncio.gather(*(readyz(r.url, timeout=3) for _, r in records)))

    answers = run(check())
    if json_:  # never the key: `up` printed it once
        print_json(
            [
                {
                    "target": record.target,
                    "url": record.url,
                    "tunnel_pid": record.tunnel_pid,
                    "tunnel_up": tunnel_alive(path, record),
                    "ready": answer is None,
                    "problem": answer,
                    "server_pid": record.server_pid,
                    "version": record.version,
                    "started_at": record.started_at,
                }
                for (path, record), answer in zip(records, answers, strict=True)
            ]
        )
        return
    table = Table()
    for column in ("target", "url", "tunnel", "ready", "server pid", "version", "started"):
        table.add_column(column, no_wrap=True)
    for (path, record), answer in zip(records, answers, strict=True):
        table.add_row(
            record.target,
            record.url,
            f"pid {record.tunnel_pid}" if tunnel_alive(path, record) else "[red]down[/red]",
            "[green]yes[/green]" if answer is None else f"[red]no[/red] ({answer})",
            str(record.server_pid or "-"),
            record.version,
            time.strftime("%Y-%m-%d %H:%M", time.localtime(record.started_at)),
        )
    Console(highlight=False, emoji=False, width=None if sys.stdout.isatty() else 200).print(table)


def main(argv: list[str] | None = None) -> None:
    """``python -m sandlot.cli.remote ...``: the sub-app on its own."""
    remote_app(args=argv, prog_name="sandlot remote")


if __name__ == "__main__":
    main()
