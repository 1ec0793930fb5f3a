"""Pydantic models for everything that crosses a boundary (SDK, CLI, store, later HTTP)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .egress.bridge_config import BridgeConfig
from .egress.policy import NetworkPolicy
from .errors import InvalidArgumentError, SandlotError
from .secrets.refs import MaybeSecret, SecretRef, as_ref

# A sandbox's two lifetimes (docs/lifetimes.md): the idle timeout ends one nobody uses (no
# command, stream or client call for that long); the hard lifetime ends any, used or not.
DEFAULT_TIMEOUT = 4 * 3600.0  # hard lifetime, seconds: a long chat fits, a runaway is bounded
DEFAULT_IDLE_TIMEOUT = 600.0  # seconds: a pause to think survives it, an abandoned run does not
DEFAULT_COMMAND_TIMEOUT = 60.0
MAX_LIFETIME = 366 * 86400.0  # seconds: a sandbox's lifetime, and any timeout
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def describe(error: ValidationError, what: str) -> str:
    """One line per problem: ``invalid sandbox settings: timeout: must be > 0; ...``."""
    parts = []
    for item in error.errors():
        where = ".".join(str(x) for x in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return f"invalid {what}: " + "; ".join(parts)


def check_env(env: dict[str, str]) -> dict[str, str]:
    for key, value in env.items():
        if not ENV_NAME.fullmatch(key):
            raise ValueError(f"invalid environment variable name {key!r}")
        if "\0" in value:
            raise ValueError(f"environment variable {key} contains a NUL byte")
    return env


def check_env_refs(env: Mapping[Any, Any]) -> dict[str, MaybeSecret]:
    """Variables whose values are strings or ``{"secret": NAME}`` references (as SecretRef):
    one check for a sandbox's and a command's, with one clear message per mistake."""
    checked: dict[str, MaybeSecret] = {}
    for key, value in env.items():
        ref = as_ref(value) if isinstance(value, dict) else None
        if not isinstance(key, str) or not ENV_NAME.fullmatch(key):
            raise ValueError(f"invalid environment variable name {key!r}")
        if not isinstance(value, (str, SecretRef)) and ref is None:
            raise ValueError(
                f"{key}: a value is a string or {{'secret': NAME}}, not {type(value).__name__}"
            )
        if isinstance(value, str) and "\0" in value:
            raise ValueError(f"environment variable {key} contains a NUL byte")
        checked[key] = ref or value
    return checked


MAX_PATH = 4096  # Linux's PATH_MAX
MAX_NAME = 255  # and NAME_MAX: longer paths fail in the kernel, not at the boundary

# A workspace alias lives only beneath one of these roots, never at one: none of them holds
# anything a sandbox's system needs (unlike /etc, /usr, /proc, /tmp, ...), so a second mount
# of the workspace there hides nothing. An allow-list fails closed.
ALIAS_ROOTS = ("/home", "/mnt", "/srv", "/data")
# A template reference (SandboxSpec.template): a name, or a manifest digest.
TEMPLATE_REF = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}|sha256:[0-9a-f]{64}")
ALIAS_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
MAX_ALIAS = 255
MAX_ALIAS_PARTS = 6


def check_alias(value: str) -> str:
    """A workspace alias: absolute, normalised, beneath one of :data:`ALIAS_ROOTS`."""
    if len(value) > MAX_ALIAS:
        raise ValueError(f"workspace_alias is too long (at most {MAX_ALIAS} characters)")
    parts = value.split("/")
    if not value.startswith("/") or len(parts) < 3 or len(parts) > MAX_ALIAS_PARTS + 1:
        raise ValueError(
            f"workspace_alias must be an absolute path of 2 to {MAX_ALIAS_PARTS} folders"
        )
    if not all(ALIAS_PART.fullmatch(p) and p != "." and p != ".." for p in parts[1:]):
        raise ValueError(
            "workspace_alias must be normalised: folder names of letters, digits, '.', '_' "
            "and '-', no '.' or '..', no empty name, no trailing '/'"
        )
    if "/" + parts[1] not in ALIAS_ROOTS:
        raise ValueError("workspace_alias must be beneath " + ", ".join(ALIAS_ROOTS))
    return value


def alias_of(path: str, alias: str | None) -> str:
    """``path`` as a /workspace path when it is the alias or beneath it, else unchanged."""
    if alias is not None and (path == alias or path.startswith(alias + "/")):
        return "/workspace" + path[len(alias) :]
    return path


# Every model here is built when first used (``defer_build``), not at import: most programs
# use a few of them, and building one costs a millisecond or more.


class Resources(BaseModel):
    """Limits for one sandbox. Enforced with cgroups where the host has them, else rlimits."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    memory_mb: int = Field(512, ge=16, le=1 << 30, description="memory limit (RAM, no swap)")
    pids: int = Field(256, ge=8, le=4194304, description="maximum number of processes and threads")
    # At least 0.01: the kernel's least CFS quota (1 ms a 100 ms period), Docker's least too.
    cpus: float = Field(1.0, ge=0.01, le=4096, description="CPU time, in cores")
    tmp_mb: int = Field(256, ge=1, le=1 << 30, description="size of the writable /tmp")
    disk_mb: int | None = Field(
        None,
        ge=16,
        le=8 << 20,
        description="size of /workspace in MiB (at most 8 TiB); unset: 10 GiB where the "
        "provider can cap it (see its 'disk-quota' capability), else uncapped",
    )


