"""smolagents' ``CodeAgent`` (unmodified) running its code actions through
``sandlot.integrations.smolagents.SandlotExecutor`` in real bwrap sandboxes, and the executor
driven directly for its edge cases.

The model is scripted (no LLM): a ``Model`` subclass returning prepared code actions, as
smolagents' own tests do. tests/e2b/test_smolagents.py covers smolagents' *E2B* executor
against sandlot's E2B gateway; this file covers the native executor.
"""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import PIL.Image
import pytest
from remote.server import ServerProcess
from rich.console import Console
from smolagents import CodeAgent, tool  # type: ignore[import-untyped]
from smolagents.default_tools import FinalAnswerTool  # type: ignore[import-untyped]
from smolagents.memory import ActionStep  # type: ignore[import-untyped]
from smolagents.models import ChatMessage, MessageRole, Model  # type: ignore[import-untyped]
from smolagents.monitoring import AgentLogger, LogLevel  # type: ignore[import-untyped]
from smolagents.utils import AgentError  # type: ignore[import-untyped]

import sandlot
from sandlot.integrations.smolagents import SandlotExecutor
from sandlot.sdk.sync import _portal


@tool
def leave_note(text: str) -> str:
    """Writes a note into the workspace and says where it is and how long it was.

    Args:
        text: What to write.
    """
    import os

    path = os.path.join("/workspace", "note.txt")
    with open(path, "w") as out:
        out.write(text)
    return f"{path}:{len(text)}"


class ScriptedModel(Model):
    """Answers with the next canned code action, and keeps what it was shown."""

    def __init__(self, actions: list[str]) -> None:
        super().__init__(model_id="scripted")
        self.replies = [f"Thought: next.\n<code>\n{action}\n</code>" for action in actions]
        self.shown: list[str] = []

    def generate(self, messages: list[Any], **kwargs: Any) -> ChatMessage:
        self.shown.append(repr(messages))
        return ChatMessage(role=MessageRole.ASSISTANT, content=self.replies.pop(0))


def quiet_logger() -> tuple[AgentLogger, io.StringIO]:
    out = io.StringIO()
    return AgentLogger(LogLevel.DEBUG, console=Console(file=out, width=200)), out


def errors_of(agent: CodeAgent) -> list[str]:
    return [
        str(step.error)
        for step in agent.memory.steps
        if isinstance(step, ActionStep) and step.error
    ]


