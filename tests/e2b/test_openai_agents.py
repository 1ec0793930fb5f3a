"""The OpenAI Agents SDK's E2B sandbox extension against sandlot: openai-agents[e2b] 0.24.0
pins e2b 2.31.0 and e2b-code-interpreter 2.8.1, which cannot share this environment's current
pair, so tests/e2b/openai_agents_flow.py runs in the virtual environment scripts/setup.sh makes
for them (older_sdk.py), driven by the SDK's own offline ScriptedModel (agents.testing).
"""

from __future__ import annotations

import pytest
from older_sdk import run_script
from remote.server import ServerProcess


@pytest.fixture(scope="module")
def flow(e2b_server: ServerProcess) -> dict[str, object]:
    return run_script("openai_agents_flow.py", e2b_server)


def test_an_exec_command_round_trip_through_the_sandbox(flow: dict[str, object]) -> None:
    assert flow["versions"] == ["0.24.0", "2.31.0", "2.8.1"]
    outputs = flow["tool_outputs"]
    assert isinstance(outputs, list) and len(outputs) == 1, (outputs, flow["stderr"])
    # The manifest's file was written through the files API, the command ran in the manifest's
    # root (the extension's default, /workspace: sandlot's workspace), and its output reached
    # the model's second turn.
    output = outputs[0]
    assert "from the manifest\nmade-here\n/workspace" in output, output
    assert "Process exited with code 0" in output, output
    assert "made-here" in str(flow["model_saw"])
    assert flow["final_output"] == "The sandbox answered."
