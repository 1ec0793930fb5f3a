"""``sandlot template``: build, list, show, remove, export, import and collect templates
(this host's state folder; see docs/templates.md).

``build`` takes its steps in command-line order, each option starting a step that takes
the words up to the next option: ``--pip numpy pandas --file ./h.py:/opt/h.py --run "make"``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import JsonOption, console, note, print_json, run

template_app = typer.Typer(
    help="Templates: root filesystems built from a base and cached steps, for sandboxes to "
    "start from (this host's state folder).",
    no_args_is_help=True,
)

# Step options: each takes the words after it up to the next option (--apt/--pip: several;
# the others: exactly one).
STEP_OPTIONS = {"--apt": "apt", "--pip": "pip", "--file": "file", "--run": "run",
                "--env": "env", "--workdir": "workdir"}  # fmt: skip
MANY = ("apt", "pip")


def _store() -> Any:
    """This host's templates (export, import and gc work on those only)."""
    from ..errors import InvalidArgumentError
    from ..store import default_home
    from ..workspace.templates import TemplateStore

    if _remote() is not None:
        raise InvalidArgumentError(
            "this `sandlot template` command works on this host's templates only (build, ls, "
            "show and rm reach a server; SANDLOT_URL is set): unset SANDLOT_URL"
        )
    return TemplateStore(default_home())


def _remote() -> Any:
    """The server's templates (the key's tenant's) when SANDLOT_URL names a server."""
    if not os.environ.get("SANDLOT_URL"):
        return None
    from ..remote.templates import RemoteTemplates

    return RemoteTemplates()


def _remote_call(action: Any) -> Any:
    """``action(templates)`` against the server, its client closed after."""

    async def go() -> Any:
        templates = _remote()
        try:
            return await action(templates)
        finally:
            await templates.client.aclose()

    return run(go())


def parse_steps(words: list[str]) -> list[Any]:
    """Step options in the order given: ``["--pip", "a", "b", "--run", "make"]``."""
    from ..errors import InvalidArgumentError
    from ..workspace.templates import parse_step

    steps: list[Any] = []
    kind: str | None = None
    values: list[str] = []

    def finish() -> None:
        if kind is None:
            return
        option = f"--{kind}"
        if not values:
            raise InvalidArgumentError(f"{option} needs a value")
        if kind not in MANY and len(values) != 1:
            raise InvalidArgumentError(
                f"{option} takes one value (quote it: {option} {' '.join(values)!r})"
            )
        steps.append(parse_step(kind, values if kind in MANY else values[0]))

    for word in words:
        option, eq, inline = word.partition("=")
        if option in STEP_OPTIONS:
            finish()
            kind, values = STEP_OPTIONS[option], [inline] if eq else []
        elif kind is None:
            raise InvalidArgumentError(f"unexpected {word!r}: steps are --apt, --pip, --file, "
                                       "--run, --env and --workdir")  # fmt: skip
        else:
            values.append(word)
    finish()
    return steps


