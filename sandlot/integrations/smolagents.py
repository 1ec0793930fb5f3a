"""smolagents' code executor on sandlot: a ``CodeAgent``'s code actions run in a sandlot code
context (a persistent Python namespace in an isolated sandbox), with neither E2B nor Docker.

    from smolagents import CodeAgent
    from sandlot.integrations.smolagents import SandlotExecutor

    with CodeAgent(tools=[...], model=model, executor=SandlotExecutor()) as agent:
        agent.run("...")          # leaving the block kills the sandbox the executor made

smolagents picks its built-in executors by ``executor_type``; any other one is handed over as
``CodeAgent(executor=...)``. The agent then ships its tools and variables into the context the
way it does for E2B and Docker (tools as source, variables through smolagents' safe
serializer), and ``final_answer`` comes back as the ``FinalAnswerException`` the shipped tool
raises. See docs/integrations.md.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from typing import Any

import PIL.Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from smolagents.local_python_executor import CodeOutput  # type: ignore[import-untyped]
from smolagents.monitoring import AgentLogger, LogLevel  # type: ignore[import-untyped]
from smolagents.remote_executors import RemotePythonExecutor  # type: ignore[import-untyped]
from smolagents.tools import Tool  # type: ignore[import-untyped]
from smolagents.utils import AgentError, truncate_content  # type: ignore[import-untyped]

import sandlot
from sandlot.errors import CodeTimeoutError, InstallError, InvalidArgumentError, SandlotError
from sandlot.models import Execution

__all__ = ["SandlotExecutor", "SandlotExecutorOptions"]

# Which names in the sandbox are importable: smolagents passes module names
# (additional_authorized_imports, tool requirements), so only the missing ones are installed.
_MISSING_MODULES = """
print(__import__("json").dumps(
    [m for m in {names!r} if __import__("importlib.util").util.find_spec(m) is None]
))
"""

# Module names whose pip distribution has another name (smolagents itself maps PIL to pillow).
_DISTRIBUTIONS = {"PIL": "pillow"}
_MODULES = {dist: module for module, dist in _DISTRIBUTIONS.items()}

_RESTARTED = (
    "\n[The Python process restarted: variables defined before this step are gone; "
    "the tools and the agent's variables were defined again.]\n"
)


class SandlotExecutorOptions(BaseModel):
    """How a :class:`SandlotExecutor` finds its sandbox and runs code (the keyword arguments
    of ``SandlotExecutor(...)``, checked here)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)

    sandbox: sandlot.Sandbox | None = None
    """Run in this sandbox (it is never killed by ``cleanup``). Default: create one."""
    context: str | None = None
    """The id of an existing code context of ``sandbox`` to run in (it is kept by ``cleanup``).
    Default: a new context, removed by ``cleanup``."""
    provider: str | None = None
    """The provider of the sandbox to create (``"bwrap"`` by default, ``"docker"``, ...)."""
    client: sandlot.Client | None = None
    """A sandlot server to create the sandbox on (default: ``SANDLOT_URL``, else embedded)."""
    sandbox_options: dict[str, Any] = Field(default_factory=dict)
    """Other keywords of ``sandlot.Sandbox.create``: ``network``, ``resources``, ``env``,
    ``timeout`` (the sandbox's lifetime), ``idle_timeout``, ``metadata``, ..."""
    code_timeout: float | None = Field(default=300, gt=0)
    """Seconds one code action may run; then it is interrupted (its variables are kept) and
    the model is told. None: no limit but the sandbox's lifetime."""
    install_timeout: float | None = Field(default=300, gt=0)
    """Seconds pip may take to install the packages smolagents asks for."""
    max_output_bytes: int = Field(default=50_000, gt=0)
    """Output kept per stream and code action (smolagents' own default for the local
    executor): the rest is cut from the middle, with a line saying how much."""
    on_output: Callable[[str], Any] | None = None
    """Called with each chunk of stdout and stderr while a code action runs (e.g. ``print``
    to watch it live), on the SDK's thread."""


