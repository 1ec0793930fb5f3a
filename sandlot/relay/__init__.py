"""An air-gapped relay: whitelisted operations run for a compute node without internet.

The client (on the compute node) drops a request file in a queue folder on a shared
filesystem; the daemon (on a login node that shares it) checks it against a closed whitelist,
runs it without a shell, and drops the answer back. See docs/relay.md.

    from sandlot.relay import RelayClient

    rc = RelayClient(cwd="~/project")
    rc.pull(); rc.push(branch="main")
    res = rc.request("wandb_sync", args=["runs/abc"])   # waits for a person's consent
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names

if TYPE_CHECKING:
    from ..errors import (
        RelayCrashed,
        RelayDown,
        RelayError,
        RelayRejected,
        RelayTimeout,
        RelayValidationError,
    )
    from .client import RelayClient
    from .queue import Queue, RelayRequest, RelayResult

# Loaded when first used (PEP 562): the ``sandlot relay`` commands import this package, and
# ``sandlot --help`` should not pay for the relay's pydantic models.
_SOURCES = {
    "RelayCrashed": "..errors",
    "RelayDown": "..errors",
    "RelayError": "..errors",
    "RelayRejected": "..errors",
    "RelayTimeout": "..errors",
    "RelayValidationError": "..errors",
    "RelayClient": ".client",
    "Queue": ".queue",
    "RelayRequest": ".queue",
    "RelayResult": ".queue",
}


__all__ = [
    "Queue",
    "RelayClient",
    "RelayCrashed",
    "RelayDown",
    "RelayError",
    "RelayRejected",
    "RelayRequest",
    "RelayResult",
    "RelayTimeout",
    "RelayValidationError",
]

__getattr__, __dir__ = lazy_names(__name__, _SOURCES, __all__)
