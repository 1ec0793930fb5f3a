"""The CLI tests, run again in remote mode (``SANDLOT_URL`` reaches the subprocesses).

Left out below, each with its reason: tests of the host itself (providers, gc, memory
limits applied by this host's cgroups) and of the embedded lifetime rules.
"""

from integration.test_cli import *  # noqa: F403
from integration.test_cli_code import *  # noqa: F403

# They look at this host's sandbox folders, or at its own providers and gc, which a remote
# run does not use (the server refuses 'process' by design: test_server covers that).
del test_run_kills_its_sandbox  # noqa: F821
del test_run_interrupted_kills_the_sandbox  # noqa: F821
del test_run_with_the_process_provider_says_it_does_not_isolate  # noqa: F821
del test_run_with_unusable_provider_fails_clearly  # noqa: F821
del test_gc_removes_what_a_killed_owner_left  # noqa: F821
# A server refuses host-touching provider settings from a call (test_server covers that).
del test_run_passes_provider_settings  # noqa: F821
del test_run_refuses_bad_provider_settings  # noqa: F821
from integration.test_cli_more import *  # noqa: E402, F403 (create, cp, logs, --json, ...)
