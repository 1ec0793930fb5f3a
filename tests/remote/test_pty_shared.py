"""The embedded terminal tests, run again in remote mode: ``sb.pty`` over the server's
WebSocket and REST routes, unchanged."""

from integration.test_pty import *  # noqa: F403
