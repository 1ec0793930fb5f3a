"""Remote mode's templates: a sandlot server's ``/v1/templates`` for the API key's tenant
(what ``sandlot template build/ls/show/rm`` use when ``SANDLOT_URL`` is set).

A ``file`` step's source is read here, on the caller's machine, and its bytes travel with the
build (a server never reads a path a caller names); a folder is refused.

    templates = RemoteTemplates()               # SANDLOT_URL, SANDLOT_API_KEY
    out = await templates.build("datasci", "host", steps, on_progress=print)  # engine events
    await templates.list(); await templates.get("datasci"); await templates.remove("datasci")
"""

from __future__ import annotations

import base64
import builtins
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from pydantic import Field, TypeAdapter, ValidationError

from ..api_templates import MAX_UPLOAD, TemplateBuildRequest, TemplateOut, UploadStep
from ..errors import (
    InvalidArgumentError,
    ProtocolError,
    RemoteUnavailableError,
    from_dict,
)
from ..models import describe
from ..workspace.templates.build import BuildEvent
from ..workspace.templates.model import FileStep, check_name, check_steps
from .client import Client
from .sse import events

Progress = Callable[[Any], None]
_EVENTS: TypeAdapter[Any] = TypeAdapter(Annotated[BuildEvent, Field(discriminator="type")])


class RemoteTemplates:
    """A sandlot server's templates (the caller's tenant's)."""

    def __init__(self, client: Client | None = None) -> None:
        self.client = client or Client()

    def __repr__(self) -> str:
        return f"RemoteTemplates({self.client.url!r})"

    async def build(
        self,
        name: str,
        base: str = "host",
        steps: Sequence[Any] = (),
        *,
        allow: Sequence[str] = (),
        on_progress: Progress | None = None,
    ) -> TemplateOut:
        """Build ``name`` on the server (replacing the tenant's template of that name);
        ``allow``: network rules every sandboxed step gets (the server's network checks
        apply); ``on_progress`` gets each progress event, the build engine's own models (as a local
        build's ``on_event`` does; an event this client does not know is skipped). Raises
        the build's error (TemplateBuildError names the failed step)."""
        body = build_request(name, base, steps, allow)
        response = await self.client.open(
            "POST",
            "/v1/templates",
            json=body.model_dump(mode="json"),
            headers={"Accept": "text/event-stream"},
        )
        try:
            async for event in events(response):
                if event.kind == "progress":
                    progress = _progress(event.data)
                    if on_progress is not None and progress is not None:
                        on_progress(progress)
                elif event.kind == "template":
                    return TemplateOut.model_validate(event.data)
                elif event.kind == "error":
                    raise _error(event.data)
        finally:
            response.release()
        raise RemoteUnavailableError(
            f"the build's stream from {self.client.url} ended before the build did"
        )

    async def list(self) -> builtins.list[TemplateOut]:
        answer = await self.client.call("GET", "/v1/templates")
        return [TemplateOut.model_validate(item) for item in answer or []]

    async def get(self, name: str) -> TemplateOut:
        """TemplateNotFoundError for a name the tenant does not have."""
        return TemplateOut.model_validate(await self.client.call("GET", _path(name)))

    async def log(self, name: str) -> str:
        """The template's build log."""
        response = await self.client.open("GET", _path(name) + "/log", retry=True)
        try:
            return (await response.read()).decode("utf-8", "replace")
        finally:
            response.release()

    async def remove(self, name: str) -> None:
        """TemplateNotFoundError for a name the tenant does not have."""
        await self.client.call("DELETE", _path(name))


def build_request(
    name: str, base: str, steps: Sequence[Any], allow: Sequence[str] = ()
) -> TemplateBuildRequest:
    """The body of a build: the steps as given, each local file step as an upload."""
    wire: list[Any] = []
    for step in check_steps(list(steps)) if steps else []:
        wire.append(_upload(step) if isinstance(step, FileStep) else step)
    try:
        return TemplateBuildRequest(name=check_name(name), base=base, steps=wire, allow=allow)
    except ValidationError as exc:
        raise InvalidArgumentError(describe(exc, "template build")) from None


def _upload(step: FileStep) -> UploadStep:
    path = Path(step.src).expanduser()
    try:
        info = os.stat(path)
    except OSError as exc:
        raise InvalidArgumentError(f"file step {step.src}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise InvalidArgumentError(
            f"file step {step.src}: a server takes files only (send a folder as a tar file "
            "and unpack it with a run step)"
        )
    if info.st_size > MAX_UPLOAD:
        raise InvalidArgumentError(
            f"file step {step.src}: {info.st_size} bytes; a build sent to a server takes "
            f"files of at most {MAX_UPLOAD} bytes"
        )
    content = path.read_bytes()
    return UploadStep(
        dst=step.dst,
        content_b64=base64.b64encode(content).decode(),
        executable=bool(info.st_mode & 0o111),
    )


def _progress(data: dict[str, Any]) -> Any:
    try:
        return _EVENTS.validate_python(data)
    except ValidationError:
        return None  # a newer server's kind of event: progress only informs


def _error(data: dict[str, Any]) -> Exception:
    if not isinstance(data, dict) or "code" not in data:
        return ProtocolError(f"malformed error from the server: {str(data)[:200]}")
    details = data.get("details")
    details = details if isinstance(details, dict) else {}
    return from_dict({"code": data["code"], "message": data.get("message", ""), **details})


def _path(name: str) -> str:
    return "/v1/templates/" + quote(check_name(name), safe="")
