"""E2B's create settings as sandlot's :class:`~sandlot.models.SandboxSpec` (docs/e2b.md).

- **Templates** (:func:`placement`): ``base``, ``code-interpreter-v1``, ``code-interpreter``
  and an empty or absent ``templateID`` are the server's default provider (with Python); a
  provider's name (``bwrap``, ``docker``, ...) picks that provider; ``docker:IMAGE`` is the
  docker provider with that image; else one of the caller's own templates (``POST
  /v1/templates``), by name, on the default provider. Anything else is "template not found",
  as E2B says. The sandbox keeps its templateID in its metadata under ``e2b.templateID``.
- **Lifetimes**: E2B's ``timeout`` (default 300 s) is the hard lifetime; E2B sandboxes have no
  idle timeout, so neither do these. ``autoPause`` (pause at the timeout instead of ending) is
  accepted and not done: the sandbox ends at its timeout, as its lifecycle says (the OpenAI
  Agents SDK asks for it by default, and creates a new sandbox when the old one is gone).
- **Network** (:func:`network_of`): sandlot fails closed. With ``network.allowOut`` the
  sandbox reaches those hosts, addresses and networks through the egress proxy (E2B's allow
  rules win over its deny rules, and everything not allowed is denied, so ``denyOut`` holds
  as given). Without it the sandbox has no network, whatever ``allow_internet_access`` says:
  sandlot has no "the whole internet" rule a tenant may be given.
- **Layout**: the workspace is mounted at ``/home/user`` too (``workspace_alias``), which is
  ``HOME`` and the working folder.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from ...egress.policy import NetworkPolicy
from ...errors import InvalidArgumentError, NotFoundError
from ...models import NetworkMode, SandboxSpec, describe
from ...providers import BUILTIN, provider_names
from .models import DEFAULT_TIMEOUT, MAX_TEMPLATE, NetworkIn, NewSandbox

DEFAULT_TEMPLATES = frozenset({"base", "code-interpreter-v1", "code-interpreter"})
TEMPLATE_KEY = "e2b.templateID"  # metadata key the sandbox's templateID is kept under
HOME = "/home/user"  # E2B's home and working folder
DOCKER_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}")


def placement(template_id: str | None, own: bool = False) -> dict[str, Any]:
    """Where a templateID runs: SandboxSpec fields (``provider``, ``config``, ``template``).
    The one place templates map to sandlot (docs/e2b.md). ``own``: the caller has a template
    of that name (the names above keep their meaning: a template is reached by any other)."""
    name = template_id or ""
    if name in DEFAULT_TEMPLATES or not name:
        return {}
    if name.startswith("docker:"):
        image = name.removeprefix("docker:")
        if DOCKER_IMAGE.fullmatch(image) and ".." not in image and "//" not in image:
            return {"provider": "docker", "config": {"image": image}}
    elif name in BUILTIN or name in ("remote", "ssh") or name in provider_names():
        return {"provider": name}
    elif own:
        return {"template": name}  # the server resolves it in the caller's names
    raise NotFoundError(f"template {name[:MAX_TEMPLATE]!r} not found")


def _open_everything(rule: str) -> bool:
    return rule.split("/")[-1] == "0" or rule in ("*", "0.0.0.0", "::")


def network_of(network: NetworkIn | None) -> NetworkMode | NetworkPolicy:
    """E2B's network settings as sandlot's (see the module's documentation)."""
    if network is None:
        return "none"
    if network.egress_proxy is not None:
        raise InvalidArgumentError("network.egressProxy is not supported by sandlot")
    if network.rules:
        raise InvalidArgumentError(
            "network.rules (header transforms) are not supported by sandlot; "
            "its callback bridge adds credentials on the host side (docs/egress.md)"
        )
    allow = network.allow_out or []
    if not allow:
        return "none"
    wide = [rule for rule in allow if _open_everything(rule)]
    if wide:
        raise InvalidArgumentError(
            f"allowOut {wide[0]!r} would open the whole network, which sandlot does not "
            "give a sandbox: name the hosts, addresses or networks it may reach"
        )
    try:
        return NetworkPolicy(allow=allow)
    except ValidationError as exc:
        raise InvalidArgumentError(describe(exc, "network.allowOut")) from None


def spec_of(body: NewSandbox, own_template: bool = False) -> SandboxSpec:
    """``own_template``: the templateID names one of the caller's templates."""
    where = placement(body.template_id, own_template)
    if body.mcp:
        raise InvalidArgumentError("mcp is not supported by sandlot")
    if body.iam and body.iam.get("tokens"):
        raise InvalidArgumentError("iam (workload identity) is not supported by sandlot")
    if body.volume_mounts:
        raise InvalidArgumentError("volumeMounts are not supported by sandlot")
    metadata = dict(body.metadata or {})
    if TEMPLATE_KEY in metadata:
        raise InvalidArgumentError(f"metadata key {TEMPLATE_KEY!r} is the server's")
    metadata[TEMPLATE_KEY] = body.template_id or "base"
    # E2B code works in /home/user: the workspace is mounted there too, and is the home and
    # working folder (the caller's HOME, if given, wins).
    env = {"HOME": HOME, **(body.env_vars or {})}
    try:
        return SandboxSpec(
            timeout=float(body.timeout or DEFAULT_TIMEOUT),
            idle_timeout=None,  # E2B sandboxes live until their timeout, used or not
            env=env,
            metadata=metadata,
            network=network_of(body.network),
            workspace_alias=HOME,
            workdir=HOME,
            **where,
        )
    except ValidationError as exc:
        raise InvalidArgumentError(describe(exc, "sandbox settings")) from None
