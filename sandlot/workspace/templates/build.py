"""The build engine: a base and steps in, a named template out, each step a cached layer.

A step's layer id is its cache key: sha256 of the layer below (or the base), the step's
canonical JSON, the env and workdir it runs with, and the hash of its input files (file
steps). A key already in the store is reused; otherwise the step runs:

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
from .model import (
    DIGEST_PREFIX,
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


def step_key(parent: str, step: Step, env: dict[str, str], workdir: str | None) -> str:
    """A step layer's id: what the step sees and does (file steps carry their input hash)."""
    data = {"parent": parent, "step": step.model_dump(mode="json"), "env": env, "workdir": workdir}
    return hashlib.sha256(b"step\0" + canonical(data)).hexdigest()


class _Log:
    """The build log: a file, and LogLine events."""

    def __init__(self, path: Path, on_event: OnEvent | None) -> None:
        self.path = path
        self.fh = open(path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
        self.on_event = on_event
        self.index = 0
        self._partial = ""

    async def write(self, text: str) -> None:
        self.fh.write(text)
        self.fh.flush()
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            await _emit(self.on_event, LogLine(index=self.index, line=line))

    async def flush(self) -> None:
        if self._partial:
            await _emit(self.on_event, LogLine(index=self.index, line=self._partial))
            self._partial = ""

    def tail(self) -> str:
        self.fh.flush()
        with open(self.path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(self.path) - LOG_TAIL))
            return fh.read().decode("utf-8", "replace")

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
    ) -> None:
        self.resources = {**BUILD_RESOURCES, **(resources or {})}
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

    @property
    def lowers(self) -> list[Path]:
        return [self.store.layer_dir(layer.id) / "root" for layer in reversed(self.layers)]

    @property
    def views(self) -> list[Path]:
        """The merged view a step sees (on a host base, the host's root at the bottom)."""
        return [*self.lowers, Path("/")] if self.base.kind == "host" else self.lowers

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
        key = step_key(self.parent, step, self.env, self.workdir)
        cached = self.store.has_layer(key) and not self.no_cache
        if cached:
            info = self.store.layer(key)
            await log.write(f"cached: layer {key[:12]}\n")
        else:
            info = await self._make_layer(step, key, log)
        self.layers.append(info)
        self.done.append(step)
        self.parent = key
        return cached, info.size

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
            if self.no_cache and self.store.has_layer(key):
                remove_tree(self.store.layer_dir(key))
            return await asyncio.to_thread(self.store.add_layer, upper, key, step)
        finally:
            remove_tree(work)

    async def _in_sandbox(self, step: Step, upper: Path, log: _Log) -> None:
        from ...egress.policy import NetworkPolicy
        from ...models import Bind, SandboxSpec
        from ...sdk.sandbox import AsyncSandbox

        if self.manager is None:
            raise SandlotError("a manager is needed to run apt, pip and run steps")
        if "template" not in SandboxSpec.model_fields:
            raise SandlotError("this sandlot's providers cannot start a sandbox from a template")
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
            hosts = S.apt_hosts(self.views)
            env |= S.APT_ENV
            command = S.apt_command(step)
        else:
            assert isinstance(step, RunStep)
            command = S.run_command(step, self.workdir)
        network: Any = "none"
        if hosts:
            network = NetworkPolicy(**await asyncio.to_thread(S.network_policy, hosts))
        if hosts:
            await log.write(f"network: {', '.join(hosts)}\n")
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
    provider: str | None = None,
    resources: dict[str, Any] | None = None,
) -> TemplateManifest:
    """Build template ``name`` of ``owner`` from ``base`` (``host``, ``oci:REF``, ...) and
    ``steps`` (Step models or their JSON); returns its manifest, stored and named. ``manager``
    (or a factory of one) runs the sandboxed steps; the store is ``home``'s (default: the
    manager's). ``resources``: limits of the build sandboxes (default BUILD_RESOURCES).
    A failed step raises TemplateBuildError naming it, with its log's tail."""
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
    engine = _Build(mgr, store, on_event, no_cache, provider, resources)
    work_log = store.tmp_dir("log-") / "build.log"
    log = _Log(work_log, on_event)
    index, label = 0, f"base {base}"
    try:
        with store.using():
            await log.write(f"# sandlot template build {name} --from {base}\n")
            engine.base, base_layer = await prepare_base(base, store, on_event or _ignore)
            _check_steps_fit(engine.base, checked)
            if base_layer is not None:
                engine.layers.append(store.layer(base_layer))
                engine.parent = base_layer
            else:
                engine.parent = engine.base.key
            for index, step in enumerate(checked, 1):
                label = step.label()
                log.index = index
                await _emit(on_event, StepStarted(index=index, total=len(checked), name=label))
                await log.write(f"# step {index}/{len(checked)}: {label}\n")
                t0 = time.monotonic()
                cached, size = await engine.step(step, log)
                await _emit(
                    on_event,
                    StepFinished(
                        index=index,
                        name=label,
                        cached=cached,
                        layer=step.makes_layer,
                        seconds=round(time.monotonic() - t0, 3),
                        bytes=size,
                    ),
                )
            log.index = len(checked) + 1
            manifest = engine.manifest(name)
            digest = store.save(manifest, owner)
    except BaseException as exc:
        await log.flush()
        log.close()
        kept = _keep_failed_log(store, work_log, name, base, checked, index)
        message = f"step {index} ({label}): {_reason(exc)}" if index else f"{label}: {_reason(exc)}"
        tail = Path(kept).read_text(errors="replace")[-LOG_TAIL:]
        await _emit(on_event, BuildFailed(index=index, name=label, error=message, log=str(kept)))
        if isinstance(exc, (_StepFailed, SandlotError, OSError)):
            raise TemplateBuildError(
                f"{message}\n--- build log ({kept}), last lines ---\n{tail}",
                step=index,
                step_name=label,
                log=str(kept),
            ) from (None if isinstance(exc, _StepFailed) else exc)
        raise
    log.close()
    final = store.log_path(digest)
    if not final.exists():  # a rebuild of the same digest keeps the log that made its layers
        os.replace(work_log, final)
    remove_tree(work_log.parent)
    await _emit(
        on_event,
        BuildDone(
            name=name,
            digest=digest,
            size=manifest.size,
            seconds=round(time.monotonic() - started, 3),
        ),
    )
    return manifest


def _check_steps_fit(base: BaseInfo, steps: list[Step]) -> None:
    """Refuse, before anything runs, a step the base cannot take."""
    if base.kind == "host" and any(isinstance(s, AptStep) for s in steps):
        raise InvalidArgumentError(
            "apt steps need an image base (oci:, docker:, rootfs:, tar:): a host-base template "
            "holds only what its steps add, not the host's package database, so apt would "
            "see an empty system; use --pip or --file on a host base"
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