class SandlotExecutor(RemotePythonExecutor):
    """smolagents' remote Python executor over a sandlot code context.

    ``additional_imports``: modules the code may import (``CodeAgent``'s
    ``additional_authorized_imports``); those missing in the sandbox are installed with pip
    (which needs the sandbox's network, or fails with a logged reason). ``logger``: smolagents'
    ``AgentLogger`` (default: one at INFO level). ``allow_pickle``: as for smolagents' other
    executors. Other keywords: :class:`SandlotExecutorOptions`.
    """

    def __init__(
        self,
        additional_imports: list[str] | None = None,
        logger: AgentLogger | None = None,
        allow_pickle: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(
            list(additional_imports or []), logger or AgentLogger(LogLevel.INFO), allow_pickle
        )
        try:
            self.options = SandlotExecutorOptions(**options)
        except ValidationError as exc:
            raise InvalidArgumentError(f"SandlotExecutor: {exc}") from None
        given = self.options.sandbox
        if given is not None and (
            self.options.provider or self.options.client or self.options.sandbox_options
        ):
            raise InvalidArgumentError(
                "SandlotExecutor: give either sandbox= or the options to create one "
                "(provider, client, sandbox_options), not both"
            )
        if given is None and self.options.context is not None:
            raise InvalidArgumentError("SandlotExecutor: context= needs the sandbox= it belongs to")
        self._closed = False
        # Cells that define what the agent relies on, run again if the context restarts empty.
        self._setup: dict[str, str] = {}
        self._recording: str | None = None
        self._owns_sandbox = given is None
        self._owns_context = self.options.context is None
        self.sandbox: sandlot.Sandbox = (
            given
            if given is not None
            else sandlot.Sandbox.create(
                self.options.provider, client=self.options.client, **self.options.sandbox_options
            )
        )
        try:
            self.context_id = self.options.context or self.sandbox.create_code_context().id
            self.installed_packages = self.install_packages(self.additional_imports)
        except BaseException:
            self.cleanup()
            raise
        self.logger.log(
            f"sandlot sandbox {self.sandbox.id} ({self.sandbox.provider}) is running code "
            f"context {self.context_id}",
            level=LogLevel.INFO,
        )

    # -- running code ----------------------------------------------------------------------

    def run_code_raise_errors(self, code: str) -> CodeOutput:
        """Run one code action in the context. The cell's exception is raised as smolagents'
        ``AgentError`` with the output and traceback (the model reads it next step), except
        the final answer, which is returned with ``is_final_answer=True``."""
        if self._closed:
            raise AgentError(
                "The sandlot executor was cleaned up: it runs no more code.", self.logger
            )
        logs: list[str] = []
        execution = self._run(code, logs)
        text = "".join(logs)
        if self._recording is not None:
            self._setup[self._recording] = code
        if execution.state_lost:
            self._define_again()
            text += _RESTARTED
        error = execution.error
        if error is None:
            return CodeOutput(output=_main_output(execution), logs=text, is_final_answer=False)
        if error.name == self.FINAL_ANSWER_EXCEPTION:
            try:
                answer = self._deserialize_final_answer(error.value, self.allow_pickle)
            except Exception as exc:  # the value comes from the sandbox: anything may be wrong
                raise AgentError(
                    f"{text}\nThe final answer could not be decoded: {exc}", self.logger
                ) from exc
            return CodeOutput(output=answer, logs=text, is_final_answer=True)
        # The exception's text is the sandbox's to choose: bounded like the output.
        report = truncate_content(
            error.traceback or f"{error.name}: {error.value}\n", self.options.max_output_bytes
        )
        raise AgentError(f"{text}\nExecuting code yielded an error:\n{report}", self.logger)

    def _run(self, code: str, logs: list[str]) -> Execution:
        on_output = self.options.on_output

        def collect(chunk: str) -> None:  # stdout and stderr, in the order they came
            logs.append(chunk)
            if on_output is not None:
                on_output(chunk)

        timeout = self.options.code_timeout
        try:
            return self.sandbox.run_code(
                code,
                context=self.context_id,
                timeout=timeout,
                on_stdout=collect,
                on_stderr=collect,
                max_output_bytes=self.options.max_output_bytes,
            )
        except CodeTimeoutError as exc:
            message = (
                f"{''.join(logs)}\nThe code ran longer than {timeout:g} s and was interrupted "
                "(the variables it had set are kept)."
            )
            raise AgentError(message, self.logger) from exc
        except SandlotError as exc:
            message = f"{''.join(logs)}\nThe sandbox could not run the code ({exc.code}): {exc}"
            raise AgentError(message, self.logger) from exc

    def _define_again(self) -> None:
        for name, code in self._setup.items():
            try:
                execution = self.sandbox.run_code(
                    code, context=self.context_id, timeout=self.options.code_timeout
                )
            except SandlotError as exc:
                self.logger.log_error(f"Defining the {name} again failed: {exc}")
                return
            if execution.error is not None:
                self.logger.log_error(f"Defining the {name} again failed: {execution.error.value}")

    @contextmanager
    def _recorded(self, name: str) -> Iterator[None]:
        self._recording = name
        try:
            yield
        finally:
            self._recording = None

    # -- what the agent sends --------------------------------------------------------------

    def send_tools(self, tools: dict[str, Tool]) -> None:
        """Define the tools in the context (smolagents' code, which also makes
        ``final_answer`` raise the exception this executor recognizes)."""
        agents = sorted(name for name, value in tools.items() if not isinstance(value, Tool))
        if agents:
            raise ValueError(
                f"Managed agents cannot run in a remote executor (smolagents' own limit): {agents}"
            )
        with self._recorded("tools"):
            super().send_tools(tools)

    def send_variables(self, variables: dict[str, Any]) -> None:
        """Define the agent's variables in the context (smolagents' safe serializer)."""
        with self._recorded("variables"):
            super().send_variables(variables)

    def install_packages(self, additional_imports: list[str]) -> list[str]:
        """Make these modules importable: those the sandbox lacks are installed with
        ``sandlot.Sandbox.install`` (pip, into the user site). Returns the names it could
        provide; a failed install is logged with pip's reason, as smolagents' executors do."""
        modules = {}
        for name in additional_imports:
            module = _MODULES.get(name, name.removesuffix(".*")).split(".")[0]
            if module.isidentifier():
                modules[name] = module
            elif module != "*":  # "*" authorizes every import: nothing to install
                self.logger.log_error(f"Not a module name, not installed: {name!r}")
        if not modules:
            return []
        missing = self._missing(sorted(set(modules.values())))
        if missing:
            distributions = [_DISTRIBUTIONS.get(module, module) for module in missing]
            self.logger.log(f"Installing {', '.join(distributions)}", level=LogLevel.INFO)
            try:
                result = self.sandbox.install(distributions, timeout=self.options.install_timeout)
            except InstallError as exc:
                self.logger.log_error(f"Could not install {', '.join(distributions)}: {exc}")
                return [name for name, module in modules.items() if module not in missing]
            self.logger.log(result.stdout, level=LogLevel.DEBUG)
        return list(modules)

    def _missing(self, modules: list[str]) -> list[str]:
        execution = self.sandbox.run_code(
            _MISSING_MODULES.format(names=modules), context=self.context_id, timeout=60
        )
        try:
            missing = json.loads("".join(execution.logs.stdout))
        except ValueError:
            missing = None
        if not isinstance(missing, list):  # the sandbox answered nonsense: try them all
            return modules
        return [module for module in modules if module in missing]

    # -- the end ---------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Kill the sandbox this executor created, or remove the code context it created in
        a sandbox it was given. Idempotent; never raises (it runs at the agent's exit)."""
        if self._closed or not hasattr(self, "sandbox"):
            return
        self._closed = True
        try:
            if self._owns_sandbox:
                self.logger.log(f"Killing sandbox {self.sandbox.id}", level=LogLevel.INFO)
                self.sandbox.kill()
            elif self._owns_context and hasattr(self, "context_id"):
                self.sandbox.remove_code_context(self.context_id)
        except SandlotError as exc:
            self.logger.log_error(f"Error during cleanup: {exc}")

    def delete(self) -> None:
        """Same as :meth:`cleanup` (smolagents' other executors have both)."""
        self.cleanup()

    def __enter__(self) -> SandlotExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def _main_output(execution: Execution) -> Any:
    """The trailing expression's value as smolagents' remote executors give it: an image as a
    PIL image, anything else as its text."""
    for result in execution.results:
        if not result.is_main_result:
            continue
        for encoded in (result.png, result.jpeg):
            if encoded:
                image = _image(encoded)
                if image is not None:
                    return image
        for value in (result.text, result.markdown, result.html, result.json, result.latex):
            if value is not None:
                return value
    return None


def _image(encoded: str) -> PIL.Image.Image | None:
    try:
        image = PIL.Image.open(BytesIO(base64.b64decode(encoded, validate=True)))
        image.load()  # decode now: a broken image from the sandbox fails here, not later
    except (binascii.Error, OSError, ValueError, PIL.Image.DecompressionBombError):
        return None
    return image
