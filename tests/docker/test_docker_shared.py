"""The embedded SDK tests, run again with docker as the default provider: same calls, same
answers, in a container. ``conftest.py`` switches the default provider by environment.

The test image is Debian's minbase plus python3 (``tests/docker_env.py``), while the bwrap
tests see the host's /usr: tests that need more of a system than that are left out below,
each with the reason. Those that look at processes with ``ps`` have equivalents reading
/proc in ``test_docker.py``. Everything else must pass unchanged.
"""

from integration.test_async import *  # noqa: F403
from integration.test_code import *  # noqa: F403
from integration.test_code_async import *  # noqa: F403
from integration.test_commands import *  # noqa: F403
from integration.test_files import *  # noqa: F403

# `ps` (procps) is not in the minbase image: see test_docker.py for the same checks via /proc.
del test_cancelling_a_foreground_command_kills_it  # noqa: F821
del test_background_handle_returns_at_once_and_kill  # noqa: F821
del test_background_signal_reaches_the_whole_group  # noqa: F821
# matplotlib and pandas are not in the image (the host has them for bwrap).
del test_matplotlib_show_gives_a_png  # noqa: F821
del test_matplotlib_figure_without_show_appears_at_the_end  # noqa: F821
del test_matplotlib_two_figures_one_shown_one_left_open  # noqa: F821
del test_pandas_dataframe_has_html_and_text  # noqa: F821
del test_rich_results_and_matplotlib  # noqa: F821
# pip is not in the image (python3-pip): installs fail with "no pip", not the tested errors.
del test_install_without_network_fails_fast_and_says_why  # noqa: F821
del test_install_a_local_wheel_offline  # noqa: F821
del test_install_from_a_local_index  # noqa: F821
del test_install_offline_and_invalid_input  # noqa: F821
