"""The embedded reattach tests, run again in remote mode: ``sb.commands.list`` and
``connect`` over the server's REST routes and WebSocket, unchanged (a module apart from the
terminal tests: each has its own ``sb`` fixture)."""

from integration.test_reattach import *  # noqa: F403
