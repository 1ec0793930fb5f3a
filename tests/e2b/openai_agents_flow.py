"""The OpenAI Agents SDK's E2B sandbox extension (openai-agents 0.24,
``agents.extensions.sandbox.E2BSandboxClient``, on the e2b 2.31 pair it pins), unmodified, with
the SDK's own offline scripted model (``agents.testing.ScriptedModel``): a SandboxAgent with the
Shell capability calls ``exec_command`` once, and the model's second turn sees the output.
Run by tests/e2b/test_openai_agents.py with the older pair's python; prints one JSON object last.

The extension drives the sandbox through e2b's AsyncSandbox: create, files (the manifest's file
and its helper script), ``commands.run`` in the background with output callbacks (its PTY-less
exec), and kill at the end of the run.
"""

from __future__ import annotations

import asyncio
import json
from importlib.metadata import version

from agents import Runner
from agents.extensions.sandbox import E2BSandboxClient, E2BSandboxClientOptions, E2BSandboxType
from agents.items import ToolCallOutputItem
from agents.run import RunConfig
from agents.sandbox import Manifest, SandboxAgent, SandboxRunConfig
from agents.sandbox.capabilities import Shell
from agents.sandbox.entries import File
from agents.testing import ScriptedModel, assistant_message, function_call

COMMAND = "cat notes.md && echo made-here > made.txt && cat made.txt && pwd"


async def main() -> dict[str, object]:
    model = ScriptedModel(
        [
            [function_call("exec_command", {"cmd": COMMAND}, call_id="call_1")],
            [assistant_message("The sandbox answered.")],
        ]
    )
    agent = SandboxAgent(
        name="sandlot",
        model=model,
        instructions="Inspect the workspace with the shell.",
        default_manifest=Manifest(entries={"notes.md": File(content=b"from the manifest\n")}),
        capabilities=[Shell()],
    )
    run_config = RunConfig(
        sandbox=SandboxRunConfig(
            client=E2BSandboxClient(),
            options=E2BSandboxClientOptions(sandbox_type=E2BSandboxType.E2B, timeout=300),
        ),
        tracing_disabled=True,
        workflow_name="sandlot e2b",
    )
    result = await Runner.run(agent, "What is in the workspace?", run_config=run_config)
    model.assert_complete()
    items = result.new_items
    outputs = [str(item.output) for item in items if isinstance(item, ToolCallOutputItem)]
    second = model.calls[1].input if len(model.calls) > 1 else None
    return {
        "versions": [version("openai-agents"), version("e2b"), version("e2b-code-interpreter")],
        "final_output": result.final_output,
        "tool_outputs": outputs,
        "model_saw": json.dumps(second, default=str)[-4000:],
    }


print(json.dumps(asyncio.run(main())))
