"""The embedded SDK tests, run again with docker as the default provider: same calls, same
answers, in a container. ``conftest.py`` switches the default provider by environment.

The test image is Debian's minbase plus python3, pip and procps (``tests/docker_env.py``),
while the bwrap tests see the host's /usr: tests that need more of a system than that are
left out below, each with the reason. Everything else must pass unchanged.
"""

from integration.test_async import *  # noqa: F403
from integration.test_code import *  # noqa: F403
from integration.test_code_async import *  # noqa: F403
from integration.test_code_persistence_safety import *  # noqa: F403
from integration.test_commands import *  # noqa: F403
from integration.test_egress import *  # noqa: F403
from integration.test_files import *  # noqa: F403
from integration.test_ports import *  # noqa: F403

# matplotlib and pandas are not in the image (the host has them for bwrap).
del test_matplotlib_show_gives_a_png  # noqa: F821
del test_matplotlib_figure_without_show_appears_at_the_end  # noqa: F821
del test_matplotlib_two_figures_one_shown_one_left_open  # noqa: F821
del test_pandas_dataframe_has_html_and_text  # noqa: F821
del test_rich_results_and_matplotlib  # noqa: F821
