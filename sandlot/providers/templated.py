"""A local provider's side of ``SandboxSpec.template``: resolve the reference in the state
folder's template store, start from its environment and working folder, and pin it (so a
``template gc`` never removes the layers of a running sandbox) until the sandbox is gone.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..models import SandboxSpec
from . import rootfs

if TYPE_CHECKING:
    from ..workspace.templates.store import ResolvedTemplate, TemplateStore

DEFAULT_WORKDIR = SandboxSpec.model_fields["workdir"].default


def store(home: Path) -> TemplateStore:
    from ..workspace.templates.store import TemplateStore  # only sandboxes of templates

    return TemplateStore(home)


def resolve(home: Path, ref: str) -> ResolvedTemplate:
    """The template ``ref`` names (a name of the local user, or ``sha256:`` a manifest)."""
    return store(home).resolve(ref)


def apply(spec: SandboxSpec, template: Any) -> SandboxSpec:
    """The spec with the template's environment beneath the caller's, and its working
    folder where the caller left the default."""
    update: dict[str, Any] = {}
    if template.env:
        update["env"] = {**template.env, **spec.env}
    if template.workdir and spec.workdir == DEFAULT_WORKDIR:
        update["workdir"] = template.workdir
    return spec.model_copy(update=update) if update else spec


def pin(home: Path, sandbox_id: str, digest: str) -> None:
    store(home).pin(sandbox_id, digest)


def unpin(home: Path, sandbox_id: str) -> None:
    """Drop a sandbox's pin; nothing if it has none (or there is no store)."""
    if (home / "templates").is_dir():
        store(home).unpin(sandbox_id)


def open_path(home: Path, lowers: list[Path]) -> None:
    """Let an unprivileged bwrap (a sandbox's own host uid) reach the layer folders it binds:
    search permission (o+x, nothing more) on each layer root and the folders above it
    beneath ``home``."""
    seen: set[Path] = set()
    for lower in lowers:
        for path in (lower, *lower.parents):
            if path in seen or not path.is_relative_to(home) or path == home:
                break
            seen.add(path)
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o111 != 0o111:
                path.chmod(stat.S_IMODE(st.st_mode) | 0o111)


def handle(sandbox_id: str, template: Any, upper: str | None) -> dict[str, Any]:
    """What the sandbox's handle keeps of its template, for :func:`release`."""
    kept: dict[str, Any] = {"sandbox": sandbox_id, "digest": template.digest}
    if upper is not None:
        kept["upper"] = upper
        kept["lowers"] = [str(p) for p in template.lowers]
    return kept


def release(home: Path, kept: Any) -> None:
    """A sandbox of a template is gone: its pin, and a build's work folders."""
    if not isinstance(kept, dict):
        return
    if isinstance(kept.get("upper"), str):
        lowers = [Path(p) for p in kept.get("lowers", []) if isinstance(p, str)]
        rootfs.tidy_upper(Path(kept["upper"]), lowers)
    if isinstance(kept.get("sandbox"), str):
        unpin(home, kept["sandbox"])
