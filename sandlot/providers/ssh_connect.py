"""The host-key rule of every SSH connection sandlot makes: the ssh provider's and those of
``sandlot remote up`` (:mod:`sandlot.deploy`).

Host keys are always checked, never prompted for: against the known_hosts file given, else
the one the SSH config names, else ``~/.ssh/known_hosts``; with none of them, no key is
trusted. ``UserKnownHostsFile none`` in an SSH config, which turns checking off in asyncssh,
is overridden. Each caller translates asyncssh's errors into its own (a provider error, or a
``remote up`` exit code): the messages differ, the rule does not.

asyncssh (the ``ssh`` extra) is imported by the caller and passed in, so that each caller
says in its own words that it is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"


async def enforce_known_hosts(asyncssh: Any, kwargs: dict[str, Any]) -> None:
    """Set ``kwargs["known_hosts"]`` (the keyword arguments of ``asyncssh.connect``, with
    ``host``) when the SSH config would leave host keys unchecked.

    Without ``known_hosts`` in ``kwargs``, the SSH config is read as asyncssh reads it; its
    errors (``asyncssh.ConfigParseError``, ``OSError``) reach the caller."""
    if "known_hosts" in kwargs:
        return
    options = await asyncssh.SSHClientConnectionOptions.construct(**kwargs)
    if options.known_hosts is None:
        # "UserKnownHostsFile none" would turn host-key checking off: never. Without the
        # default file, no key is trusted (b"": known_hosts content with no entries).
        default = Path(DEFAULT_KNOWN_HOSTS).expanduser()
        kwargs["known_hosts"] = str(default) if default.is_file() else b""


async def connect(asyncssh: Any, kwargs: dict[str, Any]) -> Any:
    """``asyncssh.connect(**kwargs)`` under the rule above; asyncssh's errors unchanged."""
    await enforce_known_hosts(asyncssh, kwargs)
    return await asyncssh.connect(**kwargs)
