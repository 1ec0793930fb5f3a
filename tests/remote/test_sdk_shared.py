"""The embedded SDK tests, run again in remote mode: same calls, same answers, over HTTP.

Tests that look at the host itself (processes, folders, cgroups) or at the channel's
internals are left out below, each with the reason; everything else must pass unchanged.
"""

from integration.test_async import *  # noqa: F403
from integration.test_code import *  # noqa: F403
from integration.test_code_async import *  # noqa: F403
from integration.test_commands import *  # noqa: F403
from integration.test_files import *  # noqa: F403

# Looks at the host's copy of the workspace, which is the server's business in remote mode.
del test_write_lands_in_the_host_workspace_folder  # noqa: F821