NetworkMode = Literal["none", "full"]


def parse_network(value: Any, modes: tuple[str, ...] = ("none", "full")) -> Any:
    """A network setting, with one clear message when it is wrong rather than one per member
    of the union (for a ``mode="before"`` validator)."""
    if isinstance(value, str) and value not in modes:
        choices = ", ".join(repr(m) for m in modes)
        raise ValueError(f"network is {choices} or {{'allow': [rules]}}")
    if isinstance(value, dict):
        try:
            return NetworkPolicy.model_validate(value)
        except ValidationError as exc:
            raise ValueError(describe(exc, "network policy")) from None
    return value


MAX_BINDS = 16
# A bind never goes at, over or beneath what every sandbox needs (its system, its agent, its
# workspace, the kernel's filesystems) nor at the root: the first folder name of its sandbox
# path is checked against these, so nothing a provider mounts is hidden or shadowed.
RESERVED_TOP = frozenset(
    {
        "bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "root", "run",
        "sbin", "sys", "tmp", "usr", "var", "workspace", ".sandlot",
    }
)  # fmt: skip


def _check_bind_path(value: str, what: str) -> str:
    """An absolute, normalised path: no '.', '..' or empty names, no NUL, bounded."""
    if not value.startswith("/") or value == "/":
        raise ValueError(f"{what} must be an absolute path below / ({value!r})")
    parts = value.split("/")[1:]
    if any(p in ("", ".", "..") for p in parts) or "\0" in value:
        raise ValueError(f"{what} must be normalised: no '.', '..', '//', trailing '/' ({value!r})")
    encoded = value.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_PATH or any(len(p) > MAX_NAME for p in encoded.split(b"/")):
        raise ValueError(f"{what} is too long ({value[:64]!r}...)")
    return value


