"""The embedded SDK tests, run again with every sandbox on the ssh provider (bubblewrap on
the remote host): same calls, same answers, over an SSH connection.

Only the bwrap isolation runs them. With ``isolation="none"`` the agent runs unisolated as the
SSH account, here root on this very machine, and several of these tests probe the isolation
by trying something destructive (``files.remove("/usr/bin/python3")`` expecting a refusal):
unisolated, that would change the test machine. The process-like mode has its own tests in
``test_ssh.py``. Tests that look at this host's copy of a sandbox are left out below.
"""

from integration.test_async import *  # noqa: F403
from integration.test_code import *  # noqa: F403
from integration.test_code_async import *  # noqa: F403
from integration.test_code_persistence_safety import *  # noqa: F403
from integration.test_commands import *  # noqa: F403
from integration.test_egress import *  # noqa: F403
from integration.test_files import *  # noqa: F403
from integration.test_ports import *  # noqa: F403

# Looks at the local state folder's workspace; an ssh sandbox's workspace is on the remote host.
del test_write_lands_in_the_host_workspace_folder  # noqa: F821