class _Progress:
    """Steps as lines (name, cached or time, bytes), the current log line under a spinner."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False, emoji=False)
        self.status: Any = None

    def __call__(self, event: Any) -> None:
        from rich.markup import escape

        if event.type == "step_started":
            self.current = f"[{event.index}/{event.total}] {event.name}"
            self.status = self.console.status(escape(self.current))
            self.status.start()
        elif event.type == "log" and self.status is not None:
            line = event.line.strip()[-120:]
            if line:
                self.status.update(f"{escape(self.current)}  [dim]{escape(line)}[/dim]")
        elif event.type == "step_finished":
            self._stop()
            if not event.layer:
                how = "[dim]set[/dim]"
            elif event.cached:
                how = f"[green]cached[/green] {_size(event.bytes)}"
            else:
                how = f"[green]done[/green] {event.seconds:.1f} s {_size(event.bytes)}"
            self.console.print(f"[{event.index}] {escape(event.name)}  {how}")
        elif event.type == "failed":
            self._stop()
            self.console.print(f"[red]failed[/red] {escape(event.error.splitlines()[0])}")
        elif event.type == "done":
            self._stop()
            self.console.print(
                f"built {event.name} sha256:{event.digest[:12]} "
                f"({_size(event.size)}, {event.seconds:.1f} s)"
            )

    def _stop(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


@template_app.command(
    "build", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def build(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The template's name.")],
    base: Annotated[
        str,
        typer.Option(
            "--from", help="Its base: host, or oci:REF, docker:REF, rootfs:DIR, tar:FILE."
        ),
    ],
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Run every step again, reusing no layer.")
    ] = False,
    json_: Annotated[
        bool, typer.Option("--json", help="Progress events as JSON lines on stdout.")
    ] = False,
    allow: Annotated[
        list[str] | None,
        typer.Option(
            "--allow",
            metavar="RULE",
            help="A host the sandboxed steps may reach (repeatable; as network allow "
            "rules). --pip and --apt reach their index and sources anyway; --run nothing else.",
        ),
    ] = None,
) -> None:
    """Build template NAME: --from BASE, then steps in the order given:

    --apt PKG..., --pip REQ..., --file SRC:DST, --run CMD, --env K=V, --workdir DIR.

    Example: sandlot template build datasci --from host --pip numpy pandas
    --file ./helpers.py:/opt/helpers.py
    """
    from ..errors import InvalidArgumentError, TemplateBuildError
    from ..manager import Manager
    from ..workspace.templates.build import build as build_template

    steps = parse_steps(list(ctx.args))

    def as_json(event: Any) -> None:
        sys.stdout.write(event.model_dump_json() + "\n")
        sys.stdout.flush()

    progress = as_json if json_ else _Progress()
    if _remote() is not None:
        if no_cache:
            raise InvalidArgumentError("--no-cache is not offered through a server")
        try:
            _remote_call(
                lambda t: t.build(name, base, steps, allow=allow or (), on_progress=progress)
            )
        finally:
            if isinstance(progress, _Progress):
                progress._stop()
        return
    store = _store()

    async def go() -> Any:
        manager = Manager(store.root.parent)
        try:
            return await build_template(
                manager, name, base, steps, on_event=progress, no_cache=no_cache, allow=allow
            )
        finally:
            await manager.close()

    try:
        run(go())
    except TemplateBuildError as exc:
        if not json_:
            tail = exc.message.partition("\n")[2]
            if tail:
                sys.stderr.write(tail.rstrip("\n") + "\n")
        raise TemplateBuildError(exc.message.partition("\n")[0], **exc.details) from None


@template_app.command("ls")
def list_templates(json_: JsonOption = False) -> None:
    """This host's templates: name, digest, base, steps, size."""
    from rich.markup import escape
    from rich.table import Table

    if _remote() is not None:
        listed = _remote_call(lambda t: t.list())
        if json_:
            print_json([t.model_dump(mode="json") for t in listed])
            return
        found = [_as_manifest(t) for t in listed]
    else:
        store = _store()
        found = store.list()
        if json_:
            print_json([_summary(store, m) for m in found])
            return
    if not found:
        console().print("no templates", style="dim")
        return
    table = Table()
    for column in ("name", "digest", "base", "steps", "size", "created"):
        table.add_column(column, no_wrap=column != "base")
    for manifest in found:
        table.add_row(
            manifest.name,
            manifest.digest()[:12],
            escape(_base(manifest)),
            str(len(manifest.steps)),
            _size(manifest.size),
            manifest.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    console().print(table)


def _as_manifest(out: Any) -> Any:
    """A server's TemplateOut as a manifest, for the same tables and pages."""
    from ..workspace.templates.model import TemplateManifest

    data = out.model_dump()
    data.pop("digest")
    return TemplateManifest.model_validate(data)


def _base(manifest: Any) -> str:
    base = manifest.base
    return base.kind + (f":{base.ref}" if base.ref else "")


def _summary(store: Any, manifest: Any) -> dict[str, Any]:
    digest = manifest.digest()
    return {
        "name": manifest.name,
        "digest": "sha256:" + digest,
        "base": manifest.base.model_dump(),
        "steps": [s.model_dump() for s in manifest.steps],
        "layers": [layer.model_dump(exclude={"step"}) for layer in manifest.layers],
        "size": manifest.size,
        "env": manifest.env,
        "workdir": manifest.workdir,
        "python": manifest.python,
        "sandlot_version": manifest.sandlot_version,
        "created_at": manifest.created_at.isoformat(),
        "log": str(store.log_path(digest)) if store.log_path(digest).exists() else None,
    }


@template_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="A template name, or sha256:DIGEST.")],
    json_: JsonOption = False,
) -> None:
    """What a template was built from (base digest, steps), its layers and sizes, the
    sandlot version that built it and where its build log is."""
    from rich.markup import escape

    if _remote() is not None:
        remote = _remote_call(lambda t: t.get(name))
        if json_:
            print_json(remote.model_dump(mode="json"))
            return
        manifest = _as_manifest(remote)
        info = {"digest": remote.digest, "created_at": remote.created_at.isoformat()}
        info["log"] = "GET /v1/templates/NAME/log"
    else:
        store = _store()
        resolved = store.resolve(name)
        manifest = resolved.manifest.model_copy(update={"name": "" if ":" in name else name})
        info = _summary(store, manifest)
    if json_:
        print_json(info)
        return
    out = console()
    base = manifest.base
    lines = [
        f"name       {manifest.name or '-'}",
        f"digest     {info['digest']}",
        f"base       {_base(manifest)}" + (f"  ({base.digest})" if base.digest else ""),
        f"python     {manifest.python}",
        f"workdir    {manifest.workdir or '-'}",
        f"env        {', '.join(f'{k}={v}' for k, v in manifest.env.items()) or '-'}",
        f"size       {_size(manifest.size)} in {len(manifest.layers)} layers",
        f"built by   sandlot {manifest.sandlot_version} at {info['created_at']}",
        f"build log  {info['log'] or '-'}",
        "steps",
    ]
    lines += [f"  {i}. {s.label()}" for i, s in enumerate(manifest.steps, 1)] or ["  (none)"]
    lines.append("layers (bottom first)")
    for layer in manifest.layers:
        what = layer.step.label() if layer.step is not None else "base"
        lines.append(f"  {layer.id[:12]}  {_size(layer.size):>9}  {layer.files:>7} files  {what}")
    for line in lines:
        out.print(escape(line))


