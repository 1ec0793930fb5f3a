"""``sandlot shell`` again in remote mode: ``SANDLOT_URL`` reaches the CLI, whose terminal
then rides the server's WebSocket."""

from integration.test_cli_shell import *  # noqa: F403
