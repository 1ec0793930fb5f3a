"""Run by tests/integrations/test_openai_agents_sandbox.py in a new process: resume a sandlot
session of the OpenAI Agents SDK from its serialized state (argv[1], a JSON file), run a
SandboxAgent whose scripted model reads the file the first process wrote, and print one JSON
object with what the tool answered."""

from __future__ import annotations

import asyncio
import json
import sys

from agents import Runner
from agents.items import ToolCallOutputItem
from agents.run import RunConfig
from agents.sandbox import SandboxAgent, SandboxRunConfig
from agents.sandbox.capabilities import Shell
from agents.testing import ScriptedModel, assistant_message, function_call

from sandlot.integrations.openai_agents import SandlotSandboxClient


async def main(state_file: str) -> dict[str, object]:
    with open(state_file) as f:
        payload = json.load(f)
    client = SandlotSandboxClient()
    state = client.deserialize_session_state(payload)
    model = ScriptedModel(
        [
            [function_call("exec_command", {"cmd": "cat made.txt && ls"}, call_id="call_r")],
            [assistant_message("Read it back.")],
        ]
    )
    agent = SandboxAgent(name="resumed", model=model, capabilities=[Shell()])
    run_config = RunConfig(
        sandbox=SandboxRunConfig(client=client, session_state=state), tracing_disabled=True
    )
    result = await Runner.run(agent, "What did you write before?", run_config=run_config)
    model.assert_complete()
    outputs = [str(i.output) for i in result.new_items if isinstance(i, ToolCallOutputItem)]
    return {"final_output": result.final_output, "tool_outputs": outputs}


print(json.dumps(asyncio.run(main(sys.argv[1]))))
