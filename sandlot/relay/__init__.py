"""An air-gapped relay: whitelisted operations run for a compute node without internet.

The client (on the compute node) drops a request file in a queue folder on a shared
filesystem; the daemon (on a login node that shares it) checks it against a closed whitelist,
runs it without a shell, and drops the answer back. See docs/relay.md.

    from sandlot.relay import RelayClient

    rc = RelayClient(cwd="~/project")
    rc.pull(); rc.push(branch="main")
    res = rc.request("wandb_sync", args=["runs/abc"])   # waits for a person's consent
"""

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
