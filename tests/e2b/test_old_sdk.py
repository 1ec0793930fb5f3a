"""The issue's user flow with the older E2B pair that openai-agents[e2b] pins (e2b 2.31.0,
e2b-code-interpreter 2.8.1), unmodified, in a virtual environment of its own (older_sdk.py):
it creates with `POST /sandboxes` (not v2), connects with `POST /sandboxes/{id}/connect`, and
talks to an older envd client. run_code is the one part of the flow it cannot reach (below).

One run of tests/e2b/old_sdk_flow.py (one sandbox) for the module; each test checks its steps.
"""

from __future__ import annotations

import pytest
from older_sdk import run_script
from remote.server import ServerProcess


@pytest.fixture(scope="module")
def flow(e2b_server: ServerProcess) -> dict[str, object]:
    return run_script("old_sdk_flow.py", e2b_server)


def test_the_older_pair_ran(flow: dict[str, object]) -> None:
    assert flow["versions"] == ["2.31.0", "2.8.1"]


def test_commands_in_the_foreground(flow: dict[str, object]) -> None:
    assert flow["echo"] == "hi\n", flow["stderr"]
    assert flow["exit"] == {"exit_code": 3, "stdout": "out\n", "stderr": "err\n"}, flow["stderr"]


def test_a_background_command_killed(flow: dict[str, object]) -> None:
    background = flow["background"]
    assert isinstance(background, dict), flow["stderr"]
    assert background["listed"] is True, background
    assert background["killed"] is True, background
    assert background["ended"] != "exit 0", background
    assert background["gone"] is True, background


def test_files_written_and_listed_in_home(flow: dict[str, object]) -> None:
    files = flow["files"]
    assert isinstance(files, dict), (files, flow["stderr"])
    assert files["path"] == "/home/user/a.txt", files
    assert "a.txt" in files["names"], files
    assert files["read"] == "x", files


def test_run_code_is_out_of_reach_of_code_interpreter_2_8(flow: dict[str, object]) -> None:
    """e2b-code-interpreter 2.8.1 builds run_code's URL from the sandbox's domain and ignores
    E2B_SANDBOX_URL (2.9.0 honors it, with e2b >= 2.26): no server can answer it under the URL
    users set. docs/e2b.md says so; the Agents SDK's extension never calls run_code."""
    url = flow["jupyter_url"]
    assert isinstance(url, str) and url.startswith("https://49999-"), url


def test_connect_then_kill(flow: dict[str, object]) -> None:
    assert flow["connect"] == {"read": "x", "after_kill": "NotFoundException"}, (
        flow["connect"],
        flow["stderr"],
    )