@template_app.command("rm")
def remove(names: Annotated[list[str], typer.Argument(help="Template names.")]) -> None:
    """Forget templates (their layers go at the next `sandlot template gc`)."""
    if _remote() is not None:
        for name in names:
            _remote_call(lambda t, name=name: t.remove(name))
            typer.echo(f"removed {name}", err=True)
        return
    store = _store()
    for name in names:
        digest = store.remove(name)
        typer.echo(f"removed {name} (sha256:{digest[:12]})", err=True)


@template_app.command("export")
def export(
    name: Annotated[str, typer.Argument(help="The template to export.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here (default: stdout).")
    ] = None,
) -> None:
    """Write a template (its manifest and layers) as a tar stream."""
    from ..errors import InvalidArgumentError

    store = _store()
    if output is None:
        if sys.stdout.isatty():
            raise InvalidArgumentError("not writing a tar to a terminal: use -o FILE or a pipe")
        store.export(name, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return
    tmp = output.with_name(f".{output.name}.part")
    try:
        with open(tmp, "wb") as fh:
            store.export(name, fh)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)


@template_app.command("import")
def import_(
    source: Annotated[str, typer.Argument(help="A tar written by `export`, or - for stdin.")],
    name: Annotated[str, typer.Option("--name", help="The name to give it.")],
) -> None:
    """Import a template from a tar written by `sandlot template export` (every member
    checked: paths, links, sizes, digests)."""
    store = _store()
    if source == "-":
        manifest = store.import_(sys.stdin.buffer, name)
    else:
        with open(source, "rb") as fh:
            manifest = store.import_(fh, name)
    typer.echo(f"imported {name} (sha256:{manifest.digest()[:12]})", err=True)


@template_app.command("gc")
def gc(json_: JsonOption = False) -> None:
    """Remove layers and manifests no template name, pool or running sandbox uses."""
    store = _store()
    report = store.gc(_in_use(store))
    if json_:
        print_json(report.__dict__)
        return
    note(
        f"removed {len(report.removed_manifests)} manifests and {len(report.removed_layers)} "
        f"layers ({_size(report.freed_bytes)})",
        style="green",
    )


def _in_use(store: Any) -> set[str]:
    """The templates this host's pools and sandboxes hold (see in_use_templates)."""
    from types import SimpleNamespace

    from ..manager.pool_templates import in_use_templates
    from ..store import Store

    home = store.root.parent
    return in_use_templates(SimpleNamespace(home=home, store=Store(home)))