def wheel(name: str, body: str) -> bytes:
    """A minimal pure-Python wheel, built here: pip installs it with no network and no index."""
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n"
    files = {
        f"{name}/__init__.py": body.encode(),
        f"{name}-0.1.dist-info/METADATA": metadata.encode(),
        f"{name}-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for path, data in files.items()
    )
    files[f"{name}-0.1.dist-info/RECORD"] = (record + f"{name}-0.1.dist-info/RECORD,,\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def executor() -> Iterator[SandlotExecutor]:
    """One executor (and the sandbox it creates) for the agent runs of this module."""
    logger, _ = quiet_logger()
    with SandlotExecutor(logger=logger) as made:
        yield made


@pytest.fixture(scope="module")
def sandbox() -> Iterator[sandlot.Sandbox]:
    """A sandbox made by the test, handed to executors (which must not kill it)."""
    with sandlot.Sandbox.create() as made:
        yield made


# -- a CodeAgent with a scripted model ---------------------------------------------------------


def test_a_tool_a_variable_kept_between_steps_and_the_final_answer(
    executor: SandlotExecutor,
) -> None:
    model = ScriptedModel(
        [
            "where = leave_note(greeting * 2)\nprint('tool said', where)",
            "label = f'{where}|{greeting}'",
            "final_answer(label)",
        ]
    )
    agent = CodeAgent(tools=[leave_note], model=model, executor=executor, max_steps=5)
    answer = agent.run("Leave a note.", additional_args={"greeting": "hi"})

    # `greeting` came in through send_variables, the tool ran in the sandbox, `where` (step 1)
    # and `greeting` were still defined in step 2, and step 3's final_answer came back.
    assert answer == "/workspace/note.txt:4|hi"
    assert model.replies == [] and errors_of(agent) == []
    assert "tool said /workspace/note.txt:4" in model.shown[1]  # step 1's output, observed
    assert executor.sandbox.files.read("/workspace/note.txt") == "hihi"


def test_an_error_in_the_code_reaches_the_model_and_the_agent_goes_on(
    executor: SandlotExecutor,
) -> None:
    model = ScriptedModel(["print('before')\nratio = 1 / 0", "final_answer('recovered')"])
    agent = CodeAgent(tools=[], model=model, executor=executor, max_steps=3)

    assert agent.run("Divide.") == "recovered"
    [error] = errors_of(agent)
    # smolagents' form: an AgentExecutionError whose text the model reads at the next step,
    # with the output printed before the error and the cell's own traceback.
    assert "before" in error and "Executing code yielded an error" in error
    assert "ZeroDivisionError: division by zero" in error and "<cell-" in error
    assert "ZeroDivisionError" in model.shown[1]


def test_a_pip_line_installs_a_wheel_that_a_later_step_imports(executor: SandlotExecutor) -> None:
    # The sandbox has no network (sandlot's default): pip installs from a wheel inside it.
    executor.sandbox.files.write(
        "/workspace/smolprobe-0.1-py3-none-any.whl", wheel("smolprobe", "VALUE = 42\n")
    )
    model = ScriptedModel(
        [
            "!pip install --no-index /workspace/smolprobe-0.1-py3-none-any.whl",
            "import smolprobe\nfinal_answer(smolprobe.VALUE + 1)",
        ]
    )
    agent = CodeAgent(tools=[], model=model, executor=executor, max_steps=3)

    assert agent.run("Install and use it.") == 43
    assert errors_of(agent) == []
    assert "Successfully installed smolprobe-0.1" in model.shown[1]


def test_a_pip_line_without_network_gives_pips_own_error_at_once(executor: SandlotExecutor) -> None:
    output = executor("!pip install smolagents-no-such-package")
    # pip does not retry a network that is not there; its error is the step's output.
    assert "ERROR: Could not find a version that satisfies the requirement" in output.logs
    assert "Retrying" not in output.logs
    assert not output.is_final_answer


# -- the executor on its own -------------------------------------------------------------------


def test_a_main_result_image_and_an_image_answer_come_back_as_pil_images(
    executor: SandlotExecutor,
) -> None:
    executor.send_tools({"final_answer": FinalAnswerTool()})
    shown = executor("from PIL import Image\npicture = Image.new('RGB', (3, 2), 'red')\npicture")
    assert isinstance(shown.output, PIL.Image.Image) and shown.output.size == (3, 2)
    assert shown.output.getpixel((0, 0)) == (255, 0, 0)

    answer = executor("final_answer(picture)")
    assert answer.is_final_answer
    assert isinstance(answer.output, PIL.Image.Image) and answer.output.size == (3, 2)

    assert executor("6 * 7").output == "42"  # other values come back as their text
    assert executor("x = 6 * 7").output is None


def test_output_streams_in_order_and_is_capped(sandbox: sandlot.Sandbox) -> None:
    chunks: list[str] = []
    logger, _ = quiet_logger()
    with SandlotExecutor(
        logger=logger, sandbox=sandbox, max_output_bytes=2000, on_output=chunks.append
    ) as ex:
        output = ex("import sys\nprint('one')\nprint('two', file=sys.stderr)\nprint('three')")
        # stdout and stderr both, as they arrived (two pipes: no order between them).
        assert output.logs == "".join(chunks)
        assert sorted(output.logs.splitlines()) == ["one", "three", "two"]
        assert output.logs.index("one") < output.logs.index("three")
        flood = ex("print('x' * 100_000)")
        with pytest.raises(AgentError) as caught:
            ex("raise ValueError('y' * 100_000)")
    assert len(flood.logs) < 2200 and "bytes of stdout cut here" in flood.logs
    # An exception's text is bounded the same way (smolagents' own truncation).
    assert len(str(caught.value)) < 2300 and "has been truncated" in str(caught.value)


def test_a_timeout_interrupts_the_action_and_keeps_the_state(sandbox: sandlot.Sandbox) -> None:
    logger, _ = quiet_logger()
    with SandlotExecutor(logger=logger, sandbox=sandbox, code_timeout=1) as ex:
        with pytest.raises(AgentError, match="longer than 1 s and was interrupted"):
            ex("kept = 'yes'\nprint('started')\nwhile True: pass")
        assert ex("kept").output == "'yes'"


def test_a_crashed_interpreter_is_reported_and_the_tools_are_defined_again(
    sandbox: sandlot.Sandbox,
) -> None:
    logger, _ = quiet_logger()
    with SandlotExecutor(logger=logger, sandbox=sandbox) as ex:
        ex.send_variables({"limit": 3})
        ex.send_tools({"final_answer": FinalAnswerTool()})
        ex("lost = 1")
        with pytest.raises(AgentError, match="The Python process restarted") as caught:
            ex("import os\nos._exit(9)")
        assert "variables defined before this step are gone" in str(caught.value)
        with pytest.raises(AgentError, match="NameError"):
            ex("lost")
        answer = ex("final_answer(limit * 2)")  # the variables and final_answer are back
        assert answer.is_final_answer and answer.output == 6


def test_a_forged_final_answer_is_an_error_not_a_crash(executor: SandlotExecutor) -> None:
    forged = (
        "class FinalAnswerException(Exception):\n    pass\n"
        "raise FinalAnswerException('pickle:AAAA')"
    )
    with pytest.raises(AgentError, match="The final answer could not be decoded"):
        executor(forged)
    with pytest.raises(AgentError, match="could not be decoded"):
        executor(forged.replace("pickle:AAAA", "safe:{not json"))


def test_modules_the_sandbox_has_are_not_installed_and_a_failed_install_is_logged(
    sandbox: sandlot.Sandbox,
) -> None:
    logger, out = quiet_logger()
    wanted = ["json", "PIL", "os.path", "collections.*", "*", "no_such_module_xyz", "bad name"]
    with SandlotExecutor(wanted, logger, sandbox=sandbox) as ex:
        # What the sandbox had is provided; the missing module could not be installed
        # (no network) and the log says why, in sandlot's words.
        assert ex.installed_packages == ["json", "PIL", "os.path", "collections.*"]
    log = out.getvalue()
    assert "Could not install no_such_module_xyz" in log and "no network" in log
    assert "Not a module name, not installed: 'bad name'" in log


def test_managed_agents_are_refused_clearly(executor: SandlotExecutor) -> None:
    helper = CodeAgent(tools=[], model=ScriptedModel([]), name="helper", description="helps")
    with pytest.raises(ValueError, match="Managed agents cannot run in a remote executor"):
        executor.send_tools({"helper": helper})


def test_bad_options_are_refused_before_anything_is_created(sandbox: sandlot.Sandbox) -> None:
    logger, _ = quiet_logger()
    with pytest.raises(sandlot.InvalidArgumentError, match="either sandbox= or the options"):
        SandlotExecutor(logger=logger, sandbox=sandbox, provider="bwrap")
    with pytest.raises(sandlot.InvalidArgumentError, match="context= needs the sandbox="):
        SandlotExecutor(logger=logger, context="ctx-1")
    with pytest.raises(sandlot.InvalidArgumentError, match="no_such_option"):
        SandlotExecutor(logger=logger, no_such_option=1)
    with pytest.raises(sandlot.InvalidArgumentError, match="code_timeout"):
        SandlotExecutor(logger=logger, sandbox=sandbox, code_timeout=-1)


def test_cleanup_kills_only_what_the_executor_made(sandbox: sandlot.Sandbox) -> None:
    logger, _ = quiet_logger()
    given = SandlotExecutor(logger=logger, sandbox=sandbox)
    mine = {c.id for c in sandbox.list_code_contexts()}
    assert given.context_id in mine
    given.cleanup()
    given.cleanup()  # idempotent
    assert given.context_id not in {c.id for c in sandbox.list_code_contexts()}
    assert sandbox.run_code("'still alive'").text == "'still alive'"
    with pytest.raises(AgentError, match="cleaned up"):
        given("1")

    # A context of the caller's is used and kept.
    theirs = sandbox.create_code_context()
    sandbox.run_code("owner = 'caller'", context=theirs)
    with SandlotExecutor(logger=logger, sandbox=sandbox, context=theirs.id) as ex:
        assert ex("owner").output == "'caller'"
    assert sandbox.run_code("owner", context=theirs).text == "'caller'"

    made = SandlotExecutor(logger=logger)
    made.cleanup()
    with pytest.raises(sandlot.SandboxNotFoundError):
        sandlot.Sandbox.connect(made.sandbox.id)


def test_a_remote_server_runs_the_agent() -> None:
    home = Path(tempfile.mkdtemp(prefix="slsmol-", dir="/tmp"))
    server = ServerProcess(home).start()
    client = sandlot.Client(url=server.url)
    try:
        logger, _ = quiet_logger()
        model = ScriptedModel(["n = len(leave_note('remote'))", "final_answer(n)"])
        with SandlotExecutor(logger=logger, client=client) as ex:
            agent = CodeAgent(tools=[leave_note], model=model, executor=ex, max_steps=3)
            assert agent.run("Go.") == len("/workspace/note.txt:6")
            assert ex.sandbox.files.read("/workspace/note.txt") == "remote"
    finally:
        _portal.call(client.aclose())  # the caller's client: the executor leaves it open
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
