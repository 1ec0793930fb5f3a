"""The build engine: a base and steps in, a named template out, each step a cached layer.

A step's cache key is sha256 of the layer below (or the base), the step's canonical JSON,
the env and workdir it runs with, and the hash of its input files (file steps); the store
maps a key to the layer it made (``cache/<key>``), reused by a later build; otherwise the
step runs (its layer's id: of its key and its content):

- ``file``: copied from the host into a new layer directly (no sandbox);
- ``apt``, ``pip``, ``run``: in a build sandbox of the layers so far, made by the manager
  with ``SandboxSpec(template="sha256:<intermediate manifest>", config={"root_upper": DIR})``
  (the provider mounts the template writable into DIR and runs the step as uid 0), its
  network only the hosts the step needs (pip's index, the apt sources) through the egress
  proxy; DIR, cleaned of anything but files, folders, symlinks and whiteouts, is the layer;
- ``env``, ``workdir``: manifest only, no layer.

Every step's output goes to the build log, kept at ``logs/<digest>.log`` for the finished
template; a failed build keeps its log too (the path is in the error) until the next gc.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import os
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from ...errors import InvalidArgumentError, SandlotError, TemplateBuildError
from . import layers as L
from . import steps as S
from .bases import prepare_base
from .image_bases import base_config
from .model import (
    DIGEST_PREFIX,
    PYTHONS,
    AptStep,
    BaseInfo,
    EnvStep,
    FileStep,
    LayerInfo,
    PipStep,
    RunStep,
    Step,
    TemplateManifest,
    WorkdirStep,
    canonical,
    check_name,
    check_steps,
)
from .store import TemplateStore, find_python, remove_tree, write_atomic

if TYPE_CHECKING:
    from ...manager import Manager

STEP_TIMEOUT = 3600.0  # seconds a sandboxed step may run
# A build sandbox's limits: more than an agent's default (pip unpacks big wheels in /tmp,
# compilers fork), still bounded. build(resources=...) overrides them.
BUILD_RESOURCES = {"memory_mb": 4096, "pids": 1024, "tmp_mb": 4096,
                   "cpus": float(max(1, min(os.cpu_count() or 1, 8)))}  # fmt: skip
MAX_LAYER_BYTES = 64 << 30
LOG_TAIL = 2000  # characters of the log an error ends with
MAX_LOG = 32 << 20  # characters of a build's log file
MAX_LINE = 8192  # characters of one log event


# --------------------------------------------------------------------------------------------
# progress events


class StepStarted(BaseModel):
    type: Literal["step_started"] = "step_started"
    index: int  # 1-based
    total: int
    name: str


class StepFinished(BaseModel):
    type: Literal["step_finished"] = "step_finished"
    index: int
    name: str
    cached: bool  # the layer was in the store already
    layer: bool  # False for env/workdir steps
    seconds: float
    bytes: int  # size of the step's layer


class LogLine(BaseModel):
    type: Literal["log"] = "log"
    index: int  # 0: the base
    line: str


class BuildDone(BaseModel):
    type: Literal["done"] = "done"
    name: str
    digest: str
    size: int
    seconds: float


class BuildFailed(BaseModel):
    type: Literal["failed"] = "failed"
    index: int
    name: str
    error: str
    log: str  # path of the build log


BuildEvent = StepStarted | StepFinished | LogLine | BuildDone | BuildFailed
OnEvent = Callable[[Any], Awaitable[None] | None]


async def _emit(on_event: OnEvent | None, event: Any) -> None:
    if on_event is None:
        return
    result = on_event(event)
    if inspect.isawaitable(result):
        await result


# --------------------------------------------------------------------------------------------
# the engine


def step_key(
    parent: str,
    step: Step,
    env: dict[str, str],
    workdir: str | None,
    allow: list[str] | None = None,
) -> str:
    """A step's cache key: what the step sees and does (file steps carry their input hash;
    sandboxed steps the extra network rules they ran with: a step that reached more hosts
    is not the same step, so one builder's layer never stands in for another's)."""
    data: dict[str, Any] = {
        "parent": parent,
        "step": step.model_dump(mode="json"),
        "env": env,
        "workdir": workdir,
    }
    if allow and not isinstance(step, FileStep):
        data["allow"] = sorted(set(allow))
    return hashlib.sha256(b"step\0" + canonical(data)).hexdigest()


def host_fingerprint() -> str:
    """What a host-base step's cache key starts from: the host's release and its Python
    interpreters (path, size, time), so upgrading the host's system builds anew."""
    h = hashlib.sha256()
    with contextlib.suppress(OSError):
        h.update(Path("/etc/os-release").read_bytes()[:65536])
    for candidate in PYTHONS:
        with contextlib.suppress(OSError):
            real = os.path.realpath(candidate)
            st = os.stat(real)
            h.update(f"{candidate}\0{real}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:32]


def layer_id_of(key: str, content: str) -> str:
    """A step layer's id: its cache key and its content. The cache (``cache/<key>``) maps a
    key to the layer it made last; a layer's id never changes meaning, so a rebuild with
    --no-cache makes a new layer and leaves the old one to the sandboxes that use it."""
    return hashlib.sha256(f"layer\0{key}\0{content}".encode()).hexdigest()


class _Log:
    """The build log: a file (at most MAX_LOG bytes; the rest only counted), and LogLine
    events (lines cut at MAX_LINE characters: a step's output is untrusted)."""

    def __init__(self, path: Path, on_event: OnEvent | None) -> None:
        self.path = path
        self.fh = open(path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
        self.on_event = on_event
        self.index = 0
        self.written = 0
        self.dropped = 0
        self._partial = ""
        self._tail = ""

    async def write(self, text: str) -> None:
        self._tail = (self._tail + text)[-LOG_TAIL:]
        if self.written < MAX_LOG:
            chunk = text[: MAX_LOG - self.written]
            self.fh.write(chunk)
            self.fh.flush()
            self.written += len(chunk)
            self.dropped += len(text) - len(chunk)
            if self.written >= MAX_LOG:
                self.fh.write(f"\n[build log full at {MAX_LOG} characters; the rest dropped]\n")
        else:
            self.dropped += len(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_LINE:
            lines.append(self._partial)
            self._partial = ""
        for line in lines:
            await _emit(self.on_event, LogLine(index=self.index, line=line[:MAX_LINE]))

    async def flush(self) -> None:
        if self._partial:
            await _emit(self.on_event, LogLine(index=self.index, line=self._partial[:MAX_LINE]))
            self._partial = ""

    def tail(self) -> str:
        """The last LOG_TAIL characters written (also past a full log)."""
        return self._tail

    def close(self) -> None:
        self.fh.close()


class _Build:
    def __init__(
        self,
        manager: Manager | None,
        store: TemplateStore,
        on_event: OnEvent | None,
        no_cache: bool,
        provider: str | None,
        resources: dict[str, Any] | None = None,
        allow: list[str] | None = None,
    ) -> None:
        self.resources = {**BUILD_RESOURCES, **(resources or {})}
        self.allow = list(allow or [])
        self.manager = manager
        self.store = store
        self.on_event = on_event
        self.no_cache = no_cache
        self.provider = provider
        self.base = BaseInfo(kind="host")
        self.layers: list[LayerInfo] = []
        self.done: list[Step] = []
        self.env: dict[str, str] = {}
        self.workdir: str | None = None
        self.parent = ""
        self.index = 0  # the step running (0: the base)
        self.label = "base"

    @property
    def lowers(self) -> list[Path]:
        return [self.store.layer_dir(layer.id) / "root" for layer in reversed(self.layers)]

    @property
    def views(self) -> list[Path]:
        """The merged view a step sees (on a host base, the host's root at the bottom)."""
        return [*self.lowers, Path("/")] if self.base.kind == "host" else self.lowers

    def apt_views(self) -> list[Path]:
        """Where an apt step's sources are read: on a host base, the host's apt
        configuration as the build sandbox sees it (its package snapshot), not the host's /."""
        if self.base.kind != "host":
            return self.lowers
        from ...providers import pkgdb

        return [*self.lowers, pkgdb.snapshot(self.store.root.parent)]

    def manifest(self, name: str = "") -> TemplateManifest:
        from ... import __version__

        return TemplateManifest(
            name=name,
            base=self.base,
            layers=list(self.layers),
            steps=list(self.done),
            env=dict(self.env),
            workdir=self.workdir,
            python=find_python(self.lowers, self.base.kind == "host"),
            size=sum(layer.size for layer in self.layers),
            sandlot_version=__version__,
        )

    async def step(self, step: Step, log: _Log) -> tuple[bool, int]:
        """Run or reuse one step; returns (cached, layer bytes)."""
        if isinstance(step, EnvStep):
            self.env[step.key] = step.value
        elif isinstance(step, WorkdirStep):
            self.workdir = step.path
        if not step.makes_layer:
            self.done.append(step)
            return False, 0
        if isinstance(step, FileStep):
            step = step.model_copy(update={"src": os.path.abspath(step.src)})
            step = step.model_copy(update={"sha256": S.input_digest(step)})
        key = step_key(self.parent, step, self.env, self.workdir, self.allow)
        found = None if self.no_cache else self.store.cached(key)
        if found is not None:
            info = self.store.layer(found)
            await log.write(f"cached: layer {found[:12]}\n")
        else:
            info = await self._make_layer(step, key, log)
            self.store.remember(key, info.id)
        self.layers.append(info)
        self.done.append(step)
        self.parent = info.id
        return found is not None, info.size

    async def _make_layer(self, step: Step, key: str, log: _Log) -> LayerInfo:
        work = self.store.tmp_dir("step-")
        upper = work / "upper"
        upper.mkdir(mode=0o755)
        try:
            if isinstance(step, FileStep):
                await asyncio.to_thread(S.copy_into, step, self.views, upper)
                await log.write(f"copied {step.src} to {step.dst}\n")
            else:
                await self._in_sandbox(step, upper, log)
            await asyncio.to_thread(_clean_upper, upper)
            size, _ = await asyncio.to_thread(L.measure, upper)
            if size > MAX_LAYER_BYTES:
                raise SandlotError(f"the step wrote {size} bytes (at most {MAX_LAYER_BYTES})")
            content = await asyncio.to_thread(L.tree_digest, upper)
            layer_id = layer_id_of(key, content)
            return await asyncio.to_thread(self.store.add_layer, upper, layer_id, step, content)
        finally:
            remove_tree(work)

    async def _in_sandbox(self, step: Step, upper: Path, log: _Log) -> None:
        from ...egress.policy import NetworkPolicy
        from ...models import Bind, SandboxSpec
        from ...sdk.sandbox import AsyncSandbox

        if self.manager is None:
            raise SandlotError("a manager is needed to run apt, pip and run steps")
        intermediate = self.manifest()
        digest = self.store.put_manifest(intermediate)
        env = dict(self.env)
        binds: list[Bind] = []
        hosts: list[str] = []
        cert: bytes | None = None
        if isinstance(step, PipStep):
            pip = S.pip_settings()
            env |= pip.env
            hosts, cert = pip.hosts, pip.cert
            binds = [Bind(host=h, path=p, mode="ro") for h, p in pip.binds]
            command = S.pip_command(step, intermediate.python)
        elif isinstance(step, AptStep):
            hosts = S.apt_hosts(await asyncio.to_thread(self.apt_views))
            env |= S.APT_ENV
            command = S.apt_command(step)
        else:
            assert isinstance(step, RunStep)
            command = S.run_command(step, self.workdir)
        network: Any = "none"
        if hosts or self.allow:
            policy = await asyncio.to_thread(S.network_policy, hosts)
            policy["allow"] += [rule for rule in self.allow if rule not in policy["allow"]]
            network = NetworkPolicy(**policy)
            await log.write(f"network: {', '.join([*hosts, *self.allow])}\n")
        spec = SandboxSpec.model_validate(
            {
                "provider": self.provider,
                "template": DIGEST_PREFIX + digest,
                "config": {"root_upper": str(upper)},
                "network": network,
                "binds": binds,
                "env": env,
                "timeout": STEP_TIMEOUT + 60,
                "resources": self.resources,
                "idle_timeout": None,
            }
        )
        live = await self.manager.create(spec)
        sandbox = AsyncSandbox(self.manager, live)
        try:
            if cert is not None:
                await sandbox.files.write(S.PIP_CERT_INSIDE, cert)
            await log.write("$ " + " ".join(command) + "\n")
            result = await sandbox.commands.run(
                command,
                cwd="/",  # the template's workdir may not exist yet: a run step makes it
                timeout=STEP_TIMEOUT,
                on_stdout=log.write,
                on_stderr=log.write,
            )
        finally:
            with contextlib.suppress(SandlotError):
                await self.manager.kill(live.info.id)
            with contextlib.suppress(OSError):
                remove_tree(upper.with_name(upper.name + ".work"))  # overlayfs's work folder
        await log.flush()
        for _, inside in [(b.host, b.path) for b in binds]:
            _remove_mount_point(upper, inside)
        if result.exit_code != 0:
            how = f"signal {result.signal}" if result.signal else f"exit {result.exit_code}"
            raise _StepFailed(how)


class _StepFailed(Exception):
    pass


def _remove_mount_point(upper: Path, inside: str) -> None:
    """Remove the empty folders a bind's mount point left in the layer (bottom up)."""
    path = upper / inside.lstrip("/")
    while path != upper:
        try:
            if L.is_opaque(str(path)):
                return
            path.rmdir()
        except OSError:
            return
        path = path.parent


def _clean_upper(upper: Path) -> None:
    """What a step left in its upper folder is untrusted: keep folders, files, symlinks and
    whiteouts; remove device nodes, FIFOs and sockets."""
    for entry in list(L.walk(upper)):
        mode = entry.st.st_mode
        if stat.S_ISDIR(mode) or stat.S_ISREG(mode) or stat.S_ISLNK(mode):
            continue
        if L.is_whiteout(entry.path, entry.st):
            continue
        os.unlink(entry.path)


async def build(
    manager: Manager | Callable[[], Manager] | None,
    name: str,
    base: str,
    steps: list[Any],
    owner: str = "",
    on_event: OnEvent | None = None,
    *,
    home: Path | None = None,
    no_cache: bool = False,
    provider: str = "bwrap",
    resources: dict[str, Any] | None = None,
    allow: list[str] | None = None,
) -> TemplateManifest:
    """Build template ``name`` of ``owner`` from ``base`` (``host``, ``oci:REF``, ...) and
    ``steps`` (Step models or their JSON); returns its manifest, stored and named. ``manager``
    (or a factory of one) runs the sandboxed steps; the store is ``home``'s (default: the
    manager's). ``provider``: the one that runs steps (build mode, ``root_upper``, is
    bwrap's; whatever SANDLOT_PROVIDER says). ``resources``: limits of the build sandboxes
    (default BUILD_RESOURCES).
    ``allow``: network rules (as NetworkPolicy.allow) every sandboxed step gets, on top of
    pip's index and the apt sources (run steps have no network otherwise). A failed step
    raises TemplateBuildError naming it, with its log's tail."""
    check_name(name)
    checked = check_steps(steps)
    if callable(manager) and not hasattr(manager, "create"):
        manager = manager()
    mgr: Manager | None = manager  # type: ignore[assignment]
    if home is None:
        if mgr is None:
            raise InvalidArgumentError("build needs a manager or a home folder")
        home = Path(mgr.home)
    store = TemplateStore(home)
    started = time.monotonic()
    if allow:
        from ...egress.policy import NetworkPolicy

        try:
            NetworkPolicy(allow=allow)
        except ValueError as exc:
            raise InvalidArgumentError(f"invalid --allow rule: {exc}") from None
    engine = _Build(mgr, store, on_event, no_cache, provider, resources, allow)
    engine.label = f"base {base}"
    with store.using():  # held until the template is named: gc never runs during a build
        work_log = store.tmp_dir("log-") / "build.log"
        log = _Log(work_log, on_event)
        try:
            manifest, digest = await _run(engine, name, base, checked, owner, log)
        except BaseException as exc:
            await log.flush()
            log.close()
            error = await _failed(engine, exc, log, work_log, name, base, checked)
            if error is exc:
                raise
            raise error from (None if isinstance(exc, _StepFailed) else exc)
        log.close()
        final = store.log_path(digest)
        if not final.exists():  # a rebuild of the same digest keeps the log that made it
            os.replace(work_log, final)
        remove_tree(work_log.parent)
    seconds = round(time.monotonic() - started, 3)
    done = BuildDone(name=name, digest=digest, size=manifest.size, seconds=seconds)
    await _emit(on_event, done)
    return manifest


async def _run(
    engine: _Build, name: str, base: str, steps: list[Step], owner: str, log: _Log
) -> tuple[TemplateManifest, str]:
    store, on_event = engine.store, engine.on_event
    await log.write(f"# sandlot template build {name} --from {base}\n")
    engine.base, base_layer = await prepare_base(base, store, on_event or _ignore)
    _check_steps_fit(engine.base, steps)
    if base_layer is not None:
        engine.layers.append(store.layer(base_layer))
        engine.parent = base_layer
        # An image's own Env and WorkingDir start the template's (helper B's bases).
        engine.env, engine.workdir = base_config(store, base_layer)
    else:
        engine.parent = engine.base.key
        if engine.base.kind == "host":
            engine.parent += ":" + await asyncio.to_thread(host_fingerprint)
    for index, step in enumerate(steps, 1):
        engine.index, engine.label = index, step.label()
        log.index = index
        await _emit(on_event, StepStarted(index=index, total=len(steps), name=engine.label))
        await log.write(f"# step {index}/{len(steps)}: {engine.label}\n")
        t0 = time.monotonic()
        cached, size = await engine.step(step, log)
        finished = StepFinished(
            index=index,
            name=engine.label,
            cached=cached,
            layer=step.makes_layer,
            seconds=round(time.monotonic() - t0, 3),
            bytes=size,
        )
        await _emit(on_event, finished)
    log.index = len(steps) + 1
    manifest = engine.manifest(name)
    return manifest, store.save(manifest, owner)


async def _failed(
    engine: _Build,
    exc: BaseException,
    log: _Log,
    work_log: Path,
    name: str,
    base: str,
    steps: list[Step],
) -> BaseException:
    """What a failed build raises (its log kept, a ``failed`` event sent): a
    TemplateBuildError naming the step, or ``exc`` itself if it is not a build failure
    (a cancellation, a bug)."""
    index, label = engine.index, engine.label
    kept = _keep_failed_log(engine.store, work_log, name, base, steps, index)
    reason = _reason(exc)
    if index:
        message = f"step {index} ({label}): {reason}"
    else:  # the base's own errors name it already
        message = reason if reason.startswith(label) else f"{label}: {reason}"
    await _emit(engine.on_event, BuildFailed(index=index, name=label, error=message, log=str(kept)))
    if not isinstance(exc, (_StepFailed, SandlotError, OSError)):
        return exc
    return TemplateBuildError(
        f"{message}\n--- build log ({kept}), last lines ---\n{log.tail()}",
        step=index,
        step_name=label,
        log=str(kept),
    )


def _check_steps_fit(base: BaseInfo, steps: list[Step]) -> None:
    """Refuse, before anything runs, a step the base cannot take."""
    from ...providers import pkgdb

    if base.kind == "host" and any(isinstance(s, AptStep) for s in steps) and not pkgdb.available():
        raise InvalidArgumentError(
            "apt steps on a host base need a Debian-like host (no /var/lib/dpkg/status here); "
            "use an image base (oci:, docker:, rootfs:, tar:) or --pip and --file steps"
        )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, SandlotError):
        return exc.message
    return str(exc) or type(exc).__name__


def _keep_failed_log(
    store: TemplateStore, work_log: Path, name: str, base: str, steps: list[Step], index: int
) -> Path:
    """A failed build's log, kept under a digest of what was attempted (until gc)."""
    attempt = canonical(
        {"name": name, "base": base, "steps": [s.model_dump(mode="json") for s in steps],
         "failed": index, "at": time.time_ns()}
    )  # fmt: skip
    path = store.log_path(hashlib.sha256(attempt).hexdigest())
    try:
        write_atomic(path, work_log.read_bytes())
    finally:
        remove_tree(work_log.parent)
    return path


def _ignore(_event: Any) -> None:
    return None
