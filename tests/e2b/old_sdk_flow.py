"""The issue's user flow with the older E2B pair (e2b 2.31, e2b-code-interpreter 2.8: what
openai-agents[e2b] pins), run by tests/e2b/test_old_sdk.py with the python of the virtual
environment scripts/setup.sh makes for it, against the server named by E2B_API_URL,
E2B_SANDBOX_URL and E2B_API_KEY.

Each step's observation (or its error) goes into one JSON object, printed as the last line of
stdout: the test asserts on it, so one broken step does not hide the others.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from importlib.metadata import version

from e2b import CommandExitException, NotFoundException
from e2b_code_interpreter import Sandbox  # type: ignore[import-untyped]

seen: dict[str, object] = {
    "versions": [version("e2b"), version("e2b-code-interpreter")],
}


def step(name: str, run: Callable[[], object]) -> None:
    try:
        seen[name] = run()
    except Exception as error:
        seen[name] = {"error": f"{type(error).__name__}: {error}"[:2000]}
        traceback.print_exc()


def foreground_exit() -> object:
    try:
        sbx.commands.run("echo out; echo err >&2; exit 3")
    except CommandExitException as error:
        return {"exit_code": error.exit_code, "stdout": error.stdout, "stderr": error.stderr}
    return "no CommandExitException"


def background_killed() -> object:
    handle = sbx.commands.run("sleep 100", background=True)
    listed = handle.pid in [process.pid for process in sbx.commands.list()]
    killed = handle.kill()
    try:
        handle.wait()
        ended = "exit 0"
    except CommandExitException as error:
        ended = f"exit {error.exit_code}"
    gone = handle.pid not in [process.pid for process in sbx.commands.list()]
    return {"listed": listed, "killed": killed, "ended": ended, "gone": gone}


def files() -> object:
    info = sbx.files.write("/home/user/a.txt", "x")
    names = sorted(entry.name for entry in sbx.files.list("/home/user"))
    return {"path": info.path, "names": names, "read": sbx.files.read("/home/user/a.txt")}


def connect_and_kill() -> object:
    again = Sandbox.connect(sbx.sandbox_id)
    read = again.commands.run("cat /home/user/a.txt").stdout
    again.kill()
    try:
        Sandbox.connect(sbx.sandbox_id)
        after = "connected"
    except NotFoundException:
        after = "NotFoundException"
    return {"read": read, "after_kill": after}


sbx = Sandbox.create(timeout=600, metadata={"user": "ana"})
try:
    step("echo", lambda: sbx.commands.run("echo hi").stdout)
    step("exit", foreground_exit)
    step("background", background_killed)
    step("files", files)
    # Not run_code: e2b-code-interpreter 2.8.1 sends it to https://49999-<id>.<domain> (or
    # localhost:49999 with E2B_DEBUG), never to E2B_SANDBOX_URL and without the E2b-Sandbox-Id
    # header (2.9.0 is the first that does): it would leave for e2b.app with the sandbox's
    # token. Where it would go is recorded instead.
    step("jupyter_url", lambda: sbx._jupyter_url)
    step("connect", connect_and_kill)
finally:
    try:
        sbx.kill()  # after a failed step too: a test leaves no sandbox behind
    except Exception:
        pass
print(json.dumps(seen))
sys.exit(0)
