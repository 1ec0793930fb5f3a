"""The HTTP API's template bodies (``/v1/templates``), shared by the server and remote mode.

Apart from :mod:`sandlot.api`: they load the template models, which a sandbox call never
needs. A build's steps are the template steps (:mod:`sandlot.workspace.templates.model`)
except ``file``: through a server a file step carries the file itself (:class:`UploadStep`),
since a server never reads a path a caller names on its host.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .workspace.templates.model import (
    MAX_STEPS,
    NAME_RE,
    AptStep,
    BaseInfo,
    EnvStep,
    FileStep,
    LayerInfo,
    PipStep,
    RunStep,
    Step,
    WorkdirStep,
)

MAX_UPLOAD = 8 * 1024 * 1024  # bytes of one uploaded file
MAX_UPLOADS = 16 * 1024 * 1024  # of all of a build's (base64 makes it 21 MiB of JSON)
UPLOADED = "(uploaded)"  # what a manifest's file step says its source was


def _b64_length(size: int) -> int:
    return 4 * ((size + 2) // 3)


class UploadStep(BaseModel):
    """Put a file into the template at ``dst``: its bytes travel here (base64)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["file"] = "file"
    dst: str = Field(description="absolute path in the template")
    content_b64: str = Field(
        max_length=_b64_length(MAX_UPLOAD),
        description=f"the file's bytes, base64 (at most {MAX_UPLOAD} bytes)",
    )
    executable: bool = Field(False, description="mode 0755 rather than 0644")

    @field_validator("dst")
    @classmethod
    def _dst(cls, value: str) -> str:
        return FileStep(src=UPLOADED, dst=value).dst  # the same rule as a local file step

    @field_validator("content_b64")
    @classmethod
    def _content(cls, value: str) -> str:
        try:
            size = len(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            raise ValueError("content_b64 is not base64") from None
        if size > MAX_UPLOAD:  # the length bound above lets up to 2 bytes more through
            raise ValueError(f"a file may be at most {MAX_UPLOAD} bytes")
        return value

    @property
    def content(self) -> bytes:
        return base64.b64decode(self.content_b64)

    @property
    def size(self) -> int:
        return len(self.content_b64) // 4 * 3 - self.content_b64[-2:].count("=")


BuildStep = Annotated[
    AptStep | PipStep | UploadStep | RunStep | EnvStep | WorkdirStep,
    Field(discriminator="kind"),
]


class TemplateBuildRequest(BaseModel):
    """Build a template (replacing the caller's template of that name, if any)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=NAME_RE.pattern,
        description="1-63 of a-z 0-9 . _ -, starting with a letter or digit; the caller's own",
    )
    base: str = Field(
        "host",
        min_length=1,
        max_length=4096,
        description="host, or oci:IMAGE (a registry image); docker:, rootfs: and tar: only "
        "where the operator allows them",
    )
    steps: list[BuildStep] = Field(default_factory=list, max_length=MAX_STEPS)
    allow: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="network rules (as a sandbox's network allow list) every apt, pip and "
        "run step gets on top of the package hosts; run steps have no network otherwise",
    )

    @model_validator(mode="after")
    def _uploads(self) -> TemplateBuildRequest:
        total = sum(s.size for s in self.steps if isinstance(s, UploadStep))
        if total > MAX_UPLOADS:
            raise ValueError(f"the files of a build may be at most {MAX_UPLOADS} bytes in all")
        return self


class TemplateOut(BaseModel):
    """A template of the caller's: what it was built from and how big it is."""

    name: str
    digest: str = Field(description="sha256:<hex> of its manifest")
    base: BaseInfo
    layers: list[LayerInfo]
    steps: list[Step]
    env: dict[str, str]
    workdir: str | None = None
    python: str
    size: int = Field(description="bytes of its layers")
    sandlot_version: str
    created_at: datetime


def template_out(name: str, manifest: Any) -> TemplateOut:
    """A manifest as a tenant sees it (a file step's source on the server is not shown)."""
    data = manifest.model_dump()
    for step in [*data["steps"], *(layer["step"] for layer in data["layers"] if layer["step"])]:
        if step.get("kind") == "file":
            step["src"] = UPLOADED
    return TemplateOut(name=name, digest="sha256:" + manifest.digest(), **_fields(data))


def _fields(data: dict[str, Any]) -> dict[str, Any]:
    keep = set(TemplateOut.model_fields) - {"name", "digest"}
    return {k: v for k, v in data.items() if k in keep}