def overlaps(a: str, b: str) -> bool:
    """Whether one of two normalised absolute paths is the other or beneath it."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


class Bind(BaseModel):
    """A host file or folder mounted into the sandbox at ``path`` (see docs/security.md).

    ``host``: an absolute path on the machine that runs the sandbox (a server's, remotely),
    resolved once (symlinks followed) when the sandbox is made; what it resolved to is what is
    mounted. ``path``: where the sandbox sees it, e.g. ``/project``; never /, /proc, /dev,
    /sys, /usr, /etc, /tmp, /workspace or the agent's folder. ``mode``: ``"ro"`` (the default)
    or ``"rw"``: the sandbox's writes land in the host folder, owned by the user who runs
    sandlot.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str
    path: str
    mode: Literal["ro", "rw"] = "ro"

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return _check_bind_path(value, "host")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        _check_bind_path(value, "path")
        if value.split("/")[1] in RESERVED_TOP:
            raise ValueError(
                f"path {value} would hide a folder every sandbox needs: pick another place, "
                "e.g. /project or /mnt/NAME"
            )
        return value


def check_binds(binds: list[Bind], alias: str | None) -> list[Bind]:
    """At most :data:`MAX_BINDS`, no two at the same place or one inside another, none over
    or inside the workspace's alias."""
    if len(binds) > MAX_BINDS:
        raise ValueError(f"at most {MAX_BINDS} binds")
    for i, bind in enumerate(binds):
        if alias is not None and overlaps(bind.path, alias):
            raise ValueError(f"bind path {bind.path} overlaps the workspace_alias {alias}")
        for other in binds[:i]:
            if overlaps(bind.path, other.path):
                raise ValueError(f"bind paths {other.path} and {bind.path} overlap")
    return binds


class SandboxSpec(BaseModel):
    """What to create. Provider-specific settings go in ``config``, validated by the provider.

    ``network``: ``"none"`` (the default: no route at all), a :class:`NetworkPolicy` (only the
    hosts it allows, through the egress proxy on the host), or ``"full"`` (only by name).
    ``bridge``: a callback bridge to the control plane. ``env`` values may be
    ``{"secret": NAME}``: resolved when the sandbox starts, never stored or shown.
    """

    model_config = ConfigDict(extra="forbid", defer_build=True)

    provider: str | None = None
    timeout: float = Field(
        DEFAULT_TIMEOUT,
        gt=0,
        le=MAX_LIFETIME,
        description="hard lifetime in seconds (at most a year): the sandbox ends then, used or not",
    )
    idle_timeout: float | None = Field(
        DEFAULT_IDLE_TIMEOUT,
        gt=0,
        le=MAX_LIFETIME,
        description="seconds without activity (no command or cell running, no stream, no call) "
        "after which the sandbox is stopped (a session's: checkpointed first); null: never",
    )
    env: dict[str, MaybeSecret] = Field(default_factory=dict)
    workdir: str = "/workspace"
    workspace_alias: str | None = Field(
        None,
        description="a second path where the workspace is mounted (the same files as "
        "/workspace, e.g. /home/user): an absolute, normalised path of 2 to 6 folder names "
        "(letters, digits, '.', '_', '-'; at most 255 characters) beneath /home, /mnt, /srv "
        "or /data; providers that cannot mount (process) refuse it",
    )
    metadata: dict[str, str] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    network: NetworkMode | NetworkPolicy = "none"
    bridge: BridgeConfig | None = None
    binds: list[Bind] = Field(
        default_factory=list,
        description="host files or folders mounted into the sandbox, read-only or read-write "
        f"(at most {MAX_BINDS}; see Bind); a server refuses them unless its operator allowed "
        "roots for them (--allow-bind-root)",
    )
    template: str | None = Field(
        None,
        description="the template the sandbox's root file system comes from: a name, or "
        "'sha256:' and a manifest digest (see docs/templates.md); None: the host's system",
    )
    config: dict[str, Any] = Field(default_factory=dict)

    @field_validator("template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None and not TEMPLATE_REF.fullmatch(value):
            raise ValueError(
                f"template must be a name (1-63 of a-z 0-9 . _ -) or sha256:<64 hex>, "
                f"got {value!r:.80}"
            )
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, value: Any) -> Any:
        return check_env_refs(value) if isinstance(value, dict) else value

    @field_validator("network", mode="before")
    @classmethod
    def _network(cls, value: Any) -> Any:
        return parse_network(value)

    @property
    def plain_env(self) -> dict[str, str]:
        """The variables that are not secret: what a provider may put on a command line."""
        return {k: v for k, v in self.env.items() if isinstance(v, str)}

    @property
    def secret_env(self) -> dict[str, SecretRef]:
        return {k: v for k, v in self.env.items() if isinstance(v, SecretRef)}

    @field_validator("provider")
    @classmethod
    def _provider(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("provider must be a name, or None for the default")
        return value

    @field_validator("workspace_alias")
    @classmethod
    def _alias(cls, value: str | None) -> str | None:
        return None if value is None else check_alias(value)

    @model_validator(mode="after")
    def _binds(self) -> SandboxSpec:
        check_binds(self.binds, self.workspace_alias)
        return self

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("workdir must be an absolute path")
        if "\0" in value:
            raise ValueError("workdir contains a NUL byte")
        encoded = value.encode("utf-8", "surrogateescape")
        if len(encoded) > MAX_PATH or any(len(p) > MAX_NAME for p in encoded.split(b"/")):
            raise ValueError(
                f"workdir is too long (at most {MAX_PATH} bytes, {MAX_NAME} per folder name)"
            )
        return value


SandboxState = Literal["running", "stopped"]


class SandboxInfo(BaseModel):
    """A sandbox's record, as the store keeps it."""

    model_config = ConfigDict(defer_build=True)

    id: str
    provider: str
    state: SandboxState = "running"
    metadata: dict[str, str] = Field(default_factory=dict)
    created_at: datetime
    expires_at: datetime
    owner_pid: int
    idle_timeout: float | None = None  # seconds (None: none); see SandboxSpec
    handle: dict[str, Any] = Field(default_factory=dict, repr=False)


class SessionInfo(BaseModel):
    """A durable session: its workspace, lifetimes, current sandbox and run lock."""

    model_config = ConfigDict(defer_build=True)

    id: str
    metadata: dict[str, str] = Field(default_factory=dict)
    status: str = "active"
    workspace: str = "local"
    sandbox_id: str | None = None
    last_seq: int = 0
    created_at: datetime
    updated_at: datetime
    idle_timeout: float | None = None
    checkpoint_every: float | None = None
    delete_after: datetime | None = None
    last_active_at: datetime | None = None
    checkpoint: int | None = None  # the latest checkpoint's number (None: none yet)
    checkpointed_at: datetime | None = None
    lock_holder: str | None = None  # who runs something in it now
    lock_since: datetime | None = None


class SessionEvent(BaseModel):
    """One entry of a session's transcript. Output (``stdout``/``stderr``) is in ``text``
    (UTF-8, with replacement) and ``raw``; every other kind carries its JSON in ``data``."""

    model_config = ConfigDict(defer_build=True)

    seq: int
    kind: str
    execution_id: str | None = None
    created_at: datetime
    text: str | None = None
    data: Any = None
    raw: bytes = Field(b"", repr=False)

    @classmethod
    def of(cls, seq: int, kind: str, execution_id: str | None, raw: bytes, at: float) -> Any:
        output = kind in ("stdout", "stderr")
        data = None
        if not output and raw:
            try:
                data = json.loads(raw)
            except ValueError:
                data = None
        return cls(
            seq=seq,
            kind=kind,
            execution_id=execution_id,
            created_at=datetime.fromtimestamp(at, UTC),
            text=raw.decode("utf-8", "replace") if output else None,
            data=data,
            raw=raw,
        )


class CommandResult(BaseModel):
    """How a command ended, and what it printed.

    ``stdout``/``stderr`` are decoded as UTF-8 with replacement; the raw bytes are in
    ``stdout_bytes``/``stderr_bytes``. Output beyond the result cap keeps only its tail, and
    ``truncated`` says so (the streaming callbacks still saw every byte).
    """

    model_config = ConfigDict(defer_build=True)

    exit_code: int
    signal: int | None = None
    stdout_bytes: bytes = b""
    stderr_bytes: bytes = b""
    truncated: bool = False
    pid: int | None = None

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class ProcessInfo(BaseModel):
    """A process the sandbox's agent keeps a log of (``sb.commands.list()``): a command or a
    terminal, running, or ended a short while ago (then with its exit status).

    ``start``/``end`` are offsets into its output log (stdout and stderr bytes together, in
    the order they came, from 0): the log holds the bytes from ``start`` to ``end``; bytes
    before ``start`` were dropped when the log was full. ``attached`` counts the clients
    streaming it now. ``cols``/``rows`` are a terminal's size.
    """

    # Strict: it comes from the sandbox, where "7" is not a pid.
    model_config = ConfigDict(defer_build=True, extra="ignore", strict=True)

    pid: int
    kind: Literal["exec", "pty"]
    cmd: str | None = None
    argv: list[str] | None = None
    running: bool
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    start: int = Field(ge=0)
    end: int = Field(ge=0)
    attached: int = Field(default=0, ge=0)
    started_at: float
    cols: int | None = None
    rows: int | None = None


EntryType = Literal["file", "dir", "symlink", "other"]


class EntryInfo(BaseModel):
    """One file-system entry inside a sandbox (``lstat``: symlinks are not followed)."""

    model_config = ConfigDict(defer_build=True)

    name: str
    path: str
    type: EntryType
    size: int
    mode: int
    mtime: float
    symlink_target: str | None = None


# MIME type -> the Result property that shows it
RESULT_FORMATS = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
}


class Result(BaseModel):
    """One rich output of a cell: a MIME bundle, as Jupyter shows it.

    ``data`` maps MIME types to values (binary formats as base64 text); the properties name
    the common ones. ``is_main_result`` marks the value of the cell's trailing expression,
    as opposed to ``display()`` calls and figures. ``dropped`` lists formats left out because
    the result was over the size limit.
    """

    model_config = ConfigDict(defer_build=True)

    data: dict[str, Any] = Field(default_factory=dict)
    is_main_result: bool = False
    dropped: list[str] = Field(default_factory=list)

    @property
    def text(self) -> str | None:
        return self.data.get("text/plain")

    @property
    def html(self) -> str | None:
        return self.data.get("text/html")

    @property
    def markdown(self) -> str | None:
        return self.data.get("text/markdown")

    @property
    def svg(self) -> str | None:
        return self.data.get("image/svg+xml")

    @property
    def png(self) -> str | None:
        """Base64-encoded PNG."""
        return self.data.get("image/png")

    @property
    def jpeg(self) -> str | None:
        return self.data.get("image/jpeg")

    @property
    def pdf(self) -> str | None:
        return self.data.get("application/pdf")

    @property
    def latex(self) -> str | None:
        return self.data.get("text/latex")

    @property
    def json(self) -> Any:  # shadows pydantic's deprecated BaseModel.json() on purpose
        return self.data.get("application/json")

    @property
    def javascript(self) -> str | None:
        return self.data.get("application/javascript")

    def formats(self) -> list[str]:
        """The short names of the formats present (``text``, ``png``, ...; MIME types for
        the rest)."""
        return [RESULT_FORMATS.get(mime, mime) for mime in self.data]


class Logs(BaseModel):
    """What a cell printed, in chunks as they arrived (decoded as UTF-8)."""

    model_config = ConfigDict(defer_build=True)

    stdout: list[str] = Field(default_factory=list)
    stderr: list[str] = Field(default_factory=list)


class ExecutionError(BaseModel):
    """The exception a cell raised: its class name, ``str()`` and formatted traceback."""

    model_config = ConfigDict(defer_build=True)

    name: str
    value: str
    traceback: str = ""


class Execution(BaseModel):
    """The outcome of one cell.

    ``error`` is the cell's own exception (a failing cell is not an SDK error). After an
    interrupt or timeout, ``interrupted`` is set and the error is ``KeyboardInterrupt``; if the
    code ignored the interrupt and had to be killed, or its process died, ``state_lost`` says
    the context restarted empty. ``cut`` counts bytes left out of the middle of each stream
    (the head and tail are kept). ``not_persisted`` names variables a persistent context could
    not save, with the reason: each name and reason once, not again in later cells.
    """

    model_config = ConfigDict(defer_build=True)

    context: str
    results: list[Result] = Field(default_factory=list)
    logs: Logs = Field(default_factory=Logs)
    error: ExecutionError | None = None
    execution_count: int | None = None
    timed_out: bool = False
    interrupted: bool = False
    state_lost: bool = False
    cut: dict[str, int] = Field(default_factory=dict)
    not_persisted: dict[str, str] = Field(default_factory=dict)
    duration: float = 0.0
    cwd: str | None = None  # the worker's working directory after the cell, if known
    # Set on the first cell after a persistent context (re)started from its saved state
    # (the same lists as on its CodeContext); None on every other cell.
    restored: list[str] | None = None
    not_restored: dict[str, str] | None = None

    @property
    def main_result(self) -> Result | None:
        return next((r for r in self.results if r.is_main_result), None)

    @property
    def text(self) -> str | None:
        """The main result's text, as Jupyter shows the value of a cell's last line."""
        main = self.main_result
        return main.text if main is not None else None


class OutputEvent(BaseModel):
    """A chunk of a cell's stdout or stderr, as :meth:`AsyncSandbox.run_code_stream` yields it."""

    type: Literal["stdout", "stderr"]
    text: str


class ResultEvent(BaseModel):
    """A rich result (a display, or the cell's trailing value)."""

    type: Literal["result"] = "result"
    result: Result


class ProgressEvent(BaseModel):
    """A message the cell sent with ``progress()``."""

    type: Literal["progress"] = "progress"
    message: str


class EndEvent(BaseModel):
    """The last event: the cell's :class:`Execution`, or the SDK error that ended it
    (a timeout's error carries its partial ``Execution`` too)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    type: Literal["end"] = "end"
    execution: Execution | None = None
    error: SandlotError | None = None


CodeEvent = OutputEvent | ResultEvent | ProgressEvent | EndEvent


class CodeContext(BaseModel):
    """A Python namespace in a sandbox, kept by its own process between cells."""

    model_config = ConfigDict(defer_build=True)

    id: str
    name: str | None = None
    cwd: str
    persist: bool = False
    pid: int | None = None
    python: str | None = None
    busy: bool = False
    restored: list[str] = Field(default_factory=list)
    not_restored: dict[str, str] = Field(default_factory=dict)
    setup: bool = False  # it has setup code, run in every fresh worker
    setup_error: str | None = None  # what the current worker's setup raised, if it did
    cwd_on_path: bool = True


class ProviderInfo(BaseModel):
    """Whether a provider can run here, and if not, why."""

    model_config = ConfigDict(defer_build=True)

    name: str
    available: bool
    reason: str | None = None
    isolated: bool
    capabilities: list[str] = Field(default_factory=list)


def check_seconds(value: object, what: str = "timeout") -> float | None:
    """A duration given at a boundary: None, or a positive number of seconds up to a year."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidArgumentError(f"{what} must be a positive number of seconds, or None")
    if not value <= MAX_LIFETIME:  # (NaN fails both tests)
        raise InvalidArgumentError(f"{what} is at most {MAX_LIFETIME:g} seconds (a year)")
    return float(value)
