"""What a template is on disk: its manifest, its base, its layers and the steps that made them.

Everything here is validated when read back (a store may be copied around, an import is
untrusted), so the rest of the package can trust a model it holds. A manifest's digest is the
sha256 of its canonical JSON without ``name`` and ``created_at``: two builds of the same steps
on the same base give the same digest, whatever they are called.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ...errors import InvalidArgumentError
from ...models import describe

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
DIGEST_PREFIX = "sha256:"
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# An apt package (with an optional =version or /release): never an option.
APT_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]*(?:[:][a-z0-9]+)?(?:[=/][A-Za-z0-9.+:~_-]+)?$")
MAX_STEPS = 200
MAX_TEXT = 8192
PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3", "/opt/python/bin/python3")


def check_name(name: str) -> str:
    """A template name: 1-63 of ``a-z 0-9 . _ -``, starting with a letter or digit."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidArgumentError(
            f"invalid template name {name!r:.80}: 1-63 of a-z 0-9 . _ -, starting with a "
            "letter or digit"
        )
    return name


def check_hex64(value: str, what: str = "digest") -> str:
    if not isinstance(value, str) or not HEX64_RE.match(value):
        raise InvalidArgumentError(f"invalid {what} {value!r:.80}: 64 lowercase hex digits")
    return value


def _no_control(value: str, what: str) -> str:
    if not value or len(value) > MAX_TEXT or "\0" in value:
        raise ValueError(f"{what} must be 1-{MAX_TEXT} characters without NUL")
    return value


def _abs_path(value: str, what: str) -> str:
    _no_control(value, what)
    if not value.startswith("/") or any(p in ("..",) for p in value.split("/")):
        raise ValueError(f"{what} must be an absolute path without '..': {value!r:.100}")
    if "\n" in value:
        raise ValueError(f"{what} must not contain a newline")
    return value


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def label(self) -> str:
        """How the step is named in progress and errors: ``pip numpy pandas``."""
        raise NotImplementedError

    @property
    def makes_layer(self) -> bool:
        """Whether the step changes files (env and workdir only change the manifest)."""
        return True


class AptStep(_Step):
    """``apt-get install`` these Debian packages (as uid 0 in the build sandbox)."""

    kind: Literal["apt"] = "apt"
    packages: list[str] = Field(min_length=1, max_length=500)

    @field_validator("packages")
    @classmethod
    def _packages(cls, value: list[str]) -> list[str]:
        for item in value:
            if not APT_RE.match(item):
                raise ValueError(f"not an apt package name: {item!r:.100}")
        return value

    def label(self) -> str:
        return "apt " + " ".join(self.packages)


class PipStep(_Step):
    """``python -m pip install`` these requirements into the template's system site."""

    kind: Literal["pip"] = "pip"
    packages: list[str] = Field(min_length=1, max_length=500)

    @field_validator("packages")
    @classmethod
    def _packages(cls, value: list[str]) -> list[str]:
        for item in value:
            _no_control(item, "a pip requirement")
            # An option would change what pip does (--index-url, --target): never one.
            if item.startswith("-") or "\n" in item:
                raise ValueError(f"not a pip requirement: {item!r:.100}")
        return value

    def label(self) -> str:
        return "pip " + " ".join(self.packages)


class FileStep(_Step):
    """Copy a host file (or folder) into the template at ``dst``. ``sha256``: the input's
    hash, filled in by the build (it is part of the cache key)."""

    kind: Literal["file"] = "file"
    src: str
    dst: str
    sha256: str | None = None

    @field_validator("src")
    @classmethod
    def _src(cls, value: str) -> str:
        return _no_control(value, "file source")

    @field_validator("dst")
    @classmethod
    def _dst(cls, value: str) -> str:
        value = _abs_path(value, "file destination")
        if value.rstrip("/") == "":
            raise ValueError("file destination must not be /")
        return value

    def label(self) -> str:
        return f"file {self.src}:{self.dst}"


class RunStep(_Step):
    """A shell command (``sh -c``), run as uid 0 in the build sandbox."""

    kind: Literal["run"] = "run"
    command: str

    @field_validator("command")
    @classmethod
    def _command(cls, value: str) -> str:
        return _no_control(value, "run command")

    def label(self) -> str:
        return f"run {self.command}"


class EnvStep(_Step):
    """Set an environment variable for the template's sandboxes (and later steps)."""

    kind: Literal["env"] = "env"
    key: str
    value: str

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        if not ENV_NAME_RE.match(value) or len(value) > 256:
            raise ValueError(f"invalid environment variable name {value!r:.80}")
        return value

    @field_validator("value")
    @classmethod
    def _value(cls, value: str) -> str:
        if len(value) > MAX_TEXT or "\0" in value:
            raise ValueError("environment value must be at most 8192 characters without NUL")
        return value

    @property
    def makes_layer(self) -> bool:
        return False

    def label(self) -> str:
        return f"env {self.key}={self.value}"


class WorkdirStep(_Step):
    """The working folder of the template's sandboxes (and of later steps)."""

    kind: Literal["workdir"] = "workdir"
    path: str

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return _abs_path(value, "workdir")

    @property
    def makes_layer(self) -> bool:
        return False

    def label(self) -> str:
        return f"workdir {self.path}"


