"""smolagents' CodeAgent with its E2B executor (``executor_type="e2b"``, smolagents unmodified):
the executor creates its sandbox with e2b_code_interpreter's ``Sandbox.create()``, ships the
agent's tools into it as source, and runs each code action with ``run_code``; the final answer
comes back as the ``FinalAnswerException`` the shipped ``final_answer`` raises.

The model is scripted (no LLM): a code action calling a tool defined here, then ``final_answer``
with what the tool returned (a variable kept between the two actions).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from remote.server import ServerProcess
from smolagents import CodeAgent, tool  # type: ignore[import-untyped]
from smolagents.models import ChatMessage, MessageRole, Model  # type: ignore[import-untyped]


@tool
def whereami(label: str) -> str:
    """Leaves a file where the tool runs and says which home that is.

    Args:
        label: What to write into the file and prefix the answer with.
    """
    import os

    home = os.environ.get("HOME", "")
    with open(os.path.join(home, "from-tool.txt"), "w") as out:
        out.write(label)
    return f"{label}@{home}"


class ScriptedModel(Model):
    """Answers with the next canned message, and keeps what it was shown."""

    def __init__(self, replies: list[str]) -> None:
        super().__init__(model_id="scripted")
        self.replies = list(replies)
        self.shown: list[str] = []

    def generate(self, messages: list[Any], **kwargs: Any) -> ChatMessage:
        self.shown.append(repr(messages))
        return ChatMessage(role=MessageRole.ASSISTANT, content=self.replies.pop(0))


@pytest.fixture(scope="module")
def agent(e2b_server: ServerProcess) -> Iterator[tuple[CodeAgent, ScriptedModel]]:
    # Module scope: e2b_env is function-scoped, so the environment is set here as a user would.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("E2B_API_URL", e2b_server.url)
        env.setenv("E2B_SANDBOX_URL", e2b_server.url)
        env.setenv("E2B_API_KEY", e2b_server.api_key)  # type: ignore[attr-defined]
        model = ScriptedModel(
            [
                "Thought: ask the tool.\n<code>\nanswer = whereami('smol')\nprint(answer)\n</code>",
                "Thought: done.\n<code>\nfinal_answer(answer)\n</code>",
            ]
        )
        code_agent = CodeAgent(tools=[whereami], model=model, executor_type="e2b", max_steps=3)
        try:
            yield code_agent, model
        finally:
            code_agent.cleanup()  # kills the sandbox


def test_a_tool_call_and_the_final_answer_come_back(
    agent: tuple[CodeAgent, ScriptedModel],
) -> None:
    code_agent, model = agent
    answer = code_agent.run("Where does the tool run?")
    # The tool ran in the sandbox (E2B's home there), its result stayed in the interpreter's
    # state for the second action, and final_answer's value came back through the error channel.
    assert answer == "smol@/home/user"
    assert model.replies == []
    assert "smol@/home/user" in model.shown[1]  # the first action's printed output, observed
    sandbox = code_agent.python_executor.sandbox
    assert sandbox.files.read("/home/user/from-tool.txt") == "smol"
