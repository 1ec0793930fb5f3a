"""A server's templates: each tenant's own names in the one store, its quotas, and what a
tenant may build from.

The store (:class:`~sandlot.workspace.templates.store.TemplateStore`, in the server's state
folder) keeps names per owner; the owner here is the tenant, so one tenant never sees, uses,
replaces or deletes another's (their names live apart; layers are shared by content). A
sandbox spec names a template; :meth:`ServerTemplates.pin_spec` replaces the name by the
digest it means at that moment (``sha256:<hex>``), which a tenant may not send itself: a
digest names content, not a tenant's template, and would reach another tenant's.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..api_templates import TemplateBuildRequest, TemplateOut, template_out
from ..errors import (
    ForbiddenError,
    InvalidArgumentError,
    SecretError,
    TemplateBuildError,
    TemplateNotFoundError,
)
from ..models import SandboxSpec
from ..secrets.store import SecretInfo, SecretStore, secret_not_found
from .template_uploads import Uploads

if TYPE_CHECKING:
    from ..manager import Manager
    from ..workspace.templates.model import TemplateManifest
    from ..workspace.templates.store import TemplateStore

DIGEST_PREFIX = "sha256:"
TENANT_BASES = ("host", "oci")  # bases any tenant may build from
# Bases that read the server host's own files or its container engine.
LOCAL_BASES = ("docker", "rootfs", "tar")
# The owner a build's own name goes under until the tenant's quota takes it (no tenant id
# holds a NUL, and owners are hashed into folder names).
STAGING = "\0build:"
MAX_LOG = 16 * 1024 * 1024  # of a build log in an answer (the engine bounds what it writes)


def digest_ref(digest: str) -> str:
    return digest if digest.startswith(DIGEST_PREFIX) else DIGEST_PREFIX + digest


@dataclass
class ServerTemplates:
    """The templates of every tenant of one server (see the module's documentation)."""

    home: Path
    count: int
    bytes: int
    local_bases: bool
    private_registries: bool = False  # --egress-private: oci pulls may reach its networks
    _store: TemplateStore | None = None
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.uploads = Uploads(self.home)

    @property
    def store(self) -> TemplateStore:
        if self._store is None:
            from ..workspace.templates.store import TemplateStore

            self._store = TemplateStore(self.home)
        return self._store

    def lock(self, tenant: str) -> asyncio.Lock:
        """Held while a tenant's names change: the quota check and the new name are one step."""
        return self._locks.setdefault(tenant, asyncio.Lock())

    # -- reading -----------------------------------------------------------------------------

    async def list(self, tenant: str) -> builtins.list[TemplateManifest]:
        return await asyncio.to_thread(self.store.list, tenant)

    async def get(self, tenant: str, name: str) -> TemplateManifest:
        return await asyncio.to_thread(self.store.get, check_name(name), tenant)

    async def list_out(self, tenant: str) -> builtins.list[TemplateOut]:
        return [template_out(_name_of(m), m) for m in await self.list(tenant)]

    async def show(self, tenant: str, name: str) -> TemplateOut:
        return template_out(name, await self.get(tenant, name))

    async def log(self, tenant: str, name: str) -> str:
        manifest = await self.get(tenant, name)
        path = self.store.log_path(manifest.digest())

        def read() -> str:
            try:
                with open(path, "rb") as log:
                    return str(self.scrub(log.read(MAX_LOG).decode("utf-8", "replace")))
            except FileNotFoundError:
                return ""  # built by an import: no log here

        return await asyncio.to_thread(read)

    async def remove(self, tenant: str, name: str) -> None:
        async with self.lock(tenant):
            await asyncio.to_thread(self.store.remove, check_name(name), tenant)

    # -- sandboxes ---------------------------------------------------------------------------

    async def pin_spec(self, tenant: str, spec: SandboxSpec) -> SandboxSpec:
        """The spec with its template NAME replaced by the digest the tenant's name means now
        (a rebuild or a delete meanwhile does not change the sandbox)."""
        ref: str | None = getattr(spec, "template", None)
        if ref is None:
            return spec
        resolved = await asyncio.to_thread(self.store.resolve, check_ref(ref), tenant)
        return spec.model_copy(update={"template": digest_ref(str(resolved.digest))})

    async def exists(self, tenant: str, name: str) -> bool:
        """Whether the tenant has a template of that name (the E2B gateway's question)."""
        from ..errors import NotFoundError

        try:
            await self.get(tenant, name)
        except (NotFoundError, InvalidArgumentError):
            return False
        return True

    # -- building ----------------------------------------------------------------------------

    async def admit(self, tenant: str, request: TemplateBuildRequest) -> None:
        """What can be refused before a build runs: its base, and a tenant at its quota."""
        self.check_base(request.base)
        await self.check_registry(request.base)
        async with self.lock(tenant):
            await self.check_quota(tenant, request.name)

    async def build(
        self,
        tenant: str,
        request: TemplateBuildRequest,
        manager: Manager,
        progress: Callable[[Any], None],
    ) -> TemplateOut:
        """Build with the server's manager and name it for the tenant if its quota still has
        room for its size. The engine names what it built under a staging owner of the
        tenant's, never a tenant's own: the tenant's name changes only once the size is
        known to fit (else the build's layers go at the next gc)."""
        from ..workspace.templates.build import build

        await self.admit(tenant, request)
        staging = STAGING + tenant
        try:
            with self.uploads.hold(request.steps) as steps:
                manifest = await build(
                    HostBinds(manager),  # type: ignore[arg-type]
                    request.name,
                    request.base,
                    steps,
                    owner=staging,
                    on_event=lambda event: progress(self.scrub(_plain(event))),
                    home=self.home,
                    allow=request.allow,
                )
            async with self.lock(tenant):
                await self.check_quota(tenant, request.name, manifest.size)
                digest = manifest.digest()
                await asyncio.to_thread(self.store.put_name, request.name, digest, tenant)
        except TemplateBuildError as exc:
            details = {k: v for k, v in exc.details.items() if k != "log"}  # a server path
            raise TemplateBuildError(self.scrub(exc.message), **details) from None
        finally:
            with contextlib.suppress(TemplateNotFoundError, InvalidArgumentError):
                await asyncio.to_thread(self.store.remove, request.name, staging)
        return template_out(request.name, manifest)

    def scrub(self, value: Any) -> Any:
        """What the engine says, without the server's paths: an uploaded file is
        ``upload:<sha256>``, the state folder ``$SANDLOT_HOME``."""
        if isinstance(value, str):
            value = value.replace(f"{self.uploads.folder}/", "upload:")
            return value.replace(str(self.home), "$SANDLOT_HOME")
        if isinstance(value, dict):
            return {k: self.scrub(v) for k, v in value.items() if k != "log" or not v}
        if isinstance(value, builtins.list):
            return [self.scrub(v) for v in value]
        return value

    def check_base(self, base: str) -> None:
        """``host`` and ``oci:REF`` are anyone's; any other kind reads this host (its files,
        its engine): only where the operator allows it."""
        kind = base.partition(":")[0]
        if kind in TENANT_BASES or self.local_bases:
            return
        if kind not in LOCAL_BASES:
            raise InvalidArgumentError(
                f"unknown template base {base!r:.100}: host or oci:IMAGE", base=base[:200]
            )
        raise ForbiddenError(
            f"this server does not build templates from its own host ({kind}: bases read "
            "its files or its container engine): use host or oci:IMAGE, or ask its "
            "operator (sandlot serve --allow-local-template-bases)",
            base=base[:200],
        )

    async def check_registry(self, base: str) -> None:
        """An ``oci:`` base is pulled by this host (skopeo), not through a sandbox's egress
        proxy: a tenant may not point it at the server's own networks (loopback, private
        ranges, cloud metadata; loopback registries also skip TLS) unless the operator
        allows those (--egress-private). A name without a registry is the host's default."""
        kind, _, ref = base.partition(":")
        if kind != "oci" or self.private_registries:
            return
        from ..egress.policy import is_public, system_resolver
        from ..workspace.templates.base_oci import OciRef

        registry = OciRef(ref).registry
        if registry is None:
            return
        host = urlsplit(f"//{registry}").hostname or registry
        try:
            addresses = await system_resolver(host, 443)
        except OSError as exc:
            raise InvalidArgumentError(
                f"the registry {host!r:.100} does not resolve: {exc}", base=base[:200]
            ) from None
        private = [a for a in addresses if not is_public(a)]
        if private:
            raise ForbiddenError(
                f"the registry {host!r:.100} is at {', '.join(private[:4])}, one of the "
                "server's own networks: that needs the server's --egress-private",
                base=base[:200],
            )

    async def check_quota(self, tenant: str, name: str, size: int = 0) -> None:
        """Refuse a template that would take the tenant past its count or bytes (the one of
        that name, if any, is replaced: it does not count). Call with the tenant's lock."""
        others = [m for m in await self.list(tenant) if _name_of(m) != name]
        if len(others) >= self.count:
            raise ForbiddenError(
                f"template quota reached: this tenant has {len(others)} templates, the most "
                f"this server allows ({self.count}); delete one first",
                quota="count",
                limit=self.count,
            )
        used = sum(int(getattr(m, "size", 0) or 0) for m in others)
        if used + size > self.bytes:
            raise ForbiddenError(
                f"template quota reached: this tenant's templates would take {used + size} "
                f"bytes, more than this server allows ({self.bytes}); delete one first",
                quota="bytes",
                limit=self.bytes,
                used=used,
                size=size,
            )


class HostBinds:
    """The server's manager as a template build uses it: the binds a build step gets (the
    host's package folders its pip configuration names) are the operator's, never a
    tenant's (a tenant's steps carry no binds), so the server's bind roots do not apply."""

    def __init__(self, manager: Manager) -> None:
        self._manager = manager

    async def create(self, spec: SandboxSpec, **kwargs: Any) -> Any:
        # A build sandbox is no tenant's sandbox (no record): it gets no secrets at all.
        return await self._manager.create(spec, host_binds=True, secrets=NoSecrets())

    def __getattr__(self, name: str) -> Any:  # the rest of the manager, as it is
        return getattr(self._manager, name)


class NoSecrets(SecretStore):
    """The secrets of a build sandbox: none."""

    async def set(self, name: str, value: str) -> None:
        raise SecretError("a template build has no secrets")

    async def get(self, name: str) -> str:
        raise secret_not_found(name)

    async def list(self) -> builtins.list[SecretInfo]:
        return []

    async def delete(self, name: str) -> bool:
        return False


def _plain(event: Any) -> Any:
    return event.model_dump(mode="json") if hasattr(event, "model_dump") else event


def _name_of(manifest: Any) -> str:
    return str(getattr(manifest, "name", ""))


def check_ref(ref: str) -> str:
    """A template a tenant names: a name of its own, never a digest."""
    if ref.startswith(DIGEST_PREFIX):
        raise InvalidArgumentError(
            "name a template by its name: 'sha256:' references are the server's own",
            template=ref[:80],
        )
    return check_name(ref)


def check_name(name: str) -> str:
    from ..workspace.templates.model import check_name as check

    return check(name)