Step = Annotated[
    AptStep | PipStep | FileStep | RunStep | EnvStep | WorkdirStep, Field(discriminator="kind")
]
STEP_KINDS = ("apt", "pip", "file", "run", "env", "workdir")


def parse_step(kind: str, text: str | list[str]) -> Step:
    """A step from its command-line form: ``("pip", "numpy pandas")``, ``("file",
    "SRC:DST")``, ``("env", "K=V")``, ``("run", "CMD")``, ``("workdir", "/w")``."""
    words = text.split() if isinstance(text, str) else list(text)
    raw = text if isinstance(text, str) else " ".join(text)
    data: dict[str, Any]
    if kind in ("apt", "pip"):
        data = {"kind": kind, "packages": words}
    elif kind == "file":
        src, sep, dst = raw.rpartition(":")
        if not sep or not src or not dst:
            raise InvalidArgumentError(f"--file takes SRC:DST, got {raw!r:.100}")
        data = {"kind": "file", "src": src, "dst": dst}
    elif kind == "env":
        key, sep, value = raw.partition("=")
        if not sep:
            raise InvalidArgumentError(f"--env takes KEY=VALUE, got {raw!r:.100}")
        data = {"kind": "env", "key": key, "value": value}
    elif kind == "run":
        data = {"kind": "run", "command": raw}
    elif kind == "workdir":
        data = {"kind": "workdir", "path": raw}
    else:
        raise InvalidArgumentError(f"unknown step kind {kind!r}: one of {', '.join(STEP_KINDS)}")
    return check_steps([data])[0]


class _Steps(BaseModel):
    steps: list[Step] = Field(max_length=MAX_STEPS)


def check_steps(steps: list[Any]) -> list[Step]:
    """Steps from JSON-like data (or models), or one InvalidArgumentError saying what is wrong."""
    try:
        return _Steps.model_validate({"steps": [_plain(s) for s in steps]}).steps
    except ValidationError as exc:
        raise InvalidArgumentError(describe(exc, "template steps")) from None


def _plain(step: Any) -> Any:
    return step.model_dump() if isinstance(step, BaseModel) else step


def canonical(data: Any) -> bytes:
    """The one JSON encoding hashes are taken of: sorted keys, no spaces, UTF-8."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class BaseInfo(BaseModel):
    """What a template is built on. ``host``: the host's own system (no base layer);
    the others a root filesystem unpacked into the template's bottom layer. ``digest``:
    the content digest of that base (empty for ``host``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["host", "oci", "docker", "rootfs", "tar"]
    ref: str = Field("", max_length=4096)
    digest: str = Field("", max_length=200)

    @property
    def key(self) -> str:
        """What the first layer's cache key starts from."""
        return f"{self.kind}:{self.digest or self.ref}"


class LayerInfo(BaseModel):
    """One layer: ``step`` is None for a base layer (a whole root filesystem)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    size: int = Field(0, ge=0)
    files: int = Field(0, ge=0)
    step: Step | None = None
    content: str = Field("", pattern=r"^([0-9a-f]{64})?$")
    """sha256 of the layer's files (see layers.tree_digest): checked again on import."""

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not HEX64_RE.match(value):
            raise ValueError("layer id must be 64 lowercase hex digits")
        return value


class TemplateManifest(BaseModel):
    """A template: its base, its layers (bottom first), the steps that made them and what
    its sandboxes start with (``env``, ``workdir``, ``python``: the agent's interpreter)."""

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    base: BaseInfo
    layers: list[LayerInfo] = Field(default_factory=list, max_length=MAX_STEPS + 1)
    steps: list[Step] = Field(default_factory=list, max_length=MAX_STEPS)
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = None
    python: str = "/usr/bin/python3"
    size: int = Field(0, ge=0)
    sandlot_version: str = ""
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if value and not NAME_RE.match(value):
            raise ValueError(f"invalid template name {value!r:.80}")
        return value

    @field_validator("python")
    @classmethod
    def _python(cls, value: str) -> str:
        return _abs_path(value, "python")

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, value: str | None) -> str | None:
        return None if value is None else _abs_path(value, "workdir")

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if not ENV_NAME_RE.match(key) or "\0" in item:
                raise ValueError(f"invalid environment variable {key!r:.80}")
        return value

    def digest(self) -> str:
        """sha256 (hex) of the canonical JSON without ``name`` and ``created_at``."""
        data = self.model_dump(mode="json", exclude={"name", "created_at"})
        return hashlib.sha256(canonical(data)).hexdigest()

    @property
    def layer_ids(self) -> list[str]:
        return [layer.id for layer in self.layers]

    @property
    def host_base(self) -> bool:
        return self.base.kind == "host"


def parse_manifest(raw: bytes | str, what: str = "template manifest") -> TemplateManifest:
    try:
        return TemplateManifest.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidArgumentError(describe(exc, what)) from None


def parse_ref(ref: str) -> tuple[str | None, str | None]:
    """``(name, None)`` or ``(None, hex digest)``; refuses anything else."""
    if isinstance(ref, str) and ref.startswith(DIGEST_PREFIX):
        return None, check_hex64(ref[len(DIGEST_PREFIX) :], "template digest")
    return check_name(ref), None
